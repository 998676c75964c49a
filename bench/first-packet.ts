/**
 * First-packet latency under Require: with no SA up, how long from a flow's first datagram to its
 * first echo — the packet waits (or is dropped), IKE negotiates, the SA is installed, the packet
 * goes. consec ↔ consec (transport mode) and consec → strongSwan (tunnel mode, charon responding):
 * consec's data plane holds the packet and acquires an SA. strongSwan cannot take part as the
 * initiator here: kernel-libipsec has no trap policies (no acquire; strongswan/strongswan#147), so
 * its packets without an SA are dropped. A probe sends a numbered UDP datagram every millisecond
 * from a fresh socket until one comes back; between runs the SAs are deleted
 * (Remove-NetIPsecMainModeSA, which tells the peer).
 *
 *   node --import tsx bench/first-packet.ts [--runs 10] [--json]
 */
import { join } from 'node:path';
import { Lab } from '../src/lab/lab.ts';
import { Charon, pskHostTunnel } from '../src/lab/strongswan.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { consecDaemon, consecPwsh, ROOT } from '../test/helpers.ts';
import { emit, numberArg } from './lib/cli.ts';
import { consecPolicy, removeFilters } from './lib/consec.ts';
import { labNodeScript } from './lib/lab-node.ts';
import { median, percentile, round } from './lib/stats.ts';

const runs = numberArg('runs', 10);
const PSK = 'bench-first-packet-psk-0123456789';
const PORT = 7007;

interface Probe {
  ms: number | null;
  firstSeq: number | null;
  sent: number;
  rttMs: number | null;
}

const lab = await Lab.create(hostToHost());
const a = lab.address('alice');
const b = lab.address('bob');
const PROBE = 'bench/lib/udp-probe.ts';
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

const GCM = '-Encapsulation ESP -Encryption AESGCM256 -ESPHash AESGMAC256';

/** Deletes the initiator's main mode SAs (and with them the quick mode SAs), at the peer too. */
const removeMm = (stateDir: string) => async () => {
  const r = await consecPwsh(stateDir, 'Get-NetIPsecMainModeSA | Remove-NetIPsecMainModeSA');
  if (r.code !== 0) throw new Error(r.stderr);
};

async function probe(): Promise<Probe> {
  return labNodeScript<Probe>(lab, 'alice', PROBE, ['--to', b, String(PORT)], 30_000);
}

/** `runs` probes, each with no SA up at its start (`reset` deletes them between runs). */
async function series(reset: () => Promise<void>): Promise<Probe[]> {
  const out: Probe[] = [];
  for (let i = 0; i < runs; i++) {
    out.push(await probe());
    process.stderr.write('.');
    await reset();
    await pause(1200); // the data plane acquires at most once a second per destination
  }
  process.stderr.write('\n');
  return out;
}

const results: { name: string; probes: Probe[] }[] = [];
const server = lab.spawn('bob', [process.execPath, '--import', 'tsx', join(ROOT, PROBE), '--serve', b, String(PORT)]);
try {
  await server.waitFor(/listening/);

  const dirs: Record<string, string> = {};
  const daemons = [];
  for (const [host, local, remote] of [
    ['bob', b, a],
    ['alice', a, b],
  ] as const) {
    dirs[host] = await consecPolicy({
      local,
      remote,
      psk: PSK,
      qm: GCM,
      tunnel: false,
    });
    const d = consecDaemon(lab, host, dirs[host] as string, local);
    await d.waitFor(/"msg":"ready"/);
    daemons.push(d);
  }
  results.push({
    name: 'consec ↔ consec (transport, Require)',
    probes: await series(removeMm(dirs.alice as string)),
  });
  for (const d of daemons.reverse()) await d.stop('SIGTERM', 5000);
  await removeFilters(lab, 'alice', 'bob');

  // consec initiating to charon: the data plane holds the packet, charon answers as the responder.
  const swanB = await Charon.start(lab, 'bob', pskHostTunnel(b, a, { name: 'c', secret: PSK, logLevel: 0 }));
  const dirA = await consecPolicy({ local: a, remote: b, psk: PSK, qm: GCM, tunnel: true });
  const dA = consecDaemon(lab, 'alice', dirA, a);
  await dA.waitFor(/"msg":"ready"/);
  results.push({
    name: 'consec → strongSwan (tunnel, Require; charon responds)',
    probes: await series(removeMm(dirA)),
  });
  await dA.stop('SIGTERM', 5000);
  await swanB.stop();
  await removeFilters(lab, 'alice');
} finally {
  await server.stop('SIGTERM', 2000);
  await lab.destroy();
}

emit({
  id: 'first-packet',
  title: 'First-packet latency under Require',
  method: `A flow's first UDP datagram with no SA up: time until its first echo, ${runs} runs per peer pair with the SAs deleted between runs (PSK, AES-256/SHA-256/ECP-256, child AES-GCM-256). The probe sends a datagram every millisecond until an echo comes back; "first datagram delivered" counts runs whose first echo was datagram 1 (held while IKE negotiated, not dropped). The round trip once the SA is up is the baseline.`,
  columns: ['peers', 'median ms', 'p90 ms', 'first datagram delivered', 'round trip with SA up, ms'],
  rows: results.map(({ name, probes }) => {
    const ms = probes.map((p) => p.ms ?? Number.NaN).filter(Number.isFinite);
    return [
      name,
      ms.length ? round(median(ms)) : 'failed',
      ms.length ? round(percentile(ms, 90)) : 'failed',
      `${probes.filter((p) => p.firstSeq === 1).length} of ${probes.length}`,
      round(median(probes.map((p) => p.rttMs ?? Number.NaN).filter(Number.isFinite)), 2),
    ];
  }),
  chart: { column: 1, unit: 'ms' },
  notes: [
    'strongSwan ↔ strongSwan is missing: kernel-libipsec (its userspace ESP, the only one on this kernel) does not support trap policies — a packet without an SA is dropped with "could not find an outbound IPsec SA" and no acquire is raised (strongswan/strongswan#147).',
  ],
  raw: results,
});
