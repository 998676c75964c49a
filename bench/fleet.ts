/**
 * Fleet Group Policy: from Save-NetGPO returning to every host reporting the saved revision
 * applied. A 3-member etcd cluster (TLS, client certificates, access control on) in lab hosts;
 * `--hosts` consec daemons (real processes from dist/, each its own state directory, certificate
 * and IKE address; `--dataplane none`, so "applied" is: read, checked, compiled and loaded by its
 * keying service) in one namespace; then `--watchers` host agents (each its own certificate, etcd
 * connection, state directory and status key; the same agent code as the daemon's, enforcing
 * nothing) in processes of 100. For each: `--rounds` saves of one GPO linked to the domain (every
 * host targeted), the time until each host's status shows the saved revision (watched from the
 * admin's side); the cluster's received requests per second while the fleet is idle (etcd's own
 * metrics: watches, not polls); and after the hosts' namespace was cut off for `--partition`
 * seconds while the GPO changed, the time from the link coming back to each host reporting it.
 *
 *   node --import tsx bench/fleet.ts [--hosts 100] [--watchers 1000] [--rounds 10] [--partition 5] [--json]
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EtcdCluster } from '../src/lab/etcd.ts';
import { Lab, type LabProcess } from '../src/lab/lab.ts';
import { LabPki } from '../src/lab/pki.ts';
import { fleet } from '../src/lab/topology.ts';
import { writeFleetConfig, type FleetConfig } from '../src/fleet/config.ts';
import { consecArgv, ROOT } from '../test/helpers.ts';
import { freshStateDir } from '../test/pwsh-helpers.ts';
import { emit, numberArg } from './lib/cli.ts';
import type { DriverConfig } from './lib/fleet-driver.ts';
import { percentile, round } from './lib/stats.ts';

const HOSTS = numberArg('hosts', 100);
const WATCHERS = numberArg('watchers', 1000);
const ROUNDS = numberArg('rounds', 10);
const PARTITION_S = numberArg('partition', 5);
const DOMAIN = 'bench.example';
const DIST = join(ROOT, 'dist', 'cli', 'main.js');
const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
if (!existsSync(DIST)) throw new Error(`${DIST} is missing: run npm run build (scripts/setup.sh does)`);

const lab = await Lab.create(fleet());
const procs: LabProcess[] = [];
const rows: (string | number)[][] = [];
try {
  const cluster = await EtcdCluster.start(lab, ['etcd1', 'etcd2', 'etcd3'], LabPki.create());
  await cluster.enableAuth(['admin-bench']);
  const joinFleet = (user: string, dir: string): FleetConfig => {
    const c = cluster.credentials(user);
    const config = { endpoints: cluster.endpoints, ...c, domain: DOMAIN, host: user };
    writeFleetConfig(dir, config);
    return config;
  };
  const adminDir = freshStateDir('consec-bench-fleet-admin-');
  const admin = joinFleet('admin-bench', adminDir);
  // The GPO: one rule, written as an admin does.
  const gpo = await lab.exec(
    'admin',
    consecArgv(
      [
        'pwsh',
        '-Command',
        `$g = Open-NetGPO -PolicyStore ${DOMAIN}\\Bench; New-NetIPsecRule -DisplayName "Isolation" -InboundSecurity Request -OutboundSecurity Request -RemoteAddress 203.0.113.0/24 -GPOSession $g | Out-Null; Save-NetGPO -GPOSession $g`,
      ],
      adminDir,
    ),
    { timeoutMs: 60_000 },
  );
  if (gpo.code !== 0) throw new Error(gpo.stdout + gpo.stderr);

  /** Runs the driver for `hosts` (started by `startHosts` once the directory holds them). */
  async function measure(label: string, hosts: string[], ns: string, startHosts: () => Promise<void>): Promise<void> {
    const work = mkdtempSync(join(tmpdir(), 'consec-bench-fleet-'));
    lab.adopt(work);
    const cfg: DriverConfig = {
      fleet: admin,
      gpo: 'Bench',
      hosts,
      rounds: ROUNDS,
      partitionNs: lab.ns(ns),
      partitionMs: PARTITION_S * 1000,
      idleSeconds: 20,
      metrics: ['etcd1', 'etcd2', 'etcd3'].map((h) => `http://${lab.address(h)}:2381/metrics`),
    };
    writeFileSync(join(work, 'driver.json'), JSON.stringify(cfg));
    const driver = lab.spawn('admin', [
      process.execPath,
      '--import',
      'tsx',
      join(ROOT, 'bench', 'lib', 'fleet-driver.ts'),
      join(work, 'driver.json'),
    ]);
    procs.push(driver);
    await driver.waitFor(/"phase":"setup"/, 300_000);
    const hostProcs = procs.length;
    await startHosts();
    // CPU the hosts' processes spent on the saves (from /proc: user + system time).
    const cpu = () =>
      procs.slice(hostProcs).reduce((sum, p) => {
        try {
          const f = readFileSync(`/proc/${p.pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
          return sum + Number(f[11]) + Number(f[12]);
        } catch {
          return sum;
        }
      }, 0);
    await driver.waitFor(/"phase":"converged"/, 600_000);
    const cpu0 = cpu();
    await driver.waitFor(/"phase":"rounds"/, 900_000);
    const cpuMsPerApply = ((cpu() - cpu0) * (1000 / CLOCK_TICKS)) / (hosts.length * ROUNDS);
    await driver.waitFor(/"phase":"done"/, 900_000).catch((err: Error) => {
      const others = procs
        .filter((p) => p !== driver)
        .slice(0, 3)
        .map((p) => p.output().slice(-2000));
      throw new Error(`${err.message}\n${driver.output().slice(-3000)}\n--- hosts:\n${others.join('\n---\n')}`);
    });
    const lines = driver
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{"phase"'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const get = <T>(phase: string) => lines.find((l) => l.phase === phase) as T;
    const rounds = get<{ rounds: { all: number[]; last: number }[] }>('rounds').rounds;
    const all = rounds.flatMap((r) => r.all);
    const last = rounds.map((r) => r.last);
    const partition = get<{ converge: number[] }>('partition').converge;
    rows.push([
      label,
      hosts.length,
      round(percentile(all, 50), 0),
      round(percentile(all, 99), 0),
      round(percentile(last, 50), 0),
      round(percentile(last, 99), 0),
      round(Math.max(...partition), 0),
      round(get<{ requestsPerSecond: number }>('idle').requestsPerSecond, 2),
      round(cpuMsPerApply, 1),
    ]);
    process.stderr.write(`${JSON.stringify(rows[rows.length - 1])}\n`);
  }

  // consec daemons, each with its own IKE address in the alice namespace.
  const daemonHosts = Array.from({ length: HOSTS }, (_, i) => `d${String(i + 1).padStart(4, '0')}`);
  await measure('consec daemons', daemonHosts, 'alice', async () => {
    for (let i = 0; i < daemonHosts.length; i += 10) {
      const batch = daemonHosts.slice(i, i + 10).map((h, j) => {
        const n = i + j;
        const address = `198.51.${100 + Math.floor(n / 250)}.${(n % 250) + 1}`;
        const dir = freshStateDir(`consec-bench-${h}-`);
        joinFleet(h, dir);
        return { h, dir, address };
      });
      for (const b of batch) await lab.exec('alice', ['ip', 'addr', 'add', `${b.address}/32`, 'dev', 'lo']);
      const started = batch.map((b) =>
        lab.spawn('alice', [
          process.execPath,
          // CONSEC_BENCH_PROFILE=DIR: each daemon writes a CPU profile there when it stops.
          ...(process.env.CONSEC_BENCH_PROFILE
            ? ['--cpu-prof', `--cpu-prof-dir=${process.env.CONSEC_BENCH_PROFILE}`]
            : []),
          DIST,
          '--state-dir',
          b.dir,
          'daemon',
          '--listen',
          b.address,
          '--dataplane',
          'none',
          '--dpd',
          '0',
        ]),
      );
      procs.push(...started);
      await Promise.all(started.map((p) => p.waitFor(/"msg":"ready"/, 120_000)));
    }
  });
  for (const p of procs.splice(0)) await p.stop('SIGTERM', 10_000);

  // Host agents, 100 to a process, in the bob namespace.
  const watcherHosts = Array.from({ length: WATCHERS }, (_, i) => `w${String(i + 1).padStart(5, '0')}`);
  await measure('host agents', watcherHosts, 'bob', async () => {
    for (let i = 0; i < watcherHosts.length; i += 100) {
      const group = watcherHosts.slice(i, i + 100).map((h) => {
        const stateDir = freshStateDir(`consec-bench-${h}-`);
        return { config: joinFleet(h, stateDir), stateDir };
      });
      const farmDir = mkdtempSync(join(tmpdir(), 'consec-bench-farm-'));
      lab.adopt(farmDir); // removed with the lab, like the driver's work directory
      const file = join(farmDir, 'hosts.json');
      writeFileSync(file, JSON.stringify(group));
      const farm = lab.spawn('bob', [
        process.execPath,
        '--import',
        'tsx',
        join(ROOT, 'bench', 'lib', 'fleet-farm.ts'),
        file,
      ]);
      procs.push(farm);
      await farm.waitFor(/started \d+/, 120_000);
    }
  });
  emit({
    id: 'fleet',
    title: 'Fleet Group Policy: Save-NetGPO → applied on every host',
    method: `A 3-member etcd cluster (Debian etcd-server, TLS with client certificates, access control on) in lab namespaces; one GPO linked to the domain, so it targets every host. **consec daemons**: real \`consec daemon\` processes (dist/, \`--dataplane none\`: applied = read at one revision, checked, compiled and loaded by the keying service), each its own state directory, certificate and IKE address. **host agents**: the daemon's fleet agent alone (its own certificate, etcd connection, state directory and status key), 100 to a process. ${ROUNDS} saves per row: per-host time from Save-NetGPO returning to the host's status showing the saved revision (watched by the admin), p50/p99 over all hosts and saves; "last host" is the slowest host of a save, p50/p99 over the saves. Partition: the hosts' namespace cut off for ${PARTITION_S} s while the GPO changed; time from the link coming back to the last host reporting it. Idle: gRPC messages the three members received per second over 20 s with nothing changing (watches, not polls). Host CPU: user + system time of the hosts' processes during the saves, per host and save.`,
    columns: [
      'hosts',
      'count',
      'per host p50 ms',
      'per host p99 ms',
      'last host p50 ms',
      'last host p99 ms',
      'after partition: last host ms',
      'idle requests/s',
      'host CPU ms per save',
    ],
    rows,
    chart: { column: 5, unit: 'ms' },
  });
  await cluster.dispose();
} finally {
  for (const p of procs) await p.stop('SIGTERM', 10_000);
  await lab.destroy();
}
