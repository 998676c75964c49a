/**
 * One IKE SA at run time, in either role: its task manager (strongSwan's task_manager: tasks queued,
 * one active at a time — the window of one request, retransmitted with back-off, §2.1–2.3 — and
 * moved to the new IKE SA when this one is rekeyed), the response cache for retransmitted requests,
 * the child SAs with their lifetimes, liveness checks, and the peer's requests after IKE_AUTH. The
 * exchange concerns live in tasks/ (child-create, child-rekey, ike-rekey, ike-delete, ike-dpd) and
 * see this session only through `TaskSession` (tasks/context.ts). The manager (manager.ts) owns
 * sessions by SPI and creates them.
 */
import { createHash } from 'node:crypto';
import { kept } from '../io/kept.ts';
import { mmSaId, type AuditSink, type EndpointInfo, type MainModeInfo, type QuickModeInfo } from '../audit/events.ts';
import type { IkeBind, IkePort } from '../sa/bind.ts';
import type { ChildSaSink } from '../sa/sink.ts';
import { childSpec } from './child-spec.ts';
import type { DeadlineOwner, Deadlines } from './deadlines.ts';
import { childEndedEvent, mainModeEndedEvent, mainModeInfoOf, quickModeInfoOf } from './describe.ts';
import { fragmentOf, openFragment, openMessage, protectFragmented, Reassembly } from './crypto/sk.ts';
import { IkeError, notifyName } from './errors.ts';
import type { Endpoint, IkeSa } from './sa.ts';
import type { ChildSa } from './tasks/child-create.ts';
import { ChildRekeyTask, respondCreateChild } from './tasks/child-rekey.ts';
import {
  type ChildEntry,
  type ChildState,
  INSTALLED,
  type Lifetimes,
  type PeerConfig,
  type SessionState,
  type SessionTask,
  type TaskSession,
} from './tasks/context.ts';
import type { Authenticated, Identity } from './tasks/ike-auth.ts';
import { identityText, type PeerCertificate } from './tasks/ike-cert.ts';
import { ChildDeleteTask, IkeDeleteTask, respondInformational } from './tasks/ike-delete.ts';
import { LivenessTask } from './tasks/ike-dpd.ts';
import { IkeRekeyTask, respondIkeRekey } from './tasks/ike-rekey.ts';
import { findPayload, notify } from './tasks/task.ts';
import type { IkeMessage, Payload } from './wire/codec.ts';
import { ExchangeType, Flags, NotifyType, PayloadType, ProtocolId } from './wire/constants.ts';

/** How a cached response recognises a retransmitted request: SHA-256 of the datagram. */
const requestDigest = (raw: Buffer): Buffer => createHash('sha256').update(raw).digest();

export type { ChildEntry, ChildState, Lifetimes, PeerConfig, SessionState } from './tasks/context.ts';

/** Windows defaults: main mode 480 minutes, quick mode 60 minutes; rekey at 90 %. */
export const DEFAULT_LIFETIMES: Lifetimes = Object.freeze({
  ikeRekeyMs: 432 * 60_000,
  ikeExpireMs: 480 * 60_000,
  childRekeyMs: 54 * 60_000,
  childExpireMs: 60 * 60_000,
  childKilobytes: 100_000,
});

export interface Timing {
  /** Waits between transmissions of a request; the exchange fails after the last. */
  retransmits: number[];
  /** A liveness check after this long without an authenticated message or ESP from the peer (0: off). */
  dpdMs: number;
  /** NAT keepalive interval when we are behind a NAT. */
  natKeepaliveMs: number;
}

/** What a session needs from the manager that owns it. */
export interface SessionHost {
  readonly bind: IkeBind;
  readonly audit: AuditSink;
  readonly dataplane: ChildSaSink;
  readonly timing: Timing;
  /** Largest IP datagram an IKE fragment may take (RFC 7383; strongSwan's fragment_size). */
  readonly fragmentSize: number;
  /** The one timer of all the manager's IKE SAs (rekeys, expiries, keepalives, liveness checks). */
  readonly deadlines: Deadlines;
  log(event: string, detail?: Record<string, unknown>): void;
  /** Indexes a session under its local SPI (a new one after an IKE rekey). */
  register(s: IkeSession): void;
  unregister(s: IkeSession): void;
  /** The session's state moved on (for half-open accounting and callbacks). */
  changed(s: IkeSession, from: SessionState): void;
  /** A child SA was installed (IKE_AUTH, CREATE_CHILD_SA or rekey). */
  childUp?(s: IkeSession, child: ChildSa): void;
  /** A child SA (by inbound SPI) now belongs to `s`, or is gone (undefined). */
  childMoved?(spiIn: number, s: IkeSession | undefined): void;
  /** An invalid (unauthentic) message from the peer, for the 4976/4977 audit events. */
  invalidPacket?(remote: string, exchange: number, reason: string): void;
  /** The debug trace of a protected message's payloads, before encryption or after decryption. */
  traceInner?(
    s: IkeSession,
    dir: 'sent' | 'received',
    exchange: number,
    mid: number,
    response: boolean,
    payloads: Payload[],
  ): void;
}

/** A queued task and the promise its caller waits on. */
interface Queued {
  task: SessionTask;
  resolve: () => void;
  reject: (err: Error) => void;
}

const hex = (b: Buffer) => b.toString('hex');
const spiNumber = (spi: Buffer): number => spi.readUInt32BE(0);
const NAT_KEEPALIVE = Buffer.from([0xff]);
const jitter = (ms: number) => Math.max(0, ms - Math.floor(Math.random() * Math.min(ms * 0.05, 30_000)));

/** Lifetimes with the defaults filled in, one frozen object per lifetimes object given (plans share theirs). */
const completed = new WeakMap<Partial<Lifetimes>, Lifetimes>();
function completeLifetimes(given: Partial<Lifetimes> | undefined): Lifetimes {
  if (!given) return DEFAULT_LIFETIMES;
  let l = completed.get(given);
  if (!l) {
    l = Object.freeze({ ...DEFAULT_LIFETIMES, ...given });
    completed.set(given, l);
  }
  return l;
}

export class IkeSession implements TaskSession, DeadlineOwner {
  state: SessionState;
  /** Child SAs by inbound SPI. */
  readonly children = new Map<number, ChildEntry>();
  lifetimes: Lifetimes;
  /** Who the peer proved to be, once IKE_AUTH is done. */
  peerId?: Identity;
  peerCertificate?: PeerCertificate;
  /** When this IKE SA's negotiation began (its first IKE_SA_INIT sent or received). */
  readonly startedAt = Date.now();
  establishedAt = 0;
  /** Last authenticated IKE message or ESP packet from the peer (ms since epoch). */
  lastInbound = Date.now();
  /** The IKE SA that replaces this one (after a rekey). */
  successor?: IkeSession;
  /** Tasks waiting for the request window, and the one holding it. */
  private readonly tasks: Queued[] = [];
  private active?: SessionTask;
  private outstanding?: {
    mid: number;
    accept: (m: IkeMessage, inner?: Payload[]) => boolean;
    timer?: NodeJS.Timeout;
    fail: (e: Error) => void;
  };
  /**
   * Our answer to the peer's last request (§2.1: sent again for a retransmission of it): the
   * request's datagrams as SHA-256 digests one after the other, and our datagram(s).
   */
  private lastResponse?: { mid: number; digests: Buffer; responses: Buffer | Buffer[] };
  /** Fragments (RFC 7383) of a response to our request, and of the peer's current request. */
  private responseParts?: Reassembly;
  private requestParts?: { parts: Reassembly; raws: Buffer[] };
  /** This SA's own deadlines (ms since epoch; Infinity: none), on the manager's timer (deadlines.ts). */
  deadlineAt = Infinity;
  private ikeRekeyAt = Infinity;
  private ikeExpireAt = Infinity;
  private keepaliveAt = Infinity;
  private dpdAt = Infinity;

  constructor(
    readonly host: SessionHost,
    readonly sa: IkeSa,
    public peer: PeerConfig,
    state: SessionState,
  ) {
    this.state = state;
    this.lifetimes = completeLifetimes(peer.lifetimes);
  }

  get role(): 'initiator' | 'responder' {
    return this.sa.role;
  }

  setState(to: SessionState): void {
    const from = this.state;
    if (from === to) return;
    this.state = to;
    this.host.changed(this, from);
  }

  log(event: string, detail?: Record<string, unknown>): void {
    this.host.log(event, { spi: hex(this.sa.localSpi), peer: this.sa.remote.address, ...detail });
  }

  private get port(): IkePort {
    return this.sa.floated ? 4500 : 500;
  }

  private flags(response: boolean): number {
    return (this.role === 'initiator' ? Flags.INITIATOR : 0) | (response ? Flags.RESPONSE : 0);
  }

  // ---- task manager --------------------------------------------------------------------------

  get activeTask(): SessionTask | undefined {
    return this.active;
  }

  /** No task running or waiting (tests and views: the SA is quiet). */
  get idle(): boolean {
    return !this.active && this.tasks.length === 0 && !this.outstanding;
  }

  /**
   * Queues a task; it runs when the tasks before it are done (window of one, §2.3). On an IKE SA
   * already replaced by a rekey the task goes to the new one; on a dead one it fails.
   */
  queue(task: SessionTask): Promise<void> {
    if (this.successor && (task.migrates ?? true)) return this.successor.queue(task);
    if (this.state === 'dead') return Promise.reject(new IkeError('the IKE SA is gone', NotifyType.TEMPORARY_FAILURE));
    return new Promise<void>((resolve, reject) => {
      const q = { task, resolve, reject };
      if (task.urgent) this.tasks.unshift(q);
      else this.tasks.push(q);
      this.pump();
    });
  }

  /** Starts the next queued task when none is active. */
  private pump(): void {
    if (this.active) return;
    const next = this.tasks.shift();
    if (!next) return;
    this.active = next.task;
    next.task.run(this).then(
      () => this.finished(next, undefined),
      (err: Error) => this.finished(next, err),
    );
  }

  private finished(q: Queued, err: Error | undefined): void {
    this.active = undefined;
    if (err) q.reject(err);
    else q.resolve();
    this.pump();
  }

  /** The tasks not yet started that follow an IKE rekey, taken out of this session's queue. */
  private takeMigrating(): Queued[] {
    const moving = this.tasks.filter((q) => q.task.migrates ?? true);
    for (const q of moving) this.tasks.splice(this.tasks.indexOf(q), 1);
    return moving;
  }

  // ---- requests we send ----------------------------------------------------------------------

  /**
   * Sends `datagrams` (one message, or its fragments; message ID `mid`) and retransmits them until
   * `accept` takes a response with that ID; rejects after the last retransmission or when the
   * session ends. `accept` gets the reassembled inner payloads of a fragmented response.
   */
  transmit(
    datagrams: Buffer[],
    mid: number,
    accept: (m: IkeMessage, inner?: Payload[]) => boolean,
    waits = this.host.timing.retransmits,
  ): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let attempt = 0;
      const out = {
        mid,
        accept: (m: IkeMessage, inner?: Payload[]) => {
          if (!accept(m, inner)) return false;
          clearTimeout(out.timer);
          this.outstanding = undefined;
          resolve();
          return true;
        },
        timer: undefined as NodeJS.Timeout | undefined,
        fail: (e: Error) => {
          clearTimeout(out.timer);
          if (this.outstanding === out) this.outstanding = undefined;
          reject(e);
        },
      };
      const send = (): void => {
        if (this.outstanding !== out) return;
        const wait = waits[attempt];
        if (wait === undefined) {
          out.fail(
            new IkeError(
              `no response from ${this.sa.remote.address} after ${waits.length} transmissions`,
              NotifyType.TEMPORARY_FAILURE,
            ),
          );
          return;
        }
        if (attempt > 0) this.log('retransmit', { mid, attempt });
        for (const d of datagrams) this.host.bind.sendIke(d, this.port, this.sa.remote);
        attempt++;
        out.timer = setTimeout(send, wait);
      };
      this.outstanding = out;
      send();
    });
  }

  /**
   * A protected request on this SA (from the active task, or from IKE_AUTH before any task runs);
   * resolves with the peer's (authenticated) response payloads.
   */
  async request(exchange: ExchangeType, payloads: Payload[], waits?: number[]): Promise<Payload[]> {
    if (this.state === 'dead') throw new IkeError('the IKE SA is gone', NotifyType.TEMPORARY_FAILURE);
    if (this.outstanding) throw new IkeError('a request is already outstanding', NotifyType.TEMPORARY_FAILURE);
    const sa = this.sa;
    const mid = sa.myMid;
    const datagrams = this.protect(exchange, mid, payloads, false);
    let inner: Payload[] = [];
    this.responseParts = undefined;
    await this.transmit(
      datagrams,
      mid,
      (m, reassembled) => {
        if (m.header.exchange !== exchange) return false;
        if (reassembled) {
          inner = reassembled;
          this.host.traceInner?.(this, 'received', exchange, mid, true, inner);
          return true;
        }
        try {
          inner = openMessage(m, sa.skKeys('in'));
          this.host.traceInner?.(this, 'received', exchange, mid, true, inner);
          return true;
        } catch {
          return false; // not authentic: keep waiting
        }
      },
      waits,
    );
    sa.myMid = mid + 1;
    this.lastInbound = Date.now();
    return inner;
  }

  /** The IKE_SA_INIT request (unprotected, message ID 0), retransmitted until its response arrives. */
  async exchangeInit(request: Buffer): Promise<IkeMessage> {
    let response: IkeMessage | undefined;
    await this.transmit([request], 0, (m) => {
      if (m.header.exchange !== ExchangeType.IKE_SA_INIT) return false;
      response = m;
      return true;
    });
    return response as IkeMessage;
  }

  /** The peer proved who it is (IKE_AUTH): its identity and certificate, copied out of the message. */
  authenticatedAs(a: Authenticated): void {
    const expected = this.peer.remoteId;
    // Most peers name themselves as the policy expects: the policy's identity is shared, not copied.
    this.peerId =
      expected && expected.type === a.id.type && expected.data.equals(a.id.data)
        ? expected
        : { ...a.id, data: kept(a.id.data) };
    this.peerCertificate = a.certificate;
  }

  /** Our message as datagrams: fragments when both sides support RFC 7383 and it is too big. */
  private protect(exchange: ExchangeType, mid: number, payloads: Payload[], response: boolean): Buffer[] {
    const sa = this.sa;
    const h = { spiI: sa.spiI, spiR: sa.spiR, exchange, flags: this.flags(response), messageId: mid };
    // IKE message size that keeps the IP datagram within fragmentSize (IP, UDP, non-ESP marker).
    const max = sa.fragmentation
      ? this.host.fragmentSize - (sa.remote.address.includes(':') ? 40 : 20) - 8 - (sa.floated ? 4 : 0)
      : Number.MAX_SAFE_INTEGER;
    this.host.traceInner?.(this, 'sent', exchange, mid, response, payloads);
    const datagrams = protectFragmented(h, payloads, sa.skKeys('out'), max);
    if (datagrams.length > 1)
      this.log('sending fragments', { exchange: ExchangeType[exchange], fragments: datagrams.length });
    return datagrams;
  }

  /**
   * One fragment of a message: verified and kept; the whole message's inner payloads once every
   * fragment is in. Unauthentic fragments are dropped (RFC 7383 §2.6).
   */
  private reassemble(msg: IkeMessage, slot: 'request' | 'response'): Payload[] | undefined {
    if (!this.sa.fragmentation) return undefined;
    let f: ReturnType<typeof openFragment>;
    try {
      f = openFragment(msg, this.sa.skKeys('in'));
    } catch (err) {
      this.log('drop unauthenticated fragment', { reason: (err as Error).message });
      this.host.invalidPacket?.(this.sa.remote.address, msg.header.exchange, (err as Error).message);
      return undefined;
    }
    const mid = msg.header.messageId;
    if (slot === 'response') {
      if (this.responseParts?.mid !== mid) this.responseParts = new Reassembly(mid, f.total);
      return this.responseParts.add(f);
    }
    if (this.requestParts?.parts.mid !== mid) this.requestParts = { parts: new Reassembly(mid, f.total), raws: [] };
    this.requestParts.raws.push(Buffer.from(msg.raw));
    return this.requestParts.parts.add(f);
  }

  /** A response to our outstanding request (matched by message ID; authenticity checked by `accept`). */
  onResponse(msg: IkeMessage): void {
    const o = this.outstanding;
    if (!o || o.mid !== msg.header.messageId) return;
    if (fragmentOf(msg)) {
      const inner = this.reassemble(msg, 'response');
      if (inner) o.accept(msg, inner);
      return;
    }
    o.accept(msg);
  }

  /**
   * Opens the peer's request `msg` (message ID already checked): its inner payloads and the datagrams
   * it came in, or undefined while fragments are missing or when it is not authentic.
   */
  openRequest(msg: IkeMessage): { inner: Payload[]; raws: Buffer[] } | undefined {
    if (fragmentOf(msg)) {
      const inner = this.reassemble(msg, 'request');
      const raws = this.requestParts?.raws ?? [];
      if (inner) this.requestParts = undefined;
      if (inner) this.host.traceInner?.(this, 'received', msg.header.exchange, msg.header.messageId, false, inner);
      return inner ? { inner, raws } : undefined;
    }
    try {
      const inner = openMessage(msg, this.sa.skKeys('in'));
      this.host.traceInner?.(this, 'received', msg.header.exchange, msg.header.messageId, false, inner);
      return { inner, raws: [Buffer.from(msg.raw)] };
    } catch (err) {
      this.log('drop unauthenticated request', { reason: (err as Error).message });
      this.host.invalidPacket?.(this.sa.remote.address, msg.header.exchange, (err as Error).message);
      return undefined;
    }
  }

  /** A retransmission of the request we answered last: send our answer again. True if it was one. */
  replayed(msg: IkeMessage): boolean {
    const cached = this.lastResponse;
    if (!cached || msg.header.messageId !== cached.mid) return false;
    const digest = requestDigest(msg.raw);
    const { digests, responses } = cached;
    for (let at = 0; at < digests.length; at += digest.length)
      if (digests.subarray(at, at + digest.length).equals(digest)) {
        for (const d of Array.isArray(responses) ? responses : [responses])
          this.host.bind.sendIke(d, this.port, this.sa.remote);
        break;
      }
    return true;
  }

  // ---- requests the peer sends ---------------------------------------------------------------

  /** A request from the peer on this established SA; answers it exactly once per message ID. */
  onRequest(msg: IkeMessage, from: Endpoint, port: IkePort): void {
    const h = msg.header;
    const sa = this.sa;
    if (this.replayed(msg)) return;
    if (h.messageId !== sa.peerMid) {
      this.log('drop request with unexpected message ID', { mid: h.messageId, expected: sa.peerMid });
      return;
    }
    const opened = this.openRequest(msg);
    if (!opened) return;
    const inner = opened.inner;
    this.lastInbound = Date.now();
    if (sa.floated && port === 4500 && (from.address !== sa.remote.address || from.port !== sa.remote.port)) {
      // The NAT mapping changed (§2.23): follow the peer.
      this.log('peer address changed', {
        from: `${sa.remote.address}:${sa.remote.port}`,
        to: `${from.address}:${from.port}`,
      });
      sa.remote = { ...from };
      for (const e of this.children.values()) this.host.dataplane.update?.(spiNumber(e.child.spiIn), sa.remote);
    }
    let out: Payload[];
    let after: (() => void) | undefined;
    try {
      const r = this.answer(h.exchange, inner);
      out = r.payloads;
      after = r.after;
    } catch (err) {
      const n = err instanceof IkeError ? err.notify : NotifyType.INVALID_SYNTAX;
      this.log('request refused', { exchange: ExchangeType[h.exchange], reason: (err as Error).message });
      out = [notify(n < 16384 ? n : NotifyType.INVALID_SYNTAX)];
    }
    this.respond(h.exchange, h.messageId, out, opened.raws);
    after?.();
  }

  /** Sends (and caches) our response to the peer's request `mid`. */
  respond(exchange: ExchangeType, mid: number, payloads: Payload[], requests: Buffer[]): void {
    const sa = this.sa;
    const responses = this.protect(exchange, mid, payloads, true);
    this.lastResponse = {
      mid,
      digests: kept(Buffer.concat(requests.map(requestDigest))),
      responses: responses.length === 1 ? kept(responses[0] as Buffer) : responses.map(kept),
    };
    sa.peerMid = mid + 1;
    for (const d of responses) this.host.bind.sendIke(d, this.port, sa.remote);
  }

  private answer(exchange: ExchangeType, inner: Payload[]): { payloads: Payload[]; after?: () => void } {
    if (this.state !== 'established' && this.state !== 'rekeyed' && this.state !== 'deleting')
      throw new IkeError('the IKE SA is not established', NotifyType.INVALID_SYNTAX);
    switch (exchange) {
      case ExchangeType.INFORMATIONAL:
        return respondInformational(this, inner);
      case ExchangeType.CREATE_CHILD_SA: {
        const saP = findPayload(inner, PayloadType.SA);
        if (!saP) throw new IkeError('CREATE_CHILD_SA request without an SA payload', NotifyType.INVALID_SYNTAX);
        return saP.proposals[0]?.protocol === ProtocolId.IKE
          ? respondIkeRekey(this, inner)
          : respondCreateChild(this, inner);
      }
      default:
        throw new IkeError(`unexpected ${ExchangeType[exchange] ?? exchange} request`, NotifyType.INVALID_SYNTAX);
    }
  }

  // ---- life cycle ----------------------------------------------------------------------------

  /** The state of an established SA without its side effects (a redundant SA of a rekey collision, about to be deleted). */
  markEstablished(): void {
    this.setState('established');
  }

  /** IKE_AUTH completed: audit, lifetimes, liveness. */
  established(): void {
    this.establishedAt = Date.now();
    // What only IKE_SA_INIT and IKE_AUTH needed: the DH key pair (forward secrecy: gone once the
    // keys are derived), the two IKE_SA_INIT messages the AUTH payloads sign, and the nonces the
    // keys and the IKE_AUTH child's keys came from (later children bring their own).
    this.sa.ke = undefined;
    this.sa.initRequest = undefined;
    this.sa.initResponse = undefined;
    this.sa.nonceI = undefined;
    this.sa.nonceR = undefined;
    this.sa.keys?.dropAuthKeys();
    this.setState('established');
    this.startTimers();
    this.host.audit.emit(
      this.peer.credentials.method === 'cert'
        ? { id: 4651, subcategory: 'IPsec Main Mode', success: true, mainMode: this.mainModeInfo() }
        : { id: 4650, subcategory: 'IPsec Main Mode', success: true, mainMode: this.mainModeInfo() },
    );
  }

  /** Arms the IKE SA's deadlines once it is up: rekey, expiry, NAT keepalives, liveness checks. */
  startTimers(): void {
    const now = Date.now();
    const l = this.lifetimes;
    this.ikeRekeyAt = now + jitter(l.ikeRekeyMs);
    this.ikeExpireAt = now + l.ikeExpireMs;
    // Behind a NAT: keep its UDP mapping open with one-octet keepalives (RFC 3948 §2.3).
    if (this.sa.natLocal && !this.sa.forceEncapsulation) this.keepaliveAt = now + this.host.timing.natKeepaliveMs;
    if (this.host.timing.dpdMs > 0) this.dpdAt = now + this.dpdPeriod();
    this.reschedule();
  }

  /** How often an idle SA checks whether the peer has been heard from (a quarter of the DPD delay). */
  private dpdPeriod(): number {
    return Math.max(50, Math.floor(this.host.timing.dpdMs / 4));
  }

  /** Puts this SA's earliest deadline (its own or a child's) on the manager's timer. */
  reschedule(): void {
    this.host.deadlines.schedule(this, this.state === 'dead' ? Infinity : this.nextDeadline());
  }

  private nextDeadline(): number {
    let next = Math.min(this.ikeRekeyAt, this.ikeExpireAt, this.keepaliveAt, this.dpdAt);
    for (const e of this.children.values()) next = Math.min(next, e.rekeyAt, e.expireAt);
    return next;
  }

  /** What is due at `now` (called by the manager's deadline timer); answers with the next deadline. */
  onDeadline(now: number): number {
    if (this.state === 'dead') return Infinity;
    if (this.ikeRekeyAt <= now) {
      this.ikeRekeyAt = Infinity;
      this.rekey();
    }
    if (this.ikeExpireAt <= now) {
      this.ikeExpireAt = Infinity;
      if (this.state === 'established' || this.state === 'rekeyed') void this.delete('lifetime expired');
    }
    if (this.keepaliveAt <= now) {
      this.keepaliveAt = now + this.host.timing.natKeepaliveMs;
      if (this.state === 'established') this.host.bind.sendUdp4500(NAT_KEEPALIVE, this.sa.remote);
    }
    if (this.dpdAt <= now) this.dpdAt = this.checkLiveness(now);
    let due: ChildEntry[] | undefined;
    for (const e of this.children.values()) if (e.rekeyAt <= now || e.expireAt <= now) (due ??= []).push(e);
    if (due) for (const e of due) this.childDue(e, now);
    // The actions above may have ended the SA.
    return (this.state as SessionState) === 'dead' ? Infinity : this.nextDeadline();
  }

  /** A liveness check (RFC 7296 §2.4) when the peer has been silent for the DPD delay; the next check's time. */
  private checkLiveness(now: number): number {
    const dpd = this.host.timing.dpdMs;
    if (this.state !== 'established' || this.active || this.tasks.length > 0) return now + this.dpdPeriod();
    if (now - this.lastInbound < dpd) return Math.max(now + this.dpdPeriod(), this.lastInbound + dpd);
    this.queue(new LivenessTask()).catch(() => {});
    return now + this.dpdPeriod();
  }

  /** A child's rekey or expiry time came. */
  private childDue(entry: ChildEntry, now: number): void {
    const spi = spiNumber(entry.child.spiIn);
    if (entry.rekeyAt <= now) {
      entry.rekeyAt = Infinity;
      if (entry.state.kind === 'installed' && this.state === 'established')
        this.queue(new ChildRekeyTask(spi)).catch((e: Error) => this.log('child rekey failed', { reason: e.message }));
    }
    if (entry.expireAt <= now) {
      entry.expireAt = Infinity;
      if (this.children.get(spi) !== entry) return;
      this.queue(new ChildDeleteTask(spi, 'lifetime expired')).catch(() => {
        const e = this.children.get(spi);
        if (e) this.removeChild(e, 'lifetime expired');
      });
    }
  }

  /** ESP from the peer arrived on one of our children (the data plane tells us): the peer is alive. */
  noteInbound(): void {
    this.lastInbound = Date.now();
  }

  /** Rekeys the IKE SA (§2.18), as its lifetime asks; a failure is logged, the SA stays until it expires. */
  rekey(): void {
    if (this.state !== 'established') return;
    this.queue(new IkeRekeyTask()).catch((e: Error) => this.log('IKE rekey failed', { reason: e.message }));
  }

  /** Installs a child SA: data plane, lifetimes, audit 5451. */
  installChild(child: ChildSa, o: { outboundActive?: boolean } = {}): ChildEntry {
    const now = Date.now();
    const l = this.lifetimes;
    const entry: ChildEntry = {
      child,
      state: INSTALLED,
      installedAt: now,
      rekeyAt: now + jitter(l.childRekeyMs),
      expireAt: now + l.childExpireMs,
    };
    this.children.set(spiNumber(child.spiIn), entry);
    this.host.childMoved?.(spiNumber(child.spiIn), this);
    this.host.dataplane.install(
      childSpec(child, {
        local: this.sa.local,
        remote: this.sa.remote,
        udpEncapsulation: this.sa.floated,
        maxKilobytes: this.lifetimes.childKilobytes,
        outboundActive: o.outboundActive,
      }),
    );
    child.keys = undefined; // the data plane holds them now
    this.armChild(entry);
    this.host.audit.emit({
      id: 5451,
      subcategory: 'IPsec Quick Mode',
      success: true,
      quickMode: this.quickModeInfo(child),
    });
    this.log('child SA installed', { spiIn: hex(child.spiIn), spiOut: hex(child.spiOut), mode: child.mode });
    this.host.childUp?.(this, child);
    return entry;
  }

  /** (Re)arms a child's rekey and expiry times on this session (also after an IKE rekey moved it). */
  armChild(_entry: ChildEntry): void {
    this.reschedule();
  }

  /** Removes a child SA locally (after a Delete exchange, a rekey, or expiry): data plane, audit 5452. */
  removeChild(entry: ChildEntry, reason: string): void {
    const key = spiNumber(entry.child.spiIn);
    if (!this.children.has(key)) return;
    this.children.delete(key);
    this.host.childMoved?.(key, undefined);
    // The SA that replaced it carries our traffic from now on (a rekey responder's waited for this).
    if ((entry.state.kind === 'rekeyed' || entry.state.kind === 'deleting') && entry.state.replacement !== undefined)
      this.host.dataplane.activate?.(entry.state.replacement);
    this.host.dataplane.delete(key);
    this.sa.spis?.release(entry.child.spiIn);
    this.host.audit.emit(childEndedEvent(this.quickModeInfo(entry.child), reason));
    this.log('child SA removed', { spiIn: hex(entry.child.spiIn), reason });
  }

  setChildState(entry: ChildEntry, state: ChildState): void {
    entry.state = state;
  }

  /**
   * The child the peer names by protocol and SPI (its inbound SPI, our outbound one), as Delete and
   * REKEY_SA do: here, or on the IKE SA that replaced this one (a request still sent on the old one).
   */
  childByPeerSpi(protocol: number, spi: Buffer): { entry: ChildEntry; holder: TaskSession } | undefined {
    for (const e of this.children.values())
      if (e.child.spiOut.equals(spi) && e.child.proposal.protocol === protocol) return { entry: e, holder: this };
    return this.successor?.childByPeerSpi(protocol, spi);
  }

  /** A new IKE SA replacing this one (§2.18): same peer, identity and configuration, registered with the manager. */
  successorSession(sa: IkeSa): IkeSession {
    const next = new IkeSession(this.host, sa, this.peer, 'connecting');
    next.peerId = this.peerId;
    next.peerCertificate = this.peerCertificate;
    this.host.register(next);
    return next;
  }

  /**
   * This IKE SA is replaced by `to` (an IKE rekey, ours or the peer's): the children move there (SPIs
   * and keys unchanged, timers re-armed), and so do the tasks that have not started yet — a child
   * rekey or delete queued behind the IKE rekey runs on the new IKE SA, where the peer has the child.
   */
  handOver(to: IkeSession): void {
    for (const [k, e] of this.children) {
      this.children.delete(k);
      to.children.set(k, e);
      this.host.childMoved?.(k, to);
      to.armChild(e);
    }
    this.successor = to;
    this.setState('rekeyed');
    const moving = this.takeMigrating();
    for (const q of moving) to.queue(q.task).then(q.resolve, q.reject);
  }

  /** Deletes the IKE SA (and its children) at the peer, then locally (§1.4.1). */
  async delete(reason = 'deleted locally'): Promise<void> {
    if (this.state === 'dead') return;
    if (this.state !== 'established' && this.state !== 'rekeyed' && this.state !== 'deleting') {
      this.terminate(reason);
      return;
    }
    this.setState('deleting');
    await this.queue(new IkeDeleteTask(reason)).catch(() => {});
  }

  /** Waits for a Delete's response: a few retransmissions, then the SA goes anyway. */
  get deleteWaits(): number[] {
    return this.host.timing.retransmits.slice(0, 3);
  }

  /**
   * Ends the IKE SA locally: children out of the data plane (unless a successor took them), timers
   * stopped, outstanding request and queued tasks failed, audit 4655. No message is sent.
   */
  terminate(reason: string, failure?: Error): void {
    if (this.state === 'dead') return;
    this.host.deadlines.cancel(this);
    // The deadline heap may hold this session until its stale entry comes up: nothing secret stays.
    this.sa.keys = undefined;
    this.lastResponse = undefined;
    for (const e of [...this.children.values()]) this.removeChild(e, reason);
    const ended = failure ?? new IkeError(`the IKE SA ended: ${reason}`, NotifyType.TEMPORARY_FAILURE);
    this.outstanding?.fail(ended);
    for (const q of this.tasks.splice(0)) q.reject(ended);
    const wasUp = this.establishedAt > 0;
    this.setState('dead');
    this.host.unregister(this);
    if (wasUp) this.host.audit.emit(mainModeEndedEvent(this, 'IKEv2', this.sa.localSpi, reason));
    this.log('IKE SA ended', { reason });
  }

  // ---- views for audit and monitoring --------------------------------------------------------

  endpoint(side: 'local' | 'remote'): EndpointInfo {
    const ep = side === 'local' ? this.sa.local : this.sa.remote;
    const id = side === 'local' ? this.peer.localId : this.peerId;
    return { address: ep.address, port: ep.port, principal: id ? identityText(id) : undefined };
  }

  mainModeInfo(): MainModeInfo {
    return mainModeInfoOf(this, 'IKEv2', this.sa.localSpi, this.sa.chosen);
  }

  quickModeInfo(child: ChildSa): QuickModeInfo {
    return quickModeInfoOf(this, 'IKEv2', this.sa.localSpi, child);
  }

  /** A quick mode failure (4654) for a child exchange that did not produce an SA. */
  childFailed(err: Error, mid: number): void {
    this.host.audit.emit({
      id: 4654,
      subcategory: 'IPsec Quick Mode',
      success: false,
      local: this.endpoint('local'),
      remote: this.endpoint('remote'),
      keyingModule: 'IKEv2',
      role: this.role === 'initiator' ? 'Initiator' : 'Responder',
      mmSaId: mmSaId(this.sa.localSpi),
      failure: {
        failurePoint: err instanceof IkeError && err.fromPeer ? 'Remote computer' : 'Local computer',
        failureReason: err.message,
        state: 'Quick mode',
        notify: err instanceof IkeError ? notifyName(err.notify) : undefined,
        messageId: mid,
      },
    });
  }
}
