/**
 * A task handles one concern of an exchange (as in strongSwan's libcharon): it adds payloads to
 * the message being built and consumes the peer's payloads. An exchange runs a list of tasks.
 */
import type { IkeSa } from '../sa.ts';
import type { IkeMessage, KnownPayload, Payload } from '../wire/codec.ts';
import { PayloadType } from '../wire/constants.ts';

export interface Task {
  readonly name: string;
  /** Adds this task's payloads to an outgoing request (initiator) or response (responder). */
  build(sa: IkeSa, out: Payload[]): void;
  /** Consumes the peer's payloads; throws IkeError to fail the exchange. */
  process(sa: IkeSa, payloads: readonly Payload[], message: IkeMessage): void;
}

/** The payload variant whose type field admits T (IDi and IDr share one variant). */
export type PayloadOf<T> = KnownPayload extends infer P
  ? P extends { type: infer U }
    ? T extends U
      ? P
      : never
    : never
  : never;

export const findPayload = <T extends KnownPayload['type']>(
  payloads: readonly Payload[],
  type: T,
): PayloadOf<T> | undefined => payloads.find((p) => p.type === type && !('unknown' in p)) as PayloadOf<T> | undefined;

export type NotifyPayload = Extract<KnownPayload, { notify: number }>;

export const findNotifies = (payloads: readonly Payload[], notify: number): NotifyPayload[] =>
  payloads.filter((p) => 'notify' in p && p.notify === notify) as NotifyPayload[];

/** A notify payload without SPI (protocol 0), as most status and error notifies are sent. */
export const notify = (type: number, data: Buffer = Buffer.alloc(0)): NotifyPayload =>
  ({ type: PayloadType.NOTIFY, protocol: 0, spi: Buffer.alloc(0), notify: type, data }) as NotifyPayload;
