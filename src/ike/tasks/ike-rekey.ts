/**
 * IKE SA rekey with CREATE_CHILD_SA (RFC 7296 §1.3.2, §2.18): a new IKE SA with new SPIs, nonces
 * and key exchange, keys from the old SK_d; the children move to it and the rekey initiator deletes
 * the old SA. Simultaneous rekeys (§2.8.2): the new SA created with the lowest of the four nonces
 * is deleted by its creator; the other one takes the children.
 */
import { randomBytes } from 'node:crypto';
import { kept } from '../../io/kept.ts';
import { KeyExchange } from '../crypto/ke.ts';
import { IkeError, notifyName } from '../errors.ts';
import { acceptChosen, selectProposal, transformOf } from '../proposals.ts';
import { IkeSa } from '../sa.ts';
import { IkeSession } from '../session.ts';
import type { Payload, Proposal } from '../wire/codec.ts';
import { ExchangeType, isErrorNotify, NotifyType, PayloadType, TransformType } from '../wire/constants.ts';
import { findPayload, notify } from './task.ts';

const lowest = (nonces: Buffer[]): Buffer => nonces.reduce((a, b) => (Buffer.compare(a, b) <= 0 ? a : b));

/** A new IKE SA inheriting the old one's endpoints, NAT state and peer. */
function successorSa(old: IkeSa, role: 'initiator' | 'responder'): IkeSa {
  const sa = new IkeSa(role, { ...old.local }, { ...old.remote });
  sa.natLocal = old.natLocal;
  sa.natRemote = old.natRemote;
  sa.forceEncapsulation = old.forceEncapsulation;
  sa.peerSignatureHashes = old.peerSignatureHashes;
  sa.spis = old.spis;
  return sa;
}

function successorSession(s: IkeSession, sa: IkeSa): IkeSession {
  const next = new IkeSession(s.host, sa, s.peer, 'connecting');
  next.peerId = s.peerId;
  next.peerCertificate = s.peerCertificate;
  s.host.register(next);
  return next;
}

/** Moves the children of `from` to `to` (SPIs and keys unchanged; timers re-armed on `to`). */
function handOver(from: IkeSession, to: IkeSession): void {
  for (const [k, e] of from.children) {
    from.children.delete(k);
    to.children.set(k, e);
    to.host.childMoved?.(k, to);
    to.armChild(e);
  }
  from.successor = to;
  from.setState('rekeyed');
}

export async function rekeyIke(s: IkeSession): Promise<void> {
  if (s.state !== 'established') return;
  const old = s.sa;
  let group = transformOf(old.chosen as Proposal, TransformType.KE)?.id as number;
  const spiI = kept(randomBytes(8));
  const offered = s.peer.ikeProposals.map((p) => ({ ...p, spi: spiI }));
  for (let attempt = 0; ; attempt++) {
    const ke = KeyExchange.create(group);
    const nonceI = randomBytes(32);
    s.ourIkeRekey = { nonces: [nonceI] };
    let inner: Payload[];
    try {
      inner = await s.request(
        ExchangeType.CREATE_CHILD_SA,
        [
          { type: PayloadType.SA, proposals: offered },
          { type: PayloadType.NONCE, data: nonceI },
          { type: PayloadType.KE, group, data: ke.publicValue },
        ],
        'ike-rekey',
      );
    } catch (err) {
      s.ourIkeRekey = undefined;
      throw err;
    }
    const error = inner.find((p) => 'notify' in p && isErrorNotify(p.notify));
    if (error && 'notify' in error) {
      if (error.notify === NotifyType.INVALID_KE_PAYLOAD && error.data.length === 2 && attempt === 0) {
        group = error.data.readUInt16BE(0);
        continue;
      }
      s.ourIkeRekey = undefined;
      s.peerIkeRekey = undefined;
      if (error.notify === NotifyType.TEMPORARY_FAILURE && s.state === 'established') {
        const t = setTimeout(() => rekeyIke(s).catch(() => {}), 500 + Math.floor(Math.random() * 1500));
        t.unref();
      }
      throw new IkeError(`the peer refused the IKE SA rekey: ${notifyName(error.notify)}`, error.notify, true);
    }
    const saP = findPayload(inner, PayloadType.SA);
    const nonce = findPayload(inner, PayloadType.NONCE);
    const keP = findPayload(inner, PayloadType.KE);
    const chosen = saP?.proposals.length === 1 ? acceptChosen(offered, saP.proposals[0] as Proposal) : undefined;
    if (!chosen || chosen.spi.length !== 8 || !nonce || !keP || keP.group !== group) {
      s.ourIkeRekey = undefined;
      throw new IkeError('invalid IKE SA rekey response', NotifyType.INVALID_SYNTAX);
    }
    const sa = successorSa(old, 'initiator');
    sa.spiI = spiI;
    sa.spiR = Buffer.from(chosen.spi);
    sa.chosen = { ...chosen, spi: Buffer.alloc(0) };
    sa.nonceI = nonceI;
    sa.nonceR = Buffer.from(nonce.data);
    sa.deriveKeys(ke.sharedSecret(keP.data), old);
    const next = successorSession(s, sa);
    const peer = s.peerIkeRekey;
    s.ourIkeRekey = undefined;
    s.peerIkeRekey = undefined;
    if (peer && [nonceI, sa.nonceR].some((n) => n.equals(lowest([nonceI, sa.nonceR as Buffer, ...peer.nonces])))) {
      // Collision lost: the peer's new SA takes the children, ours goes; the peer deletes the old one.
      s.log('IKE rekey collision lost', { newSpi: spiI.toString('hex') });
      peer.session.established();
      handOver(s, peer.session);
      next.setState('established');
      await next.delete('redundant after a rekey collision');
      return;
    }
    next.established();
    handOver(s, next);
    s.log('IKE SA rekeyed', { newSpi: spiI.toString('hex') });
    await s.delete('rekeyed');
    return;
  }
}

/** Answers the peer's IKE SA rekey request. */
export function respondIkeRekey(s: IkeSession, inner: readonly Payload[]): { payloads: Payload[]; after?: () => void } {
  if (
    s.state !== 'established' ||
    s.activeKind === 'child' ||
    [...s.children.values()].some((e) => e.state === 'rekeying')
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
  const sa = successorSa(s.sa, 'responder');
  sa.spiI = Buffer.from(chosen.spi);
  sa.spiR = kept(randomBytes(8));
  sa.chosen = { ...chosen, spi: Buffer.alloc(0) };
  sa.nonceI = Buffer.from(nonce.data);
  sa.nonceR = randomBytes(32);
  sa.deriveKeys(ke.sharedSecret(keP.data), s.sa);
  const next = successorSession(s, sa);
  const payloads: Payload[] = [
    { type: PayloadType.SA, proposals: [{ ...chosen, spi: sa.spiR }] },
    { type: PayloadType.NONCE, data: sa.nonceR },
    { type: PayloadType.KE, group, data: ke.publicValue },
  ];
  return {
    payloads,
    after: () => {
      if (s.ourIkeRekey) {
        // Our own rekey runs too: who keeps which SA is decided when it completes.
        s.peerIkeRekey = { nonces: [sa.nonceI as Buffer, sa.nonceR as Buffer], session: next };
        next.setState('established');
        return;
      }
      next.established();
      handOver(s, next);
      s.log('IKE SA rekeyed by the peer', { newSpi: sa.spiR.toString('hex') });
    },
  };
}
