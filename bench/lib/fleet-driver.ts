/**
 * The admin side of bench/fleet.ts, run inside the lab's admin namespace (it talks to the etcd
 * members there): puts the hosts into the directory and links the GPO, waits for every host to
 * report it, then times GPO saves until every host reports the saved revision (from its status
 * key, watched), a partition of the hosts' namespace and its healing, and the cluster's load while
 * the fleet is idle. Prints one JSON line per phase.
 *
 *   node --import tsx bench/lib/fleet-driver.ts CONFIG.json
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { editDirectory } from '../../src/fleet/admin.ts';
import type { FleetConfig } from '../../src/fleet/config.ts';
import { statusPrefix } from '../../src/fleet/directory.ts';
import { connectFleet, loadGpo, saveGpo } from '../../src/fleet/gpo.ts';

export interface DriverConfig {
  fleet: FleetConfig;
  /** The GPO's name within the domain; it exists (one rule) before the driver starts. */
  gpo: string;
  hosts: string[];
  rounds: number;
  /** Net namespace all hosts run in (its eth0 is taken down for the partition), if any. */
  partitionNs?: string;
  partitionMs: number;
  idleSeconds: number;
  /** The etcd members' metrics URLs (http). */
  metrics: string[];
}

const cfg = JSON.parse(readFileSync(process.argv[2] as string, 'utf8')) as DriverConfig;
const out = (o: object): void => void process.stdout.write(`${JSON.stringify(o)}\n`);
const etcd = connectFleet(cfg.fleet);
const name = `${cfg.fleet.domain}\\${cfg.gpo}`;
const domain = cfg.fleet.domain;

// Hosts in the domain's container, the GPO linked there.
for (let i = 0; i < cfg.hosts.length; i += 100)
  await editDirectory(etcd, domain, (dir) => {
    for (const h of cfg.hosts.slice(i, i + 100)) dir.hosts.set(h.toLowerCase(), { container: domain, groups: [] });
  });
await editDirectory(etcd, domain, (dir) => {
  dir.containers.set(domain.toLowerCase(), {
    path: domain,
    blockInheritance: false,
    links: [{ gpo: cfg.gpo, enabled: true, enforced: false }],
  });
});
out({ phase: 'setup' });

/** When each host first reported each revision of the GPO. */
const seen = new Map<string, Map<string, number>>();
const initial = await etcd.getAll().prefix(statusPrefix(domain)).exec();
const note = (value: Buffer): void => {
  try {
    const s = JSON.parse(value.toString('utf8')) as { host: string; gpos: { name: string; revision: string }[] };
    const g = s.gpos.find((x) => x.name.toLowerCase() === name.toLowerCase());
    if (!g) return;
    let m = seen.get(s.host);
    if (!m) seen.set(s.host, (m = new Map()));
    if (!m.has(g.revision)) m.set(g.revision, performance.now());
  } catch {
    // not a status
  }
};
for (const kv of initial.kvs) note(kv.value);
const watcher = await etcd
  .watch()
  .prefix(statusPrefix(domain))
  .startRevision(String(BigInt(initial.header.revision) + 1n))
  .create();
watcher.on('put', (kv) => note(kv.value));

const reported = (h: string, rev: string): number | undefined => {
  const m = seen.get(h);
  if (!m) return undefined;
  let first: number | undefined;
  for (const [r, t] of m) if (BigInt(r) >= BigInt(rev) && (first === undefined || t < first)) first = t;
  return first;
};

async function allReport(rev: string, deadlineMs: number): Promise<number[]> {
  const deadline = performance.now() + deadlineMs;
  for (;;) {
    const times = cfg.hosts.map((h) => reported(h, rev));
    if (times.every((t) => t !== undefined)) return times as number[];
    if (performance.now() > deadline) {
      const missing = cfg.hosts.filter((h, i) => times[i] === undefined);
      throw new Error(`${missing.length} hosts never reported revision ${rev}: ${missing.slice(0, 5).join(' ')}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function saveRound(i: number): Promise<{ rev: string; t0: number }> {
  const g = await loadGpo(etcd, name);
  const base = g.doc.rules[0];
  if (!base) throw new Error(`${name} has no rule to copy`);
  // Each round replaces the previous round's rule with a new one.
  g.doc.rules = [base, { ...structuredClone(base), Name: `{bench-round-${i}}`, DisplayName: `Round ${i}` }];
  const rev = await saveGpo(etcd, name, g.doc, g.revision);
  return { rev, t0: performance.now() };
}

const first = await loadGpo(etcd, name);
await allReport(first.revision, 600_000);
out({ phase: 'converged', revision: first.revision });

const rounds: { all: number[]; last: number }[] = [];
for (let i = 1; i <= cfg.rounds; i++) {
  const { rev, t0 } = await saveRound(i);
  const times = (await allReport(rev, 60_000)).map((t) => Math.max(0, t - t0));
  rounds.push({ all: times, last: Math.max(...times) });
}
out({ phase: 'rounds', rounds });

// The cluster's load while nothing changes: requests the members received per second.
async function received(): Promise<number> {
  let n = 0;
  for (const url of cfg.metrics) {
    const text = await (await fetch(url)).text();
    for (const line of text.split('\n'))
      if (line.startsWith('grpc_server_msg_received_total')) n += Number(line.split(' ').pop());
  }
  return n;
}
const r0 = await received();
if (r0 === 0) throw new Error('the etcd members report no grpc_server_msg_received_total: cannot measure their load');
const i0 = performance.now();
await new Promise((r) => setTimeout(r, cfg.idleSeconds * 1000));
const idle = ((await received()) - r0) / ((performance.now() - i0) / 1000);
out({ phase: 'idle', requestsPerSecond: idle });

if (cfg.partitionNs) {
  const link = (state: 'up' | 'down') =>
    execFileSync('ip', ['netns', 'exec', cfg.partitionNs as string, 'ip', 'link', 'set', 'eth0', state]);
  link('down');
  const { rev } = await saveRound(cfg.rounds + 1);
  await new Promise((r) => setTimeout(r, cfg.partitionMs));
  link('up');
  const healed = performance.now();
  const times = (await allReport(rev, 180_000)).map((t) => Math.max(0, t - healed));
  out({ phase: 'partition', converge: times });
}
await watcher.cancel();
etcd.close();
out({ phase: 'done' });
