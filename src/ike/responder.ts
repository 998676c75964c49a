/**
 * An IKEv2 responder over UDP 500/4500: IKE_SA_INIT (proposal selection, INVALID_KE_PAYLOAD,
 * NAT detection), IKE_AUTH with a pre-shared key and the first child SA (proposal selection,
 * traffic selector narrowing). Retransmitted requests get the cached response; malformed or
 * unauthenticated input is dropped without changing any state.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { pskAuth, verifyPskAuth } from './crypto/auth.ts';
import { KeyExchange } from './crypto/ke.ts';
import { openMessage, protectMessage } from './crypto/sk.ts';
import { IkeError } from './errors.ts';
import { selectProposal, transformOf } from './proposals.ts';
import { IkeSa } from './sa.ts';
import { type ChildSa, childSa } from './tasks/child-create.ts';
import { idBody, type Identity } from './tasks/ike-auth.ts';
import { natdHash } from './tasks/ike-natd.ts';
import { findNotifies, findPayload } from './tasks/task.ts';
import {
  decodeMessage,
  encodeMessage,
  type IkeMessage,
  type Payload,
  type Proposal,
  type TrafficSelector,
} from './wire/codec.ts';
import {
  AuthMethod,
  ExchangeType,
  Flags,
  NotifyType,
  PayloadType,
  ProtocolId,
  TransformType,
} from './wire/constants.ts';

/** What the responder accepts from one peer (found by the peer's address). */
export interface ResponderPeer {
  ikeProposals: Proposal[];
  espProposals: (spi: Buffer) => Proposal[];
  psk: Buffer;
  localId: Identity;
  /** Selectors we accept for the initiator's side (TSi) and ours (TSr). */
  tsi: TrafficSelector[];
  tsr: TrafficSelector[];
  mode: 'tunnel' | 'transport';
}

export interface ResponderOptions {
  local: string;
  /** Half-open SAs (IKE_SA_INIT answered, no IKE_AUTH yet) are forgotten after this long. Default 30 s. */
  halfOpenTimeoutMs?: number;
  /** With this many half-open SAs, new requests must return a COOKIE first (RFC 7296 §2.6). Default 64. */
  cookieThreshold?: number;
  /** Hard cap on half-open SAs; beyond it IKE_SA_INIT is dropped. Default 4096. */
  maxHalfOpen?: number;
  peerFor(address: string): ResponderPeer | undefined;
  onEstablished?(sa: IkeSa, child: ChildSa, peer: { address: string; port: number }): void;
  onDeleted?(sa: IkeSa): void;
  log?(event: string, detail?: Record<string, unknown>): void;
}

interface Pending {
  sa: IkeSa;
  peer: ResponderPeer;
  /** Expiry of a half-open SA; cleared once IKE_AUTH completes. */
  timer?: NodeJS.Timeout;
  /** Last request seen per message ID, and our response to it (sent again on a retransmission). */
  cache: Map<number, { request: Buffer; response: Buffer }>;
  child?: ChildSa;
}

const notify = (n: NotifyType, data: Buffer = Buffer.alloc(0)): Payload => ({
  type: PayloadType.NOTIFY,
  protocol: 0,
  spi: Buffer.alloc(0),
  notify: n,
  data,
});

/** The part of `offered` inside `allowed` (address and port ranges intersected), or undefined. */
function narrow(
  offered: readonly TrafficSelector[],
  allowed: readonly TrafficSelector[],
): TrafficSelector[] | undefined {
  const out: TrafficSelector[] = [];
  for (const o of offered) {
    for (const a of allowed) {
      if (o.type !== a.type) continue;
      const proto =
        a.ipProtocol === 0 ? o.ipProtocol : o.ipProtocol === 0 || o.ipProtocol === a.ipProtocol ? a.ipProtocol : -1;
      if (proto < 0) continue;
      const start: Buffer = Buffer.compare(o.start, a.start) >= 0 ? o.start : a.start;
      const end: Buffer = Buffer.compare(o.end, a.end) <= 0 ? o.end : a.end;
      const startPort = Math.max(o.startPort, a.startPort);
      const endPort = Math.min(o.endPort, a.endPort);
      if (Buffer.compare(start, end) > 0 || startPort > endPort) continue;
      out.push({ type: o.type, ipProtocol: proto, startPort, endPort, start, end });
    }
  }
  return out.length > 0 ? out : undefined;
}

export class IkeResponder {
  private readonly sas = new Map<string, Pending>();
  private halfOpen = 0;
  /** The stateless cookie secret (RFC 7296 §2.6); version 0 for the life of this responder. */
  private readonly cookieSecret = randomBytes(32);
  private s500?: Socket;
  private s4500?: Socket;
  /** ESP-in-UDP datagrams received on 4500, for a data plane (or a test) to open. */
  espHandler?: (packet: Buffer, from: { address: string; port: number }) => void;

  constructor(private readonly o: ResponderOptions) {}

  async listen(): Promise<void> {
    const type = isIPv6(this.o.local) ? 'udp6' : 'udp4';
    const bind = (port: number) =>
      new Promise<Socket>((resolve, reject) => {
        const s = createSocket(type);
        s.once('error', reject);
        s.bind(port, this.o.local, () => resolve(s));
      });
    this.s500 = await bind(500);
    this.s4500 = await bind(4500);
    const reply = (sock: Socket, floated: boolean) => (r: { address: string; port: number }) => (bytes: Buffer) => {
      sock.send(floated ? Buffer.concat([Buffer.alloc(4), bytes]) : bytes, r.port, r.address);
    };
    this.s500.on('message', (m, r) => this.handleDatagram(m, r, false, reply(this.s500 as Socket, false)(r)));
    this.s4500.on('message', (m, r) => this.handleDatagram(m, r, true, reply(this.s4500 as Socket, true)(r)));
  }

  close(): void {
    for (const p of this.sas.values()) clearTimeout(p.timer);
    this.sas.clear();
    this.halfOpen = 0;
    this.s500?.close();
    this.s4500?.close();
  }

  /** Half-open and established SAs held now (for tests and monitoring). */
  get counts(): { halfOpen: number; total: number } {
    return { halfOpen: this.halfOpen, total: this.sas.size };
  }

  /** Sends an ESP-in-UDP datagram from our 4500 socket. */
  sendEsp(packet: Buffer, to: { address: string; port: number }): void {
    this.s4500?.send(packet, to.port, to.address);
  }

  private log(event: string, detail?: Record<string, unknown>): void {
    this.o.log?.(event, detail);
  }

  /**
   * One UDP datagram from `rinfo` (on 4500 when `floated`); `send` answers it on the same socket
   * (the non-ESP marker is the caller's). Never throws: bad input is logged and dropped.
   */
  handleDatagram(
    buf: Buffer,
    rinfo: { address: string; port: number },
    floated: boolean,
    send: (bytes: Buffer) => void,
  ): void {
    let data = buf;
    if (floated) {
      if (data.length === 1 && data[0] === 0xff) return; // NAT keepalive
      if (data.length < 4 || data.readUInt32BE(0) !== 0) {
        this.espHandler?.(data, rinfo);
        return;
      }
      data = data.subarray(4);
    }
    let msg: IkeMessage;
    try {
      msg = decodeMessage(data);
    } catch (err) {
      this.log('drop malformed', { from: rinfo.address, reason: (err as Error).message });
      return;
    }
    const h = msg.header;
    if (h.flags & Flags.RESPONSE || !(h.flags & Flags.INITIATOR)) return;
    try {
      if (h.exchange === ExchangeType.IKE_SA_INIT && h.messageId === 0) this.ikeSaInit(msg, rinfo, send);
      else if (h.exchange === ExchangeType.IKE_AUTH && h.messageId === 1) this.ikeAuth(msg, rinfo, floated, send);
      else if (h.exchange === ExchangeType.INFORMATIONAL) this.informational(msg, send);
      else this.log('drop unsupported exchange', { exchange: h.exchange, messageId: h.messageId });
    } catch (err) {
      this.log('drop', { from: rinfo.address, reason: (err as Error).message });
    }
  }

  private ikeSaInit(msg: IkeMessage, rinfo: { address: string; port: number }, send: (b: Buffer) => void): void {
    const h = msg.header;
    const existing = [...this.sas.values()].find(
      (p) => p.sa.spiI.equals(h.spiI) && p.cache.get(0)?.request.equals(msg.raw),
    );
    if (existing) {
      send((existing.cache.get(0) as { response: Buffer }).response); // retransmission
      return;
    }
    const peer = this.o.peerFor(rinfo.address);
    const reply = (payloads: Payload[], spiR: Buffer = Buffer.alloc(8)) =>
      encodeMessage(
        { spiI: h.spiI, spiR, exchange: ExchangeType.IKE_SA_INIT, flags: Flags.RESPONSE, messageId: 0 },
        payloads,
      );
    if (this.halfOpen >= (this.o.maxHalfOpen ?? 4096)) {
      this.log('drop IKE_SA_INIT: too many half-open SAs', { from: rinfo.address });
      return;
    }
    const nonceP = findPayload(msg.payloads, PayloadType.NONCE);
    if (this.halfOpen >= (this.o.cookieThreshold ?? 64) && nonceP) {
      // Stateless cookie: HMAC over Ni | IPi | SPIi; the request must come back with it first.
      const mac = createHmac('sha256', this.cookieSecret)
        .update(nonceP.data)
        .update(rinfo.address)
        .update(h.spiI)
        .digest();
      const expected = Buffer.concat([Buffer.alloc(4), mac]);
      const first = msg.payloads[0];
      const given = first && 'notify' in first && first.notify === NotifyType.COOKIE ? first.data : undefined;
      if (!given?.equals(expected)) {
        send(reply([notify(NotifyType.COOKIE, expected)]));
        return;
      }
    }
    if (!peer) {
      this.log('no policy for peer', { from: rinfo.address });
      send(reply([notify(NotifyType.NO_PROPOSAL_CHOSEN)]));
      return;
    }
    const saP = findPayload(msg.payloads, PayloadType.SA);
    const ke = findPayload(msg.payloads, PayloadType.KE);
    const nonce = findPayload(msg.payloads, PayloadType.NONCE);
    if (!saP || !ke || !nonce)
      throw new IkeError('IKE_SA_INIT request lacks SA, KE or Nonce', NotifyType.INVALID_SYNTAX);
    const chosen = selectProposal(saP.proposals, peer.ikeProposals);
    if (!chosen) {
      this.log('no proposal chosen', { from: rinfo.address });
      send(reply([notify(NotifyType.NO_PROPOSAL_CHOSEN)]));
      return;
    }
    const group = transformOf(chosen, TransformType.KE)?.id as number;
    if (ke.group !== group) {
      const data = Buffer.alloc(2);
      data.writeUInt16BE(group);
      send(reply([notify(NotifyType.INVALID_KE_PAYLOAD, data)]));
      return;
    }
    const sa = new IkeSa(
      'responder',
      { address: this.o.local, port: 500 },
      { address: rinfo.address, port: rinfo.port },
    );
    sa.spiI = Buffer.from(h.spiI);
    sa.spiR = randomBytes(8);
    sa.chosen = chosen;
    sa.nonceI = Buffer.from(nonce.data);
    sa.nonceR = randomBytes(32);
    sa.ke = KeyExchange.create(group);
    sa.deriveKeys(sa.ke.sharedSecret(ke.data));
    // NAT detection from the request's hashes (computed with SPIr = 0).
    const zero = Buffer.alloc(8);
    const src = findNotifies(msg.payloads, NotifyType.NAT_DETECTION_SOURCE_IP);
    const dst = findNotifies(msg.payloads, NotifyType.NAT_DETECTION_DESTINATION_IP);
    if (src.length && dst.length) {
      sa.natRemote = !src.some((n) =>
        n.data.equals(natdHash(sa.spiI, zero, { address: rinfo.address, port: rinfo.port })),
      );
      sa.natLocal = !dst.some((n) => n.data.equals(natdHash(sa.spiI, zero, { address: this.o.local, port: 500 })));
    }
    const response = reply(
      [
        { type: PayloadType.SA, proposals: [chosen] },
        { type: PayloadType.KE, group, data: sa.ke.publicValue },
        { type: PayloadType.NONCE, data: sa.nonceR },
        notify(NotifyType.NAT_DETECTION_SOURCE_IP, natdHash(sa.spiI, sa.spiR, { address: this.o.local, port: 500 })),
        notify(
          NotifyType.NAT_DETECTION_DESTINATION_IP,
          natdHash(sa.spiI, sa.spiR, { address: rinfo.address, port: rinfo.port }),
        ),
      ],
      sa.spiR,
    );
    sa.initRequest = Buffer.from(msg.raw);
    sa.initResponse = response;
    sa.nextMessageId = 1;
    const key = `${sa.spiI.toString('hex')}:${sa.spiR.toString('hex')}`;
    const pending: Pending = { sa, peer, cache: new Map([[0, { request: Buffer.from(msg.raw), response }]]) };
    pending.timer = setTimeout(() => this.forget(key), this.o.halfOpenTimeoutMs ?? 30_000);
    pending.timer.unref();
    this.sas.set(key, pending);
    this.halfOpen++;
    this.log('IKE_SA_INIT', { from: rinfo.address, spiR: sa.spiR.toString('hex'), nat: sa.floated });
    send(response);
  }

  /**
   * INFORMATIONAL requests on an established SA: a Delete of the IKE SA removes it (and its child
   * SAs); anything else (liveness checks, unknown notifies) gets an empty answer. Message IDs must
   * follow on; a retransmission gets the cached answer.
   */
  private informational(msg: IkeMessage, send: (b: Buffer) => void): void {
    const h = msg.header;
    const key = `${h.spiI.toString('hex')}:${h.spiR.toString('hex')}`;
    const pending = this.sas.get(key);
    if (!pending || pending.timer) return; // unknown or still half-open
    const { sa } = pending;
    const cached = pending.cache.get(h.messageId);
    if (cached) {
      if (cached.request.equals(msg.raw)) send(cached.response);
      return;
    }
    if (h.messageId !== sa.nextMessageId) return;
    const inner = openMessage(msg, sa.skKeys('in'));
    const response = protectMessage(
      {
        spiI: sa.spiI,
        spiR: sa.spiR,
        exchange: ExchangeType.INFORMATIONAL,
        flags: Flags.RESPONSE,
        messageId: h.messageId,
      },
      [],
      sa.skKeys('out'),
    );
    pending.cache.set(h.messageId, { request: Buffer.from(msg.raw), response });
    sa.nextMessageId++;
    send(response);
    const del = findPayload(inner, PayloadType.DELETE);
    if (del?.protocol === ProtocolId.IKE) {
      this.sas.delete(key);
      this.log('IKE SA deleted by the peer', { spiR: sa.spiR.toString('hex') });
      this.o.onDeleted?.(sa);
    }
  }

  /** Drops a half-open SA whose IKE_AUTH never came. */
  private forget(key: string): void {
    const p = this.sas.get(key);
    if (!p?.timer) return;
    this.sas.delete(key);
    this.halfOpen--;
    this.log('half-open SA expired', { spiR: p.sa.spiR.toString('hex') });
  }

  private ikeAuth(
    msg: IkeMessage,
    rinfo: { address: string; port: number },
    floated: boolean,
    send: (b: Buffer) => void,
  ): void {
    const h = msg.header;
    const pending = this.sas.get(`${h.spiI.toString('hex')}:${h.spiR.toString('hex')}`);
    if (!pending) return; // unknown SA: dropped (INVALID_IKE_SPI would need an unprotected answer)
    const cached = pending.cache.get(1);
    if (cached) {
      if (cached.request.equals(msg.raw)) send(cached.response);
      return;
    }
    const { sa, peer } = pending;
    const inner = openMessage(msg, sa.skKeys('in')); // throws (and so drops) on a bad ICV
    const respond = (payloads: Payload[]) => {
      const response = protectMessage(
        { spiI: sa.spiI, spiR: sa.spiR, exchange: ExchangeType.IKE_AUTH, flags: Flags.RESPONSE, messageId: 1 },
        payloads,
        sa.skKeys('out'),
      );
      pending.cache.set(1, { request: Buffer.from(msg.raw), response });
      send(response);
    };
    const idi = findPayload(inner, PayloadType.IDi);
    const auth = findPayload(inner, PayloadType.AUTH);
    const keys = sa.keys;
    const suite = sa.suite;
    if (!idi || !auth || !keys || !suite || !sa.initRequest || !sa.initResponse || !sa.nonceI || !sa.nonceR) {
      respond([notify(NotifyType.AUTHENTICATION_FAILED)]);
      return;
    }
    const expected = pskAuth(
      suite.prf,
      peer.psk,
      sa.initRequest,
      sa.nonceR,
      keys.skPi,
      idBody({ type: idi.idType, data: idi.data }),
    );
    if (auth.method !== AuthMethod.SHARED_KEY_MIC || !verifyPskAuth(expected, auth.data)) {
      this.log('authentication failed', { from: rinfo.address });
      respond([notify(NotifyType.AUTHENTICATION_FAILED)]);
      return;
    }
    const out: Payload[] = [
      { type: PayloadType.IDr, idType: peer.localId.type, data: peer.localId.data },
      {
        type: PayloadType.AUTH,
        method: AuthMethod.SHARED_KEY_MIC,
        data: pskAuth(suite.prf, peer.psk, sa.initResponse, sa.nonceI, keys.skPr, idBody(peer.localId)),
      },
    ];
    // The first child SA.
    const saP = findPayload(inner, PayloadType.SA);
    const tsiP = findPayload(inner, PayloadType.TSi);
    const tsrP = findPayload(inner, PayloadType.TSr);
    const spi = randomBytes(4);
    const chosen = saP ? selectProposal(saP.proposals, peer.espProposals(spi)) : undefined;
    const tsi = tsiP ? narrow(tsiP.selectors, peer.tsi) : undefined;
    const tsr = tsrP ? narrow(tsrP.selectors, peer.tsr) : undefined;
    const wantsTransport = findNotifies(inner, NotifyType.USE_TRANSPORT_MODE).length > 0;
    if (!chosen || chosen.spi.length !== 4) out.push(notify(NotifyType.NO_PROPOSAL_CHOSEN));
    else if (!tsi || !tsr) out.push(notify(NotifyType.TS_UNACCEPTABLE));
    else if (wantsTransport !== (peer.mode === 'transport')) out.push(notify(NotifyType.NO_PROPOSAL_CHOSEN));
    else {
      const child = childSa(sa, chosen, spi, chosen.spi, tsi, tsr, peer.mode);
      pending.child = child;
      if (peer.mode === 'transport') out.push(notify(NotifyType.USE_TRANSPORT_MODE));
      out.push(
        { type: PayloadType.SA, proposals: [{ ...chosen, spi }] },
        { type: PayloadType.TSi, selectors: tsi },
        { type: PayloadType.TSr, selectors: tsr },
      );
    }
    if (floated) {
      sa.local.port = 4500;
      sa.remote = { address: rinfo.address, port: rinfo.port };
    }
    sa.nextMessageId = 2;
    // No longer half-open: the SA is established (the daemon will own its lifetime and rekeying).
    clearTimeout(pending.timer);
    pending.timer = undefined;
    this.halfOpen--;
    respond(out);
    this.log('IKE_AUTH', { from: rinfo.address, child: pending.child ? pending.child.spiIn.toString('hex') : 'none' });
    if (pending.child) this.o.onEstablished?.(sa, pending.child, rinfo);
  }
}
