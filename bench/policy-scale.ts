/**
 * Policy at scale (server isolation: one rule per server): a script of N `New-NetIPsecRule` lines
 * applied with `consec pwsh -File` (one store transaction), the daemon started on that policy until
 * it is ready (filters, routes and keying in place), a one-rule change until the daemon enforces it,
 * and the daemon's resident memory. N = 100, 1,000 and 10,000, so the growth is visible.
 *
 *   node --import tsx bench/policy-scale.ts [--sizes 100,1000,10000] [--json]
 */
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Lab } from '../src/lab/lab.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { consecArgv, consecDaemon } from '../test/helpers.ts';
import { freshStateDir } from '../test/pwsh-helpers.ts';
import { run } from '../src/lab/exec.ts';
import { emit, stringArg } from './lib/cli.ts';
import { removeFilters } from './lib/consec.ts';
import { round } from './lib/stats.ts';

const sizes = stringArg('sizes', '100,1000,10000').split(',').map(Number);

/**
 * Server i's address, none next to another (so no two merge into one interval): the first 254 in
 * IPv4 TEST-NET-2 and -3, the rest in 2001:db8::/32.
 */
function server(i: number): string {
  if (i < 127) return `198.51.100.${2 * i + 1}`;
  if (i < 254) return `203.0.113.${2 * (i - 127) + 1}`;
  return `2001:db8:100::${(2 * i).toString(16)}`;
}

/** The script an admin generates for server isolation: shared sets, then one rule per server. */
export function isolationScript(n: number): string {
  const lines = [
    '$psk = New-NetIPsecAuthProposal -Machine -PreSharedKey "bench-only-psk-0123456789"',
    '$p1 = New-NetIPsecPhase1AuthSet -DisplayName "PSK" -Proposal $psk',
  ];
  for (let i = 0; i < n; i++)
    lines.push(
      `New-NetIPsecRule -DisplayName "server ${i}" -RemoteAddress ${server(i)} -InboundSecurity Require -OutboundSecurity Require -Phase1AuthSet $p1.Name | Out-Null`,
    );
  return `${lines.join('\n')}\n`;
}

/** The pino `time` (ISO text, as epoch ms) of the first log line matching `msg`, from `from` on. */
function logTime(output: string, msg: string, from = 0): number | undefined {
  for (const line of output.split('\n')) {
    if (!line.includes(`"msg":"${msg}"`)) continue;
    try {
      const t = Date.parse(String((JSON.parse(line) as { time?: string }).time));
      if (t >= from) return t;
    } catch {
      // not a JSON line
    }
  }
  return undefined;
}

async function until<T>(f: () => T | undefined, what: string, ms = 120_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const rssMiB = (pid: number): number => {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
};

const rows: (string | number)[][] = [];
const lab = await Lab.create(hostToHost());
try {
  const a = lab.address('alice');
  for (const n of sizes) {
    const dir = freshStateDir('consec-bench-scale-');
    const file = join(dir, 'isolation.ps1');
    writeFileSync(file, isolationScript(n));
    const t0 = performance.now();
    await run(consecArgv(['pwsh', '-File', file], dir));
    const applyS = (performance.now() - t0) / 1000;

    const started = Date.now();
    const daemon = consecDaemon(lab, 'alice', dir, a);
    try {
      await daemon.waitFor(/"msg":"ready"/, 180_000);
      const out = daemon.output();
      const first = Date.parse(
        String((JSON.parse(out.split('\n').find((l) => l.startsWith('{')) ?? '{}') as { time?: string }).time),
      );
      const ready = logTime(out, 'ready') as number;
      const rss = rssMiB(daemon.pid as number);
      // One more rule while it runs: from the store's write to the daemon enforcing it.
      await run(
        consecArgv(
          [
            'pwsh',
            '-Command',
            'New-NetIPsecRule -DisplayName "one more" -RemoteAddress 2001:db8:200::1 -InboundSecurity Require -OutboundSecurity Require | Out-Null',
          ],
          dir,
        ),
      );
      // The rename that commits the store sets its ctime: from then on the change is the daemon's.
      const written = statSync(join(dir, 'policy', 'PersistentStore.json')).ctimeMs;
      const enforced = await until(
        () => logTime(daemon.output(), 'policy enforced', Math.floor(written)),
        'the change',
      ).catch((err: Error) => {
        throw new Error(`${err.message}\n${daemon.output().slice(-3000)}`);
      });
      const line = daemon
        .output()
        .split('\n')
        .find((l) => l.includes('"msg":"policy enforced"') && Date.parse(String(JSON.parse(l).time)) === enforced);
      const parts = line ? (JSON.parse(line) as { compileMs: number; filtersMs: number; routesMs: number }) : undefined;
      rows.push([
        n,
        round(applyS, 2),
        round((ready - started) / 1000, 2),
        round((ready - first) / 1000, 2),
        Math.round(enforced - written),
        parts ? `${parts.compileMs} / ${parts.filtersMs} / ${parts.routesMs}` : '?',
        round(rss, 1),
      ]);
    } finally {
      await daemon.stop('SIGTERM', 20_000);
      await removeFilters(lab, 'alice');
    }
  }
} finally {
  await lab.destroy();
}

emit({
  id: 'policy-scale',
  title: 'Policy at scale: N rules applied, daemon ready, one-rule change, memory',
  method:
    `One rule per server (server isolation), Require both ways, PSK; the first 254 servers IPv4, the rest IPv6, no two adjacent. ` +
    '**apply**: `consec pwsh -File` of the generated script (N `New-NetIPsecRule` lines; one store transaction), wall time including Node start. ' +
    '**ready**: the daemon in a lab namespace from spawn to its "ready" log line (fail-closed table, routes, keying), and from its first log line (without Node start). ' +
    "**change**: one `New-NetIPsecRule` while the daemon runs, from the store file's commit (its rename) to the daemon's \"policy enforced\" line (filters and routes); the rest is reading and validating the store and the keying service's reload. " +
    `**RSS**: the daemon's resident memory when ready. Script: \`bench/policy-scale.ts\`.`,
  columns: [
    'rules',
    'apply (s)',
    'ready from spawn (s)',
    'ready from first log (s)',
    'one-rule change (ms)',
    'of which compile / filters / routes (ms)',
    'daemon RSS (MiB)',
  ],
  rows,
  chart: { column: 1, unit: 's' },
});
