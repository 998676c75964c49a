/** CHILD_SA creation (inside IKE_AUTH or CREATE_CHILD_SA), initiator side (RFC 7296 §1.3, §2.9). */
import { randomBytes } from 'node:crypto';
import { ENCRS, INTEGS } from '../crypto/algorithms.ts';
import { type ChildKeys, deriveChildKeys } from '../crypto/keys.ts';
import { IkeError, notifyName } from '../errors.ts';
import { acceptChosen, transformOf } from '../proposals.ts';
import type { IkeSa } from '../sa.ts';
import type { Payload, Proposal, TrafficSelector } from '../wire/codec.ts';
import { EncrId, NotifyType, PayloadType, TransformType } from '../wire/constants.ts';
import { findNotifies, findPayload, type Task } from './task.ts';

export interface ChildSa {
  mode: 'tunnel' | 'transport';
  /** SPI we receive on (chosen by us). */
  spiIn: Buffer;
  /** SPI we send with (chosen by the peer). */
  spiOut: Buffer;
  proposal: Proposal;
  tsi: TrafficSelector[];
  tsr: TrafficSelector[];
  keys: ChildKeys;
  encrKeyBytes: number;
  integKeyBytes: number;
}

/**
 * A child SA from the chosen ESP proposal, with its keys (RFC 7296 §2.17). Shared by the initiator
 * task and the responder: KEYMAT order is the same for both (initiator-to-responder keys first).
 */
export function childSa(
  sa: IkeSa,
  chosen: Proposal,
  spiIn: Buffer,
  spiOut: Buffer,
  tsi: TrafficSelector[],
  tsr: TrafficSelector[],
  mode: 'tunnel' | 'transport',
): ChildSa {
  const encrT = transformOf(chosen, TransformType.ENCR);
  const encr = ENCRS[encrT?.id as keyof typeof ENCRS];
  const integT = transformOf(chosen, TransformType.INTEG);
  const integ = integT ? INTEGS[integT.id as keyof typeof INTEGS] : undefined;
  if (!encrT || (!encr && encrT.id !== EncrId.NULL)) {
    throw new IkeError('chosen child encryption is not implemented', NotifyType.NO_PROPOSAL_CHOSEN);
  }
  const encrKeyBytes = encrT.id === EncrId.NULL ? 0 : (encrT.keyLength ?? 0) / 8 + (encr?.saltSize ?? 0);
  const integKeyBytes = integ?.keySize ?? 0;
  const suite = sa.suite;
  if (!suite || !sa.keys || !sa.nonceI || !sa.nonceR) {
    throw new IkeError('child SA before the IKE SA has keys', NotifyType.INVALID_SYNTAX);
  }
  return {
    mode,
    spiIn,
    spiOut: Buffer.from(spiOut),
    proposal: chosen,
    tsi,
    tsr,
    keys: deriveChildKeys(suite.prf, sa.keys.skD, sa.nonceI, sa.nonceR, encrKeyBytes, integKeyBytes),
    encrKeyBytes,
    integKeyBytes,
  };
}

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

export class ChildCreateInitiator implements Task {
  readonly name = 'child-create';
  readonly spi = randomBytes(4);
  result?: ChildSa;

  constructor(
    private readonly proposals: (spi: Buffer) => Proposal[],
    private readonly tsi: TrafficSelector[],
    private readonly tsr: TrafficSelector[],
    private readonly mode: 'tunnel' | 'transport',
  ) {}

  build(_sa: IkeSa, out: Payload[]): void {
    if (this.mode === 'transport')
      out.push({
        type: PayloadType.NOTIFY,
        protocol: 0,
        spi: Buffer.alloc(0),
        notify: NotifyType.USE_TRANSPORT_MODE,
        data: Buffer.alloc(0),
      });
    out.push(
      { type: PayloadType.SA, proposals: this.proposals(this.spi) },
      { type: PayloadType.TSi, selectors: this.tsi },
      { type: PayloadType.TSr, selectors: this.tsr },
    );
  }

  process(sa: IkeSa, payloads: readonly Payload[]): void {
    for (const n of [
      NotifyType.NO_PROPOSAL_CHOSEN,
      NotifyType.TS_UNACCEPTABLE,
      NotifyType.SINGLE_PAIR_REQUIRED,
      NotifyType.INTERNAL_ADDRESS_FAILURE,
      NotifyType.FAILED_CP_REQUIRED,
    ]) {
      if (findNotifies(payloads, n).length > 0)
        throw new IkeError(`the responder refused the child SA: ${notifyName(n)}`, n, true);
    }
    const saP = findPayload(payloads, PayloadType.SA);
    const tsi = findPayload(payloads, PayloadType.TSi);
    const tsr = findPayload(payloads, PayloadType.TSr);
    if (!saP || !tsi || !tsr) throw new IkeError('child SA response lacks SA, TSi or TSr', NotifyType.INVALID_SYNTAX);
    const chosen =
      saP.proposals.length === 1 ? acceptChosen(this.proposals(this.spi), saP.proposals[0] as Proposal) : undefined;
    if (!chosen || chosen.spi.length !== 4)
      throw new IkeError('responder chose a child proposal that was not offered', NotifyType.NO_PROPOSAL_CHOSEN);
    if (!tsi.selectors.every((t) => within(t, this.tsi)) || !tsr.selectors.every((t) => within(t, this.tsr))) {
      throw new IkeError('responder widened the traffic selectors', NotifyType.TS_UNACCEPTABLE);
    }
    const transport = findNotifies(payloads, NotifyType.USE_TRANSPORT_MODE).length > 0;
    if (this.mode === 'transport' && !transport)
      throw new IkeError('responder did not accept transport mode', NotifyType.NO_PROPOSAL_CHOSEN);
    this.result = childSa(
      sa,
      chosen,
      this.spi,
      chosen.spi,
      tsi.selectors,
      tsr.selectors,
      transport ? 'transport' : 'tunnel',
    );
  }
}
