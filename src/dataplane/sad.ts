/**
 * The security association database of the userspace data plane: inbound SAs by SPI, outbound
 * SAs in a short list searched by traffic selectors (newest first, so a rekeyed SA takes over
 * make-before-break, once it is active). Child SA specs become ESP/AH contexts here.
 */
import { AhInbound, AhOutbound } from '../esp/ah.ts';
import { ESP_INTEG, EspInbound, EspOutbound } from '../esp/esp.ts';
import { writeIp } from '../io/addr.ts';
import { kept } from '../io/kept.ts';
import { EspCbcBatch, EspGcmBatch, type EspOpener, type EspSealer } from '../io/native.ts';
import type { ChildSaSpec, Endpoint, TrafficSelector } from '../sa/spec.ts';
import { TsEspOpener, TsEspSealer } from './batch.ts';
import { type IpInfo, packetMatches } from './ip.ts';
import type { LocalEndpoint } from './device.ts';

/** One child SA at run time in the data plane: its contexts, counters' owners, lifetime and activity. */
export interface SaEntry {
  mode: 'tunnel' | 'transport';
  /** The peer's outer endpoint (it follows the peer's NAT mapping), and its address as octets. */
  remote: Endpoint;
  /** Made on first use (peerOctets): an SA that carries no traffic keeps none. */
  remoteBytes?: Buffer;
  udp: boolean;
  /** Our outer address's sockets (the SA's local endpoint; set by the data plane when it installs). */
  local?: LocalEndpoint;
  localTs: TrafficSelector[];
  remoteTs: TrafficSelector[];
  out: EspOutbound | AhOutbound;
  in: EspInbound | AhInbound;
  /** An AH SA (RFC 4302): `out`/`in` are AH contexts, sent with our own IPv4 header. */
  ah: boolean;
  /**
   * ESP's batch contexts, through which every ESP packet goes: the addon's (AES-GCM, AES-CBC with
   * HMAC-SHA1/SHA2), or the TypeScript ESP of `out`/`in` behind the same interface. None for AH.
   */
  batch?: { seal: EspSealer; open: EspOpener };
  /** Outbound traffic may use it (a rekey responder's new SA waits for the initiator's traffic). */
  outboundActive: boolean;
  installedAt: number;
  /** Installation order: among SAs matching a packet, the newest (highest) protects it. */
  order: number;
  /** Byte lifetime in KiB (0: none) and whether soft expiry was reported. */
  maxKilobytes: number;
  softSent: boolean;
  /** When activity was last reported up (ms since epoch). */
  lastActivity: number;
}

/**
 * The peer's address of SA `e` as octets (what each sent packet's address is copied from), made on
 * first use in a slab of kept bytes (no buffer of its own per SA).
 */
export function peerOctets(e: SaEntry): Buffer {
  if (!e.remoteBytes) {
    const b = kept(Buffer.alloc(e.remote.address.includes(':') ? 16 : 4));
    writeIp(e.remote.address, b);
    e.remoteBytes = b;
  }
  return e.remoteBytes;
}

/**
 * ESP contexts for both directions of a child SA; with `countersOnly` they keep sequence numbers,
 * the replay window and counters but no keys (the addon's batch contexts carry the SA).
 */
export function espFor(
  spec: ChildSaSpec,
  replayWindow = 1024,
  countersOnly = false,
): { out: EspOutbound; in: EspInbound } {
  const { cipher, integrity: integ, esn } = spec;
  if (spec.protocol !== 'esp' || !cipher) throw new RangeError('an AH SA has no ESP contexts');
  if (cipher !== 'aes-gcm-16' && !integ) throw new RangeError('child SA without a supported integrity algorithm');
  const common = { cipher, integ, esn, countersOnly } as const;
  const o = spec.outbound;
  const i = spec.inbound;
  return {
    out: new EspOutbound({ spi: o.spi, ...common, encrKey: o.encrKey, integKey: o.integKey }),
    in: new EspInbound({ spi: i.spi, ...common, encrKey: i.encrKey, integKey: i.integKey, replayWindow }),
  };
}

/**
 * The addon's batched contexts for a child SA: AES-GCM-16, or AES-CBC with an HMAC-SHA1/SHA2
 * integrity (undefined for other suites, or an addon without them: the TypeScript path carries it).
 */
function nativeEsp(spec: ChildSaSpec): SaEntry['batch'] {
  const { cipher, integrity, esn, outbound: o, inbound: i } = spec;
  try {
    if (cipher === 'aes-gcm-16') {
      const split = (key: Buffer) => [key.subarray(0, key.length - 4), key.subarray(key.length - 4)] as const;
      const [ko, so] = split(o.encrKey);
      const [ki, si] = split(i.encrKey);
      return {
        seal: new EspGcmBatch(ko, so, { esn, direction: 'seal' }),
        open: new EspGcmBatch(ki, si, { esn, direction: 'open' }),
      };
    }
    if (cipher === 'aes-cbc' && integrity) {
      const { hash: digest, icv } = ESP_INTEG[integrity];
      const hmac = { digest, icv, esn };
      return {
        seal: new EspCbcBatch(o.encrKey, o.integKey, { ...hmac, direction: 'seal' }),
        open: new EspCbcBatch(i.encrKey, i.integKey, { ...hmac, direction: 'open' }),
      };
    }
  } catch {
    // an addon without this suite: the TypeScript path carries the SA
  }
  return undefined;
}

/** AH contexts for both directions of an AH child SA. */
export function ahFor(spec: ChildSaSpec, replayWindow = 1024): { out: AhOutbound; in: AhInbound } {
  const { integrity: integ, esn } = spec;
  if (!integ) throw new RangeError('AH SA without a supported integrity algorithm');
  return {
    out: new AhOutbound({ spi: spec.outbound.spi, integ, key: spec.outbound.integKey, esn }),
    in: new AhInbound({ spi: spec.inbound.spi, integ, key: spec.inbound.integKey, esn, replayWindow }),
  };
}

/**
 * The index key of a single remote address: IPv4 as a number (no allocation per packet), IPv6 as
 * its 16 octets in a latin1 string.
 */
function hostKey(bytes: Buffer, off: number, family: 4 | 6): number | string {
  return family === 4 ? bytes.readUInt32BE(off) : bytes.toString('latin1', off, off + 16);
}

export class Sad {
  private readonly bySpi = new Map<number, SaEntry>();
  /** Outbound SAs, newest first: by single remote host, and the rest (ranges). */
  private readonly byRemoteHost = new Map<number | string, SaEntry[]>();
  private ranged: SaEntry[] = [];
  private installed = 0;

  install(spec: ChildSaSpec): SaEntry {
    const ah = spec.protocol === 'ah';
    if (this.bySpi.has(spec.inbound.spi)) throw new RangeError(`inbound SPI ${spec.inbound.spi} is in use`);
    let batch: SaEntry['batch'];
    let ctx: { out: EspOutbound | AhOutbound; in: EspInbound | AhInbound };
    if (ah) ctx = ahFor(spec);
    else {
      batch = nativeEsp(spec);
      const esp = espFor(spec, 1024, batch !== undefined);
      ctx = esp;
      batch ??= { seal: new TsEspSealer(esp.out), open: new TsEspOpener(esp.in) };
    }
    const e: SaEntry = {
      mode: spec.mode,
      remote: { ...spec.remote },
      udp: spec.udpEncapsulation,
      localTs: spec.localTs,
      remoteTs: spec.remoteTs,
      out: ctx.out,
      in: ctx.in,
      ah,
      batch,
      outboundActive: spec.outboundActive ?? true,
      installedAt: Date.now(),
      order: ++this.installed,
      maxKilobytes: spec.maxKilobytes ?? 0,
      softSent: false,
      lastActivity: 0,
    };
    this.bySpi.set(ctx.in.spi, e);
    const hosts = Sad.remoteHosts(e);
    if (hosts) for (const k of hosts) this.byRemoteHost.set(k, [e, ...(this.byRemoteHost.get(k) ?? [])]);
    else this.ranged.unshift(e);
    return e;
  }

  /** The index keys of an SA whose remote selectors are all single addresses (else undefined). */
  private static remoteHosts(e: SaEntry): (number | string)[] | undefined {
    const keys: (number | string)[] = [];
    for (const t of e.remoteTs) {
      if (!t.start.equals(t.end) || (t.start.length !== 4 && t.start.length !== 16)) return undefined;
      keys.push(hostKey(t.start, 0, t.start.length === 4 ? 4 : 6));
    }
    return keys.length > 0 ? keys : undefined;
  }

  remove(spi: number): SaEntry | undefined {
    const e = this.bySpi.get(spi);
    if (!e) return undefined;
    this.bySpi.delete(spi);
    const hosts = Sad.remoteHosts(e);
    if (hosts)
      for (const k of hosts) {
        const list = (this.byRemoteHost.get(k) ?? []).filter((x) => x !== e);
        if (list.length > 0) this.byRemoteHost.set(k, list);
        else this.byRemoteHost.delete(k);
      }
    else this.ranged = this.ranged.filter((x) => x !== e);
    e.batch?.seal.close();
    e.batch?.open.close();
    return e;
  }

  update(spi: number, remote: Endpoint): void {
    const e = this.bySpi.get(spi);
    if (!e) return;
    e.remote = { ...remote };
    e.remoteBytes = undefined; // made again from the new address on first use
  }

  /**
   * Outbound traffic may use the SA with inbound SPI `spi` (installed inactive): the peer has it too.
   * True when this changed something.
   */
  activate(spi: number): boolean {
    const e = this.bySpi.get(spi);
    if (!e || e.outboundActive) return false;
    e.outboundActive = true;
    return true;
  }

  inbound(spi: number): SaEntry | undefined {
    return this.bySpi.get(spi);
  }

  /** The SA protecting an outbound packet: its source in our selectors, its destination in the peer's. */
  outboundFor(packet: Buffer, ip: IpInfo): SaEntry | undefined {
    // The newest match among the SAs for this destination host and those with ranges: a packet
    // costs the SAs of its peer, not every SA held.
    let found: SaEntry | undefined;
    const forHost = this.byRemoteHost.get(hostKey(packet, ip.dst, ip.family));
    if (forHost)
      for (const e of forHost)
        if (e.outboundActive && packetMatches(packet, ip, e.localTs, e.remoteTs)) {
          found = e;
          break;
        }
    for (const e of this.ranged) {
      if (found && e.order < found.order) break;
      if (e.outboundActive && packetMatches(packet, ip, e.localTs, e.remoteTs)) {
        found = e;
        break;
      }
    }
    return found;
  }

  get size(): number {
    return this.bySpi.size;
  }

  /** Every SA, newest first. */
  entries(): SaEntry[] {
    return [...this.bySpi.values()].sort((x, y) => y.order - x.order);
  }
}
