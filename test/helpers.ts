import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Lab, LabProcess } from '../src/lab/lab.ts';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Starts test/fixtures/<name>.ts inside a lab host with this Node and tsx. */
export function fixture(lab: Lab, host: string, name: string, args: readonly (string | number)[] = []): LabProcess {
  return lab.spawn(host, [
    process.execPath,
    '--import',
    'tsx',
    join(ROOT, 'test', 'fixtures', `${name}.ts`),
    ...args.map(String),
  ]);
}

/** Parses the JSON lines a fixture printed and returns those with the given event. */
export function events<T = Record<string, unknown>>(proc: LabProcess, event: string): T[] {
  return proc
    .output()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((e) => e.event === event) as T[];
}

/** `consec daemon` on `listen` in a lab host, with the policy of `stateDir` (liveness checks off). */
export function consecDaemon(
  lab: Lab,
  host: string,
  stateDir: string,
  listen: string,
  extra: string[] = [],
): LabProcess {
  return lab.spawn(host, [
    process.execPath,
    '--import',
    'tsx',
    join(ROOT, 'src/cli/main.ts'),
    '--state-dir',
    stateDir,
    'daemon',
    '--listen',
    listen,
    '--dpd',
    '0',
    ...extra,
  ]);
}
