/** CPU time for the lab benchmarks: per lab host (its namespace's processes) and for the machine. */
import { readFileSync } from 'node:fs';
import type { Lab } from '../../src/lab/lab.ts';

/** Clock ticks per second of /proc's CPU times (USER_HZ). */
export const TICK = 100;

/** CPU ticks (user + system, with reaped children) of the processes in `host`'s namespace, except those named in `skip`. */
export async function namespaceTicks(lab: Lab, host: string, skip: readonly string[] = []): Promise<number> {
  const r = await lab.exec(host, ['ip', 'netns', 'pids', lab.ns(host)], { allowFailure: true });
  let ticks = 0;
  for (const pid of r.stdout.split(/\s+/).filter(Boolean)) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      if (skip.includes(name)) continue;
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // utime, stime and the same for reaped children (stat fields 14–17): commands a daemon runs
      // (ip, nft) count as its own work.
      ticks += Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]);
    } catch {
      // gone meanwhile
    }
  }
  return ticks;
}

/** Busy CPU ticks of the whole machine (every state but idle and iowait, softirq included). */
export function machineTicks(): number {
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]?.trim().split(/\s+/).slice(1).map(Number) ?? [];
  const total = cpu.slice(0, 8).reduce((x, y) => x + y, 0);
  return total - (cpu[3] ?? 0) - (cpu[4] ?? 0);
}
