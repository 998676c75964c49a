/** IKE_SA_INIT: proposals, key exchange and nonces (RFC 7296 §1.2). */
import { randomBytes } from 'node:crypto';
import { kept } from '../../io/kept.ts';
import { KeyExchange } from '../crypto/ke.ts';
import { IkeError, notifyName } from '../errors.ts';
import { acceptChosen, transformOf } from '../proposals.ts';
import type { IkeSa } from '../sa.ts';
import type { Payload, Proposal } from '../wire/codec.ts';
import { isErrorNotify, NotifyType, PayloadType, TransformType } from '../wire/constants.ts';
import { findPayload, type Task } from './task.ts';

export class IkeInitInitiator implements Task {
  readonly name = 'ike-init';
  private retryGroup?: number;

  constructor(private readonly proposals: Proposal[]) {}

  build(sa: IkeSa, out: Payload[]): void {
    // The first proposal's group, unless the responder asked for another (INVALID_KE_PAYLOAD).
    const group = this.retryGroup ?? transformOf(this.proposals[0] as Proposal, TransformType.KE)?.id;
    if (group === undefined)
      throw new IkeError('no key exchange group in the IKE proposals', NotifyType.NO_PROPOSAL_CHOSEN);
    sa.ke = KeyExchange.create(group);
    sa.nonceI ??= randomBytes(32);
    out.push(
      { type: PayloadType.SA, proposals: this.proposals },
      { type: PayloadType.KE, group, data: sa.ke.publicValue },
      { type: PayloadType.NONCE, data: sa.nonceI },
    );
  }

  process(sa: IkeSa, payloads: readonly Payload[]): void {
    for (const p of payloads) {
      if (p.type === PayloadType.NOTIFY && 'notify' in p && isErrorNotify(p.notify)) {
        if (p.notify === NotifyType.INVALID_KE_PAYLOAD && p.data.length === 2) {
          this.retryGroup = p.data.readUInt16BE(0);
          throw new IkeError(
            `responder asks for key exchange group ${this.retryGroup}`,
            NotifyType.INVALID_KE_PAYLOAD,
            true,
          );
        }
        throw new IkeError(`responder refused IKE_SA_INIT: ${notifyName(p.notify)}`, p.notify, true);
      }
    }
    const saPayload = findPayload(payloads, PayloadType.SA);
    const ke = findPayload(payloads, PayloadType.KE);
    const nonce = findPayload(payloads, PayloadType.NONCE);
    if (!saPayload || !ke || !nonce)
      throw new IkeError('IKE_SA_INIT response lacks SA, KE or Nonce', NotifyType.INVALID_SYNTAX);
    if (saPayload.proposals.length !== 1)
      throw new IkeError('responder chose more than one proposal', NotifyType.INVALID_SYNTAX);
    const chosen = acceptChosen(this.proposals, saPayload.proposals[0] as Proposal);
    if (!chosen) throw new IkeError('responder chose a proposal that was not offered', NotifyType.NO_PROPOSAL_CHOSEN);
    if (ke.group !== transformOf(chosen, TransformType.KE)?.id || ke.group !== sa.ke?.group) {
      throw new IkeError(`KE payload group ${ke.group} does not match the chosen proposal`, NotifyType.INVALID_SYNTAX);
    }
    sa.chosen = { ...chosen, spi: kept(chosen.spi) };
    sa.nonceR = nonce.data;
    sa.deriveKeys((sa.ke as KeyExchange).sharedSecret(ke.data));
  }
}
