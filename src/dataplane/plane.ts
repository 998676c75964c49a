/**
 * The userspace data plane (RFC 4301 processing for kernels without ESP), put together: the device
 * (TUN, marked sockets, rule and routes: device.ts), the SAD (sad.ts), the outbound and inbound
 * pipelines (outbound.ts, inbound.ts), the packets held for an acquire (acquire.ts) and the counters
 * (stats.ts). It takes child SAs from the keying service through `ChildSaSink` and reports acquires,
 * lifetimes and activity back through `SaEvents`; IKE shares its UDP sockets (`bind()`).
 */
import { isIPv4 } from 'node:net';
import { PacketBatch } from '../io/native.ts';
import type { IkeBind, IkeReceiver } from '../sa/bind.ts';
import type { ChildSaSink, SaEvents } from '../sa/sink.ts';
import type { ChildSaSpec, Endpoint, TrafficSelector } from '../sa/spec.ts';
import { AcquireQueue, type PolicyDrop } from './acquire.ts';
import { Device, DEVICE_DEFAULTS, type LocalEndpoint } from './device.ts';
import { ikeSends } from './ike-send.ts';
import { Inbound } from './inbound.ts';
import type { IpInfo } from './ip.ts';
import { Outbound, type Verdict } from './outbound.ts';
import { Sad, type SaEntry } from './sad.ts';
import { Counters, type DataPlaneStats, type DriverDrop } from './stats.ts';

export type { Verdict } from './outbound.ts';
export type { DataPlaneStats, DriverDropId, DropReason } from './stats.ts';
export { DRIVER_EVENT_INTERVAL_MS } from './stats.ts';

export interface DataPlaneOptions {
  /** The outer (IKE/ESP) addresses of this host to start with (addAddress/removeAddress follow changes). */
  locals: string[];
  /** Following the host's addresses: one not usable yet is left out at start (see DeviceOptions). */
  follow?: boolean;
  tunName?: string;
  /** TUN offloads: TCP/UDP super-packets split on the way in, TCP segments coalesced on the way out. */
  offload?: boolean;
  /** Firewall mark on our own sockets; packets without it are routed into the TUN. */
  mark?: number;
  /** Routing table for the protected destinations, and the priority of its rule. */
  table?: number;
  rulePriority?: number;
  mtu?: number;
  /** What the policy says about an outbound packet in the TUN (see Verdict). Default: require. */
  classify?(packet: Buffer, ip: IpInfo): Verdict;
  /**
   * Inbound packets refused by the driver checks, for the IPsec Driver audit events (4960
   * integrity, 4961 replay, 4962 older than the window, 4965 unknown SPI): at most one call per
   * event, SPI and peer every DRIVER_EVENT_INTERVAL_MS, with the packets dropped meanwhile.
   */
  onDriverDrop?(e: DriverDrop): void;
  /** Packets a Require rule held for an SA that could not be negotiated were dropped (event 5152). */
  onPolicyDrop?(e: PolicyDrop): void;
  log?(event: string, detail?: Record<string, unknown>): void;
}

/** An SPI as the eight hex digits logs and views show. */
const hex8 = (spi: number): string => spi.toString(16).padStart(8, '0');

export class UserspaceDataPlane implements ChildSaSink {
  readonly sad = new Sad();
  private readonly tally: Counters;
  private readonly held: AcquireQueue;
  private readonly outbound: Outbound;
  private readonly inbound: Inbound;
  /** Where acquires, expiries and activity go (the keying service, once it exists: `attach`). */
  private events: SaEvents = {};
  /** The keying service's receiver per local address. */
  private readonly keying = new Map<string, IkeReceiver>();
  private readonly one = new PacketBatch(1, 65_536);
  private closed = false;

  private constructor(
    private readonly device: Device,
    private readonly o: DataPlaneOptions,
  ) {
    this.tally = new Counters(o.onDriverDrop);
    this.held = new AcquireQueue(this.tally, {
      acquire: (flow) => this.events.acquire?.(flow),
      onPolicyDrop: o.onPolicyDrop,
      log: (event, detail) => this.log(event, detail),
    });
    this.outbound = new Outbound({
      device,
      sad: this.sad,
      counters: this.tally,
      held: this.held,
      classify: (packet, ip) => this.o.classify?.(packet, ip) ?? 'require',
      exhausted: (e) => this.events.expire?.(e.in.spi, true),
      sent: (e) => this.checkLifetime(e),
    });
    this.inbound = new Inbound({
      device,
      sad: this.sad,
      counters: this.tally,
      keying: (address) => this.keying.get(address),
      received: (e, packets, bytes) => this.received(e, packets, bytes),
    });
  }

  /** Creates the TUN device, the marked sockets and the routing rule, and starts reading. Needs CAP_NET_ADMIN. */
  static async open(options: DataPlaneOptions): Promise<UserspaceDataPlane> {
    // The TUN MTU leaves room for the largest ESP overhead we negotiate (outer IP, UDP 4500, SPI and
    // sequence, a 16-octet IV, 15 octets of CBC padding, trailer, a 32-octet HMAC-SHA-512 ICV), so
    // the kernel answers oversized DF packets with ICMP "fragmentation needed" / "packet too big".
    const device = await Device.open({
      ...DEVICE_DEFAULTS,
      // Following the host, an IPv6 address may come later: room for its larger header from the start.
      mtu: !options.follow && options.locals.length > 0 && options.locals.every((a) => isIPv4(a)) ? 1392 : 1372,
      ...options,
      log: (event, detail) => options.log?.(event, detail),
    });
    const plane = new UserspaceDataPlane(device, options);
    plane.start();
    return plane;
  }

  /** Removes the routing rule and table a previous run left (`consec daemon --remove-filters`). */
  static removeRouting(table?: number, priority?: number): Promise<void> {
    return Device.removeRouting(table, priority);
  }

  get stats(): DataPlaneStats {
    return this.tally.stats;
  }

  /** Packets sent in clear (exempt, or Request without an SA). */
  get clearPackets(): number {
    return this.outbound.clearPackets;
  }

  /** Packets waiting for an SA. */
  get queuedPackets(): number {
    return this.held.size;
  }

  /** The IP families of the outer addresses (both on a dual-stack host). */
  get families(): (4 | 6)[] {
    const out = new Set<4 | 6>();
    for (const e of this.device.endpoints.values()) out.add(e.family);
    return [...out];
  }

  /** The local addresses the data plane runs on. */
  get addresses(): string[] {
    return [...this.device.endpoints.keys()];
  }

  /** One more local address: its sockets open and are read (IKE binds there next). */
  addAddress(address: string): void {
    if (this.closed || this.device.endpoint(address)) return;
    this.listenAt(this.device.openEndpoint(address));
    this.log('local address added', { address });
  }

  /** A local address is gone (its SAs were deleted first): its sockets close. */
  removeAddress(address: string): void {
    const ep = this.device.endpoint(address);
    if (!ep) return;
    // SAs still on it (manual ones, or any its keying module kept) cannot send from an address the
    // host no longer has: they go, and their owner hears of it as a hard expiry.
    for (const e of this.sad.entries())
      if (e.local === ep) {
        this.delete(e.in.spi);
        this.events.expire?.(e.in.spi, true);
      }
    this.outbound.forgetEndpoint(ep);
    this.keying.delete(address);
    this.device.closeEndpoint(address);
    this.log('local address removed', { address });
  }

  get tunName(): string {
    return this.device.tun.name;
  }

  get mark(): number {
    return this.device.o.mark;
  }

  /** Traffic counted on the SA whose inbound SPI is `spiIn`, if it is installed here. */
  counters(spiIn: number): { bytesIn: number; bytesOut: number; packetsIn: number; packetsOut: number } | undefined {
    const e = this.sad.inbound(spiIn);
    return e && { bytesIn: e.in.bytes, bytesOut: e.out.bytes, packetsIn: e.in.packets, packetsOut: e.out.packets };
  }

  /** Hands acquires, lifetime expiries and activity to the keying service. */
  attach(events: SaEvents): void {
    this.events = events;
  }

  private log(event: string, detail?: Record<string, unknown>): void {
    this.o.log?.(event, detail);
  }

  private start(): void {
    const d = this.device;
    d.tun.onReadable(this.guarded(() => this.outbound.fromTun()));
    for (const ep of d.endpoints.values()) this.listenAt(ep);
  }

  /** Reads a local address's sockets. */
  private listenAt(ep: LocalEndpoint): void {
    ep.udp4500.onReadable(this.guarded(() => this.inbound.fromUdp(ep, 4500)));
    ep.udp500.onReadable(this.guarded(() => this.inbound.fromUdp(ep, 500)));
    ep.raw.onReadable(this.guarded(() => this.inbound.fromRaw(ep)));
    ep.ah.onReadable(this.guarded(() => this.inbound.fromAh(ep)));
  }

  /**
   * A read loop that cannot take the daemon down: a fault is logged and counted, what the loops had
   * gathered is dropped, and the next read starts clean.
   */
  private guarded(loop: () => void): () => void {
    return () => {
      try {
        loop();
      } catch (err) {
        this.tally.drop('internal error');
        this.log('data plane fault', { error: (err as Error).message });
        this.inbound.reset();
        this.outbound.reset();
      }
    };
  }

  /** The IKE sockets of a local address, for the keying service (`IkeManager.listen(rx => plane.bind(address, rx))`). */
  bind(address: string, rx: IkeReceiver): IkeBind {
    const d = this.device.endpoint(address);
    if (!d) throw new Error(`the data plane does not run on ${address}`);
    this.keying.set(address, rx);
    return {
      address,
      ...ikeSends(d.udp500, d.udp4500, {
        scratch: this.one,
        closed: () => this.closed,
        log: (event, detail) => this.log(event, detail),
      }),
      close: () => {
        if (this.keying.get(address) === rx) this.keying.delete(address);
      },
    };
  }

  // ---- ChildSaSink -----------------------------------------------------------------------------

  install(spec: ChildSaSpec): void {
    let e: SaEntry;
    const spis = { spiIn: hex8(spec.inbound.spi), spiOut: hex8(spec.outbound.spi) };
    try {
      e = this.sad.install(spec);
      e.local = this.device.endpoint(spec.local.address);
      if (!e.local) {
        this.sad.remove(spec.inbound.spi);
        throw new Error(`no local address ${spec.local.address} in the data plane`);
      }
    } catch (err) {
      // An SA this data plane cannot carry (no supported algorithm) is refused here, loudly, not half-installed.
      this.log('SA not installed', { ...spis, reason: (err as Error).message });
      return;
    }
    for (const ts of e.remoteTs) void this.device.addRoute(ts, e.local.localBytes);
    this.log('SA installed', { ...spis, mode: e.mode, udp: e.udp, outbound: e.outboundActive });
    if (e.outboundActive) this.sendHeld();
  }

  activate(spiIn: number): void {
    if (!this.sad.activate(spiIn)) return;
    this.log('SA carries outbound traffic', { spiIn: hex8(spiIn) });
    this.sendHeld();
  }

  delete(spiIn: number): void {
    const e = this.sad.remove(spiIn);
    if (!e) return;
    // Packets gathered for it in the read being handled (its IKE message came in the same read)
    // go nowhere: its contexts are closed. Without its gather entry the batch step skips it.
    const pending = this.outbound.forget(e) + this.inbound.forget(e);
    if (pending > 0) this.tally.drop('SA removed', pending);
    for (const ts of e.remoteTs) void this.device.removeRoute(ts);
  }

  update(spiIn: number, remote: Endpoint): void {
    this.sad.update(spiIn, remote);
  }

  // ---- traffic without an SA ---------------------------------------------------------------------

  /**
   * Routes traffic for the policy's protected ranges into the TUN before any SA exists (so the first
   * packet triggers an acquire); ranges no longer listed lose their route unless an SA uses it.
   */
  setProtected(tss: readonly TrafficSelector[]): Promise<void> {
    return this.device.setPolicyRoutes(tss);
  }

  /** Routes into the TUN, and the batches of route requests that made them. */
  get routeStats(): { routes: number; batches: number } {
    return this.device.routeStats;
  }

  /** Sends what waited for an SA that now covers it; the rest keeps waiting. */
  private sendHeld(): void {
    const ready = this.held.release((p, ip) => this.sad.outboundFor(p, ip) !== undefined);
    if (ready.length > 0) this.outbound.sendHeld(ready);
  }

  /** The negotiation for `dst` failed: what waited is dropped (Require; Request falls back in the filter). */
  acquireFailed(dst: string): void {
    this.held.failed(dst);
  }

  // ---- per SA ------------------------------------------------------------------------------------

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
    const s = this.tally.stats;
    s.packetsIn += packets;
    s.bytesIn += bytes;
    const now = Date.now();
    if (now - e.lastActivity > 1000) {
      e.lastActivity = now;
      this.events.activity?.(e.in.spi);
    }
    // The first packet on a rekeyed SA shows the peer has it: our traffic may move to it (RFC 7296 §2.8).
    if (!e.outboundActive) this.activate(e.in.spi);
    this.checkLifetime(e);
  }

  /** Removes the routing rule and routes and closes the TUN and sockets. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.device.close();
  }
}
