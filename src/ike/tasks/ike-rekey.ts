/**
 * IKE SA rekey with CREATE_CHILD_SA (RFC 7296 §1.3.2, §2.18): a new IKE SA with new SPIs, nonces
 * and key exchange, keys from the old SK_d; the children and the tasks queued on the old SA move to
 * it, and the rekey initiator deletes the old SA in the same task. Simultaneous rekeys (§2.8.2): the
 * new SA created with the lowest of the four nonces is deleted by its creator; the other one takes
 * the children. The collision is the running task's state, handed to it by the responder half.
 */
import { randomOctets } from '../crypto/random.ts';
import { KeyExchange } from '../crypto/ke.ts';
import { IkeError, notifyName } from '../errors.ts';
import { acceptChosen, selectProposal, transformOf } from '../proposals.ts';
import { IkeSa } from '../sa.ts';
import type { Payload, Proposal } from '../wire/codec.ts';
import { ExchangeType, isErrorNotify, NotifyType, PayloadType, TransformType } from '../wire/constants.ts';
import type { SessionTask, TaskSession } from './context.ts';
import { deleteIkeExchange } from './ike-delete.ts';
import { findPayload, notify } from './task.ts';

const lowest = (nonces: Buffer[]): Buffer => nonces.reduce((a, b) => (Buffer.compare(a, b) <= 0 ? a : b));

/** A new IKE SA inheriting the old one's endpoints, NAT state and peer. */
function successorSa(old: IkeSa, role: 'initiator' | 'responder', spis: { spiI: Uint8Array; spiR: Uint8Array }): IkeSa {
  const sa = new IkeSa(role, { ...old.local }, { ...old.remote }, spis);
  sa.natLocal = old.natLocal;
  sa.natRemote = old.natRemote;
  sa.forceEncapsulation = old.forceEncapsulation;
  sa.peerSignatureHashes = old.peerSignatureHashes;
  sa.spis = old.spis;
  return sa;
}

export class IkeRekeyTask implements SessionTask {
  readonly name = 'ike-rekey';
  readonly kind = 'ike-rekey';
  /** Rekeying an IKE SA is about that IKE SA: it does not follow to a successor. */
  readonly migrates = false;
  /** The peer's rekey of the same IKE SA that crossed ours: its nonces and the IKE SA it made. */
  private collision?: { nonces: Buffer[]; session: TaskSession };

  /** The peer rekeyed the IKE SA while our request was outstanding (§2.8.2). */
  collide(nonces: Buffer[], session: TaskSession): void {
    this.collision = { nonces, session };
  }

  async run(s: TaskSession): Promise<void> {
    if (s.state !== 'established') return;
    const old = s.sa;
    let group = transformOf(old.chosen as Proposal, TransformType.KE)?.id as number;
    const spiI = randomOctets(8);
    const offered = s.peer.ikeProposals.map((p) => ({ ...p, spi: spiI }));
    for (let attempt = 0; ; attempt++) {
      const ke = KeyExchange.create(group);
      const nonceI = randomOctets(32);
      const inner = await s.request(ExchangeType.CREATE_CHILD_SA, [
        { type: PayloadType.SA, proposals: offered },
        { type: PayloadType.NONCE, data: nonceI },
        { type: PayloadType.KE, group, data: ke.publicValue },
      ]);
      const error = inner.find((p) => 'notify' in p && isErrorNotify(p.notify));
      if (error && 'notify' in error) {
        if (error.notify === NotifyType.INVALID_KE_PAYLOAD && error.data.length === 2 && attempt === 0) {
          group = error.data.readUInt16BE(0);
          continue;
        }
        this.collision = undefined;
        if (error.notify === NotifyType.TEMPORARY_FAILURE && s.state === 'established') {
          const t = setTimeout(
            () => void s.queue(new IkeRekeyTask()).catch(() => {}),
            500 + Math.floor(Math.random() * 1500),
          );
          t.unref();
        }
        throw new IkeError(`the peer refused the IKE SA rekey: ${notifyName(error.notify)}`, error.notify, true);
      }
      const saP = findPayload(inner, PayloadType.SA);
      const nonce = findPayload(inner, PayloadType.NONCE);
      const keP = findPayload(inner, PayloadType.KE);
      const chosen = saP?.proposals.length === 1 ? acceptChosen(offered, saP.proposals[0] as Proposal) : undefined;
      if (!chosen || chosen.spi.length !== 8 || !nonce || !keP || keP.group !== group) {
        this.collision = undefined;
        throw new IkeError('invalid IKE SA rekey response', NotifyType.INVALID_SYNTAX);
      }
      const sa = successorSa(old, 'initiator', { spiI, spiR: chosen.spi });
      sa.chosen = { ...chosen, spi: Buffer.alloc(0) };
      sa.nonceI = nonceI;
      sa.nonceR = Buffer.from(nonce.data);
      sa.deriveKeys(ke.sharedSecret(keP.data), old);
      const next = s.successorSession(sa);
      const crossed = this.collision;
      this.collision = undefined;
      if (
        crossed &&
        [nonceI, sa.nonceR].some((n) => n.equals(lowest([nonceI, sa.nonceR as Buffer, ...crossed.nonces])))
      ) {
        // Collision lost: the peer's new SA takes the children, ours goes; the peer deletes the old one.
        s.log('IKE rekey collision lost', { newSpi: spiI.toString('hex') });
        crossed.session.established();
        s.handOver(crossed.session);
        next.markEstablished();
        await next.delete('redundant after a rekey collision');
        return;
      }
      next.established();
      s.handOver(next);
      s.log('IKE SA rekeyed', { newSpi: spiI.toString('hex') });
      await deleteIkeExchange(s, 'rekeyed');
      return;
    }
  }
}

/** Answers the peer's IKE SA rekey request. */
export function respondIkeRekey(
  s: TaskSession,
  inner: readonly Payload[],
): { payloads: Payload[]; after?: () => void } {
  if (
    s.state !== 'established' ||
    s.activeTask?.kind === 'child' ||
    [...s.children.values()].some((e) => e.state.kind === 'rekeying')
  )
    return { payloads: [notify(NotifyType.TEMPORARY_FAILURE)] };
  const saP = findPayload(inner, PayloadType.SA);
  const nonce = findPayload(inner, PayloadType.NONCE);
  const keP = findPayload(inner, PayloadType.KE);
  if (!saP || !nonce || !keP)
    throw new IkeError('IKE SA rekey request lacks SA, Nonce or KE', NotifyType.INVALID_SYNTAX);
  const chosen = selectProposal(saP.proposals, s.peer.ikeProposals);
  if (!chosen) return { payloads: [notify(NotifyType.NO_PROPOSAL_CHOSEN)] };
  if (chosen.spi.length !== 8)
    throw new IkeError('IKE SA rekey proposal without an 8-octet SPI', NotifyType.INVALID_SYNTAX);
  const group = transformOf(chosen, TransformType.KE)?.id as number;
  if (keP.group !== group) {
    const data = Buffer.alloc(2);
    data.writeUInt16BE(group);
    return { payloads: [notify(NotifyType.INVALID_KE_PAYLOAD, data)] };
  }
  const ke = KeyExchange.create(group);
  const sa = successorSa(s.sa, 'responder', { spiI: chosen.spi, spiR: randomOctets(8) });
  sa.chosen = { ...chosen, spi: Buffer.alloc(0) };
  sa.nonceI = Buffer.from(nonce.data);
  sa.nonceR = randomOctets(32);
  sa.deriveKeys(ke.sharedSecret(keP.data), s.sa);
  const next = s.successorSession(sa);
  const payloads: Payload[] = [
    { type: PayloadType.SA, proposals: [{ ...chosen, spi: sa.spiR }] },
    { type: PayloadType.NONCE, data: sa.nonceR },
    { type: PayloadType.KE, group, data: ke.publicValue },
  ];
  return {
    payloads,
    after: () => {
      const ours = s.activeTask instanceof IkeRekeyTask ? s.activeTask : undefined;
      if (ours) {
        // Our own rekey runs too: who keeps which SA is decided when it completes.
        ours.collide([sa.nonceI as Buffer, sa.nonceR as Buffer], next);
        next.markEstablished();
        return;
      }
      next.established();
      s.handOver(next);
      s.log('IKE SA rekeyed by the peer', { newSpi: sa.spiR.toString('hex') });
    },
  };
}

/** Rekeys the IKE SA now (queued behind its running work). */
export const rekeyIke = (s: TaskSession): Promise<void> => s.queue(new IkeRekeyTask());
