/**
 * IKE load generator for bench/ike-load.ts, run inside a lab namespace: one IKE manager (consec's
 * initiator) negotiating `--count` IKE SAs (with `--ike 1`: ISAKMP SAs, Main Mode + Quick Mode),
 * each with one child SA, against `--remote`, at most
 * `--concurrency` at a time; SAs stay up (the responder keeps them) and are forgotten at the end.
 * With `--flood-from ADDR --flood-rate N`, a second socket at ADDR sends N IKE_SA_INIT requests a
 * second (fresh SPIs, never completed) while the load runs: a half-open flood.
 *
 * Prints one JSON line: setups, failures, seconds, latencies (ms), cookies asked of the load, and
 * the flood's sent/answered/cookie counts.
 *
 *   node --import tsx bench/lib/ike-loadgen.ts --local A --remote B --psk S [--dh 19|14]
 *     [--count 500] [--concurrency 16] [--mode transport|tunnel] [--ike 2|1] [--flood-from A2 --flood-rate 2000]
 */
import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { IkeManager } from '../../src/ike/manager.ts';
import { espProposals, ikeProposals } from '../../src/ike/proposals.ts';
import type { PeerConfig } from '../../src/ike/session.ts';
import { findNotifies } from '../../src/ike/tasks/task.ts';
import { decodeMessage } from '../../src/ike/wire/codec.ts';
import { IdType, NotifyType } from '../../src/ike/wire/constants.ts';
import { writeIp } from '../../src/io/addr.ts';
import { mmProposal, qmProposal } from '../../src/policy/model.ts';
import { numberArg, stringArg } from './cli.ts';

const local = stringArg('local', '');
const remote = stringArg('remote', '');
const psk = stringArg('psk', '');
const dh = stringArg('dh', '19');
const count = numberArg('count', 500);
const concurrency = numberArg('concurrency', 16);
const mode = stringArg('mode', 'transport') as 'transport' | 'tunnel';
const floodFrom = stringArg('flood-from', '');
const floodRate = numberArg('flood-rate', 2000);
const ikeVersion = numberArg('ike', 2);

const v4 = (a: string) => {
  const b = Buffer.alloc(4);
  writeIp(a, b);
  return b;
};
const host = (a: string) => ({ type: 7, ipProtocol: 0, startPort: 0, endPort: 65535, start: v4(a), end: v4(a) });
const mm = mmProposal({ Encryption: 'AES256', Hash: 'SHA256', KeyExchange: dh === '14' ? 'DH14' : 'DH19' });
const qm = qmProposal({ Encapsulation: ['ESP'], Encryption: 'AESGCM256', ESPHash: 'AESGMAC256' });
const DAY = 86_400_000;
const peer: PeerConfig = {
  name: 'load',
  ikeProposals: ikeProposals([mm]).proposals,
  espProposals: (spi) => espProposals([qm], spi).proposals,
  credentials: { method: 'psk', psk: Buffer.from(psk) },
  localId: { type: IdType.IPV4_ADDR, data: v4(local) },
  remoteId: { type: IdType.IPV4_ADDR, data: v4(remote) },
  tsi: [host(local)],
  tsr: [host(remote)],
  mode,
  lifetimes: { ikeRekeyMs: DAY, ikeExpireMs: DAY, childRekeyMs: DAY, childExpireMs: DAY },
};

let cookiesAsked = 0;
const manager = new IkeManager({
  address: local,
  peerFor: () => undefined,
  timing: { dpdMs: 0 },
  log: (event, detail) => {
    if (event === 'send IKE_SA_INIT' && Number(detail?.attempt) > 0) cookiesAsked++;
    if (event.startsWith('Main Mode message 1 again with the responder cookie')) cookiesAsked++;
  },
});
await manager.listen();

/** The half-open flood: one valid IKE_SA_INIT request re-sent with a fresh initiator SPI each time. */
async function flood(until: () => boolean): Promise<{ sent: number; answered: number; cookies: number }> {
  const template = await firstInitRequest();
  const sock = createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, floodFrom, () => r()));
  let answered = 0;
  let cookies = 0;
  sock.on('message', (m) => {
    answered++;
    try {
      if (findNotifies(decodeMessage(m).payloads, NotifyType.COOKIE).length > 0) cookies++;
    } catch {
      // not an IKE message
    }
  });
  let sent = 0;
  const perTick = Math.max(1, Math.round(floodRate / 100));
  while (!until()) {
    for (let i = 0; i < perTick; i++) {
      const p = Buffer.from(template);
      randomBytes(8).copy(p, 0);
      sock.send(p, 500, remote);
      sent++;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  await new Promise((r) => setTimeout(r, 500)); // the last answers
  sock.close();
  return { sent, answered, cookies };
}

/** An IKE_SA_INIT request as consec sends it, captured from a throwaway manager's first send. */
async function firstInitRequest(): Promise<Buffer> {
  return new Promise((resolve) => {
    const m = new IkeManager({ address: local, peerFor: () => undefined });
    void m.listen(() => ({
      address: local,
      sendIke: (message) => {
        resolve(Buffer.from(message));
        queueMicrotask(() => m.close());
      },
      sendUdp4500: () => {},
      close: () => {},
    }));
    m.initiate({ remote, peer }).catch(() => {});
  });
}

const latencies: number[] = [];
const errors = new Map<string, number>();
let next = 0;
let running = true;
const started = performance.now();
const floodDone = floodFrom ? flood(() => !running) : undefined;
await Promise.all(
  Array.from({ length: Math.min(concurrency, count) }, async () => {
    while (next < count) {
      next++;
      const t0 = performance.now();
      try {
        if (ikeVersion === 1) await manager.v1.initiate({ remote, peer });
        else await manager.initiate({ remote, peer });
        latencies.push(performance.now() - t0);
      } catch (err) {
        const k = (err as Error).message.slice(0, 120);
        errors.set(k, (errors.get(k) ?? 0) + 1);
      }
    }
  }),
);
const seconds = (performance.now() - started) / 1000;
running = false;
const floodResult = await floodDone;
console.log(
  JSON.stringify({
    setups: latencies.length,
    failures: count - latencies.length,
    errors: Object.fromEntries(errors),
    seconds,
    latencies: latencies.map((x) => Math.round(x * 10) / 10),
    cookiesAsked,
    flood: floodResult,
  }),
);
manager.close();
process.exit(0);
