/**
 * One ISAKMP SA (IKEv1 Phase 1) at run time, in either role: its Main Mode state (main-mode.ts),
 * its Quick Mode exchanges by message ID (quick-mode.ts), message protection with the IV chains of
 * RFC 2409 Appendix B, retransmission (the sender of a message that expects an answer retransmits
 * it with back-off; a side that receives the message it already answered sends its answer again),
 * child SAs handed to the data plane through the shared contract, Informational exchanges (Delete,
 * DPD per RFC 3706, INITIAL-CONTACT) and audit events with the IKEv1 field groups.
 */
import { createHash } from 'node:crypto';
import { randomOctets } from '../crypto/random.ts';
import { kept } from '../../io/kept.ts';
import { isIPv4 } from 'node:net';
import { type EndpointInfo, type MainModeInfo, mmSaId, type QuickModeInfo } from '../../audit/events.ts';
import type { IkePort } from '../../sa/bind.ts';
import type { Endpoint } from '../../sa/spec.ts';
import { childSpec } from '../child-spec.ts';
import { childEndedEvent, mainModeEndedEvent, mainModeInfoOf, quickModeInfoOf } from '../describe.ts';
import { IkeError, notifyName } from '../errors.ts';
import type { SessionHost as V2Host } from '../session.ts';
import type { ChildSa } from '../tasks/child-create.ts';
import {
  type TimedChildEntry,
  INSTALLED,
  type Lifetimes,
  type PeerConfig,
  type SessionState,
} from '../tasks/context.ts';
import type { Identity } from '../tasks/ike-auth.ts';
import { identityText, type PeerCertificate } from '../tasks/ike-cert.ts';
import type { Proposal } from '../wire/codec.ts';
import { NotifyType as V2Notify, ProtocolId as V2Protocol } from '../wire/constants.ts';
import {
  decodeV1Payloads,
  encodeV1Header,
  encodeV1Payloads,
  findV1,
  type HeaderFields,
  type V1Message,
  type V1Payload,
} from './codec.ts';
import { DOI_IPSEC, ExchangeType, Flags, NotifyType, PayloadType, ProtocolId } from './constants.ts';
import { decryptBody, encryptBody, exchangeIv, hash1, lastBlock, type Phase1Keys, type V1Suite } from './crypto.ts';
import { fragmentDatagram, fragmentMessage } from './fragment.ts';
import type { NattVariant, Phase1Choice } from './proposals.ts';
import type { KeyExchange } from '../crypto/ke.ts';
import type { SpiRegistry } from '../spi.ts';

/** What a session needs from the manager that owns it (the IKEv2 host's services and its own index). */
export interface V1Host extends Pick<V2Host, 'bind' | 'audit' | 'dataplane' | 'timing' | 'log'> {
  readonly spis: SpiRegistry;
  register(s: V1Session): void;
  unregister(s: V1Session): void;
  established(s: V1Session): void;
  childMoved(spiIn: number, s: V1Session | undefined): void;
  /** A newer established ISAKMP SA with the same peer and rule, which inherits this one's child SAs. */
  successor(s: V1Session): V1Session | undefined;
  /** The other established ISAKMP SAs with the same peer address and rule (their child SAs are one set). */
  siblings(s: V1Session): V1Session[];
  /** Starts a new Main Mode with the peer of `s` before `s` expires (make-before-break). */
  renewPhase1(s: V1Session): void;
  invalidPacket(remote: string, exchange: number, reason: string): void;
  /** The debug trace of decrypted payloads. */
  traceInner?(s: V1Session, dir: 'sent' | 'received', exchange: number, mid: number, payloads: V1Payload[]): void;
}

const hex = (b: Buffer) => b.toString('hex');
const spiNumber = (spi: Buffer): number => spi.readUInt32BE(0);
export const digestOf = (raw: Buffer): string => createHash('sha256').update(raw).digest('hex');
const NAT_KEEPALIVE = Buffer.from([0xff]);
const jitter = (ms: number) => Math.max(0, ms - Math.floor(Math.random() * Math.min(ms * 0.05, 30_000)));

/** A message we sent that expects an answer, retransmitted until it comes (or the waits run out). */
export class Retransmission {
  private timer?: NodeJS.Timeout;
  private n = 0;
  constructor(
    private readonly s: V1Session,
    private readonly raw: Buffer,
    private readonly waits: readonly number[],
    private readonly failed: (err: Error) => void,
  ) {
    this.s.send(raw);
    this.arm();
  }
  private arm(): void {
    const wait = this.waits[this.n];
    if (wait === undefined) {
      this.failed(new IkeError('the peer did not answer (retransmissions exhausted)', V2Notify.TEMPORARY_FAILURE));
      return;
    }
    this.timer = setTimeout(() => {
      this.n++;
      if (this.waits[this.n] !== undefined) this.s.send(this.raw);
      this.arm();
    }, wait);
  }
  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/** Quick Mode exchange state (quick-mode.ts fills it). */
export interface QuickExchange {
  mid: number;
  initiator: boolean;
  /** Our inbound SPI offered in it (an initiator's), by which an error notification names it. */
  spi?: Buffer;
  /** The IV of the exchange's next message (last cipher block so far). */
  iv: Buffer;
  /** Our retransmitted message and the answer we gave to the peer's last one (by digest). */
  retransmit?: Retransmission;
  answered?: { request: string; response: Buffer };
  done: boolean;
  /** The timer that forgets a finished exchange (its answers stay for retransmissions a while). */
  forget?: NodeJS.Timeout;
  /** The peer's message arrived: handled by the exchange's role. */
  receive(payloads: V1Payload[], raw: Buffer): void;
  fail(err: Error): void;
}

export class V1Session {
  readonly keyModule = 'IkeV1' as const;
  state: SessionState;
  readonly children = new Map<number, TimedChildEntry>();
  lifetimes: Lifetimes;
  peerId?: Identity;
  peerCertificate?: PeerCertificate;
  readonly startedAt = Date.now();
  establishedAt = 0;
  lastInbound = Date.now();
  readonly cookieI: Buffer;
  cookieR: Buffer;
  local: Endpoint;
  remote: Endpoint;
  /** Main Mode: what both sides' hashes and keys come from. */
  natt: NattVariant = 'none';
  natLocal = false;
  natRemote = false;
  forceEncapsulation = false;
  /** Main Mode message 1 says this host speaks AuthIP too (MS-MamieExists: an AuthIP one goes alongside). */
  announceAuthIp = false;
  // Declared before the promise: a field initialised after it would overwrite what its executor set.
  markAnswered: () => void = () => {};
  /** Resolves when the responder answered Main Mode message 1 with its choice (message 2). */
  readonly peerAnswered: Promise<void> = new Promise((resolve) => (this.markAnswered = resolve));
  /** The peer sent Windows' Vid-Initial-Contact in message 1 (MS-IKEE §3.5). */
  initialContactVid = false;
  /** The peer announced DPD (RFC 3706). */
  peerDpd = false;
  /** The peer announced IKE fragmentation (MS-IKEE §3.3): our large Main Mode messages go in fragments. */
  peerFragmentation = false;
  private fragmentId = 0;
  saiBody?: Buffer;
  choice?: Phase1Choice;
  ke?: KeyExchange;
  gxi?: Buffer;
  gxr?: Buffer;
  ni?: Buffer;
  nr?: Buffer;
  keys?: Phase1Keys;
  /** Main Mode's IV chain; after MM6, its last cipher block (the seed of every later exchange's IV). */
  iv?: Buffer;
  /** Main Mode's outstanding message and the answer to the peer's last one. */
  mmRetransmit?: Retransmission;
  mmAnswered?: { request: string; response: Buffer };
  /** Digests of the Main Mode messages handled so far (at most three): duplicates are dropped. */
  private readonly mmHandled: string[] = [];
  /** Main Mode's step handler for the next message (main-mode.ts), undefined once established. */
  mmNext?: (msg: V1Message) => void;
  /** Quick Mode exchanges by message ID. */
  readonly quick = new Map<number, QuickExchange>();
  /** Settles `established` for the initiator that waits on it. */
  private waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private timers: NodeJS.Timeout[] = [];
  private dpdSeq = randomOctets(4).readUInt32BE(0) & 0x7fffffff;
  private dpdPending?: { seq: number; timer: NodeJS.Timeout };

  constructor(
    readonly host: V1Host,
    readonly role: 'initiator' | 'responder',
    local: Endpoint,
    remote: Endpoint,
    public peer: PeerConfig,
    cookieI?: Buffer,
    /** A responder's cookie chosen before the SA exists (the DoS-protection cookie, MS-IKEE §3.9). */
    cookieR?: Buffer,
  ) {
    this.local = { ...local };
    this.remote = { ...remote };
    this.cookieI = cookieI ? Buffer.from(cookieI) : kept(randomOctets(8));
    this.cookieR = role === 'responder' ? (cookieR ? Buffer.from(cookieR) : kept(randomOctets(8))) : Buffer.alloc(8);
    this.state = role === 'initiator' ? 'connecting' : 'half-open';
    this.lifetimes = { ...defaultLifetimes, ...peer.lifetimes };
  }

  /** The IKEv2-shaped view the SA views and the keying service read (`sa.spiI` … as IkeSession). */
  get sa() {
    return {
      spiI: this.cookieI,
      spiR: this.cookieR,
      localSpi: this.localCookie,
      local: this.local,
      remote: this.remote,
      floated: this.floated,
      chosen: this.choice?.proposal as Proposal | undefined,
      role: this.role,
    };
  }

  get localCookie(): Buffer {
    return this.role === 'initiator' ? this.cookieI : this.cookieR;
  }

  get floated(): boolean {
    return this.natLocal || this.natRemote;
  }

  get suite(): V1Suite {
    const s = this.choice?.suite;
    if (!s) throw new IkeError('no Phase 1 suite yet', V2Notify.INVALID_SYNTAX);
    return s;
  }

  get phase1(): Phase1Keys {
    if (!this.keys) throw new IkeError('no Phase 1 keys yet', V2Notify.INVALID_SYNTAX);
    return this.keys;
  }

  header(exchange: number, messageId: number, encrypted: boolean): HeaderFields {
    return {
      cookieI: this.cookieI,
      cookieR: this.cookieR,
      exchange,
      flags: encrypted ? Flags.ENCRYPTION : 0,
      messageId,
    };
  }

  /**
   * Sends a message to the peer (from 4500 once floated, RFC 3947 §4); a Main Mode message too large
   * for one 576-octet (IPv6: 1280) datagram goes in fragments to a peer that announced them.
   */
  send(raw: Buffer): void {
    const port = this.local.port === 4500 ? 4500 : 500;
    const parts =
      this.peerFragmentation && raw[18] === ExchangeType.IDENTITY_PROTECTION
        ? fragmentMessage(
            raw,
            (this.fragmentId = (this.fragmentId % 0xffff) + 1),
            fragmentDatagram(this.remote.address),
            port,
            !isIPv4(this.remote.address),
          )
        : undefined;
    for (const m of parts ?? [raw]) this.host.bind.sendIke(m, port, this.remote);
  }

  /** Encrypts a payload chain with `iv`; returns the message and the next IV (its last cipher block). */
  protect(exchange: number, mid: number, payloads: V1Payload[], iv: Buffer): { raw: Buffer; iv: Buffer } {
    this.host.traceInner?.(this, 'sent', exchange, mid, payloads);
    const plain = encodeV1Payloads(payloads);
    const cipher = encryptBody(this.suite, this.phase1.encKey, iv, plain);
    const raw = Buffer.concat([
      encodeV1Header(this.header(exchange, mid, true), payloads[0]?.type ?? 0, cipher.length),
      cipher,
    ]);
    return { raw, iv: lastBlock(cipher) };
  }

  /** Decrypts a protected message with `iv`; returns its payloads and the next IV. Throws on garbage. */
  open(msg: V1Message, iv: Buffer): { payloads: V1Payload[]; iv: Buffer } {
    if (!(msg.header.flags & Flags.ENCRYPTION))
      throw new IkeError('an unencrypted message where a protected one belongs', V2Notify.INVALID_SYNTAX);
    const plain = decryptBody(this.suite, this.phase1.encKey, iv, msg.body);
    const payloads = decodeV1Payloads(msg.header.nextPayload, plain);
    this.host.traceInner?.(this, 'received', msg.header.exchange, msg.header.messageId, payloads);
    return { payloads, iv: lastBlock(msg.body) };
  }

  /**
   * A HASH(1)-protected message (Quick Mode's first, Informational): the HASH payload goes first,
   * computed over the payloads after it with `hashOf`, then the message is encrypted.
   */
  protectHashed(
    exchange: number,
    mid: number,
    rest: V1Payload[],
    hashOf: (restBytes: Buffer) => Buffer,
    iv: Buffer,
  ): { raw: Buffer; iv: Buffer } {
    const restBytes = encodeV1Payloads(rest);
    const hash: V1Payload = { type: PayloadType.HASH, data: hashOf(restBytes) };
    return this.protect(exchange, mid, [hash, ...rest], iv);
  }

  // ---- receive ---------------------------------------------------------------------------------

  /** A message for this SA (cookies matched by the manager). */
  receive(msg: V1Message, from: Endpoint, port: IkePort): void {
    const h = msg.header;
    if (h.exchange === ExchangeType.IDENTITY_PROTECTION) {
      const digest = digestOf(msg.raw);
      if (this.mmAnswered?.request === digest) {
        this.send(this.mmAnswered.response);
        return;
      }
      if (!this.mmNext) return; // a late Main Mode message after the SA is up
      // A message handled already (the peer resent it: its copy of ours crossed a retransmission)
      // is not the next one: dropped, never taken as a malformed next message.
      if (this.mmHandled.includes(digest)) return;
      this.mmHandled.push(digest);
      if (port === 4500 && this.local.port !== 4500) this.floatTo(from);
      this.mmNext(msg);
      return;
    }
    // An unprotected refusal (NO-PROPOSAL-CHOSEN …) of our Main Mode before any keys exist: only an
    // on-path party knows our cookie, and it could drop our messages anyway, so the reason is taken.
    if (
      h.exchange === ExchangeType.INFORMATIONAL &&
      !this.keys &&
      this.role === 'initiator' &&
      this.mmNext &&
      from.address === this.remote.address &&
      (h.flags & Flags.ENCRYPTION) === 0
    ) {
      this.mmNext(msg);
      return;
    }
    if (this.state !== 'established' || !this.keys || !this.iv) return;
    if (h.exchange === ExchangeType.QUICK_MODE) {
      this.receiveQuick(msg);
      return;
    }
    if (h.exchange === ExchangeType.INFORMATIONAL) {
      this.receiveInformational(msg);
      return;
    }
    this.host.invalidPacket(this.remote.address, h.exchange, `exchange type ${h.exchange} is not supported`);
  }

  /** Main Mode messages 1–4 are clear; 5 and 6 continue the Phase 1 IV chain. */
  decodeMainMode(msg: V1Message): V1Payload[] {
    if (!(msg.header.flags & Flags.ENCRYPTION)) return decodeV1Payloads(msg.header.nextPayload, msg.body);
    if (!this.iv) throw new IkeError('an encrypted Main Mode message before the key exchange', V2Notify.INVALID_SYNTAX);
    const opened = this.open(msg, this.iv);
    this.iv = opened.iv;
    return opened.payloads;
  }

  /** Moves the SA to UDP 4500 (NAT-T float, RFC 3947 §4): our side and the peer's mapped port. */
  floatTo(remote?: Endpoint): void {
    this.local = { ...this.local, port: 4500 };
    this.remote = remote ? { ...remote } : { ...this.remote, port: 4500 };
  }

  private receiveQuick(msg: V1Message): void {
    const mid = msg.header.messageId;
    const x = this.quick.get(mid);
    const digest = digestOf(msg.raw);
    if (x?.answered?.request === digest) {
      this.send(x.answered.response);
      return;
    }
    if (x?.done) return;
    if (mid === 0) return;
    let iv: Buffer;
    if (x) iv = x.iv;
    else iv = exchangeIv(this.suite, this.iv as Buffer, mid);
    let opened: { payloads: V1Payload[]; iv: Buffer };
    try {
      opened = this.open(msg, iv);
    } catch (err) {
      this.host.invalidPacket(this.remote.address, ExchangeType.QUICK_MODE, (err as Error).message);
      return;
    }
    if (x) {
      x.iv = opened.iv;
      x.receive(opened.payloads, msg.raw);
      return;
    }
    this.onQuickRequest?.(mid, opened.payloads, opened.iv, digest);
  }

  /** Set by quick-mode.ts: the responder half, for a Quick Mode exchange the peer starts. */
  onQuickRequest?: (mid: number, payloads: V1Payload[], iv: Buffer, digest: string) => void;

  /** Keeps a finished exchange's answers a while for the peer's retransmissions, then forgets it. */
  finishQuick(x: QuickExchange): void {
    x.done = true;
    x.retransmit?.stop();
    clearTimeout(x.forget);
    x.forget = setTimeout(() => this.quick.delete(x.mid), 30_000);
    x.forget.unref();
  }

  // ---- Informational ---------------------------------------------------------------------------

  private receiveInformational(msg: V1Message): void {
    const mid = msg.header.messageId;
    let payloads: V1Payload[];
    try {
      payloads = this.open(msg, exchangeIv(this.suite, this.iv as Buffer, mid)).payloads;
    } catch (err) {
      this.host.invalidPacket(this.remote.address, ExchangeType.INFORMATIONAL, (err as Error).message);
      return;
    }
    const hash = payloads[0];
    const rest = payloads.slice(1);
    const expected = hash1(this.suite, this.phase1.a, mid, Buffer.concat(rest.map((p) => p.raw as Buffer)));
    if (hash?.type !== PayloadType.HASH || !hash.data.equals(expected)) {
      this.host.invalidPacket(
        this.remote.address,
        ExchangeType.INFORMATIONAL,
        'Informational message with a wrong HASH(1)',
      );
      return;
    }
    this.lastInbound = Date.now();
    for (const p of rest) {
      if (p.type === PayloadType.D) this.peerDeleted(p);
      else if (p.type === PayloadType.N) this.peerNotified(p);
    }
  }

  private peerDeleted(d: Extract<V1Payload, { type: PayloadType.D }>): void {
    if (d.protocol === ProtocolId.ISAKMP) {
      if (
        d.spis.some(
          (s) => s.length === 16 && s.subarray(0, 8).equals(this.cookieI) && s.subarray(8).equals(this.cookieR),
        )
      )
        this.terminate('deleted by the peer');
      return;
    }
    // IPsec SAs do not belong to the ISAKMP SA that made them: a peer deletes one over whichever
    // ISAKMP SA it holds with us (charon moves a reauthenticated SA's children to the new one and
    // deletes them there), so the SPI is looked up among all of them.
    const owners = [this, ...this.host.siblings(this)];
    for (const spi of d.spis) {
      if (spi.length !== 4) continue;
      for (const owner of owners) {
        const e = [...owner.children.values()].find(
          (x) => x.child.spiOut.equals(spi) && protocolOf(x.child) === d.protocol,
        );
        if (e) {
          owner.removeChild(e, 'deleted by the peer');
          break;
        }
      }
    }
  }

  private peerNotified(n: Extract<V1Payload, { type: PayloadType.N }>): void {
    if (n.notify === NotifyType.R_U_THERE && n.data.length === 4) {
      // RFC 3706 §5.3: answer with R-U-THERE-ACK carrying the same sequence number.
      this.informational([this.notifyPayload(NotifyType.R_U_THERE_ACK, n.data)]);
      return;
    }
    if (n.notify === NotifyType.R_U_THERE_ACK && n.data.length === 4 && this.dpdPending) {
      if (n.data.readUInt32BE(0) === this.dpdPending.seq) {
        clearTimeout(this.dpdPending.timer);
        this.dpdPending = undefined;
      }
      return;
    }
    if (n.notify >= 16384) return;
    this.log('error notification from the peer', { notify: NotifyType[n.notify] ?? n.notify });
    // A refused Quick Mode: the notification names the SPI we offered (or, failing that, the only
    // exchange of ours still waiting).
    const waiting = [...this.quick.values()].filter((x) => x.initiator && !x.done);
    const x = waiting.find((q) => q.spi && n.spi.equals(q.spi)) ?? (waiting.length === 1 ? waiting[0] : undefined);
    if (!x) return;
    x.retransmit?.stop();
    this.finishQuick(x);
    x.fail(
      new IkeError(
        `the peer refused Quick Mode: ${NotifyType[n.notify] ?? n.notify}`,
        n.notify === NotifyType.NO_PROPOSAL_CHOSEN ? V2Notify.NO_PROPOSAL_CHOSEN : V2Notify.TS_UNACCEPTABLE,
        true,
      ),
    );
  }

  /** An ISAKMP-SA notification (cookies as SPI), as DPD and INITIAL-CONTACT carry them. */
  notifyPayload(type: NotifyType, data: Buffer = Buffer.alloc(0)): V1Payload {
    return {
      type: PayloadType.N,
      doi: DOI_IPSEC,
      protocol: ProtocolId.ISAKMP,
      spi: Buffer.concat([this.cookieI, this.cookieR]),
      notify: type,
      data,
    };
  }

  /** Sends a protected Informational exchange (HASH(1) first, RFC 2409 §5.7). */
  informational(payloads: V1Payload[]): void {
    if (!this.keys || !this.iv) return;
    const mid = randomOctets(4).readUInt32BE(0) || 1;
    const { raw } = this.protectHashed(
      ExchangeType.INFORMATIONAL,
      mid,
      payloads,
      (rest) => hash1(this.suite, this.phase1.a, mid, rest),
      exchangeIv(this.suite, this.iv, mid),
    );
    this.send(raw);
  }

  // ---- life cycle ------------------------------------------------------------------------------

  /** Resolves when Main Mode completes (initiator), rejects when it fails. */
  whenEstablished(): Promise<void> {
    if (this.state === 'established') return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /** Main Mode completed: audit 4650 (4651 with certificates), timers, waiters. */
  established(): void {
    const from = this.state;
    this.state = 'established';
    this.establishedAt = Date.now();
    this.mmNext = undefined;
    this.host.audit.emit(
      this.peer.credentials.method === 'cert'
        ? { id: 4651, subcategory: 'IPsec Main Mode', success: true, mainMode: this.mainModeInfo() }
        : { id: 4650, subcategory: 'IPsec Main Mode', success: true, mainMode: this.mainModeInfo() },
    );
    this.log('ISAKMP SA established', { from, nat: this.floated, natt: this.natt });
    this.startTimers();
    this.host.established(this);
    for (const w of this.waiters.splice(0)) w.resolve();
  }

  private startTimers(): void {
    const at = (ms: number, fn: () => void) => {
      const t = setTimeout(fn, ms);
      t.unref();
      this.timers.push(t);
    };
    // Phase 1 renewal (make-before-break): the initiator at 90 % of the lifetime, the responder at
    // 95 % in case the initiator does not (a Windows initiator's lifetime may be longer than ours).
    // The new ISAKMP SA inherits the child SAs; the old one is deleted at the peer once it is up.
    at(jitter(this.lifetimes.ikeExpireMs * (this.role === 'initiator' ? 0.9 : 0.95)), () => {
      if (this.state === 'established' && !this.host.successor(this)) this.host.renewPhase1(this);
    });
    at(this.lifetimes.ikeExpireMs, () => {
      const heir = this.host.successor(this);
      if (heir) this.retire(heir);
      else void this.delete('lifetime expired');
    });
    if (this.natLocal && !this.forceEncapsulation) {
      const t = setInterval(() => {
        if (this.state === 'established') this.host.bind.sendUdp4500(NAT_KEEPALIVE, this.remote);
      }, this.host.timing.natKeepaliveMs);
      t.unref();
      this.timers.push(t);
    }
    const dpd = this.host.timing.dpdMs;
    if (dpd > 0 && this.peerDpd) {
      const t = setInterval(() => this.liveness(dpd), Math.max(50, Math.floor(dpd / 4)));
      t.unref();
      this.timers.push(t);
    }
  }

  /** RFC 3706: after `idleMs` without traffic from the peer, R-U-THERE; no ACK after the retransmissions → dead. */
  private liveness(idleMs: number): void {
    if (this.state !== 'established' || this.dpdPending || Date.now() - this.lastInbound < idleMs) return;
    const seq = ++this.dpdSeq >>> 0;
    const data = Buffer.alloc(4);
    data.writeUInt32BE(seq, 0);
    const waits = this.host.timing.retransmits;
    let n = 0;
    const probe = () => {
      this.informational([this.notifyPayload(NotifyType.R_U_THERE, data)]);
      const wait = waits[n++];
      const timer = setTimeout(() => {
        if (this.dpdPending?.seq !== seq) return;
        if (n < waits.length) probe();
        else {
          this.dpdPending = undefined;
          this.terminate('the peer is not responding (DPD)');
        }
      }, wait ?? 0);
      timer.unref();
      this.dpdPending = { seq, timer };
    };
    probe();
  }

  /** ESP from the peer arrived on one of our children: it is alive, and has that SA. */
  noteInbound(spiIn?: number): void {
    this.lastInbound = Date.now();
    if (spiIn !== undefined) this.activate(spiIn);
  }

  /** Child SAs (by inbound SPI) whose outbound use waits for the peer to have them, and who waits. */
  private readonly inactive = new Map<number, { timer: NodeJS.Timeout; waiters: (() => void)[] }>();

  /**
   * Quick Mode has no acknowledgement of message 3: the initiator's SA carries outbound traffic
   * once ESP arrived on it, or once the peer had the time to process message 3 (its first
   * retransmission wait, after which it would have resent message 2 had message 3 been lost).
   */
  private holdOutbound(key: number): void {
    const timer = setTimeout(() => this.activate(key), this.host.timing.retransmits[0] ?? 500);
    timer.unref();
    this.inactive.set(key, { timer, waiters: [] });
  }

  private activate(key: number): void {
    const held = this.inactive.get(key);
    if (!held) return;
    this.inactive.delete(key);
    clearTimeout(held.timer);
    if (this.children.has(key)) this.host.dataplane.activate?.(key);
    for (const w of held.waiters) w();
  }

  /**
   * A renewal's new child SA, still waiting to carry outbound traffic: Quick Mode message 3 is not
   * acknowledged, so while the peer keeps sending on the SA this one replaces and never on this one,
   * the peer does not have it (message 3 lost, or dropped by a peer busy replacing the ISAKMP SA it
   * came on — charon does). It carries traffic once ESP arrives on it or the peer goes quiet on the
   * old SA; after `confirmMs` of the peer using only the old SA, `abandoned` is called instead.
   */
  confirmRenewal(fresh: TimedChildEntry, old: TimedChildEntry, confirmMs: number, abandoned: () => void): void {
    const key = spiNumber(fresh.child.spiIn);
    const held = this.inactive.get(key);
    const counters = this.host.dataplane.counters?.bind(this.host.dataplane);
    if (!held || !counters) return;
    const count = (spi: number) => counters(spi)?.packetsIn;
    clearTimeout(held.timer);
    const step = this.host.timing.retransmits[0] ?? 500;
    const start = Date.now();
    const oldKey = spiNumber(old.child.spiIn);
    let before = count(oldKey);
    const tick = () => {
      if (this.inactive.get(key) !== held) return;
      const now = count(oldKey);
      if (now === undefined || now === before) {
        this.activate(key);
        return;
      }
      before = now;
      if (Date.now() - start >= confirmMs) {
        abandoned();
        return;
      }
      held.timer = setTimeout(tick, step);
      held.timer.unref();
    };
    held.timer = setTimeout(tick, step);
    held.timer.unref();
  }

  /** Resolves once outbound traffic may use the child SA. */
  outboundReady(entry: TimedChildEntry): Promise<void> {
    const held = this.inactive.get(spiNumber(entry.child.spiIn));
    return held ? new Promise((resolve) => held.waiters.push(resolve)) : Promise.resolve();
  }

  fail(err: Error): void {
    for (const w of this.waiters.splice(0)) w.reject(err);
    this.terminate('negotiation failed', err);
  }

  /** Deletes the child SAs and the ISAKMP SA at the peer (Informational Deletes), then locally. */
  async delete(reason = 'deleted'): Promise<void> {
    if (this.state === 'dead' || this.state === 'deleting') return;
    if (this.state === 'established') {
      for (const e of [...this.children.values()]) void this.deleteChild(e, reason);
      this.deleteIsakmpSa();
    }
    this.terminate(reason);
  }

  /**
   * Hands the child SAs to `heir` (a newer ISAKMP SA with the same peer), deletes this ISAKMP SA at
   * the peer — only the ISAKMP SA: IPsec SAs do not depend on the ISAKMP SA that made them — and ends it.
   */
  retire(heir: V1Session): void {
    if (this.state !== 'established') return;
    heir.adoptChildren(this);
    this.deleteIsakmpSa();
    this.terminate('rekeyed');
  }

  /** The Informational Delete of this ISAKMP SA (its cookies, RFC 2408 §3.15). */
  private deleteIsakmpSa(): void {
    this.informational([
      {
        type: PayloadType.D,
        doi: DOI_IPSEC,
        protocol: ProtocolId.ISAKMP,
        spiSize: 16,
        spis: [Buffer.concat([this.cookieI, this.cookieR])],
      },
    ]);
  }

  /** Takes over the child SAs of `from` (an ISAKMP SA with the same peer that ends): timers re-armed here. */
  adoptChildren(from: V1Session): void {
    if (from.children.size === 0) return;
    for (const [key, e] of [...from.children]) {
      from.release(key);
      this.children.set(key, e);
      this.host.childMoved(key, this);
      this.armExpiry(key, e);
      this.armChildRekey?.(e);
    }
    this.log('child SAs adopted', { from: `${hex(from.cookieI)}/${hex(from.cookieR)}`, children: this.children.size });
  }

  /** Lets go of a child SA that another ISAKMP SA adopts: no Delete, no audit, still in the data plane. */
  private release(key: number): void {
    const e = this.children.get(key);
    if (!e) return;
    this.activate(key);
    this.children.delete(key);
    for (const t of e.timers) clearTimeout(t);
    e.timers = [];
  }

  /**
   * Deletes one child SA at the peer (Delete of our inbound SPI) and locally; the Delete goes over
   * `via` (an ISAKMP SA with the same peer, by default the one holding the child).
   */
  deleteChild(e: TimedChildEntry, reason: string, via: V1Session = this): Promise<void> {
    if (via.state === 'established')
      via.informational([
        { type: PayloadType.D, doi: DOI_IPSEC, protocol: protocolOf(e.child), spiSize: 4, spis: [e.child.spiIn] },
      ]);
    this.removeChild(e, reason);
    return Promise.resolve();
  }

  /** Ends the SA locally: children out of the data plane, timers stopped, audit 4655. */
  terminate(reason: string, failure?: Error): void {
    if (this.state === 'dead') return;
    for (const t of this.timers) clearTimeout(t);
    this.timers = [];
    clearTimeout(this.dpdPending?.timer);
    this.mmRetransmit?.stop();
    for (const x of this.quick.values()) {
      x.retransmit?.stop();
      clearTimeout(x.forget);
      if (!x.done) x.fail(failure ?? new IkeError(`the ISAKMP SA ended: ${reason}`, V2Notify.TEMPORARY_FAILURE));
    }
    this.quick.clear();
    // The peer deleted or let expire this ISAKMP SA after making a newer one: the children live on there.
    const heir = this.children.size > 0 ? this.host.successor(this) : undefined;
    // But a child this SA made after the newer one had begun may be gone at the peer without a
    // Delete: strongSwan moves a reauthenticated SA's children at once, so a Quick Mode that ends
    // on the old SA afterwards leaves its child there, and deleting that SA destroys it silently.
    // Such a child is renewed over the heir at once (make-before-break), never waited out.
    const late =
      heir && reason === 'deleted by the peer'
        ? [...this.children.values()].filter((e) => e.installedAt >= heir.startedAt && e.state.kind === 'installed')
        : [];
    if (heir) heir.adoptChildren(this);
    for (const e of late) {
      this.log('child SA renewed at once: made on an ISAKMP SA the peer deleted after starting a newer one', {
        spiIn: e.child.spiIn.toString('hex'),
      });
      heir?.renewChild?.(e);
    }
    for (const e of [...this.children.values()]) this.removeChild(e, reason);
    const wasUp = this.establishedAt > 0;
    this.state = 'dead';
    for (const w of this.waiters.splice(0))
      w.reject(failure ?? new IkeError(`the ISAKMP SA ended: ${reason}`, V2Notify.TEMPORARY_FAILURE));
    this.host.unregister(this);
    if (wasUp) this.host.audit.emit(mainModeEndedEvent(this, 'IKEv1', this.localCookie, reason));
    this.log('ISAKMP SA ended', { reason });
  }

  // ---- child SAs -------------------------------------------------------------------------------

  /** Installs a child SA from Quick Mode: data plane, lifetimes, audit 5451. */
  installChild(child: ChildSa, life: { seconds: number; kilobytes?: number }): TimedChildEntry {
    const now = Date.now();
    const expireMs =
      life.seconds > 0 ? Math.min(life.seconds * 1000, this.lifetimes.childExpireMs) : this.lifetimes.childExpireMs;
    const entry: TimedChildEntry = {
      child,
      state: INSTALLED,
      installedAt: now,
      rekeyAt: now + jitter(expireMs * 0.9),
      expireAt: now + expireMs,
      timers: [],
    };
    const key = spiNumber(child.spiIn);
    this.children.set(key, entry);
    this.host.childMoved(key, this);
    this.host.dataplane.install(
      childSpec(child, {
        local: this.local,
        remote: this.remote,
        udpEncapsulation: this.floated,
        maxKilobytes: life.kilobytes ?? this.lifetimes.childKilobytes,
        outboundActive: !child.initiator,
      }),
    );
    if (child.initiator) this.holdOutbound(key);
    this.armExpiry(key, entry);
    this.host.audit.emit({
      id: 5451,
      subcategory: 'IPsec Quick Mode',
      success: true,
      quickMode: this.quickModeInfo(child),
    });
    this.log('child SA installed', { spiIn: hex(child.spiIn), spiOut: hex(child.spiOut), mode: child.mode });
    this.onChildInstalled?.(entry);
    return entry;
  }

  /** Set by quick-mode.ts: a new child SA supersedes older ones with its selectors and is armed for rekey. */
  onChildInstalled?: (entry: TimedChildEntry) => void;
  /** Set by quick-mode.ts: arms the rekey of a child SA this side is to renew. */
  armChildRekey?: (entry: TimedChildEntry) => void;
  /** Set by quick-mode.ts: renews a child SA now (Quick Mode on the newest ISAKMP SA, retried while it lives). */
  renewChild?: (entry: TimedChildEntry) => void;

  private armExpiry(key: number, entry: TimedChildEntry): void {
    const expire = setTimeout(
      () => {
        if (this.children.get(key) === entry) void this.deleteChild(entry, 'lifetime expired');
      },
      Math.max(0, entry.expireAt - Date.now()),
    );
    expire.unref();
    entry.timers.push(expire);
  }

  removeChild(entry: TimedChildEntry, reason: string): void {
    const key = spiNumber(entry.child.spiIn);
    if (this.children.get(key) !== entry) return;
    this.children.delete(key);
    this.host.childMoved(key, undefined);
    for (const t of entry.timers) clearTimeout(t);
    this.activate(key);
    this.host.dataplane.delete(key);
    this.host.spis.release(entry.child.spiIn);
    this.host.audit.emit(childEndedEvent(this.quickModeInfo(entry.child), reason));
    this.log('child SA removed', { spiIn: hex(entry.child.spiIn), reason });
  }

  /** A Quick Mode failure (audit 4654). */
  childFailed(err: Error, mid: number): void {
    this.host.audit.emit({
      id: 4654,
      subcategory: 'IPsec Quick Mode',
      success: false,
      local: this.endpoint('local'),
      remote: this.endpoint('remote'),
      keyingModule: 'IKEv1',
      role: this.role === 'initiator' ? 'Initiator' : 'Responder',
      mmSaId: mmSaId(this.localCookie),
      failure: {
        failurePoint: err instanceof IkeError && err.fromPeer ? 'Remote computer' : 'Local computer',
        failureReason: err.message,
        state: 'Quick mode',
        notify: err instanceof IkeError ? notifyName(err.notify) : undefined,
        messageId: mid,
      },
    });
    this.log('quick mode failed', { mid, reason: err.message });
  }

  // ---- views ------------------------------------------------------------------------------------

  endpoint(side: 'local' | 'remote'): EndpointInfo {
    const ep = side === 'local' ? this.local : this.remote;
    const id = side === 'local' ? this.peer.localId : this.peerId;
    return { address: ep.address, port: ep.port, principal: id ? identityText(id) : undefined };
  }

  mainModeInfo(): MainModeInfo {
    return mainModeInfoOf(this, 'IKEv1', this.localCookie, this.choice?.proposal);
  }

  quickModeInfo(child: ChildSa): QuickModeInfo {
    return quickModeInfoOf(this, 'IKEv1', this.localCookie, child);
  }

  log(event: string, detail?: Record<string, unknown>): void {
    this.host.log(event, { ike: 'v1', cookies: `${hex(this.cookieI)}/${hex(this.cookieR)}`, ...detail });
  }
}

/** The IKEv1 protocol of a child SA (the SPI's protocol in Delete payloads). */
export const protocolOf = (c: ChildSa): number =>
  c.proposal.protocol === V2Protocol.AH ? ProtocolId.AH : ProtocolId.ESP;

/** Windows defaults: main mode 480 minutes, quick mode 60 minutes. */
const defaultLifetimes: Lifetimes = {
  ikeRekeyMs: 432 * 60_000,
  ikeExpireMs: 480 * 60_000,
  childRekeyMs: 54 * 60_000,
  childExpireMs: 60 * 60_000,
  childKilobytes: 100_000,
};

export { findV1 };
