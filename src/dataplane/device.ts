/**
 * The data plane's device part (wireguard-go's tun + conn): the TUN `consec0`, the marked sockets —
 * per local address UDP 500 and 4500 shared with IKE, raw ESP and raw AH, bound to that address
 * (an endpoint; addresses come and go while it runs); IPPROTO_RAW for cleartext, one per family —
 * the routing rule that sends unmarked traffic to our table, and the routes into the TUN for the
 * protected destinations (counted: a route stays while any SA or rule needs it). Our own sockets
 * carry the firewall mark, so what they send bypasses the TUN (the wg-quick pattern).
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { promisify } from 'node:util';
import { IPPROTO_AH } from '../esp/ah.ts';
import { readIp, writeIp } from '../io/addr.ts';
import { IPPROTO_ESP, offloadNames, RawIpSocket, rtnetlink, TunDevice, UdpSocket } from '../io/native.ts';
import { errnoName, type RouteRequest, routeRequests } from '../io/rtnetlink.ts';
import type { TrafficSelector } from '../sa/spec.ts';

const run = promisify(execFile);

export interface DeviceOptions {
  /** The outer (IKE/ESP) addresses of this host to start with (more can be added). */
  locals: string[];
  /**
   * Following the host's addresses: one that cannot be used yet (an IPv6 address still in duplicate
   * address detection) is left out, not fatal; it is added once the kernel says it is usable.
   */
  follow?: boolean;
  tunName: string;
  /** Open the TUN with offloads (TunOptions.offload). */
  offload?: boolean;
  /** Firewall mark on our own sockets; packets without it are routed into the TUN. */
  mark: number;
  /** Routing table for the protected destinations, and the priority of its rule. */
  table: number;
  rulePriority: number;
  mtu: number;
  log(event: string, detail?: Record<string, unknown>): void;
}

export const DEVICE_DEFAULTS = { tunName: 'consec0', mark: 0xc5ec, table: 0xc5ec, rulePriority: 10_500 };
const SOCKET_BUFFER = 8 * 1024 * 1024;

/** One local address's sockets, bound to it: IKE's UDP 500 and 4500 (ESP in UDP too), raw ESP and AH. */
export interface LocalEndpoint {
  readonly address: string;
  readonly family: 4 | 6;
  /** The address as octets (4 or 16). */
  readonly localBytes: Buffer;
  readonly udp500: UdpSocket;
  readonly udp4500: UdpSocket;
  /** Raw ESP (protocol 50) sends and receives. */
  readonly raw: RawIpSocket;
  /** Raw AH (protocol 51) receives (IPv4 with the IP header AH authenticates; IPv6 without it). */
  readonly ah: RawIpSocket;
}

export class Device {
  /** The local addresses' endpoints, by address text, in the order they were added. */
  readonly endpoints = new Map<string, LocalEndpoint>();
  /** Routes into the TUN by CIDR: how many SAs use each, whether the policy asks for it, its source. */
  private readonly routes = new Map<string, { sas: number; policy: boolean; source?: Buffer }>();
  private closed = false;

  private constructor(
    readonly o: DeviceOptions,
    readonly tun: TunDevice,
    /**
     * IPPROTO_RAW per family (the packet carries its own IP header): exempt and Request traffic in
     * clear, and AH. Tunnel mode carries either family whatever the outer one, so both when the
     * host has both; a host without a family has none.
     */
    readonly clear4: RawIpSocket | undefined,
    readonly clear6: RawIpSocket | undefined,
  ) {}

  /** The IPPROTO_RAW socket of a family. */
  clear(family: 4 | 6): RawIpSocket | undefined {
    return family === 4 ? this.clear4 : this.clear6;
  }

  /** The endpoint of a local address, if consec runs there. */
  endpoint(address: string): LocalEndpoint | undefined {
    return this.endpoints.get(address);
  }

  /** The first endpoint of a family (the source of routes no SA names yet). */
  primary(family: 4 | 6): LocalEndpoint | undefined {
    for (const e of this.endpoints.values()) if (e.family === family) return e;
    return undefined;
  }

  /** Opens the sockets of one more local address (bound to it, marked). Needs CAP_NET_RAW. */
  openEndpoint(address: string): LocalEndpoint {
    const have = this.endpoints.get(address);
    if (have) return have;
    const family = isIPv4(address) ? 4 : 6;
    const opened: { close(): void }[] = [];
    const keep = <T extends { close(): void }>(x: T): T => {
      opened.push(x);
      return x;
    };
    try {
      const udp500 = keep(UdpSocket.open(family));
      const udp4500 = keep(UdpSocket.open(family));
      const raw = keep(RawIpSocket.open(family, IPPROTO_ESP));
      const ah = keep(RawIpSocket.open(family, IPPROTO_AH));
      for (const s of [udp500, udp4500, raw, ah]) s.setMark(this.o.mark);
      // Room for bursts: a bulk transfer arrives faster than one event-loop turn drains it.
      for (const s of [udp4500, raw, ah]) s.setBuffers(SOCKET_BUFFER, SOCKET_BUFFER);
      ah.bind(address);
      udp500.bind(address, 500);
      udp4500.bind(address, 4500);
      raw.bind(address);
      const localBytes = Buffer.alloc(family === 4 ? 4 : 16);
      writeIp(address, localBytes);
      const e: LocalEndpoint = { address, family, localBytes, udp500, udp4500, raw, ah };
      this.endpoints.set(address, e);
      return e;
    } catch (err) {
      for (const s of opened.reverse()) s.close();
      throw err;
    }
  }

  /** Closes the sockets of a local address that is gone. */
  closeEndpoint(address: string): void {
    const e = this.endpoints.get(address);
    if (!e) return;
    this.endpoints.delete(address);
    for (const s of [e.udp500, e.udp4500, e.raw, e.ah]) s.close();
    if (!this.closed) void this.reroute(e.localBytes);
  }

  /** Creates the TUN device, the marked sockets and the routing rule. Needs CAP_NET_ADMIN. */
  static async open(o: DeviceOptions): Promise<Device> {
    const opened: { close(): void }[] = [];
    const keep = <T extends { close(): void }>(x: T): T => {
      opened.push(x);
      return x;
    };
    let device: Device | undefined;
    try {
      const tun = keep(TunDevice.open(o.tunName, { offload: o.offload ?? false }));
      if (tun.offloads !== undefined) o.log('TUN offloads', { accepted: offloadNames(tun.offloads) });
      const clearOf = (family: 4 | 6): RawIpSocket | undefined => {
        let c: RawIpSocket;
        try {
          c = keep(RawIpSocket.open(family, 255));
        } catch (err) {
          if ((err as { sysCode?: string }).sysCode === 'EAFNOSUPPORT') return undefined; // no such family here
          throw err;
        }
        c.setMark(o.mark);
        c.setBuffers(SOCKET_BUFFER, SOCKET_BUFFER);
        return c;
      };
      device = new Device(o, tun, clearOf(4), clearOf(6));
      for (const a of o.locals)
        try {
          device.openEndpoint(a);
        } catch (err) {
          if (!o.follow) throw err;
          o.log('local address not usable yet', { address: a, reason: (err as Error).message });
        }
      // No link-local address: the TUN itself must not send router solicitations or MLD into itself.
      await run('ip', ['link', 'set', 'dev', tun.name, 'addrgenmode', 'none']);
      await run('ip', ['link', 'set', 'dev', tun.name, 'mtu', String(o.mtu), 'up']);
      // One rule per family: unmarked traffic looks in our table first (no route there: on to main).
      const families = new Set<string>(o.locals.map((a) => (isIPv4(a) ? '-4' : '-6')));
      for (const ip of ['-4', '-6']) {
        const pref = String(o.rulePriority);
        await run('ip', [ip, 'rule', 'del', 'pref', pref]).catch(() => {});
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
          pref,
        ]);
        await (families.has(ip) ? add : add.catch(() => {})); // a host may lack the other family
      }
      return device;
    } catch (err) {
      for (const a of [...(device?.endpoints.keys() ?? [])]) device?.closeEndpoint(a);
      for (const s of opened.reverse()) s.close();
      throw err;
    }
  }

  /** Removes a routing rule and table (this run's on close, or a previous run's: `consec daemon --remove-filters`). */
  static async removeRouting(table = DEVICE_DEFAULTS.table, priority = DEVICE_DEFAULTS.rulePriority): Promise<void> {
    for (const ip of ['-4', '-6']) {
      await run('ip', [ip, 'rule', 'del', 'pref', String(priority)]).catch(() => {});
      await run('ip', [ip, 'route', 'flush', 'table', String(table)]).catch(() => {});
    }
  }

  /** Host and prefix-aligned ranges as CIDRs (selectors from Windows rules are subnets or hosts). */
  private static cidr(ts: TrafficSelector): string {
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
    return `${readIp(ts.start, 0, fam)}/${prefix}`;
  }

  /**
   * The destinations the policy protects (routed into the TUN before any SA exists, so the first
   * packet triggers an acquire): routes added and removed as one batch, whatever their number.
   */
  setPolicyRoutes(tss: readonly TrafficSelector[]): Promise<void> {
    const want = new Set(tss.map((ts) => this.cidrOf(ts)));
    const adds: string[] = [];
    const dels: string[] = [];
    for (const cidr of want) {
      const r = this.routes.get(cidr);
      if (!r) {
        this.routes.set(cidr, { sas: 0, policy: true });
        adds.push(cidr);
      } else r.policy = true;
    }
    for (const [cidr, r] of this.routes) {
      if (!r.policy || want.has(cidr)) continue;
      r.policy = false;
      if (r.sas === 0) {
        this.routes.delete(cidr);
        dels.push(cidr);
      }
    }
    return this.changeRoutes(adds, dels);
  }

  /** CIDRs of selectors seen before (the policy hands the same selector objects again). */
  private readonly cidrs = new WeakMap<TrafficSelector, string>();

  private cidrOf(ts: TrafficSelector): string {
    let c = this.cidrs.get(ts);
    if (c === undefined) {
      c = Device.cidr(ts);
      this.cidrs.set(ts, c);
    }
    return c;
  }

  /**
   * Routes `ts`'s destinations into the TUN for an SA (one more user of the route), with the SA's
   * local address as the source of what the host sends there.
   */
  addRoute(ts: TrafficSelector, source?: Buffer): Promise<void> {
    const cidr = Device.cidr(ts);
    const r = this.routes.get(cidr);
    if (r) {
      r.sas++;
      // The policy's route (or an older SA's) takes this SA's address as its source: what the host
      // sends there leaves from the address the SA was negotiated on.
      if (source && !(r.source && r.source.equals(source))) {
        r.source = source;
        return this.changeRoutes([cidr], [], source);
      }
      return Promise.resolve();
    }
    this.routes.set(cidr, { sas: 1, policy: false, source });
    return this.changeRoutes([cidr], [], source);
  }

  /** A local address is gone: routes with it as their source take the family's first address. */
  reroute(gone: Buffer): Promise<void> {
    const cidrs: string[] = [];
    for (const [cidr, r] of this.routes)
      if (r.source?.equals(gone)) {
        r.source = undefined;
        cidrs.push(cidr);
      }
    return this.changeRoutes(cidrs, []);
  }

  /** One user fewer of `ts`'s route; the last one (and no policy asking for it) removes it. */
  removeRoute(ts: TrafficSelector): Promise<void> {
    const cidr = Device.cidr(ts);
    const r = this.routes.get(cidr);
    if (!r) return Promise.resolve();
    r.sas = Math.max(0, r.sas - 1);
    if (r.sas > 0 || r.policy) return Promise.resolve();
    this.routes.delete(cidr);
    return this.changeRoutes([], [cidr]);
  }

  /**
   * Route changes in order, each set as one batch of rtnetlink requests from this process (no `ip`
   * process per change); a failing route does not stop the rest, and is logged.
   */
  private changeRoutes(adds: readonly string[], dels: readonly string[], source?: Buffer): Promise<void> {
    if (adds.length === 0 && dels.length === 0) return this.routeChanges;
    const table = this.o.table;
    const prefix = (cidr: string): { destination: Buffer; prefixLength: number } => {
      const [addr, len] = cidr.split('/') as [string, string];
      const destination = Buffer.alloc(isIPv4(addr) ? 4 : 16);
      writeIp(addr, destination);
      return { destination, prefixLength: Number(len) };
    };
    const requests: RouteRequest[] = [
      ...adds.map((cidr): RouteRequest => {
        const p = prefix(cidr);
        // The SA's own address as the source, else our first address of that family (the TUN has
        // none of its own); the kernel picks one when we have none of the family.
        const src =
          source && source.length === p.destination.length
            ? source
            : this.primary(p.destination.length === 4 ? 4 : 6)?.localBytes;
        return { op: 'replace', ...p, table, ifindex: this.ifindex, source: src };
      }),
      ...dels.map((cidr): RouteRequest => ({ op: 'delete', ...prefix(cidr), table })),
    ];
    const cidrs = [...adds, ...dels];
    this.routeChanges = this.routeChanges.then(() => {
      if (this.closed) return;
      try {
        this.routeBatches++;
        const answers = rtnetlink(routeRequests(requests, this.routeSeq));
        this.routeSeq = (this.routeSeq + requests.length) >>> 0 || 1;
        const failed: string[] = [];
        answers.forEach((errno, i) => {
          if (errno !== 0) failed.push(`${requests[i]?.op} ${cidrs[i]}: ${errnoName(errno)}`);
        });
        if (failed.length)
          this.o.log('route failed', { routes: requests.length, failed: failed.length, reasons: failed.slice(0, 4) });
      } catch (err) {
        this.o.log('route failed', { routes: requests.length, reason: (err as Error).message });
      }
    });
    return this.routeChanges;
  }

  /** The TUN's interface index (the routes' output interface). */
  private get ifindex(): number {
    this.tunIndex ??= Number(readFileSync(`/sys/class/net/${this.tun.name}/ifindex`, 'utf8').trim());
    return this.tunIndex;
  }

  private tunIndex?: number;
  private routeSeq = 1;
  private routeChanges: Promise<void> = Promise.resolve();
  private routeBatches = 0;

  /** Routes into the TUN now, and how many batches of route requests put them there so far. */
  get routeStats(): { routes: number; batches: number } {
    return { routes: this.routes.size, batches: this.routeBatches };
  }

  /** Removes the routing rule and routes and closes the TUN and sockets. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const a of [...this.endpoints.keys()]) this.closeEndpoint(a);
    for (const s of [this.tun, this.clear4, this.clear6]) s?.close();
    await Device.removeRouting(this.o.table, this.o.rulePriority);
  }
}
