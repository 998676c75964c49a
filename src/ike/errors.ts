import { ConsecError } from '../errors.ts';
import { NotifyType } from './wire/constants.ts';

/** A negotiation failure, with the notify that tells the peer (or that the peer told us). */
export class IkeError extends ConsecError {
  constructor(
    message: string,
    readonly notify: NotifyType,
    readonly fromPeer = false,
  ) {
    super('ERR_IKE', message);
  }
}

export function notifyName(n: number): string {
  return NotifyType[n] ?? `notify ${n}`;
}
