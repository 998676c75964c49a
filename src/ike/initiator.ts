/**
 * Runs an IKEv2 initiator over UDP: IKE_SA_INIT (with COOKIE and INVALID_KE_PAYLOAD retries),
 * floating to 4500 when a NAT is detected, then IKE_AUTH with the first child SA. Requests are
 * retransmitted with exponential back-off; responses are matched by SPI and message ID.
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { openMessage, protectMessage } from './crypto/sk.ts';
import { IkeError } from './errors.ts';
import { type Endpoint, IkeSa } from './sa.ts';
import { ChildCreateInitiator, type ChildSa } from './tasks/child-create.ts';
import type { NegotiationParameters } from './config.ts';
import { IkeAuthPskInitiator } from './tasks/ike-auth.ts';
import { IkeInitInitiator } from './tasks/ike-init.ts';
import { IkeNatd } from './tasks/ike-natd.ts';
import { findNotifies, type Task } from './tasks/task.ts';
import { decodeMessage, encodeMessage, type IkeMessage, type Payload } from './wire/codec.ts';
import { ExchangeType, Flags, NotifyType, PayloadType, ProtocolId } from './wire/constants.ts';

export interface InitiateOptions extends NegotiationParameters {
  /** Retransmission timeouts in ms; the exchange fails after the last one. */
  retransmits?: number[];
  /** Encapsulate ESP in UDP 4500 even without a NAT (needed where the kernel has no ESP). */
  forceUdpEncapsulation?: boolean;
  log?: (event: string, detail?: Record<string, unknown>) => void;
}

export interface Initiated {
  sa: IkeSa;
  child: ChildSa;
  /** The socket on 4500 (or 500 without NAT) the SA runs over; the caller closes it. */
  socket: Socket;
  /** ESP-in-UDP datagrams that arrived on the IKE socket (non-ESP marker absent). */
  onEsp(handler: (packet: Buffer) => void): void;
  /**
   * Deletes the IKE SA (and with it its child SAs) at the peer with an INFORMATIONAL Delete
   * (RFC 7296 §1.4.1); resolves when the peer confirmed or after the retransmissions.
   */
  delete(): Promise<void>;
  close(): void;
}

class Transport {
  private readonly waiters = new Map<string, (m: IkeMessage) => void>();
  espHandler?: (b: Buffer) => void;

  constructor(
    readonly s500: Socket,
    readonly s4500: Socket,
  ) {
    const onMessage = (marker: boolean) => (buf: Buffer) => {
      let data = buf;
      if (marker) {
        if (data.length === 1 && data[0] === 0xff) return; // NAT keepalive
        if (data.length < 4 || data.readUInt32BE(0) !== 0) {
          this.espHandler?.(data);
          return;
        }
        data = data.subarray(4);
      }
      let msg: IkeMessage;
      try {
        msg = decodeMessage(data);
      } catch {
        return; // malformed: dropped silently, as RFC 7296 §2.21 asks for unauthenticated garbage
      }
      if (!(msg.header.flags & Flags.RESPONSE)) return;
      const key = `${msg.header.spiI.toString('hex')}:${msg.header.messageId}`;
      this.waiters.get(key)?.(msg);
    };
    s500.on('message', onMessage(false));
    s4500.on('message', onMessage(true));
  }

  async request(sa: IkeSa, bytes: Buffer, timeouts: number[]): Promise<IkeMessage> {
    const floated = sa.floated;
    const sock = floated ? this.s4500 : this.s500;
    const wire = floated ? Buffer.concat([Buffer.alloc(4), bytes]) : bytes;
    const port = floated ? 4500 : 500;
    const key = `${sa.spiI.toString('hex')}:${sa.nextMessageId}`;
    return new Promise<IkeMessage>((resolve, reject) => {
      let attempt = 0;
      let timer: NodeJS.Timeout | undefined;
      const send = (): void => {
        sock.send(wire, port, sa.remote.address);
        const wait = timeouts[attempt];
        if (wait === undefined) {
          this.waiters.delete(key);
          reject(
            new IkeError(
              `no response from ${sa.remote.address} after ${timeouts.length} transmissions`,
              NotifyType.TEMPORARY_FAILURE,
            ),
          );
          return;
        }
        attempt++;
        timer = setTimeout(send, wait);
      };
      this.waiters.set(key, (m) => {
        clearTimeout(timer);
        this.waiters.delete(key);
        resolve(m);
      });
      send();
    });
  }
}

async function bind(family: 'udp4' | 'udp6', address: string, port: number): Promise<Socket> {
  const s = createSocket({ type: family, reuseAddr: false });
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.bind(port, address, () => {
      s.off('error', reject);
      resolve();
    });
  });
  return s;
}

/** The IKE_SA_INIT request: [N(COOKIE)], SA, KE, Ni, N(NAT_DETECTION_*) (RFC 7296 §1.2, §2.6). */
export function buildInitRequest(sa: IkeSa, init: IkeInitInitiator, natd: IkeNatd, cookie?: Buffer): Buffer {
  const payloads: Payload[] = [];
  if (cookie)
    payloads.push({
      type: PayloadType.NOTIFY,
      protocol: 0,
      spi: Buffer.alloc(0),
      notify: NotifyType.COOKIE,
      data: cookie,
    });
  init.build(sa, payloads);
  natd.build(sa, payloads);
  return encodeMessage(
    { spiI: sa.spiI, spiR: Buffer.alloc(8), exchange: ExchangeType.IKE_SA_INIT, flags: Flags.INITIATOR, messageId: 0 },
    payloads,
  );
}

export async function initiate(o: InitiateOptions): Promise<Initiated> {
  const log = o.log ?? (() => {});
  const family = isIPv6(o.remote) ? 'udp6' : 'udp4';
  const s500 = await bind(family, o.local, 500);
  const s4500 = await bind(family, o.local, 4500);
  const transport = new Transport(s500, s4500);
  const close = (): void => {
    s500.close();
    s4500.close();
  };
  const timeouts = o.retransmits ?? [500, 1000, 2000, 4000];
  const local: Endpoint = { address: o.local, port: 500 };
  const sa = new IkeSa('initiator', local, { address: o.remote, port: 500 });
  sa.forceEncapsulation = o.forceUdpEncapsulation ?? false;
  try {
    // IKE_SA_INIT, again with a cookie or another group if the responder asks.
    const init = new IkeInitInitiator(o.ikeProposals);
    const natd = new IkeNatd();
    let cookie: Buffer | undefined;
    for (let attempt = 0; ; attempt++) {
      const request = buildInitRequest(sa, init, natd, cookie);
      log('send IKE_SA_INIT', { attempt, bytes: request.length });
      const response = await transport.request(sa, request, timeouts);
      const c = findNotifies(response.payloads, NotifyType.COOKIE)[0];
      if (c && attempt < 3) {
        cookie = c.data;
        continue;
      }
      try {
        sa.spiR = Buffer.from(response.header.spiR);
        sa.initRequest = request;
        sa.initResponse = response.raw;
        init.process(sa, response.payloads);
      } catch (err) {
        if (err instanceof IkeError && err.notify === NotifyType.INVALID_KE_PAYLOAD && attempt < 3) {
          sa.spiR = Buffer.alloc(8);
          continue;
        }
        throw err;
      }
      natd.process(sa, response.payloads);
      break;
    }
    sa.nextMessageId = 1;
    if (sa.floated) {
      sa.local.port = 4500;
      sa.remote.port = 4500;
    }
    log('IKE_SA_INIT done', { nat: sa.floated, spiR: sa.spiR.toString('hex') });

    // IKE_AUTH with the first child SA.
    const auth = new IkeAuthPskInitiator(o.psk, o.localId, o.remoteId);
    const child = new ChildCreateInitiator(o.espProposals, o.tsi, o.tsr, o.mode);
    const tasks: Task[] = [auth, child];
    const inner: Payload[] = [];
    for (const t of tasks) t.build(sa, inner);
    const request = protectMessage(
      { spiI: sa.spiI, spiR: sa.spiR, exchange: ExchangeType.IKE_AUTH, flags: Flags.INITIATOR, messageId: 1 },
      inner,
      sa.skKeys('out'),
    );
    log('send IKE_AUTH', { bytes: request.length });
    const response = await transport.request(sa, request, timeouts);
    const payloads = openMessage(response, sa.skKeys('in'));
    for (const t of tasks) t.process(sa, payloads, response);
    sa.nextMessageId = 2;
    const result = child.result;
    if (!result) throw new IkeError('no child SA', NotifyType.INVALID_SYNTAX);
    log('IKE_AUTH done', { spiIn: result.spiIn.toString('hex'), spiOut: result.spiOut.toString('hex') });
    return {
      sa,
      child: result,
      socket: sa.floated ? s4500 : s500,
      onEsp(handler) {
        transport.espHandler = handler;
      },
      async delete() {
        const request = protectMessage(
          {
            spiI: sa.spiI,
            spiR: sa.spiR,
            exchange: ExchangeType.INFORMATIONAL,
            flags: Flags.INITIATOR,
            messageId: sa.nextMessageId,
          },
          [{ type: PayloadType.DELETE, protocol: ProtocolId.IKE, spiSize: 0, spis: [] }],
          sa.skKeys('out'),
        );
        try {
          const response = await transport.request(sa, request, [500, 1000]);
          openMessage(response, sa.skKeys('in')); // authenticated (the answer carries no payloads)
          log('IKE SA deleted', { spiR: sa.spiR.toString('hex') });
        } catch (err) {
          log('delete unanswered', { reason: (err as Error).message });
        }
        sa.nextMessageId++;
      },
      close,
    };
  } catch (err) {
    close();
    throw err;
  }
}
