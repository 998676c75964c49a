/**
 * CREATE_CHILD_SA for child SAs (RFC 7296 §1.3.1–1.3.3): rekeying a child make-before-break (the new
 * SA is installed, then the old one deleted, in one task), new children either side asks for, and
 * simultaneous rekeys (§2.8.1): of the two new SAs, the one created with the lowest of the four
 * nonces is redundant and deleted by whoever created it; the other side deletes the old SA. The
 * collision is the task's own state: the responder half finds the running rekey of the same child
 * and hands it the peer's nonces. The rekey responder's new SA carries our traffic only once the
 * initiator has shown it has it (its traffic on it, or its Delete of the old SA: §2.8).
 */
import { IkeError } from '../errors.ts';
import type { Payload, TrafficSelector } from '../wire/codec.ts';
import { ExchangeType, NotifyType, PayloadType } from '../wire/constants.ts';
import { type ChildSa, ChildCreateInitiator, localTs, remoteTs, respondChild } from './child-create.ts';
import { INSTALLED, REKEYING, type SessionTask, type TaskSession } from './context.ts';
import { deleteChildExchange } from './ike-delete.ts';
import { findNotifies, findPayload, notify } from './task.ts';

const lowest = (nonces: Buffer[]): Buffer => nonces.reduce((a, b) => (Buffer.compare(a, b) <= 0 ? a : b));
const spiOf = (c: ChildSa): number => c.spiIn.readUInt32BE(0);

/** Rekeys one child SA (by inbound SPI) on whichever IKE SA holds it when the task runs. */
export class ChildRekeyTask implements SessionTask {
  readonly name = 'child-rekey';
  readonly kind = 'child';
  /** Our CREATE_CHILD_SA for the child is outstanding (a crossing rekey from the peer collides). */
  private creating = false;
  /** The peer's rekey of the same child that crossed ours: its exchange's nonces and the SA it made. */
  private collision?: { nonces: Buffer[]; spiIn: number };

  constructor(readonly spiIn: number) {}

  /** Is this task's own CREATE_CHILD_SA for child `spiIn` outstanding? */
  rekeying(spiIn: number): boolean {
    return this.creating && spiIn === this.spiIn;
  }

  /** The peer rekeyed the same child while ours was outstanding (§2.8.1). */
  collide(nonces: Buffer[], child: ChildSa): void {
    this.collision = { nonces, spiIn: spiOf(child) };
  }

  async run(s: TaskSession): Promise<void> {
    const entry = s.children.get(this.spiIn);
    // Gone, rekeyed by the peer meanwhile, or being deleted: nothing to do.
    if (!entry || entry.state.kind !== 'installed' || s.state !== 'established') return;
    const old = entry.child;
    s.setChildState(entry, REKEYING);
    const create = new ChildCreateInitiator(s.peer.espProposals, localTs(old), remoteTs(old), old.mode, {
      exchange: 'rekey',
      old,
    });
    for (let attempt = 0; ; attempt++) {
      const out: Payload[] = [];
      create.build(s.sa, out);
      const mid = s.sa.myMid;
      this.creating = true;
      try {
        const inner = await s.request(ExchangeType.CREATE_CHILD_SA, out);
        create.process(s.sa, inner);
        break;
      } catch (err) {
        this.creating = false;
        const n = err instanceof IkeError ? err.notify : undefined;
        if (n === NotifyType.INVALID_KE_PAYLOAD && attempt === 0) continue;
        const crossed = this.collision;
        this.collision = undefined;
        if (s.children.get(this.spiIn) !== entry) throw err; // deleted meanwhile
        if (n === NotifyType.CHILD_SA_NOT_FOUND) s.removeChild(entry, 'unknown to the peer');
        else if (crossed) {
          // Ours failed, the peer's crossing rekey stands: the old SA waits for the peer's Delete.
          s.setChildState(entry, { kind: 'rekeyed', replacement: crossed.spiIn });
        } else {
          s.setChildState(entry, INSTALLED);
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
    this.creating = false;
    const fresh = create.result as ChildSa;
    const freshEntry = s.installChild(fresh);
    const crossed = this.collision;
    this.collision = undefined;
    if (crossed) {
      const ours = [create.nonceI as Buffer, create.nonceR as Buffer];
      if (ours.some((n) => n.equals(lowest([...ours, ...crossed.nonces])))) {
        // We lost the collision: ours is redundant; the peer deletes the old SA, and its new one takes over.
        s.log('child rekey collision lost', { spiIn: fresh.spiIn.toString('hex') });
        s.setChildState(entry, { kind: 'rekeyed', replacement: crossed.spiIn });
        await deleteChildExchange(s, freshEntry, 'redundant after a rekey collision');
        return;
      }
      s.log('child rekey collision won', { spiIn: fresh.spiIn.toString('hex') });
    }
    s.setChildState(entry, { kind: 'rekeyed', replacement: spiOf(fresh) });
    if (s.children.get(this.spiIn) === entry) await deleteChildExchange(s, entry, 'rekeyed');
  }
}

/**
 * Creates another child SA on an established IKE SA (§1.3.1), e.g. for a flow the data plane
 * acquired that the existing children do not cover. `tsi`/`tsr` are ours and the peer's selectors.
 */
export class ChildCreateTask implements SessionTask {
  readonly name = 'child-create';
  readonly kind = 'child';
  result?: ChildSa;

  constructor(
    private readonly tsi: TrafficSelector[],
    private readonly tsr: TrafficSelector[],
  ) {}

  async run(s: TaskSession): Promise<void> {
    const create = new ChildCreateInitiator(s.peer.espProposals, this.tsi, this.tsr, s.peer.mode, {
      exchange: 'create',
    });
    for (let attempt = 0; ; attempt++) {
      const out: Payload[] = [];
      create.build(s.sa, out);
      const mid = s.sa.myMid;
      try {
        create.process(s.sa, await s.request(ExchangeType.CREATE_CHILD_SA, out));
        break;
      } catch (err) {
        if (err instanceof IkeError && err.notify === NotifyType.INVALID_KE_PAYLOAD && attempt === 0) continue;
        s.childFailed(err as Error, mid);
        throw err;
      }
    }
    this.result = create.result as ChildSa;
    s.installChild(this.result);
  }
}

/** Rekeys a child SA now (queued on its IKE SA); resolves once the old SA is deleted. */
export function rekeyChild(s: TaskSession, entry: { child: ChildSa }): Promise<void> {
  return s.queue(new ChildRekeyTask(spiOf(entry.child)));
}

/** Creates another child SA (queued on the IKE SA); resolves with it. */
export async function createChild(s: TaskSession, tsi: TrafficSelector[], tsr: TrafficSelector[]): Promise<ChildSa> {
  const task = new ChildCreateTask(tsi, tsr);
  await s.queue(task);
  return task.result as ChildSa;
}

/** Answers CREATE_CHILD_SA for a child SA: a rekey (REKEY_SA) or a new child SA. */
export function respondCreateChild(
  s: TaskSession,
  inner: readonly Payload[],
): { payloads: Payload[]; after?: () => void } {
  if (s.state !== 'established' || s.activeTask?.kind === 'ike-rekey')
    return { payloads: [notify(NotifyType.TEMPORARY_FAILURE)] };
  const rekey = findNotifies(inner, NotifyType.REKEY_SA)[0];
  if (rekey) {
    const found = s.childByPeerSpi(rekey.protocol, rekey.spi);
    const entry = found?.holder === s ? found.entry : undefined;
    if (!entry)
      return { payloads: [{ ...notify(NotifyType.CHILD_SA_NOT_FOUND), protocol: rekey.protocol, spi: rekey.spi }] };
    const spiIn = spiOf(entry.child);
    const ours = s.activeTask instanceof ChildRekeyTask && s.activeTask.rekeying(spiIn) ? s.activeTask : undefined;
    if (entry.state.kind !== 'installed' && !ours) return { payloads: [notify(NotifyType.TEMPORARY_FAILURE)] };
    const old = entry.child;
    // The peer initiates this exchange: TSi is its side.
    const r = respondChild(
      s.sa,
      inner,
      { espProposals: s.peer.espProposals, tsi: remoteTs(old), tsr: localTs(old), mode: old.mode },
      'create',
    );
    if (!r.child) return { payloads: r.payloads };
    // Our traffic moves to the new SA once the initiator has it too (§2.8): its ESP, or its Delete of the old SA.
    s.installChild(r.child, { outboundActive: false });
    const nonceI = (findPayload(inner, PayloadType.NONCE) as { data: Buffer }).data;
    if (ours) ours.collide([Buffer.from(nonceI), r.nonceR as Buffer], r.child);
    else s.setChildState(entry, { kind: 'rekeyed', replacement: spiOf(r.child) });
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
