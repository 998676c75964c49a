/**
 * The service itself: how long `consec daemon` takes from start to ready (policy read and compiled,
 * fail-closed table in the kernel, TUN and sockets up, IKE listening: what READY=1 tells systemd),
 * and the memory of the idle service (resident set after it has settled), with one rule and with
 * 1,000 rules. The daemon runs in a lab host on its addresses, as the service would: as an
 * installed package runs it (the compiled dist/, built here first), and from source through tsx.
 *
 *   node --import tsx bench/daemon.ts [--runs 5] [--json]
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Lab } from '../src/lab/lab.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { consecArgv, ROOT } from '../test/helpers.ts';
import { freshStateDir, ps } from '../test/pwsh-helpers.ts';
import { emit, numberArg } from './lib/cli.ts';
import { removeFilters } from './lib/consec.ts';
import { median, round } from './lib/stats.ts';

const runs = numberArg('runs', 5);
const SETTLE_MS = 5000;

const lab = await Lab.create(hostToHost());
const a = lab.address('alice');
const b = lab.address('bob');

/** A store of `n` Require rules toward alice's subnet hosts, written with the cmdlets in one script. */
async function policy(n: number): Promise<string> {
  const dir = freshStateDir('consec-bench-daemon-');
  const r = await ps(
    [
      '$psk = New-NetIPsecAuthProposal -Machine -PreSharedKey "bench-daemon-psk-0123456789"',
      '$p1 = New-NetIPsecPhase1AuthSet -DisplayName "PSK" -Proposal $psk',
      n === 1
        ? `New-NetIPsecRule -DisplayName "bench" -RemoteAddress ${a} -Phase1AuthSet $p1.Name | Out-Null`
        : `1..${n} | ForEach-Object { New-NetIPsecRule -DisplayName "bench $_" -RemoteAddress "198.51.100.$($_ % 250 + 1)" -RemotePort $_ -Protocol TCP -Phase1AuthSet $p1.Name } | Out-Null`,
    ].join('\n'),
    dir,
  );
  if (r.errors) throw new Error(r.err);
  return dir;
}

const rssMiB = (pid: number): number => {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
};

/** How the daemon is started: the installed layout (node dist/cli/main.js) or from source (tsx). */
type How = 'installed' | 'source';
const argv = (how: How, dir: string): string[] =>
  how === 'installed'
    ? [process.execPath, join(ROOT, 'dist', 'cli', 'main.js'), '--state-dir', dir, 'daemon', '--dpd', '0']
    : consecArgv(['daemon', '--dpd', '0'], dir);

async function measure(dir: string, how: How): Promise<{ readyMs: number[]; rss: number[] }> {
  const readyMs: number[] = [];
  const rss: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    const d = lab.spawn('bob', argv(how, dir));
    try {
      await d.waitFor(/"msg":"ready"/, 60_000);
      readyMs.push(performance.now() - t0);
      await new Promise((r) => setTimeout(r, SETTLE_MS));
      rss.push(rssMiB(d.pid as number));
    } finally {
      await d.stop('SIGTERM', 5000);
      await removeFilters(lab, 'bob');
    }
    process.stderr.write('.');
  }
  return { readyMs, rss };
}

try {
  // The compiled package, as `npm pack` ships it.
  execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: 'ignore' });
  const rows: (string | number)[][] = [];
  for (const [n, how] of [
    [1, 'installed'],
    [1000, 'installed'],
    [1, 'source'],
  ] as const) {
    const m = await measure(await policy(n), how);
    rows.push([
      `${n === 1 ? 'one rule' : `${n.toLocaleString('en')} rules`}, ${how === 'installed' ? 'installed (dist/)' : 'from source (tsx)'}`,
      round(median(m.readyMs)),
      round(Math.max(...m.readyMs)),
      round(median(m.rss)),
    ]);
  }
  process.stderr.write('\n');
  emit({
    id: 'daemon',
    title: 'The service: start-up to ready, and idle memory',
    method: `\`consec daemon\` in a lab host (${b}, IPv4 and IPv6), no --listen (every address), userspace data plane; ${runs} starts per policy. Start-up: from spawning the process (Node start, module load) to its "ready" line — policy read and compiled, the fail-closed nftables table loaded, TUN, sockets and routes up, IKE listening; the moment it sends READY=1 to systemd. Memory: resident set (VmRSS) ${SETTLE_MS / 1000} s after ready, no SA.`,
    columns: ['policy, how it runs', 'start-up median ms', 'start-up max ms', 'idle RSS MiB'],
    rows,
    chart: { column: 1, unit: 'ms to ready' },
  });
} finally {
  await lab.destroy();
}
