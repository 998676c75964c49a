/** Entry point of the PowerShell front-end: a runtime with the builtins plus the given commands. */
import { builtinCommands } from './builtins.ts';
import { OutDefaultStream } from './format.ts';
import { type CommandDef, type Host, Runtime } from './runtime.ts';

const ALIASES: Record<string, string> = {
  where: 'Where-Object',
  '?': 'Where-Object',
  foreach: 'ForEach-Object',
  '%': 'ForEach-Object',
  select: 'Select-Object',
  sort: 'Sort-Object',
  fl: 'Format-List',
  ft: 'Format-Table',
  echo: 'Write-Output',
  write: 'Write-Output',
  measure: 'Measure-Object',
};

export interface PwshOptions {
  scriptName?: string;
  env?: NodeJS.ProcessEnv;
}

export function createRuntime(host: Host, commands: readonly CommandDef[], options: PwshOptions = {}): Runtime {
  const registry = new Map<string, CommandDef>();
  for (const c of [...builtinCommands(), ...commands]) registry.set(c.name.toLowerCase(), c);
  for (const [alias, target] of Object.entries(ALIASES)) {
    const def = registry.get(target.toLowerCase());
    if (def) registry.set(alias, def);
  }
  return new Runtime(host, registry, { ...options, outDefault: (write) => new OutDefaultStream(write) });
}

export { FormattedOutput, PwshError, Runtime } from './runtime.ts';
export type { CommandCall, CommandDef, Host, ParamDef } from './runtime.ts';
