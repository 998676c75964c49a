/**
 * Memory per SA: one consec responder (IKEv2 manager + the data plane's SAD with its ESP contexts,
 * AES-GCM in the addon) holding N established IKE SAs with one child SA each, N = 1k and 10k.
 * Initiators come one by one over the in-memory network from distinct IPv6 addresses and forget
 * their side afterwards (close without Delete), so what stays is the responder's state. Figures are
 * the growth of the JS heap plus external memory (Buffers, KeyObjects) and of RSS, per SA, after GC.
 *
 *   node --expose-gc --import tsx bench/memory.ts [--sizes 1000,10000] [--json]
 */
import { MemoryNetwork } from '../src/ike/bind.ts';
import type { ChildSaSink } from '../src/sa/sink.ts';
import { IkeManager } from '../src/ike/manager.ts';
import { planResponder } from '../src/ike/config.ts';
import { espProposals, ikeProposals } from '../src/ike/proposals.ts';
import type { Lifetimes, PeerConfig } from '../src/ike/session.ts';
import { IdType } from '../src/ike/wire/constants.ts';
import { Sad } from '../src/dataplane/sad.ts';
import { writeIp } from '../src/io/addr.ts';
import { mmProposal, qmProposal } from '../src/policy/model.ts';
import { PolicyStores } from '../src/policy/store.ts';
import { asResponder } from '../src/daemon/keying.ts';
import { emit, stringArg } from './lib/cli.ts';
import { consecPolicy } from './lib/consec.ts';

const sizes = stringArg('sizes', '1000,10000').split(',').map(Number);
const R = '2001:db8::1';
const PSK = 'memory-bench-psk-0123456789';

// The responder's policy, written as an admin writes it (the lab benches' policy), and planned per
// peer as the daemon plans it: what each SA shares with the others is what the daemon's SAs share.
const doc = new PolicyStores(
  await consecPolicy({
    local: R,
    remote: '2001:db8:1::/48',
    psk: PSK,
    qm: '-Encapsulation ESP -Encryption AESGCM256 -ESPHash AESGMAC256',
    tunnel: false,
  }),
).read('ActiveStore');
const responderConfig = (remote: string): PeerConfig | undefined => {
  const plan = planResponder(doc, R, remote);
  return plan && asResponder(plan);
};

// The initiators: hand-made, forgotten after each setup (their memory is not measured).
const mm = [mmProposal({ Encryption: 'AES256', Hash: 'SHA256', KeyExchange: 'DH19' })];
const qm = [qmProposal({ Encapsulation: ['ESP'], Encryption: 'AESGCM256', ESPHash: 'AESGMAC256' })];
const IKE_PROPOSALS = ikeProposals(mm).proposals;
const ESP_PROPOSALS = (spi: Buffer) => espProposals(qm, spi).proposals;
const CREDENTIALS = { method: 'psk', psk: Buffer.from(PSK) } as const;
const DAY: Lifetimes = {
  ikeRekeyMs: 86_400_000,
  ikeExpireMs: 86_400_000,
  childRekeyMs: 86_400_000,
  childExpireMs: 86_400_000,
};
const bytes = (a: string) => {
  const b = Buffer.alloc(16);
  writeIp(a, b);
  return b;
};
const host = (a: string) => ({ type: 8, ipProtocol: 0, startPort: 0, endPort: 65535, start: bytes(a), end: bytes(a) });

function initiatorConfig(local: string): PeerConfig {
  return {
    name: 'mem',
    ikeProposals: IKE_PROPOSALS,
    espProposals: ESP_PROPOSALS,
    credentials: CREDENTIALS,
    localId: { type: IdType.IPV6_ADDR, data: bytes(local) },
    remoteId: { type: IdType.IPV6_ADDR, data: bytes(R) },
    tsi: [host(local)],
    tsr: [host(R)],
    mode: 'transport',
    lifetimes: DAY,
  };
}

const gc = (): void => {
  (globalThis as { gc?: () => void }).gc?.();
};
const used = () => {
  gc();
  const m = process.memoryUsage();
  return { heap: m.heapUsed + m.external, rss: m.rss }; // external includes arrayBuffers
};

const rows: (string | number)[][] = [];
for (const n of sizes) {
  const net = new MemoryNetwork({ record: false }); // a log of every datagram would be most of the memory
  const sad = new Sad();
  const sink: ChildSaSink = { install: (sa) => void sad.install(sa), delete: (spi) => void sad.remove(spi) };
  const responder = new IkeManager({
    address: R,
    peerFor: responderConfig,
    dataplane: sink,
    maxHalfOpen: 1_000_000,
    cookieThreshold: 1_000_000,
    // No liveness checks: the initiators are gone on purpose, and a 10k run outlasts the 30 s default.
    timing: { dpdMs: 0 },
  });
  await responder.listen((rx) => net.bind(R, rx));
  const before = used();
  const started = performance.now();
  for (let i = 0; i < n; i++) {
    const I = `2001:db8:1::${(i + 2).toString(16)}`;
    const m = new IkeManager({ address: I, peerFor: () => undefined });
    await m.listen((rx) => net.bind(I, rx));
    await m.initiate({ remote: R, peer: initiatorConfig(I) });
    m.close(); // the initiator forgets its side without telling: only the responder's state stays
  }
  const setupS = (performance.now() - started) / 1000;
  const after = used();
  const established = responder.sessions().filter((s) => s.state === 'established').length;
  if (established !== n) process.stderr.write(`memory: only ${established} of ${n} IKE SAs stayed up\n`);
  rows.push([
    n,
    established,
    sad.size,
    Math.round((after.heap - before.heap) / n),
    Math.round((after.rss - before.rss) / n),
    Math.round(n / setupS),
  ]);
  responder.close();
}

emit({
  id: 'memory',
  title: 'Memory per established SA (IKE SA + one child SA, responder side)',
  method:
    'One consec responder (keying + the data plane SAD with AES-GCM contexts) holding N IKE SAs with one child SA each, negotiated in-process over the in-memory network (PSK, AES-256/SHA-256/ECP-256, child AES-GCM-256 in transport mode; the responder’s policy written with the NetSecurity cmdlets and planned per peer as the daemon does); initiators forget their side. Growth of JS heap + external memory and of RSS after GC, divided by N.',
  columns: [
    'SAs',
    'IKE SAs up',
    'child SAs in SAD',
    'heap+external bytes/SA',
    'RSS bytes/SA',
    'setups/s (both ends, one core)',
  ],
  rows,
  notes: ['Target: ≤ 4 KiB per SA.'],
});
