/**
 * INFORMATIONAL exchanges with Delete payloads (RFC 7296 §1.4.1): deleting a child SA (the peer
 * answers with the SPIs of its half), and answering the peer's deletes of child SAs or of the IKE SA.
 * Simultaneous deletes (§2.25.1): a child we are deleting ourselves is not named again in our answer.
 */
import type { ChildEntry, IkeSession } from '../session.ts';
import type { Payload } from '../wire/codec.ts';
import { ExchangeType, PayloadType, ProtocolId } from '../wire/constants.ts';

/** Deletes one child SA at the peer, then locally (also when the peer does not answer). */
export async function deleteChild(s: IkeSession, entry: ChildEntry, reason: string): Promise<void> {
  entry.state = 'deleting';
  try {
    await s.request(
      ExchangeType.INFORMATIONAL,
      [{ type: PayloadType.DELETE, protocol: ProtocolId.ESP, spiSize: 4, spis: [entry.child.spiIn] }],
      'informational',
    );
  } finally {
    s.removeChild(entry, reason);
  }
}

/** Answers an INFORMATIONAL request: deletes, liveness checks (empty), unknown notifies (ignored). */
export function respondInformational(
  s: IkeSession,
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
      const e = s.childByPeerSpi(spi);
      if (!e) continue;
      if (e.state !== 'deleting') ours.push(e.child.spiIn);
      s.removeChild(e, e.state === 'rekeyed' ? 'rekeyed' : 'deleted by the peer');
    }
    if (ours.length > 0) out.push({ type: PayloadType.DELETE, protocol: d.protocol, spiSize: 4, spis: ours });
  }
  return { payloads: out };
}
