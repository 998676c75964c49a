/**
 * From policy to an IKE negotiation: the rule that governs a flow, its main mode rule or the
 * default main mode set, its auth and quick mode sets, as IKEv2 proposals, credentials and traffic
 * selectors. Everything IKEv2 cannot do is a clear error, not a silent downgrade.
 */
import { isIP, isIPv4 } from 'node:net';
import { compiledPolicy, EMPTY_CONTEXT, type Flow, type HostContext, resolveAddressEntry } from '../filter/compile.ts';
import {
  ANY_V4,
  ANY_V6,
  boundBytes,
  entryToRange,
  inRange,
  type Range,
  v4ToNumber,
  v6ToBigint,
} from '../filter/address.ts';
import { ipBytes } from '../io/addr.ts';
import { kept } from '../io/kept.ts';
import {
  DEFAULT_MM_CRYPTO_SET,
  DEFAULT_PHASE1_AUTH_SET,
  DEFAULT_PHASE2_AUTH_SET,
  DEFAULT_QM_CRYPTO_SET,
  type IPsecRule,
  type PolicyDocument,
  findSet,
  type SetCollection,
} from '../policy/model.ts';
import { IkeError } from './errors.ts';
import { espProposals, ikeProposals } from './proposals.ts';
import type { Credentials, Identity } from './tasks/ike-auth.ts';
import { certIdentity } from './tasks/ike-cert.ts';
import { type CertStore, certCredentials } from './certstore.ts';
import { protocolNumber } from '../policy/endpoints.ts';
import type { Lifetimes, PeerConfig } from './session.ts';
import type { TrafficSelector } from './wire/codec.ts';
import { IdType, KeId, NotifyType } from './wire/constants.ts';

/** What an IKEv2 negotiation needs, whoever runs it (the initiator driver, the daemon). */
/**
 * What every SA negotiated under the same policy objects can share instead of holding a copy each:
 * a main mode crypto set's IKE proposals, an auth proposal's pre-shared key. Keyed by the policy
 * document's own objects (a new document, a new entry), so nothing outlives the policy it came from.
 */
const ikeProposalsOf = new WeakMap<object, ReturnType<typeof ikeProposals>>();
const pskOf = new WeakMap<object, Credentials>();
/** A quick mode crypto set's offer, by the choices that narrow it (see planForRule). */
interface QuickModeOffer {
  skipped: string[];
  offerable: boolean;
  espProposals: NegotiationPlan['espProposals'];
  lifetimes: Lifetimes;
}
const quickModeOf = new WeakMap<object, Map<string, QuickModeOffer>>();

function memo<K extends object, V>(cache: WeakMap<K, V>, key: K, make: () => V): V {
  let v = cache.get(key);
  if (v === undefined) {
    v = make();
    cache.set(key, v);
  }
  return v;
}

/** A secret's octets in memory of their own (not Node's shared pool, where they would pin 8 KiB). */
function secretBytes(text: string, encoding: BufferEncoding): Buffer {
  const pooled = Buffer.from(text, encoding);
  const own = Buffer.allocUnsafeSlow(pooled.length);
  pooled.copy(own);
  pooled.fill(0);
  return own;
}

export interface NegotiationParameters extends PeerConfig {
  /** Where IKE and ESP run: the tunnel endpoints, or the flow's own addresses. */
  local: string;
  remote: string;
}

export interface NegotiationPlan extends NegotiationParameters {
  rule: IPsecRule;
  /**
   * Which keying module negotiates: the rule's KeyModule; Default tries the store's
   * DefaultKeyModuleOrder (IKEv2 first as Windows 11 24H2 / Server 2025, unless set to IKEv1 first)
   * and the other module when the peer does not speak the first (src/daemon/keying.ts). AuthIP
   * when the rule authenticates with Kerberos.
   */
  keyModule: 'IKEv2' | 'IKEv1' | 'AuthIP' | 'Default';
  remoteId?: Identity;
  /** Windows proposals that could not be offered. */
  skipped: string[];
}

const KE: Record<string, KeId | undefined> = { DH14: KeId.MODP_2048, DH19: KeId.ECP_256, DH20: KeId.ECP_384 };

/**
 * An address's octets for a plan, each address once (a transport plan's identity and selector of a
 * side are the same bytes), kept: a plan lives as long as its SA.
 */
function addressBytes(): (a: string) => Buffer {
  const seen = new Map<string, Buffer>();
  return (a) => {
    let b = seen.get(a);
    if (!b) {
      b = kept(ipBytes(a));
      seen.set(a, b);
    }
    return b;
  };
}

function ipId(a: string, bytesOf: (a: string) => Buffer): Identity {
  return { type: isIPv4(a) ? IdType.IPV4_ADDR : IdType.IPV6_ADDR, data: bytesOf(a) };
}

/**
 * Traffic selectors for one side. Transport mode narrows to the flow's host (Windows' IKEv2
 * transport mode accepts single addresses only); tunnel mode proposes the rule's own ranges.
 */
function selectors(
  entries: string[],
  host: string,
  protocol: number,
  narrow: boolean,
  bytesOf: (a: string) => Buffer,
): TrafficSelector[] {
  const v4 = isIPv4(host);
  const type = v4 ? 7 : 8;
  const sel = (start: Buffer, end: Buffer): TrafficSelector => ({
    type,
    ipProtocol: protocol,
    startPort: 0,
    endPort: 65535,
    start,
    end,
  });
  if (!narrow && !entries.includes('Any')) {
    // Tunnel mode carries the rule's ranges of either family, whatever the tunnel endpoints' family
    // (IPv6 inside an IPv4 tunnel and the other way round, RFC 4301 §4.1).
    const ranges = entries.map(entryToRange).filter((r) => r !== undefined);
    if (ranges.length > 0)
      return ranges.map((r) => {
        return {
          ...sel(kept(boundBytes(r.lo, r.family)), kept(boundBytes(r.hi, r.family))),
          type: r.family === 4 ? 7 : 8,
        };
      });
  }
  const b = bytesOf(host);
  return [sel(b, b)];
}

/**
 * Lifetimes from the crypto sets (main mode MaxMinutes, the first quick mode proposal's MaxMinutes);
 * rekeying starts at 90 % so the new SA is up before the old one expires.
 */
export function lifetimes(
  mmMinutes: number | undefined,
  qmMinutes: number | undefined,
  qmKilobytes?: number,
): Lifetimes {
  const ike = (mmMinutes || 480) * 60_000;
  const child = (qmMinutes || 60) * 60_000;
  return {
    ikeRekeyMs: ike * 0.9,
    ikeExpireMs: ike,
    childRekeyMs: child * 0.9,
    childExpireMs: child,
    childKilobytes: qmKilobytes || 100_000,
  };
}

export interface PlanOptions {
  ctx?: HostContext;
  /** The machine certificate stores, read when a rule authenticates with certificates. */
  certs?: () => CertStore;
  /**
   * Skip the auth set's Kerberos methods: the next method in the set's order after AuthIP with
   * Kerberos failed (Windows tries every method of the set in order).
   */
  afterKerberos?: boolean;
}

/** Plans the IKEv2 negotiation for an outbound flow, or explains why there is none. */
export function planNegotiation(doc: PolicyDocument, flow: Flow, opts: PlanOptions = {}): NegotiationPlan {
  const decision = compiledPolicy(doc, opts.ctx ?? EMPTY_CONTEXT).classify(flow);
  const rule = decision.filter?.rule;
  if (decision.action !== 'negotiate' || !rule) {
    throw new IkeError(
      `no IPsec negotiation for ${flow.local} -> ${flow.remote}: ${decision.filter ? `"${decision.filter.label}" exempts it` : 'no connection security rule matches'}`,
      NotifyType.TS_UNACCEPTABLE,
    );
  }
  return planForRule(doc, rule, flow, opts);
}

/**
 * What we accept from a peer that starts IKE with us at `local` from `remote`: a tunnel rule whose
 * endpoints are the two addresses, else the transport rule governing traffic between them. The
 * selectors are returned from our side (TSi ours), like an initiator's plan.
 */
export function planResponder(
  doc: PolicyDocument,
  local: string,
  remote: string,
  opts: PlanOptions = {},
): NegotiationPlan | undefined {
  const flow: Flow = { direction: 'Inbound', local, remote, protocol: 0 };
  const tunnel = doc.rules.find(
    (r) =>
      r.Enabled === 'True' &&
      r.Mode === 'Tunnel' &&
      r.InboundSecurity !== 'None' &&
      r.RemoteTunnelEndpoint.includes(remote) &&
      r.LocalTunnelEndpoint.includes(local),
  );
  if (tunnel) return planForRule(doc, tunnel, flow, opts);
  const filter = compiledPolicy(doc, opts.ctx ?? EMPTY_CONTEXT)
    .matchAll(flow)
    .find((f) => f.kind !== 'negotiate' || f.rule?.Mode !== 'Tunnel');
  if (!filter || filter.kind !== 'negotiate' || !filter.rule || filter.inbound === 'None') return undefined;
  return planForRule(doc, filter.rule, flow, opts);
}

/** The negotiation a rule asks for, for one flow (transport) or its tunnel. */
export function planForRule(doc: PolicyDocument, rule: IPsecRule, flow: Flow, opts: PlanOptions = {}): NegotiationPlan {
  const find = <C extends SetCollection>(collection: C, name: string, kind: string): PolicyDocument[C][number] => {
    const s = findSet(doc, collection, name);
    if (!s)
      throw new IkeError(
        `${kind} "${name}" of rule "${rule.DisplayName}" does not exist`,
        NotifyType.NO_PROPOSAL_CHOSEN,
      );
    return s;
  };
  const p1 = find('phase1AuthSets', rule.Phase1AuthSet || DEFAULT_PHASE1_AUTH_SET, 'phase 1 authentication set');
  // The first method of the set that the rule's keying module can carry, in the set's order:
  // AuthIP authenticates computers with Kerberos (no pre-shared key, MS-AIPS §2.2.3.4); IKEv2 and
  // IKEv1 with pre-shared keys and certificates; Default picks AuthIP for a Kerberos method.
  const kerberos = (p: (typeof p1.Proposal)[number]) =>
    p.AuthenticationMethod === 'Kerberos' && p.Principal === 'Machine';
  const keyed = (p: (typeof p1.Proposal)[number]) =>
    (p.AuthenticationMethod === 'PreSharedKey' && !!p.PreSharedKey) || p.AuthenticationMethod === 'Certificate';
  const carried = (p: (typeof p1.Proposal)[number]) =>
    opts.afterKerberos
      ? rule.KeyModule !== 'AuthIP' && keyed(p)
      : rule.KeyModule === 'AuthIP'
        ? kerberos(p)
        : rule.KeyModule === 'Default'
          ? kerberos(p) || keyed(p)
          : keyed(p);
  const usable = p1.Proposal.find(carried);
  if (!usable) {
    const methods = p1.Proposal.map(
      (p) => `${p.Principal === 'Machine' ? 'computer ' : ''}${p.AuthenticationMethod}`,
    ).join(', ');
    throw new IkeError(
      rule.KeyModule === 'AuthIP'
        ? `rule "${rule.DisplayName}" uses AuthIP and authenticates with ${methods}: consec's AuthIP authenticates computers with Kerberos (AuthIP has no pre-shared key method)`
        : p1.Proposal.some(kerberos)
          ? `rule "${rule.DisplayName}" authenticates with ${methods} over ${rule.KeyModule}: Kerberos is carried by AuthIP (KeyModule AuthIP or Default)`
          : `rule "${rule.DisplayName}" authenticates with ${methods}: consec's IKEv2 and IKEv1 authenticate with certificates or pre-shared keys`,
      NotifyType.AUTHENTICATION_FAILED,
    );
  }
  const fam = isIPv4(flow.remote) ? 4 : 6;
  const covers = (entries: string[], a: string) =>
    entries.includes('Any') ||
    entries.some((e) => {
      const r = entryToRange(e);
      return r !== undefined && inRange(r, fam, fam === 4 ? v4ToNumber(a) : 0, fam === 6 ? v6ToBigint(a) : 0n);
    });
  // Main mode rules name the IKE peers: the tunnel endpoints in tunnel mode, the flow's hosts otherwise.
  const tunnelMode = rule.Mode === 'Tunnel';
  const ikeLocal = tunnelMode ? (rule.LocalTunnelEndpoint[0] ?? flow.local) : flow.local;
  const ikeRemote = tunnelMode ? (rule.RemoteTunnelEndpoint[0] ?? flow.remote) : flow.remote;
  const mmRule = doc.mainModeRules.find(
    (r) =>
      r.Enabled === 'True' &&
      isIP(ikeLocal) !== 0 &&
      isIP(ikeRemote) !== 0 &&
      covers(r.LocalAddress, ikeLocal) &&
      covers(r.RemoteAddress, ikeRemote),
  );
  const mm = find('mainModeCryptoSets', mmRule?.MainModeCryptoSet || DEFAULT_MM_CRYPTO_SET, 'main mode crypto set');
  const qm = find('quickModeCryptoSets', rule.QuickModeCryptoSet || DEFAULT_QM_CRYPTO_SET, 'quick mode crypto set');
  const ike = memo(ikeProposalsOf, mm, () => ikeProposals(mm.Proposal));
  if (ike.proposals.length === 0)
    throw new IkeError(
      `none of the main mode proposals can be offered: ${ike.skipped.join('; ')}`,
      NotifyType.NO_PROPOSAL_CHOSEN,
    );
  const pfsName =
    qm.PerfectForwardSecrecyGroup === 'SameAsMainMode' ? mm.Proposal[0]?.KeyExchange : qm.PerfectForwardSecrecyGroup;
  const pfs = pfsName && pfsName !== 'None' ? KE[pfsName] : undefined;
  // IKEv2 transport mode has no AH (validated: the set has something else): those proposals stay out.
  const withoutAh = rule.KeyModule === 'IKEv2' && rule.Mode !== 'Tunnel';
  let qmProposals = withoutAh ? qm.Proposal.filter((p) => !p.Encapsulation.includes('AH')) : qm.Proposal;
  // A firewall rule that requires encryption for traffic with this peer (in tunnel mode: with any
  // host behind it the rule protects): its SAs encrypt, what Windows' dynamic encryption
  // negotiates, so no integrity-only SA carries that traffic. Address keywords resolved here.
  const ctx = opts.ctx ?? EMPTY_CONTEXT;
  const rangesOf = (entries: readonly string[]): Range[] =>
    entries.flatMap((e) => {
      const r = resolveAddressEntry(e, ctx);
      return r === 'any' ? [ANY_V4, ANY_V6] : r;
    });
  const peerRanges = rule.Mode === 'Tunnel' ? rangesOf(rule.RemoteAddress) : rangesOf([flow.remote]);
  const overlaps = (a: Range, b: Range) => a.family === b.family && a.lo <= b.hi && b.lo <= a.hi;
  const encrypting = doc.firewallRules.find(
    (r) =>
      r.Enabled === 'True' &&
      r.Encryption !== 'NotRequired' &&
      rangesOf(r.RemoteAddress).some((x) => peerRanges.some((y) => overlaps(x, y))),
  );
  if (encrypting) {
    qmProposals = qmProposals.filter((p) => p.Encapsulation.includes('ESP') && p.Encryption !== 'None');
    if (qmProposals.length === 0)
      throw new IkeError(
        `firewall rule "${encrypting.DisplayName}" requires encryption for traffic with ${flow.remote}, and quick mode crypto set "${qm.DisplayName}" has no proposal that encrypts`,
        NotifyType.NO_PROPOSAL_CHOSEN,
      );
  }
  // One proposal builder and one set of lifetimes for every SA of the same crypto sets and choices.
  const offer = memo(quickModeOf, qm, () => new Map<string, QuickModeOffer>());
  const variant = `${withoutAh ? 'without AH' : ''}/${encrypting ? 'encrypting' : ''}/${pfsName}/${mm.MaxMinutes}`;
  let q = offer.get(variant);
  if (!q) {
    const chosen = qmProposals;
    const esp = espProposals(chosen, Buffer.alloc(4), pfs);
    q = {
      skipped: esp.skipped,
      offerable: esp.proposals.length > 0,
      espProposals: (spi) => espProposals(chosen, spi, pfs).proposals,
      lifetimes: Object.freeze(lifetimes(mm.MaxMinutes, chosen[0]?.MaxMinutes, chosen[0]?.MaxKiloBytes)),
    };
    offer.set(variant, q);
  }
  if (!q.offerable)
    throw new IkeError(
      `none of the quick mode proposals can be offered: ${q.skipped.join('; ')}`,
      NotifyType.NO_PROPOSAL_CHOSEN,
    );
  const tunnel = rule.Mode === 'Tunnel';
  const local = tunnel ? (rule.LocalTunnelEndpoint[0] ?? flow.local) : flow.local;
  const remote = tunnel ? (rule.RemoteTunnelEndpoint[0] ?? flow.remote) : flow.remote;
  if (tunnel && (local === 'Any' || remote === 'Any'))
    throw new IkeError('dynamic tunnel endpoints (Any) are not supported', NotifyType.TS_UNACCEPTABLE);
  const proto = rule.Protocol === 'Any' ? 0 : (protocolNumber(rule.Protocol) ?? Math.max(0, flow.protocol));
  let credentials: Credentials;
  if (usable.AuthenticationMethod === 'Kerberos') {
    credentials = { method: 'kerberos' };
  } else if (usable.AuthenticationMethod === 'Certificate') {
    if (!opts.certs)
      throw new IkeError(
        `rule "${rule.DisplayName}" needs certificates, but no certificate store was given`,
        NotifyType.AUTHENTICATION_FAILED,
      );
    credentials = { method: 'cert', ...certCredentials(opts.certs(), usable, rule.DisplayName) };
  } else {
    const encoding = doc.settings.KeyEncoding === 'UTF16' ? 'utf16le' : 'utf8';
    credentials = memo(pskOf, usable, () => ({
      method: 'psk',
      psk: secretBytes(usable.PreSharedKey as string, encoding),
    }));
  }
  // A Phase 2 auth set: a second authentication, of the user, which only AuthIP carries (Extended
  // Mode, MS-AIPS §3.6). Extended Mode authenticates the user of one connection, so the Quick
  // Mode's selectors are that connection's protocol and ports (MS-AIPS §3.1.1).
  const p2 = rule.Phase2AuthSet ? findSet(doc, 'phase2AuthSets', rule.Phase2AuthSet) : undefined;
  if (rule.Phase2AuthSet && !p2 && rule.Phase2AuthSet !== DEFAULT_PHASE2_AUTH_SET)
    find('phase2AuthSets', rule.Phase2AuthSet, 'phase 2 authentication set');
  let userAuthentication: NegotiationPlan['userAuthentication'];
  if (p2) {
    const methods = p2.Proposal.map((p) => `${p.Principal === 'User' ? 'user ' : ''}${p.AuthenticationMethod}`).join(
      ', ',
    );
    if (!p2.Proposal.some((p) => p.AuthenticationMethod === 'Kerberos' && p.Principal === 'User'))
      throw new IkeError(
        `rule "${rule.DisplayName}" authenticates users with ${methods}: consec's Extended Mode authenticates users with Kerberos`,
        NotifyType.AUTHENTICATION_FAILED,
      );
    if (credentials.method !== 'kerberos' || tunnel)
      throw new IkeError(
        `rule "${rule.DisplayName}" authenticates users (phase 2 authentication set "${p2.DisplayName}"): that is AuthIP's Extended Mode, after computer Kerberos in phase 1, in transport mode`,
        NotifyType.AUTHENTICATION_FAILED,
      );
    userAuthentication = { method: 'kerberos' };
  }
  const bytesOf = addressBytes();
  const connection = (ts: TrafficSelector[], port: number | undefined): TrafficSelector[] =>
    userAuthentication && port !== undefined && flow.protocol > 0
      ? ts.map((t) => ({ ...t, ipProtocol: flow.protocol, startPort: port, endPort: port }))
      : ts;
  return {
    rule,
    userAuthentication,
    keyModule:
      credentials.method === 'kerberos'
        ? 'AuthIP'
        : rule.KeyModule === 'IKEv1' || rule.KeyModule === 'IKEv2'
          ? rule.KeyModule
          : 'Default',
    mode: tunnel ? 'tunnel' : 'transport',
    local,
    remote,
    ikeProposals: ike.proposals,
    espProposals: q.espProposals,
    name: rule.DisplayName,
    credentials,
    lifetimes: q.lifetimes,
    localId: credentials.method === 'cert' ? certIdentity(credentials) : ipId(local, bytesOf),
    remoteId: credentials.method === 'cert' ? undefined : ipId(remote, bytesOf),
    tsi: connection(selectors(rule.LocalAddress, flow.local, proto, !tunnel, bytesOf), flow.localPort),
    tsr: connection(selectors(rule.RemoteAddress, flow.remote, proto, !tunnel, bytesOf), flow.remotePort),
    skipped: [...ike.skipped, ...q.skipped],
  };
}
