/**
 * IKEv1 Quick Mode (RFC 2409 §5.5), both roles, three messages under the ISAKMP SA:
 *   1 I→R  HASH(1), SA, Ni [, KE] [, IDci, IDcr] [, NAT-OAi, NAT-OAr]
 *   2 R→I  HASH(2), SA, Nr [, KE] [, IDci, IDcr] [, RESPONDER-LIFETIME]
 *   3 I→R  HASH(3)
 * PFS with the quick mode set's group, ESP or AH, tunnel or transport (in UDP per RFC 3947 when
 * Main Mode found a NAT), selectors as ID payloads (single hosts, subnets, ranges; RFC 2407
 * §4.6.2), KEYMAT per direction. The child SA reaches the data plane exactly as IKEv2's does
 * (the shared ChildSa → ChildSaSpec), and is renewed before it expires (make-before-break).
 */
import { randomOctets } from '../crypto/random.ts';
import { kept } from '../../io/kept.ts';
import { isIPv4 } from 'node:net';
import { writeIp } from '../../io/addr.ts';
import { sameSelector, type TrafficSelector } from '../../sa/spec.ts';
import { ENCRS, INTEGS } from '../crypto/algorithms.ts';
import { KeyExchange } from '../crypto/ke.ts';
import { IkeError } from '../errors.ts';
import { transformOf } from '../proposals.ts';
import type { ChildSa } from '../tasks/child-create.ts';
import type { TimedChildEntry } from '../tasks/context.ts';
import type { Proposal } from '../wire/codec.ts';
import { EncrId, NotifyType as V2Notify, ProtocolId as V2Protocol, TransformType } from '../wire/constants.ts';
import {
  type Attribute,
  attrNumber,
  encodeV1Payloads,
  findAllV1,
  findV1,
  type V1Payload,
  type V1Proposal,
} from './codec.ts';
import {
  DOI_IPSEC,
  ExchangeType,
  IdType,
  LifeType,
  NotifyType,
  P2Attr,
  PayloadType,
  ProtocolId,
  SIT_IDENTITY_ONLY,
} from './constants.ts';
import { exchangeIv, hash1, hash2, hash3, keymat } from './crypto.ts';
import {
  type ChildLifetime,
  encapsulation,
  modeOfEncapsulation,
  phase2Proposals,
  readPhase2,
  selectPhase2,
} from './proposals.ts';
import { digestOf, type QuickExchange, Retransmission, type V1Session } from './session.ts';

const NONCE_BYTES = 32;

// ---- selectors as ID payloads ------------------------------------------------------------------

function prefixLength(start: Buffer, end: Buffer): number | undefined {
  let bits = 0;
  let tail = false;
  for (let i = 0; i < start.length; i++) {
    const x = (start[i] as number) ^ (end[i] as number);
    for (let b = 7; b >= 0; b--) {
      const differs = ((x >> b) & 1) === 1;
      if (!tail && !differs) {
        bits++;
        continue;
      }
      tail = true;
      // Below the prefix: start all zeros, end all ones.
      if (((start[i] as number) >> b) & 1 || !(((end[i] as number) >> b) & 1)) return undefined;
    }
  }
  return bits;
}

function mask(bits: number, bytes: number): Buffer {
  const m = Buffer.alloc(bytes);
  for (let i = 0; i < bits; i++) m[i >> 3] = (m[i >> 3] as number) | (0x80 >> (i & 7));
  return m;
}

/** Contiguous ones, then zeros. */
function isMask(m: Buffer): boolean {
  let zeros = false;
  for (const byte of m)
    for (let b = 7; b >= 0; b--) {
      const one = ((byte >> b) & 1) === 1;
      if (one && zeros) return false;
      if (!one) zeros = true;
    }
  return true;
}

/** A traffic selector as an ID payload: a host, a subnet, or a range; a single port or any. */
export function idOfSelector(ts: TrafficSelector): Extract<V1Payload, { type: PayloadType.ID }> {
  const v4 = ts.start.length === 4;
  let port = 0;
  if (ts.startPort === ts.endPort) port = ts.startPort;
  else if (!(ts.startPort === 0 && ts.endPort === 65535))
    throw new IkeError(`IKEv1 cannot carry the port range ${ts.startPort}-${ts.endPort}`, V2Notify.TS_UNACCEPTABLE);
  const base = { type: PayloadType.ID as const, protocol: ts.ipProtocol, port };
  if (ts.start.equals(ts.end)) return { ...base, idType: v4 ? IdType.IPV4_ADDR : IdType.IPV6_ADDR, data: ts.start };
  const bits = prefixLength(ts.start, ts.end);
  if (bits !== undefined)
    return {
      ...base,
      idType: v4 ? IdType.IPV4_ADDR_SUBNET : IdType.IPV6_ADDR_SUBNET,
      data: Buffer.concat([ts.start, mask(bits, ts.start.length)]),
    };
  return {
    ...base,
    idType: v4 ? IdType.IPV4_ADDR_RANGE : IdType.IPV6_ADDR_RANGE,
    data: Buffer.concat([ts.start, ts.end]),
  };
}

/** An ID payload as a traffic selector; names (FQDN …) are not selectors. */
export function selectorOfId(id: Extract<V1Payload, { type: PayloadType.ID }>): TrafficSelector {
  const ports = id.port === 0 ? { startPort: 0, endPort: 65535 } : { startPort: id.port, endPort: id.port };
  const sel = (start: Buffer, end: Buffer): TrafficSelector => ({
    type: start.length === 4 ? 7 : 8,
    ipProtocol: id.protocol,
    ...ports,
    start: Buffer.from(start),
    end: Buffer.from(end),
  });
  const d = id.data;
  switch (id.idType) {
    case IdType.IPV4_ADDR:
    case IdType.IPV6_ADDR:
      if (d.length !== (id.idType === IdType.IPV4_ADDR ? 4 : 16)) break;
      return sel(d, d);
    case IdType.IPV4_ADDR_SUBNET:
    case IdType.IPV6_ADDR_SUBNET:
    case IdType.IPV4_ADDR_RANGE:
    case IdType.IPV6_ADDR_RANGE: {
      const n = id.idType === IdType.IPV4_ADDR_SUBNET || id.idType === IdType.IPV4_ADDR_RANGE ? 4 : 16;
      if (d.length !== 2 * n) break;
      const a = d.subarray(0, n);
      const b = d.subarray(n);
      if (id.idType === IdType.IPV4_ADDR_RANGE || id.idType === IdType.IPV6_ADDR_RANGE) {
        if (Buffer.compare(a, b) > 0) break;
        return sel(a, b);
      }
      if (!isMask(b)) break;
      const start = Buffer.alloc(n);
      const end = Buffer.alloc(n);
      for (let i = 0; i < n; i++) {
        start[i] = (a[i] as number) & (b[i] as number);
        end[i] = (start[i] as number) | (~(b[i] as number) & 0xff);
      }
      return sel(start, end);
    }
  }
  throw new IkeError(
    `Quick Mode ID of type ${id.idType} (${d.length} octets) is not a traffic selector`,
    V2Notify.TS_UNACCEPTABLE,
  );
}

const within = (inner: TrafficSelector, outer: TrafficSelector): boolean =>
  inner.start.length === outer.start.length &&
  (outer.ipProtocol === 0 || outer.ipProtocol === inner.ipProtocol) &&
  outer.startPort <= inner.startPort &&
  inner.endPort <= outer.endPort &&
  Buffer.compare(outer.start, inner.start) <= 0 &&
  Buffer.compare(inner.end, outer.end) <= 0;

function hostSelector(address: string): TrafficSelector {
  const b = Buffer.alloc(isIPv4(address) ? 4 : 16);
  writeIp(address, b);
  return { type: b.length === 4 ? 7 : 8, ipProtocol: 0, startPort: 0, endPort: 65535, start: b, end: b };
}

// ---- keys ----------------------------------------------------------------------------------------

/** Key material octets of a child SA proposal: encryption (with salt) and integrity. */
export function keySizes(p: Proposal): { encr: number; integ: number } {
  const e = transformOf(p, TransformType.ENCR);
  const i = transformOf(p, TransformType.INTEG);
  const alg = e && e.id !== EncrId.NULL ? ENCRS[e.id as keyof typeof ENCRS] : undefined;
  const encr = alg ? (e?.keyLength ?? 128) / 8 + alg.saltSize : 0;
  const integ = i ? (INTEGS[i.id as keyof typeof INTEGS]?.keySize ?? 0) : 0;
  return { encr, integ };
}

/** The child SA from the exchange's values: KEYMAT per direction, keys oriented as IKEv2's (I→R, R→I). */
function childOf(
  s: V1Session,
  o: {
    initiator: boolean;
    proposal: Proposal;
    mode: 'tunnel' | 'transport';
    spiIn: Buffer;
    spiOut: Buffer;
    ni: Buffer;
    nr: Buffer;
    tsi: TrafficSelector[];
    tsr: TrafficSelector[];
    pfsSecret?: Buffer;
    pfsGroup?: number;
  },
): ChildSa {
  const { encr, integ } = keySizes(o.proposal);
  const protocol = o.proposal.protocol === V2Protocol.AH ? ProtocolId.AH : ProtocolId.ESP;
  const km = (spi: Buffer) => keymat(s.suite, s.phase1.d, protocol, spi, o.ni, o.nr, encr + integ, o.pfsSecret);
  const inbound = km(o.spiIn);
  const outbound = km(o.spiOut);
  const split = (k: Buffer) => ({ encr: k.subarray(0, encr), integ: k.subarray(encr) });
  const ib = split(inbound);
  const ob = split(outbound);
  // I→R traffic is ours out when we initiated the exchange.
  const ir = o.initiator ? ob : ib;
  const ri = o.initiator ? ib : ob;
  return {
    mode: o.mode,
    spiIn: o.spiIn,
    spiOut: o.spiOut,
    proposal: o.proposal,
    tsi: o.tsi,
    tsr: o.tsr,
    keys: { encrI: ir.encr, integI: ir.integ, encrR: ri.encr, integR: ri.integ },
    encrKeyBytes: encr,
    integKeyBytes: integ,
    initiator: o.initiator,
    pfsGroup: o.pfsGroup,
  };
}

function restOf(payloads: readonly V1Payload[]): Buffer {
  return Buffer.concat(payloads.slice(1).map((p) => p.raw as Buffer));
}

function nattOa(s: V1Session, mode: 'tunnel' | 'transport'): V1Payload[] {
  if (mode !== 'transport' || !s.floated || s.natt === 'none') return [];
  const type = s.natt === 'rfc' ? PayloadType.NAT_OA : PayloadType.NAT_OA_DRAFT;
  const oa = (address: string): V1Payload => {
    const b = Buffer.alloc(isIPv4(address) ? 4 : 16);
    writeIp(address, b);
    return { type, idType: b.length === 4 ? IdType.IPV4_ADDR : IdType.IPV6_ADDR, address: b } as V1Payload;
  };
  return [oa(s.local.address), oa(s.remote.address)];
}

/** A RESPONDER-LIFETIME notify's attributes (RFC 2407 §4.6.3.1) folded into the lifetime. */
function responderLifetime(payloads: readonly V1Payload[], life: ChildLifetime): ChildLifetime {
  const n = findAllV1(payloads, PayloadType.N).find((x) => x.notify === NotifyType.RESPONDER_LIFETIME);
  if (!n) return life;
  const out = { ...life };
  let type: number | undefined;
  let o = 0;
  const d = n.data;
  while (o + 4 <= d.length) {
    const t = d.readUInt16BE(o);
    let a: Attribute;
    if (t & 0x8000) {
      a = { type: t & 0x7fff, value: d.readUInt16BE(o + 2) };
      o += 4;
    } else {
      const len = d.readUInt16BE(o + 2);
      if (o + 4 + len > d.length) break;
      a = { type: t, value: d.subarray(o + 4, o + 4 + len) };
      o += 4 + len;
    }
    const v = attrNumber(a) as number;
    if (a.type === P2Attr.LIFE_TYPE) type = v;
    else if (a.type === P2Attr.LIFE_DURATION) {
      if (type === LifeType.SECONDS) out.seconds = out.seconds ? Math.min(out.seconds, v) : v;
      if (type === LifeType.KILOBYTES) out.kilobytes = out.kilobytes ? Math.min(out.kilobytes, v) : v;
    }
  }
  return out;
}

function ourLifetime(s: V1Session): ChildLifetime {
  return { seconds: Math.round(s.lifetimes.childExpireMs / 1000), kilobytes: s.lifetimes.childKilobytes };
}

function saPayload(proposals: V1Proposal[]): V1Payload {
  return { type: PayloadType.SA, doi: DOI_IPSEC, situation: SIT_IDENTITY_ONLY, proposals };
}

// ---- initiator -----------------------------------------------------------------------------------

export interface QuickRequest {
  tsi: TrafficSelector[];
  tsr: TrafficSelector[];
}

/** Negotiates one child SA with the peer (Quick Mode as initiator); resolves once it is installed. */
export function initiateQuick(s: V1Session, req: QuickRequest): Promise<TimedChildEntry> {
  return new Promise((resolve, reject) => {
    const mid = randomOctets(4).readUInt32BE(0) & 0x7fffffff || 1;
    const mode = s.peer.mode;
    const spiIn = s.host.spis.allocate();
    const neutral = s.peer.espProposals(spiIn);
    const life = ourLifetime(s);
    const encaps = encapsulation(mode, s.floated ? s.natt : 'none');
    const proposals = phase2Proposals(neutral, spiIn, encaps, life);
    const fail = (err: Error) => {
      s.host.spis.release(spiIn);
      s.quick.delete(mid);
      s.childFailed(err, mid);
      reject(err);
    };
    if (proposals.length === 0) {
      fail(new IkeError('none of the quick mode proposals can be offered in IKEv1', V2Notify.NO_PROPOSAL_CHOSEN));
      return;
    }
    const group = transformOf(neutral[0] as Proposal, TransformType.KE)?.id;
    const ke = group === undefined ? undefined : KeyExchange.create(group);
    const ni = kept(randomOctets(NONCE_BYTES));
    // One selector each way: IKEv1 IDs carry one; the first is the flow's (config.ts narrows transport).
    const tsi = req.tsi[0] ?? hostSelector(s.local.address);
    const tsr = req.tsr[0] ?? hostSelector(s.remote.address);
    const rest: V1Payload[] = [saPayload(proposals), { type: PayloadType.NONCE, data: ni }];
    if (ke) rest.push({ type: PayloadType.KE, data: ke.publicValue });
    rest.push(idOfSelector(tsi), idOfSelector(tsr), ...nattOa(s, mode));
    const iv0 = exchangeIv(s.suite, s.iv as Buffer, mid);
    const m1 = s.protectHashed(ExchangeType.QUICK_MODE, mid, rest, (b) => hash1(s.suite, s.phase1.a, mid, b), iv0);
    const x: QuickExchange = {
      mid,
      initiator: true,
      spi: spiIn,
      iv: m1.iv,
      done: false,
      fail,
      receive: (payloads, raw) => {
        try {
          const hash = payloads[0];
          if (
            hash?.type !== PayloadType.HASH ||
            !hash.data.equals(hash2(s.suite, s.phase1.a, mid, ni, restOf(payloads)))
          ) {
            // A damaged or forged answer: ignored, the retransmission goes on.
            s.host.invalidPacket(
              s.remote.address,
              ExchangeType.QUICK_MODE,
              'Quick Mode message 2 with a wrong HASH(2)',
            );
            x.iv = m1.iv;
            return;
          }
          const notify = findV1(payloads, PayloadType.N);
          const sa = findV1(payloads, PayloadType.SA);
          if (!sa && notify)
            throw new IkeError(
              `the peer refused Quick Mode: ${NotifyType[notify.notify] ?? notify.notify}`,
              V2Notify.NO_PROPOSAL_CHOSEN,
              true,
            );
          const p = sa?.proposals.length === 1 ? sa.proposals[0] : undefined;
          const t = p?.transforms.length === 1 ? p.transforms[0] : undefined;
          const read = p && t ? readPhase2(p, t) : undefined;
          const sent = p && proposals.find((q) => q.number === p.number);
          const sentRead = sent?.transforms[0] && readPhase2(sent, sent.transforms[0]);
          if (
            !p ||
            !read ||
            !sentRead ||
            !sameNeutral(read.proposal, sentRead.proposal) ||
            read.encapsulation !== encaps
          )
            throw new IkeError(
              'the responder chose a Quick Mode proposal we did not offer',
              V2Notify.NO_PROPOSAL_CHOSEN,
            );
          if (p.spi.length !== 4)
            throw new IkeError('the responder chose an SPI that is not 4 octets', V2Notify.INVALID_SYNTAX);
          const nr = findV1(payloads, PayloadType.NONCE);
          if (!nr) throw new IkeError('Quick Mode message 2 without a nonce', V2Notify.INVALID_SYNTAX);
          const ids = findAllV1(payloads, PayloadType.ID);
          if (ids.length > 0) {
            const [ci, cr] = ids;
            // Transport mode through a NAT: the responder may name the hosts by the addresses it sees
            // (strongSwan puts the NAT's address in IDci); the SA still covers our own addresses.
            const natTransport = mode === 'transport' && (s.natLocal || s.natRemote);
            const fits = (id: typeof ci, sel: TrafficSelector) =>
              !!id && (sameId(id, idOfSelector(sel)) || (natTransport && sameHostShape(id, idOfSelector(sel))));
            if (ids.length !== 2 || !fits(ci, tsi) || !fits(cr, tsr))
              throw new IkeError('the responder changed the Quick Mode identities', V2Notify.TS_UNACCEPTABLE);
          }
          let pfsSecret: Buffer | undefined;
          if (ke) {
            const kr = findV1(payloads, PayloadType.KE);
            if (!kr)
              throw new IkeError('Quick Mode message 2 without KE although PFS was proposed', V2Notify.INVALID_SYNTAX);
            pfsSecret = ke.sharedSecret(kr.data);
          }
          const nrData = Buffer.from(nr.data);
          const m3 = s.protect(
            ExchangeType.QUICK_MODE,
            mid,
            [{ type: PayloadType.HASH, data: hash3(s.suite, s.phase1.a, mid, ni, nrData) }],
            x.iv,
          );
          x.retransmit?.stop();
          x.answered = { request: digestOf(raw), response: m3.raw };
          s.send(m3.raw);
          s.finishQuick(x);
          const child = childOf(s, {
            initiator: true,
            proposal: { ...sentRead.proposal, spi: Buffer.from(p.spi) },
            mode,
            spiIn,
            spiOut: Buffer.from(p.spi),
            ni,
            nr: nrData,
            tsi: [tsi],
            tsr: [tsr],
            pfsSecret,
            pfsGroup: ke ? group : undefined,
          });
          resolve(s.installChild(child, responderLifetime(payloads, life)));
        } catch (err) {
          x.retransmit?.stop();
          s.finishQuick(x);
          fail(err as Error);
        }
      },
    };
    s.quick.set(mid, x);
    x.retransmit = new Retransmission(s, m1.raw, s.host.timing.retransmits, (err) => {
      s.finishQuick(x);
      fail(err);
    });
  });
}

const sameNeutral = (a: Proposal, b: Proposal): boolean =>
  a.protocol === b.protocol &&
  a.transforms.length === b.transforms.length &&
  a.transforms.every((t) =>
    b.transforms.some((u) => u.type === t.type && u.id === t.id && u.keyLength === t.keyLength),
  );

type IdPayload = Extract<V1Payload, { type: PayloadType.ID }>;

const sameId = (a: IdPayload, b: IdPayload) =>
  a.idType === b.idType && a.protocol === b.protocol && a.port === b.port && a.data.equals(b.data);

/** Both name a single host (any address) with the same protocol and port. */
const sameHostShape = (a: IdPayload, b: IdPayload) =>
  a.idType === b.idType &&
  (a.idType === IdType.IPV4_ADDR || a.idType === IdType.IPV6_ADDR) &&
  a.protocol === b.protocol &&
  a.port === b.port;

// ---- responder -----------------------------------------------------------------------------------

/** The peer starts Quick Mode (message 1 decrypted): answer with message 2, install on message 3. */
export function respondQuick(s: V1Session, mid: number, payloads: V1Payload[], iv: Buffer, digest: string): void {
  const hash = payloads[0];
  if (hash?.type !== PayloadType.HASH || !hash.data.equals(hash1(s.suite, s.phase1.a, mid, restOf(payloads)))) {
    s.host.invalidPacket(s.remote.address, ExchangeType.QUICK_MODE, 'Quick Mode message 1 with a wrong HASH(1)');
    return;
  }
  s.lastInbound = Date.now();
  const x: QuickExchange = { mid, initiator: false, iv, done: false, fail: () => {}, receive: () => {} };
  s.quick.set(mid, x);
  let spiIn: Buffer | undefined;
  // The notification names the initiator's SPI from its first proposal (RFC 2408 §3.14), so it
  // knows which exchange failed.
  const offered = findV1(payloads, PayloadType.SA)?.proposals[0];
  const refuse = (err: IkeError, notify: NotifyType) => {
    if (spiIn) s.host.spis.release(spiIn);
    s.finishQuick(x);
    s.childFailed(err, mid);
    s.informational([
      {
        type: PayloadType.N,
        doi: DOI_IPSEC,
        protocol: offered?.spi.length === 4 ? offered.protocol : ProtocolId.ISAKMP,
        spi: offered?.spi.length === 4 ? Buffer.from(offered.spi) : Buffer.alloc(0),
        notify,
        data: Buffer.alloc(0),
      },
    ]);
  };
  try {
    const sa = findV1(payloads, PayloadType.SA);
    const ni = findV1(payloads, PayloadType.NONCE);
    if (!sa || !ni) throw new IkeError('Quick Mode message 1 without SA or nonce', V2Notify.INVALID_SYNTAX);
    const ids = findAllV1(payloads, PayloadType.ID);
    if (ids.length !== 0 && ids.length !== 2)
      throw new IkeError('Quick Mode message 1 with one identity', V2Notify.INVALID_SYNTAX);
    const [idci, idcr] = ids;
    const tsi = idci ? selectorOfId(idci) : hostSelector(s.remote.address);
    const tsr = idcr ? selectorOfId(idcr) : hostSelector(s.local.address);
    // The config is in the view of the side that started Phase 1: on an ISAKMP SA we initiated its
    // tsi is ours, and the peer may well start a Quick Mode on it (its rekey of a child SA).
    const [theirSide, ourSide] = s.role === 'initiator' ? [s.peer.tsr, s.peer.tsi] : [s.peer.tsi, s.peer.tsr];
    if (!theirSide.some((t) => within(tsi, t)) || !ourSide.some((t) => within(tsr, t))) {
      refuse(
        new IkeError('the proposed Quick Mode identities are outside the rule', V2Notify.TS_UNACCEPTABLE),
        NotifyType.INVALID_ID_INFORMATION,
      );
      return;
    }
    const mode = s.peer.mode;
    const want = encapsulation(mode, s.floated ? s.natt : 'none');
    const chosen = selectPhase2(sa.proposals, s.peer.espProposals(Buffer.alloc(4)), (e) => {
      const m = modeOfEncapsulation(e);
      return e === want || (m !== undefined && m.mode === mode && m.udp === s.floated);
    });
    if (!chosen) {
      refuse(
        new IkeError('no Quick Mode proposal in common', V2Notify.NO_PROPOSAL_CHOSEN),
        NotifyType.NO_PROPOSAL_CHOSEN,
      );
      return;
    }
    const group = transformOf(chosen.proposal, TransformType.KE)?.id;
    let ke: KeyExchange | undefined;
    let pfsSecret: Buffer | undefined;
    if (group !== undefined) {
      const ki = findV1(payloads, PayloadType.KE);
      if (!ki) throw new IkeError('PFS proposed without a KE payload', V2Notify.INVALID_SYNTAX);
      ke = KeyExchange.create(group);
      pfsSecret = ke.sharedSecret(ki.data);
    }
    spiIn = s.host.spis.allocate();
    const nr = kept(randomOctets(NONCE_BYTES));
    const ours = ourLifetime(s);
    const life: ChildLifetime = {
      seconds: chosen.life.seconds ? Math.min(chosen.life.seconds, ours.seconds) : ours.seconds,
      kilobytes: chosen.life.kilobytes ? Math.min(chosen.life.kilobytes, ours.kilobytes ?? Infinity) : ours.kilobytes,
    };
    const rest: V1Payload[] = [
      saPayload([
        {
          number: chosen.offered.number,
          protocol: chosen.offered.protocol,
          spi: spiIn,
          transforms: [chosen.transform],
        },
      ]),
      { type: PayloadType.NONCE, data: nr },
    ];
    if (ke) rest.push({ type: PayloadType.KE, data: ke.publicValue });
    if (idci && idcr) rest.push(idci, idcr);
    if (chosen.life.seconds > ours.seconds) rest.push(lifetimeNotify(chosen.offered.protocol, spiIn, ours.seconds));
    const niData = Buffer.from(ni.data);
    const m2 = s.protectHashed(
      ExchangeType.QUICK_MODE,
      mid,
      rest,
      (b) => hash2(s.suite, s.phase1.a, mid, niData, b),
      iv,
    );
    x.iv = m2.iv;
    x.answered = { request: digest, response: m2.raw };
    const mine = spiIn;
    x.fail = (err) => {
      s.host.spis.release(mine);
      s.childFailed(err, mid);
    };
    x.receive = (p3) => {
      const h3 = p3[0];
      if (h3?.type !== PayloadType.HASH || !h3.data.equals(hash3(s.suite, s.phase1.a, mid, niData, nr))) {
        s.host.invalidPacket(s.remote.address, ExchangeType.QUICK_MODE, 'Quick Mode message 3 with a wrong HASH(3)');
        x.iv = m2.iv;
        return;
      }
      s.finishQuick(x);
      s.installChild(
        childOf(s, {
          initiator: false,
          proposal: chosen.proposal,
          mode,
          spiIn: mine,
          spiOut: Buffer.from(chosen.offered.spi),
          ni: niData,
          nr,
          tsi: [tsi],
          tsr: [tsr],
          pfsSecret,
          pfsGroup: group,
        }),
        life,
      );
    };
    x.retransmit = new Retransmission(s, m2.raw, s.host.timing.retransmits, (err) => {
      s.finishQuick(x);
      x.fail(err);
    });
  } catch (err) {
    refuse(
      err instanceof IkeError ? err : new IkeError((err as Error).message, V2Notify.INVALID_SYNTAX),
      NotifyType.PAYLOAD_MALFORMED,
    );
  }
}

function lifetimeNotify(protocol: number, spi: Buffer, seconds: number): V1Payload {
  const data = Buffer.alloc(8);
  data.writeUInt16BE(0x8000 | P2Attr.LIFE_TYPE, 0);
  data.writeUInt16BE(LifeType.SECONDS, 2);
  data.writeUInt16BE(P2Attr.LIFE_DURATION, 4);
  data.writeUInt16BE(4, 6);
  const v = Buffer.alloc(4);
  v.writeUInt32BE(seconds, 0);
  return {
    type: PayloadType.N,
    doi: DOI_IPSEC,
    protocol,
    spi,
    notify: NotifyType.RESPONDER_LIFETIME,
    data: Buffer.concat([data, v]),
  };
}

// ---- renewal ------------------------------------------------------------------------------------

const sameSelectors = (a: ChildSa, b: ChildSa): boolean =>
  a.mode === b.mode &&
  [a.tsi, a.tsr, b.tsi, b.tsr].every((l) => l.length === 1) &&
  ((selEq(a.tsi[0], b.tsi[0]) && selEq(a.tsr[0], b.tsr[0])) ||
    (selEq(a.tsi[0], b.tsr[0]) && selEq(a.tsr[0], b.tsi[0])));

const selEq = (a?: TrafficSelector, b?: TrafficSelector): boolean => !!a && !!b && sameSelector(a, b);

/**
 * Renewal of child SAs, make-before-break: before a child expires, the side that negotiated it
 * negotiates a successor with the same selectors (the other side 5 % later, if the first did not);
 * when a successor is up, the old SA is deleted by whoever renewed it, and kept by the other side
 * until that Delete or its expiry (outbound traffic already takes the newest SA).
 */
/** Pause before a failed child renewal is tried again. */
const RENEW_RETRY_MS = 1000;
/**
 * How long (in first retransmission waits, 3 s by default) a renewal may see the peer send on the
 * old SA only before it is given up, and how often one child's renewals are given up before its
 * successor is used on the timer alone (a peer that keeps using an old SA for long on purpose).
 */
const CONFIRM_STEPS = 6;
/** How long the replaced SA stays after its renewal carries our traffic, for packets under way. */
const RENEWED_DELETE_GRACE_MS = 2000;
const MAX_ABANDONED_RENEWALS = 3;
const abandonedRenewals = new WeakMap<TimedChildEntry, number>();
const spiNumber = (e: TimedChildEntry): number => e.child.spiIn.readUInt32BE(0);
/** The ISAKMP SA holding `e` now: `s` or another with the same peer (child SAs move on Phase 1 renewal). */
const ownerOf = (s: V1Session, e: TimedChildEntry): V1Session | undefined =>
  [s, ...s.host.siblings(s)].find((x) => x.children.get(spiNumber(e)) === e);

export function armRenewal(s: V1Session): void {
  s.onChildInstalled = (entry) => {
    // The SAs it supersedes may still sit on an older ISAKMP SA with the peer (not yet adopted).
    for (const owner of [s, ...s.host.siblings(s)])
      for (const old of [...owner.children.values()]) {
        if (old === entry || old.state.kind !== 'installed' || !sameSelectors(old.child, entry.child)) continue;
        old.state = { kind: 'rekeyed', replacement: entry.child.spiIn.readUInt32BE(0) };
        if (entry.child.initiator) void owner.deleteChild(old, 'rekeyed', s);
      }
    s.armChildRekey?.(entry);
  };
  s.armChildRekey = (entry) => {
    if (entry.state.kind !== 'installed') return;
    const now = Date.now();
    const delay =
      Math.max(0, entry.rekeyAt - now) + (entry.child.initiator ? 0 : (entry.expireAt - entry.installedAt) * 0.05);
    const t = setTimeout(() => renew(entry), delay);
    t.unref();
    entry.timers.push(t);
  };
  const renew = (entry: TimedChildEntry): void => {
    if (entry.state.kind !== 'installed' || s.state !== 'established') return;
    entry.state = { kind: 'rekeying' };
    const local = entry.child.initiator ? entry.child.tsi : entry.child.tsr;
    const remote = entry.child.initiator ? entry.child.tsr : entry.child.tsi;
    // On the newest ISAKMP SA with the peer: one the peer is replacing may go unanswered.
    const via = s.host.successor(s) ?? s;
    const given = abandonedRenewals.get(entry) ?? 0;
    initiateQuick(via, { tsi: local, tsr: remote }).then(
      (fresh) => {
        // Once the renewal carries our traffic, the SA it replaces is deleted at the peer (after a
        // grace for packets under way): a peer that never got the new SA then has none and
        // negotiates again on its next packet, instead of sending where we no longer receive.
        void via.outboundReady(fresh).then(() => {
          const t = setTimeout(() => {
            const owner = ownerOf(s, entry);
            if (!owner || entry.state.kind !== 'rekeying' || !ownerOf(via, fresh)) return;
            void owner.deleteChild(entry, 'rekeyed', s.host.successor(owner) ?? owner);
          }, RENEWED_DELETE_GRACE_MS);
          t.unref();
        });
        if (given >= MAX_ABANDONED_RENEWALS) return;
        via.confirmRenewal(fresh, entry, CONFIRM_STEPS * (s.host.timing.retransmits[0] ?? 500), () => {
          abandonedRenewals.set(entry, given + 1);
          const newest = s.host.successor(via) ?? via;
          s.log('child SA renewal not taken by the peer: renewing again', {
            spiIn: fresh.child.spiIn.toString('hex'),
            replaces: entry.child.spiIn.toString('hex'),
          });
          void ownerOf(via, fresh)?.deleteChild(fresh, 'the peer never used it (Quick Mode message 3 lost)', newest);
          const owner = ownerOf(s, entry);
          if (!owner || entry.state.kind !== 'rekeying') return;
          entry.state = { kind: 'installed' };
          owner.renewChild?.(entry);
        });
      },
      (err: Error) => {
        if (entry.state.kind === 'rekeying') entry.state = { kind: 'installed' };
        s.log('child rekey failed', { reason: err.message });
        // Tried again while the child has time left, so traffic does not wait for its expiry to
        // start a negotiation (a peer that deleted its side may have lost our Delete or we its).
        if (ownerOf(s, entry) && entry.expireAt - Date.now() > RENEW_RETRY_MS) {
          const retry = setTimeout(() => ownerOf(s, entry)?.renewChild?.(entry), RENEW_RETRY_MS);
          retry.unref();
          entry.timers.push(retry);
        }
      },
    );
  };
  s.renewChild = renew;
  s.onQuickRequest = (mid, payloads, iv, digest) => respondQuick(s, mid, payloads, iv, digest);
}

export { encodeV1Payloads };
