/**
 * The IKEv1 keying module of one address: ISAKMP SAs by our cookie, the responder's half-open
 * accounting (a cap, and Main Mode message 1 retransmissions answered from an index), dispatch of
 * IKEv1 datagrams (the IKEv2 manager hands over every message whose major version is 1: both
 * versions share UDP 500/4500), Aggressive Mode refused, and the initiator's Main Mode + Quick Mode.
 * Input is never trusted: malformed or unauthenticated datagrams are dropped without state change.
 */
import { mainModeFailedEvent } from '../describe.ts';
import { createHmac, randomBytes } from 'node:crypto';
import type { AuditSink } from '../../audit/events.ts';
import type { IkeBind, IkePort } from '../../sa/bind.ts';
import type { ChildSaSink } from '../../sa/sink.ts';
import type { Endpoint } from '../../sa/spec.ts';
import type { PeerConfig, Timing } from '../session.ts';
import type { SpiRegistry } from '../spi.ts';
import type { TimedChildEntry } from '../tasks/context.ts';
import type { IkeTrace } from '../trace.ts';
import { decodeV1, decodeV1Payloads, encodeV1, findAllV1, type V1Message, type V1Payload } from './codec.ts';
import { DOI_IPSEC, ExchangeType, NotifyType, PayloadType, ProtocolId, VendorId } from './constants.ts';
import { Reassembly } from './fragment.ts';
import { initiateMainMode, type MainModeHooks, respondMainMode } from './main-mode.ts';
import { armRenewal, initiateQuick } from './quick-mode.ts';
import { digestOf, V1Session, type V1Host } from './session.ts';
import { v1Text } from './trace.ts';

/** How long a renewed ISAKMP SA lingers before its Delete (strongSwan waits 10 s as responder). */
const PHASE1_RETIRE_GRACE_MS = 2_000;

export interface V1ManagerOptions {
  address: string;
  peerFor(address: string): PeerConfig | undefined;
  bind(): IkeBind;
  spis: SpiRegistry;
  audit: AuditSink;
  dataplane: ChildSaSink;
  timing: Timing;
  trace?: IkeTrace;
  /** Half-open SAs are forgotten after this long. Default 30 s. */
  halfOpenTimeoutMs?: number;
  /** Hard cap on half-open SAs; beyond it Main Mode message 1 is dropped. Default 4096. */
  maxHalfOpen?: number;
  /**
   * From this many half-open SAs on, Main Mode message 1 is answered with a stateless cookie that the
   * initiator must return (MS-IKEE §3.9 DoS protection; audit 4646). Default 64.
   */
  dosCookieThreshold?: number;
  /**
   * Whether this host answers AuthIP from `address`: then an IKEv1 Main Mode that the peer sent
   * alongside its AuthIP one (marked MS-MamieExists) is discarded silently (MS-AIPS §3.3.5.2).
   */
  answersAuthIp?(address: string): boolean;
  onEstablished?(s: V1Session): void;
  onEnded?(s: V1Session): void;
  /** An invalid message (audit 4976 for Main Mode and Informational, 4977 for Quick Mode). */
  invalidPacket(remote: string, quickMode: boolean, reason: string): void;
  log(event: string, detail?: Record<string, unknown>): void;
}

const hex = (b: Buffer) => b.toString('hex');
const ZERO = Buffer.alloc(8);

export class V1Manager implements V1Host {
  private readonly byCookie = new Map<string, V1Session>();
  /** Responder SAs still in Main Mode, by initiator cookie and address (message 1 retransmissions). */
  private readonly halfOpenIndex = new Map<string, V1Session>();
  private readonly halfOpenTimers = new Map<V1Session, NodeJS.Timeout>();
  /** Which session holds each child SA, by inbound SPI (the data plane's events name SPIs). */
  private readonly childIndex = new Map<number, V1Session>();
  private readonly hooks: MainModeHooks;
  /** Per-remote count of our SAs (INITIAL-CONTACT only with none besides). */
  private readonly perRemote = new Map<string, number>();
  /** The key of the DoS-protection cookies (MS-IKEE §3.9), and whether that mode is on. */
  private readonly cookieSecret = randomBytes(32);
  private dosMode = false;
  private readonly reassembly = new Reassembly();

  constructor(private readonly o: V1ManagerOptions) {
    this.hooks = {
      firstContact: () => true,
      initialContact: (s) => this.initialContact(s),
      failed: (s, err) => this.mainModeFailed(s, err),
    };
  }

  get bind(): IkeBind {
    return this.o.bind();
  }
  get spis(): SpiRegistry {
    return this.o.spis;
  }
  get audit(): AuditSink {
    return this.o.audit;
  }
  get dataplane(): ChildSaSink {
    return this.o.dataplane;
  }
  get timing(): Timing {
    return this.o.timing;
  }

  log(event: string, detail?: Record<string, unknown>): void {
    this.o.log(event, detail);
  }

  invalidPacket(remote: string, exchange: number, reason: string): void {
    this.o.invalidPacket(remote, exchange === ExchangeType.QUICK_MODE, reason);
    this.log('drop invalid IKEv1 message', { from: remote, exchange, reason });
  }

  traceInner(s: V1Session, dir: 'sent' | 'received', exchange: number, mid: number, payloads: V1Payload[]): void {
    if (!this.o.trace?.enabled()) return;
    this.o.trace.line(
      `${dir} IKEv1 ${ExchangeType[exchange] ?? exchange} #${mid} cookies ${hex(s.cookieI)}/${hex(s.cookieR)} decrypted: ${v1Text(payloads)}`,
    );
  }

  // ---- V1Host -------------------------------------------------------------------------------------

  register(s: V1Session): void {
    const key = hex(s.localCookie);
    if (!this.byCookie.has(key)) this.perRemote.set(s.remote.address, (this.perRemote.get(s.remote.address) ?? 0) + 1);
    this.byCookie.set(key, s);
  }

  unregister(s: V1Session): void {
    const key = hex(s.localCookie);
    if (this.byCookie.get(key) === s) {
      this.byCookie.delete(key);
      const n = (this.perRemote.get(s.remote.address) ?? 1) - 1;
      if (n > 0) this.perRemote.set(s.remote.address, n);
      else this.perRemote.delete(s.remote.address);
    }
    this.forgetHalfOpen(s);
    this.o.onEnded?.(s);
  }

  established(s: V1Session): void {
    this.forgetHalfOpen(s);
    this.o.onEstablished?.(s);
  }

  childMoved(spiIn: number, s: V1Session | undefined): void {
    if (s) this.childIndex.set(spiIn, s);
    else this.childIndex.delete(spiIn);
  }

  successor(s: V1Session): V1Session | undefined {
    return this.siblings(s)
      .filter((x) => x.establishedAt >= s.establishedAt)
      .reduce<V1Session | undefined>((a, x) => (a && a.establishedAt >= x.establishedAt ? a : x), undefined);
  }

  /**
   * The same peer: address and rule, and — several hosts can share an address behind a NAT — the
   * same authenticated identity.
   */
  siblings(s: V1Session): V1Session[] {
    const sameId = (x: V1Session) =>
      !x.peerId || !s.peerId || (x.peerId.type === s.peerId.type && x.peerId.data.equals(s.peerId.data));
    return this.sessions().filter(
      (x) =>
        x !== s &&
        x.state === 'established' &&
        x.remote.address === s.remote.address &&
        x.peer.name === s.peer.name &&
        sameId(x),
    );
  }

  /** A new Main Mode with the peer of `s`; once it is up, `s` hands it the child SAs and is deleted. */
  renewPhase1(s: V1Session): void {
    const next = new V1Session(
      this,
      'initiator',
      { address: this.o.address, port: 500 },
      { ...s.remote, port: 500 },
      s.peer,
    );
    next.forceEncapsulation = s.forceEncapsulation;
    armRenewal(next);
    this.register(next);
    s.log('Phase 1 renewal', { next: hex(next.cookieI) });
    try {
      initiateMainMode(next, { ...this.hooks, firstContact: () => false });
    } catch (err) {
      this.mainModeFailed(next, err as Error);
      return;
    }
    next.whenEstablished().then(
      () => {
        // The children move now; the old ISAKMP SA is deleted at the peer a little later (at its
        // expiry at the latest), once the peer too had the time to move them: strongSwan adopts a
        // reauthenticated SA's children in a job of its own, and deletes them with an ISAKMP SA
        // deleted before that ran.
        next.adoptChildren(s);
        const t = setTimeout(() => s.retire(next), PHASE1_RETIRE_GRACE_MS);
        t.unref();
      },
      (err: Error) => {
        if (next.state !== 'dead') this.mainModeFailed(next, err);
        s.log('Phase 1 renewal failed', { reason: err.message });
      },
    );
  }

  private forgetHalfOpen(s: V1Session): void {
    const t = this.halfOpenTimers.get(s);
    if (!t) return;
    clearTimeout(t);
    this.halfOpenTimers.delete(s);
    for (const [k, v] of this.halfOpenIndex) if (v === s) this.halfOpenIndex.delete(k);
  }

  // ---- views --------------------------------------------------------------------------------------

  sessions(): V1Session[] {
    return [...this.byCookie.values()];
  }

  get halfOpen(): number {
    return this.halfOpenTimers.size;
  }

  noteEsp(spiIn: number): void {
    this.childIndex.get(spiIn)?.noteInbound(spiIn);
  }

  /** The data plane reached a child's byte lifetime: soft → renew it now, hard → delete it. */
  expire(spiIn: number, hard: boolean): TimedChildEntry | undefined {
    const s = this.childIndex.get(spiIn);
    const e = s?.children.get(spiIn);
    if (!s || !e) return undefined;
    if (hard) void s.deleteChild(e, 'lifetime expired (data plane)');
    else s.renewChild?.(e);
    return e;
  }

  // ---- receive ------------------------------------------------------------------------------------

  /** One IKEv1 datagram (non-ESP marker removed). Never throws. */
  receive(data: Buffer, from: Endpoint, port: IkePort): void {
    let msg: V1Message;
    try {
      msg = decodeV1(data);
    } catch (err) {
      this.invalidPacket(from.address, ExchangeType.IDENTITY_PROTECTION, (err as Error).message);
      return;
    }
    if (this.o.trace?.enabled())
      this.o.trace.line(
        `received IKEv1 ${from.address}:${from.port} -> ${this.o.address}:${port} ${ExchangeType[msg.header.exchange] ?? msg.header.exchange} ` +
          `cookies ${hex(msg.header.cookieI)}/${hex(msg.header.cookieR)} #${msg.header.messageId} ${data.length} octets`,
      );
    if (msg.header.nextPayload === PayloadType.FRAGMENT) {
      const known = this.sessionOf(msg.header) !== undefined;
      const whole = this.reassembly.add(msg, `${from.address}:${from.port}`, known);
      if (whole) this.receive(whole, from, port);
      return;
    }
    try {
      this.dispatch(msg, from, port);
    } catch (err) {
      this.log('drop IKEv1 message', { from: from.address, reason: (err as Error).message });
    }
  }

  private dispatch(msg: V1Message, from: Endpoint, port: IkePort): void {
    const h = msg.header;
    if (h.cookieR.equals(ZERO)) {
      // An answer to our message 1 that still carries a zero responder cookie: a refusal or a
      // DoS-protection cookie (the initiator cookie is ours, chosen at random).
      const mine = this.byCookie.get(hex(h.cookieI));
      if (mine?.role === 'initiator' && mine.cookieR.equals(ZERO)) {
        if (h.exchange === ExchangeType.INFORMATIONAL || h.exchange === ExchangeType.IDENTITY_PROTECTION)
          mine.receive(msg, from, port);
        return;
      }
      if (h.exchange === ExchangeType.AGGRESSIVE) {
        this.refuse(
          msg,
          from,
          port,
          NotifyType.INVALID_EXCHANGE_TYPE,
          'Aggressive Mode is refused (identities in the clear; Windows never uses it)',
        );
        return;
      }
      if (h.exchange !== ExchangeType.IDENTITY_PROTECTION || h.messageId !== 0) return;
      this.respondMainMode(msg, from, port);
      return;
    }
    // Message 1 again, with the DoS-protection cookie we handed out as its responder cookie.
    if (
      h.exchange === ExchangeType.IDENTITY_PROTECTION &&
      h.messageId === 0 &&
      h.nextPayload === PayloadType.SA &&
      !this.byCookie.has(hex(h.cookieR)) &&
      this.byCookie.get(hex(h.cookieI))?.role !== 'initiator'
    ) {
      if (h.cookieR.equals(this.dosCookie(h.cookieI, from))) this.respondMainMode(msg, from, port, h.cookieR);
      return;
    }
    const s = this.sessionOf(h);
    if (!s) return;
    // The responder's cookie is learnt from Main Mode message 2; after that it must match.
    const learning =
      s.role === 'initiator' && s.cookieR.equals(ZERO) && h.exchange === ExchangeType.IDENTITY_PROTECTION;
    if (!learning && !s.cookieR.equals(h.cookieR)) return;
    s.receive(msg, from, port);
  }

  /** The SA a message names: by our initiator cookie for SAs we started, by our responder cookie otherwise. */
  private sessionOf(h: V1Message['header']): V1Session | undefined {
    const ours = this.byCookie.get(hex(h.cookieI));
    const s = ours?.role === 'initiator' ? ours : this.byCookie.get(hex(h.cookieR));
    return s?.cookieI.equals(h.cookieI) ? s : undefined;
  }

  /**
   * One notification answering `msg` outside any SA (RFC 2408 §5; Windows sends these unprotected
   * in the first two Main Mode round trips, MS-IKEE §3.1.5), with the message's cookies.
   */
  private sendUnprotected(
    msg: V1Message,
    from: Endpoint,
    port: IkePort,
    exchange: ExchangeType,
    notify: NotifyType,
    data: Buffer,
  ): void {
    const { cookieI, cookieR } = msg.header;
    const n: V1Payload = {
      type: PayloadType.N,
      doi: DOI_IPSEC,
      protocol: ProtocolId.ISAKMP,
      spi: Buffer.concat([cookieI, cookieR]),
      notify,
      data,
    };
    this.bind.sendIke(encodeV1({ cookieI, cookieR, exchange, flags: 0, messageId: 0 }, [n]), port, from);
  }

  /** Message 2 in DoS-prevention mode: the header and one NOTIFY_DOS_COOKIE, no state kept (MS-IKEE §3.9). */
  private sendDosCookie(msg: V1Message, from: Endpoint, port: IkePort): void {
    this.sendUnprotected(
      msg,
      from,
      port,
      ExchangeType.IDENTITY_PROTECTION,
      NotifyType.MS_NOTIFY_DOS_COOKIE,
      this.dosCookie(msg.header.cookieI, from),
    );
  }

  /** An unprotected notification answering a message we will not process (RFC 2408 §5). */
  private refuse(msg: V1Message, from: Endpoint, port: IkePort, notify: NotifyType, why: string): void {
    const h = msg.header;
    this.sendUnprotected(msg, from, port, ExchangeType.INFORMATIONAL, notify, Buffer.alloc(0));
    this.log('IKEv1 refused', { from: from.address, reason: why });
    this.audit.emit({
      id: 4653,
      subcategory: 'IPsec Main Mode',
      success: false,
      local: { address: this.o.address, port },
      remote: { address: from.address, port: from.port },
      keyingModule: 'IKEv1',
      role: 'Responder',
      failure: {
        failurePoint: 'Local computer',
        failureReason: why,
        state: 'No state',
        notify: NotifyType[notify],
        initiatorCookie: hex(h.cookieI),
        responderCookie: hex(h.cookieR),
      },
    });
  }

  /** The stateless cookie a peer must return in DoS-prevention mode: HMAC of its cookie and address. */
  private dosCookie(cookieI: Buffer, from: Endpoint): Buffer {
    return createHmac('sha256', this.cookieSecret)
      .update(cookieI)
      .update(`${from.address}:${from.port}`)
      .digest()
      .subarray(0, 8);
  }

  private respondMainMode(msg: V1Message, from: Endpoint, port: IkePort, returnedCookie?: Buffer): void {
    const key = `${hex(msg.header.cookieI)}/${from.address}:${from.port}`;
    const known = this.halfOpenIndex.get(key);
    if (known) {
      known.receive(msg, from, port); // a retransmitted message 1 is answered from mmAnswered
      return;
    }
    if (this.halfOpenTimers.size >= (this.o.maxHalfOpen ?? 4096)) {
      this.log('drop Main Mode: too many half-open SAs', { from: from.address });
      return;
    }
    const threshold = this.o.dosCookieThreshold ?? 64;
    if (this.halfOpenTimers.size < threshold / 2) this.dosMode = false;
    if (!returnedCookie && this.halfOpenTimers.size >= threshold) {
      if (!this.dosMode) {
        this.dosMode = true;
        this.audit.emit({
          id: 4646,
          subcategory: 'IPsec Main Mode',
          success: true,
          keyingModule: 'IKEv1',
          halfOpen: this.halfOpenTimers.size,
        });
        this.log('IKE DoS-prevention mode started', { halfOpen: this.halfOpenTimers.size });
      }
      this.sendDosCookie(msg, from, port);
      return;
    }
    let payloads: V1Payload[];
    try {
      payloads = decodeV1Payloads(msg.header.nextPayload, msg.body);
    } catch (err) {
      this.invalidPacket(from.address, ExchangeType.IDENTITY_PROTECTION, (err as Error).message);
      return;
    }
    if (
      this.o.answersAuthIp?.(from.address) &&
      findAllV1(payloads, PayloadType.VID).some((v) => v.data.equals(VendorId.MS_MAMIE_EXISTS))
    ) {
      this.log('IKEv1 Main Mode discarded: the peer offers AuthIP alongside, which is answered', {
        from: from.address,
      });
      return;
    }
    const peer = this.o.peerFor(from.address);
    if (!peer || peer.keyModule === 'IKEv2') {
      this.refuse(
        msg,
        from,
        port,
        NotifyType.NO_PROPOSAL_CHOSEN,
        peer ? `rule "${peer.name}" negotiates with IKEv2 only` : 'no policy for this peer',
      );
      return;
    }
    const s = new V1Session(
      this,
      'responder',
      { address: this.o.address, port },
      from,
      peer,
      msg.header.cookieI,
      returnedCookie,
    );
    armRenewal(s);
    const r = respondMainMode(s, payloads, this.hooks);
    if ('refused' in r) {
      this.refuse(msg, from, port, NotifyType.NO_PROPOSAL_CHOSEN, r.refused);
      return;
    }
    // Windows announces a fresh start with its Vid-Initial-Contact vendor ID (MS-IKEE §3.5–3.6).
    if (findAllV1(payloads, PayloadType.VID).some((v) => v.data.equals(VendorId.MS_INITIAL_CONTACT)))
      s.initialContactVid = true;
    this.register(s);
    this.halfOpenIndex.set(key, s);
    const timer = setTimeout(() => {
      if (s.state === 'half-open') s.terminate('half-open timeout');
    }, this.o.halfOpenTimeoutMs ?? 30_000);
    timer.unref();
    this.halfOpenTimers.set(s, timer);
    s.mmAnswered = { request: digestOf(msg.raw), response: r.response };
    this.log('IKEv1 Main Mode', { from: from.address, cookieR: hex(s.cookieR) });
    s.send(r.response);
  }

  /** INITIAL-CONTACT: the peer restarted; our older SAs with it are stale and go without a Delete. */
  private initialContact(fresh: V1Session): void {
    for (const s of this.sessions())
      if (s !== fresh && s.state === 'established' && s.remote.address === fresh.remote.address)
        s.terminate('the peer restarted (INITIAL-CONTACT)');
  }

  /** A Main Mode failure: 4653 (4652 with certificates), and the SA goes. */
  private mainModeFailed(s: V1Session, err: Error): void {
    this.audit.emit(
      mainModeFailedEvent({
        local: s.local,
        remote: s.remote,
        keyingModule: 'IKEv1',
        role: s.role === 'initiator' ? 'Initiator' : 'Responder',
        credentials: s.peer.credentials,
        err,
        authenticating: s.keys !== undefined,
        cookieI: s.cookieI,
        cookieR: s.cookieR,
      }),
    );
    this.log('IKEv1 Main Mode failed', { remote: s.remote.address, reason: err.message });
    s.fail(err);
  }

  // ---- initiator ----------------------------------------------------------------------------------

  /** Main Mode then Quick Mode with `remote`: the ISAKMP SA and its first child SA. */
  async initiate(r: {
    remote: string;
    peer: PeerConfig;
    forceUdpEncapsulation?: boolean;
    /** Marks message 1 MS-MamieExists: an AuthIP Main Mode goes to the peer alongside. */
    announceAuthIp?: boolean;
    /** Called with the ISAKMP SA as soon as it exists (before Main Mode completes). */
    started?: (s: V1Session) => void;
  }): Promise<{ session: V1Session; child: TimedChildEntry }> {
    const s = new V1Session(
      this,
      'initiator',
      { address: this.o.address, port: 500 },
      { address: r.remote, port: 500 },
      r.peer,
    );
    s.forceEncapsulation = r.forceUdpEncapsulation ?? false;
    s.announceAuthIp = r.announceAuthIp ?? false;
    armRenewal(s);
    this.register(s);
    r.started?.(s);
    const first = (this.perRemote.get(r.remote) ?? 0) <= 1;
    try {
      initiateMainMode(s, { ...this.hooks, firstContact: () => first });
      await s.whenEstablished();
    } catch (err) {
      if (s.state !== 'dead') this.mainModeFailed(s, err as Error);
      throw err;
    }
    return { session: s, child: await this.createChild(s, r.peer) };
  }

  /** Another child SA on an established ISAKMP SA (Quick Mode). */
  createChild(s: V1Session, peer: Pick<PeerConfig, 'tsi' | 'tsr'>): Promise<TimedChildEntry> {
    return initiateQuick(s, { tsi: peer.tsi, tsr: peer.tsr });
  }

  /** Deletes every SA at its peer (on shutdown). */
  shutdown(): Promise<void> {
    return Promise.all(this.sessions().map((s) => s.delete('keying service stopped'))).then(() => {});
  }

  close(reason = 'keying service stopped'): void {
    this.reassembly.close();
    for (const s of this.sessions()) s.terminate(reason);
  }
}
