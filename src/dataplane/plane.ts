/**
 * The userspace data plane (RFC 4301 processing for kernels without ESP): a TUN device receives the
 * traffic that policy routing sends towards protected peers; each packet is matched to an outbound
 * SA, sealed and sent as ESP-in-UDP (port 4500) or raw ESP. Inbound ESP is found by SPI, verified,
 * replay-checked, decrypted, checked against the SA's selectors and written to the TUN. Our own
 * sockets carry a firewall mark that routes them around the TUN (the wg-quick pattern), and IKE
 * shares the UDP sockets (`bind()` hands them to the keying service).
 */
import { execFile } from 'node:child_process';
import { isIPv4 } from 'node:net';
import { promisify } from 'node:util';
import { type AhInbound, type AhOutbound, IPPROTO_AH } from '../esp/ah.ts';
import { EspError, type EspInbound, type EspOutbound, NEXT_HEADER_NONE } from '../esp/esp.ts';
import { readIp, writeIp } from '../io/addr.ts';
import { IPPROTO_ESP, openFailure, PacketBatch, RawIpSocket, TunDevice, UdpSocket } from '../io/native.ts';
import { type IkeBind, type IkePort, type IkeReceiver, NON_ESP_MARKER, udp4500Kind } from '../sa/bind.ts';
import type { ChildSaSink, SaEvents } from '../sa/sink.ts';
import type { ChildSaSpec, Endpoint, TrafficSelector } from '../sa/spec.ts';
import { type IpInfo, packetMatches, parseIp } from './ip.ts';
import { internetChecksum, recomputeTransportChecksum } from '../packet/checksum.ts';

/**
 * The policy's word on an outbound packet: protect or drop (require), protect when possible
 * (request), never protect (exempt: IKE, default exemptions, authentication exemptions), or
 * nothing (none: no rule — protected only by an SA that covers it, such as a manual SA).
 */
export type Verdict = 'require' | 'request' | 'exempt' | 'none';
import { Sad, type SaEntry } from './sad.ts';

const run = promisify(execFile);

export interface DataPlaneOptions {
  /** The outer (IKE/ESP) address of this host. */
  local: string;
  tunName?: string;
  /** Firewall mark on our own sockets; packets without it are routed into the TUN. */
  mark?: number;
  /** Routing table for the protected destinations, and the priority of its rule. */
  table?: number;
  rulePriority?: number;
  mtu?: number;
  /**
   * What the policy says about an outbound packet in the TUN (see Verdict). Default: require.
   */
  classify?(packet: Buffer, ip: IpInfo): Verdict;
  /**
   * Inbound packets refused by the driver checks, for the IPsec Driver audit events (4960
   * integrity, 4961 replay, 4962 older than the window, 4965 unknown SPI): at most one call per
   * event, SPI and peer every DRIVER_EVENT_INTERVAL_MS, with the packets dropped meanwhile.
   */
  onDriverDrop?(e: { id: DriverDropId; spi: number; remoteAddress: string; packets: number }): void;
  /** Packets a Require rule held for an SA that could not be negotiated were dropped (event 5152). */
  onPolicyDrop?(e: {
    sourceAddress: string;
    sourcePort: number;
    destinationAddress: string;
    destinationPort: number;
    protocol: number;
    packets: number;
  }): void;
  log?(event: string, detail?: Record<string, unknown>): void;
}

export type DriverDropId = 4960 | 4961 | 4962 | 4965;
export const DRIVER_EVENT_INTERVAL_MS = 10_000;

/**
 * Why the data plane dropped a packet. Sends the kernel refused are counted by errno code (ENETUNREACH,
 * EPERM …) beside these.
 */
export type DropReason =
  | 'not IP'
  | 'malformed'
  | 'unknown SPI'
  | 'integrity'
  | 'replay'
  | 'padding'
  | 'spi'
  | 'sequence-exhausted'
  | 'seal'
  | 'selector mismatch'
  | 'not IP in tunnel'
  | 'queue full'
  | 'negotiation failed'
  | 'SA removed'
  | 'no socket for the other family'
  | 'send would block'
  | 'internal error';

export interface DataPlaneStats {
  /** Packets and octets carried by SAs; octets as the kernel counts them (what ESP protects: the inner packet in tunnel mode, what follows the IP header in transport mode). */
  packetsOut: number;
  packetsIn: number;
  bytesOut: number;
  bytesIn: number;
  /** Drops by reason (DropReason, or a send's errno code). */
  drops: Record<string, number>;
}

const SLOT = 2048;
const BATCH = 64;
const QUEUE_PER_DESTINATION = 32;
const SOCKET_BUFFER = 8 * 1024 * 1024;
const QUEUE_TOTAL = 1024;

/** Packets of one batch bound for one SA: offsets and lengths in the source buffer, next headers. */
interface Gather {
  count: number;
  bytes: number;
  off: Int32Array;
  len: Int32Array;
  nh: Uint8Array;
  /** Inbound only: full sequence numbers and their high halves, and each packet's index in its batch. */
  seq?: Float64Array;
  seqHi?: Uint32Array;
  idx?: Int32Array;
}
/** An SPI as the eight hex digits logs and views show. */
const hex8 = (spi: number): string => spi.toString(16).padStart(8, '0');

const DEFAULTS = { tunName: 'consec0', mark: 0xc5ec, table: 0xc5ec, rulePriority: 10_500 };

export class UserspaceDataPlane implements ChildSaSink {
  readonly sad = new Sad();
  readonly stats: DataPlaneStats = { packetsOut: 0, packetsIn: 0, bytesOut: 0, bytesIn: 0, drops: {} };
  /** Where acquires, expiries and activity go (the keying service, once it exists: `attach`). */
  private events: SaEvents = {};
  private readonly routes = new Map<string, number>();
  private readonly queue = new Map<string, Buffer[]>();
  private queued = 0;
  private readonly acquired = new Map<string, number>();
  private readonly tunIn = new PacketBatch(BATCH, SLOT);
  private readonly tunOut = new PacketBatch(BATCH, SLOT);
  private readonly udpIn = new PacketBatch(BATCH, SLOT);
  private readonly udpOut = new PacketBatch(BATCH, SLOT);
  private readonly rawOut = new PacketBatch(BATCH, SLOT);
  private readonly rawIn = new PacketBatch(BATCH, SLOT);
  private readonly clearOut = new PacketBatch(BATCH, SLOT);
  private readonly one = new PacketBatch(1, 65_536);
  private rx?: IkeReceiver;
  private readonly localBytes: Buffer;
  private closed = false;

  private constructor(
    private readonly o: Required<
      Pick<DataPlaneOptions, 'local' | 'tunName' | 'mark' | 'table' | 'rulePriority' | 'mtu'>
    > &
      DataPlaneOptions,
    private readonly tun: TunDevice,
    private readonly udp500: UdpSocket,
    private readonly udp4500: UdpSocket,
    private readonly raw: RawIpSocket,
    /** IPPROTO_RAW (the packet carries its own IP header), marked: exempt and Request traffic in clear. */
    private readonly clear: RawIpSocket,
    /** Raw AH (protocol 51) receives (IPv4 with the IP header AH authenticates; IPv6 without it). */
    private readonly ahSock: RawIpSocket,
    /** IPPROTO_RAW of the other family: tunnel mode carries it too, so its exempt/Request traffic goes in clear here. */
    private readonly clearOther?: RawIpSocket,
  ) {
    this.localBytes = Buffer.alloc(isIPv4(o.local) ? 4 : 16);
    writeIp(o.local, this.localBytes);
  }

  /** Traffic counted on the SA whose inbound SPI is `spiIn`, if it is installed here. */
  counters(spiIn: number): { bytesIn: number; bytesOut: number; packetsIn: number; packetsOut: number } | undefined {
    const e = this.sad.inbound(spiIn);
    return e && { bytesIn: e.in.bytes, bytesOut: e.out.bytes, packetsIn: e.in.packets, packetsOut: e.out.packets };
  }

  /** The IP family of the outer address (one data plane per family). */
  get family(): 4 | 6 {
    return this.localBytes.length === 4 ? 4 : 6;
  }

  get tunName(): string {
    return this.tun.name;
  }

  get mark(): number {
    return this.o.mark;
  }

  /** Removes the routing rule and table a previous run left (`consec daemon --remove-filters`). */
  static async removeRouting(table = DEFAULTS.table, priority = DEFAULTS.rulePriority): Promise<void> {
    for (const ip of ['-4', '-6']) {
      await run('ip', [ip, 'rule', 'del', 'pref', String(priority)]).catch(() => {});
      await run('ip', [ip, 'route', 'flush', 'table', String(table)]).catch(() => {});
    }
  }

  /** Creates the TUN device, the marked sockets and the routing rule. Needs CAP_NET_ADMIN. */
  static async open(options: DataPlaneOptions): Promise<UserspaceDataPlane> {
    // The TUN MTU leaves room for the largest ESP overhead we negotiate (outer IP, UDP 4500, SPI and
    // sequence, a 16-octet IV, 15 octets of CBC padding, trailer, a 32-octet HMAC-SHA-512 ICV), so
    // the kernel answers oversized DF packets with ICMP "fragmentation needed" / "packet too big".
    const o = { ...DEFAULTS, mtu: isIPv4(options.local) ? 1392 : 1372, ...options };
    const family = isIPv4(o.local) ? 4 : 6;
    const opened: { close(): void }[] = [];
    try {
      const tun = TunDevice.open(o.tunName);
      opened.push(tun);
      const udp500 = UdpSocket.open(family);
      opened.push(udp500);
      const udp4500 = UdpSocket.open(family);
      opened.push(udp4500);
      const raw = RawIpSocket.open(family, IPPROTO_ESP);
      opened.push(raw);
      const clear = RawIpSocket.open(family, 255);
      opened.push(clear);
      const ah = RawIpSocket.open(family, IPPROTO_AH);
      opened.push(ah);
      for (const s of [udp500, udp4500, raw, clear, ah]) s.setMark(o.mark);
      // Room for bursts: a bulk transfer arrives faster than one event-loop turn drains it.
      for (const s of [udp4500, raw, clear, ah]) s.setBuffers(SOCKET_BUFFER, SOCKET_BUFFER);
      ah.bind(o.local);
      udp500.bind(o.local, 500);
      udp4500.bind(o.local, 4500);
      raw.bind(o.local);
      // The other family rides in tunnel mode SAs too (IPv6 inside IPv4 and the other way round):
      // its clear traffic needs a socket of its own; a host without that family simply has none.
      let clearOther: RawIpSocket | undefined;
      try {
        clearOther = RawIpSocket.open(family === 4 ? 6 : 4, 255);
        opened.push(clearOther);
        clearOther.setMark(o.mark);
      } catch {
        clearOther = undefined;
      }
      // No link-local address: the TUN itself must not send router solicitations or MLD into itself.
      await run('ip', ['link', 'set', 'dev', tun.name, 'addrgenmode', 'none']);
      await run('ip', ['link', 'set', 'dev', tun.name, 'mtu', String(o.mtu), 'up']);
      // One rule per family: unmarked traffic looks in our table first (no route there: on to main).
      const own = family === 4 ? '-4' : '-6';
      for (const ip of ['-4', '-6']) {
        await run('ip', [ip, 'rule', 'del', 'pref', String(o.rulePriority)]).catch(() => {});
        const add = run('ip', [
          ip,
          'rule',
          'add',
          'not',
          'fwmark',
          String(o.mark),
          'table',
          String(o.table),
          'pref',
          String(o.rulePriority),
        ]);
        await (ip === own ? add : add.catch(() => {})); // a host may lack the other family
      }
      const plane = new UserspaceDataPlane(o, tun, udp500, udp4500, raw, clear, ah, clearOther);
      plane.start();
      return plane;
    } catch (err) {
      for (const s of opened.reverse()) s.close();
      throw err;
    }
  }

  /** Hands acquires, lifetime expiries and activity to the keying service. */
  attach(events: SaEvents): void {
    this.events = events;
  }

  private log(event: string, detail?: Record<string, unknown>): void {
    this.o.log?.(event, detail);
  }

  private drop(reason: DropReason | string, n = 1): void {
    this.stats.drops[reason] = (this.stats.drops[reason] ?? 0) + n;
  }

  /** Per (event, SPI) rate limit of the driver events: when the last one went out, drops since. */
  private readonly driverEvents = new Map<number, { at: number; packets: number }>();

  /**
   * An inbound packet refused by a driver check (packet `index` of `batch` came from the peer):
   * counted by `reason`, and reported as an IPsec Driver event at most once per interval.
   */
  private driverDrop(reason: DropReason, id: DriverDropId, spi: number, batch: PacketBatch, index: number): void {
    this.drop(reason);
    if (!this.o.onDriverDrop) return;
    const key = id * 2 ** 32 + spi;
    const now = Date.now();
    const last = this.driverEvents.get(key);
    if (last && now - last.at < DRIVER_EVENT_INTERVAL_MS) {
      last.packets++;
      return;
    }
    if (this.driverEvents.size > 4096) this.driverEvents.clear(); // a flood of made-up SPIs stays bounded
    this.driverEvents.set(key, { at: now, packets: 0 });
    const remoteAddress = readIp(batch.addrs, index * 16, this.family);
    this.o.onDriverDrop({ id, spi, remoteAddress, packets: (last?.packets ?? 0) + 1 });
  }

  /** 4961 for a packet inside the window seen before, 4962 for one older than the window. */
  private replayId(e: SaEntry, low: number): DriverDropId {
    const w = (e.in as EspInbound | AhInbound).replay;
    const seq = e.in.esn ? w.inferEsn(low) : low;
    return seq + w.size <= w.top ? 4962 : 4961;
  }

  /**
   * A packet ESP/AH refused (`err` from open; `low`: its sequence number's low half): counted by
   * reason, and an integrity or replay failure reported as its driver event.
   */
  private refused(e: SaEntry, err: unknown, low: number, spi: number, batch: PacketBatch, index: number): void {
    const reason = err instanceof EspError ? err.reason : 'malformed';
    if (reason === 'integrity') this.driverDrop(reason, 4960, spi, batch, index);
    else if (reason === 'replay') this.driverDrop(reason, this.replayId(e, low), spi, batch, index);
    else this.drop(reason);
  }

  /** The IKE sockets, for the keying service (`IkeManager.listen(rx => plane.bind(rx))`). */
  bind(rx: IkeReceiver): IkeBind {
    this.rx = rx;
    const send = (sock: UdpSocket, parts: Buffer[], to: Endpoint) => {
      if (this.closed) return;
      const total = parts.reduce((n, p) => n + p.length, 0);
      let off = 0;
      for (const p of parts) {
        p.copy(this.one.buf, off);
        off += p.length;
      }
      this.one.lengths[0] = total;
      writeIp(to.address, this.one.addrs, 0);
      this.one.ports[0] = to.port;
      try {
        sock.send(this.one, 1);
      } catch (err) {
        // An unreachable peer shows up as IKE retransmissions running out, not as a crash.
        this.log('IKE send failed', { to: to.address, reason: (err as Error).message });
      }
    };
    return {
      address: this.o.local,
      sendIke: (message, port, to) =>
        port === 500 ? send(this.udp500, [message], to) : send(this.udp4500, [NON_ESP_MARKER, message], to),
      sendUdp4500: (packet, to) => send(this.udp4500, [packet], to),
      close: () => {},
    };
  }

  private start(): void {
    this.tun.onReadable(this.guarded(() => this.fromTun()));
    this.udp4500.onReadable(this.guarded(() => this.fromUdp(this.udp4500, 4500)));
    this.udp500.onReadable(this.guarded(() => this.fromUdp(this.udp500, 500)));
    this.raw.onReadable(this.guarded(() => this.fromRaw()));
    this.ahSock.onReadable(this.guarded(() => this.fromAh()));
  }

  /**
   * A read loop that cannot take the daemon down: a fault is logged and counted, what the loop had
   * gathered is dropped, and the next read starts clean.
   */
  private guarded(loop: () => void): () => void {
    return () => {
      try {
        loop();
      } catch (err) {
        this.drop('internal error');
        this.log('data plane fault', { error: (err as Error).message });
        for (const g of [...this.gathers.values(), ...this.gathersIn.values()]) g.count = 0;
        this.touched.length = 0;
        this.touchedIn.length = 0;
        this.tunOut.count = 0;
        this.flushOut();
      }
    };
  }

  // ---- ChildSaSink -----------------------------------------------------------------------------

  install(spec: ChildSaSpec): void {
    let e: SaEntry;
    const spis = { spiIn: hex8(spec.inbound.spi), spiOut: hex8(spec.outbound.spi) };
    try {
      e = this.sad.install(spec);
    } catch (err) {
      // An SA this data plane cannot carry (no supported algorithm) is refused here, loudly, not half-installed.
      this.log('SA not installed', { ...spis, reason: (err as Error).message });
      return;
    }
    for (const ts of e.remoteTs) void this.addRoute(ts);
    this.log('SA installed', { ...spis, mode: e.mode, udp: e.udp, outbound: e.outboundActive });
    if (e.outboundActive) this.flushQueue();
  }

  activate(spiIn: number): void {
    if (!this.sad.activate(spiIn)) return;
    this.log('SA carries outbound traffic', { spiIn: hex8(spiIn) });
    this.flushQueue();
  }

  delete(spiIn: number): void {
    const e = this.sad.remove(spiIn);
    if (!e) return;
    // Packets gathered for it in the read being handled (its IKE message came in the same read)
    // go nowhere: its contexts are closed. Without its gather entry the batch step skips it.
    const pending = (this.gathers.get(e)?.count ?? 0) + (this.gathersIn.get(e)?.count ?? 0);
    if (pending > 0) this.drop('SA removed', pending);
    this.gathers.delete(e);
    this.gathersIn.delete(e);
    for (const ts of e.remoteTs) void this.removeRoute(ts);
  }

  update(spiIn: number, remote: Endpoint): void {
    this.sad.update(spiIn, remote);
  }

  // ---- routes ----------------------------------------------------------------------------------

  private static cidrs(ts: TrafficSelector): string[] {
    // Host and prefix-aligned ranges as CIDRs (selectors from Windows rules are subnets or hosts).
    const fam = ts.start.length === 4 ? 4 : 6;
    const bits = fam === 4 ? 32 : 128;
    let prefix = bits;
    for (let i = bits - 1; i >= 0; i--) {
      const byte = i >> 3;
      const mask = 0x80 >> (i & 7);
      const s = (ts.start[byte] as number) & mask;
      const e = (ts.end[byte] as number) & mask;
      if (s === 0 && e !== 0) prefix = i;
      else break;
    }
    return [`${readIp(ts.start, 0, fam)}/${prefix}`];
  }

  private async addRoute(ts: TrafficSelector): Promise<void> {
    for (const cidr of UserspaceDataPlane.cidrs(ts)) {
      const n = this.routes.get(cidr) ?? 0;
      this.routes.set(cidr, n + 1);
      if (n > 0) continue;
      const v6 = cidr.includes(':');
      // Our own address as the source where it is of the same family; the kernel picks one otherwise.
      const src = v6 === (this.family === 6) ? ['src', this.o.local] : [];
      await run('ip', [
        v6 ? '-6' : '-4',
        'route',
        'replace',
        cidr,
        'dev',
        this.tun.name,
        'table',
        String(this.o.table),
        ...src,
      ]).catch((err: Error) => this.log('route failed', { cidr, reason: err.message }));
    }
  }

  private async removeRoute(ts: TrafficSelector): Promise<void> {
    for (const cidr of UserspaceDataPlane.cidrs(ts)) {
      const n = (this.routes.get(cidr) ?? 1) - 1;
      if (n > 0) {
        this.routes.set(cidr, n);
        continue;
      }
      this.routes.delete(cidr);
      const ip = cidr.includes(':') ? '-6' : '-4';
      await run('ip', [ip, 'route', 'del', cidr, 'table', String(this.o.table)]).catch(() => {});
    }
  }

  /** Routes traffic for `ts` into the TUN before any SA exists (so the first packet triggers an acquire). */
  async protect(ts: TrafficSelector): Promise<void> {
    await this.addRoute(ts);
  }

  // ---- outbound ----------------------------------------------------------------------------------

  private fromTun(): void {
    for (;;) {
      const n = this.tun.read(this.tunIn);
      if (n === 0) return;
      this.udpOut.count = 0;
      this.rawOut.count = 0;
      this.clearOut.count = 0;
      for (let i = 0; i < n; i++) this.outbound(this.tunIn.packet(i), false, i);
      this.sealPending();
      this.flushOut();
    }
  }

  private outbound(packet: Buffer, fromQueue: boolean, index = -1): void {
    const ip = parseIp(packet);
    if (!ip) {
      this.drop('not IP');
      return;
    }
    const verdict = this.o.classify?.(packet, ip) ?? 'require';
    if (verdict === 'exempt') {
      this.sendClear(packet, ip);
      return;
    }
    const e = this.sad.outboundFor(packet, ip);
    if (!e) {
      if (verdict === 'none') this.sendClear(packet, ip);
      else if (verdict === 'request') {
        // Request: in clear while IKE negotiates; protected once an SA exists.
        this.acquire(packet, ip);
        this.sendClear(packet, ip);
      } else if (!fromQueue) this.enqueue(packet, ip);
      return;
    }
    if (e.native && index >= 0) {
      // Batched in the addon once the whole TUN read is sorted (sealPending).
      const g = this.gather(e);
      const k = g.count++;
      g.off[k] = (this.tunIn.offsets[index] as number) + (e.mode === 'tunnel' ? 0 : ip.headerLength);
      g.len[k] = packet.length - (e.mode === 'tunnel' ? 0 : ip.headerLength);
      g.nh[k] = e.mode === 'tunnel' ? (ip.family === 4 ? 4 : 41) : ip.protocol;
      g.bytes += g.len[k] as number;
      return;
    }
    // Tunnel mode carries the whole packet, transport mode what follows its IP header.
    const payload = e.mode === 'tunnel' ? packet : packet.subarray(ip.headerLength);
    const nh = e.mode === 'tunnel' ? (ip.family === 4 ? 4 : 41) : ip.protocol;
    let sealed: Buffer;
    try {
      // AH authenticates the outer header too: the whole packet goes out through the IP_HDRINCL socket.
      sealed = e.ah
        ? (e.out as AhOutbound).seal(payload, nh, this.localBytes, this.peer(e))
        : (e.out as EspOutbound).seal(payload, nh);
    } catch (err) {
      this.drop(err instanceof EspError ? err.reason : 'seal');
      this.events.expire?.(e.in.spi, true);
      return;
    }
    this.checkLifetime(e);
    this.stats.packetsOut++;
    this.stats.bytesOut += payload.length;
    const batch = e.ah ? this.clearOut : e.udp ? this.udpOut : this.rawOut;
    if (batch.count === batch.capacity) this.flushOut();
    const k = batch.count++;
    batch.set(k, sealed);
    this.peer(e).copy(batch.addrs, k * 16);
    batch.ports[k] = e.udp && !e.ah ? e.remote.port : 0;
  }

  /** Per-SA gather lists of one TUN read, for the addon's batched sealer. */
  private readonly gathers = new Map<SaEntry, Gather>();
  private readonly touched: SaEntry[] = [];

  private gather(e: SaEntry): Gather {
    let g = this.gathers.get(e);
    if (!g) {
      g = { count: 0, bytes: 0, off: new Int32Array(BATCH), len: new Int32Array(BATCH), nh: new Uint8Array(BATCH) };
      this.gathers.set(e, g);
    }
    if (g.count === 0) this.touched.push(e);
    return g;
  }

  /** Seals each SA's gathered packets in one addon call, straight into the send batches. */
  private sealPending(): void {
    for (const e of this.touched) {
      const g = this.gathers.get(e);
      if (!g) continue; // deleted meanwhile (counted then)
      const count = g.count;
      g.count = 0;
      let first: number;
      try {
        first = (e.out as EspOutbound).reserve(count, g.bytes);
      } catch (err) {
        this.drop(err instanceof EspError ? err.reason : 'seal', count);
        this.events.expire?.(e.in.spi, true);
        continue;
      }
      const batch = e.udp ? this.udpOut : this.rawOut;
      if (batch.count + count > batch.capacity) this.flushOut();
      (e.native as NonNullable<SaEntry['native']>).seal.seal(
        this.tunIn.buf,
        g.off,
        g.len,
        g.nh,
        count,
        batch,
        batch.count,
        e.out.spi,
        first,
      );
      // The peer's address as cached octets: no address text parsed per packet.
      const peer = this.peer(e);
      for (let k = batch.count; k < batch.count + count; k++) {
        peer.copy(batch.addrs, k * 16);
        batch.ports[k] = e.udp ? e.remote.port : 0;
      }
      batch.count += count;
      this.stats.packetsOut += count;
      this.stats.bytesOut += g.bytes;
      g.bytes = 0;
      this.checkLifetime(e);
    }
    this.touched.length = 0;
  }

  /** The SA peer's address as octets (cached per address). */
  private peer(e: SaEntry): Buffer {
    let peer = this.peerBytes.get(e.remote.address);
    if (!peer) {
      peer = Buffer.alloc(this.localBytes.length);
      writeIp(e.remote.address, peer);
      this.peerBytes.set(e.remote.address, peer);
    }
    return peer;
  }

  /** Scratch for an IPv6 AH packet: the raw socket gives what follows the IPv6 header; AH needs it. */
  private readonly ah6 = Buffer.alloc(40 + SLOT);

  private fromAh(): void {
    const v6 = this.family === 6;
    for (;;) {
      const n = this.ahSock.recv(this.rawIn);
      if (n === 0) return;
      this.tunOut.count = 0;
      for (let i = 0; i < n; i++) {
        const len = this.rawIn.lengths[i] as number;
        if (len < (v6 ? 12 : 32)) continue;
        let pkt = this.rawIn.packet(i);
        if (v6) {
          // IPv4 raw receives carry the IP header; IPv6 ones do not. The ICV covers it, with its
          // mutable fields zeroed, so rebuild it: sender from the receive, receiver is us.
          const h = this.ah6;
          h.writeUInt32BE(0x60000000, 0);
          h.writeUInt16BE(len, 4);
          h[6] = IPPROTO_AH;
          h[7] = 0;
          this.rawIn.addrs.copy(h, 8, i * 16, i * 16 + 16);
          this.localBytes.copy(h, 24);
          pkt.copy(h, 40);
          pkt = h.subarray(0, 40 + len);
        }
        const ah = v6 ? 40 : 20;
        const spi = pkt.readUInt32BE(ah + 4);
        const e = this.sad.inbound(spi);
        if (!e || !e.ah) {
          this.driverDrop('unknown SPI', 4965, spi, this.rawIn, i);
          continue;
        }
        let opened;
        try {
          opened = (e.in as AhInbound).open(pkt);
        } catch (err) {
          this.refused(e, err, pkt.readUInt32BE(ah + 8), spi, this.rawIn, i);
          continue;
        }
        this.deliver(e, opened.payload, opened.nextHeader);
      }
      this.flushTun();
    }
  }

  private readonly clearOtherOut = new PacketBatch(BATCH, SLOT);

  /** Sends an IP packet as it is (its own header), around the TUN: exempt or Request traffic. */
  private sendClear(packet: Buffer, ip: IpInfo): void {
    const other = ip.family !== this.family;
    if (other && !this.clearOther) {
      this.drop('no socket for the other family');
      return;
    }
    const batch = other ? this.clearOtherOut : this.clearOut;
    if (batch.count === batch.capacity) this.flushOut();
    const k = batch.count++;
    batch.set(k, packet);
    packet.copy(batch.addrs, k * 16, ip.dst, ip.dst + (ip.family === 4 ? 4 : 16));
    this.clearPackets++;
  }

  /** Packets sent in clear (exempt, or Request without an SA). */
  clearPackets = 0;

  /** Packets waiting for an SA. */
  get queuedPackets(): number {
    return this.queued;
  }

  private flushOut(): void {
    if (this.udpOut.count > 0) this.send(this.udp4500, this.udpOut);
    if (this.rawOut.count > 0) this.send(this.raw, this.rawOut);
    if (this.clearOut.count > 0) this.send(this.clear, this.clearOut);
    if (this.clearOtherOut.count > 0 && this.clearOther) this.send(this.clearOther, this.clearOtherOut);
    this.udpOut.count = 0;
    this.rawOut.count = 0;
    this.clearOut.count = 0;
    this.clearOtherOut.count = 0;
  }

  /**
   * Sends a batch; a send the kernel refuses (no route, a firewall drop, a full buffer) loses those
   * packets, counted by errno, and never stops the data plane.
   */
  private send(sock: { send(b: PacketBatch, count?: number): number }, batch: PacketBatch): void {
    try {
      this.sendAll(sock, batch);
    } finally {
      for (let i = 0; i < batch.capacity; i++) batch.offsets[i] = i * batch.slot;
    }
  }

  private sendAll(sock: { send(b: PacketBatch, count?: number): number }, batch: PacketBatch): void {
    while (batch.count > 0) {
      try {
        const n = sock.send(batch, batch.count);
        if (n >= batch.count || n === 0) {
          if (n === 0) this.drop('send would block', batch.count);
          return;
        }
        // Partial send: move the rest to the front and go on.
        this.shift(batch, n);
      } catch (err) {
        this.drop((err as { code?: string }).code ?? 'send');
        this.shift(batch, 1); // drop the packet the kernel refused, keep the others
      }
    }
  }

  private shift(batch: PacketBatch, n: number): void {
    batch.offsets.copyWithin(0, n, batch.count);
    batch.lengths.copyWithin(0, n, batch.count);
    batch.addrs.copyWithin(0, n * 16, batch.count * 16);
    batch.ports.copyWithin(0, n, batch.count);
    batch.count -= n;
  }

  /** Holds a packet that has no SA yet (bounded) and asks the keying service for one. */
  private enqueue(packet: Buffer, ip: IpInfo): void {
    const dst = readIp(packet, ip.dst, ip.family);
    const q = this.queue.get(dst) ?? [];
    if (q.length >= QUEUE_PER_DESTINATION || this.queued >= QUEUE_TOTAL) this.drop('queue full');
    else {
      q.push(Buffer.from(packet));
      this.queue.set(dst, q);
      this.queued++;
    }
    this.acquire(packet, ip);
  }

  /** Asks the keying service for an SA for this packet's flow (at most once a second per destination). */
  private acquire(packet: Buffer, ip: IpInfo): void {
    const fam = ip.family;
    const dst = readIp(packet, ip.dst, fam);
    const src = readIp(packet, ip.src, fam);
    const last = this.acquired.get(dst) ?? 0;
    if (Date.now() - last < 1000) return;
    this.acquired.set(dst, Date.now());
    this.log('acquire', { src, dst, protocol: ip.protocol });
    this.events.acquire?.({
      direction: 'Outbound',
      local: src,
      remote: dst,
      protocol: ip.protocol,
      localPort: ip.srcPort >= 0 ? ip.srcPort : undefined,
      remotePort: ip.dstPort >= 0 ? ip.dstPort : undefined,
    });
  }

  /** Sends what waited for the SA just installed; the rest keeps waiting. */
  private flushQueue(): void {
    this.udpOut.count = 0;
    this.rawOut.count = 0;
    for (const [dst, q] of this.queue) {
      const left: Buffer[] = [];
      for (const p of q) {
        const ip = parseIp(p);
        if (ip && this.sad.outboundFor(p, ip)) this.outbound(p, true);
        else left.push(p);
      }
      this.queued -= q.length - left.length;
      if (left.length) this.queue.set(dst, left);
      else this.queue.delete(dst);
    }
    this.flushOut();
  }

  /** The negotiation for `dst` failed: what waited is dropped (Require; Request falls back in the filter). */
  acquireFailed(dst: string): void {
    const q = this.queue.get(dst);
    if (!q) return;
    this.queue.delete(dst);
    this.queued -= q.length;
    this.drop('negotiation failed', q.length);
    this.acquired.delete(dst);
    const first = q[0];
    const ip = first && parseIp(first);
    if (first && ip)
      this.o.onPolicyDrop?.({
        sourceAddress: readIp(first, ip.src, ip.family),
        sourcePort: Math.max(ip.srcPort, 0),
        destinationAddress: dst,
        destinationPort: Math.max(ip.dstPort, 0),
        protocol: ip.protocol,
        packets: q.length,
      });
  }

  /** Soft expiry at 90 % of the byte lifetime or near the end of the sequence numbers (reported once). */
  private checkLifetime(e: SaEntry): void {
    if (e.softSent) return;
    const kb = (e.out.bytes + e.in.bytes) / 1024;
    if (e.out.remaining < 2 ** 20 || (e.maxKilobytes > 0 && kb >= e.maxKilobytes * 0.9)) {
      e.softSent = true;
      this.events.expire?.(e.in.spi, false);
    }
  }

  /** Packets of SA `e` were accepted inbound: counted, the peer is alive (reported at most once a second), lifetime checked. */
  private received(e: SaEntry, packets: number, bytes: number): void {
    this.stats.packetsIn += packets;
    this.stats.bytesIn += bytes;
    const now = Date.now();
    if (now - e.lastActivity > 1000) {
      e.lastActivity = now;
      this.events.activity?.(e.in.spi);
    }
    // The first packet on a rekeyed SA shows the peer has it: our traffic may move to it (RFC 7296 §2.8).
    if (!e.outboundActive) this.activate(e.in.spi);
    this.checkLifetime(e);
  }

  // ---- inbound -----------------------------------------------------------------------------------

  private fromUdp(sock: UdpSocket, port: IkePort): void {
    for (;;) {
      const n = sock.recv(this.udpIn);
      if (n === 0) return;
      this.tunOut.count = 0;
      const fam = sock.family;
      for (let i = 0; i < n; i++) {
        const len = this.udpIn.lengths[i] as number;
        if (len < 0) continue;
        const data = this.udpIn.packet(i);
        const from = () => ({ address: this.udpIn.address(i, fam), port: this.udpIn.ports[i] as number });
        if (port === 500) {
          this.rx?.ike(Buffer.from(data), from(), 500);
          continue;
        }
        const kind = udp4500Kind(data);
        if (kind === 'ike') this.rx?.ike(Buffer.from(data.subarray(NON_ESP_MARKER.length)), from(), 4500);
        else if (kind === 'esp') this.inbound(data, this.udpIn, i, 0);
        else if (kind === 'runt') this.drop('malformed');
      }
      this.openPending();
      this.flushTun();
    }
  }

  private fromRaw(): void {
    for (;;) {
      const n = this.raw.recv(this.rawIn);
      if (n === 0) return;
      this.tunOut.count = 0;
      const fam = this.raw.family;
      for (let i = 0; i < n; i++) {
        if ((this.rawIn.lengths[i] as number) < 0) continue;
        let data = this.rawIn.packet(i);
        const skip = fam === 4 ? ((data[0] as number) & 0x0f) * 4 : 0; // IPv4 raw receives carry the IP header
        data = data.subarray(skip);
        this.inbound(data, this.rawIn, i, skip);
      }
      this.openPending();
      this.flushTun();
    }
  }

  /** ESP packet `index` of `batch` (UDP 4500 or raw ESP; `skip` octets of IP header before it). */
  private inbound(esp: Buffer, batch: PacketBatch, index: number, skip: number): void {
    if (esp.length < 8) {
      this.drop('malformed');
      return;
    }
    const spi = esp.readUInt32BE(0);
    const e = this.sad.inbound(spi);
    if (!e) {
      this.driverDrop('unknown SPI', 4965, spi, batch, index);
      return;
    }
    if (e.native) {
      if (esp.length < 8 + 8 + 4 + 16) {
        this.drop('malformed');
        return;
      }
      // Replay pre-check now; the addon opens the SA's packets of this batch together (openPending).
      const seq = (e.in as EspInbound).precheck(esp.readUInt32BE(4));
      if (seq < 0) {
        this.driverDrop('replay', this.replayId(e, esp.readUInt32BE(4)), spi, batch, index);
        return;
      }
      const g = this.gatherIn(e, batch);
      const k = g.count++;
      g.off[k] = (batch.offsets[index] as number) + skip;
      g.len[k] = esp.length;
      (g.seq as Float64Array)[k] = seq;
      (g.seqHi as Uint32Array)[k] = Math.floor(seq / 2 ** 32);
      (g.idx as Int32Array)[k] = index;
      return;
    }
    let opened;
    try {
      opened = e.in.open(esp);
    } catch (err) {
      this.refused(e, err, esp.readUInt32BE(4), spi, batch, index);
      return;
    }
    this.followPeer(e, batch, index);
    this.deliver(e, opened.payload, opened.nextHeader);
  }

  /**
   * An authenticated ESP-in-UDP packet from a new address or port: the peer's NAT mapping changed
   * (RFC 3948), so replies follow it. Compared as octets; an endpoint is built only on a change.
   */
  private followPeer(e: SaEntry, batch: PacketBatch, index: number): void {
    if (!e.udp || batch !== this.udpIn) return;
    const peer = this.peer(e);
    const port = batch.ports[index] as number;
    if (port === e.remote.port && batch.addrs.compare(peer, 0, peer.length, index * 16, index * 16 + peer.length) === 0)
      return;
    e.remote = { address: batch.address(index, peer.length === 4 ? 4 : 6), port };
  }

  /** A verified payload of SA `e`: the inner packet checked against the SA's selectors, then to the TUN. */
  private deliver(e: SaEntry, payload: Buffer, nextHeader: number): void {
    const opened = { payload, nextHeader };
    if (opened.nextHeader === NEXT_HEADER_NONE) return; // dummy packet (RFC 4303 §2.6)
    let inner: Buffer;
    if (e.mode === 'tunnel') {
      if (opened.nextHeader !== 4 && opened.nextHeader !== 41) {
        this.drop('not IP in tunnel');
        return;
      }
      inner = opened.payload;
    } else {
      const head = this.headroom;
      inner = Buffer.allocUnsafe(head + opened.payload.length);
      opened.payload.copy(inner, head);
      this.ipHeader(inner, 0, inner.length, opened.nextHeader, e);
    }
    const ip = parseIp(inner);
    // The inner packet must be one the SA was negotiated for (RFC 4301 §5.2, step 4).
    // Inbound, the source is the peer's side of the SA and the destination ours.
    if (!ip || !packetMatches(inner, ip, e.remoteTs, e.localTs)) {
      this.drop('selector mismatch');
      return;
    }
    this.received(e, 1, payload.length);
    if (this.tunOut.count === this.tunOut.capacity) this.flushTun();
    this.tunOut.set(this.tunOut.count++, inner);
  }

  private readonly gathersIn = new Map<SaEntry, Gather>();
  private readonly touchedIn: SaEntry[] = [];
  private inSource?: PacketBatch;
  private readonly scratch = new PacketBatch(BATCH, SLOT);
  private readonly scratchNh = new Uint8Array(BATCH);
  private readonly tunWOff = new Int32Array(BATCH);
  private readonly tunWLen = new Int32Array(BATCH);

  private gatherIn(e: SaEntry, batch: PacketBatch): Gather {
    this.inSource = batch;
    let g = this.gathersIn.get(e);
    if (!g) {
      g = {
        count: 0,
        bytes: 0,
        off: new Int32Array(BATCH),
        len: new Int32Array(BATCH),
        nh: new Uint8Array(BATCH),
        seq: new Float64Array(BATCH),
        seqHi: new Uint32Array(BATCH),
        idx: new Int32Array(BATCH),
      };
      this.gathersIn.set(e, g);
    }
    if (g.count === 0) this.touchedIn.push(e);
    return g;
  }

  /** Opens each SA's gathered ESP packets in one addon call, checks them, and writes them to the TUN. */
  private openPending(): void {
    const src = this.inSource;
    if (!src || this.touchedIn.length === 0) return;
    let base = 0;
    let w = 0;
    for (const e of this.touchedIn) {
      const g = this.gathersIn.get(e);
      // Removed meanwhile (counted then): over UDP 4500 the same read may carry the IKE message
      // that rekeyed or deleted it, and its addon context is closed.
      if (!g) continue;
      const count = g.count;
      g.count = 0;
      // Transport mode decrypts 20 octets into the slot and puts the IPv4 header in front, in place.
      const transport = e.mode === 'transport';
      const offs = transport
        ? this.shifted.subarray(base, base + count)
        : this.scratch.offsets.subarray(base, base + count);
      const head = this.headroom;
      if (transport) for (let k = 0; k < count; k++) offs[k] = (this.scratch.offsets[base + k] as number) + head;
      const lens = this.scratch.lengths.subarray(base, base + count);
      const nhs = this.scratchNh.subarray(base, base + count);
      (e.native as NonNullable<SaEntry['native']>).open.open(
        src.buf,
        g.off,
        g.len,
        g.seqHi as Uint32Array,
        count,
        { buf: this.scratch.buf, offsets: offs, lengths: lens },
        nhs,
      );
      let accepted = 0;
      let bytes = 0;
      for (let k = 0; k < count; k++) {
        const len = lens[k] as number;
        const index = (g.idx as Int32Array)[k] as number;
        if (len < 0) {
          const reason = openFailure(len);
          if (reason === 'integrity') this.driverDrop(reason, 4960, e.in.spi, src, index);
          else this.drop(reason);
          continue;
        }
        const seq = (g.seq as Float64Array)[k] as number;
        if (!(e.in as EspInbound).accept(seq, len)) {
          // A duplicate inside this batch, or one the window moved past while the batch was opened.
          this.driverDrop('replay', this.replayId(e, seq % 2 ** 32), e.in.spi, src, index);
          continue;
        }
        this.followPeer(e, src, index);
        const nh = nhs[k] as number;
        if (nh === NEXT_HEADER_NONE) continue;
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
          this.drop(ip ? 'selector mismatch' : 'not IP in tunnel');
          continue;
        }
        this.tunWOff[w] = off;
        this.tunWLen[w] = size;
        w++;
        accepted++;
        bytes += len;
      }
      base += count;
      if (accepted > 0) this.received(e, accepted, bytes);
    }
    this.touchedIn.length = 0;
    if (w > 0) this.tun.writeRaw(this.scratch.buf, this.tunWOff, this.tunWLen, w);
  }

  private readonly shifted = new Int32Array(BATCH);
  private readonly peerBytes = new Map<string, Buffer>();

  /** Octets of the IP header transport mode puts back in front of a payload (IPv4 or IPv6 outer). */
  private get headroom(): number {
    return this.localBytes.length === 4 ? 20 : 40;
  }

  /**
   * Writes the IP header of a transport-mode packet at buf[off] (RFC 4303 §3.1.1 in reverse): peer →
   * us, protocol `nh`, `total` octets with the header. Over UDP encapsulation there may be a NAT
   * between us: the peer's TCP/UDP checksum covers the addresses it saw, so it is recomputed for ours
   * (RFC 3948 §3.1.2; Linux instead marks such packets as not needing a check).
   */
  private ipHeader(buf: Buffer, off: number, total: number, nh: number, e: SaEntry): void {
    const peer = this.peer(e);
    if (this.localBytes.length === 16) {
      buf.writeUInt32BE(0x60000000, off); // version 6, no traffic class, no flow label
      buf.writeUInt16BE(total - 40, off + 4);
      buf[off + 6] = nh;
      buf[off + 7] = 64;
      peer.copy(buf, off + 8);
      this.localBytes.copy(buf, off + 24);
      if (e.udp) recomputeTransportChecksum(buf, off, total);
      return;
    }
    buf[off] = 0x45;
    buf[off + 1] = 0;
    buf.writeUInt16BE(total, off + 2);
    buf.writeUInt32BE(0, off + 4);
    buf[off + 8] = 64;
    buf[off + 9] = nh;
    buf.writeUInt16BE(0, off + 10);
    peer.copy(buf, off + 12);
    this.localBytes.copy(buf, off + 16);
    buf.writeUInt16BE(internetChecksum(buf, off, 20), off + 10);
    if (e.udp) recomputeTransportChecksum(buf, off, total);
  }

  private flushTun(): void {
    if (this.tunOut.count > 0) this.tun.write(this.tunOut);
    this.tunOut.count = 0;
  }

  /** Removes the routing rule and routes and closes the TUN and sockets. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of [this.tun, this.udp500, this.udp4500, this.raw, this.clear, this.ahSock]) s.close();
    this.clearOther?.close();
    for (const ip of ['-4', '-6']) {
      await run('ip', [ip, 'rule', 'del', 'pref', String(this.o.rulePriority)]).catch(() => {});
      await run('ip', [ip, 'route', 'flush', 'table', String(this.o.table)]).catch(() => {});
    }
  }
}
