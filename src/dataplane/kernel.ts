/**
 * The kernel's own IPsec as the data plane (where the kernel has ESP/AH): child SAs and policies go
 * into the kernel's SAD and SPD through netlink XFRM (src/io/xfrm.ts), the same `ChildSaSink` the
 * userspace plane implements; the kernel's acquires and lifetime expiries come back as `SaEvents`.
 *
 * What goes into the SPD (all of consec's entries in one priority band, so a restart finds and
 * replaces its own and leaves anybody else's alone):
 * - exemptions of the policy: `allow` policies, before everything else of ours;
 * - each child SA: policies for its selectors (out; in, and fwd in tunnel mode) whose template names
 *   the SA's reqid — a rekeyed SA with the same selectors shares them (make-before-break);
 * - each negotiating filter of the policy ("trap" policies): a template with no SA behind it, so the
 *   kernel asks for one (XFRM_MSG_ACQUIRE). Require: the template is required — without an SA the
 *   packet is dropped, also once this process is gone (fail-closed in the kernel itself); Request:
 *   the template is optional (`level use`) — the packet goes as it is until an SA exists.
 * IKE's own sockets carry a per-socket bypass policy, so no entry can ever catch keying traffic.
 */
import { isIP, isIPv4 } from 'node:net';
import { constants } from 'node:os';
import { type IpFamily, ipBytes, readIp } from '../io/addr.ts';
import { errnoName } from '../io/rtnetlink.ts';
import { PacketBatch, RtnetlinkMonitor, UdpSocket, xfrmQuery, xfrmRequests } from '../io/native.ts';
import {
  deletePolicyRequest,
  deleteSaRequest,
  dumpPoliciesRequest,
  dumpSasRequest,
  getSaRequest,
  parseAcquire,
  parseExpire,
  parsePolicyInfo,
  parseSaInfo,
  policyRequest,
  portRangeToMasks,
  rangeToPrefixes,
  saRequest,
  splitMessages,
  XFRM_MSG,
  XFRMGRP_ACQUIRE,
  XFRMGRP_EXPIRE,
  XFRMGRP_POLICY,
  XFRMGRP_SA,
  parseSaId,
  XfrmCodecError,
  type XfrmAlgorithm,
  type XfrmPolicy,
  type XfrmSa,
  type XfrmSaId,
  type XfrmSaInfo,
  type XfrmSelector,
  type XfrmTemplate,
} from '../io/xfrm.ts';

import { NativeIoError } from '../errors.ts';
import { ANY_V4, ANY_V6, boundBytes } from '../filter/address.ts';
import type { Filter, Flow } from '../filter/compile.ts';
import { type IkeBind, type IkeReceiver, NON_ESP_MARKER, udp4500Kind } from '../sa/bind.ts';
import type { ChildSaSink, SaEvents } from '../sa/sink.ts';
import type { ChildSaSpec, Endpoint, TrafficSelector } from '../sa/spec.ts';
import { DEVICE_DEFAULTS } from './device.ts';
import { ikeSends } from './ike-send.ts';

/** consec's SPD entries: priorities in [BAND, BAND + 2^24); SAs: reqids in [REQID_BASE, REQID_BASE + 2^24). */
const BAND = 0x0c50_0000;
const BAND_SIZE = 0x0100_0000;
const PRIO_EXEMPT = BAND; // + the filter's rank
const PRIO_SA = BAND + 0x0040_0000;
const PRIO_TRAP = BAND + 0x0080_0000; // + the filter's rank
const REQID_BASE = 0x0c50_0000;
const REQID_SIZE = 0x0100_0000;
/** Anti-replay window in packets. */
const REPLAY_WINDOW = 128;
/** A delete answered "no such entry": already gone, which is what the delete wanted. */
const ENOENT = constants.errno.ENOENT;

const inBand = (priority: number): boolean => priority >= BAND && priority < BAND + BAND_SIZE;
const ourReqid = (reqid: number): boolean => reqid >= REQID_BASE && reqid < REQID_BASE + REQID_SIZE;

/** The firewall mark on IKE's sockets (the fail-closed table lets marked IKE out), as the userspace plane's. */
export const KERNEL_IKE_MARK = DEVICE_DEFAULTS.mark;

export interface KernelPlaneOptions {
  log?(event: string, detail?: Record<string, unknown>): void;
}

/** The kernel crypto API's names for the algorithms a child SA spec names. */
function algorithms(
  spec: ChildSaSpec,
  keys: { encrKey: Buffer; integKey: Buffer },
): Pick<XfrmSa, 'aead' | 'crypt' | 'auth'> {
  const integ = (): XfrmAlgorithm | undefined => {
    switch (spec.integrity) {
      case undefined:
        return undefined;
      case 'sha1-96':
        return { name: 'hmac(sha1)', key: keys.integKey, bits: 96 };
      case 'sha256-128':
        return { name: 'hmac(sha256)', key: keys.integKey, bits: 128 };
      case 'sha384-192':
        return { name: 'hmac(sha384)', key: keys.integKey, bits: 192 };
      case 'sha512-256':
        return { name: 'hmac(sha512)', key: keys.integKey, bits: 256 };
    }
  };
  if (spec.protocol === 'ah') {
    const auth = integ();
    if (!auth) throw new Error('AH needs an integrity algorithm');
    return { auth };
  }
  switch (spec.cipher) {
    case 'aes-gcm-16':
      return { aead: { name: 'rfc4106(gcm(aes))', key: keys.encrKey, bits: 128 } };
    case 'aes-cbc':
      return { crypt: { name: 'cbc(aes)', key: keys.encrKey }, auth: integ() };
    case 'null':
      return { crypt: { name: 'ecb(cipher_null)', key: Buffer.alloc(0) }, auth: integ() };
    default:
      throw new Error(`no kernel name for ESP cipher ${String(spec.cipher)}`);
  }
}

/** Selectors for traffic from `local` to `remote` (each a list of traffic selectors), as prefix pairs. */
function selectorsFor(local: readonly TrafficSelector[], remote: readonly TrafficSelector[]): XfrmSelector[] {
  const out: XfrmSelector[] = [];
  for (const l of local)
    for (const r of remote) {
      if (l.type !== r.type) continue;
      const family: 4 | 6 = l.type === 7 ? 4 : 6;
      const proto = l.ipProtocol || r.ipProtocol;
      if (l.ipProtocol && r.ipProtocol && l.ipProtocol !== r.ipProtocol) continue;
      const ports = (ts: TrafficSelector) =>
        proto === 6 || proto === 17 || proto === 132
          ? portRangeToMasks(ts.startPort, ts.endPort)
          : [{ port: 0, mask: 0 }];
      for (const lp of rangeToPrefixes(l.start, l.end))
        for (const rp of rangeToPrefixes(r.start, r.end))
          for (const sp of ports(l))
            for (const dp of ports(r))
              out.push({
                family,
                src: lp.address,
                srcPrefix: lp.prefix,
                dst: rp.address,
                dstPrefix: rp.prefix,
                proto,
                sport: sp.port,
                sportMask: sp.mask,
                dport: dp.port,
                dportMask: dp.mask,
              });
    }
  return out;
}

/** ICMP or ICMPv6: the kernel keeps the message type and code where a selector has ports. */
const isIcmp = (proto: number): boolean => proto === 1 || proto === 58;

/** The selector of traffic the other way (ICMP's type and code are no ports: they stay). */
function reverse(s: XfrmSelector): XfrmSelector {
  const icmp = isIcmp(s.proto);
  return {
    ...s,
    src: s.dst,
    srcPrefix: s.dstPrefix,
    dst: s.src,
    dstPrefix: s.srcPrefix,
    ...(icmp ? {} : { sport: s.dport, sportMask: s.dportMask, dport: s.sport, dportMask: s.sportMask }),
  };
}

const selectorKey = (dir: string, s: XfrmSelector): string =>
  `${dir} ${s.family} ${Buffer.from(s.src).toString('hex')}/${s.srcPrefix} ${Buffer.from(s.dst).toString('hex')}/${s.dstPrefix} ${s.proto} ${s.sport}/${s.sportMask} ${s.dport}/${s.dportMask}`;

/** One installed child SA, with what it needs to be found, moved and removed. */
interface KernelSa {
  spec: ChildSaSpec;
  reqid: number;
  inbound: XfrmSa;
  outbound: XfrmSa;
  outboundInstalled: boolean;
  /** The reqid group's key (selectors, peer, protocol, mode): SAs of one group share policies. */
  group: string;
  /** A soft lifetime was reported (the kernel counts each direction; the first one renews). */
  softReported: boolean;
}

interface PolicyGroup {
  reqid: number;
  users: number;
  policies: XfrmPolicy[];
}

export class KernelDataPlane implements ChildSaSink {
  private events: SaEvents = {};
  private readonly sas = new Map<number, KernelSa>();
  /** Outbound SA (SPI + destination) → the inbound SPI of its child SA, for expire messages. */
  private readonly byOutbound = new Map<string, number>();
  private readonly groups = new Map<string, PolicyGroup>();
  private nextReqid = REQID_BASE + 1;
  /** The filter policies (exemptions and traps) in the SPD now, by direction and selector. */
  private filterPolicies = new Map<string, XfrmPolicy>();
  /**
   * SPD keys (direction + selector) an SA's policy holds now, and by which reqid group. The kernel
   * keeps one policy per key whatever its priority: an SA whose selectors are exactly a rule's
   * (host to host) replaces that rule's trap policy, which comes back when the SA's policy goes.
   */
  private readonly held = new Map<string, string[]>();
  private seq = 1;
  private monitor?: RtnetlinkMonitor;
  private readonly batch = new PacketBatch(8, 32_768);
  private readonly one = new PacketBatch(1, 65_536);
  private readonly sockets = new Map<string, { s500: UdpSocket; s4500: UdpSocket; rx: IkeReceiver }>();
  private closed = false;

  private constructor(private readonly o: KernelPlaneOptions) {}

  /**
   * Whether this kernel carries ESP: an ESP SA (AES-GCM, a throw-away key) is put into the SAD and
   * taken out again — the kernel loads what it needs or says why not. No guessing from module lists.
   */
  static probe(): { ok: true } | { ok: false; reason: string } {
    const probe: XfrmSa = {
      family: 4,
      src: Buffer.from([127, 0, 0, 1]),
      dst: Buffer.from([127, 0, 0, 2]),
      spi: 0xc5c5_0001,
      proto: 'esp',
      mode: 'transport',
      reqid: REQID_BASE,
      aead: { name: 'rfc4106(gcm(aes))', key: Buffer.alloc(20, 0x5a), bits: 128 },
      esn: false,
      replayWindow: 32,
    };
    const remove = deleteSaRequest(saId(probe), 1);
    let errno: number;
    try {
      // (A probe left by a process killed in between goes first.)
      [, errno = -1] = xfrmRequests(Buffer.concat([remove, saRequest(probe, 2)]));
    } catch (err) {
      return { ok: false, reason: `no netlink XFRM (${(err as Error).message})` };
    }
    if (errno !== 0) return { ok: false, reason: `the kernel refused an ESP SA (${errnoName(errno)})` };
    xfrmRequests(remove);
    return { ok: true };
  }

  /**
   * Takes the kernel's SAD and SPD: consec's entries from an earlier run go (their keys died with
   * it; the fail-closed trap policies are put back by the first `setFilters`), the acquire and
   * expire messages are read from now on.
   */
  static open(o: KernelPlaneOptions = {}): KernelDataPlane {
    const plane = new KernelDataPlane(o);
    plane.removeStale();
    plane.monitor = RtnetlinkMonitor.openXfrm(XFRMGRP_ACQUIRE | XFRMGRP_EXPIRE | XFRMGRP_SA | XFRMGRP_POLICY);
    plane.monitor.onReadable(() => plane.readMonitor());
    return plane;
  }

  /** Removes every SA and policy of consec's from the kernel (`consec daemon --remove-filters`). */
  static removeAll(): void {
    try {
      new KernelDataPlane({}).removeStale(true);
    } catch (err) {
      if (!(err instanceof NativeIoError)) throw err;
    }
  }

  attach(events: SaEvents): void {
    this.events = events;
  }

  private log(event: string, detail?: Record<string, unknown>): void {
    this.o.log?.(event, detail);
  }

  /** Sends requests; a refused one is returned with its errno. */
  private send(messages: Buffer[]): number[] {
    if (messages.length === 0) return [];
    const buf = Buffer.concat(
      messages.map((m) => {
        m.writeUInt32LE(this.seq++ >>> 0, 8);
        return m;
      }),
    );
    return [...xfrmRequests(buf)];
  }

  private removeStale(all = false): void {
    const dels: Buffer[] = [];
    for (const m of splitMessages(xfrmQuery(dumpPoliciesRequest(this.seq++)))) {
      if (m.type !== XFRM_MSG.NEWPOLICY) continue;
      const p = tolerant(() => parsePolicyInfo(m.body)); // somebody else's entry we cannot read: not ours
      if (!p || !inBand(p.priority)) continue;
      // Fail-closed: the trap policies of the previous run stay until the new policy replaces them,
      // and an SA's policy (which may stand in for a trap policy with its selector) blocks meanwhile.
      if (!all && p.priority >= PRIO_SA) {
        const block: XfrmPolicy = { dir: p.dir, sel: p.sel, priority: p.priority, action: 'block', tmpls: [] };
        if (p.priority < PRIO_TRAP) dels.push(policyRequest(block, 0));
        this.filterPolicies.set(
          selectorKey(p.dir, p.sel),
          p.priority < PRIO_TRAP ? block : { ...block, action: p.action },
        );
        continue;
      }
      dels.push(deletePolicyRequest({ dir: p.dir, sel: p.sel }, 0));
    }
    for (const m of splitMessages(xfrmQuery(dumpSasRequest(this.seq++)))) {
      if (m.type !== XFRM_MSG.NEWSA) continue;
      const sa = tolerant(() => parseSaInfo(m.body));
      if (!sa || !ourReqid(sa.reqid)) continue;
      const proto = sa.proto === 51 ? 'ah' : 'esp';
      dels.push(deleteSaRequest({ family: sa.family, dst: sa.dst, spi: sa.spi, proto }, 0));
    }
    const refused = this.send(dels).filter((e) => e !== 0 && e !== ENOENT);
    if (refused.length > 0)
      this.log('kernel IPsec entries of an earlier run not removed', { refused: refused.map(errnoName) });
    if (dels.length > 0) this.log('kernel IPsec entries of an earlier run removed', { entries: dels.length });
  }

  // ---- IKE sockets ----------------------------------------------------------------------------

  /** UDP 500 and 4500 on `address` for the keying service; the kernel takes ESP-in-UDP on 4500 itself. */
  bind(address: string, rx: IkeReceiver): IkeBind {
    const family: IpFamily = isIPv4(address) ? 4 : 6;
    const open = (port: number): UdpSocket => {
      const s = UdpSocket.open(family);
      try {
        s.bypassIpsecPolicy(family);
        s.setMark(KERNEL_IKE_MARK);
        if (port === 4500) s.espInUdp();
        s.bind(address, port);
      } catch (err) {
        s.close();
        throw err;
      }
      return s;
    };
    const s500 = open(500);
    let s4500: UdpSocket;
    try {
      s4500 = open(4500);
    } catch (err) {
      s500.close();
      throw err;
    }
    const read = (s: UdpSocket, port: 500 | 4500) => () => {
      const b = this.batch;
      for (;;) {
        let n: number;
        try {
          n = s.recv(b);
        } catch {
          return;
        }
        if (n === 0) return;
        for (let i = 0; i < n; i++) {
          const len = b.lengths[i] as number;
          if (len < 0) continue;
          const off = i * b.slot;
          const from: Endpoint = { address: readIp(b.addrs, i * 16, family), port: b.ports[i] as number };
          const data = Buffer.from(b.buf.subarray(off, off + len));
          if (port === 500) rx.ike(data, from, 500);
          else if (udp4500Kind(data) === 'ike') rx.ike(data.subarray(NON_ESP_MARKER.length), from, 4500);
        }
      }
    };
    s500.onReadable(read(s500, 500));
    s4500.onReadable(read(s4500, 4500));
    this.sockets.set(address, { s500, s4500, rx });
    return {
      address,
      ...ikeSends(s500, s4500, {
        scratch: this.one,
        closed: () => this.closed,
        log: (event, detail) => this.log(event, detail),
      }),
      close: () => {
        if (this.sockets.get(address)?.rx !== rx) return;
        this.sockets.delete(address);
        s500.close();
        s4500.close();
      },
    };
  }

  // ---- ChildSaSink -----------------------------------------------------------------------------

  install(spec: ChildSaSpec): void {
    if (this.closed) return;
    const spis = { spiIn: hex8(spec.inbound.spi), spiOut: hex8(spec.outbound.spi) };
    let sa: KernelSa;
    try {
      sa = this.build(spec);
    } catch (err) {
      this.log('SA not installed', { ...spis, reason: (err as Error).message });
      return;
    }
    const [errno = -1] = this.send([saRequest(sa.inbound, 0)]);
    if (errno !== 0) {
      this.releaseGroup(sa.group);
      this.log('SA not installed', { ...spis, reason: `the kernel refused it (${errnoName(errno)})` });
      return;
    }
    this.sas.set(spec.inbound.spi, sa);
    if (spec.outboundActive !== false) this.installOutbound(sa);
    else this.watchInbound();
    this.log('SA installed', {
      ...spis,
      mode: spec.mode,
      udp: spec.udpEncapsulation,
      outbound: sa.outboundInstalled,
      reqid: sa.reqid,
    });
  }

  private build(spec: ChildSaSpec): KernelSa {
    const family: 4 | 6 = isIPv4(spec.local.address) ? 4 : 6;
    const local = ipBytes(spec.local.address);
    const remote = ipBytes(spec.remote.address);
    // A transport mode SA carries the two hosts' own traffic only, and the kernel checks each
    // inbound packet against it: the negotiated selectors when they are one kernel selector, else the
    // two hosts (never "any source": a peer could then speak for another Require host through it).
    const transportSel = (
      from: readonly TrafficSelector[],
      to: readonly TrafficSelector[],
      src: Buffer,
      dst: Buffer,
    ): XfrmSelector | undefined => {
      if (spec.mode !== 'transport') return undefined;
      const one = selectorsFor(from, to);
      if (one.length === 1 && one[0]?.srcPrefix === src.length * 8 && one[0]?.dstPrefix === dst.length * 8)
        return one[0];
      const protocols = new Set([...from, ...to].map((t) => t.ipProtocol));
      const proto = protocols.size === 1 ? ([...protocols][0] as number) : 0;
      const bits = src.length * 8;
      return {
        family,
        src,
        srcPrefix: bits,
        dst,
        dstPrefix: bits,
        proto,
        sport: 0,
        sportMask: 0,
        dport: 0,
        dportMask: 0,
      };
    };
    const inAlgorithms = algorithms(spec, spec.inbound);
    const outAlgorithms = algorithms(spec, spec.outbound);
    const base = {
      family,
      proto: spec.protocol,
      mode: spec.mode,
      esn: spec.esn,
      replayWindow: REPLAY_WINDOW,
      anyInnerFamily:
        spec.mode === 'tunnel' && [...spec.localTs, ...spec.remoteTs].some((t) => (t.type === 7 ? 4 : 6) !== family),
      // The kernel counts each SA (direction) by itself: the limit applies per direction here, where
      // the userspace plane adds both.
      // Both ends count the same bytes: a little jitter (85–95 %) keeps them from renewing at the same
      // instant, every time (a rekey collision each lifetime).
      softBytes: spec.maxKilobytes
        ? BigInt(Math.floor(spec.maxKilobytes * 1024 * (0.85 + Math.random() * 0.1)))
        : undefined,
      hardBytes: spec.maxKilobytes ? BigInt(spec.maxKilobytes * 1024) : undefined,
      // 32-bit sequence numbers run out: renewed well before (the userspace plane's margin, 2^20).
      softPackets: spec.esn ? undefined : BigInt(2 ** 32 - 2 ** 20),
      hardPackets: spec.esn ? undefined : BigInt(2 ** 32 - 1),
    } as const;
    const group = `${spec.protocol} ${spec.mode} ${spec.remote.address} ${spec.local.address} ${tsKey(spec.localTs)} > ${tsKey(spec.remoteTs)}`;
    const reqid = this.acquireGroup(group, spec, local, remote, family);
    return {
      spec,
      reqid,
      group,
      outboundInstalled: false,
      softReported: false,
      inbound: {
        ...base,
        src: remote,
        dst: local,
        spi: spec.inbound.spi,
        reqid,
        sel: transportSel(spec.remoteTs, spec.localTs, remote, local),
        encap: spec.udpEncapsulation ? { sport: spec.remote.port, dport: spec.local.port } : undefined,
        ...inAlgorithms,
      },
      outbound: {
        ...base,
        src: local,
        dst: remote,
        spi: spec.outbound.spi,
        reqid,
        sel: transportSel(spec.localTs, spec.remoteTs, local, remote),
        encap: spec.udpEncapsulation ? { sport: spec.local.port, dport: spec.remote.port } : undefined,
        // What the kernel sends for this SA carries IKE's mark: the fail-closed table lets it out
        // (ESP in UDP goes to whatever port the peer's NAT shows).
        outputMark: KERNEL_IKE_MARK,
        ...outAlgorithms,
      },
    };
  }

  /** The reqid of an SA's selectors and peer; its policies go into the SPD with the first SA. */
  private acquireGroup(group: string, spec: ChildSaSpec, local: Buffer, remote: Buffer, family: 4 | 6): number {
    const g = this.groups.get(group);
    if (g) {
      g.users++;
      return g.reqid;
    }
    const reqid = this.nextReqid++;
    if (this.nextReqid >= REQID_BASE + REQID_SIZE) this.nextReqid = REQID_BASE + 1;
    const tmpl = (src: Buffer, dst: Buffer): XfrmTemplate => ({
      proto: spec.protocol,
      mode: spec.mode,
      family,
      reqid,
      optional: false,
      ...(spec.mode === 'tunnel' ? { src, dst } : {}),
    });
    const policies: XfrmPolicy[] = [];
    for (const sel of selectorsFor(spec.localTs, spec.remoteTs)) {
      policies.push({ dir: 'out', sel, priority: PRIO_SA, action: 'allow', tmpls: [tmpl(local, remote)] });
      policies.push({ dir: 'in', sel: reverse(sel), priority: PRIO_SA, action: 'allow', tmpls: [tmpl(remote, local)] });
      if (spec.mode === 'tunnel')
        policies.push({
          dir: 'fwd',
          sel: reverse(sel),
          priority: PRIO_SA,
          action: 'allow',
          tmpls: [tmpl(remote, local)],
        });
    }
    const failed = this.send(policies.map((p) => policyRequest(p, 0))).find((e) => e !== 0);
    if (failed !== undefined) this.log('SA policies not installed', { reqid, reason: errnoName(failed) });
    for (const p of policies) {
      const key = selectorKey(p.dir, p.sel);
      this.held.set(key, [...(this.held.get(key) ?? []), group]);
    }
    this.groups.set(group, { reqid, users: 1, policies });
    return reqid;
  }

  private releaseGroup(group: string): void {
    const g = this.groups.get(group);
    if (!g || --g.users > 0) return;
    this.groups.delete(group);
    const reqs: Buffer[] = [];
    for (const p of g.policies) {
      const key = selectorKey(p.dir, p.sel);
      const holders = (this.held.get(key) ?? []).filter((x) => x !== group);
      const wasTop = this.held.get(key)?.at(-1) === group;
      if (holders.length > 0) this.held.set(key, holders);
      else this.held.delete(key);
      if (!wasTop) continue; // a newer SA's policy holds it now
      // The next holder's policy, else the rule's own for this selector (Require: no clear traffic in
      // between), else none.
      const base = this.holderPolicy(key) ?? this.filterPolicies.get(key);
      reqs.push(base ? policyRequest(base, 0) : deletePolicyRequest(p, 0));
    }
    this.send(reqs);
  }

  /** The policy the newest SA group holding SPD key `key` put there (undefined: no SA holds it). */
  private holderPolicy(key: string): XfrmPolicy | undefined {
    const top = this.held.get(key)?.at(-1);
    return top === undefined
      ? undefined
      : this.groups.get(top)?.policies.find((x) => selectorKey(x.dir, x.sel) === key);
  }

  /** The child SA (by inbound SPI) an SA the kernel names belongs to, either direction. */
  private spiInOf(spi: number, dst: Uint8Array): number | undefined {
    const mine = this.sas.get(spi);
    return mine && Buffer.from(mine.inbound.dst).equals(dst) ? spi : this.byOutbound.get(outKey(spi, dst));
  }

  private installOutbound(sa: KernelSa): void {
    const [errno = -1] = this.send([saRequest(sa.outbound, 0, sa.outboundInstalled)]);
    if (errno !== 0) {
      this.log('outbound SA not installed', { spiOut: hex8(sa.outbound.spi), reason: errnoName(errno) });
      return;
    }
    sa.outboundInstalled = true;
    this.byOutbound.set(outKey(sa.outbound.spi, sa.outbound.dst), sa.spec.inbound.spi);
  }

  /**
   * The kernel says nothing when ESP first arrives on an SA: while an SA waits to carry outbound
   * traffic (a rekey responder's, RFC 7296 §2.8), its inbound counter is read every 100 ms, and the
   * first packet on it activates it — as the userspace plane does on that packet.
   */
  private watchInbound(): void {
    if (this.inboundWatch || this.closed) return;
    this.inboundWatch = setInterval(() => {
      let waiting = 0;
      for (const [spiIn, sa] of this.sas) {
        if (sa.outboundInstalled) continue;
        if ((this.read(sa.inbound)?.packets ?? 0n) > 0n) this.activate(spiIn);
        else waiting++;
      }
      if (waiting === 0) {
        clearInterval(this.inboundWatch);
        this.inboundWatch = undefined;
      }
    }, 100);
    this.inboundWatch.unref();
  }

  private inboundWatch?: NodeJS.Timeout;

  activate(spiIn: number): void {
    const sa = this.sas.get(spiIn);
    if (!sa || sa.outboundInstalled) return;
    this.installOutbound(sa);
    this.log('SA carries outbound traffic', { spiIn: hex8(spiIn) });
  }

  delete(spiIn: number): void {
    const sa = this.sas.get(spiIn);
    if (!sa) return;
    this.sas.delete(spiIn);
    const reqs = [deleteSaRequest(saId(sa.inbound), 0)];
    if (sa.outboundInstalled) {
      this.byOutbound.delete(outKey(sa.outbound.spi, sa.outbound.dst));
      reqs.push(deleteSaRequest(saId(sa.outbound), 0));
    }
    this.send(reqs);
    this.releaseGroup(sa.group);
  }

  /** The peer moved (NAT mapping change): the outbound SA is put in again towards the new address. */
  update(spiIn: number, remote: Endpoint): void {
    const sa = this.sas.get(spiIn);
    if (!sa || (sa.spec.remote.address === remote.address && sa.spec.remote.port === remote.port)) return;
    // Only what we send moves: the inbound SA (and its anti-replay window) stays as it is.
    const to = ipBytes(remote.address);
    if (to.length !== sa.outbound.dst.length) return; // a peer does not change family under one SA
    const reqs: Buffer[] = [];
    if (sa.outboundInstalled) {
      this.byOutbound.delete(outKey(sa.outbound.spi, sa.outbound.dst));
      reqs.push(deleteSaRequest(saId(sa.outbound), 0));
    }
    sa.spec = { ...sa.spec, remote };
    sa.outbound = {
      ...sa.outbound,
      dst: to,
      sel: sa.outbound.sel && sa.spec.mode === 'transport' ? { ...sa.outbound.sel, dst: to } : sa.outbound.sel,
      encap: sa.outbound.encap ? { ...sa.outbound.encap, dport: remote.port } : undefined,
    };
    // A tunnel's templates name the peer: its group's policies follow it.
    const g = this.groups.get(sa.group);
    if (g && sa.spec.mode === 'tunnel')
      for (const p of g.policies)
        for (const t of p.tmpls) {
          if (p.dir === 'out') t.dst = to;
          else t.src = to;
          if (this.held.get(selectorKey(p.dir, p.sel))?.at(-1) === sa.group) reqs.push(policyRequest(p, 0));
        }
    this.send(reqs);
    if (sa.outboundInstalled) {
      sa.outboundInstalled = false;
      this.installOutbound(sa);
    }
    this.log('SA follows the peer', { spiIn: hex8(spiIn), remote: remote.address, port: remote.port });
  }

  /** The kernel's own counters of both SAs. */
  counters(spiIn: number): { bytesIn: number; bytesOut: number; packetsIn: number; packetsOut: number } | undefined {
    const sa = this.sas.get(spiIn);
    if (!sa) return undefined;
    const i = this.read(sa.inbound);
    const o = sa.outboundInstalled ? this.read(sa.outbound) : undefined;
    return {
      bytesIn: Number(i?.bytes ?? 0n),
      packetsIn: Number(i?.packets ?? 0n),
      bytesOut: Number(o?.bytes ?? 0n),
      packetsOut: Number(o?.packets ?? 0n),
    };
  }

  /** One SA as the kernel holds it now (counters), or undefined when it is not there. */
  private read(x: XfrmSa): XfrmSaInfo | undefined {
    try {
      const [m] = splitMessages(xfrmQuery(getSaRequest(saId(x), this.seq++)));
      return m && m.type === XFRM_MSG.NEWSA ? parseSaInfo(m.body) : undefined;
    } catch {
      return undefined;
    }
  }

  // ---- the policy's filters ---------------------------------------------------------------------

  /**
   * The policy's exemptions and negotiating filters as SPD entries: what changed goes in, what is
   * gone leaves. Exemptions are consulted first (they come first in the filter order), then the SAs'
   * own policies, then the trap policies in the filters' order.
   */
  setFilters(filters: readonly Filter[], families: readonly (4 | 6)[]): { policies: number; failed: number } {
    const next = new Map<string, XfrmPolicy>();
    const add = (p: XfrmPolicy) => {
      const k = selectorKey(p.dir, p.sel);
      if (!next.has(k)) next.set(k, p);
    };
    // An exemption matters only where a negotiating filter could catch its traffic (else the kernel
    // passes it anyway): of a family some such filter has, forwarding only when a tunnel rule exists.
    // Every SPD entry is one more comparison per packet.
    const negotiating = filters.filter((f) => f.kind === 'negotiate');
    const negotiatedFamilies = new Set(negotiating.flatMap((f) => filterSelectors(f, families).map((x) => x.family)));
    const forwarding = negotiating.some((f) => f.rule?.Mode === 'Tunnel');
    const exemptDirs = forwarding ? (['out', 'in', 'fwd'] as const) : (['out', 'in'] as const);
    // Neighbor discovery always passes (as in the fail-closed table): without it IPv6 reaches nobody.
    if (negotiatedFamilies.has(6))
      for (const type of [133, 134, 135, 136, 137])
        for (const dir of exemptDirs)
          add({
            dir,
            sel: {
              family: 6,
              src: Buffer.alloc(16),
              srcPrefix: 0,
              dst: Buffer.alloc(16),
              dstPrefix: 0,
              proto: 58,
              sport: type,
              sportMask: 0xffff,
              dport: 0,
              dportMask: 0,
            },
            priority: PRIO_EXEMPT,
            action: 'allow',
            tmpls: [],
          });
    for (const f of filters) {
      if (f.kind === 'ike') continue; // IKE's sockets bypass the SPD themselves
      for (const sel of filterSelectors(f, families)) {
        if (f.kind !== 'negotiate') {
          if (!negotiatedFamilies.has(sel.family)) continue;
          for (const dir of exemptDirs)
            add({
              dir,
              sel: dir === 'out' ? sel : reverse(sel),
              priority: PRIO_EXEMPT + f.rank,
              action: 'allow',
              tmpls: [],
            });
          continue;
        }
        const tunnel = f.rule?.Mode === 'Tunnel';
        const endpoints = tunnel ? tunnelEndpoints(f) : undefined;
        if (tunnel && !endpoints) {
          this.log('tunnel rule without literal tunnel endpoints of its family: its traffic is blocked', {
            rule: f.label,
          });
        }
        // Request outbound: an optional template, always of transport mode — recent kernels refuse an
        // optional tunnel template in an outbound policy, and it only has to ask for an SA (the SA's own
        // tunnel policy carries the traffic once there is one).
        const tmpl = (security: string, dir: 'out' | 'in', src?: Buffer, dst?: Buffer): XfrmTemplate[] => {
          if (security === 'None') return [];
          const optional = security === 'Request';
          const asTunnel = tunnel && !(optional && dir === 'out');
          return [
            {
              proto: 'esp',
              mode: asTunnel ? 'tunnel' : 'transport',
              family: asTunnel ? (endpoints?.family ?? sel.family) : sel.family,
              reqid: 0,
              optional,
              ...(asTunnel ? { src, dst } : {}),
            },
          ];
        };
        const priority = PRIO_TRAP + f.rank;
        const action = tunnel && !endpoints ? 'block' : 'allow';
        if (f.outbound !== 'None')
          add({
            dir: 'out',
            sel,
            priority,
            action,
            tmpls: action === 'block' ? [] : tmpl(f.outbound, 'out', endpoints?.local, endpoints?.remote),
          });
        if (f.inbound !== 'None') {
          const t = action === 'block' ? [] : tmpl(f.inbound, 'in', endpoints?.remote, endpoints?.local);
          add({ dir: 'in', sel: reverse(sel), priority, action, tmpls: t });
          if (tunnel) add({ dir: 'fwd', sel: reverse(sel), priority, action, tmpls: t });
        }
      }
    }
    // New and changed entries first, then the ones gone: a selector never goes unguarded in between.
    // Keys an SA's policy holds keep it; the filter policy is only recorded (it returns with the SA's end).
    const adds: [string, XfrmPolicy][] = [];
    for (const [k, p] of next) {
      const prev = this.filterPolicies.get(k);
      if (this.held.has(k)) continue;
      if (!prev || policyRequest(prev, 0).compare(policyRequest(p, 0)) !== 0) adds.push([k, p]);
    }
    const answers = this.send(adds.map(([, p]) => policyRequest(p, 0)));
    let failed = 0;
    answers.forEach((e, i) => {
      if (e === 0) return;
      failed++;
      // Not taken: not recorded, so the next policy change tries it again.
      const [k] = adds[i] as [string, XfrmPolicy];
      const prev = this.filterPolicies.get(k);
      if (prev) next.set(k, prev);
      else next.delete(k);
      this.log('kernel IPsec policy refused', { entry: k, reason: errnoName(e) });
    });
    const dels: Buffer[] = [];
    for (const [k, p] of this.filterPolicies)
      if (!next.has(k) && !this.held.has(k)) dels.push(deletePolicyRequest(p, 0));
    failed += this.send(dels).filter((e) => e !== 0 && e !== ENOENT).length;
    this.filterPolicies = next;
    return { policies: next.size, failed };
  }

  // ---- the kernel's events ----------------------------------------------------------------------

  private readMonitor(): void {
    const m = this.monitor;
    if (!m) return;
    const b = this.batch;
    for (;;) {
      let n: number;
      try {
        n = m.recv(b);
      } catch (err) {
        // ENOBUFS: events were lost; acquires come again for traffic still waiting, expiries are
        // caught by the keying module's own lifetimes.
        this.log('kernel IPsec events lost', { reason: (err as Error).message });
        return;
      }
      if (n === 0) return;
      for (let i = 0; i < n; i++) {
        const len = b.lengths[i] as number;
        if (len <= 0) continue;
        try {
          for (const msg of splitMessages(b.buf.subarray(i * b.slot, i * b.slot + len))) this.event(msg.type, msg.body);
        } catch (err) {
          this.log('kernel IPsec event not understood', { reason: (err as Error).message });
        }
      }
    }
  }

  /**
   * Anyone else's change to the kernel's IPsec state is undone or acted on (as the fail-closed table's
   * keeper does for nftables): a policy of ours deleted or flushed (`ip xfrm policy flush`, a
   * firewall manager) goes back at once; an SA of ours gone is a hard expiry for its keying module,
   * which negotiates a new one on the next packet instead of keeping a child SA nobody can use.
   */
  private foreign(type: number, body: Buffer): void {
    if (type === XFRM_MSG.DELPOLICY || type === XFRM_MSG.FLUSHPOLICY) {
      clearTimeout(this.spdCheck);
      this.spdCheck = setTimeout(() => this.restorePolicies(), 50);
      this.spdCheck.unref();
      return;
    }
    const gone: number[] = [];
    if (type === XFRM_MSG.FLUSHSA) gone.push(...this.sas.keys());
    else if (type === XFRM_MSG.DELSA) {
      const id = parseSaId(body);
      const spiIn = this.spiInOf(id.spi, id.dst);
      if (spiIn !== undefined && this.sas.has(spiIn)) gone.push(spiIn); // (our own deletes left the table first)
    }
    for (const spiIn of gone) {
      this.log('kernel SA removed by someone else', { spiIn: hex8(spiIn) });
      this.delete(spiIn);
      this.events.expire?.(spiIn, true);
    }
  }

  private spdCheck?: NodeJS.Timeout;

  /** Puts back every SPD entry of ours that is not in the kernel (one dump, one batch). */
  private restorePolicies(): void {
    if (this.closed) return;
    const present = new Set<string>();
    for (const m of splitMessages(xfrmQuery(dumpPoliciesRequest(this.seq++)))) {
      if (m.type !== XFRM_MSG.NEWPOLICY) continue;
      const p = tolerant(() => parsePolicyInfo(m.body));
      if (p && inBand(p.priority)) present.add(selectorKey(p.dir, p.sel));
    }
    const wanted = new Map<string, XfrmPolicy>();
    for (const [k, p] of this.filterPolicies) wanted.set(k, p);
    for (const k of this.held.keys()) {
      const top = this.holderPolicy(k);
      if (top) wanted.set(k, top);
    }
    const missing = [...wanted].filter(([k]) => !present.has(k)).map(([, p]) => p);
    if (missing.length === 0) return;
    const failed = this.send(missing.map((p) => policyRequest(p, 0))).filter((e) => e !== 0).length;
    this.log('kernel IPsec policies removed by someone else: restored', { restored: missing.length - failed, failed });
  }

  private event(type: number, body: Buffer): void {
    if (
      type === XFRM_MSG.DELPOLICY ||
      type === XFRM_MSG.FLUSHPOLICY ||
      type === XFRM_MSG.DELSA ||
      type === XFRM_MSG.FLUSHSA
    ) {
      this.foreign(type, body);
      return;
    }
    if (type === XFRM_MSG.ACQUIRE) {
      const a = parseAcquire(body);
      if (!inBand(a.policy.priority)) return; // somebody else's policy
      const s = a.sel;
      const flow: Flow = {
        direction: 'Outbound',
        local: readIp(s.src, 0, s.family),
        remote: readIp(s.dst, 0, s.family),
        protocol: s.proto,
        // (ICMP's type and code sit in the port fields: no ports. A source port 0: not chosen yet, a connect.)
        localPort: !isIcmp(s.proto) && s.sportMask && s.sport ? s.sport : undefined,
        remotePort: !isIcmp(s.proto) && s.dportMask ? s.dport : undefined,
      };
      this.log('kernel acquire', { local: flow.local, remote: flow.remote, protocol: flow.protocol });
      this.events.acquire?.(flow);
      return;
    }
    if (type === XFRM_MSG.EXPIRE) {
      const { sa, hard } = parseExpire(body);
      if (!ourReqid(sa.reqid)) return;
      const spiIn = this.spiInOf(sa.spi, sa.dst);
      const entry = spiIn === undefined ? undefined : this.sas.get(spiIn);
      if (spiIn === undefined || !entry) return;
      if (!hard && entry.softReported) return;
      entry.softReported = true;
      this.log('kernel SA lifetime', { spiIn: hex8(spiIn), hard });
      if (hard) this.delete(spiIn);
      this.events.expire?.(spiIn, hard);
    }
  }

  /**
   * Stops: the SAs and their policies leave the kernel (their keys die with this process); the
   * filter policies stay — a Require rule keeps dropping cleartext while no daemon runs.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.inboundWatch);
    clearTimeout(this.spdCheck);
    for (const spi of [...this.sas.keys()]) this.delete(spi);
    this.monitor?.close();
    for (const { s500, s4500 } of this.sockets.values()) {
      s500.close();
      s4500.close();
    }
    this.sockets.clear();
  }
}

const hex8 = (spi: number): string => spi.toString(16).padStart(8, '0');

/** What names an SA in the kernel: destination, SPI, protocol. */
const saId = (x: XfrmSa): XfrmSaId => ({ family: x.family, dst: x.dst, spi: x.spi, proto: x.proto });

/** A parse that may fail on an entry written by someone else (undefined then). */
function tolerant<T>(parse: () => T): T | undefined {
  try {
    return parse();
  } catch (err) {
    if (err instanceof XfrmCodecError) return undefined;
    throw err;
  }
}
const outKey = (spi: number, dst: Uint8Array): string => `${spi} ${Buffer.from(dst).toString('hex')}`;
const tsKey = (tss: readonly TrafficSelector[]): string =>
  tss
    .map((t) => `${t.ipProtocol}:${t.start.toString('hex')}-${t.end.toString('hex')}:${t.startPort}-${t.endPort}`)
    .join(',');

/** A filter's address/protocol/port space as selectors of the outbound direction (local → remote). */
function filterSelectors(f: Filter, families: readonly (4 | 6)[]): XfrmSelector[] {
  const ts = (ranges: Filter['local'], ports: [number, number][] | undefined): TrafficSelector[] => {
    const rs = ranges.length > 0 ? ranges : families.map((fam) => (fam === 4 ? ANY_V4 : ANY_V6));
    const ps = ports && ports.length > 0 ? ports : [[0, 65535] as [number, number]];
    return rs.flatMap((r) =>
      ps.map(([a, b]) => ({
        type: r.family === 4 ? 7 : 8,
        ipProtocol: f.protocol ?? 0,
        startPort: a,
        endPort: b,
        start: boundBytes(r.lo, r.family),
        end: boundBytes(r.hi, r.family),
      })),
    );
  };
  const sels = selectorsFor(ts(f.local, f.localPorts), ts(f.remote, f.remotePorts));
  if (!f.icmpTypes || f.icmpTypes.length === 0) return sels;
  // ICMP: the kernel puts the message type in the source port of the flow.
  return sels.flatMap((s) => (f.icmpTypes ?? []).map((t) => ({ ...s, sport: t, sportMask: 0xffff })));
}

/** A tunnel rule's outer addresses: the first literal address of each end, of one family. */
function tunnelEndpoints(f: Filter): { local: Buffer; remote: Buffer; family: 4 | 6 } | undefined {
  for (const l of f.rule?.LocalTunnelEndpoint ?? [])
    for (const r of f.rule?.RemoteTunnelEndpoint ?? []) {
      if (isIP(l) === 0 || isIP(l) !== isIP(r)) continue;
      return { local: ipBytes(l), remote: ipBytes(r), family: isIP(l) === 4 ? 4 : 6 };
    }
  return undefined;
}
