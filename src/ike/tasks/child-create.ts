/**
 * CHILD_SA creation (RFC 7296 §1.3, §2.9, §2.17): inside IKE_AUTH, as a new child with
 * CREATE_CHILD_SA, or as a child rekey (§1.3.3, REKEY_SA). The initiator half is a task; the
 * responder half (`respondChild`) selects a proposal, narrows the traffic selectors and derives
 * the keys. Both sides derive KEYMAT in the same order: initiator-to-responder keys first.
 */
import { randomOctets } from '../crypto/random.ts';
import { ENCRS, INTEGS } from '../crypto/algorithms.ts';
import { KeyExchange } from '../crypto/ke.ts';
import { type ChildKeys, deriveChildKeys } from '../crypto/keys.ts';
import { IkeError, notifyName } from '../errors.ts';
import { acceptChosen, selectProposal, transformOf } from '../proposals.ts';
import { writeIp } from '../../io/addr.ts';
import { kept } from '../../io/kept.ts';
import type { IkeSa } from '../sa.ts';
import type { Payload, Proposal, TrafficSelector } from '../wire/codec.ts';
import { sameSelector } from '../../sa/spec.ts';
import { EncrId, NotifyType, PayloadType, ProtocolId, TransformType, TsType } from '../wire/constants.ts';
import { findNotifies, findPayload, notify, type Task } from './task.ts';

export interface ChildSa {
  mode: 'tunnel' | 'transport';
  /** SPI we receive on (chosen by us). */
  spiIn: Buffer;
  /** SPI we send with (chosen by the peer). */
  spiOut: Buffer;
  proposal: Proposal;
  /** Selectors of the exchange's initiator (TSi) and responder (TSr). */
  tsi: TrafficSelector[];
  tsr: TrafficSelector[];
  /**
   * KEYMAT split per direction; an IKEv2 session hands it to the data plane when it installs the
   * SA and forgets it then (the data plane's contexts hold the keys from there on).
   */
  keys?: ChildKeys;
  encrKeyBytes: number;
  integKeyBytes: number;
  /** We initiated the exchange that created this child: `keys.*I` are our outbound keys. */
  initiator: boolean;
  /** Key exchange group used for PFS, if any. */
  pfsGroup?: number;
}

/** Our side's and the peer's traffic selectors of a child SA. */
export const localTs = (c: ChildSa): TrafficSelector[] => (c.initiator ? c.tsi : c.tsr);
export const remoteTs = (c: ChildSa): TrafficSelector[] => (c.initiator ? c.tsr : c.tsi);

export interface ChildExchange {
  nonceI: Buffer;
  nonceR: Buffer;
  pfsSecret?: Buffer;
  pfsGroup?: number;
  initiator: boolean;
}

/**
 * A child SA from the chosen ESP proposal (its SPI: the one we send with), with its keys (RFC 7296
 * §2.17). Without `ex` the child belongs to IKE_AUTH and takes the IKE SA's nonces. `planned`: the
 * plan's selectors, shared by the child where the negotiated ones are the same.
 */
export function childSa(
  sa: IkeSa,
  chosen: Proposal,
  spiIn: Buffer,
  tsi: TrafficSelector[],
  tsr: TrafficSelector[],
  mode: 'tunnel' | 'transport',
  ex: ChildExchange | undefined,
  planned: readonly TrafficSelector[],
): ChildSa {
  const encrT = transformOf(chosen, TransformType.ENCR);
  const encr = ENCRS[encrT?.id as keyof typeof ENCRS];
  const integT = transformOf(chosen, TransformType.INTEG);
  const integ = integT ? INTEGS[integT.id as keyof typeof INTEGS] : undefined;
  const ah = chosen.protocol === ProtocolId.AH;
  if (ah ? !integ : !encrT || (!encr && encrT.id !== EncrId.NULL)) {
    throw new IkeError(
      `chosen child ${ah ? 'integrity' : 'encryption'} is not implemented`,
      NotifyType.NO_PROPOSAL_CHOSEN,
    );
  }
  const encrKeyBytes = ah || encrT?.id === EncrId.NULL ? 0 : (encrT?.keyLength ?? 0) / 8 + (encr?.saltSize ?? 0);
  const integKeyBytes = integ?.keySize ?? 0;
  const suite = sa.suite;
  const nonceI = ex?.nonceI ?? sa.nonceI;
  const nonceR = ex?.nonceR ?? sa.nonceR;
  if (!suite || !sa.keys || !nonceI || !nonceR) {
    throw new IkeError('child SA before the IKE SA has keys', NotifyType.INVALID_SYNTAX);
  }
  // What the SA keeps is copied out of the message it came in (kept()): no datagram stays pinned.
  // The peer's SPI in the chosen proposal is the one we send with.
  const spiOut = kept(chosen.spi);
  return {
    mode,
    spiIn,
    spiOut,
    proposal: { ...chosen, spi: spiOut },
    tsi: tsi.map((ts) => keptSelector(ts, planned)),
    tsr: tsr.map((ts) => keptSelector(ts, planned)),
    keys: deriveChildKeys(suite.prf, sa.keys.skD, nonceI, nonceR, encrKeyBytes, integKeyBytes, ex?.pfsSecret),
    encrKeyBytes,
    integKeyBytes,
    initiator: ex?.initiator ?? sa.role === 'initiator',
    pfsGroup: ex?.pfsGroup,
  };
}

/**
 * A selector the child keeps: the plan's own object when the negotiated one is the same (most are:
 * the plan lives as long as the SA), else a copy out of the message.
 */
function keptSelector(ts: TrafficSelector, planned: readonly TrafficSelector[]): TrafficSelector {
  const same = planned.find((p) => p.type === ts.type && sameSelector(p, ts));
  if (same) return same;
  const start = kept(ts.start);
  return { ...ts, start, end: ts.end.equals(ts.start) ? start : kept(ts.end) };
}

/** Proposals without key exchange transforms: IKE_AUTH children never do PFS (§1.2). */
export const withoutKe = (ps: Proposal[]): Proposal[] =>
  ps.map((p) => ({ ...p, transforms: p.transforms.filter((t) => t.type !== TransformType.KE) }));

/** Does `inner` lie within one of `outer` (for checking the responder's narrowing)? */
function within(inner: TrafficSelector, outer: readonly TrafficSelector[]): boolean {
  return outer.some(
    (o) =>
      o.type === inner.type &&
      (o.ipProtocol === 0 || o.ipProtocol === inner.ipProtocol) &&
      o.startPort <= inner.startPort &&
      inner.endPort <= o.endPort &&
      Buffer.compare(o.start, inner.start) <= 0 &&
      Buffer.compare(inner.end, o.end) <= 0,
  );
}

/** The part of `offered` inside `allowed` (address and port ranges intersected), or undefined. */
export function narrow(
  offered: readonly TrafficSelector[],
  allowed: readonly TrafficSelector[],
): TrafficSelector[] | undefined {
  const out: TrafficSelector[] = [];
  for (const o of offered) {
    for (const a of allowed) {
      if (o.type !== a.type) continue;
      const proto =
        a.ipProtocol === 0 ? o.ipProtocol : o.ipProtocol === 0 || o.ipProtocol === a.ipProtocol ? a.ipProtocol : -1;
      if (proto < 0) continue;
      const start: Buffer = Buffer.compare(o.start, a.start) >= 0 ? o.start : a.start;
      const end: Buffer = Buffer.compare(o.end, a.end) <= 0 ? o.end : a.end;
      const startPort = Math.max(o.startPort, a.startPort);
      const endPort = Math.min(o.endPort, a.endPort);
      if (Buffer.compare(start, end) > 0 || startPort > endPort) continue;
      out.push({ type: o.type, ipProtocol: proto, startPort, endPort, start, end });
    }
  }
  return out.length > 0 ? out : undefined;
}

/** The selectors with their addresses replaced by `address` (a single host); other families unchanged. */
function hostSelectors(selectors: readonly TrafficSelector[], address: string): TrafficSelector[] {
  return selectors.map((t) => {
    const bytes = Buffer.alloc(t.type === TsType.IPV4_ADDR_RANGE ? 4 : 16);
    try {
      writeIp(address, bytes);
    } catch {
      return t; // the other family
    }
    return { ...t, start: bytes, end: Buffer.from(bytes) };
  });
}

/**
 * Transport mode through a NAT (RFC 7296 §2.23.1): the selectors name the hosts' own addresses, but
 * packets carry the translated ones. Each side therefore replaces the address of a host behind a NAT
 * with the address the IKE packets came from (as strongSwan and Linux do), keeping protocols and ports;
 * the data plane then sees the selectors it checks packets against. For transport-mode children only;
 * without a NAT the selectors come back unchanged.
 */
function natTransportSelectors(
  sa: IkeSa,
  tsi: readonly TrafficSelector[],
  tsr: readonly TrafficSelector[],
): { tsi: TrafficSelector[]; tsr: TrafficSelector[] } {
  const [initiator, responder] = sa.role === 'initiator' ? [sa.local, sa.remote] : [sa.remote, sa.local];
  return {
    tsi: sa.floated ? hostSelectors(tsi, initiator.address) : [...tsi],
    tsr: sa.floated ? hostSelectors(tsr, responder.address) : [...tsr],
  };
}

export type ChildKind = { exchange: 'auth' } | { exchange: 'create' } | { exchange: 'rekey'; old: ChildSa };

/** Initiator half: offers proposals and selectors; `result` is the child once the response is processed. */
export class ChildCreateInitiator implements Task {
  readonly name = 'child-create';
  /** Our inbound SPI, taken from the SA's registry when the request is built. */
  spi: Buffer = Buffer.alloc(0);
  result?: ChildSa;
  private nonce?: Buffer;
  private ke?: KeyExchange;
  /** The responder asked for another PFS group (INVALID_KE_PAYLOAD): build again. */
  retryGroup?: number;

  constructor(
    private readonly proposals: (spi: Buffer) => Proposal[],
    private readonly tsi: TrafficSelector[],
    private readonly tsr: TrafficSelector[],
    private readonly mode: 'tunnel' | 'transport',
    private readonly kind: ChildKind = { exchange: 'auth' },
  ) {}

  /** The responder's nonce, once its answer is processed. */
  nonceR?: Buffer;

  /** Our nonce in this exchange, for rekey collision resolution (§2.8.1). */
  get nonceI(): Buffer | undefined {
    return this.nonce;
  }

  private offered(): Proposal[] {
    const all = this.proposals(this.spi);
    return this.kind.exchange === 'auth' ? withoutKe(all) : all;
  }

  build(sa: IkeSa, out: Payload[]): void {
    if (this.spi.length === 0) this.spi = sa.spis?.allocate() ?? kept(randomOctets(4));
    if (this.kind.exchange === 'rekey')
      out.push({ ...notify(NotifyType.REKEY_SA), protocol: this.kind.old.proposal.protocol, spi: this.kind.old.spiIn });
    if (this.mode === 'transport') out.push(notify(NotifyType.USE_TRANSPORT_MODE));
    const offered = this.offered();
    out.push({ type: PayloadType.SA, proposals: offered });
    if (this.kind.exchange !== 'auth') {
      this.nonce = randomOctets(32);
      out.push({ type: PayloadType.NONCE, data: this.nonce });
      const group =
        this.retryGroup ?? offered.map((p) => transformOf(p, TransformType.KE)?.id).find((g) => g !== undefined);
      if (group !== undefined) {
        this.ke = KeyExchange.create(group);
        out.push({ type: PayloadType.KE, group, data: this.ke.publicValue });
      }
    }
    out.push({ type: PayloadType.TSi, selectors: this.tsi }, { type: PayloadType.TSr, selectors: this.tsr });
  }

  process(sa: IkeSa, payloads: readonly Payload[]): void {
    const invalidKe = findNotifies(payloads, NotifyType.INVALID_KE_PAYLOAD)[0];
    if (invalidKe && invalidKe.data.length === 2 && this.kind.exchange !== 'auth') {
      this.retryGroup = invalidKe.data.readUInt16BE(0);
      throw new IkeError(`the responder asks for PFS group ${this.retryGroup}`, NotifyType.INVALID_KE_PAYLOAD, true);
    }
    for (const n of [
      NotifyType.NO_PROPOSAL_CHOSEN,
      NotifyType.TS_UNACCEPTABLE,
      NotifyType.SINGLE_PAIR_REQUIRED,
      NotifyType.INTERNAL_ADDRESS_FAILURE,
      NotifyType.FAILED_CP_REQUIRED,
      NotifyType.CHILD_SA_NOT_FOUND,
      NotifyType.TEMPORARY_FAILURE,
      NotifyType.NO_ADDITIONAL_SAS,
    ]) {
      if (findNotifies(payloads, n).length > 0)
        throw new IkeError(`the responder refused the child SA: ${notifyName(n)}`, n, true);
    }
    const saP = findPayload(payloads, PayloadType.SA);
    const tsi = findPayload(payloads, PayloadType.TSi);
    const tsr = findPayload(payloads, PayloadType.TSr);
    if (!saP || !tsi || !tsr) throw new IkeError('child SA response lacks SA, TSi or TSr', NotifyType.INVALID_SYNTAX);
    const chosen = saP.proposals.length === 1 ? acceptChosen(this.offered(), saP.proposals[0] as Proposal) : undefined;
    if (!chosen || chosen.spi.length !== 4)
      throw new IkeError('responder chose a child proposal that was not offered', NotifyType.NO_PROPOSAL_CHOSEN);
    const transport = findNotifies(payloads, NotifyType.USE_TRANSPORT_MODE).length > 0;
    if (this.mode === 'transport' && !transport)
      throw new IkeError('responder did not accept transport mode', NotifyType.NO_PROPOSAL_CHOSEN);
    // Through a NAT the responder answers with the translated host addresses (§2.23.1): compare and
    // keep both sides' selectors as addresses of the IKE endpoints.
    const mine = transport ? natTransportSelectors(sa, this.tsi, this.tsr) : { tsi: this.tsi, tsr: this.tsr };
    const got = transport
      ? natTransportSelectors(sa, tsi.selectors, tsr.selectors)
      : { tsi: tsi.selectors, tsr: tsr.selectors };
    if (!got.tsi.every((t) => within(t, mine.tsi)) || !got.tsr.every((t) => within(t, mine.tsr))) {
      throw new IkeError('responder widened the traffic selectors', NotifyType.TS_UNACCEPTABLE);
    }
    let ex: ChildExchange | undefined;
    if (this.kind.exchange !== 'auth') {
      const nonce = findPayload(payloads, PayloadType.NONCE);
      if (!nonce || !this.nonce)
        throw new IkeError('CREATE_CHILD_SA response lacks a nonce', NotifyType.INVALID_SYNTAX);
      const group = transformOf(chosen, TransformType.KE)?.id;
      let pfsSecret: Buffer | undefined;
      if (group !== undefined) {
        const ke = findPayload(payloads, PayloadType.KE);
        if (!ke || !this.ke || ke.group !== group || this.ke.group !== group)
          throw new IkeError('CREATE_CHILD_SA response lacks the PFS key exchange', NotifyType.INVALID_SYNTAX);
        pfsSecret = this.ke.sharedSecret(ke.data);
      }
      this.nonceR = Buffer.from(nonce.data);
      ex = { nonceI: this.nonce, nonceR: this.nonceR, pfsSecret, pfsGroup: group, initiator: true };
    }
    this.result = childSa(
      sa,
      chosen,
      this.spi,
      got.tsi,
      got.tsr,
      transport ? 'transport' : 'tunnel',
      ex ?? { nonceI: sa.nonceI as Buffer, nonceR: sa.nonceR as Buffer, initiator: true },
      [...this.tsi, ...this.tsr],
    );
  }
}

/** What the responder accepts for a child SA. */
export interface ChildPolicy {
  espProposals: (spi: Buffer) => Proposal[];
  /** Selectors accepted for the exchange initiator's side (TSi) and the responder's (TSr). */
  tsi: TrafficSelector[];
  tsr: TrafficSelector[];
  mode: 'tunnel' | 'transport';
}

/**
 * Responder half: answers the child SA part of an IKE_AUTH or CREATE_CHILD_SA request. Returns the
 * response payloads (the SA or the refusing notify) and the child, if one was created.
 */
export function respondChild(
  sa: IkeSa,
  request: readonly Payload[],
  policy: ChildPolicy,
  exchange: 'auth' | 'create',
): { payloads: Payload[]; child?: ChildSa; nonceR?: Buffer } {
  const saP = findPayload(request, PayloadType.SA);
  const tsiP = findPayload(request, PayloadType.TSi);
  const tsrP = findPayload(request, PayloadType.TSr);
  const spi = sa.spis?.allocate() ?? kept(randomOctets(4));
  const supported = policy.espProposals(spi);
  const offered = saP?.proposals ?? [];
  const chosen =
    exchange === 'auth' ? selectProposal(withoutKe(offered), withoutKe(supported)) : selectProposal(offered, supported);
  const wantsTransport = findNotifies(request, NotifyType.USE_TRANSPORT_MODE).length > 0;
  // Transport mode through a NAT: selectors name the IKE endpoints' addresses as we see them (§2.23.1).
  const received =
    wantsTransport && policy.mode === 'transport' && tsiP && tsrP
      ? natTransportSelectors(sa, tsiP.selectors, tsrP.selectors)
      : { tsi: tsiP?.selectors, tsr: tsrP?.selectors };
  const tsi = received.tsi ? narrow(received.tsi, policy.tsi) : undefined;
  const tsr = received.tsr ? narrow(received.tsr, policy.tsr) : undefined;
  // A refusal gives the SPI back; so does a refusal further down (an unexpected KE group).
  const refuse = (payloads: Payload[]) => {
    sa.spis?.release(spi);
    return { payloads };
  };
  if (!chosen || chosen.spi.length !== 4) return refuse([notify(NotifyType.NO_PROPOSAL_CHOSEN)]);
  if (!tsi || !tsr) return refuse([notify(NotifyType.TS_UNACCEPTABLE)]);
  if (wantsTransport !== (policy.mode === 'transport')) return refuse([notify(NotifyType.NO_PROPOSAL_CHOSEN)]);
  const out: Payload[] = [];
  let ex: ChildExchange = { nonceI: sa.nonceI as Buffer, nonceR: sa.nonceR as Buffer, initiator: false };
  let nonceR: Buffer | undefined;
  if (exchange === 'create') {
    const nonce = findPayload(request, PayloadType.NONCE);
    if (!nonce) throw new IkeError('CREATE_CHILD_SA request lacks a nonce', NotifyType.INVALID_SYNTAX);
    nonceR = randomOctets(32);
    ex = { nonceI: Buffer.from(nonce.data), nonceR, initiator: false };
    const group = transformOf(chosen, TransformType.KE)?.id;
    if (group !== undefined) {
      const ke = findPayload(request, PayloadType.KE);
      if (ke?.group !== group) {
        const data = Buffer.alloc(2);
        data.writeUInt16BE(group);
        return refuse([notify(NotifyType.INVALID_KE_PAYLOAD, data)]);
      }
      const ours = KeyExchange.create(group);
      ex = { ...ex, pfsSecret: ours.sharedSecret(ke.data), pfsGroup: group };
      out.push({ type: PayloadType.KE, group, data: ours.publicValue });
    }
    out.unshift({ type: PayloadType.NONCE, data: nonceR });
  }
  const child = childSa(sa, chosen, spi, tsi, tsr, policy.mode, ex, [...policy.tsi, ...policy.tsr]);
  if (policy.mode === 'transport') out.unshift(notify(NotifyType.USE_TRANSPORT_MODE));
  out.unshift({ type: PayloadType.SA, proposals: [{ ...chosen, spi }] });
  out.push({ type: PayloadType.TSi, selectors: tsi }, { type: PayloadType.TSr, selectors: tsr });
  return { payloads: out, child, nonceR };
}
