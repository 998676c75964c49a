/**
 * Compiles the active policy into an ordered filter list and an index, like WFP's filters with
 * weights (reference §7.1, 7.4, 7.5): IKE is always exempt; then the default exemptions of the
 * global settings; then authentication exemptions (None/None rules); then negotiation rules, most
 * specific first. Traffic no rule matches goes in clear.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { protocolNumber } from '../policy/endpoints.ts';
import type { EnumValue, SecurityPolicy } from '../policy/enums.ts';
import { DEFAULT_PHASE1_AUTH_SET, findSet, type IPsecRule, type PolicyDocument } from '../policy/model.ts';
import { ANY_V4, ANY_V6, entryToRange, inRange, type Range, rangeBits, v4ToNumber, v6ToBigint } from './address.ts';

type Security = EnumValue<typeof SecurityPolicy>;

/** Facts about this host that address keywords (DNS, DHCP, LocalSubnet, …) stand for. */
export interface HostContext {
  localAddresses: string[];
  localSubnets: string[];
  dnsServers: string[];
  dhcpServers: string[];
  winsServers: string[];
  defaultGateways: string[];
  domainControllers: string[];
}

export const EMPTY_CONTEXT: HostContext = {
  localAddresses: [],
  localSubnets: [],
  dnsServers: [],
  dhcpServers: [],
  winsServers: [],
  defaultGateways: [],
  domainControllers: [],
};

export type FilterKind = 'ike' | 'default-exemption' | 'exemption' | 'negotiate';

export interface Filter {
  /** Precedence: 0 is consulted first. */
  rank: number;
  kind: FilterKind;
  /** What a person reads: "IKE", "default exemption: Dhcp", or the rule's DisplayName. */
  label: string;
  rule?: IPsecRule;
  /** Address ranges; an empty list means any address of either family. */
  local: Range[];
  remote: Range[];
  protocol?: number;
  localPorts?: [number, number][];
  remotePorts?: [number, number][];
  /** For ICMP exemptions: the message types that match. */
  icmpTypes?: number[];
  inbound: Security;
  outbound: Security;
}

export interface Flow {
  direction: 'Outbound' | 'Inbound';
  local: string;
  remote: string;
  /** IP protocol number. */
  protocol: number;
  localPort?: number;
  remotePort?: number;
  icmpType?: number;
}

export interface Decision {
  filter?: Filter;
  /** Clear: sent/accepted without IPsec. Negotiate: needs an SA (Request may fall back to clear). */
  action: 'clear' | 'negotiate';
  /** The security the matching rule asks for in the flow's direction. */
  security: Security;
}

const KIND_ORDER: Record<FilterKind, number> = { ike: 0, 'default-exemption': 1, exemption: 2, negotiate: 3 };

const ICMP_EXEMPTIONS: Record<string, { v4: number[] | 'all'; v6: number[] | 'all' } | undefined> = {
  NeighborDiscovery: { v4: [], v6: [133, 134, 135, 136, 137] },
  RouterDiscovery: { v4: [9, 10], v6: [133, 134] },
  Icmp: { v4: 'all', v6: 'all' },
};

/**
 * One policy address entry as address ranges: literals as they are, keywords (LocalSubnet, DNS,
 * DHCP, WINS, DefaultGateway) resolved with the host context; 'any' for Any (and for Intranet and
 * Internet, which need network location awareness). Unknown or empty keywords give no range.
 * Used by the compiler and by the data plane's routes and fail-closed filters alike.
 */
export function resolveAddressEntry(entry: string, ctx: HostContext, warnings: string[] = []): Range[] | 'any' {
  return resolveEntry(entry, ctx, warnings, entry);
}

/** Address keywords resolved with the host context; unknown or empty keywords match nothing. */
function resolveEntry(entry: string, ctx: HostContext, warnings: string[], where: string): Range[] | 'any' {
  if (entry === 'Any') return 'any';
  const direct = entryToRange(entry);
  if (direct) return [direct];
  const lists: Record<string, string[]> = {
    LocalSubnet: ctx.localSubnets,
    DNS: ctx.dnsServers,
    DHCP: ctx.dhcpServers,
    WINS: ctx.winsServers,
    DefaultGateway: ctx.defaultGateways,
  };
  const list = lists[entry];
  if (list) return list.map(entryToRange).filter((r): r is Range => r !== undefined);
  if (entry === 'Intranet' || entry === 'Internet') {
    warnings.push(
      `${where}: the keyword ${entry} depends on network location awareness, which consec does not have; it matches any address.`,
    );
    return 'any';
  }
  warnings.push(`${where}: the keyword ${entry} is not supported by consec and matches nothing.`);
  return [];
}

function resolveList(entries: readonly string[], ctx: HostContext, warnings: string[], where: string): Range[] {
  const out: Range[] = [];
  for (const e of entries) {
    const r = resolveEntry(e, ctx, warnings, where);
    if (r === 'any') return [];
    out.push(...r);
  }
  // A list of keywords that resolved to nothing must match nothing, not everything.
  if (out.length === 0) return [{ family: 4, lo: 1, hi: 0 }];
  return out;
}

function ports(list: readonly string[]): [number, number][] | undefined {
  if (list.length === 1 && list[0] === 'Any') return undefined;
  return list
    .filter((p) => /^\d/.test(p))
    .map((p) => {
      const [a, b] = p.split('-').map(Number) as [number, number | undefined];
      return [a, b ?? a];
    });
}

const breadth = (ranges: Range[]): number => (ranges.length === 0 ? 129 : Math.max(...ranges.map(rangeBits)));

export class CompiledPolicy {
  private readonly v4: V4Index;
  private readonly v6: V6Index;

  constructor(
    readonly filters: Filter[],
    readonly warnings: string[],
  ) {
    this.v4 = new V4Index(filters);
    this.v6 = new V6Index(filters);
  }

  /** The first filter (in precedence order) matching the flow, and what it means for the flow. */
  classify(flow: Flow): Decision {
    const family = isIPv4(flow.remote) ? 4 : isIPv6(flow.remote) ? 6 : 0;
    if (family === 0 || (family === 4 ? !isIPv4(flow.local) : !isIPv6(flow.local))) {
      throw new RangeError(`not a flow of one IP family: ${flow.local} -> ${flow.remote}`);
    }
    const filter =
      family === 4
        ? this.v4.find(
            v4ToNumber(flow.local),
            v4ToNumber(flow.remote),
            flow.protocol,
            flow.localPort ?? -1,
            flow.remotePort ?? -1,
            flow.icmpType ?? -1,
          )
        : this.v6.find(v6ToBigint(flow.remote), v6ToBigint(flow.local), flow);
    return decide(filter, flow.direction);
  }

  /** Numeric fast path for IPv4 (the data plane and the benchmark): no allocation per lookup. */
  classifyV4Filter(
    local: number,
    remote: number,
    protocol: number,
    localPort: number,
    remotePort: number,
    icmpType = -1,
  ): Filter | undefined {
    return this.v4.find(local, remote, protocol, localPort, remotePort, icmpType);
  }

  /** Every filter matching the flow, in precedence order (Find-NetIPsecRule). */
  matchAll(flow: Flow): Filter[] {
    const family = isIPv4(flow.remote) ? 4 : 6;
    const l4 = family === 4 ? v4ToNumber(flow.local) : 0;
    const r4 = family === 4 ? v4ToNumber(flow.remote) : 0;
    const l6 = family === 6 ? v6ToBigint(flow.local) : 0n;
    const r6 = family === 6 ? v6ToBigint(flow.remote) : 0n;
    return this.filters.filter(
      (f) =>
        matchesAddresses(f.remote, family, r4, r6) && matchesAddresses(f.local, family, l4, l6) && matchesRest(f, flow),
    );
  }
}

function decide(filter: Filter | undefined, direction: Flow['direction']): Decision {
  if (!filter || filter.kind !== 'negotiate') return { filter, action: 'clear', security: 'None' };
  const security = direction === 'Outbound' ? filter.outbound : filter.inbound;
  return { filter, action: security === 'None' ? 'clear' : 'negotiate', security };
}

function matchesAddresses(ranges: Range[], family: 4 | 6, v4: number, v6: bigint): boolean {
  if (ranges.length === 0) return true;
  for (const r of ranges) if (inRange(r, family, v4, v6)) return true;
  return false;
}

function inPorts(list: [number, number][] | undefined, port: number | undefined): boolean {
  if (!list) return true;
  if (port === undefined) return false;
  for (const [a, b] of list) if (port >= a && port <= b) return true;
  return false;
}

function matchesRest(
  f: Filter,
  flow: { protocol: number; localPort?: number; remotePort?: number; icmpType?: number },
): boolean {
  if (f.protocol !== undefined && f.protocol !== flow.protocol) return false;
  if (f.icmpTypes && (flow.icmpType === undefined || !f.icmpTypes.includes(flow.icmpType))) return false;
  if (f.kind === 'ike') {
    return inPorts(f.localPorts, flow.localPort) || inPorts(f.remotePorts, flow.remotePort);
  }
  return inPorts(f.localPorts, flow.localPort) && inPorts(f.remotePorts, flow.remotePort);
}

/** One filter reduced to typed arrays for the IPv4 fast path. */
interface V4Filter {
  filter: Filter;
  rank: number;
  /** [lo, hi, lo, hi, …] of the local ranges; null: any local address. */
  local: Uint32Array | null;
  /** -1: any protocol. */
  protocol: number;
  localPorts: Int32Array | null;
  remotePorts: Int32Array | null;
  icmpTypes: Int32Array | null;
  eitherPort: boolean;
}

function v4Ranges(ranges: Range[]): Uint32Array | null {
  if (ranges.length === 0) return null;
  const v4 = ranges.filter((r) => r.family === 4);
  const out = new Uint32Array(v4.length * 2);
  v4.forEach((r, i) => {
    out[2 * i] = r.lo as number;
    out[2 * i + 1] = r.hi as number;
  });
  return out;
}

const portArray = (p: [number, number][] | undefined): Int32Array | null => (p ? Int32Array.from(p.flat()) : null);

/**
 * Typed arrays made once per address or port list object: a rule's lists are the same objects in
 * every compilation (see ruleFilter), so a recompiled policy reuses them.
 */
const v4RangesMade = new WeakMap<Range[], Uint32Array | null>();
const portsMade = new WeakMap<[number, number][], Int32Array>();

function v4RangesOnce(ranges: Range[]): Uint32Array | null {
  let made = v4RangesMade.get(ranges);
  if (made === undefined) v4RangesMade.set(ranges, (made = v4Ranges(ranges)));
  return made;
}

function portsOnce(p: [number, number][] | undefined): Int32Array | null {
  if (!p) return null;
  let made = portsMade.get(p);
  if (!made) portsMade.set(p, (made = portArray(p) as Int32Array));
  return made;
}

function inPairs(pairs: Int32Array | Uint32Array, v: number): boolean {
  for (let i = 0; i < pairs.length; i += 2) if (v >= (pairs[i] as number) && v <= (pairs[i + 1] as number)) return true;
  return false;
}

function matchV4(f: V4Filter, local: number, protocol: number, lport: number, rport: number, icmp: number): boolean {
  if (f.local !== null && !inPairs(f.local, local)) return false;
  if (f.protocol >= 0 && f.protocol !== protocol) return false;
  if (f.icmpTypes !== null && !f.icmpTypes.includes(icmp)) return false;
  const l = f.localPorts === null || (lport >= 0 && inPairs(f.localPorts, lport));
  const r = f.remotePorts === null || (rport >= 0 && inPairs(f.remotePorts, rport));
  return f.eitherPort
    ? (f.localPorts !== null && lport >= 0 && inPairs(f.localPorts, lport)) ||
        (f.remotePorts !== null && rport >= 0 && inPairs(f.remotePorts, rport))
    : l && r;
}

/**
 * Elementary intervals of one family's remote address space and, per interval, the ranks of the
 * filters whose remote ranges cover it, in rank order, packed in one Int32Array (CSR: interval i's
 * ranks are members[offsets[i] .. offsets[i + 1]]). Filters come in rank order, so each list is
 * built sorted. Each family finds its interval starts and, per covered range, the span of
 * intervals [first, end) it covers (`spans`: rank, first, end triples); packing is shared.
 */
interface Intervals {
  offsets: Int32Array;
  members: Int32Array;
}

function packIntervals(n: number, spans: readonly number[]): Intervals {
  const offsets = new Int32Array(n + 1);
  const last = new Int32Array(n).fill(-1);
  for (let s = 0; s < spans.length; s += 3) {
    const rank = spans[s] as number;
    for (let i = spans[s + 1] as number; i < (spans[s + 2] as number); i++) {
      if (last[i] === rank) continue;
      last[i] = rank;
      offsets[i + 1] = (offsets[i + 1] as number) + 1;
    }
  }
  for (let i = 1; i <= n; i++) offsets[i] = (offsets[i] as number) + (offsets[i - 1] as number);
  const members = new Int32Array(offsets[n] as number);
  const cursor = offsets.slice(0, n);
  last.fill(-1);
  for (let s = 0; s < spans.length; s += 3) {
    const rank = spans[s] as number;
    for (let i = spans[s + 1] as number; i < (spans[s + 2] as number); i++) {
      if (last[i] === rank) continue;
      last[i] = rank;
      members[(cursor[i] as number)++] = rank;
    }
  }
  return { offsets, members };
}

function v4Intervals(filters: readonly Filter[]): Intervals & { starts: Uint32Array } {
  const points: number[] = [];
  for (const f of filters)
    for (const r of f.remote) {
      if (r.family !== 4 || r.lo > r.hi) continue;
      points.push(r.lo);
      if (r.hi !== ANY_V4.hi) points.push(r.hi + 1);
    }
  const sorted = Float64Array.from(points).sort();
  let n = 0;
  for (let i = 0; i < sorted.length; i++) if (n === 0 || sorted[n - 1] !== sorted[i]) sorted[n++] = sorted[i] as number;
  const starts = Uint32Array.from(sorted.subarray(0, n));
  const spans: number[] = [];
  for (const f of filters)
    for (const r of f.remote) {
      if (r.family !== 4 || r.lo > r.hi) continue;
      const first = floorIndexV4(starts, r.lo);
      let end = first + 1;
      while (end < starts.length && (starts[end] as number) <= r.hi) end++;
      spans.push(f.rank, first, end);
    }
  return { starts, ...packIntervals(n, spans) };
}

const compareBig = (a: bigint, b: bigint): number => (a < b ? -1 : a > b ? 1 : 0);

function v6Intervals(filters: readonly Filter[]): Intervals & { starts: bigint[] } {
  const points: bigint[] = [];
  for (const f of filters)
    for (const r of f.remote) {
      if (r.family !== 6 || r.lo > r.hi) continue;
      points.push(r.lo);
      if (r.hi !== ANY_V6.hi) points.push(r.hi + 1n);
    }
  points.sort(compareBig);
  const starts: bigint[] = [];
  for (const p of points) if (starts.length === 0 || starts[starts.length - 1] !== p) starts.push(p);
  const spans: number[] = [];
  for (const f of filters)
    for (const r of f.remote) {
      if (r.family !== 6 || r.lo > r.hi) continue;
      const first = floorIndexV6(starts, r.lo);
      let end = first + 1;
      while (end < starts.length && (starts[end] as bigint) <= r.hi) end++;
      spans.push(f.rank, first, end);
    }
  return { starts, ...packIntervals(starts.length, spans) };
}

/** The index of the last start ≤ addr, or -1. */
function floorIndexV6(starts: readonly bigint[], addr: bigint): number {
  let lo = 0;
  let hi = starts.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    if ((starts[mid] as bigint) <= addr) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

/** The same for the IPv4 hot path, on a Uint32Array. */
function floorIndexV4(starts: Uint32Array, addr: number): number {
  let lo = 0;
  let hi = starts.length - 1;
  let found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    if ((starts[mid] as number) <= addr) {
      found = mid;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  return found;
}

/**
 * The IPv4 index: the interval starts in a Uint32Array, so a lookup is a binary search and a short
 * scan over typed arrays, with nothing allocated.
 */
class V4Index {
  private readonly starts: Uint32Array;
  private readonly offsets: Int32Array;
  private readonly members: Int32Array;
  private readonly anyRemote: Int32Array;
  private readonly byRank: (V4Filter | undefined)[];

  constructor(filters: readonly Filter[]) {
    // Only filters that can match an IPv4 remote address (a policy of IPv6 servers needs none).
    this.byRank = filters.map((f) =>
      f.remote.length > 0 && !f.remote.some((r) => r.family === 4)
        ? undefined
        : {
            filter: f,
            rank: f.rank,
            local: v4RangesOnce(f.local),
            protocol: f.protocol ?? -1,
            localPorts: portsOnce(f.localPorts),
            remotePorts: portsOnce(f.remotePorts),
            icmpTypes: f.icmpTypes ? Int32Array.from(f.icmpTypes) : null,
            eitherPort: f.kind === 'ike',
          },
    );
    this.anyRemote = Int32Array.from(filters.filter((f) => f.remote.length === 0).map((f) => f.rank));
    const iv = v4Intervals(filters);
    this.starts = iv.starts;
    this.offsets = iv.offsets;
    this.members = iv.members;
  }

  find(
    local: number,
    remote: number,
    protocol: number,
    lport: number,
    rport: number,
    icmp: number,
  ): Filter | undefined {
    let best = -1;
    const i = floorIndexV4(this.starts, remote);
    if (i >= 0) {
      const end = this.offsets[i + 1] as number;
      for (let k = this.offsets[i] as number; k < end; k++) {
        const rank = this.members[k] as number;
        if (matchV4(this.byRank[rank] as V4Filter, local, protocol, lport, rport, icmp)) {
          best = rank;
          break;
        }
      }
    }
    const any = this.anyRemote;
    for (let k = 0; k < any.length; k++) {
      const rank = any[k] as number;
      if (best >= 0 && rank > best) break;
      if (matchV4(this.byRank[rank] as V4Filter, local, protocol, lport, rport, icmp)) {
        best = rank;
        break;
      }
    }
    return best >= 0 ? (this.byRank[best] as V4Filter).filter : undefined;
  }
}

/** The IPv6 index: the same intervals with bigint starts. */
class V6Index {
  private readonly iv: Intervals & { starts: bigint[] };
  private readonly anyRemote: readonly Filter[];

  constructor(private readonly filters: readonly Filter[]) {
    this.iv = v6Intervals(filters);
    this.anyRemote = filters.filter((f) => f.remote.length === 0);
  }

  find(
    remote: bigint,
    local: bigint,
    flow: { protocol: number; localPort?: number; remotePort?: number; icmpType?: number },
  ): Filter | undefined {
    const { starts, offsets, members } = this.iv;
    const i = floorIndexV6(starts, remote);
    let best: Filter | undefined;
    if (i >= 0) {
      const end = offsets[i + 1] as number;
      for (let k = offsets[i] as number; k < end; k++) {
        const f = this.filters[members[k] as number] as Filter;
        if (matchesAddresses(f.local, 6, 0, local) && matchesRest(f, flow)) {
          best = f;
          break;
        }
      }
    }
    for (const f of this.anyRemote) {
      if (best && f.rank > best.rank) break;
      if (matchesAddresses(f.local, 6, 0, local) && matchesRest(f, flow)) {
        best = f;
        break;
      }
    }
    return best;
  }
}

/** A rule's filter before ranking, with its precedence key and the warnings resolving it gave. */
interface RuleFilter extends Omit<Filter, 'rank'> {
  key: number;
  warnings?: readonly string[];
}

/**
 * Precedence packed into one number (kind < 4, breadths ≤ 129, flags 0/1): kind, then the
 * narrowest remote, then local, then protocol and ports given.
 */
function precedenceKey(f: Omit<Filter, 'rank'>): number {
  return (
    ((((KIND_ORDER[f.kind] * 130 + breadth(f.remote)) * 130 + breadth(f.local)) * 2 +
      (f.protocol === undefined ? 1 : 0)) *
      2 +
      (f.remotePorts ? 0 : 1)) *
      2 +
    (f.localPorts ? 0 : 1)
  );
}

/**
 * A rule's filter, kept per frozen rule object and host context: the daemon compiles the whole
 * policy on every change, and rules read from the store's line cache are the same objects each time.
 */
const ruleFilters = new WeakMap<HostContext, WeakMap<IPsecRule, RuleFilter>>();

function ruleFilter(rule: IPsecRule, ctx: HostContext): RuleFilter {
  const frozen = Object.isFrozen(rule);
  let byRule = frozen ? ruleFilters.get(ctx) : undefined;
  const hit = byRule?.get(rule);
  if (hit) return hit;
  const warnings: string[] = [];
  const where = `IPsec rule "${rule.DisplayName}" (${rule.Name})`;
  const exemption = rule.InboundSecurity === 'None' && rule.OutboundSecurity === 'None';
  const made: RuleFilter = {
    kind: exemption ? 'exemption' : 'negotiate',
    label: rule.DisplayName,
    rule,
    local: resolveList(rule.LocalAddress, ctx, warnings, where),
    remote: resolveList(rule.RemoteAddress, ctx, warnings, where),
    protocol: protocolNumber(rule.Protocol),
    localPorts: ports(rule.LocalPort),
    remotePorts: ports(rule.RemotePort),
    icmpTypes: undefined,
    inbound: rule.InboundSecurity,
    outbound: rule.OutboundSecurity,
    key: 0,
    warnings: warnings.length > 0 ? warnings : undefined,
  };
  made.key = precedenceKey(made);
  if (frozen) {
    if (!byRule) ruleFilters.set(ctx, (byRule = new WeakMap()));
    byRule.set(rule, made);
  }
  return made;
}

/**
 * A policy document's filters, compiled once per document and host context (its content: the
 * daemon updates its context in place when addresses change) — the daemon's data plane and every
 * peer the keying service plans for share one compilation.
 */
const compiledOf = new WeakMap<PolicyDocument, { ctx: string; policy: CompiledPolicy }>();

export function compiledPolicy(doc: PolicyDocument, ctx: HostContext = EMPTY_CONTEXT): CompiledPolicy {
  const key = JSON.stringify(ctx);
  const hit = compiledOf.get(doc);
  if (hit?.ctx === key) return hit.policy;
  const policy = compilePolicy(doc, ctx);
  compiledOf.set(doc, { ctx: key, policy });
  return policy;
}

/** Compiles a policy document (normally the ActiveStore view) with the host's context. */
export function compilePolicy(doc: PolicyDocument, ctx: HostContext = EMPTY_CONTEXT): CompiledPolicy {
  const warnings: string[] = [];
  const filters: (Omit<Filter, 'rank'> & { key?: number; warnings?: readonly string[] })[] = [];
  filters.push({
    kind: 'ike',
    label: 'IKE (UDP 500, 4500)',
    local: [],
    remote: [],
    protocol: 17,
    localPorts: [
      [500, 500],
      [4500, 4500],
    ],
    remotePorts: [
      [500, 500],
      [4500, 4500],
    ],
    inbound: 'None',
    outbound: 'None',
  });
  for (const ex of doc.settings.Exemptions) {
    if (ex === 'None' || ex === 'NotConfigured') continue;
    if (ex === 'Dhcp') {
      filters.push(
        {
          kind: 'default-exemption',
          label: 'default exemption: Dhcp',
          local: [ANY_V4],
          remote: [ANY_V4],
          protocol: 17,
          localPorts: [[67, 68]],
          remotePorts: [[67, 68]],
          inbound: 'None',
          outbound: 'None',
        },
        {
          kind: 'default-exemption',
          label: 'default exemption: Dhcp',
          local: [ANY_V6],
          remote: [ANY_V6],
          protocol: 17,
          localPorts: [[546, 547]],
          remotePorts: [[546, 547]],
          inbound: 'None',
          outbound: 'None',
        },
      );
      continue;
    }
    const icmp = ICMP_EXEMPTIONS[ex];
    if (!icmp) continue;
    for (const [proto, types, any] of [
      [1, icmp.v4, ANY_V4],
      [58, icmp.v6, ANY_V6],
    ] as const) {
      if (Array.isArray(types) && types.length === 0) continue;
      filters.push({
        kind: 'default-exemption',
        label: `default exemption: ${ex}`,
        local: [any],
        remote: [any],
        protocol: proto,
        icmpTypes: types === 'all' ? undefined : [...types],
        inbound: 'None',
        outbound: 'None',
      });
    }
  }
  for (const rule of doc.rules) {
    if (rule.Enabled !== 'True') continue;
    const f = ruleFilter(rule, ctx);
    filters.push(f);
    if (f.warnings) warnings.push(...f.warnings);
  }
  // Precedence: kind, then the narrowest remote, then local, then protocol and ports given, then
  // the order written.
  const keyed = filters.map((f, index) => ({ f, index, key: f.key ?? precedenceKey(f) }));
  keyed.sort((a, b) => a.key - b.key || a.index - b.index);
  // One object shape for every filter (the index and the data plane read them on every lookup).
  const ranked = keyed.map(({ f }, rank): Filter => ({
    rank,
    kind: f.kind,
    label: f.label,
    rule: f.rule,
    local: f.local,
    remote: f.remote,
    protocol: f.protocol,
    localPorts: f.localPorts,
    remotePorts: f.remotePorts,
    icmpTypes: f.icmpTypes,
    inbound: f.inbound,
    outbound: f.outbound,
  }));
  const policy = new CompiledPolicy(ranked, warnings);
  warnings.push(...lockoutWarnings(policy, doc, ctx));
  return policy;
}

/**
 * Seed 001's traps: Require with Kerberos authentication towards the domain controllers or DNS
 * servers that Kerberos itself needs deadlocks the host out of its domain.
 */
export function lockoutWarnings(policy: CompiledPolicy, doc: PolicyDocument, ctx: HostContext): string[] {
  const out: string[] = [];
  const locals = ctx.localAddresses.length > 0 ? ctx.localAddresses : [];
  const check = (server: string, what: string, protocol: number, port: number): void => {
    for (const local of locals) {
      if (isIPv4(local) !== isIPv4(server)) continue;
      const flow: Flow = { direction: 'Outbound', local, remote: server, protocol, localPort: 49152, remotePort: port };
      const w = flowLockoutWarning(policy.classify(flow), doc, flow, ctx, what);
      if (w && !out.includes(w)) out.push(w);
    }
  };
  for (const dc of ctx.domainControllers) check(dc, 'domain controller', 17, 88);
  for (const dns of ctx.dnsServers) check(dns, 'DNS server', 17, 53);
  return out;
}

const KERBEROS_PORTS = new Set([88, 464, 389, 636, 3268]);

/** A warning for one flow that IPsec with Kerberos would lock out, or undefined. */
export function flowLockoutWarning(
  decision: Decision,
  doc: PolicyDocument,
  flow: Flow,
  ctx: HostContext,
  role?: string,
): string | undefined {
  if (decision.security !== 'Require' || !decision.filter?.rule) return undefined;
  const rule = decision.filter.rule;
  const p1 = findSet(doc, 'phase1AuthSets', rule.Phase1AuthSet || DEFAULT_PHASE1_AUTH_SET);
  if (!p1?.Proposal.some((p) => p.AuthenticationMethod === 'Kerberos')) return undefined;
  const isDc = ctx.domainControllers.includes(flow.remote) || role === 'domain controller';
  const isDns = ctx.dnsServers.includes(flow.remote) || role === 'DNS server';
  const kerberosPort = flow.remotePort !== undefined && KERBEROS_PORTS.has(flow.remotePort);
  const dnsPort = flow.remotePort === 53;
  if (!isDc && !isDns && !kerberosPort && !dnsPort) return undefined;
  const target = isDc || kerberosPort ? `domain controller ${flow.remote}` : `DNS server ${flow.remote}`;
  return (
    `IPsec rule "${rule.DisplayName}" requires IPsec with Kerberos authentication (phase 1 set "${p1.DisplayName}") for traffic to ${target}. ` +
    (isDc || kerberosPort
      ? 'Kerberos needs that domain controller to get the ticket that would authenticate this very connection, so the host can lock itself out of the domain. '
      : 'Without name resolution the host cannot find its domain controllers, and Kerberos authentication fails. ') +
    'Exempt this traffic with a rule whose InboundSecurity and OutboundSecurity are None, or authenticate with certificates.'
  );
}
