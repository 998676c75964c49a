/**
 * The IKEv2 keying service core (strongSwan's ike_sa_manager + charon's receiver): owns the IKE
 * socket pair, the IKE SAs by SPI, half-open accounting with stateless cookies (§2.6), and both
 * roles of IKE_SA_INIT / IKE_AUTH. Everything after IKE_AUTH runs in the session (session.ts).
 * Input is never trusted: malformed or unauthenticated datagrams are dropped without state change.
 */
import { mainModeFailedEvent } from './describe.ts';
import { createHmac, randomBytes } from 'node:crypto';
import { type AuditSink, mmSaId, NO_AUDIT } from '../audit/events.ts';
import type { IkeBind, IkePort, IkeReceiver } from '../sa/bind.ts';
import { UdpBind } from './bind.ts';
import { type ChildSaSink, NO_DATAPLANE } from '../sa/sink.ts';
import { IkeError } from './errors.ts';
import { type Endpoint, IkeSa } from './sa.ts';
import { IkeSession, type PeerConfig, type SessionHost, type SessionState, type Timing } from './session.ts';
import type { ChildSa } from './tasks/child-create.ts';
import { rekeyChild } from './tasks/child-rekey.ts';
import { deleteChild } from './tasks/ike-delete.ts';
import { IkeAuthTask, respondAuth } from './tasks/ike-auth.ts';
import { IkeInitTask, respondInit } from './tasks/ike-init.ts';
import { findPayload, notify } from './tasks/task.ts';
import { SpiRegistry } from './spi.ts';
import { headerText, type IkeTrace, payloadsText } from './trace.ts';
import { decodeMessage, encodeMessage, type IkeMessage, type Payload } from './wire/codec.ts';
import { ExchangeType, Flags, NotifyType, PayloadType } from './wire/constants.ts';
import { AuthIpManager, authIpConfigOf } from './authip/manager.ts';
import { isAuthIpExchange } from './authip/constants.ts';
import { type AuthIpSession, type KerberosProvider, NO_KERBEROS } from './authip/session.ts';
import { V1Manager } from './v1/manager.ts';
import type { V1Session } from './v1/session.ts';
import { Deadlines } from './deadlines.ts';

export interface ManagerOptions {
  /** Address the IKE sockets bind to (UDP 500 and 4500). */
  address: string;
  /** Our policy for a peer that contacts us (by its address), or undefined to refuse it. */
  peerFor(address: string): PeerConfig | undefined;
  audit?: AuditSink;
  dataplane?: ChildSaSink;
  timing?: Partial<Timing>;
  /** Half-open SAs (IKE_SA_INIT answered, no IKE_AUTH yet) are forgotten after this long. Default 30 s. */
  halfOpenTimeoutMs?: number;
  /**
   * With this many half-open SAs, new requests must return a COOKIE first (§2.6; IKEv1: MS-IKEE §3.9
   * DoS-protection cookies). Default 64.
   */
  cookieThreshold?: number;
  /** Hard cap on half-open SAs; beyond it IKE_SA_INIT is dropped. Default 4096. */
  maxHalfOpen?: number;
  /** Largest IP datagram an IKE fragment may take (RFC 7383). Default 1280; 0 turns fragmentation off. */
  fragmentSize?: number;
  /** A child SA is up (IKE_AUTH, CREATE_CHILD_SA, rekey). */
  onChild?(session: IkeSession, child: ChildSa): void;
  /** A negotiation (not a rekey) established an IKE SA. */
  onEstablished?(session: IkeSession): void;
  /** The IKE debug trace: every message in and out, described (never keys or payload data). */
  trace?: IkeTrace;
  /** An IKE SA ended (deleted, dead peer, rekeyed away). */
  onEnded?(session: IkeSession): void;
  /** An IKEv1 ISAKMP SA was established / ended. */
  onEstablishedV1?(session: V1Session): void;
  onEstablishedAuthIp?(session: AuthIpSession): void;
  onEndedV1?(session: V1Session): void;
  log?(event: string, detail?: Record<string, unknown>): void;
  /** Kerberos for AuthIP (the host keytab); without it AuthIP Main Modes are refused. */
  kerberos?: KerberosProvider;
  /** Our policy for a peer that starts AuthIP with us (default: peerFor). */
  authIpPeerFor?(address: string): PeerConfig | undefined;
}

export interface InitiateRequest {
  remote: string;
  peer: PeerConfig;
  /** Encapsulate ESP in UDP 4500 even without a NAT (needed where the kernel has no ESP). */
  forceUdpEncapsulation?: boolean;
}

const hex = (b: Buffer) => b.toString('hex');
const ZERO_SPI = Buffer.alloc(8);
const DEFAULT_TIMING: Timing = { retransmits: [500, 1000, 2000, 4000, 8000], dpdMs: 30_000, natKeepaliveMs: 20_000 };

export class IkeManager implements SessionHost, IkeReceiver {
  readonly audit: AuditSink;
  readonly dataplane: ChildSaSink;
  readonly timing: Timing;
  readonly fragmentSize: number;
  readonly deadlines = new Deadlines();
  private _bind?: IkeBind;
  private readonly bySpi = new Map<string, IkeSession>();
  /** Half-open responder SAs by initiator SPI and address, with the IKE_SA_INIT exchange (retransmissions). */
  private readonly initIndex = new Map<string, { session: IkeSession; request: Buffer; response: Buffer }>();
  /** A responder session's key in initIndex (so ending it costs no scan of the index). */
  private readonly initKeyOf = new WeakMap<IkeSession, string>();
  /** Inbound child SA SPIs in use at this address (every IKE SA here takes its children's from it). */
  private readonly spis = new SpiRegistry();
  /** Which session holds each child SA, by inbound SPI (the data plane's events name SPIs). */
  private readonly childIndex = new Map<number, IkeSession>();
  /** Sessions by the peer's authenticated identity, for INITIAL_CONTACT (no scan of every SA). */
  private readonly byPeerId = new Map<string, Set<IkeSession>>();
  /** How many IKE SAs (any state) each peer address has here: INITIAL_CONTACT only with none besides. */
  private readonly perRemote = new Map<string, number>();
  private halfOpenTimers = new Map<IkeSession, NodeJS.Timeout>();
  private halfOpen = 0;
  private readonly cookieSecret = randomBytes(32);
  private invalidSpiBudget = { at: 0, left: 10 };
  /** ESP-in-UDP datagrams received on 4500, for a data plane (or a test) to open. */
  espHandler?: (packet: Buffer, from: Endpoint) => void;
  /** The IKEv1 keying module on the same sockets (messages of major version 1 go there). */
  readonly v1: V1Manager;
  /** AuthIP ([MS-AIPS]) on the same UDP 500 socket: Kerberos Main Modes. */
  readonly authip: AuthIpManager;

  constructor(private readonly o: ManagerOptions) {
    this.audit = o.audit ?? NO_AUDIT;
    this.dataplane = o.dataplane ?? NO_DATAPLANE;
    this.timing = { ...DEFAULT_TIMING, ...o.timing };
    this.fragmentSize = o.fragmentSize ?? 1280;
    const authIpConfig = (remote: string) => {
      const peer = o.kerberos ? (o.authIpPeerFor ?? o.peerFor)(remote) : undefined;
      return peer?.credentials.method === 'kerberos' ? authIpConfigOf(peer, 'responder') : undefined;
    };
    this.authip = new AuthIpManager({
      address: o.address,
      spis: this.spis,
      audit: this.audit,
      dataplane: this.dataplane,
      send: (d, _from, to) => this.bind.sendIke(d, 500, to),
      kerberos: o.kerberos ?? NO_KERBEROS,
      trace: o.trace,
      log: (e, d) => this.log(e, d),
      retransmits: this.timing.retransmits,
      halfOpenMs: 60_000,
      established: o.onEstablishedAuthIp,
      configFor: authIpConfig,
    });
    this.v1 = new V1Manager({
      address: o.address,
      peerFor: (remote) => o.peerFor(remote),
      answersAuthIp: (remote) => authIpConfig(remote) !== undefined,
      bind: () => this.bind,
      spis: this.spis,
      audit: this.audit,
      dataplane: this.dataplane,
      timing: this.timing,
      trace: o.trace,
      halfOpenTimeoutMs: o.halfOpenTimeoutMs,
      maxHalfOpen: o.maxHalfOpen,
      // The same threshold for IKEv1: Main Mode is then answered with MS-IKEE §3.9 cookies.
      dosCookieThreshold: o.cookieThreshold,
      onEstablished: o.onEstablishedV1,
      onEnded: o.onEndedV1,
      invalidPacket: (remote, quick, reason) =>
        this.invalidPacket(remote, quick ? ExchangeType.CREATE_CHILD_SA : ExchangeType.IKE_SA_INIT, reason, 'IKEv1'),
      log: (event, detail) => this.log(event, detail),
    });
  }

  get bind(): IkeBind {
    if (!this._bind) throw new IkeError('the keying service is not listening', NotifyType.TEMPORARY_FAILURE);
    return this._bind;
  }

  /** Binds UDP 500/4500 (or uses `bind`, e.g. a MemoryNetwork bind in tests). */
  async listen(bind?: (rx: IkeReceiver) => IkeBind): Promise<void> {
    const b = bind ? bind(this) : await UdpBind.open(this.o.address, this);
    const trace = this.o.trace;
    // With a trace, every IKE message sent is described first (the cost only exists when tracing).
    this._bind = trace
      ? {
          address: b.address,
          sendIke: (message, port, to) => {
            if (trace.enabled()) this.traceWire('sent', message, port, to);
            b.sendIke(message, port, to);
          },
          sendUdp4500: (packet, to) => b.sendUdp4500(packet, to),
          close: () => b.close(),
        }
      : b;
  }

  private readonly invalidAt = new Map<string, number>();
  private readonly unknownAt = new Map<string, number>();

  /** At most once per key every ten seconds (bounded memory: the table is reset when it fills). */
  private static firstIn10s(table: Map<string, number>, key: string): boolean {
    const now = Date.now();
    if (now - (table.get(key) ?? 0) < 10_000) return false;
    if (table.size > 4096) table.clear();
    table.set(key, now);
    return true;
  }

  /**
   * Audits an invalid IKE message from `remote` (4976 Main Mode, 4977 Quick Mode): at most one
   * event per peer every ten seconds, so junk cannot flood the Security log (SessionHost too).
   */
  invalidPacket(remote: string, exchange: number, reason: string, keyingModule: 'IKEv2' | 'IKEv1' = 'IKEv2'): void {
    if (!IkeManager.firstIn10s(this.invalidAt, remote)) return;
    const qm = exchange === ExchangeType.CREATE_CHILD_SA;
    this.audit.emit({
      id: qm ? 4977 : 4976,
      subcategory: qm ? 'IPsec Quick Mode' : 'IPsec Main Mode',
      success: false,
      localAddress: this.o.address,
      remoteAddress: remote,
      keyingModule,
      reason,
    });
  }

  /** One IKE datagram in the debug trace: its header and unencrypted payloads. */
  private traceWire(dir: 'sent' | 'received', data: Buffer | IkeMessage, port: IkePort, peer: Endpoint): void {
    try {
      const msg = Buffer.isBuffer(data) ? decodeMessage(data) : data;
      const arrow =
        dir === 'sent'
          ? `${this.o.address}:${port} -> ${peer.address}:${peer.port}`
          : `${peer.address}:${peer.port} -> ${this.o.address}:${port}`;
      this.o.trace?.line(
        `${dir} ${arrow} ${headerText(msg.header)} ${msg.raw.length} octets: ${payloadsText(msg.payloads)}`,
      );
    } catch (err) {
      this.o.trace?.line(`${dir} ${peer.address}:${peer.port} undecodable message: ${(err as Error).message}`);
    }
  }

  /** The decrypted payloads of a protected message (SessionHost). */
  traceInner(
    s: IkeSession,
    dir: 'sent' | 'received',
    exchange: number,
    mid: number,
    response: boolean,
    payloads: Payload[],
  ): void {
    if (!this.o.trace?.enabled()) return;
    const ms = Date.now() - s.startedAt;
    this.o.trace.line(
      `${dir} ${ExchangeType[exchange] ?? exchange} ${response ? 'response' : 'request'} #${mid} spi ${hex(s.sa.spiI)}/${hex(s.sa.spiR)} ` +
        `(+${ms} ms) decrypted: ${payloadsText(payloads)}`,
    );
  }

  log(event: string, detail?: Record<string, unknown>): void {
    this.o.log?.(event, detail);
    if (this.o.trace?.enabled()) this.o.trace.line(`event ${event}${detail ? ` ${JSON.stringify(detail)}` : ''}`);
  }

  // ---- SessionHost -----------------------------------------------------------------------------

  register(s: IkeSession): void {
    const key = hex(s.sa.localSpi);
    if (this.bySpi.get(key) !== s) {
      const remote = s.sa.remote.address;
      this.perRemote.set(remote, (this.perRemote.get(remote) ?? 0) + 1);
    }
    this.bySpi.set(key, s);
    this.indexPeer(s); // a rekeyed IKE SA's successor inherits the identity
  }

  unregister(s: IkeSession): void {
    const spi = hex(s.sa.localSpi);
    if (this.bySpi.get(spi) === s) {
      this.bySpi.delete(spi);
      const remote = s.sa.remote.address;
      const n = (this.perRemote.get(remote) ?? 1) - 1;
      if (n > 0) this.perRemote.set(remote, n);
      else this.perRemote.delete(remote);
    }
    this.forgetInit(s);
    if (s.peerId) {
      const key = peerKey(s.peerId);
      const set = this.byPeerId.get(key);
      set?.delete(s);
      if (set?.size === 0) this.byPeerId.delete(key);
    }
    if (s.state === 'dead') this.o.onEnded?.(s);
  }

  /** Drops a responder session's IKE_SA_INIT exchange from the retransmission index. */
  private forgetInit(s: IkeSession): void {
    const key = this.initKeyOf.get(s);
    if (key !== undefined && this.initIndex.get(key)?.session === s) this.initIndex.delete(key);
    this.initKeyOf.delete(s);
  }

  /** Indexes a session under the peer identity it authenticated (once IKE_AUTH proved it). */
  private indexPeer(s: IkeSession): void {
    if (!s.peerId) return;
    const key = peerKey(s.peerId);
    let set = this.byPeerId.get(key);
    if (!set) {
      set = new Set();
      this.byPeerId.set(key, set);
    }
    set.add(s);
  }

  changed(s: IkeSession, from: SessionState): void {
    if (from === 'half-open') {
      this.halfOpen--;
      clearTimeout(this.halfOpenTimers.get(s));
      this.halfOpenTimers.delete(s);
      // The initiator has moved past IKE_SA_INIT: its retransmissions cannot come any more.
      this.forgetInit(s);
    }
    if (s.state === 'established' && (from === 'half-open' || from === 'connecting')) this.o.onEstablished?.(s);
  }

  childUp(s: IkeSession, child: ChildSa): void {
    this.o.onChild?.(s, child);
  }

  // ---- views ---------------------------------------------------------------------------------

  /** Half-open and all IKE SAs held now (tests and monitoring). */
  get counts(): { halfOpen: number; total: number } {
    return { halfOpen: this.halfOpen, total: this.bySpi.size };
  }

  sessions(): IkeSession[] {
    return [...this.bySpi.values()];
  }

  /** A child SA's inbound SPI now belongs to session `s` (installed, or moved by an IKE rekey); undefined: gone. */
  childMoved(spiIn: number, s: IkeSession | undefined): void {
    if (s) this.childIndex.set(spiIn, s);
    else this.childIndex.delete(spiIn);
  }

  /** The data plane saw ESP on this inbound SPI: the peer is alive (no liveness check needed). */
  noteEsp(spiIn: number): void {
    this.childIndex.get(spiIn)?.noteInbound();
    this.v1.noteEsp(spiIn);
  }

  /**
   * The data plane reached a child SA's byte or packet lifetime (or its sequence numbers run out):
   * soft → rekey it now, hard → delete it (RFC 4301 §4.4.2.1).
   */
  expire(spiIn: number, hard: boolean): void {
    if (this.v1.expire(spiIn, hard) || this.authip.expire(spiIn, hard)) return;
    const s = this.childIndex.get(spiIn);
    const e = s?.children.get(spiIn);
    if (!s || !e) return;
    if (hard) void deleteChild(s, e, 'lifetime expired (data plane)').catch(() => {});
    else if (e.state.kind === 'installed' && s.state === 'established')
      void rekeyChild(s, e).catch((err: Error) => s.log('child rekey failed', { reason: err.message }));
  }

  /** Sends an ESP-in-UDP datagram from our 4500 socket. */
  sendEsp(packet: Buffer, to: Endpoint): void {
    this.bind.sendUdp4500(packet, to);
  }

  // ---- receive -------------------------------------------------------------------------------

  esp(packet: Buffer, from: Endpoint): void {
    this.espHandler?.(packet, from);
  }

  /** One IKE message (marker already removed). Never throws. */
  ike(data: Buffer, from: Endpoint, port: IkePort): void {
    // Both versions share the ports; the version octet tells them apart (RFC 7296 §1.5, RFC 2408 §3.1).
    if (data.length > 17 && (data[17] as number) >> 4 === 1) {
      // AuthIP is ISAKMP 1.0 with exchange types 243–246 (MS-AIPS §2.2.1), on UDP 500 only.
      if (isAuthIpExchange(data[18] as number)) {
        if (port === 500) this.authip.receive(data, from);
        return;
      }
      this.v1.receive(data, from, port);
      return;
    }
    let msg: IkeMessage;
    try {
      msg = decodeMessage(data);
    } catch (err) {
      this.log('drop malformed', { from: from.address, reason: (err as Error).message });
      this.invalidPacket(from.address, ExchangeType.IKE_SA_INIT, (err as Error).message);
      if (this.o.trace?.enabled())
        this.o.trace.line(`received ${from.address}:${from.port} malformed: ${(err as Error).message}`);
      return;
    }
    if (this.o.trace?.enabled()) this.traceWire('received', msg, port, from);
    try {
      this.dispatch(msg, from, port);
    } catch (err) {
      this.log('drop', { from: from.address, reason: (err as Error).message });
    }
  }

  private dispatch(msg: IkeMessage, from: Endpoint, port: IkePort): void {
    const h = msg.header;
    const response = (h.flags & Flags.RESPONSE) !== 0;
    const fromOriginalInitiator = (h.flags & Flags.INITIATOR) !== 0;
    if (!response && h.exchange === ExchangeType.IKE_SA_INIT) {
      if (fromOriginalInitiator && h.messageId === 0) this.respondInit(msg, from, port);
      return;
    }
    const ours = fromOriginalInitiator ? h.spiR : h.spiI;
    const theirs = fromOriginalInitiator ? h.spiI : h.spiR;
    const s = this.bySpi.get(hex(ours));
    if (!s || s.role === (fromOriginalInitiator ? 'initiator' : 'responder')) {
      if (!response && !ours.equals(ZERO_SPI)) this.answerInvalidSpi(msg, from, port);
      return;
    }
    const known = fromOriginalInitiator ? s.sa.spiI : s.sa.spiR;
    if (response) {
      if (h.exchange === ExchangeType.IKE_SA_INIT || known.equals(theirs)) s.onResponse(msg);
      return;
    }
    if (!known.equals(theirs)) return;
    if (s.state === 'half-open') {
      if (h.exchange === ExchangeType.IKE_AUTH && h.messageId === 1) this.respondAuth(s, msg, from, port);
      return;
    }
    s.onRequest(msg, from, port);
  }

  /**
   * A request for an IKE SA we do not know (§2.21.4), e.g. after a restart: an unprotected
   * INVALID_IKE_SPI answer, at most ten per second.
   */
  private answerInvalidSpi(msg: IkeMessage, from: Endpoint, port: IkePort): void {
    const now = Date.now();
    if (now - this.invalidSpiBudget.at >= 1000) this.invalidSpiBudget = { at: now, left: 10 };
    if (this.invalidSpiBudget.left-- <= 0) return;
    const h = msg.header;
    this.log('request for an unknown IKE SA', { from: from.address, spiI: hex(h.spiI), spiR: hex(h.spiR) });
    this.bind.sendIke(
      encodeMessage(
        { spiI: h.spiI, spiR: h.spiR, exchange: h.exchange, flags: Flags.RESPONSE, messageId: h.messageId },
        [notify(NotifyType.INVALID_IKE_SPI)],
      ),
      port,
      from,
    );
  }

  // ---- responder: IKE_SA_INIT ------------------------------------------------------------------

  private respondInit(msg: IkeMessage, from: Endpoint, port: IkePort): void {
    const h = msg.header;
    const key = `${hex(h.spiI)}/${from.address}:${from.port}`;
    const known = this.initIndex.get(key);
    if (known) {
      if (known.request.equals(msg.raw)) this.bind.sendIke(known.response, port, from); // retransmission
      return;
    }
    const reply = (payloads: Payload[], spiR: Buffer = ZERO_SPI) =>
      encodeMessage(
        { spiI: h.spiI, spiR, exchange: ExchangeType.IKE_SA_INIT, flags: Flags.RESPONSE, messageId: 0 },
        payloads,
      );
    const send = (b: Buffer) => this.bind.sendIke(b, port, from);
    if (this.halfOpen >= (this.o.maxHalfOpen ?? 4096)) {
      this.log('drop IKE_SA_INIT: too many half-open SAs', { from: from.address });
      return;
    }
    const nonce = findPayload(msg.payloads, PayloadType.NONCE);
    if (this.halfOpen >= (this.o.cookieThreshold ?? 64) && nonce) {
      // Stateless cookie: HMAC over Ni | IPi | SPIi; the request must come back with it first.
      const mac = createHmac('sha256', this.cookieSecret)
        .update(nonce.data)
        .update(from.address)
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
    const peer = this.o.peerFor(from.address);
    // No policy, or no proposal in common: NO_PROPOSAL_CHOSEN, audited as a main mode failure.
    const refuse = (why: string, p?: PeerConfig) => {
      send(reply([notify(NotifyType.NO_PROPOSAL_CHOSEN)]));
      // An address no rule covers is not a peer: logged and audited once per ten seconds, so a
      // flood of requests from one cannot fill the logs (a measured cost under the ike-load bench).
      if (!p && !IkeManager.firstIn10s(this.unknownAt, from.address)) return;
      this.log(why, { from: from.address });
      this.mmFailed(from, 'Responder', p, new IkeError(why, NotifyType.NO_PROPOSAL_CHOSEN), h.spiI);
    };
    if (!peer) {
      refuse('no policy for this peer');
      return;
    }
    if (peer.keyModule === 'IKEv1') {
      refuse(`rule "${peer.name}" negotiates with IKEv1 only`, peer);
      return;
    }
    const r = respondInit(msg, {
      local: { address: this.o.address, port },
      from,
      peer,
      fragmentation: this.fragmentSize > 0,
    });
    if ('refused' in r) {
      if (r.reason) refuse(r.reason, peer);
      else send(reply(r.refused));
      return;
    }
    const sa = r.sa;
    sa.spis = this.spis;
    const response = reply(r.payloads, sa.spiR);
    sa.initResponse = response;
    const s = new IkeSession(this, sa, peer, 'half-open');
    this.register(s);
    this.halfOpen++;
    this.initIndex.set(key, { session: s, request: Buffer.from(msg.raw), response });
    this.initKeyOf.set(s, key);
    const timer = setTimeout(() => {
      if (s.state === 'half-open') {
        this.log('half-open SA expired', { spiR: hex(sa.spiR) });
        s.terminate('half-open timeout');
      }
    }, this.o.halfOpenTimeoutMs ?? 30_000);
    timer.unref();
    this.halfOpenTimers.set(s, timer);
    this.log('IKE_SA_INIT', { from: from.address, spiR: hex(sa.spiR), nat: sa.floated });
    send(response);
  }

  // ---- responder: IKE_AUTH ---------------------------------------------------------------------

  private respondAuth(s: IkeSession, msg: IkeMessage, from: Endpoint, port: IkePort): void {
    // The whole request (all its fragments, RFC 7383), authenticated; else wait or drop.
    const opened = s.openRequest(msg);
    if (!opened) return;
    if (port === 4500) {
      s.sa.local.port = 4500;
      s.sa.remote = { ...from };
    }
    respondAuth(s, opened.inner, opened.raws, {
      authenticated: (x, initialContact) => this.authenticated(x as IkeSession, initialContact),
      failed: (err) => this.mmFailed(from, 'Responder', s.peer, err, s.sa.spiI, s.sa.spiR),
    });
  }

  /** The peer of `s` proved its identity: indexed by it; with INITIAL_CONTACT its older SAs go. */
  private authenticated(s: IkeSession, initialContact: boolean): void {
    this.indexPeer(s);
    if (initialContact) this.initialContact(s);
  }

  /**
   * INITIAL_CONTACT (§2.4): the peer has no other IKE SA with us any more (it restarted), so every
   * older SA with the same identity is stale and removed locally, without a Delete it could not read.
   */
  private initialContact(fresh: IkeSession): void {
    const id = fresh.peerId;
    if (!id) return;
    for (const s of [...(this.byPeerId.get(peerKey(id)) ?? [])]) {
      if (s === fresh || s.state === 'half-open') continue;
      if (s.sa.remote.address === fresh.sa.remote.address) s.terminate('the peer restarted (INITIAL_CONTACT)');
    }
  }

  /** A main mode (IKE SA) failure: 4653, or 4652 when certificates were in play. */
  private mmFailed(
    remote: Endpoint,
    role: 'Initiator' | 'Responder',
    peer: PeerConfig | undefined,
    err: Error,
    spiI: Buffer,
    spiR: Buffer = ZERO_SPI,
  ): void {
    this.audit.emit(
      mainModeFailedEvent({
        local: { address: this.o.address, port: 500 },
        remote,
        keyingModule: 'IKEv2',
        role,
        credentials: peer?.credentials,
        err,
        authenticating: !spiR.equals(ZERO_SPI),
        cookieI: spiI,
        cookieR: spiR,
      }),
    );
  }

  // ---- initiator -------------------------------------------------------------------------------

  /** Negotiates an IKE SA and its first child SA with `remote` (IKE_SA_INIT, IKE_AUTH: the IKE SA's first tasks). */
  async initiate(r: InitiateRequest): Promise<{ session: IkeSession; child: ChildSa }> {
    const peer = r.peer;
    const sa = new IkeSa('initiator', { address: this.o.address, port: 500 }, { address: r.remote, port: 500 });
    sa.spis = this.spis;
    sa.forceEncapsulation = r.forceUdpEncapsulation ?? false;
    const s = new IkeSession(this, sa, peer, 'connecting');
    this.register(s);
    // INITIAL_CONTACT only when this manager holds no other IKE SA with the peer (parallel negotiations, rekeys).
    const auth = new IkeAuthTask(
      { authenticated: (x) => this.authenticated(x as IkeSession, false) },
      () => (this.perRemote.get(r.remote) ?? 0) <= 1,
    );
    try {
      await s.queue(new IkeInitTask(this.fragmentSize > 0));
      await s.queue(auth);
      return { session: s, child: auth.child as ChildSa };
    } catch (err) {
      if (s.establishedAt === 0) {
        this.mmFailed(sa.remote, 'Initiator', peer, err as Error, sa.spiI, sa.spiR);
        s.terminate('negotiation failed');
      }
      throw err;
    }
  }

  // ---- shutdown --------------------------------------------------------------------------------

  /** Deletes every IKE SA at its peer (Delete on shutdown), then closes the sockets. */
  async shutdown(): Promise<void> {
    await Promise.all([
      ...this.sessions().map((s) => s.delete('keying service stopped').catch(() => {})),
      this.v1.shutdown(),
    ]);
    this.close();
  }

  /** Forgets every SA without telling the peers (the reason goes into 4655) and closes the sockets. */
  close(reason = 'keying service stopped'): void {
    this.authip.close(reason);
    this.v1.close(reason);
    for (const s of this.sessions()) s.terminate(reason);
    this.deadlines.close();
    this._bind?.close();
    this._bind = undefined;
  }
}

const peerKey = (id: { type: number; data: Buffer }): string => `${id.type}:${id.data.toString('hex')}`;

export { mmSaId };
