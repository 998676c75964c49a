/**
 * AuthIP with Kerberos: SA setup latency one at a time and setups per second with many at once,
 * consec ↔ consec in one process over an in-memory wire, with a real MIT KDC on loopback. "Ticket
 * cached": the initiator keeps its credential cache, so after the first setup it asks the KDC
 * nothing (the service ticket is reused); "no ticket": a fresh cache per setup, so each one costs
 * an AS and a TGS exchange with the KDC first — what a host sees after a restart or for a new peer.
 * "With a user": Extended Mode after Quick Mode, the user's own tickets read from the user's
 * credential cache (checked and copied, as the daemon does) and a service ticket asked for each time.
 *
 *   node --import tsx bench/authip.ts [--runs 50] [--count 400] [--json]
 */
import { AuthIpManager } from '../src/ike/authip/manager.ts';
import type { AuthIpConfig } from '../src/ike/authip/session.ts';
import { espProposals, ikeProposals } from '../src/ike/proposals.ts';
import { SpiRegistry } from '../src/ike/spi.ts';
import { GssContext } from '../src/io/gss.ts';
import { userInitiator } from '../src/daemon/kerberos.ts';
import { LabDomain } from '../src/lab/kdc.ts';
import { mmProposal, qmProposal } from '../src/policy/model.ts';
import { NO_AUDIT } from '../src/audit/events.ts';
import { NO_DATAPLANE } from '../src/sa/sink.ts';
import { emit, numberArg } from './lib/cli.ts';
import { median, percentile, round } from './lib/stats.ts';

const runs = numberArg('runs', 50);
const count = numberArg('count', 400);
const ip = (a: string) => Buffer.from(a.split('.').map(Number));
const ts = (a: string) => ({ type: 7, ipProtocol: 0, startPort: 0, endPort: 65535, start: ip(a), end: ip(a) });

const dom = await LabDomain.loopback();
process.env.KRB5_CONFIG = dom.krb5Conf;
try {
  await dom.join('alice');
  await dom.join('bob');
  await dom.addUser('dave', 'bench-Dave-1');
  const uid = process.getuid?.() ?? 0;
  await dom.kinit('localhost', 'dave', 'bench-Dave-1', `FILE:${dom.userCcache(uid)}`);
  /** Extended Mode in the negotiation (both ends' rules ask for the user). */
  let withUser = false;
  const config = (local: string, remote: string, initiator = false): AuthIpConfig => ({
    name: 'bench',
    mmProposals: ikeProposals([mmProposal({ Encryption: 'AES256', Hash: 'SHA256', KeyExchange: 'DH14' })]).proposals,
    espProposals: (spi) =>
      espProposals([qmProposal({ Encapsulation: ['ESP'], Encryption: 'AESGCM256', ESPHash: 'AESGMAC256' })], spi)
        .proposals,
    localTs: [ts(local)],
    remoteTs: [ts(remote)],
    mode: 'transport',
    lifeSeconds: 28800,
    childLifeSeconds: 3600,
    extendedMode: withUser ? (initiator ? { user: (spn) => userInitiator(uid, spn) } : {}) : undefined,
  });
  let ccache = 'MEMORY:bench-alice';
  const side = (address: string, host: string, peer: () => AuthIpManager | undefined) =>
    new AuthIpManager({
      address,
      spis: new SpiRegistry(),
      audit: NO_AUDIT,
      dataplane: NO_DATAPLANE,
      send: (d, from) => setImmediate(() => peer()?.receive(d, from)),
      kerberos: {
        initiator: (spn) =>
          GssContext.initiator({
            target: spn,
            principal: dom.computerPrincipal(host),
            clientKeytab: dom.keytab(host),
            ccache,
          }),
        acceptor: () => GssContext.acceptor({ keytab: dom.keytab(host) }),
        spn: () => dom.computerPrincipal(host),
      },
      log: () => {},
      retransmits: [2000, 4000, 8000],
      halfOpenMs: 60_000,
      configFor: () => config(address, address === '192.0.2.2' ? '192.0.2.1' : '192.0.2.2'),
    });
  const peers: { a?: AuthIpManager; b?: AuthIpManager } = {};
  const a = side('192.0.2.1', 'alice', () => peers.b);
  const b = side('192.0.2.2', 'bob', () => peers.a);
  Object.assign(peers, { a, b });
  const setup = async (): Promise<number> => {
    const t0 = performance.now();
    const r = a.initiate({ address: '192.0.2.2', port: 500 }, config('192.0.2.1', '192.0.2.2', true));
    await r.child;
    const ms = performance.now() - t0;
    await r.session.delete('bench');
    return ms;
  };
  const latency = async (fresh: boolean): Promise<number[]> => {
    const out: number[] = [];
    for (let i = 0; i < runs; i++) {
      if (fresh) ccache = `MEMORY:bench-alice-${i}`;
      out.push(round(await setup()));
    }
    return out;
  };
  await setup(); // the first ticket
  // KDC requests per setup, from the KDC's own log: what "cached" saves.
  const kdcRequests = () => (dom.log().match(/(?:AS_REQ|TGS_REQ) /g) ?? []).length;
  let before = kdcRequests();
  const cached = await latency(false);
  const cachedKdc = (kdcRequests() - before) / runs;
  before = kdcRequests();
  const uncached = await latency(true);
  const uncachedKdc = (kdcRequests() - before) / runs;
  const rate = async (fresh: boolean): Promise<number> => {
    const t0 = performance.now();
    let i = 0;
    const worker = async () => {
      while (i < count) {
        if (fresh) ccache = `MEMORY:bench-rate-${i}`;
        i++;
        await setup();
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
    return Math.round(count / ((performance.now() - t0) / 1000));
  };
  ccache = 'MEMORY:bench-alice';
  const cachedRate = await rate(false);
  const uncachedRate = await rate(true);
  ccache = 'MEMORY:bench-alice';
  withUser = true;
  before = kdcRequests();
  const user = await latency(false);
  const userKdc = (kdcRequests() - before) / runs;
  const userRate = await rate(false);
  const row = (name: string, xs: number[], kdc: number, perS: number) => [
    name,
    round(median(xs)),
    percentile(xs, 99),
    round(kdc),
    perS,
  ];
  emit({
    id: 'authip-setup',
    title: 'AuthIP with Kerberos: SA setup (Main Mode and the first Quick Mode), consec ↔ consec',
    method: `Computer Kerberos, AES-256/SHA-256 Main Mode (no Diffie-Hellman), one ESP child SA with AES-GCM-256; both ends in one process over an in-memory wire, MIT krb5-kdc on loopback. Latency: ${runs} setups one at a time, from message 1 to Quick Mode synchronisation. Setups/s: ${count} setups, 16 at a time. "No ticket": a fresh credential cache per setup (AS and TGS exchanges with the KDC first). "With a user": then Extended Mode with a user's Kerberos, the user's credential cache checked and copied per setup (one TGS exchange each), until Auth4.`,
    columns: ['initiator credentials', 'median ms', 'p99 ms', 'KDC requests per setup', 'setups/s'],
    rows: [
      row('ticket cached', cached, cachedKdc, cachedRate),
      row('no ticket (KDC asked each time)', uncached, uncachedKdc, uncachedRate),
      row('ticket cached, with a user (Extended Mode)', user, userKdc, userRate),
    ],
    chart: { column: 4, unit: 'setups/s' },
  });
} finally {
  await dom.close();
}
