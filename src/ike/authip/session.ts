/**
 * One AuthIP Main Mode SA ([MS-AIPS] §3.2–§3.5) with Kerberos, both roles, and the first Quick
 * Mode it carries (§3.4.7.3: the first Quick Mode runs inside Main Mode and authenticates it):
 *
 *   #1 I→R  Crypto, SA, Auth, Ni, VID                        (§3.2.4)
 *   #2 R→I  Crypto, SA, Auth, Nr, Nr(qm), VID, GSS_ID          (§3.3.5.1: the responder's SPN)
 *   #3 I→R  Crypto, GSS-API (AP-REQ)                           (§3.8.7.1)
 *   #4 R→I  Crypto, GSS-API (AP-REP)                           (§3.9.5.1)
 *   #5 I→R  Crypto*, HASH(Auth1), IDci, IDcr, SA(ESP), Ni(qm)  (§3.4.7.3)
 *   #6 R→I  Crypto*, HASH(Auth2), IDci, IDcr, SA(ESP)          (§3.5.5.1)
 *   #7 I→R  Crypto*, N(NOTIFY_QM_SYNCHRONIZE)                  (§3.4.5.1, exchange 244)
 *   #8 R→I  Crypto*, N(NOTIFY_QM_SYNCHRONIZE)                  (§3.5.5.2)
 *
 * and, when the rule's Phase 2 auth set asks for a user (Extended Mode, exchange 245, Message ID 1,
 * §3.6, §3.7, Figure 32 of §4.2):
 *
 *   EM1 I→R  Crypto*, Auth                                      (§3.6.7.1)
 *   EM2 R→I  Crypto*, Auth, GSS_ID                               (§3.7.5.1)
 *   EM3 I→R  Crypto*, GSS-API (the user's AP-REQ)                (§3.8.7.1)
 *   EM4 R→I  Crypto*, GSS-API (AP-REP)                           (§3.9.5.1)
 *   EM5 I→R  Crypto*, HASH(Auth3)                                (§3.6.7.2)
 *   EM6 R→I  Crypto*, HASH(Auth4)                                (§3.7.5.2)
 *
 * With Extended Mode the Quick Mode keys also depend on SKEYID_em (the user's session key), so the
 * child SA exists only once the user is authenticated: the initiator adds it inbound before EM5 and
 * outbound after checking Auth4, the responder both before EM6. Extended Mode authenticates the
 * user of one connection (§1.3: credentials per flow; §3.1.1: the EM SPD adds the ports), so the
 * Quick Mode's selectors carry that connection's protocol and ports.
 *
 * Kerberos runs without Diffie-Hellman: the keys come from the GSS-API session key (crypto.ts),
 * and Auth1/Auth2 over the transcript of #1–#4 prove both ends hold it. The child SA reaches the
 * data plane through the same contract as IKEv1's and IKEv2's (childSpec). The first Quick Mode
 * uses Message ID 0 (the Main Mode's) in its header and its key material.
 */
import { randomOctets } from '../crypto/random.ts';
import { kept } from '../../io/kept.ts';
import type { AuditSink, EndpointInfo } from '../../audit/events.ts';
import type { ChildSaSink } from '../../sa/sink.ts';
import { mainModeEndedEvent, mainModeFailedEvent, mainModeInfoOf, quickModeInfoOf } from '../describe.ts';
import type { ExtendedModeInfo, MainModeInfo } from '../../audit/events.ts';
import type { Endpoint, TrafficSelector } from '../../sa/spec.ts';
import { childSpec } from '../child-spec.ts';
import { IkeError } from '../errors.ts';
import type { SpiRegistry } from '../spi.ts';
import type { ChildSa } from '../tasks/child-create.ts';
import { type TimedChildEntry, INSTALLED, type Lifetimes, type PeerConfig } from '../tasks/context.ts';
import type { Proposal } from '../wire/codec.ts';
import { NotifyType as V2Notify } from '../wire/constants.ts';
import { PayloadType } from '../v1/constants.ts';
import { type Phase2Choice, phase2Proposals, readPhase2, selectPhase2 } from '../v1/proposals.ts';
import { idOfSelector, keySizes, selectorOfId } from '../v1/quick-mode.ts';
import { Encapsulation } from '../v1/constants.ts';
import {
  type AuthIpMessage,
  type AuthIpPayload,
  decodeAuthIpPayloads,
  encodeAuthIp,
  encodeAuthIpHeader,
  encodeAuthIpPayloads,
  findAllAuthIp,
  findAuthIp,
} from './codec.ts';
import {
  AuthIpExchange,
  AuthIpMethod,
  AuthIpNotify,
  AuthIpPayloadType,
  GssFlags,
  MS_NT5_VERSION,
  NotifyProtocol,
  WindowsStatus,
  msNt5Vid,
} from './constants.ts';
import {
  type AuthIpKeys,
  type AuthIpSuite,
  Transcript,
  authHash,
  extendedAuthHash,
  extendedModeKey,
  icvBytes,
  mainModeKeys,
  openMessage,
  quickModeKeymat,
  sameHash,
  sealMessage,
} from './crypto.ts';
import { type MmChoice, mmTransforms, readMm, selectMm } from './proposals.ts';

/** A GSS-API security context as the session uses it (src/io/gss.ts in the daemon). */
export interface GssPeer {
  step(token: Buffer | null): Promise<{ token: Buffer; complete: boolean }>;
  sessionKey(): Buffer;
  names(): { source: string; target: string };
  close(): void;
}

export interface AuthIpConfig {
  name: string;
  /** The rule's negotiation as the daemon planned it (views, reloads); absent in bare tests. */
  peer?: PeerConfig;
  /** Neutral IKE proposals of the Main Mode crypto set (their DH group is not used with Kerberos). */
  mmProposals: readonly Proposal[];
  espProposals: (spi: Buffer) => Proposal[];
  /** Our and the peer's selectors. */
  localTs: TrafficSelector[];
  remoteTs: TrafficSelector[];
  mode: 'transport' | 'tunnel';
  lifeSeconds: number;
  /** Quick Mode SA lifetime. */
  childLifeSeconds: number;
  /**
   * Extended Mode after the first Quick Mode: a user authenticated with Kerberos (the rule's Phase 2
   * auth set). An initiator gives `user`, the credentials of the user whose traffic this is; a
   * responder requires Extended Mode when this is set.
   */
  extendedMode?: { user?: (targetSpn: string) => GssPeer; uid?: number };
}

/** Our Kerberos side: an initiator toward the peer's SPN, an acceptor with the host keytab, our SPN. */
export interface KerberosProvider {
  initiator(targetSpn: string): GssPeer;
  acceptor(): GssPeer;
  spn(): string;
  /** User `uid`'s tickets toward the peer's SPN (Extended Mode); absent without Kerberos. */
  user?(uid: number, targetSpn: string): GssPeer;
}

/** No Kerberos configured: every AuthIP authentication fails with that reason. */
export const NO_KERBEROS: KerberosProvider = {
  initiator() {
    throw new IkeError('this host has no Kerberos credentials (no host keytab)', V2Notify.AUTHENTICATION_FAILED);
  },
  acceptor() {
    throw new IkeError('this host has no Kerberos credentials (no host keytab)', V2Notify.AUTHENTICATION_FAILED);
  },
  spn: () => '',
};

export interface AuthIpHost {
  readonly spis: SpiRegistry;
  readonly audit: AuditSink;
  readonly dataplane: ChildSaSink;
  send(data: Buffer, from: Endpoint, to: Endpoint): void;
  kerberos: KerberosProvider;
  register(s: AuthIpSession): void;
  unregister(s: AuthIpSession): void;
  log(event: string, detail?: Record<string, unknown>): void;
  retransmits: readonly number[];
  /** How long a responder keeps a Main Mode the initiator does not finish. */
  halfOpenMs: number;
  /**
   * Before this SA's child expires: a new Main Mode and Quick Mode with the same peer and rule
   * (AuthIP's Quick Modes after the first are not spoken here); resolves when it is up.
   */
  renew(s: AuthIpSession): Promise<void>;
  /** Main Mode completed (the setup time is `establishedAt - startedAt`). */
  established?(s: AuthIpSession): void;
}

type State = 'connecting' | 'half-open' | 'established' | 'dead';

/** The agreed Quick Mode, held until Extended Mode makes its keys (they depend on SKEYID_em). */
interface AgreedQuickMode {
  proposal: Proposal;
  spiIn: Buffer;
  spiOut: Buffer;
  tsi: TrafficSelector[];
  tsr: TrafficSelector[];
}

/**
 * A Kerberos principal as Windows names the account: a computer's host/<name>.<domain>@REALM is
 * DOMAIN\\NAME$, a user's name@REALM is DOMAIN\\name (DOMAIN: the realm's first label).
 */
export function windowsAccountName(principal: string): string {
  const at = principal.lastIndexOf('@');
  const realm = at < 0 ? '' : principal.slice(at + 1);
  const name = at < 0 ? principal : principal.slice(0, at);
  const domain = realm.split('.')[0] ?? '';
  const host = /^host\/([^./]+)/i.exec(name)?.[1];
  const account = host ? `${host.toUpperCase()}$` : name;
  return domain ? `${domain}\\${account}` : account;
}

/** A user's principal: no service instance (host/…, cifs/…) and not a computer account (NAME$). */
const isUserPrincipal = (p: string): boolean => {
  const name = p.slice(0, p.lastIndexOf('@') < 0 ? p.length : p.lastIndexOf('@'));
  return name !== '' && !name.includes('/') && !name.endsWith('$');
};

/** A Windows status code with its name, for logs and events. */
function windowsStatusText(status: number): string {
  const name = Object.entries(WindowsStatus).find(([, v]) => v === status)?.[0];
  return `status ${status}${name ? ` ${name}` : ''}`;
}

const NONCE_BYTES = 32;
const KERBEROS = { method: 'kerberos' } as const;
const hex = (b: Buffer) => b.toString('hex');

export class AuthIpSession {
  readonly keyModule = 'AuthIp' as const;
  state: State;
  readonly cookieI: Buffer;
  cookieR: Buffer;
  /** The peer's authenticated principal (Kerberos), once Main Mode is done. */
  peerPrincipal?: string;
  localPrincipal?: string;
  /** The principals Extended Mode authenticated: the initiator's user, the responder's computer. */
  localUser?: string;
  peerUser?: string;
  /** Child SAs by inbound SPI, as the other keying modules keep them (views, removal). */
  readonly children = new Map<number, TimedChildEntry>();
  readonly startedAt = Date.now();
  establishedAt = 0;
  /** Kerberos proves principals, not certificates or IKE identities. */
  readonly peerCertificate = undefined;
  readonly peerId = undefined;
  choice?: MmChoice;
  private keys?: AuthIpKeys;
  private readonly transcript = new Transcript(() => this.choice?.suite.hash);
  private ni?: Buffer;
  private nr?: Buffer;
  private niQm?: Buffer;
  private nrQm?: Buffer;
  private gss?: GssPeer;
  private spiIn?: Buffer;
  private readonly seq = new Map<AuthIpExchange, number>();
  private answered?: { request: string; response: Buffer };
  private retransmit?: { timer?: NodeJS.Timeout; raw: Buffer; n: number };
  private waiters: { resolve: (c: ChildSa) => void; reject: (e: Error) => void }[] = [];
  private peerNt5?: number;
  private pendingChild?: ChildSa;
  /** Extended Mode: its transcript (plaintext payloads, §3.1.7.4), GSS context, keys, state. */
  private readonly emTranscript = new Transcript(() => this.choice?.suite.hash, 0);
  private emGss?: GssPeer;
  private skeyidEm?: Buffer;
  private auth1?: Buffer;
  private auth2?: Buffer;
  private agreed?: AgreedQuickMode;
  private em: 'none' | 'running' | 'done' = 'none';
  /** The plaintext payloads of the last encrypted message received (for the EM transcript). */
  private lastPlain: Buffer = Buffer.alloc(0);
  private emTimer?: NodeJS.Timeout;

  constructor(
    private readonly host: AuthIpHost,
    readonly role: 'initiator' | 'responder',
    readonly local: Endpoint,
    readonly remote: Endpoint,
    readonly config: AuthIpConfig,
    cookieI?: Buffer,
  ) {
    this.cookieI = cookieI ? Buffer.from(cookieI) : kept(randomOctets(8));
    this.cookieR = role === 'responder' ? kept(randomOctets(8)) : Buffer.alloc(8);
    this.state = role === 'initiator' ? 'connecting' : 'half-open';
    if (role === 'responder') {
      // A responder waits this long for the initiator to finish (<12>: 60 s on Windows).
      this.halfOpenTimer = setTimeout(
        () => this.fail(new IkeError('the initiator did not finish Main Mode', V2Notify.TEMPORARY_FAILURE)),
        host.halfOpenMs,
      );
      this.halfOpenTimer.unref?.();
    }
  }

  private halfOpenTimer?: NodeJS.Timeout;

  /** The SA's identity as views and metrics read it (cookies in place of IKEv2 SPIs). */
  get sa() {
    return {
      role: this.role,
      local: this.local,
      remote: this.remote,
      spiI: this.cookieI,
      spiR: this.cookieR,
      localSpi: this.role === 'initiator' ? this.cookieI : this.cookieR,
      floated: false,
      chosen: this.choice?.phase1.proposal,
    };
  }

  get peer(): PeerConfig {
    if (!this.config.peer) throw new IkeError('an AuthIP SA without a rule', V2Notify.INVALID_SYNTAX);
    return this.config.peer;
  }

  /** An endpoint as the audit events show it: address, port, the Kerberos account. */
  endpoint(side: 'local' | 'remote'): EndpointInfo {
    const ep = side === 'local' ? this.local : this.remote;
    const principal = side === 'local' ? this.localPrincipal : this.peerPrincipal;
    return { address: ep.address, port: ep.port, principal: principal ? windowsAccountName(principal) : undefined };
  }

  private get localCookie(): Buffer {
    return this.role === 'initiator' ? this.cookieI : this.cookieR;
  }

  /** A policy reload that keeps the SA hands it the rule's new version. */
  set peer(p: PeerConfig) {
    this.config.peer = p;
  }

  get lifetimes(): Lifetimes {
    const l = this.config.peer?.lifetimes;
    return (
      (l?.ikeExpireMs !== undefined && l.childExpireMs !== undefined && (l as Lifetimes)) || {
        ikeRekeyMs: this.config.lifeSeconds * 900,
        ikeExpireMs: this.config.lifeSeconds * 1000,
        childRekeyMs: this.config.childLifeSeconds * 900,
        childExpireMs: this.config.childLifeSeconds * 1000,
      }
    );
  }

  get suite(): AuthIpSuite {
    if (!this.choice) throw new IkeError('no Main Mode transform agreed yet', V2Notify.INVALID_SYNTAX);
    return this.choice.suite;
  }

  // Declared before the promise: a field initialised after it would overwrite what its executor set.
  private markAnswered: () => void = () => {};
  /** Resolves when the responder answered Main Mode message 1 with a valid message 2 (it speaks AuthIP). */
  readonly peerAnswered: Promise<void> = new Promise((resolve) => (this.markAnswered = resolve));

  /** Resolves with the first child SA once Quick Mode is complete. */
  whenEstablished(): Promise<ChildSa> {
    return new Promise((resolve, reject) => {
      if (this.state === 'dead') reject(new IkeError('the AuthIP SA ended', V2Notify.TEMPORARY_FAILURE));
      else this.waiters.push({ resolve, reject });
    });
  }

  // ---- sending -------------------------------------------------------------------------------------

  private nextSeq(x: AuthIpExchange): number {
    const n = this.seq.get(x) ?? 0;
    this.seq.set(x, n + 1);
    return n;
  }

  /** Message ID 0 in Main Mode, 1 in Extended Mode (§2.2.1, §3.1.5). */
  private header(exchange: AuthIpExchange) {
    const messageId = exchange === AuthIpExchange.EXTENDED_MODE ? 1 : 0;
    return { cookieI: this.cookieI, cookieR: this.cookieR, exchange, messageId };
  }

  private clear(exchange: AuthIpExchange, payloads: AuthIpPayload[]): Buffer {
    return encodeAuthIp(this.header(exchange), this.nextSeq(exchange), payloads);
  }

  private sealed(
    exchange: AuthIpExchange,
    payloads: AuthIpPayload[],
    plain: Buffer = encodeAuthIpPayloads(payloads),
  ): Buffer {
    const keys = this.keys as AuthIpKeys;
    const head = encodeAuthIpHeader(this.header(exchange), AuthIpPayloadType.CRYPTO, true, 0);
    return sealMessage(
      this.suite,
      keys,
      head,
      this.nextSeq(exchange),
      payloads[0]?.type ?? PayloadType.NONE,
      plain,
      icvBytes(this.suite.hash, this.peerNt5),
    );
  }

  private send(raw: Buffer): void {
    this.host.send(raw, this.local, this.remote);
  }

  /** A request: sent now and again until the answer comes (or the waits run out). */
  private request(raw: Buffer): void {
    this.stopRetransmit();
    const r = { raw, n: 0, timer: undefined as NodeJS.Timeout | undefined };
    this.retransmit = r;
    const arm = () => {
      const wait = this.host.retransmits[r.n];
      if (wait === undefined) {
        this.fail(new IkeError('the peer did not answer (retransmissions exhausted)', V2Notify.TEMPORARY_FAILURE));
        return;
      }
      r.timer = setTimeout(() => {
        r.n++;
        if (this.host.retransmits[r.n] !== undefined) this.send(r.raw);
        arm();
      }, wait);
      r.timer.unref?.();
    };
    this.send(raw);
    arm();
  }

  private stopRetransmit(): void {
    clearTimeout(this.retransmit?.timer);
    this.retransmit = undefined;
  }

  /** A response, kept to answer a retransmitted request with the same octets. */
  private respond(request: AuthIpMessage, raw: Buffer): void {
    this.answered = { request: hex(request.raw), response: raw };
    this.send(raw);
  }

  // ---- initiator ----------------------------------------------------------------------------------

  /** #1: our Main Mode offer with Kerberos. */
  start(): void {
    this.ni = kept(randomOctets(NONCE_BYTES));
    const transforms = mmTransforms(this.config.mmProposals, this.config.lifeSeconds);
    if (transforms.length === 0)
      throw new IkeError(
        'no AuthIP Main Mode proposal (AES-CBC with SHA-1/SHA-2) to offer',
        V2Notify.NO_PROPOSAL_CHOSEN,
      );
    const m1 = this.clear(AuthIpExchange.MAIN_MODE, [
      {
        type: PayloadType.SA,
        doi: 1,
        situation: 1,
        proposals: [{ number: 1, protocol: 1, spi: Buffer.alloc(0), transforms }],
      },
      { type: AuthIpPayloadType.AUTH, methods: [{ method: AuthIpMethod.KERBEROS, flags: 0 }] },
      { type: PayloadType.NONCE, data: this.ni },
      { type: PayloadType.VID, data: msNt5Vid(MS_NT5_VERSION) },
    ]);
    this.transcript.add(m1);
    this.request(m1);
  }

  // ---- receiving ----------------------------------------------------------------------------------

  /** One AuthIP message for this SA (the manager matched the cookies). Never throws. */
  receive(msg: AuthIpMessage): void {
    if (this.state === 'dead') return;
    if (this.answered?.request === hex(msg.raw)) {
      this.send(this.answered.response);
      return;
    }
    // One message at a time: a retransmission that arrives while a Kerberos step runs is dropped
    // (the answer to the first copy is on its way, and will be resent from the cache).
    if (this.busy) return;
    this.busy = true;
    void this.handle(msg)
      .catch((err: Error) => {
        // A responder that refuses Main Mode says so (NOTIFY_STATUS in a Notify exchange, §3.3.5.3),
        // in clear before there are keys, so the initiator stops at once with the reason. A failed
        // Extended Mode is told either way: both ends tear down Main and Quick Mode (§3.6.5.3, §3.7.7.1).
        if (
          (this.role === 'responder' && msg.header.exchange === AuthIpExchange.MAIN_MODE) ||
          msg.header.exchange === AuthIpExchange.EXTENDED_MODE
        )
          this.refuse(err);
        this.fail(err);
      })
      .finally(() => (this.busy = false));
  }

  private busy = false;
  /** The responses taken so far (initiator), to tell a resent one from the next. */
  private readonly taken = new Set<string>();

  private opened(msg: AuthIpMessage): AuthIpPayload[] {
    if (!msg.header.encrypted) return msg.payloads;
    if (!this.keys || !msg.crypto?.iv)
      throw new IkeError('an encrypted message before the keys', V2Notify.INVALID_SYNTAX);
    const o = openMessage(
      this.suite,
      this.keys,
      msg.raw,
      msg.bodyOffset,
      msg.crypto.iv,
      icvBytes(this.suite.hash, this.peerNt5),
    );
    const payloads = decodeAuthIpPayloads(o.firstPayload, o.payloads);
    this.lastPlain = o.payloads;
    return payloads;
  }

  private step = 1;

  private async handle(msg: AuthIpMessage): Promise<void> {
    // A response we already took (the responder resent it from its cache) is not the next one.
    if (this.role === 'initiator' && this.taken.has(hex(msg.raw))) return;
    let payloads: AuthIpPayload[];
    try {
      payloads = this.opened(msg);
    } catch (err) {
      // A message that does not open (checksum, padding) is discarded, as if never received: one
      // forged datagram must not end the SA (§3.7.5.1).
      this.host.log('AuthIP message dropped', { reason: (err as Error).message });
      return;
    }
    if (this.role === 'initiator') {
      if (this.taken.size >= 16) this.taken.clear();
      this.taken.add(hex(msg.raw));
    }
    if (msg.header.exchange === AuthIpExchange.NOTIFY) return this.onNotify(msg, payloads);
    const step = this.step;
    if (this.role === 'initiator') {
      if (step === 1 && msg.header.exchange === AuthIpExchange.MAIN_MODE) return this.onMm2(msg, payloads);
      if (step === 2 && msg.header.exchange === AuthIpExchange.MAIN_MODE) return this.onMm4(msg, payloads);
      if (step === 3 && msg.header.exchange === AuthIpExchange.MAIN_MODE) return this.onMm6(payloads);
      if (step === 4 && msg.header.exchange === AuthIpExchange.QUICK_MODE) return this.onQmSync(payloads);
      if (msg.header.exchange === AuthIpExchange.EXTENDED_MODE && msg.header.encrypted && msg.header.messageId === 1) {
        if (step === 6) return this.onEm2(payloads);
        if (step === 7) return this.onEm4(payloads);
        if (step === 8) return this.onEm6(payloads);
      }
    } else {
      if (step === 1 && msg.header.exchange === AuthIpExchange.MAIN_MODE) return this.onMm1(msg, payloads);
      if (step === 2 && msg.header.exchange === AuthIpExchange.MAIN_MODE) return this.onMm3(msg, payloads);
      if (step === 3 && msg.header.exchange === AuthIpExchange.MAIN_MODE) return this.onMm5(msg, payloads);
      if (step === 4 && msg.header.exchange === AuthIpExchange.QUICK_MODE) return this.onQmSyncRequest(msg, payloads);
      // Extended Mode: encrypted, Message ID 1 (§3.7.5.1); anything else before it is discarded.
      if (msg.header.exchange === AuthIpExchange.EXTENDED_MODE && msg.header.encrypted && msg.header.messageId === 1) {
        if (!this.config.extendedMode)
          throw new IkeError(
            'the peer started Extended Mode (user authentication), which no rule here asks for',
            V2Notify.AUTHENTICATION_FAILED,
          );
        if (step === 5) return this.onEm1(msg, payloads);
        if (step === 6) return this.onEm3(msg, payloads);
        if (step === 7) return this.onEm5(msg, payloads);
      }
    }
    this.host.log('AuthIP message out of order, ignored', { exchange: msg.header.exchange, step });
  }

  /**
   * A message's GSS-API payload, its status checked (a peer that could not authenticate says so
   * there, §3.1), fed to the context `open` gives; the context's answer once it is complete (one
   * round trip for Kerberos), or undefined when the SA ended while Kerberos worked.
   */
  private async gssAnswer(
    p: AuthIpPayload[],
    what: string,
    refused: string,
    open: () => GssPeer,
  ): Promise<{ token: Buffer; flags: number; gss: GssPeer } | undefined> {
    const g = findAuthIp(p, AuthIpPayloadType.GSS);
    if (!g) throw new IkeError(`${what} without a GSS-API payload`, V2Notify.INVALID_SYNTAX);
    if (g.status !== 0)
      throw new IkeError(`${refused} (status 0x${g.status.toString(16)})`, V2Notify.AUTHENTICATION_FAILED);
    const gss = open();
    const r = await gss.step(g.token);
    if (this.state === 'dead') return undefined;
    if (!r.complete)
      throw new IkeError('the Kerberos exchange needs more than one round trip', V2Notify.AUTHENTICATION_FAILED);
    return { token: r.token, flags: g.flags, gss };
  }

  private noteVendorIds(payloads: AuthIpPayload[]): void {
    for (const v of findAllAuthIp(payloads, PayloadType.VID))
      if (v.data.length === 20 && v.data.subarray(0, 16).equals(msNt5Vid(0).subarray(0, 16)))
        this.peerNt5 = v.data.readUInt32BE(16);
  }

  private async onMm2(msg: AuthIpMessage, p: AuthIpPayload[]): Promise<void> {
    const sa = findAuthIp(p, PayloadType.SA);
    const nonces = findAllAuthIp(p, PayloadType.NONCE);
    const spn = findAuthIp(p, AuthIpPayloadType.GSS_ID)?.spn;
    const auth = findAuthIp(p, AuthIpPayloadType.AUTH);
    const t = sa?.proposals[0]?.transforms[0];
    if (!t || nonces.length !== 2 || !auth)
      throw new IkeError('AuthIP Main Mode message 2 without SA, Auth or both nonces', V2Notify.INVALID_SYNTAX);
    if (!auth.methods.some((m) => m.method === AuthIpMethod.KERBEROS))
      throw new IkeError('the peer accepts no Kerberos authentication', V2Notify.AUTHENTICATION_FAILED);
    if (!spn) throw new IkeError('the peer named no SPN (GSS_ID) for Kerberos', V2Notify.AUTHENTICATION_FAILED);
    const choice = readMm(t);
    const offered = mmTransforms(this.config.mmProposals, this.config.lifeSeconds);
    if (
      !choice ||
      !offered.some(
        (o) => readMm(o)?.suite.hash === choice.suite.hash && readMm(o)?.suite.keyBytes === choice.suite.keyBytes,
      )
    )
      throw new IkeError('the peer chose a Main Mode transform we did not offer', V2Notify.NO_PROPOSAL_CHOSEN);
    this.stopRetransmit();
    this.markAnswered();
    this.choice = choice;
    this.cookieR = Buffer.from(msg.header.cookieR);
    this.nr = (nonces[0] as { data: Buffer }).data;
    this.nrQm = (nonces[1] as { data: Buffer }).data;
    this.noteVendorIds(p);
    this.transcript.add(msg.raw);
    this.step = 2;
    const token = await this.firstToken(
      () => (this.gss = this.host.kerberos.initiator(spn)),
      GssFlags.NEW_GSS_EXCHANGE,
      (payloads) => this.clear(AuthIpExchange.MAIN_MODE, payloads),
    );
    if (!token) return;
    const m3 = this.clear(AuthIpExchange.MAIN_MODE, [
      { type: AuthIpPayloadType.GSS, status: 0, flags: GssFlags.NEW_GSS_EXCHANGE, token },
    ]);
    this.transcript.add(m3);
    this.request(m3);
  }

  /**
   * The first token of the context `open` gives, or undefined when the SA ended meanwhile. If there
   * is none (no ticket, KDC unreachable, no user …), the peer is told in a GSS payload with the
   * status set and no token (§3.1, Figure 3), so it lets its SA go at once; then the error is thrown.
   */
  private async firstToken(
    open: () => GssPeer,
    flags: number,
    message: (payloads: AuthIpPayload[]) => Buffer,
  ): Promise<Buffer | undefined> {
    try {
      const first = await open().step(null);
      return this.state === 'dead' ? undefined : first.token;
    } catch (err) {
      const refusal = { status: WindowsStatus.LOGON_DENIED, flags, token: Buffer.alloc(0) };
      this.send(message([{ type: AuthIpPayloadType.GSS, ...refusal }]));
      throw err;
    }
  }

  private async onMm4(msg: AuthIpMessage, p: AuthIpPayload[]): Promise<void> {
    const answer = await this.gssAnswer(
      p,
      'AuthIP Main Mode message 4',
      'the peer refused our Kerberos authentication',
      () => this.gss as GssPeer,
    );
    if (!answer) return;
    const gss = answer.gss;
    this.stopRetransmit();
    this.transcript.add(msg.raw);
    this.step = 3;
    const names = gss.names();
    this.localPrincipal = names.source;
    this.peerPrincipal = names.target;
    this.keys = mainModeKeys(
      this.suite,
      gss.sessionKey(),
      this.ni as Buffer,
      this.nr as Buffer,
      this.cookieI,
      this.cookieR,
    );
    // #5: the first Quick Mode, which proves we hold the session key (Auth1).
    this.spiIn = this.host.spis.allocate();
    this.niQm = kept(randomOctets(NONCE_BYTES));
    const proposals = phase2Proposals(this.config.espProposals(this.spiIn), this.spiIn, this.encapsulation, {
      seconds: this.config.childLifeSeconds,
    });
    this.auth1 = authHash(this.suite, this.keys.skeyid, this.transcript.digest, 1);
    this.auth2 = authHash(this.suite, this.keys.skeyid, this.transcript.digest, 2);
    const m5 = this.sealed(AuthIpExchange.MAIN_MODE, [
      { type: PayloadType.HASH, data: this.auth1 },
      idOfSelector(this.config.localTs[0] as TrafficSelector),
      idOfSelector(this.config.remoteTs[0] as TrafficSelector),
      { type: PayloadType.SA, doi: 1, situation: 1, proposals },
      { type: PayloadType.NONCE, data: this.niQm },
    ]);
    this.request(m5);
  }

  private get encapsulation(): Encapsulation {
    return this.config.mode === 'tunnel' ? Encapsulation.TUNNEL : Encapsulation.TRANSPORT;
  }

  private onMm6(p: AuthIpPayload[]): void {
    const hash = findAuthIp(p, PayloadType.HASH);
    if (!hash || !sameHash(hash.data, this.auth2 as Buffer))
      throw new IkeError(
        'Auth2 does not match: the peer does not hold the Kerberos session key',
        V2Notify.AUTHENTICATION_FAILED,
      );
    const sa = findAuthIp(p, PayloadType.SA);
    const proposal = sa?.proposals[0];
    const t = proposal?.transforms[0];
    const read = proposal && t ? readPhase2(proposal, t) : undefined;
    if (!proposal || proposal.spi.length !== 4 || !read)
      throw new IkeError('AuthIP Quick Mode answer without an acceptable SA', V2Notify.NO_PROPOSAL_CHOSEN);
    this.stopRetransmit();
    this.step = 4;
    this.established();
    if (this.config.extendedMode) {
      // The keys wait for Extended Mode (they depend on the user's session key, §3.1.7.4).
      this.agreed = {
        proposal: read.proposal,
        spiIn: this.spiIn as Buffer,
        spiOut: Buffer.from(proposal.spi),
        tsi: this.config.localTs.slice(0, 1),
        tsr: this.config.remoteTs.slice(0, 1),
      };
    } else {
      const child = this.childOf(true, read.proposal, this.spiIn as Buffer, proposal.spi);
      this.install(child, false);
      this.pendingChild = child;
    }
    // #7: Quick Mode synchronisation; the outbound SA is used once #8 arrives (§3.4.5.2).
    this.request(this.sealed(AuthIpExchange.QUICK_MODE, [this.syncNotify()]));
  }

  private onQmSync(p: AuthIpPayload[]): void {
    const n = findAuthIp(p, PayloadType.N);
    if (n?.notify !== AuthIpNotify.NOTIFY_QM_SYNCHRONIZE) return;
    this.stopRetransmit();
    this.step = 5;
    // The Phase 2 auth set asks for a user: Extended Mode follows at once (§3.4.5.2, §3.6.7.1).
    if (this.config.extendedMode) return this.startExtendedMode();
    const child = this.pendingChild as ChildSa;
    this.host.dataplane.activate?.(child.spiIn.readUInt32BE(0));
    for (const w of this.waiters.splice(0)) w.resolve(child);
  }

  private syncNotify(): AuthIpPayload {
    return {
      type: PayloadType.N,
      doi: 1,
      protocol: NotifyProtocol.QUICK,
      flags: 0,
      notify: AuthIpNotify.NOTIFY_QM_SYNCHRONIZE,
      data: Buffer.alloc(0),
    };
  }

  // ---- responder ----------------------------------------------------------------------------------

  private onMm1(msg: AuthIpMessage, p: AuthIpPayload[]): void {
    const sa = findAuthIp(p, PayloadType.SA);
    const auth = findAuthIp(p, AuthIpPayloadType.AUTH);
    const ni = findAuthIp(p, PayloadType.NONCE);
    if (!sa || !auth || !ni)
      throw new IkeError('AuthIP Main Mode message 1 without SA, Auth or nonce', V2Notify.INVALID_SYNTAX);
    if (!auth.methods.some((m) => m.method === AuthIpMethod.KERBEROS))
      throw new IkeError('the peer offers no Kerberos authentication', V2Notify.AUTHENTICATION_FAILED);
    const choice = selectMm(sa.proposals[0]?.transforms ?? [], this.config.mmProposals);
    if (!choice) throw new IkeError('no Main Mode transform of the peer is acceptable', V2Notify.NO_PROPOSAL_CHOSEN);
    this.choice = choice;
    this.ni = ni.data;
    this.nr = kept(randomOctets(NONCE_BYTES));
    this.nrQm = kept(randomOctets(NONCE_BYTES));
    this.noteVendorIds(p);
    this.transcript.add(msg.raw);
    const m2 = this.clear(AuthIpExchange.MAIN_MODE, [
      {
        type: PayloadType.SA,
        doi: 1,
        situation: 1,
        proposals: [{ number: 1, protocol: 1, spi: Buffer.alloc(0), transforms: [choice.transform] }],
      },
      { type: AuthIpPayloadType.AUTH, methods: [{ method: AuthIpMethod.KERBEROS, flags: 0 }] },
      { type: PayloadType.NONCE, data: this.nr },
      { type: PayloadType.NONCE, data: this.nrQm },
      { type: PayloadType.VID, data: msNt5Vid(MS_NT5_VERSION) },
      { type: AuthIpPayloadType.GSS_ID, spn: this.host.kerberos.spn() },
    ]);
    this.transcript.add(m2);
    this.step = 2;
    this.respond(msg, m2);
  }

  private async onMm3(msg: AuthIpMessage, p: AuthIpPayload[]): Promise<void> {
    this.step = 3;
    const r = await this.gssAnswer(
      p,
      'AuthIP Main Mode message 3',
      'the peer could not authenticate with Kerberos',
      () => (this.gss = this.host.kerberos.acceptor()),
    );
    if (!r) return; // ended while the acceptor worked
    this.transcript.add(msg.raw);
    const m4 = this.clear(AuthIpExchange.MAIN_MODE, [
      { type: AuthIpPayloadType.GSS, status: 0, flags: GssFlags.RESPONDER_AUTH_COMPLETE, token: r.token },
    ]);
    this.transcript.add(m4);
    const names = r.gss.names();
    this.peerPrincipal = names.source;
    this.localPrincipal = names.target;
    this.keys = mainModeKeys(
      this.suite,
      r.gss.sessionKey(),
      this.ni as Buffer,
      this.nr as Buffer,
      this.cookieI,
      this.cookieR,
    );
    this.respond(msg, m4);
  }

  private onMm5(msg: AuthIpMessage, p: AuthIpPayload[]): void {
    const keys = this.keys as AuthIpKeys;
    const hash = findAuthIp(p, PayloadType.HASH);
    this.auth1 = authHash(this.suite, keys.skeyid, this.transcript.digest, 1);
    this.auth2 = authHash(this.suite, keys.skeyid, this.transcript.digest, 2);
    if (!hash || !sameHash(hash.data, this.auth1))
      throw new IkeError(
        'Auth1 does not match: the peer does not hold the Kerberos session key',
        V2Notify.AUTHENTICATION_FAILED,
      );
    const ids = findAllAuthIp(p, PayloadType.ID);
    const sa = findAuthIp(p, PayloadType.SA);
    const niQm = findAuthIp(p, PayloadType.NONCE);
    if (ids.length !== 2 || !sa || !niQm)
      throw new IkeError('AuthIP Quick Mode request without identities, SA or nonce', V2Notify.INVALID_SYNTAX);
    const [tsi, tsr] = ids.map(selectorOfId) as [TrafficSelector, TrafficSelector];
    if (!within(tsi, this.config.remoteTs) || !within(tsr, this.config.localTs))
      throw new IkeError('the proposed Quick Mode identities are outside the rule', V2Notify.TS_UNACCEPTABLE);
    const spiIn = this.host.spis.allocate();
    const chosen: Phase2Choice | undefined = selectPhase2(
      sa.proposals,
      this.config.espProposals(spiIn),
      (e) => e === this.encapsulation,
    );
    if (!chosen) {
      this.host.spis.release(spiIn);
      throw new IkeError('no Quick Mode proposal of the peer is acceptable', V2Notify.NO_PROPOSAL_CHOSEN);
    }
    this.niQm = niQm.data;
    this.spiIn = spiIn;
    const m6 = this.sealed(AuthIpExchange.MAIN_MODE, [
      { type: PayloadType.HASH, data: this.auth2 },
      ...ids.map((id) => ({ ...id, raw: undefined })),
      {
        type: PayloadType.SA,
        doi: 1,
        situation: 1,
        proposals: [{ ...chosen.offered, spi: spiIn, transforms: [chosen.transform] }],
      },
    ]);
    this.step = 4;
    this.established();
    if (this.config.extendedMode)
      // No SA before the user is authenticated: its keys come with Extended Mode (§3.7.5.2).
      this.agreed = {
        proposal: chosen.proposal,
        spiIn,
        spiOut: Buffer.from(chosen.offered.spi),
        tsi: [tsi],
        tsr: [tsr],
      };
    else this.install(this.childOf(false, chosen.proposal, spiIn, chosen.offered.spi, [tsi], [tsr]), true);
    this.respond(msg, m6);
  }

  private onQmSyncRequest(msg: AuthIpMessage, p: AuthIpPayload[]): void {
    if (findAuthIp(p, PayloadType.N)?.notify !== AuthIpNotify.NOTIFY_QM_SYNCHRONIZE) return;
    this.step = 5;
    this.respond(msg, this.sealed(AuthIpExchange.QUICK_MODE, [this.syncNotify()]));
    if (this.config.extendedMode) {
      // Our rule asks for a user: Extended Mode must follow, or the SA ends unused (§3.1.6.3).
      this.em = 'running';
      this.emTimer = setTimeout(
        () =>
          this.fail(
            new IkeError(
              'the initiator did not authenticate a user (Extended Mode), which the rule requires',
              V2Notify.AUTHENTICATION_FAILED,
            ),
          ),
        this.host.halfOpenMs,
      );
      this.emTimer.unref?.();
      return;
    }
    const [entry] = this.children.values();
    if (entry) for (const w of this.waiters.splice(0)) w.resolve(entry.child);
  }

  // ---- Extended Mode ------------------------------------------------------------------------------

  /** Sends an Extended Mode message (encrypted, Message ID 1) and adds it to the EM transcript. */
  private extended(payloads: AuthIpPayload[]): Buffer {
    const plain = encodeAuthIpPayloads(payloads);
    this.emTranscript.add(plain);
    return this.sealed(AuthIpExchange.EXTENDED_MODE, payloads, plain);
  }

  /** EM1: the methods we offer for the user (Kerberos), §3.6.7.1. */
  private startExtendedMode(): void {
    this.em = 'running';
    this.step = 6;
    this.request(
      this.extended([{ type: AuthIpPayloadType.AUTH, methods: [{ method: AuthIpMethod.KERBEROS, flags: 0 }] }]),
    );
  }

  /** EM2 → EM3: the responder's methods and SPN; the user's Kerberos token (§3.6.5.1, §3.8.7.1). */
  private async onEm2(p: AuthIpPayload[]): Promise<void> {
    const auth = findAuthIp(p, AuthIpPayloadType.AUTH);
    const spn = findAuthIp(p, AuthIpPayloadType.GSS_ID)?.spn;
    if (!auth || !spn) throw new IkeError('Extended Mode message 2 without Auth or GSS_ID', V2Notify.INVALID_SYNTAX);
    if (!auth.methods.some((m) => m.method === AuthIpMethod.KERBEROS))
      throw new IkeError('the peer accepts no Kerberos user authentication', V2Notify.AUTHENTICATION_FAILED);
    // The user's ticket is for the computer Main Mode authenticated, never for a service the peer
    // names now (a member could otherwise collect users' tickets for other services and relay them).
    if (spn.toLowerCase() !== (this.peerPrincipal ?? '').toLowerCase())
      throw new IkeError(
        `the peer named ${spn} for Extended Mode, not ${this.peerPrincipal ?? 'the computer of Main Mode'}`,
        V2Notify.AUTHENTICATION_FAILED,
      );
    this.stopRetransmit();
    this.emTranscript.add(this.lastPlain);
    this.step = 7;
    const user = this.config.extendedMode?.user;
    // A user's principal (§2.2.3.1: GSS_IMPERSONATION_ACTIVE).
    const flags = GssFlags.NEW_GSS_EXCHANGE | GssFlags.IMPERSONATION_ACTIVE;
    const token = await this.firstToken(
      () => {
        if (!user)
          throw new IkeError(
            'no user for this traffic: Extended Mode authenticates the user of a connection',
            V2Notify.AUTHENTICATION_FAILED,
          );
        return (this.emGss = user(this.peerPrincipal as string));
      },
      flags,
      (payloads) => this.extended(payloads),
    );
    if (!token) return;
    this.request(this.extended([{ type: AuthIpPayloadType.GSS, status: 0, flags, token }]));
  }

  /** EM4 → EM5: the user's context is complete; inbound SA, then Auth3 (§3.8.5.1, §3.6.7.2). */
  private async onEm4(p: AuthIpPayload[]): Promise<void> {
    const answer = await this.gssAnswer(
      p,
      'Extended Mode message 4',
      "the peer refused the user's Kerberos authentication",
      () => this.emGss as GssPeer,
    );
    if (!answer) return;
    const gss = answer.gss;
    this.stopRetransmit();
    this.emTranscript.add(this.lastPlain);
    this.step = 8;
    this.localUser = gss.names().source;
    this.peerUser = gss.names().target;
    this.skeyidEm = this.extendedModeKeys(gss);
    const chain = this.emTranscript.digest;
    const a = this.agreed as AgreedQuickMode;
    const child = this.childOf(true, a.proposal, a.spiIn, a.spiOut, a.tsi, a.tsr);
    this.install(child, false);
    this.pendingChild = child;
    this.request(
      this.extended([
        { type: PayloadType.HASH, data: extendedAuthHash(this.suite, this.skeyidEm, chain, this.auth1 as Buffer) },
      ]),
    );
    this.expectedAuth4 = extendedAuthHash(this.suite, this.skeyidEm, chain, this.auth2 as Buffer);
  }

  private expectedAuth4?: Buffer;

  /** EM6: Auth4 proves the peer accepted the same user; the SA carries traffic (§3.6.5.2). */
  private onEm6(p: AuthIpPayload[]): void {
    const hash = findAuthIp(p, PayloadType.HASH);
    if (!hash || !sameHash(hash.data, this.expectedAuth4 as Buffer))
      throw new IkeError(
        "Auth4 does not match: the peer does not hold the user's session key",
        V2Notify.AUTHENTICATION_FAILED,
      );
    this.stopRetransmit();
    this.step = 9;
    this.extendedModeDone();
    const child = this.pendingChild as ChildSa;
    this.host.dataplane.activate?.(child.spiIn.readUInt32BE(0));
    for (const w of this.waiters.splice(0)) w.resolve(child);
  }

  /** EM1 → EM2: the methods we accept, in the initiator's order, and our SPN (§3.7.5.1). */
  private onEm1(msg: AuthIpMessage, p: AuthIpPayload[]): void {
    const auth = findAuthIp(p, AuthIpPayloadType.AUTH);
    if (!auth) throw new IkeError('Extended Mode message 1 without Auth', V2Notify.INVALID_SYNTAX);
    if (!auth.methods.some((m) => m.method === AuthIpMethod.KERBEROS))
      throw new IkeError('the peer offers no Kerberos user authentication', V2Notify.AUTHENTICATION_FAILED);
    this.emTranscript.add(this.lastPlain);
    this.step = 6;
    this.respond(
      msg,
      this.extended([
        { type: AuthIpPayloadType.AUTH, methods: [{ method: AuthIpMethod.KERBEROS, flags: 0 }] },
        { type: AuthIpPayloadType.GSS_ID, spn: this.host.kerberos.spn() },
      ]),
    );
  }

  /** EM3 → EM4: the user's AP-REQ, accepted with the host keytab (§3.9.5.1). */
  private async onEm3(msg: AuthIpMessage, p: AuthIpPayload[]): Promise<void> {
    this.step = 7;
    this.emTranscript.add(this.lastPlain);
    const r = await this.gssAnswer(
      p,
      'Extended Mode message 3',
      "the peer's user could not authenticate with Kerberos",
      () => (this.emGss = this.host.kerberos.acceptor()),
    );
    if (!r) return;
    const user = r.gss.names().source;
    // The Phase 2 auth set asks for a user: a computer account is not one.
    if (!isUserPrincipal(user) || (r.flags & GssFlags.IMPERSONATION_ACTIVE) === 0)
      throw new IkeError(
        `Extended Mode authenticated ${windowsAccountName(user)}, a computer, where the rule asks for a user`,
        V2Notify.AUTHENTICATION_FAILED,
      );
    this.peerUser = user;
    this.localUser = r.gss.names().target;
    const m4 = this.extended([
      { type: AuthIpPayloadType.GSS, status: 0, flags: GssFlags.RESPONDER_AUTH_COMPLETE, token: r.token },
    ]);
    this.skeyidEm = this.extendedModeKeys(r.gss);
    this.respond(msg, m4);
  }

  /** EM5 → EM6: Auth3 checked; both SAs in, then Auth4 (§3.7.5.2). */
  private onEm5(msg: AuthIpMessage, p: AuthIpPayload[]): void {
    const chain = this.emTranscript.digest;
    const skeyidEm = this.skeyidEm as Buffer;
    const hash = findAuthIp(p, PayloadType.HASH);
    if (!hash || !sameHash(hash.data, extendedAuthHash(this.suite, skeyidEm, chain, this.auth1 as Buffer)))
      throw new IkeError(
        "Auth3 does not match: the peer does not hold the user's session key",
        V2Notify.AUTHENTICATION_FAILED,
      );
    const a = this.agreed as AgreedQuickMode;
    const child = this.childOf(false, a.proposal, a.spiIn, a.spiOut, a.tsi, a.tsr);
    this.step = 8;
    clearTimeout(this.emTimer);
    this.install(child, true);
    this.extendedModeDone();
    this.respond(
      msg,
      this.extended([
        { type: PayloadType.HASH, data: extendedAuthHash(this.suite, skeyidEm, chain, this.auth2 as Buffer) },
      ]),
    );
    for (const w of this.waiters.splice(0)) w.resolve(child);
  }

  private extendedModeKeys(gss: GssPeer): Buffer {
    return extendedModeKey(
      this.suite,
      gss.sessionKey(),
      this.ni as Buffer,
      this.nr as Buffer,
      this.cookieI,
      this.cookieR,
    );
  }

  /** Main Mode and Extended Mode are up: 4979 as Windows logs it. */
  private extendedModeDone(): void {
    this.em = 'done';
    this.emGss?.close();
    this.host.audit.emit({
      id: 4979,
      subcategory: 'IPsec Extended Mode',
      success: true,
      mainMode: this.mainModeInfo(),
      extendedMode: this.extendedModeInfo(),
    });
    this.host.log('AuthIP Extended Mode established', {
      cookies: `${hex(this.cookieI)}/${hex(this.cookieR)}`,
      role: this.role,
      user: this.role === 'initiator' ? this.localUser : this.peerUser,
    });
  }

  private extendedModeInfo(): ExtendedModeInfo {
    const user = (p?: string) => (p ? windowsAccountName(p) : '-');
    return {
      localPrincipal: user(this.localUser),
      remotePrincipal: user(this.peerUser),
      authenticationMethod: 'Kerberos',
      role: this.role === 'initiator' ? 'Initiator' : 'Responder',
      impersonationState: 'Enabled',
    };
  }

  // ---- child SAs -----------------------------------------------------------------------------------

  private childOf(
    initiator: boolean,
    proposal: Proposal,
    spiIn: Buffer,
    spiOut: Buffer,
    tsi = this.config.localTs.slice(0, 1),
    tsr = this.config.remoteTs.slice(0, 1),
  ): ChildSa {
    const { encr, integ } = keySizes(proposal);
    const keys = this.keys as AuthIpKeys;
    // After Extended Mode the keys also take Ni(mm) ‖ Nr(mm) ‖ SKEYID_em (§3.1.7.4).
    const priv = this.skeyidEm ? Buffer.concat([this.ni as Buffer, this.nr as Buffer, this.skeyidEm]) : Buffer.alloc(0);
    // Per direction, named by the receiving SPI; authentication key first (§3.4.5.2, §3.5.5.2).
    const km = (spi: Buffer) => {
      const k = quickModeKeymat(
        this.suite,
        keys.d,
        this.cookieI,
        this.cookieR,
        0,
        spi,
        this.niQm as Buffer,
        this.nrQm as Buffer,
        encr + integ,
        undefined,
        priv,
      );
      return { integ: k.subarray(0, integ), encr: k.subarray(integ) };
    };
    const inbound = km(spiIn);
    const outbound = km(spiOut);
    const ir = initiator ? outbound : inbound;
    const ri = initiator ? inbound : outbound;
    return {
      mode: this.config.mode,
      spiIn,
      spiOut: Buffer.from(spiOut),
      proposal,
      tsi,
      tsr,
      keys: { encrI: ir.encr, integI: ir.integ, encrR: ri.encr, integR: ri.integ },
      encrKeyBytes: encr,
      integKeyBytes: integ,
      initiator,
    };
  }

  private install(child: ChildSa, outboundActive: boolean): void {
    const now = Date.now();
    const entry: TimedChildEntry = {
      child,
      state: INSTALLED,
      installedAt: now,
      rekeyAt: now + this.lifetimes.childRekeyMs,
      expireAt: now + this.lifetimes.childExpireMs,
      timers: [],
    };
    this.children.set(child.spiIn.readUInt32BE(0), entry);
    this.armLifetimes(entry);
    this.host.dataplane.install(
      childSpec(child, { local: this.local, remote: this.remote, udpEncapsulation: false, outboundActive }),
    );
    this.host.audit.emit({
      id: 5451,
      subcategory: 'IPsec Quick Mode',
      success: true,
      quickMode: quickModeInfoOf(this, 'AuthIP', this.localCookie, child),
    });
    this.host.log('child SA installed', { ike: 'authip', spiIn: hex(child.spiIn), spiOut: hex(child.spiOut) });
  }

  private mainModeInfo(): MainModeInfo {
    return mainModeInfoOf(
      {
        endpoint: (side) => this.endpoint(side),
        role: this.role,
        peer: { credentials: KERBEROS },
        lifetimes: this.lifetimes,
      },
      'AuthIP',
      this.localCookie,
      this.choice?.phase1.proposal,
    );
  }

  private established(): void {
    this.state = 'established';
    this.establishedAt = Date.now();
    clearTimeout(this.halfOpenTimer);
    // With Extended Mode, Windows logs Main Mode and Extended Mode together once both are up (4979).
    if (!this.config.extendedMode)
      this.host.audit.emit({ id: 4650, subcategory: 'IPsec Main Mode', success: true, mainMode: this.mainModeInfo() });
    this.gss?.close();
    this.host.established?.(this);
    this.host.log('AuthIP Main Mode established', {
      cookies: `${hex(this.cookieI)}/${hex(this.cookieR)}`,
      role: this.role,
      peer: this.peerPrincipal,
    });
  }

  /**
   * Lifetimes: the initiator renews before the child expires (make-before-break: a new SA, then
   * this one is deleted); at expiry the child goes, and with it this SA (its only Quick Mode).
   */
  private armLifetimes(entry: TimedChildEntry): void {
    const at = (ms: number, f: () => void) => {
      const t = setTimeout(f, Math.max(0, ms - Date.now()));
      t.unref?.();
      entry.timers.push(t);
    };
    if (this.role === 'initiator') at(entry.rekeyAt, () => void this.renew());
    at(entry.expireAt, () => void this.delete('lifetime expired'));
  }

  /** The data plane reached the child's byte lifetime: soft → renew now, hard → delete. */
  expire(hard: boolean): void {
    if (hard) void this.delete('lifetime expired (data plane)');
    else if (this.role === 'initiator') void this.renew();
  }

  private renewing = false;

  private async renew(): Promise<void> {
    if (this.renewing || this.state !== 'established') return;
    this.renewing = true;
    for (const e of this.children.values()) e.state = { kind: 'rekeying' };
    try {
      await this.host.renew(this);
      await this.delete('rekeyed');
    } catch (err) {
      this.renewing = false;
      for (const e of this.children.values()) if (e.state.kind === 'rekeying') e.state = INSTALLED;
      this.host.log('AuthIP renewal failed', { reason: (err as Error).message });
    }
  }

  /** Ends the SA: children out of the data plane, waiters told why. */
  fail(err: Error): void {
    this.terminate(err.message, err);
  }

  /** Ends the SA locally: children out of the data plane, timers stopped. No message is sent. */
  terminate(reason: string, failure?: Error): void {
    if (this.state === 'dead') return;
    this.stopRetransmit();
    clearTimeout(this.halfOpenTimer);
    clearTimeout(this.emTimer);
    this.gss?.close();
    this.emGss?.close();
    for (const [key, e] of this.children) {
      for (const t of e.timers) clearTimeout(t);
      this.host.dataplane.delete(key);
    }
    this.children.clear();
    if (this.spiIn) this.host.spis.release(this.spiIn);
    const wasUp = this.establishedAt > 0;
    this.state = 'dead';
    this.host.unregister(this);
    const failed = (extendedMode: boolean) =>
      mainModeFailedEvent({
        local: this.local,
        remote: this.remote,
        keyingModule: 'AuthIP',
        role: this.role === 'initiator' ? 'Initiator' : 'Responder',
        credentials: KERBEROS,
        err: failure as Error,
        authenticating: this.keys !== undefined || this.gss !== undefined,
        cookieI: this.cookieI,
        cookieR: this.cookieR,
        extendedMode,
      });
    // Extended Mode failed: Windows deletes the Main Mode SA with it and says so (4984).
    if (this.em === 'running' && failure) this.host.audit.emit(failed(true));
    else if (wasUp) this.host.audit.emit(mainModeEndedEvent(this, 'AuthIP', this.localCookie, reason));
    // A Main Mode that did not complete: 4653 as Windows words it, with who found the failure.
    else if (failure) this.host.audit.emit(failed(false));
    this.host.log(wasUp ? 'AuthIP SA ended' : 'AuthIP negotiation failed', { reason, role: this.role });
    for (const w of this.waiters.splice(0))
      w.reject(failure ?? new IkeError(`the AuthIP SA ended: ${reason}`, V2Notify.TEMPORARY_FAILURE));
  }

  /**
   * Deletes the SA at the peer — a NOTIFY_STATUS in a Notify exchange, the way AuthIP removes state
   * (§3.1.7.1) — and here.
   */
  delete(reason = 'deleted'): Promise<void> {
    if (this.state === 'established' && this.keys)
      this.send(this.sealed(AuthIpExchange.NOTIFY, [this.statusNotify(NotifyProtocol.MAIN_OR_EXTENDED)]));
    this.terminate(reason);
    return Promise.resolve();
  }

  /** Deletes one child SA (the first Quick Mode's): its Quick Mode state at the peer, then here. */
  deleteChild(e: TimedChildEntry, reason: string): Promise<void> {
    const key = e.child.spiIn.readUInt32BE(0);
    if (!this.children.has(key)) return Promise.resolve();
    if (this.state === 'established' && this.keys)
      this.send(this.sealed(AuthIpExchange.NOTIFY, [this.statusNotify(NotifyProtocol.QUICK)]));
    for (const t of e.timers) clearTimeout(t);
    this.children.delete(key);
    this.host.dataplane.delete(key);
    this.host.log('child SA removed', { ike: 'authip', spiIn: hex(e.child.spiIn), reason });
    return Promise.resolve();
  }

  private refuse(err: Error): void {
    const status =
      err instanceof IkeError && err.notify === V2Notify.NO_PROPOSAL_CHOSEN
        ? WindowsStatus.POLICY_MATCH
        : err instanceof IkeError && err.notify === V2Notify.TS_UNACCEPTABLE
          ? WindowsStatus.NO_POLICY
          : WindowsStatus.AUTH_FAIL;
    const n = this.statusNotify(NotifyProtocol.MAIN_OR_EXTENDED, status);
    this.send(this.keys ? this.sealed(AuthIpExchange.NOTIFY, [n]) : this.clear(AuthIpExchange.NOTIFY, [n]));
  }

  private statusNotify(protocol: number, status: number = WindowsStatus.SA_DELETED): AuthIpPayload {
    const data = Buffer.alloc(4);
    data.writeUInt32BE(status);
    return { type: PayloadType.N, doi: 1, protocol, flags: 0, notify: AuthIpNotify.NOTIFY_STATUS, data };
  }

  /** A Notify exchange from the peer: its NOTIFY_STATUS ends this SA (or the Quick Mode state). */
  private onNotify(msg: AuthIpMessage, p: AuthIpPayload[]): void {
    const n = findAuthIp(p, PayloadType.N);
    if (n?.notify !== AuthIpNotify.NOTIFY_STATUS) return;
    // In clear only while there are no keys (a refusal of our Main Mode); only the peer that saw
    // our cookie can send it, and it could as well drop our messages.
    if (!msg.header.encrypted && (this.keys || this.role !== 'initiator')) return;
    if (!msg.header.encrypted) {
      const status = n.data.length >= 4 ? n.data.readUInt32BE(0) : 0;
      this.fail(
        new IkeError(
          `the peer refused the Main Mode (${windowsStatusText(status)})`,
          status === WindowsStatus.POLICY_MATCH ? V2Notify.NO_PROPOSAL_CHOSEN : V2Notify.AUTHENTICATION_FAILED,
          true,
        ),
      );
      return;
    }
    if (n.protocol === NotifyProtocol.QUICK) {
      for (const e of [...this.children.values()]) void this.deleteChildLocally(e, 'deleted by the peer');
      return;
    }
    if (this.em === 'running') {
      // The peer refused Extended Mode (its user authentication): a failure, with its reason (4984).
      const status = n.data.length >= 4 ? n.data.readUInt32BE(0) : 0;
      this.fail(
        new IkeError(
          `the peer refused Extended Mode (${windowsStatusText(status)})`,
          V2Notify.AUTHENTICATION_FAILED,
          true,
        ),
      );
      return;
    }
    this.terminate('deleted by the peer');
  }

  private deleteChildLocally(e: TimedChildEntry, reason: string): void {
    const key = e.child.spiIn.readUInt32BE(0);
    for (const t of e.timers) clearTimeout(t);
    this.children.delete(key);
    this.host.dataplane.delete(key);
    this.host.log('child SA removed', { ike: 'authip', spiIn: hex(e.child.spiIn), reason });
  }
}

const within = (ts: TrafficSelector, allowed: readonly TrafficSelector[]): boolean =>
  allowed.some(
    (a) =>
      a.start.length === ts.start.length &&
      (a.ipProtocol === 0 || a.ipProtocol === ts.ipProtocol) &&
      a.startPort <= ts.startPort &&
      ts.endPort <= a.endPort &&
      Buffer.compare(a.start, ts.start) <= 0 &&
      Buffer.compare(ts.end, a.end) <= 0,
  );
