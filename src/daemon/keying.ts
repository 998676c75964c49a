/**
 * The keying service of `consec daemon`: one IKE manager per local address (UDP 500/4500), peers
 * resolved from the active policy, live reloads that keep every SA the new policy still allows,
 * acquires (traffic that needs an SA) turned into IKE SAs or extra child SAs, and Delete on stop.
 * The data plane plugs in through `ChildSaSink`; audit events leave through `AuditSink`.
 */
import { isIPv4 } from 'node:net';
import type { AuditSink } from '../audit/events.ts';
import type { Flow, HostContext } from '../filter/compile.ts';
import { EMPTY_CONTEXT } from '../filter/compile.ts';
import { loadCertStore } from '../ike/certstore.ts';
import { type NegotiationPlan, planNegotiation, planResponder } from '../ike/config.ts';
import type { IkeBind, IkeReceiver } from '../sa/bind.ts';
import type { ChildSaSink } from '../sa/sink.ts';
import { IkeError } from '../ike/errors.ts';
import { IkeManager } from '../ike/manager.ts';
import { selectProposal, transformOf } from '../ike/proposals.ts';
import type { IkeSession, PeerConfig, Timing } from '../ike/session.ts';
import type { IkeTrace } from '../ike/trace.ts';
import { AuthIpSession, type KerberosProvider } from '../ike/authip/session.ts';
import { authIpConfigOf } from '../ike/authip/manager.ts';
import type { AuthIpConfig } from '../ike/authip/session.ts';
import { socketOwner, socketTables } from '../io/socket-owner.ts';
import { selectMm } from '../ike/authip/proposals.ts';
import { V1Session } from '../ike/v1/session.ts';
import { type ChildSa, localTs, remoteTs } from '../ike/tasks/child-create.ts';
import type { ChildEntry, TimedChildEntry } from '../ike/tasks/context.ts';
import { createChild } from '../ike/tasks/child-rekey.ts';
import { deleteChild } from '../ike/tasks/ike-delete.ts';
import type { Credentials } from '../ike/tasks/ike-auth.ts';
import type { Proposal, TrafficSelector } from '../ike/wire/codec.ts';
import { EncrId, NotifyType, ProtocolId, TransformType } from '../ike/wire/constants.ts';
import type { PolicyDocument, ProfileName } from '../policy/model.ts';
import type { Logger } from '../logger.ts';
import { type PolicyStores } from '../policy/store.ts';
import { type PolicyWatch, watchActivePolicy } from '../policy/watch.ts';
import { policyForProfiles } from '../filter/location.ts';
import { readIp, writeIp } from '../io/addr.ts';

export type { Logger };

export interface KeyingOptions {
  stores: PolicyStores;
  /** Addresses to run IKE on. */
  addresses: string[];
  /** Following the host's addresses: an address IKE cannot listen on yet is left out, not fatal. */
  follow?: boolean;
  ctx?: HostContext;
  audit?: AuditSink;
  dataplane?: ChildSaSink;
  timing?: Partial<Timing>;
  /** Encapsulate ESP in UDP 4500 even without a NAT (hosts whose kernel and peers lack raw ESP). */
  forceUdpEncapsulation?: boolean;
  /** The firewall profiles in force (network location); without it every rule applies. */
  profiles?: () => ProfileName[];
  /** The IKE debug trace (netsh advfirewall set global ipsec debuglog). */
  trace?: IkeTrace;
  /** A negotiation established an IKE SA (metrics). */
  onEstablished?(session: KeyedSession): void;
  /** Called with each new active policy, after the SAs were reconciled (the daemon refreshes its filters). */
  onPolicy?(doc: PolicyDocument): void;
  /** The IKE sockets for an address (the data plane's marked ones); default UDP 500/4500 of our own. */
  bind?: (address: string) => ((rx: IkeReceiver) => IkeBind) | undefined;
  /** This host's Kerberos (its keytab) for AuthIP; without it Kerberos rules get no SA. */
  kerberos?: KerberosProvider;
  /** The active policy to start with (the last applied one, when the stores are unreadable). */
  initialPolicy?: PolicyDocument;
  /** Each active policy that takes effect, as read from the stores (kept as the last applied). */
  onApplied?(activeStore: PolicyDocument): void;
  /**
   * How often child SAs are checked for idleness (default 10 s), and the idle time after which one
   * is deleted (default: the policy's MaxSAIdleTimeSeconds, as Windows; given here by tests).
   */
  idle?: { sweepMs?: number; afterMs?: number };
  /** What happens per SA. */
  log: Logger;
  /** The service's own life: started, policy reloaded (default: `log`). */
  serviceLog?: Logger;
}

/** Responder configs carry the initiator's selectors first (TSi = the peer's side). */
export const asResponder = (plan: NegotiationPlan): PeerConfig => ({ ...plan, tsi: plan.tsr, tsr: plan.tsi });

function sameCredentials(a: Credentials, b: Credentials): boolean {
  if (a.method === 'kerberos' || b.method === 'kerberos') return a.method === b.method;
  if (a.method === 'psk' && b.method === 'psk') return a.psk.equals(b.psk);
  if (a.method === 'cert' && b.method === 'cert')
    return (
      a.chain[0]?.fingerprint256 === b.chain[0]?.fingerprint256 &&
      a.trustedCas.map((c) => c.fingerprint256).join() === b.trustedCas.map((c) => c.fingerprint256).join()
    );
  return false;
}

/** Whether one of the selectors covers the address (and the flow's protocol and port, when known). */
const inside = (addr: string, ts: readonly TrafficSelector[], protocol?: number, port?: number): boolean => {
  const b = Buffer.alloc(isIPv4(addr) ? 4 : 16);
  writeIp(addr, b);
  return ts.some(
    (t) =>
      t.start.length === b.length &&
      Buffer.compare(t.start, b) <= 0 &&
      Buffer.compare(b, t.end) <= 0 &&
      (protocol === undefined || t.ipProtocol === 0 || t.ipProtocol === protocol) &&
      (port === undefined || (t.startPort <= port && port <= t.endPort)),
  );
};

/** The owner of the one connection a child SA's selectors name (Extended Mode's), if it still exists. */
function connectionOwner(child: ChildSa, read: (table: string) => string): number | undefined {
  const [l, r] = [localTs(child)[0], remoteTs(child)[0]];
  if (!l || !r || l.startPort !== l.endPort || r.startPort !== r.endPort) return undefined;
  const text = (b: Buffer) => readIp(b, 0, b.length === 4 ? 4 : 6);
  return socketOwner(
    {
      protocol: l.ipProtocol,
      local: text(l.start),
      localPort: l.startPort,
      remote: text(r.start),
      remotePort: r.startPort,
    },
    read,
  );
}

/** Whether a child SA's selectors cover the flow: both hosts, and its protocol and ports. */
const covers = (child: ChildSa, flow: Flow): boolean =>
  inside(flow.local, localTs(child), flow.protocol || undefined, flow.localPort) &&
  inside(flow.remote, remoteTs(child), flow.protocol || undefined, flow.remotePort);

/** An IKE SA of either keying module (IKEv2 or IKEv1), as views, metrics and the control API see it. */
export type KeyedSession = IkeSession | V1Session | AuthIpSession;

/** Deletes one child SA, at the peer too, whichever keying module negotiated it. */
export function deleteChildSa(s: KeyedSession, e: ChildEntry, reason: string): Promise<void> {
  // An IKEv1 or AuthIP session's entries are its own (TimedChildEntry): `e` came from its table.
  return s instanceof V1Session || s instanceof AuthIpSession
    ? s.deleteChild(e as TimedChildEntry, reason)
    : deleteChild(s, e, reason);
}

/** ESP with an encryption transform other than NULL. */
const encrypts = (p: Proposal): boolean =>
  p.protocol === ProtocolId.ESP && (transformOf(p, TransformType.ENCR)?.id ?? EncrId.NULL) !== EncrId.NULL;

/**
 * Errors after which Default tries the other keying module: the peer did not answer, or refused
 * the version or every proposal (an IKEv1-only peer answers IKE_SA_INIT with NO_PROPOSAL_CHOSEN
 * or INVALID_MAJOR_VERSION; an IKEv2-only one ignores or refuses Main Mode).
 */
const doesNotSpeak = (err: unknown): boolean =>
  err instanceof IkeError &&
  (err.notify === NotifyType.NO_PROPOSAL_CHOSEN ||
    err.notify === NotifyType.INVALID_MAJOR_VERSION ||
    /did not answer|not answer|timed out|retransmi/i.test(err.message));

export class KeyingService {
  private readonly managers = new Map<string, IkeManager>();
  private doc: PolicyDocument;
  private watch?: PolicyWatch;
  private readonly inFlight = new Map<string, Promise<{ session: KeyedSession; child: ChildSa }>>();

  constructor(private readonly o: KeyingOptions) {
    const active = o.initialPolicy ?? o.stores.read('ActiveStore');
    this.doc = this.inForce(active);
    o.onApplied?.(active);
  }

  /** The rules of the profiles in force (all of them without a network location). */
  private inForce(doc: PolicyDocument): PolicyDocument {
    return this.o.profiles ? policyForProfiles(doc, this.o.profiles()) : doc;
  }

  /** The network location changed (Set-NetConnectionProfile): the active policy again, filtered anew. */
  locationChanged(): void {
    this.reload(this.o.stores.read('ActiveStore'));
  }

  private get planOptions() {
    return { ctx: this.o.ctx ?? EMPTY_CONTEXT, certs: () => loadCertStore(this.o.stores.stateDir) };
  }

  /** IKE on one more local address (UDP 500/4500 there); nothing when it already runs there. */
  async addAddress(address: string): Promise<void> {
    if (this.managers.has(address)) return;
    const m = new IkeManager({
      address,
      peerFor: (remote) => this.peerFor(address, remote),
      authIpPeerFor: (remote) => this.peerFor(address, remote, 'AuthIP'),
      audit: this.o.audit,
      dataplane: this.o.dataplane,
      timing: this.o.timing,
      onEstablished: this.o.onEstablished,
      onEstablishedV1: this.o.onEstablished,
      onEstablishedAuthIp: this.o.onEstablished,
      trace: this.o.trace,
      kerberos: this.o.kerberos,
      log: (event, detail) => this.o.log.info({ address, ...detail }, event),
    });
    try {
      await m.listen(this.o.bind?.(address));
    } catch (err) {
      throw new IkeError(
        `cannot listen for IKE on ${address} (UDP 500/4500): ${(err as Error).message}`,
        NotifyType.TEMPORARY_FAILURE,
      );
    }
    this.managers.set(address, m);
  }

  /**
   * A local address is gone: its SAs end here (4655, "the local address was removed"; the peer
   * cannot be told from an address we no longer have) and its sockets close.
   */
  removeAddress(address: string): void {
    const m = this.managers.get(address);
    if (!m) return;
    this.managers.delete(address);
    m.close('the local address was removed');
  }

  /** The addresses IKE runs on. */
  get addresses(): string[] {
    return [...this.managers.keys()];
  }

  async start(): Promise<void> {
    for (const address of this.o.addresses) {
      try {
        await this.addAddress(address);
      } catch (err) {
        if (this.o.follow) {
          this.o.log.warn({ address, reason: (err as Error).message }, 'local address not usable yet');
          continue;
        }
        await this.stop();
        throw err;
      }
    }
    this.idleTimer = setInterval(() => this.sweepIdle(), this.o.idle?.sweepMs ?? 10_000);
    this.idleTimer.unref?.();
    this.watch = watchActivePolicy(
      this.o.stores,
      (doc) => this.reload(doc),
      (err) => this.o.log.error({ err: err.message }, 'policy store unreadable; the last good policy stays in force'),
    );
    this.serviceLog.info({ addresses: this.o.addresses, rules: this.doc.rules.length }, 'keying service started');
  }

  /** Where the service's own life is logged (started, policy reloaded). */
  private get serviceLog(): Logger {
    return this.o.serviceLog ?? this.o.log;
  }

  /** Our policy for a peer that starts IKE with us, or undefined (NO_PROPOSAL_CHOSEN). */
  /**
   * The rule for a peer that contacts us: for AuthIP its Kerberos method; for IKEv1 and IKEv2 the
   * first pre-shared key or certificate of the set (a peer whose Kerberos failed tries those next).
   */
  peerFor(local: string, remote: string, module: 'AuthIP' | 'IKE' = 'IKE'): PeerConfig | undefined {
    try {
      const plan = planResponder(this.doc, local, remote, {
        ...this.planOptions,
        afterKerberos: module === 'IKE',
      });
      if (!plan) this.o.log.info({ local, remote }, 'no connection security rule for this peer');
      return plan ? asResponder(plan) : undefined;
    } catch (err) {
      this.o.log.warn({ local, remote, reason: (err as Error).message }, 'cannot answer this peer');
      return undefined;
    }
  }

  /** The active policy in force. */
  get policy(): PolicyDocument {
    return this.doc;
  }

  /** Half-open IKE SAs over all addresses (IKE_SA_INIT answered, IKE_AUTH not yet; Main Mode under way). */
  get halfOpen(): number {
    return [...this.managers.values()].reduce((n, m) => n + m.counts.halfOpen + m.v1.halfOpen, 0);
  }

  /** IKE SAs of both keying modules. */
  sessions(): KeyedSession[] {
    return [...this.managers.values()].flatMap((m): KeyedSession[] => [
      ...m.sessions(),
      ...m.v1.sessions(),
      ...m.authip.sessions(),
    ]);
  }

  /**
   * Traffic that needs protection (from the data plane's acquire, or a command): reuses an IKE SA
   * with the peer and its children when they cover the flow, adds a child otherwise, or negotiates.
   */
  async acquire(flow: Flow): Promise<{ session: KeyedSession; child: ChildSa }> {
    let plan = planNegotiation(this.doc, flow, this.planOptions);
    const m = this.managers.get(plan.local);
    if (!m)
      throw new IkeError(
        `not listening for IKE on ${plan.local} (give it with --listen)`,
        NotifyType.TEMPORARY_FAILURE,
      );
    // One negotiation per peer at a time: flows that arrive meanwhile share its outcome — a failure
    // fails them too (the data plane acquires again on later traffic) instead of each starting an
    // IKE SA of its own at the same moment. With a user to authenticate, one per connection: one
    // user's failure is not another's.
    const key = plan.userAuthentication
      ? `${plan.local}>${plan.remote}/${flow.protocol}/${flow.localPort}/${flow.remotePort}`
      : `${plan.local}>${plan.remote}`;
    const running = this.inFlight.get(key);
    if (running) await running;
    const up = (s: KeyedSession) => s.sa.remote.address === plan.remote && s.state === 'established';
    // A peer that answered IKEv1 alongside AuthIP before (it speaks no AuthIP) keeps its ISAKMP SA:
    // further flows use it with the auth set's next method instead of racing both again.
    if (plan.keyModule === 'AuthIP' && plan.rule.KeyModule === 'Default' && m.v1.sessions().some(up)) {
      try {
        plan = planNegotiation(this.doc, flow, { ...this.planOptions, afterKerberos: true });
      } catch {
        // no keyed method after Kerberos: AuthIP as usual
      }
    }
    if (plan.keyModule === 'AuthIP') {
      // Kerberos: AuthIP's Main Mode carries the first Quick Mode; a further flow to the same peer
      // is covered by that child SA or gets a Main Mode of its own.
      for (const existing of m.authip.sessions().filter(up))
        for (const e of existing.children.values())
          if (covers(e.child, flow)) return { session: existing, child: e.child };
      const config = authIpConfigOf(plan, 'initiator');
      if (plan.userAuthentication) {
        config.extendedMode = this.connectionUser(flow);
        // No socket, no user (forwarded traffic, ICMP): nothing to negotiate, as no SA could carry it.
        if (!config.extendedMode.user)
          throw new IkeError(
            `rule "${plan.name}" authenticates the user of a connection, and this traffic (${flow.local} → ${flow.remote}, protocol ${flow.protocol}) has no user`,
            NotifyType.AUTHENTICATION_FAILED,
          );
      }
      const running = m.authip.initiate({ address: plan.remote, port: 500 }, config);
      const p = this.alongsideIkev1(m, flow, plan, running).then(
        (won) => won ?? running.child.then((child) => ({ session: running.session as KeyedSession, child })),
      );
      this.inFlight.set(key, p);
      try {
        return await p;
      } catch (err) {
        // Every method of the auth set, in its order: after Kerberos (AuthIP) a pre-shared key or
        // certificate further down the set, negotiated by IKEv1/IKEv2 as the rule's module says.
        let next: NegotiationPlan;
        try {
          next = planNegotiation(this.doc, flow, { ...this.planOptions, afterKerberos: true });
        } catch {
          throw err;
        }
        this.o.log.info(
          { remote: plan.remote, reason: (err as Error).message, next: next.credentials.method },
          'Kerberos (AuthIP) failed; trying the next method of the authentication set',
        );
        plan = next;
      } finally {
        this.inFlight.delete(key);
      }
    }
    const session: KeyedSession | undefined =
      (plan.keyModule !== 'IKEv1' ? m.sessions().find(up) : undefined) ??
      (plan.keyModule !== 'IKEv2' ? m.v1.sessions().find(up) : undefined);
    if (session) {
      for (const e of session.children.values())
        if (e.state.kind !== 'deleting' && covers(e.child, flow)) return { session, child: e.child };
      if (session instanceof V1Session) return { session, child: (await m.v1.createChild(session, plan)).child };
      const child = await createChild(session, plan.tsi, plan.tsr);
      return { session, child };
    }
    const request = { remote: plan.remote, peer: plan, forceUdpEncapsulation: this.o.forceUdpEncapsulation };
    const v1 = async () => {
      const r = await m.v1.initiate(request);
      return { session: r.session as KeyedSession, child: r.child.child };
    };
    const v2 = () => m.initiate(request) as Promise<{ session: KeyedSession; child: ChildSa }>;
    // Default: the first module of the store's order (IKEv2 as Windows 11 24H2, or IKEv1 for older
    // fleets); a peer that does not speak it gets the other one, while its traffic stays queued.
    const fallBack = (first: 'IKEv1' | 'IKEv2', tryFirst: typeof v2, then: typeof v2) => (): ReturnType<typeof v2> =>
      tryFirst().catch((err: unknown) => {
        if (!doesNotSpeak(err)) throw err;
        this.o.log.info(
          { remote: plan.remote, reason: (err as Error).message },
          `${first} not answered; trying ${first === 'IKEv2' ? 'IKEv1' : 'IKEv2'}`,
        );
        return then();
      });
    const p =
      plan.keyModule === 'IKEv1'
        ? v1()
        : plan.keyModule === 'IKEv2'
          ? v2()
          : this.doc.settings.DefaultKeyModuleOrder === 'IKEv1First'
            ? fallBack('IKEv1', v1, v2)()
            : fallBack('IKEv2', v2, v1)();
    this.inFlight.set(key, p);
    try {
      return await p;
    } finally {
      this.inFlight.delete(key);
    }
  }

  /**
   * Extended Mode's user: the owner of the connection's socket (as Windows takes the user from the
   * socket), with that user's Kerberos tickets. No socket (forwarded traffic, ICMP) is no user:
   * Extended Mode then fails, and says why.
   */
  private connectionUser(flow: Flow): NonNullable<AuthIpConfig['extendedMode']> {
    const uid =
      flow.localPort !== undefined && flow.remotePort !== undefined
        ? socketOwner({
            protocol: flow.protocol,
            local: flow.local,
            localPort: flow.localPort,
            remote: flow.remote,
            remotePort: flow.remotePort,
          })
        : undefined;
    const kerberos = this.o.kerberos;
    this.o.log.info({ remote: flow.remote, uid: uid ?? null }, 'Extended Mode: the user of this connection');
    if (uid === undefined || !kerberos?.user) return {};
    return { user: (spn) => (kerberos.user as NonNullable<typeof kerberos.user>)(uid, spn), uid };
  }

  /**
   * KeyModule Default with a Kerberos method first and a pre-shared key or certificate further down
   * the auth set: as Windows does (MS-AIPS §3.2.4), an IKEv1 Main Mode with that method goes to the
   * peer alongside the AuthIP one, marked MS-MamieExists. A peer that answers AuthIP discards the
   * IKEv1 one (§3.3.5.2) and AuthIP goes on; a peer that answers IKEv1 first (it has no AuthIP)
   * gets IKEv1 and the AuthIP attempt ends (<12>). If AuthIP fails before any answer (no Kerberos
   * credentials here), the marked IKEv1 attempt ends too and the auth set's next method is tried
   * as usual. Undefined: AuthIP goes on alone.
   */
  private async alongsideIkev1(
    m: IkeManager,
    flow: Flow,
    plan: NegotiationPlan,
    authip: { session: AuthIpSession; child: Promise<ChildSa> },
  ): Promise<{ session: KeyedSession; child: ChildSa } | undefined> {
    if (plan.rule.KeyModule !== 'Default') return undefined;
    let next: NegotiationPlan;
    try {
      next = planNegotiation(this.doc, flow, { ...this.planOptions, afterKerberos: true });
    } catch {
      return undefined;
    }
    if (next.keyModule === 'IKEv2') return undefined;
    let v1: V1Session | undefined;
    const result = m.v1.initiate({
      remote: next.remote,
      peer: next,
      forceUdpEncapsulation: this.o.forceUdpEncapsulation,
      announceAuthIp: true,
      started: (s) => (v1 = s),
    });
    result.catch(() => {}); // its outcome is read below, or it was given up
    const first = await Promise.race([
      authip.session.peerAnswered.then(() => 'authip' as const),
      authip.child.then(
        () => 'authip' as const,
        () => 'authip failed' as const,
      ),
      (v1?.peerAnswered ?? new Promise<never>(() => {})).then(() => 'ikev1' as const),
      result.then(
        () => 'ikev1' as const,
        () => 'ikev1 failed' as const,
      ),
    ]);
    if (first === 'ikev1') {
      authip.session.terminate('the peer answered IKEv1 (no AuthIP)');
      this.o.log.info({ remote: plan.remote }, 'IKEv1 answered alongside AuthIP: the peer speaks no AuthIP');
      const r = await result;
      return { session: r.session, child: r.child.child };
    }
    if (v1 && v1.state !== 'dead') v1.terminate(first === 'authip' ? 'the peer answers AuthIP' : 'AuthIP failed first');
    return undefined;
  }

  /** ESP arrived on a child SA: its peer is alive. */
  noteEsp(spiIn: number): void {
    for (const m of this.managers.values()) m.noteEsp(spiIn);
  }

  /** Remote address ranges of the rules that negotiate (what the data plane must route to itself). */
  protectedRanges(): string[] {
    const out = new Set<string>();
    for (const r of this.doc.rules) {
      if (r.Enabled !== 'True' || (r.InboundSecurity === 'None' && r.OutboundSecurity === 'None')) continue;
      for (const a of r.RemoteAddress) out.add(a);
    }
    return [...out];
  }

  /** The data plane reports a child SA's byte/packet lifetime: soft → rekey, hard → delete. */
  expire(spiIn: number, hard: boolean): void {
    for (const m of this.managers.values()) m.expire(spiIn, hard);
  }

  /**
   * A new active policy: SAs whose rule, credentials and negotiated IKE proposal it still allows
   * stay up (their next rekey uses the new sets); the others are deleted at the peer.
   */
  reload(activeStore: PolicyDocument): void {
    const doc = this.inForce(activeStore);
    this.doc = doc;
    this.o.onApplied?.(activeStore);
    let kept = 0;
    let deleted = 0;
    for (const [address, m] of this.managers) {
      for (const s of [...m.sessions(), ...m.v1.sessions(), ...m.authip.sessions()] as KeyedSession[]) {
        if (s.state !== 'established') continue;
        const remote = s.sa.remote.address;
        let next: PeerConfig | undefined;
        try {
          const module = s instanceof V1Session ? 'IKEv1' : s instanceof AuthIpSession ? 'AuthIP' : 'IKEv2';
          const plan = planResponder(doc, address, remote, {
            ...this.planOptions,
            afterKerberos: module !== 'AuthIP',
          });
          // A rule that now names the other keying module no longer allows this SA.
          const allowed =
            plan && ((plan.keyModule === 'Default' && module !== 'AuthIP') || plan.keyModule === module)
              ? plan
              : undefined;
          next = allowed && (s.role === 'responder' ? asResponder(allowed) : allowed);
        } catch {
          next = undefined;
        }
        const chosen = s.sa.chosen;
        const still =
          next &&
          next.name === s.peer.name &&
          sameCredentials(next.credentials, s.peer.credentials) &&
          chosen !== undefined &&
          (s instanceof AuthIpSession
            ? s.choice !== undefined && selectMm([s.choice.transform], next.ikeProposals) !== undefined
            : selectProposal([chosen], next.ikeProposals) !== undefined);
        if (still && next) {
          s.peer = next;
          kept++;
          // A child SA that does not encrypt, where the rule now offers only proposals that do (a
          // firewall rule requires encryption with this peer): it goes, and traffic negotiates anew.
          const offered = next.espProposals(Buffer.alloc(4));
          if (offered.length > 0 && offered.every(encrypts))
            for (const e of [...s.children.values()])
              if (!encrypts(e.child.proposal)) {
                const reason = 'the policy requires encryption';
                void deleteChildSa(s, e, reason);
              }
        } else {
          deleted++;
          void s.delete('policy changed');
        }
      }
    }
    this.serviceLog.info({ rules: doc.rules.length, kept, deleted }, 'policy reloaded');
    this.o.onPolicy?.(doc);
  }

  /** Traffic counts of child SAs at the last sweep, and since when they have not moved. */
  private readonly quiet = new Map<number, { packets: number; since: number }>();
  private idleTimer?: NodeJS.Timeout;

  /**
   * Windows' SA idle timer (MaxSAIdleTimeSeconds, 300 s by default): a child SA that carried no
   * packet either way for that long is deleted, at the peer too — an AuthIP SA with its Main Mode,
   * which carries that one Quick Mode. The next packet of the flow negotiates again. Per-connection
   * SAs (Extended Mode) end with their connection, seen here too.
   */
  sweepIdle(now = Date.now()): void {
    const counters = this.o.dataplane?.counters?.bind(this.o.dataplane);
    if (!counters) return;
    const idleMs = this.o.idle?.afterMs ?? this.doc.settings.MaxSAIdleTimeSeconds * 1000;
    const seen = new Set<number>();
    // The kernel's socket tables, read at most once per sweep (however many connections' SAs).
    const read = socketTables();
    for (const s of this.sessions()) {
      if (s.state !== 'established') continue;
      // A connection's own SA (Extended Mode) ends with the connection: once its socket is gone or
      // belongs to someone else, another user could otherwise send as this one on the same ports.
      const uid = s instanceof AuthIpSession && s.role === 'initiator' ? s.config.extendedMode?.uid : undefined;
      if (uid !== undefined && [...s.children.values()].some((e) => connectionOwner(e.child, read) !== uid)) {
        this.o.log.info({ remote: s.sa.remote.address, uid }, "the user's connection ended: its SA deleted");
        void (s as AuthIpSession).delete('the connection ended');
        continue;
      }
      for (const e of [...s.children.values()]) {
        if (e.state.kind !== 'installed') continue;
        const spi = e.child.spiIn.readUInt32BE(0);
        const c = counters(spi);
        if (!c) continue;
        seen.add(spi);
        const packets = c.packetsIn + c.packetsOut;
        const q = this.quiet.get(spi);
        if (!q || q.packets !== packets) {
          this.quiet.set(spi, { packets, since: now });
          continue;
        }
        if (now - q.since < idleMs) continue;
        this.quiet.delete(spi);
        this.o.log.info(
          { remote: s.sa.remote.address, spiIn: e.child.spiIn.toString('hex'), idleSeconds: Math.round(idleMs / 1000) },
          'child SA idle: deleted',
        );
        // An AuthIP SA carries this one Quick Mode: it goes with its Main Mode.
        void (s instanceof AuthIpSession ? s.delete('idle') : deleteChildSa(s, e, 'idle')).catch(() => {});
      }
    }
    for (const spi of this.quiet.keys()) if (!seen.has(spi)) this.quiet.delete(spi);
  }

  /** Deletes every SA at its peer and closes the sockets. */
  async stop(): Promise<void> {
    clearInterval(this.idleTimer);
    this.watch?.close();
    await Promise.all([...this.managers.values()].map((m) => m.shutdown()));
    this.managers.clear();
  }
}
