/**
 * INFORMATIONAL exchanges with Delete payloads (RFC 7296 §1.4.1): deleting a child SA (the peer
 * answers with the SPIs of its half) or the IKE SA, and answering the peer's deletes. Simultaneous
 * deletes (§2.25.1): a child we are deleting ourselves is not named again in our answer. Deletes
 * name a child by its protocol (ESP or AH) and the SPI its receiver chose.
 */
import type { Payload } from '../wire/codec.ts';
import { ExchangeType, PayloadType, ProtocolId } from '../wire/constants.ts';
import type { ChildEntry, SessionTask, TaskSession } from './context.ts';

/** The session now holding the child with inbound SPI `spiIn`: `s`, or an IKE SA that replaced it. */
export function childHolder(s: TaskSession, spiIn: number): { entry: ChildEntry; holder: TaskSession } | undefined {
  for (let h: TaskSession | undefined = s; h; h = h.successor) {
    const entry = h.children.get(spiIn);
    if (entry) return { entry, holder: h };
  }
  return undefined;
}

/**
 * Deletes one child SA at the peer (from the running task), then locally — also when the peer does
 * not answer, and wherever an IKE rekey moved it meanwhile.
 */
export async function deleteChildExchange(s: TaskSession, entry: ChildEntry, reason: string): Promise<void> {
  const spiIn = entry.child.spiIn.readUInt32BE(0);
  const replacement = entry.state.kind === 'rekeyed' ? entry.state.replacement : undefined;
  s.setChildState(entry, { kind: 'deleting', replacement });
  try {
    await s.request(ExchangeType.INFORMATIONAL, [
      { type: PayloadType.DELETE, protocol: entry.child.proposal.protocol, spiSize: 4, spis: [entry.child.spiIn] },
    ]);
  } finally {
    const now = childHolder(s, spiIn);
    if (now?.entry === entry) now.holder.removeChild(entry, reason);
  }
}

/** Deletes the IKE SA at the peer (from the running task), then ends it locally (§1.4.1). */
export async function deleteIkeExchange(s: TaskSession, reason: string): Promise<void> {
  try {
    await s.request(
      ExchangeType.INFORMATIONAL,
      [{ type: PayloadType.DELETE, protocol: ProtocolId.IKE, spiSize: 0, spis: [] }],
      s.deleteWaits,
    );
    s.log('IKE SA deleted', { confirmed: true });
  } catch (err) {
    s.log('delete unanswered', { reason: (err as Error).message });
  }
  s.terminate(reason);
}

/** Deletes a child SA (lifetime, administrator, data plane's hard expiry). */
export class ChildDeleteTask implements SessionTask {
  readonly name = 'child-delete';
  readonly kind = 'informational';

  constructor(
    private readonly spiIn: number,
    private readonly reason: string,
  ) {}

  async run(s: TaskSession): Promise<void> {
    const entry = s.children.get(this.spiIn);
    if (!entry || entry.state.kind === 'deleting') return;
    await deleteChildExchange(s, entry, this.reason);
  }
}

/** Deletes the IKE SA and its children; goes before queued work, which fails with the SA. */
export class IkeDeleteTask implements SessionTask {
  readonly name = 'ike-delete';
  readonly kind = 'informational';
  readonly migrates = false;
  readonly urgent = true;

  constructor(private readonly reason: string) {}

  run(s: TaskSession): Promise<void> {
    return deleteIkeExchange(s, this.reason);
  }
}

/** Queues the delete of a child SA on its IKE SA; resolves once it is gone. */
export function deleteChild(s: TaskSession, entry: ChildEntry, reason: string): Promise<void> {
  return s.queue(new ChildDeleteTask(entry.child.spiIn.readUInt32BE(0), reason));
}

/** Answers an INFORMATIONAL request: deletes, liveness checks (empty), unknown notifies (ignored). */
export function respondInformational(
  s: TaskSession,
  inner: readonly Payload[],
): { payloads: Payload[]; after?: () => void } {
  const out: Payload[] = [];
  for (const d of inner) {
    if (d.type !== PayloadType.DELETE || !('spis' in d)) continue;
    if (d.protocol === ProtocolId.IKE) {
      // Answer with an empty message, then end the SA (its children with it, unless a rekey moved them).
      return { payloads: [], after: () => s.terminate(s.successor ? 'rekeyed' : 'deleted by the peer') };
    }
    if (d.protocol !== ProtocolId.ESP && d.protocol !== ProtocolId.AH) continue;
    const ours: Buffer[] = [];
    for (const spi of d.spis) {
      const found = s.childByPeerSpi(d.protocol, spi);
      if (!found) continue;
      const { entry, holder } = found;
      if (entry.state.kind !== 'deleting') ours.push(entry.child.spiIn);
      holder.removeChild(entry, entry.state.kind === 'rekeyed' ? 'rekeyed' : 'deleted by the peer');
    }
    if (ours.length > 0) out.push({ type: PayloadType.DELETE, protocol: d.protocol, spiSize: 4, spis: ours });
  }
  return { payloads: out };
}
