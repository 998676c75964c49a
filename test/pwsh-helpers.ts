import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PolicyStores } from '../src/policy/store.ts';
import { netSecurityCommands } from '../src/shell/netsecurity/cmdlets.ts';
import { createRuntime } from '../src/shell/pwsh/index.ts';

/** The reference scripts (copies of shared/reference/scripts; test/reference-drift.test.ts compares them). */
export const SCRIPTS = join(import.meta.dirname, 'fixtures', 'reference-scripts');
export const SHARED_SCRIPTS = join(import.meta.dirname, '..', '..', 'shared', 'reference', 'scripts');

export interface PsResult {
  out: string;
  err: string;
  errors: number;
}

const created: string[] = [];
process.on('exit', () => {
  for (const dir of created) rmSync(dir, { recursive: true, force: true });
});

/** A fresh state directory (its own PersistentStore), removed when the test process exits. */
export function freshStateDir(prefix = 'consec-pwsh-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  created.push(dir);
  return dir;
}

/** Runs PowerShell source in-process against the stores in `stateDir`. */
export async function ps(
  source: string,
  stateDir: string,
  scriptName?: string,
  scriptArgs: string[] = [],
): Promise<PsResult> {
  let out = '';
  let err = '';
  const stores = new PolicyStores(stateDir);
  const rt = createRuntime({ stdout: (t) => (out += t), stderr: (t) => (err += t) }, netSecurityCommands(stores), {
    scriptName,
  });
  // As `consec pwsh` runs a script: one store transaction.
  const errors = await stores.transaction(() => rt.run(source, scriptArgs));
  return { out, err, errors };
}

export function storeBytes(stateDir: string): string {
  try {
    return readFileSync(join(stateDir, 'policy', 'PersistentStore.json'), 'utf8');
  } catch {
    return '<no store file>';
  }
}

export function readScript(name: string): string {
  return readFileSync(join(SCRIPTS, name), 'utf8');
}
