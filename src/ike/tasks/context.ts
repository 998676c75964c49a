/**
 * What a task sees of the IKE SA it runs on (strongSwan's ike_sa_t as its tasks use it): a narrow
 * interface the session implements, so tasks never import the session and the session's import of
 * the tasks is the only edge between them. Also the types both sides share: peer configuration,
 * lifetimes, child entries and their states.
 */
import type { ChildPolicy, ChildSa } from './child-create.ts';
import type { Authenticated, Credentials, Identity } from './ike-auth.ts';
import type { IkeSa } from '../sa.ts';
import type { IkeMessage, Payload, Proposal } from '../wire/codec.ts';
import type { ExchangeType } from '../wire/constants.ts';

/** Lifetimes of the IKE SA and its children; rekeying starts at the rekey time (make-before-break). */
export interface Lifetimes {
  ikeRekeyMs: number;
  ikeExpireMs: number;
  childRekeyMs: number;
  childExpireMs: number;
  /** Quick mode MaxKiloBytes: enforced by the data plane, which reports expiry. */
  childKilobytes?: number;
}

/** Everything one IKE SA with one peer is negotiated from (policy, credentials, selectors). */
export interface PeerConfig extends ChildPolicy {
  /** The rule (connection security rule) this comes from, for logs, views and events. */
  name: string;
  ikeProposals: Proposal[];
  credentials: Credentials;
  localId: Identity;
  /** When set, the peer must authenticate as exactly this identity. */
  remoteId?: Identity;
  lifetimes?: Partial<Lifetimes>;
  /** The rule's keying module: a responder answers only the module it names (Default: either). */
  keyModule?: 'IKEv2' | 'IKEv1' | 'AuthIP' | 'Default';
  /** The rule's Phase 2 auth set asks for the user: AuthIP's Extended Mode with Kerberos. */
  userAuthentication?: { method: 'kerberos' };
}

export type SessionState = 'connecting' | 'half-open' | 'established' | 'rekeyed' | 'deleting' | 'dead';

/**
 * Where a child SA is in its life: carrying traffic; being rekeyed by one of our tasks; replaced by
 * a newer SA (by us or the peer; `replacement` is that SA's inbound SPI, which takes our outbound
 * traffic once this one is gone) and waiting for its Delete; being deleted.
 */
export type ChildState =
  | { kind: 'installed' }
  | { kind: 'rekeying' }
  | { kind: 'rekeyed'; replacement?: number }
  | { kind: 'deleting'; replacement?: number };

/** The states without data, shared (states are replaced, never changed in place). */
export const INSTALLED: ChildState = Object.freeze({ kind: 'installed' });
export const REKEYING: ChildState = Object.freeze({ kind: 'rekeying' });

export interface ChildEntry {
  child: ChildSa;
  state: ChildState;
  installedAt: number;
  rekeyAt: number;
  expireAt: number;
}

/** A child entry of the IKEv1 and AuthIP sessions, which arm Node timers of their own per child. */
export interface TimedChildEntry extends ChildEntry {
  timers: NodeJS.Timeout[];
}

/** What a request is for, for the collision rules of RFC 7296 §2.25 and §2.8. */
export type TaskKind = 'establish' | 'child' | 'ike-rekey' | 'informational';

/**
 * One piece of work on an IKE SA that needs requests of our own (strongSwan's task): tasks run one
 * at a time per IKE SA (the window of one, §2.3), in the order queued. A task queued on an IKE SA
 * that is rekeyed before it ran moves to the new IKE SA (`migrates`) and runs there.
 */
export interface SessionTask {
  readonly name: string;
  readonly kind: TaskKind;
  /** Follows an IKE rekey to the new IKE SA if it has not started yet (default: true). */
  readonly migrates?: boolean;
  /** Goes before the tasks already queued (a delete of the IKE SA). */
  readonly urgent?: boolean;
  run(s: TaskSession): Promise<void>;
}

/** The IKE SA as its tasks and the responder halves of exchanges see it. */
export interface TaskSession {
  readonly sa: IkeSa;
  readonly peer: PeerConfig;
  readonly role: 'initiator' | 'responder';
  readonly state: SessionState;
  readonly lifetimes: Lifetimes;
  /** Child SAs by inbound SPI. */
  readonly children: ReadonlyMap<number, ChildEntry>;
  /** The task whose request is outstanding (or about to be), if any. */
  readonly activeTask?: SessionTask;
  /** The IKE SA that replaced this one, once rekeyed. */
  readonly successor?: TaskSession;
  /** How long a Delete waits for its response (a few retransmissions: the SA goes anyway). */
  readonly deleteWaits: number[];

  /** Sends a protected request from the running task and resolves with the authenticated response's payloads. */
  request(exchange: ExchangeType, payloads: Payload[], waits?: number[]): Promise<Payload[]>;
  /** Sends the (unprotected) IKE_SA_INIT request, retransmitted, and resolves with the response. */
  exchangeInit(request: Buffer): Promise<IkeMessage>;
  /** Answers the peer's request `mid` (and keeps the answer for its retransmissions). */
  respond(exchange: ExchangeType, mid: number, payloads: Payload[], requests: Buffer[]): void;
  /** The peer proved who it is (IKE_AUTH). */
  authenticatedAs(a: Authenticated): void;
  /** Queues a task on this IKE SA (or on the one that replaced it). */
  queue(task: SessionTask): Promise<void>;
  /** Installs a child SA (data plane, lifetimes, audit 5451); `outboundActive: false` for a rekey responder's new SA. */
  installChild(child: ChildSa, o?: { outboundActive?: boolean }): ChildEntry;
  /** Removes a child SA locally (data plane, audit 5452). */
  removeChild(entry: ChildEntry, reason: string): void;
  setChildState(entry: ChildEntry, state: ChildState): void;
  /** Restarts a child's rekey and expiry timers. */
  armChild(entry: ChildEntry): void;
  /** The child the peer names by its inbound SPI (our outbound one) and protocol, here or on the IKE SA that replaced this one. */
  childByPeerSpi(protocol: number, spi: Buffer): { entry: ChildEntry; holder: TaskSession } | undefined;
  /** A new IKE SA for a rekey of this one (registered with the manager, state 'connecting'). */
  successorSession(sa: IkeSa): TaskSession;
  /** This IKE SA is replaced by `to`: children and queued tasks move there; this one is 'rekeyed'. */
  handOver(to: TaskSession): void;
  /** IKE_AUTH (or a rekey that replaced it) completed: audit, lifetimes, liveness checks. */
  established(): void;
  /** State without the side effects of established() (a redundant SA of a rekey collision). */
  markEstablished(): void;
  /** Ends the IKE SA locally (no message). */
  terminate(reason: string, failure?: Error): void;
  /** Deletes the IKE SA at the peer and locally (queued as an urgent task). */
  delete(reason?: string): Promise<void>;
  /** A quick mode failure (audit 4654) for a child exchange that produced no SA. */
  childFailed(err: Error, mid: number): void;
  log(event: string, detail?: Record<string, unknown>): void;
}
