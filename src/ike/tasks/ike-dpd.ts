/**
 * Dead peer detection (RFC 7296 §2.4): after a quiet period the session sends an empty
 * INFORMATIONAL request; when the retransmissions go unanswered the peer is declared dead and the
 * IKE SA with its children is removed locally (no Delete can reach a dead peer).
 */
import type { IkeSession } from '../session.ts';
import { ExchangeType } from '../wire/constants.ts';

export async function livenessCheck(s: IkeSession): Promise<void> {
  try {
    await s.request(ExchangeType.INFORMATIONAL, [], 'informational');
  } catch (err) {
    if (s.state !== 'dead') {
      s.log('dead peer', { reason: (err as Error).message });
      s.terminate('dead peer detected (liveness check unanswered)');
    }
    throw err;
  }
}
