/**
 * First-packet probe for bench/first-packet.ts, run inside a lab namespace.
 *
 *   --serve ADDR PORT      echo every datagram back (until killed)
 *   --to ADDR PORT         from a fresh socket, send a numbered datagram every millisecond until the
 *                          first echo comes back (or --timeout-ms), then 20 one at a time; prints
 *                          {ms, firstSeq, sent, rttMs}: time from the first send to the first echo,
 *                          which datagram that echo was (1: the first one was held, not dropped), how
 *                          many were sent meanwhile, and the median round trip once the path is up.
 */
import { createSocket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { median } from './stats.ts';

const args = process.argv.slice(2);
const [mode, address = '', portText = '0'] = args;
const port = Number(portText);
const type = isIPv6(address) ? 'udp6' : 'udp4';

if (mode === '--serve') {
  const s = createSocket(type);
  s.on('message', (m, r) => s.send(m, r.port, r.address));
  s.bind(port, address, () => console.log(JSON.stringify({ event: 'listening' })));
} else {
  const timeoutMs = Number(args[args.indexOf('--timeout-ms') + 1] ?? 10_000) || 10_000;
  const s = createSocket(type);
  await new Promise<void>((r) => s.bind(0, () => r()));
  const echoes: { seq: number; at: number }[] = [];
  const echoAt = new Map<number, number>();
  let wake: (() => void) | undefined;
  s.on('message', (m) => {
    const e = { seq: m.readUInt32BE(0), at: performance.now() };
    echoes.push(e);
    echoAt.set(e.seq, e.at);
    wake?.();
  });
  const datagram = (seq: number) => {
    const b = Buffer.alloc(64);
    b.writeUInt32BE(seq);
    return b;
  };
  const t0 = performance.now();
  let seq = 0;
  while (echoes.length === 0 && performance.now() - t0 < timeoutMs) {
    s.send(datagram(++seq), port, address);
    await new Promise((r) => setTimeout(r, 1));
  }
  const first = echoes[0];
  const rtts: number[] = [];
  if (first) {
    for (let i = 0; i < 20; i++) {
      // Its own echo, not one of those still coming back from the burst sent while IKE negotiated.
      const want = 1_000_000 + i;
      const sentAt = performance.now();
      const deadline = sentAt + 1000;
      s.send(datagram(want), port, address);
      while (!echoAt.has(want) && performance.now() < deadline)
        await Promise.race([new Promise<void>((r) => (wake = r)), new Promise((r) => setTimeout(r, 50))]);
      const at = echoAt.get(want);
      if (at !== undefined) rtts.push(at - sentAt);
    }
  }
  console.log(
    JSON.stringify({
      ms: first ? first.at - t0 : null,
      firstSeq: first?.seq ?? null,
      sent: seq,
      rttMs: rtts.length ? median(rtts) : null,
    }),
  );
  s.close();
}
