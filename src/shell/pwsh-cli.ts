/**
 * `consec pwsh`: runs NetSecurity scripts. Accepts PowerShell's own command-line spellings
 * (-Command, -File, -NoProfile, -NonInteractive, -ExecutionPolicy), a script path, or - for stdin.
 */
import { PolicyStores } from '../policy/store.ts';
import { netSecurityCommands } from './netsecurity/cmdlets.ts';
import { createRuntime, type Host } from './pwsh/index.ts';
import { ConsecError } from '../errors.ts';
import { InputTooLargeError, readTextBounded } from '../io/bounded.ts';

export interface PwshInvocation {
  source: string;
  scriptName?: string;
  /** The words after the script's path: bound to its param block (`-Name value`, `-Switch`, positional). */
  args?: string[];
}

/** Interprets the words after `consec pwsh`. */
export function parsePwshArgs(args: readonly string[], readStdin: () => string): PwshInvocation {
  const rest = [...args];
  while (rest.length > 0) {
    const a = rest.shift() as string;
    const flag = a.replace(/^--?/, '').toLowerCase();
    if (a === '-') return { source: readStdin() };
    if (!a.startsWith('-')) return { source: readScript(a), scriptName: a, args: rest };
    if (['noprofile', 'nop', 'noninteractive', 'noni', 'nologo'].includes(flag)) continue;
    if (flag === 'executionpolicy' || flag === 'ep') {
      rest.shift();
      continue;
    }
    if (flag === 'command' || flag === 'c') {
      if (rest.length === 0) throw new ConsecError('ERR_USAGE', 'Missing argument for -Command.');
      const text = rest.join(' ');
      return text === '-' ? { source: readStdin() } : { source: text };
    }
    if (flag === 'file' || flag === 'f') {
      const file = rest.shift();
      if (file === undefined) throw new ConsecError('ERR_USAGE', 'Missing argument for -File.');
      return file === '-' ? { source: readStdin() } : { source: readScript(file), scriptName: file, args: rest };
    }
    throw new ConsecError(
      'ERR_USAGE',
      `Unknown option ${a}: use -Command '<cmdlets>', -File <script.ps1>, a script path, or - for standard input.`,
    );
  }
  return { source: readStdin() };
}

function readScript(file: string): string {
  try {
    return readTextBounded(file, `The script ${file}`).replace(/^\uFEFF/, '');
  } catch (err) {
    if (err instanceof InputTooLargeError) throw err;
    throw new ConsecError(
      'ERR_USAGE',
      `The argument '${file}' to the -File parameter does not exist. ${(err as Error).message}`,
    );
  }
}

/** Runs a script against the stores in `stateDir`; resolves with the exit status (1 if any error). */
export async function runPwsh(
  invocation: PwshInvocation,
  stateDir: string,
  host: Host,
  env?: NodeJS.ProcessEnv,
): Promise<number> {
  const stores = new PolicyStores(stateDir);
  const runtime = createRuntime(host, netSecurityCommands(stores), { scriptName: invocation.scriptName, env });
  // The script's changes are one transaction: each store read and locked once, written once at the end.
  const errors = await stores.transaction(() => runtime.run(invocation.source, invocation.args));
  return errors > 0 ? 1 : 0;
}
