/**
 * The outbound pipeline (RFC 4301 §5.1), one read loop in numbered stages like wireguard-go's
 * device/send.go:
 *
 *   1. read a batch of IP packets from the TUN (or take the held packets an SA now covers)
 *   2. per packet: parse it; the policy's verdict — exempt goes out in clear
 *   3. the SA protecting it (newest active match); without one, Request goes out in clear while IKE
 *      is asked, Require is held for the SA, traffic no rule covers goes out in clear
 *   4. gather it for its SA (offset, length, next header: tunnel mode carries the whole packet,
 *      transport mode what follows the IP header); AH is sealed here, one packet at a time
 *   5. per SA: take the gather's sequence numbers and seal it in one call (the addon, or the
 *      TypeScript ESP behind the same interface), straight into the send batches
 *   6. send the batches: ESP in UDP 4500 and raw ESP per local address (the SA's), IP_HDRINCL (AH and
 *      cleartext) per family
 */
import type { AhOutbound } from '../esp/ah.ts';
import { EspError, type EspOutbound } from '../esp/esp.ts';
import { PacketBatch, type RawIpSocket, type UdpSocket } from '../io/native.ts';
import type { AcquireQueue } from './acquire.ts';
import type { Device, LocalEndpoint } from './device.ts';
import { type IpInfo, parseIp } from './ip.ts';
import { peerOctets, type Sad, type SaEntry } from './sad.ts';
import type { Counters } from './stats.ts';

/**
 * The policy's word on an outbound packet: protect or drop (require), protect when possible
 * (request), never protect (exempt: IKE, default exemptions, authentication exemptions), or
 * nothing (none: no rule — protected only by an SA that covers it, such as a manual SA).
 */
export type Verdict = 'require' | 'request' | 'exempt' | 'none';

export const SLOT = 2048;
export const BATCH = 64;

/** Packets of one batch bound for one SA: offsets and lengths in the source buffer, next headers. */
interface Gather {
  count: number;
  /** Octets ESP protects, as the kernel counts them. */
  bytes: number;
  off: Int32Array;
  len: Int32Array;
  nh: Uint8Array;
}

export interface OutboundContext {
  readonly device: Device;
  readonly sad: Sad;
  readonly counters: Counters;
  readonly held: AcquireQueue;
  classify(packet: Buffer, ip: IpInfo): Verdict;
  /** The SA cannot seal any more (sequence numbers exhausted): hard expiry. */
  exhausted(e: SaEntry): void;
  /** Traffic went through `e`: its lifetime is checked. */
  sent(e: SaEntry): void;
}

type Sender = { send(b: PacketBatch, count?: number): number };

export class Outbound {
  private readonly tunIn = new PacketBatch(BATCH, SLOT);
  private readonly released = new PacketBatch(BATCH, SLOT);
  /** Send batches per local address: ESP in UDP 4500 and raw ESP, out of that address's sockets. */
  private readonly endpointOut = new Map<LocalEndpoint, { udp: PacketBatch; raw: PacketBatch }>();
  /** IP_HDRINCL per family: cleartext, and AH (it carries the outer header it authenticates). */
  private readonly clear4Out = new PacketBatch(BATCH, SLOT);
  private readonly clear6Out = new PacketBatch(BATCH, SLOT);
  private readonly gathers = new Map<SaEntry, Gather>();
  private readonly touched: SaEntry[] = [];
  /** Packets sent in clear (exempt, Request without an SA, no rule). */
  clearPackets = 0;

  constructor(private readonly c: OutboundContext) {}

  /** Stage 1: every batch the TUN has, through stages 2–6. */
  fromTun(): void {
    for (;;) {
      const n = this.c.device.tun.read(this.tunIn);
      if (n === 0) return;
      this.process(this.tunIn, n);
    }
  }

  /** Stage 1 for held packets an SA now covers: the same stages, a batch at a time. */
  sendHeld(packets: readonly Buffer[]): void {
    for (let i = 0; i < packets.length; i += BATCH) {
      const part = packets.slice(i, i + BATCH);
      part.forEach((p, k) => this.released.set(k, p));
      this.process(this.released, part.length);
    }
  }

  /** Stages 2–6 over packets 0…n-1 of `src`. */
  private process(src: PacketBatch, n: number): void {
    for (let i = 0; i < n; i++) this.route(src, i);
    this.sealGathered(src);
    this.flush();
  }

  /** Stages 2–4 for packet `i` of `src`. */
  private route(src: PacketBatch, i: number): void {
    const packet = src.packet(i);
    const ip = parseIp(packet);
    if (!ip) {
      this.c.counters.drop('not IP');
      return;
    }
    const verdict = this.c.classify(packet, ip);
    if (verdict === 'exempt') {
      this.sendClear(packet, ip);
      return;
    }
    const e = this.c.sad.outboundFor(packet, ip);
    if (!e) {
      if (verdict === 'none') this.sendClear(packet, ip);
      else if (verdict === 'request') {
        // Request: in clear while IKE negotiates; protected once an SA exists.
        this.c.held.acquire(packet, ip);
        this.sendClear(packet, ip);
      } else this.c.held.hold(packet, ip);
      return;
    }
    const tunnel = e.mode === 'tunnel';
    const nh = tunnel ? (ip.family === 4 ? 4 : 41) : ip.protocol;
    const skip = tunnel ? 0 : ip.headerLength;
    if (e.ah) {
      this.sealAh(e, packet.subarray(skip), nh);
      return;
    }
    const g = this.gather(e);
    const k = g.count++;
    g.off[k] = (src.offsets[i] as number) + skip;
    g.len[k] = packet.length - skip;
    g.nh[k] = nh;
    g.bytes += packet.length - skip;
  }

  private gather(e: SaEntry): Gather {
    let g = this.gathers.get(e);
    if (!g) {
      g = { count: 0, bytes: 0, off: new Int32Array(BATCH), len: new Int32Array(BATCH), nh: new Uint8Array(BATCH) };
      this.gathers.set(e, g);
    }
    if (g.count === 0) this.touched.push(e);
    return g;
  }

  /** The send batches of a local address (made on its first packet). */
  private outOf(ep: LocalEndpoint): { udp: PacketBatch; raw: PacketBatch } {
    let o = this.endpointOut.get(ep);
    if (!o) {
      o = { udp: new PacketBatch(BATCH, SLOT), raw: new PacketBatch(BATCH, SLOT) };
      this.endpointOut.set(ep, o);
    }
    return o;
  }

  /** A local address is gone: what was batched for it goes out first, then its batches go. */
  forgetEndpoint(ep: LocalEndpoint): void {
    this.flush();
    this.endpointOut.delete(ep);
  }

  /** AH authenticates the outer header too: the whole packet goes out through the IP_HDRINCL socket. */
  private sealAh(e: SaEntry, payload: Buffer, nh: number): void {
    const ep = e.local;
    if (!ep) {
      this.c.counters.drop('no local address');
      return;
    }
    let sealed: Buffer;
    try {
      sealed = (e.out as AhOutbound).seal(payload, nh, ep.localBytes, peerOctets(e));
    } catch (err) {
      this.c.counters.drop(err instanceof EspError ? err.reason : 'seal');
      this.c.exhausted(e);
      return;
    }
    this.carried(e, 1, payload.length);
    const batch = ep.family === 4 ? this.clear4Out : this.clear6Out;
    if (batch.count === batch.capacity) this.flush();
    const k = batch.count++;
    batch.set(k, sealed);
    peerOctets(e).copy(batch.addrs, k * 16);
    batch.ports[k] = 0;
  }

  /** Stage 5: each SA's gathered packets sealed in one call, straight into the send batches. */
  private sealGathered(src: PacketBatch): void {
    for (const e of this.touched) {
      const g = this.gathers.get(e);
      if (!g || !e.batch) continue; // removed meanwhile (counted then)
      const count = g.count;
      const bytes = g.bytes;
      g.count = 0;
      g.bytes = 0;
      let first: number;
      try {
        first = (e.out as EspOutbound).reserve(count, bytes);
      } catch (err) {
        this.c.counters.drop(err instanceof EspError ? err.reason : 'seal', count);
        this.c.exhausted(e);
        continue;
      }
      const ep = e.local;
      if (!ep) {
        this.c.counters.drop('no local address', count);
        continue;
      }
      const out = this.outOf(ep);
      const batch = e.udp ? out.udp : out.raw;
      if (batch.count + count > batch.capacity) this.flush();
      e.batch.seal.seal(src.buf, g.off, g.len, g.nh, count, batch, batch.count, e.out.spi, first);
      // The peer's address as octets kept with the SA: nothing parsed per packet.
      const peer = peerOctets(e);
      for (let k = batch.count; k < batch.count + count; k++) {
        peer.copy(batch.addrs, k * 16);
        batch.ports[k] = e.udp ? e.remote.port : 0;
      }
      batch.count += count;
      this.carried(e, count, bytes);
    }
    this.touched.length = 0;
  }

  private carried(e: SaEntry, packets: number, bytes: number): void {
    const s = this.c.counters.stats;
    s.packetsOut += packets;
    s.bytesOut += bytes;
    this.c.sent(e);
  }

  /** Sends an IP packet as it is (its own header), around the TUN: exempt or Request traffic. */
  private sendClear(packet: Buffer, ip: IpInfo): void {
    if (!this.c.device.clear(ip.family)) {
      this.c.counters.drop('no socket for the other family');
      return;
    }
    const batch = ip.family === 4 ? this.clear4Out : this.clear6Out;
    if (batch.count === batch.capacity) this.flush();
    const k = batch.count++;
    batch.set(k, packet);
    packet.copy(batch.addrs, k * 16, ip.dst, ip.dst + (ip.family === 4 ? 4 : 16));
    this.clearPackets++;
  }

  /** Stage 6: the batches out, each through its socket. */
  flush(): void {
    const d = this.c.device;
    const pairs: [PacketBatch, UdpSocket | RawIpSocket | undefined][] = [
      [this.clear4Out, d.clear4],
      [this.clear6Out, d.clear6],
    ];
    for (const [ep, o] of this.endpointOut) pairs.push([o.udp, ep.udp4500], [o.raw, ep.raw]);
    for (const [batch, sock] of pairs) {
      if (batch.count > 0 && sock) this.send(sock, batch);
      batch.count = 0;
    }
  }

  /**
   * Sends a batch; a send the kernel refuses (no route, a firewall drop, a full buffer) loses those
   * packets, counted by errno, and never stops the data plane.
   */
  private send(sock: Sender, batch: PacketBatch): void {
    try {
      while (batch.count > 0) {
        try {
          const n = sock.send(batch, batch.count);
          if (n >= batch.count || n === 0) {
            if (n === 0) this.c.counters.drop('send would block', batch.count);
            return;
          }
          Outbound.shift(batch, n); // partial send: the rest to the front, and on
        } catch (err) {
          this.c.counters.drop(`send failed: ${(err as { code?: string }).code ?? 'unknown'}`);
          Outbound.shift(batch, 1); // drop the packet the kernel refused, keep the others
        }
      }
    } finally {
      for (let i = 0; i < batch.capacity; i++) batch.offsets[i] = i * batch.slot;
    }
  }

  private static shift(batch: PacketBatch, n: number): void {
    batch.offsets.copyWithin(0, n, batch.count);
    batch.lengths.copyWithin(0, n, batch.count);
    batch.addrs.copyWithin(0, n * 16, batch.count * 16);
    batch.ports.copyWithin(0, n, batch.count);
    batch.count -= n;
  }

  /** An SA is gone: packets gathered for it in the read being handled go nowhere (returned: how many). */
  forget(e: SaEntry): number {
    const n = this.gathers.get(e)?.count ?? 0;
    this.gathers.delete(e);
    return n;
  }

  /** After a fault in a read loop: what was gathered is dropped, what was batched is sent. */
  reset(): void {
    for (const g of this.gathers.values()) {
      g.count = 0;
      g.bytes = 0;
    }
    this.touched.length = 0;
    this.flush();
  }
}
