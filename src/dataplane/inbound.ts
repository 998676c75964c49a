/**
 * The inbound pipeline (RFC 4301 §5.2, RFC 4303 §3.4), one read loop in numbered stages like
 * wireguard-go's device/receive.go:
 *
 *   1. read a batch: UDP 500 (IKE), UDP 4500 (IKE behind the non-ESP marker, NAT keepalives, ESP in
 *      UDP: RFC 3948), raw ESP, raw AH
 *   2. the SA by SPI (unknown: event 4965)
 *   3. replay pre-check (4961 inside the window, 4962 older than it)
 *   4. gather the packet for its SA
 *   5. per SA: open the gather in one call — ICV, decryption, padding (the addon, or the TypeScript
 *      ESP behind the same interface); an ICV failure is event 4960
 *   6. replay window update; an authenticated packet from a new address or port moves the SA's peer
 *      (its NAT mapping changed)
 *   7. transport mode: the IP header rebuilt in front of the payload (and the TCP/UDP checksum for our
 *      addresses behind a NAT, RFC 3948 §3.1.2)
 *   8. the inner packet checked against the SA's selectors (RFC 4301 §5.2 step 4)
 *   9. counted (packets, activity, lifetime) and written to the TUN in one batch
 *
 * AH packets take stages 2, 3, 5 and 6 one at a time (ah.ts), then 7–9 with the rest.
 */
import { type AhInbound, IPPROTO_AH } from '../esp/ah.ts';
import { EspError, type EspInbound, NEXT_HEADER_NONE } from '../esp/esp.ts';
import { openFailure, PacketBatch } from '../io/native.ts';
import { internetChecksum, recomputeTransportChecksum } from '../packet/checksum.ts';
import { type IkePort, type IkeReceiver, NON_ESP_MARKER, udp4500Kind } from '../sa/bind.ts';
import type { Device, LocalEndpoint } from './device.ts';
import { packetMatches, parseIp } from './ip.ts';
import { BATCH, SLOT } from './outbound.ts';
import { peerOctets, type Sad, type SaEntry } from './sad.ts';
import type { Counters, DriverDropId, DropReason } from './stats.ts';

/** Inbound packets of one read bound for one SA: where they are, their sequence numbers and read index. */
interface Gather {
  count: number;
  off: Int32Array;
  len: Int32Array;
  seq: Float64Array;
  seqHi: Uint32Array;
  idx: Int32Array;
}

export interface InboundContext {
  readonly device: Device;
  readonly sad: Sad;
  readonly counters: Counters;
  /** The keying service's receiver for IKE messages at a local address (once it listens there). */
  keying(address: string): IkeReceiver | undefined;
  /** Packets of `e` were accepted: counted, activity and lifetime. */
  received(e: SaEntry, packets: number, bytes: number): void;
}

export class Inbound {
  private readonly udpIn = new PacketBatch(BATCH, SLOT);
  private readonly rawIn = new PacketBatch(BATCH, SLOT);
  private readonly tunOut = new PacketBatch(BATCH, SLOT);
  private readonly scratch = new PacketBatch(BATCH, SLOT);
  private readonly scratchNh = new Uint8Array(BATCH);
  private readonly shifted = new Int32Array(BATCH);
  private readonly tunWOff = new Int32Array(BATCH);
  private readonly tunWLen = new Int32Array(BATCH);
  /** Scratch for an IPv6 AH packet: the raw socket gives what follows the IPv6 header; AH needs it. */
  private readonly ah6 = Buffer.alloc(40 + SLOT);
  private readonly gathers = new Map<SaEntry, Gather>();
  private readonly touched: SaEntry[] = [];

  /** The local address the packets being handled arrived at (set by each read loop). */
  private ep!: LocalEndpoint;

  constructor(private readonly c: InboundContext) {}

  /** Octets of the IP header transport mode puts back in front of a payload (IPv4 or IPv6 outer). */
  private get headroom(): number {
    return this.ep.family === 4 ? 20 : 40;
  }

  /** A driver-check drop of packet `index` of `batch` (read at this endpoint). */
  private driverDrop(reason: DropReason, id: DriverDropId, spi: number, batch: PacketBatch, index: number): void {
    this.c.counters.driverDrop(reason, id, spi, batch, index, this.ep.family);
  }

  // ---- stage 1 ---------------------------------------------------------------------------------

  fromUdp(ep: LocalEndpoint, port: IkePort): void {
    this.ep = ep;
    const sock = port === 500 ? ep.udp500 : ep.udp4500;
    const batch = this.udpIn;
    for (;;) {
      const n = sock.recv(batch);
      if (n === 0) return;
      const fam = sock.family;
      for (let i = 0; i < n; i++) {
        const len = batch.lengths[i] as number;
        if (len < 0) continue;
        const data = batch.packet(i);
        if (port === 500) {
          this.c.keying(ep.address)?.ike(Buffer.from(data), Inbound.from(batch, i, fam), 500);
          continue;
        }
        const kind = udp4500Kind(data);
        if (kind === 'ike')
          this.c
            .keying(ep.address)
            ?.ike(Buffer.from(data.subarray(NON_ESP_MARKER.length)), Inbound.from(batch, i, fam), 4500);
        else if (kind === 'esp') this.esp(data, batch, i, 0);
        else if (kind === 'runt') this.c.counters.drop('malformed');
      }
      this.openGathered(batch);
    }
  }

  fromRaw(ep: LocalEndpoint): void {
    this.ep = ep;
    const batch = this.rawIn;
    const v4 = ep.family === 4;
    for (;;) {
      const n = ep.raw.recv(batch);
      if (n === 0) return;
      for (let i = 0; i < n; i++) {
        if ((batch.lengths[i] as number) < 0) continue;
        const data = batch.packet(i);
        const skip = v4 ? ((data[0] as number) & 0x0f) * 4 : 0; // IPv4 raw receives carry the IP header
        this.esp(data.subarray(skip), batch, i, skip);
      }
      this.openGathered(batch);
    }
  }

  fromAh(ep: LocalEndpoint): void {
    this.ep = ep;
    const batch = this.rawIn;
    const v6 = ep.family === 6;
    for (;;) {
      const n = ep.ah.recv(batch);
      if (n === 0) return;
      for (let i = 0; i < n; i++) {
        const len = batch.lengths[i] as number;
        if (len < (v6 ? 12 : 32)) continue;
        let pkt = batch.packet(i);
        if (v6) {
          // IPv4 raw receives carry the IP header; IPv6 ones do not. The ICV covers it, with its
          // mutable fields zeroed, so rebuild it: sender from the receive, receiver is us.
          const h = this.ah6;
          h.writeUInt32BE(0x60000000, 0);
          h.writeUInt16BE(len, 4);
          h[6] = IPPROTO_AH;
          h[7] = 0;
          batch.addrs.copy(h, 8, i * 16, i * 16 + 16);
          ep.localBytes.copy(h, 24);
          pkt.copy(h, 40);
          pkt = h.subarray(0, 40 + len);
        }
        const ah = v6 ? 40 : 20;
        const spi = pkt.readUInt32BE(ah + 4);
        const e = this.c.sad.inbound(spi);
        if (!e || !e.ah) {
          this.driverDrop('unknown SPI', 4965, spi, batch, i);
          continue;
        }
        let opened;
        try {
          opened = (e.in as AhInbound).open(pkt);
        } catch (err) {
          this.refused(e, err, pkt.readUInt32BE(ah + 8), batch, i);
          continue;
        }
        const inner = this.inner(e, opened.payload, opened.nextHeader);
        if (!inner) continue;
        this.c.received(e, 1, opened.payload.length);
        if (this.tunOut.count === this.tunOut.capacity) this.flushTun();
        this.tunOut.set(this.tunOut.count++, inner);
      }
      this.flushTun();
    }
  }

  /** Where datagram `i` of a UDP batch came from (built only for IKE: ESP needs no object). */
  private static from(batch: PacketBatch, i: number, fam: 4 | 6): { address: string; port: number } {
    return { address: batch.address(i, fam), port: batch.ports[i] as number };
  }

  // ---- stages 2–4 ------------------------------------------------------------------------------

  /** ESP packet `index` of `batch` (UDP 4500 or raw ESP; `skip` octets of IP header before it). */
  private esp(esp: Buffer, batch: PacketBatch, index: number, skip: number): void {
    if (esp.length < 8) {
      this.c.counters.drop('malformed');
      return;
    }
    const spi = esp.readUInt32BE(0);
    const e = this.c.sad.inbound(spi);
    if (!e || !e.batch) {
      this.driverDrop('unknown SPI', 4965, spi, batch, index);
      return;
    }
    const sa = e.in as EspInbound;
    if (esp.length < 8 + sa.ivLen + sa.block + sa.icvLen) {
      this.c.counters.drop('malformed');
      return;
    }
    const low = esp.readUInt32BE(4);
    const seq = sa.precheck(low);
    if (seq < 0) {
      this.driverDrop('replay', this.replayId(e, low), spi, batch, index);
      return;
    }
    let g = this.gathers.get(e);
    if (!g) {
      g = {
        count: 0,
        off: new Int32Array(BATCH),
        len: new Int32Array(BATCH),
        seq: new Float64Array(BATCH),
        seqHi: new Uint32Array(BATCH),
        idx: new Int32Array(BATCH),
      };
      this.gathers.set(e, g);
    }
    if (g.count === 0) this.touched.push(e);
    const k = g.count++;
    g.off[k] = (batch.offsets[index] as number) + skip;
    g.len[k] = esp.length;
    g.seq[k] = seq;
    g.seqHi[k] = Math.floor(seq / 2 ** 32);
    g.idx[k] = index;
  }

  /** 4961 for a packet inside the window seen before, 4962 for one older than the window. */
  private replayId(e: SaEntry, low: number): DriverDropId {
    const w = (e.in as EspInbound | AhInbound).replay;
    const seq = e.in.esn ? w.inferEsn(low) : low;
    return seq + w.size <= w.top ? 4962 : 4961;
  }

  /** A packet the AH context refused: counted by reason; an integrity or replay failure is its driver event. */
  private refused(e: SaEntry, err: unknown, low: number, batch: PacketBatch, index: number): void {
    const reason = err instanceof EspError ? err.reason : 'malformed';
    if (reason === 'integrity') this.driverDrop(reason, 4960, e.in.spi, batch, index);
    else if (reason === 'replay') this.driverDrop(reason, this.replayId(e, low), e.in.spi, batch, index);
    else this.c.counters.drop(reason);
  }

  // ---- stages 5–9 ------------------------------------------------------------------------------

  /** Opens each SA's gathered packets of `src` in one call, checks them, and writes them to the TUN. */
  private openGathered(src: PacketBatch): void {
    let base = 0;
    let w = 0;
    const head = this.headroom;
    for (const e of this.touched) {
      // Removed meanwhile (counted then): over UDP 4500 the same read may carry the IKE message
      // that rekeyed or deleted it, and its contexts are closed.
      const g = this.gathers.get(e);
      if (!g || !e.batch) continue;
      const count = g.count;
      g.count = 0;
      // Transport mode decrypts behind room for the IP header it then writes in front, in place.
      const transport = e.mode === 'transport';
      const offs = transport
        ? this.shifted.subarray(base, base + count)
        : this.scratch.offsets.subarray(base, base + count);
      if (transport) for (let k = 0; k < count; k++) offs[k] = (this.scratch.offsets[base + k] as number) + head;
      const lens = this.scratch.lengths.subarray(base, base + count);
      const nhs = this.scratchNh.subarray(base, base + count);
      e.batch.open.open(
        src.buf,
        g.off,
        g.len,
        g.seqHi,
        count,
        { buf: this.scratch.buf, offsets: offs, lengths: lens },
        nhs,
      );
      let accepted = 0;
      let bytes = 0;
      for (let k = 0; k < count; k++) {
        const index = g.idx[k] as number;
        const len = lens[k] as number;
        if (len < 0) {
          const reason = openFailure(len);
          if (reason === 'integrity') this.driverDrop(reason, 4960, e.in.spi, src, index);
          else this.c.counters.drop(reason);
          continue;
        }
        const seq = g.seq[k] as number;
        if (!(e.in as EspInbound).accept(seq, len)) {
          // A duplicate inside this read, or one the window moved past while the read was opened.
          this.driverDrop('replay', this.replayId(e, seq % 2 ** 32), e.in.spi, src, index);
          continue;
        }
        this.followPeer(e, src, index);
        const nh = nhs[k] as number;
        if (nh === NEXT_HEADER_NONE) continue; // dummy packet (RFC 4303 §2.6)
        let off = offs[k] as number;
        let size = len;
        if (transport) {
          off -= head;
          size += head;
          this.ipHeader(this.scratch.buf, off, size, nh, e);
        }
        const inner = this.scratch.buf.subarray(off, off + size);
        const ip = transport || nh === 4 || nh === 41 ? parseIp(inner) : undefined;
        if (!ip || !packetMatches(inner, ip, e.remoteTs, e.localTs)) {
          this.c.counters.drop(ip ? 'selector mismatch' : 'not IP in tunnel');
          continue;
        }
        this.tunWOff[w] = off;
        this.tunWLen[w] = size;
        w++;
        accepted++;
        bytes += len;
      }
      base += count;
      if (accepted > 0) this.c.received(e, accepted, bytes);
    }
    this.touched.length = 0;
    if (w > 0) this.c.device.tun.writeRaw(this.scratch.buf, this.tunWOff, this.tunWLen, w);
  }

  /**
   * Stage 6 for ESP in UDP: an authenticated packet from a new address or port means the peer's NAT
   * mapping changed (RFC 3948), so replies follow it. Compared as octets; an endpoint is built only on a change.
   */
  private followPeer(e: SaEntry, batch: PacketBatch, index: number): void {
    if (!e.udp || batch !== this.udpIn) return;
    const peer = peerOctets(e);
    const port = batch.ports[index] as number;
    if (port === e.remote.port && batch.addrs.compare(peer, 0, peer.length, index * 16, index * 16 + peer.length) === 0)
      return;
    e.remote = { address: batch.address(index, peer.length === 4 ? 4 : 6), port };
    batch.addrs.copy(peer, 0, index * 16, index * 16 + peer.length);
  }

  /** Stages 7–8 for one opened AH payload: the inner packet, or undefined when it is dropped. */
  private inner(e: SaEntry, payload: Buffer, nextHeader: number): Buffer | undefined {
    if (nextHeader === NEXT_HEADER_NONE) return undefined;
    let inner: Buffer;
    if (e.mode === 'tunnel') {
      if (nextHeader !== 4 && nextHeader !== 41) {
        this.c.counters.drop('not IP in tunnel');
        return undefined;
      }
      inner = payload;
    } else {
      const head = this.headroom;
      inner = Buffer.allocUnsafe(head + payload.length);
      payload.copy(inner, head);
      this.ipHeader(inner, 0, inner.length, nextHeader, e);
    }
    const ip = parseIp(inner);
    if (!ip || !packetMatches(inner, ip, e.remoteTs, e.localTs)) {
      this.c.counters.drop('selector mismatch');
      return undefined;
    }
    return inner;
  }

  /**
   * Stage 7: the IP header of a transport-mode packet at buf[off] (RFC 4303 §3.1.1 in reverse): peer
   * → us, protocol `nh`, `total` octets with the header. Over UDP encapsulation there may be a NAT
   * between us: the peer's TCP/UDP checksum covers the addresses it saw, so it is recomputed for ours
   * (RFC 3948 §3.1.2; Linux instead marks such packets as not needing a check).
   */
  private ipHeader(buf: Buffer, off: number, total: number, nh: number, e: SaEntry): void {
    const peer = peerOctets(e);
    const local = (e.local ?? this.ep).localBytes;
    if (local.length === 16) {
      buf.writeUInt32BE(0x60000000, off); // version 6, no traffic class, no flow label
      buf.writeUInt16BE(total - 40, off + 4);
      buf[off + 6] = nh;
      buf[off + 7] = 64;
      peer.copy(buf, off + 8);
      local.copy(buf, off + 24);
    } else {
      buf[off] = 0x45;
      buf[off + 1] = 0;
      buf.writeUInt16BE(total, off + 2);
      buf.writeUInt32BE(0, off + 4);
      buf[off + 8] = 64;
      buf[off + 9] = nh;
      buf.writeUInt16BE(0, off + 10);
      peer.copy(buf, off + 12);
      local.copy(buf, off + 16);
      buf.writeUInt16BE(internetChecksum(buf, off, 20), off + 10);
    }
    if (e.udp) recomputeTransportChecksum(buf, off, total);
  }

  private flushTun(): void {
    if (this.tunOut.count > 0) this.c.device.tun.write(this.tunOut);
    this.tunOut.count = 0;
  }

  /** An SA is gone: packets gathered for it in the read being handled go nowhere (returned: how many). */
  forget(e: SaEntry): number {
    const n = this.gathers.get(e)?.count ?? 0;
    this.gathers.delete(e);
    return n;
  }

  /** After a fault in a read loop: what was gathered is dropped. */
  reset(): void {
    for (const g of this.gathers.values()) g.count = 0;
    this.touched.length = 0;
    this.tunOut.count = 0;
  }
}
