/** A bench helper script (bench/lib/*.ts) run with Node inside a lab host; its last stdout line is its JSON result. */
import { join } from 'node:path';
import type { Lab } from '../../src/lab/lab.ts';
import { ROOT } from '../../test/helpers.ts';

export async function labNodeScript<T>(
  lab: Lab,
  host: string,
  script: string,
  args: readonly string[],
  timeoutMs: number,
): Promise<T> {
  const { stdout } = await lab.exec(host, [process.execPath, '--import', 'tsx', join(ROOT, script), ...args], {
    timeoutMs,
  });
  return JSON.parse(stdout.trim().split('\n').pop() as string) as T;
}
