/**
 * IKEv2 SA setup time in the lab (PSK, AES-256/SHA-256/ECP-256, one child SA): consec initiating
 * to strongSwan, next to strongSwan initiating to strongSwan, in the same run. consec's figure is
 * measured inside the initiator (IKE_SA_INIT sent → IKE_AUTH done); strongSwan's is the wall time of
 * `swanctl --initiate`, which adds swanctl's own start-up (≈ 13 ms, shared/notes/strongswan-lab.md);
 * the same strongSwan initiator against consec as the responder compares the two responders alike.
 *
 *   node --import tsx bench/ike-setup.ts [--runs 20] [--json]
 */
import { Lab } from '../src/lab/lab.ts';
import { Charon, pskHostTunnel } from '../src/lab/strongswan.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { events, fixture } from '../test/helpers.ts';
import { emit, numberArg } from './lib/cli.ts';
import { median, percentile, round } from './lib/stats.ts';

const runs = numberArg('runs', 20);
const PSK = 'bench-psk-0123456789abcdef';
const cfg = (l: string, r: string) => pskHostTunnel(l, r, { name: 'c', secret: PSK, logLevel: 0 });
const lab = await Lab.create(hostToHost());
try {
  const a = lab.address('alice');
  const b = lab.address('bob');
  const bob = await Charon.start(lab, 'bob', cfg(b, a));
  const consec: number[] = [];
  for (let i = 0; i < runs; i++) {
    const p = fixture(lab, 'alice', 'ike-initiate', [a, b, PSK, 'AES256-SHA256-DH19', 'AESGCM256']);
    await p.exited;
    const [e] = events<{ ms: number }>(p, 'established');
    if (!e) throw new Error(p.output());
    consec.push(e.ms);
  }
  const alice = await Charon.start(lab, 'alice', cfg(a, b));
  const swan: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await alice.initiate('c');
    swan.push(Math.round((performance.now() - t0) * 10) / 10);
    await alice.swanctl(['--terminate', '--ike', 'c']);
  }
  // The same initiator (strongSwan, same swanctl overhead) against consec as the responder.
  await bob.stop();
  const resp = fixture(lab, 'bob', 'ike-respond', [b, a, PSK, 'AES256-SHA256-DH19', 'AESGCM256', 0, '--stay', 600_000]);
  await resp.waitFor(/"event":"listening"/);
  const toConsec: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await alice.initiate('c');
    toConsec.push(Math.round((performance.now() - t0) * 10) / 10);
    await alice.swanctl(['--terminate', '--ike', 'c']);
  }
  await Promise.all([alice.stop(), resp.stop()]);
  const row = (name: string, xs: number[]) => [name, round(median(xs)), percentile(xs, 90), Math.min(...xs)];
  emit({
    id: 'ike-setup',
    title: 'IKEv2 SA setup latency, one at a time',
    method: `PSK, AES-256/SHA-256/ECP-256, one child SA with AES-GCM-256, lab veth, ${runs} runs each. consec's figure is timed inside the initiator (IKE_SA_INIT sent → IKE_AUTH done); strongSwan's is the wall time of \`swanctl --initiate\`, which includes swanctl's own start-up (≈ 13 ms), so the last two rows compare the responders alike.`,
    columns: ['initiator → responder', 'median ms', 'p90 ms', 'min ms'],
    rows: [
      row('consec → strongSwan (in-process timing)', consec),
      row('strongSwan → strongSwan (swanctl wall time)', swan),
      row('strongSwan → consec (swanctl wall time)', toConsec),
    ],
    chart: { column: 1, unit: 'ms' },
  });
} finally {
  await lab.destroy();
}
