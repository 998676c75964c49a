/**
 * Dead peer detection (RFC 7296 §2.4): after a quiet period the session sends an empty
 * INFORMATIONAL request; when the retransmissions go unanswered the peer is declared dead and the
 * IKE SA with its children is removed locally (no Delete can reach a dead peer).
 */
import { ExchangeType } from '../wire/constants.ts';
import type { SessionTask, TaskSession } from './context.ts';

export class LivenessTask implements SessionTask {
  readonly name = 'ike-dpd';
  readonly kind = 'informational';
  readonly migrates = false;

  async run(s: TaskSession): Promise<void> {
    try {
      await s.request(ExchangeType.INFORMATIONAL, []);
    } catch (err) {
      if (s.state !== 'dead') {
        s.log('dead peer', { reason: (err as Error).message });
        s.terminate('dead peer detected (liveness check unanswered)');
      }
      throw err;
    }
  }
}

/** Runs a liveness check on the IKE SA now; rejects when the peer is dead. */
export const livenessCheck = (s: TaskSession): Promise<void> => s.queue(new LivenessTask());
