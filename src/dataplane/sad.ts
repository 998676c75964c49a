/**
 * The security association database of the userspace data plane: inbound SAs by SPI, outbound
 * SAs in a short list searched by traffic selectors (newest first, so a rekeyed SA takes over
 * make-before-break). Negotiated child SAs become ESP contexts here.
 */
import { AhInbound, AhOutbound } from '../esp/ah.ts';
import { ESP_INTEG, EspInbound, type EspInteg, EspOutbound } from '../esp/esp.ts';
import type { InstalledChild } from '../ike/dataplane.ts';
import { type EspBatch, EspCbcBatch, EspGcmBatch } from '../io/native.ts';
import type { Endpoint } from '../ike/sa.ts';
import { type ChildSa, localTs, remoteTs } from '../ike/tasks/child-create.ts';
import { transformOf } from '../ike/proposals.ts';
import type { TrafficSelector } from '../ike/wire/codec.ts';
import { EncrId, EsnId, IntegId, ProtocolId, TransformType } from '../ike/wire/constants.ts';
import { type IpInfo, packetMatches } from './ip.ts';

export interface SaEntry {
  child: ChildSa;
  mode: 'tunnel' | 'transport';
  remote: Endpoint;
  udp: boolean;
  localTs: TrafficSelector[];
  remoteTs: TrafficSelector[];
  out: EspOutbound | AhOutbound;
  in: EspInbound | AhInbound;
  /** An AH SA (RFC 4302): `out`/`in` are AH contexts, sent with our own IPv4 header. */
  ah: boolean;
  /** Batched ESP in the addon (same packets as `out`/`in`): AES-GCM, or AES-CBC with HMAC-SHA1/SHA2. */
  native?: { seal: EspBatch; open: EspBatch };
  installedAt: number;
  /** Installation order: among SAs matching a packet, the newest (highest) protects it. */
  order: number;
}

const INTEG: Partial<Record<IntegId, EspInteg>> = {
  [IntegId.HMAC_SHA1_96]: 'sha1-96',
  [IntegId.HMAC_SHA2_256_128]: 'sha256-128',
  [IntegId.HMAC_SHA2_384_192]: 'sha384-192',
  [IntegId.HMAC_SHA2_512_256]: 'sha512-256',
};

/** What the TypeScript and the addon contexts of a child SA are both made from: suite and keys by direction. */
function childSuite(c: ChildSa) {
  const integ = transformOf(c.proposal, TransformType.INTEG);
  const k = c.keys;
  const initiators = { e: k.encrI, a: k.integI };
  const responders = { e: k.encrR, a: k.integR };
  return {
    encr: transformOf(c.proposal, TransformType.ENCR)?.id,
    integ: integ ? INTEG[integ.id as IntegId] : undefined,
    esn: transformOf(c.proposal, TransformType.ESN)?.id === EsnId.YES,
    mine: c.initiator ? initiators : responders,
    theirs: c.initiator ? responders : initiators,
  };
}

/** ESP contexts for both directions of a negotiated child SA. */
export function espFor(sa: InstalledChild, replayWindow = 1024): { out: EspOutbound; in: EspInbound } {
  const c = sa.child;
  if (c.proposal.protocol === ProtocolId.AH) throw new RangeError('an AH SA has no ESP contexts');
  const { encr, integ, esn, mine, theirs } = childSuite(c);
  const cipher = encr === EncrId.AES_GCM_16 ? 'aes-gcm-16' : encr === EncrId.AES_CBC ? 'aes-cbc' : 'null';
  if (encr !== EncrId.AES_GCM_16 && !integ) throw new RangeError('child SA without a supported integrity algorithm');
  const common = { cipher, integ, esn } as const;
  return {
    out: new EspOutbound({ spi: c.spiOut.readUInt32BE(0), ...common, encrKey: mine.e, integKey: mine.a }),
    in: new EspInbound({
      spi: c.spiIn.readUInt32BE(0),
      ...common,
      encrKey: theirs.e,
      integKey: theirs.a,
      replayWindow,
    }),
  };
}

/**
 * The addon's batched contexts for a child SA: AES-GCM-16, or AES-CBC with an HMAC-SHA1/SHA2
 * integrity (undefined for other suites, or an addon without them: the TypeScript path carries it).
 */
function nativeEsp(sa: InstalledChild): SaEntry['native'] {
  const { encr, integ, esn, mine, theirs } = childSuite(sa.child);
  try {
    if (encr === EncrId.AES_GCM_16) {
      const split = (key: Buffer) => [key.subarray(0, key.length - 4), key.subarray(key.length - 4)] as const;
      const [ko, so] = split(mine.e);
      const [ki, si] = split(theirs.e);
      return { seal: new EspGcmBatch(ko, so, esn, true), open: new EspGcmBatch(ki, si, esn, false) };
    }
    if (encr === EncrId.AES_CBC && integ) {
      const { hash: digest, icv } = ESP_INTEG[integ];
      return {
        seal: new EspCbcBatch(mine.e, mine.a, digest, icv, esn, true),
        open: new EspCbcBatch(theirs.e, theirs.a, digest, icv, esn, false),
      };
    }
  } catch {
    // an addon without this suite: the TypeScript path carries the SA
  }
  return undefined;
}

/** AH contexts for both directions of an AH child SA. */
export function ahFor(sa: InstalledChild, replayWindow = 1024): { out: AhOutbound; in: AhInbound } {
  const c = sa.child;
  const { integ, esn, mine, theirs } = childSuite(c);
  if (!integ) throw new RangeError('AH SA without a supported integrity algorithm');
  return {
    out: new AhOutbound({ spi: c.spiOut.readUInt32BE(0), integ, key: mine.a, esn }),
    in: new AhInbound({ spi: c.spiIn.readUInt32BE(0), integ, key: theirs.a, esn, replayWindow }),
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

  install(sa: InstalledChild): SaEntry {
    const ah = sa.child.proposal.protocol === ProtocolId.AH;
    const esp = ah ? ahFor(sa) : espFor(sa);
    const native = ah ? undefined : nativeEsp(sa);
    const e: SaEntry = {
      child: sa.child,
      mode: sa.child.mode,
      remote: { ...sa.remote },
      udp: sa.udpEncapsulation,
      localTs: localTs(sa.child),
      remoteTs: remoteTs(sa.child),
      out: esp.out,
      in: esp.in,
      ah,
      native,
      installedAt: Date.now(),
      order: ++this.installed,
    };
    this.bySpi.set(esp.in.spi, e);
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

  remove(spiIn: Buffer): SaEntry | undefined {
    const spi = spiIn.readUInt32BE(0);
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
    e.native?.seal.close();
    e.native?.open.close();
    return e;
  }

  update(spiIn: Buffer, remote: Endpoint): void {
    const e = this.bySpi.get(spiIn.readUInt32BE(0));
    if (e) e.remote = { ...remote };
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
        if (packetMatches(packet, ip, e.localTs, e.remoteTs)) {
          found = e;
          break;
        }
    for (const e of this.ranged) {
      if (found && e.order < found.order) break;
      if (packetMatches(packet, ip, e.localTs, e.remoteTs)) {
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
