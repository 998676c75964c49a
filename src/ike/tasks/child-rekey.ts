/**
 * CREATE_CHILD_SA for child SAs (RFC 7296 §1.3.1–1.3.3): rekeying a child make-before-break (the new
 * SA is installed, then the old one deleted), new children the peer asks for, and simultaneous
 * rekeys (§2.8.1): of the two new SAs, the one created with the lowest of the four nonces is
 * redundant and deleted by whoever created it; the other side deletes the old SA.
 */
import { IkeError } from '../errors.ts';
import type { ChildEntry, IkeSession } from '../session.ts';
import type { Payload, TrafficSelector } from '../wire/codec.ts';
import { ExchangeType, NotifyType, PayloadType, ProtocolId } from '../wire/constants.ts';
import { type ChildSa, ChildCreateInitiator, localTs, remoteTs, respondChild } from './child-create.ts';
import { deleteChild } from './ike-delete.ts';
import { respondIkeRekey } from './ike-rekey.ts';
import { findNotifies, findPayload, notify } from './task.ts';

const lowest = (nonces: Buffer[]): Buffer => nonces.reduce((a, b) => (Buffer.compare(a, b) <= 0 ? a : b));

/** Rekeys one child SA; retries later when the peer is busy (TEMPORARY_FAILURE). */
export async function rekeyChild(s: IkeSession, entry: ChildEntry): Promise<void> {
  const old = entry.child;
  entry.state = 'rekeying';
  const task = new ChildCreateInitiator(s.peer.espProposals, localTs(old), remoteTs(old), old.mode, {
    exchange: 'rekey',
    old,
  });
  for (let attempt = 0; ; attempt++) {
    const out: Payload[] = [];
    task.build(s.sa, out);
    entry.ourRekey = { nonces: [task.nonceI as Buffer] };
    const mid = s.sa.myMid;
    try {
      const inner = await s.request(ExchangeType.CREATE_CHILD_SA, out, 'child');
      task.process(s.sa, inner);
      break;
    } catch (err) {
      const n = err instanceof IkeError ? err.notify : undefined;
      if (n === NotifyType.INVALID_KE_PAYLOAD && attempt === 0 && entry.state === 'rekeying') continue;
      entry.ourRekey = undefined;
      entry.peerRekey = undefined;
      if (!s.children.has(old.spiIn.readUInt32BE(0))) throw err; // deleted meanwhile
      if (n === NotifyType.CHILD_SA_NOT_FOUND) s.removeChild(entry, 'unknown to the peer');
      else if (entry.state === 'rekeying') {
        entry.state = 'installed';
        if (n === NotifyType.TEMPORARY_FAILURE) {
          // The peer is busy (its own rekey or delete): try again shortly (§2.25).
          entry.rekeyAt = Date.now() + 500 + Math.floor(Math.random() * 1500);
          s.armChild(entry);
        }
      }
      if (err instanceof IkeError && err.fromPeer) s.childFailed(err, mid);
      throw err;
    }
  }
  const fresh = task.result;
  if (!fresh) return;
  const peer = entry.peerRekey;
  entry.ourRekey = undefined;
  entry.peerRekey = undefined;
  const freshEntry = s.installChild(fresh);
  if (peer) {
    const ours = [task.nonceI as Buffer, task.nonceR as Buffer];
    const low = lowest([...ours, ...peer.nonces]);
    entry.state = 'rekeyed';
    if (ours.some((n) => n.equals(low))) {
      // We lost the collision: ours is redundant; the peer deletes the old SA.
      s.log('child rekey collision lost', { spiIn: fresh.spiIn.toString('hex') });
      await deleteChild(s, freshEntry, 'redundant after a rekey collision');
      return;
    }
    s.log('child rekey collision won', { spiIn: fresh.spiIn.toString('hex') });
  }
  entry.state = 'rekeyed';
  if (s.children.has(old.spiIn.readUInt32BE(0))) await deleteChild(s, entry, 'rekeyed');
}

/**
 * Creates another child SA on an established IKE SA (§1.3.1), e.g. for a flow the data plane
 * acquired that the existing children do not cover. `tsi`/`tsr` are ours and the peer's selectors.
 */
export async function createChild(s: IkeSession, tsi: TrafficSelector[], tsr: TrafficSelector[]): Promise<ChildSa> {
  const task = new ChildCreateInitiator(s.peer.espProposals, tsi, tsr, s.peer.mode, { exchange: 'create' });
  for (let attempt = 0; ; attempt++) {
    const out: Payload[] = [];
    task.build(s.sa, out);
    const mid = s.sa.myMid;
    try {
      task.process(s.sa, await s.request(ExchangeType.CREATE_CHILD_SA, out, 'child'));
      break;
    } catch (err) {
      if (err instanceof IkeError && err.notify === NotifyType.INVALID_KE_PAYLOAD && attempt === 0) continue;
      s.childFailed(err as Error, mid);
      throw err;
    }
  }
  const child = task.result as ChildSa;
  s.installChild(child);
  return child;
}

/** Answers CREATE_CHILD_SA: an IKE SA rekey, a child rekey (REKEY_SA), or a new child SA. */
export function respondCreateChild(
  s: IkeSession,
  inner: readonly Payload[],
): { payloads: Payload[]; after?: () => void } {
  const saP = findPayload(inner, PayloadType.SA);
  if (!saP) throw new IkeError('CREATE_CHILD_SA request without an SA payload', NotifyType.INVALID_SYNTAX);
  if (saP.proposals[0]?.protocol === ProtocolId.IKE) return respondIkeRekey(s, inner);
  if (s.state !== 'established') return { payloads: [notify(NotifyType.TEMPORARY_FAILURE)] };
  const rekey = findNotifies(inner, NotifyType.REKEY_SA)[0];
  if (rekey) {
    const entry = s.childByPeerSpi(rekey.spi);
    if (!entry)
      return { payloads: [{ ...notify(NotifyType.CHILD_SA_NOT_FOUND), protocol: rekey.protocol, spi: rekey.spi }] };
    if (entry.state === 'deleting' || s.activeKind === 'ike-rekey')
      return { payloads: [notify(NotifyType.TEMPORARY_FAILURE)] };
    const old = entry.child;
    // The peer initiates this exchange: TSi is its side.
    const r = respondChild(
      s.sa,
      inner,
      { espProposals: s.peer.espProposals, tsi: remoteTs(old), tsr: localTs(old), mode: old.mode },
      'create',
    );
    if (!r.child) return { payloads: r.payloads };
    s.installChild(r.child);
    const nonceI = findPayload(inner, PayloadType.NONCE)?.data as Buffer;
    if (entry.state === 'rekeying' && entry.ourRekey)
      entry.peerRekey = { nonces: [Buffer.from(nonceI), r.nonceR as Buffer], child: r.child };
    else entry.state = 'rekeyed'; // the peer deletes the old SA once it has the new one
    return { payloads: r.payloads };
  }
  // A new child SA for other traffic of the same peer.
  const p = s.peer;
  const policy =
    s.role === 'responder'
      ? { espProposals: p.espProposals, tsi: p.tsi, tsr: p.tsr, mode: p.mode }
      : { espProposals: p.espProposals, tsi: p.tsr, tsr: p.tsi, mode: p.mode };
  const r = respondChild(s.sa, inner, policy, 'create');
  if (r.child) s.installChild(r.child);
  return { payloads: r.payloads };
}
