/**
 * Fail-closed filtering in the kernel: an nftables table of consec's own (`inet consec`) that drops
 * cleartext to and from peers whose rules Require IPsec, except what goes through the data plane
 * (the TUN), consec's own marked IKE/ESP packets, IKE and ESP from the peer, and the exemptions the
 * policy grants (ICMP, neighbor discovery, DHCP). Firewall rules join it: Block rules drop what
 * they match, protected or not, and rules that allow only secure connections drop the cleartext
 * they match. It is replaced atomically (`nft -f`, one transaction) and outlives the daemon: a
 * crashed or stopped consec leaks nothing.
 *
 * It also keeps negotiation discovery's flow state table (MS-IKEE §1.3.5: a once-secured flow never
 * downgrades to cleartext) in the kernel: a connection that delivered a decrypted packet through the
 * TUN gets the SECURED_CT_MARK bit on its conntrack entry, and from then on none of its packets may
 * enter or leave in clear — also under Request, where new flows still fall back to clear. ICMP
 * errors about such a flow (conntrack: related, e.g. "fragmentation needed" from a gateway's TUN
 * MTU) are not the flow itself and pass.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { ANY_V4, ANY_V6, entryToRange, type Range, rangeToText } from '../filter/address.ts';
import { EMPTY_CONTEXT, type HostContext, resolveAddressEntry } from '../filter/compile.ts';
import { nftRun } from '../io/native.ts';
import { protocolNumber } from '../policy/endpoints.ts';
import type { PolicyDocument } from '../policy/model.ts';

const exec = promisify(execFile);

export const GUARD_TABLE = 'consec';

/** The conntrack mark bit of a secured flow (other bits of the mark are left as they are). */
export const SECURED_CT_MARK = 0x00100000;

export interface GuardSets {
  /** Addresses (v4, v6) that must not be sent to in clear, and that must not be accepted from in clear. */
  out4: string[];
  out6: string[];
  in4: string[];
  in6: string[];
  icmpExempt: boolean;
  dhcpExempt: boolean;
  /** Authentication exemptions (rules with None/None): nft matches accepted before the drops, per direction. */
  exemptOut: string[];
  exemptIn: string[];
  /**
   * Firewall rules, as nft rule lines per chain position: authenticated bypass (accept what comes
   * through the TUN), Block (drop, protected or not), and "allow only secure connections" (drop the
   * cleartext the rule matches).
   */
  firewall: { bypassOut: string[]; blockIn: string[]; blockOut: string[]; secureIn: string[]; secureOut: string[] };
}

/** A rule's match conditions: addresses, protocol, numeric ports and ICMP types. */
interface Matchable {
  LocalAddress: string[];
  RemoteAddress: string[];
  Protocol: string;
  LocalPort: string[];
  RemotePort: string[];
  IcmpType?: string[];
}

/**
 * nft match texts for a rule in one direction: one per remote × local address element (Any: no
 * address match), with protocol, ports and ICMP types. Undefined when the rule names ports only by
 * keyword (RPC, IPHTTPS …), which the kernel cannot match: such a rule is not enforced.
 */
function ruleMatches(r: Matchable, dir: 'out' | 'in', ctx: HostContext): string[] | undefined {
  const proto = r.Protocol === 'Any' ? undefined : (protocolNumber(r.Protocol) ?? undefined);
  const numeric = (list: string[]) => list.filter((p) => /^\d+(-\d+)?$/.test(p));
  const remotePorts = numeric(r.RemotePort);
  const localPorts = numeric(r.LocalPort);
  const keywordOnly = (all: string[], nums: string[]) => nums.length === 0 && !(all.length === 1 && all[0] === 'Any');
  if (keywordOnly(r.RemotePort, remotePorts) || keywordOnly(r.LocalPort, localPorts)) return undefined;
  const icmp = (r.IcmpType ?? []).filter((t) => t !== 'Any');
  const elementsOf = (list: string[]) =>
    list.some((e) => isAny(e, ctx)) ? [undefined] : list.flatMap((e) => element(e, ctx));
  const out: string[] = [];
  for (const remote of elementsOf(r.RemoteAddress))
    for (const local of elementsOf(r.LocalAddress)) {
      if (remote && local && remote.family !== local.family) continue;
      const parts: string[] = [];
      const [theirAddr, ourAddr] = dir === 'out' ? ['daddr', 'saddr'] : ['saddr', 'daddr'];
      if (remote) parts.push(`${remote.family === 4 ? 'ip' : 'ip6'} ${theirAddr} ${remote.text}`);
      if (local) parts.push(`${local.family === 4 ? 'ip' : 'ip6'} ${ourAddr} ${local.text}`);
      if (proto !== undefined) parts.push(`meta l4proto ${proto}`);
      if (proto === 6 || proto === 17) {
        const [theirs, ours] = dir === 'out' ? ['dport', 'sport'] : ['sport', 'dport'];
        if (remotePorts.length) parts.push(`th ${theirs} { ${remotePorts.join(', ')} }`);
        if (localPorts.length) parts.push(`th ${ours} { ${localPorts.join(', ')} }`);
      }
      const base = parts.join(' ');
      if ((proto === 1 || proto === 58) && icmp.length) {
        // Types alone in one set; each type:code on its own line (the code narrows that type only).
        const name = proto === 1 ? 'icmp' : 'icmpv6';
        const types = icmp.filter((t) => !t.includes(':') || t.endsWith(':*')).map((t) => t.split(':')[0]);
        if (types.length) out.push(`${base} ${name} type { ${[...new Set(types)].join(', ')} }`);
        for (const t of icmp.filter((x) => x.includes(':') && !x.endsWith(':*'))) {
          const [type, code] = t.split(':');
          out.push(`${base} ${name} type ${type} ${name} code ${code}`);
        }
        continue;
      }
      out.push(base);
    }
  return out;
}

/** An nft comment from user text: printable ASCII only (nft limits comments to 128 octets). */
const comment = (text: string): string => `comment "${text.replace(/[^\x20-\x7e]|["\\]/g, '?').slice(0, 120)}"`;

/** The firewall rules of the active policy as guard lines (enabled rules; Program and service conditions are not matched: a rule applies to every program, which for Block and secure-only rules is the stricter reading). */
function firewallLines(doc: PolicyDocument, ctx: HostContext): GuardSets['firewall'] {
  const f: GuardSets['firewall'] = { bypassOut: [], blockIn: [], blockOut: [], secureIn: [], secureOut: [] };
  for (const r of doc.firewallRules) {
    if (r.Enabled !== 'True') continue;
    const dir = r.Direction === 'Inbound' ? 'in' : 'out';
    const matches = ruleMatches(r, dir, ctx);
    if (!matches) continue;
    const label = r.DisplayName;
    // As Windows' firewall rules, these decide connections: a reply to a connection opened the
    // other way is not theirs (conntrack's original direction only).
    if (r.Action === 'Block') {
      for (const m of matches)
        (dir === 'in' ? f.blockIn : f.blockOut).push(
          `ct direction original ${m} counter drop ${comment(`firewall block: ${label}`)}`.replace(/ +/g, ' '),
        );
    } else if (r.Action === 'Allow' && r.Authentication !== 'NotRequired') {
      // NoEncap (authenticated, then in clear) is not a mode consec's IPsec negotiates: it is held to
      // the stricter Required.
      for (const m of matches) {
        (dir === 'in' ? f.secureIn : f.secureOut).push(
          `ct direction original ${m} counter drop ${comment(`firewall: only secure connections: ${label}`)}`.replace(
            / +/g,
            ' ',
          ),
        );
        if (r.OverrideBlockRules && dir === 'out') f.bypassOut.push(`${m} accept`.trim());
      }
    }
  }
  return f;
}

/** nft match text for an authentication exemption rule, one per remote address range. */
function exemptionMatches(r: PolicyDocument['rules'][number], dir: 'out' | 'in', ctx: HostContext): string[] {
  const proto = r.Protocol === 'Any' ? undefined : (protocolNumber(r.Protocol) ?? undefined);
  const ports = (list: string[]) => list.filter((p) => /^\d+(-\d+)?$/.test(p));
  const remotePorts = ports(r.RemotePort);
  const localPorts = ports(r.LocalPort);
  const out: string[] = [];
  for (const entry of r.RemoteAddress) {
    // Any: no address match at all (one line covers both families).
    const elements: ({ family: 4 | 6; text: string } | undefined)[] = isAny(entry, ctx)
      ? [undefined]
      : element(entry, ctx);
    for (const e of elements) {
      const parts: string[] = [];
      if (e) parts.push(`${e.family === 4 ? 'ip' : 'ip6'} ${dir === 'out' ? 'daddr' : 'saddr'} ${e.text}`);
      if (proto !== undefined) parts.push(`meta l4proto ${proto}`);
      if (proto === 6 || proto === 17) {
        const [theirs, ours] = dir === 'out' ? ['dport', 'sport'] : ['sport', 'dport'];
        if (remotePorts.length) parts.push(`th ${theirs} { ${remotePorts.join(', ')} }`);
        if (localPorts.length) parts.push(`th ${ours} { ${localPorts.join(', ')} }`);
      }
      if (parts.length) out.push(`${parts.join(' ')} accept`);
    }
  }
  return out;
}

const isAny = (entry: string, ctx: HostContext): boolean => resolveAddressEntry(entry, ctx) === 'any';

/**
 * nftables element texts for a policy address entry: a host, CIDR or range as written; a keyword
 * (LocalSubnet, DNS, DefaultGateway …) resolved with the host context; Any as both whole families.
 */
function element(entry: string, ctx: HostContext): { family: 4 | 6; text: string }[] {
  const ranges = resolveAddressEntry(entry, ctx);
  if (ranges === 'any')
    return [
      { family: 4, text: '0.0.0.0/0' },
      { family: 6, text: '::/0' },
    ];
  // Literals keep their spelling (CIDRs stay CIDRs); keywords become the ranges they stand for.
  const literal = entryToRange(entry);
  if (literal) return [{ family: literal.family, text: entry.replace(/\s+/g, '') }];
  return ranges.map((r) => ({ family: r.family, text: rangeToText(r) }));
}

/**
 * What the active policy requires: remote ranges of enabled rules with Require in each direction,
 * address keywords resolved with the host context.
 */
export function guardSets(
  doc: PolicyDocument,
  ctx: HostContext = EMPTY_CONTEXT,
  /** Ranges by address entry from the last run with this host context (most entries stay). */
  cache: Map<string, readonly Range[]> = new Map(),
): GuardSets {
  const rangesOf = (entry: string): readonly Range[] => {
    let r = cache.get(entry);
    if (!r) {
      const resolved = resolveAddressEntry(entry, ctx);
      r = resolved === 'any' ? [ANY_V4, ANY_V6] : resolved;
      cache.set(entry, r);
    }
    return r;
  };
  const s: GuardSets = {
    out4: [],
    out6: [],
    in4: [],
    in6: [],
    icmpExempt: false,
    dhcpExempt: false,
    exemptOut: [],
    exemptIn: [],
    firewall: firewallLines(doc, ctx),
  };
  // Each Require range once, with the directions it is required in (1 out, 2 in).
  const ranges: Range[] = [];
  const dirs: number[] = [];
  for (const r of doc.rules) {
    if (r.Enabled !== 'True') continue;
    if (r.InboundSecurity === 'None' && r.OutboundSecurity === 'None') {
      s.exemptOut.push(...exemptionMatches(r, 'out', ctx));
      s.exemptIn.push(...exemptionMatches(r, 'in', ctx));
      continue;
    }
    const out = r.OutboundSecurity === 'Require';
    const inb = r.InboundSecurity === 'Require';
    if (!out && !inb) continue;
    const d = (out ? 1 : 0) | (inb ? 2 : 0);
    for (const entry of r.RemoteAddress)
      for (const e of rangesOf(entry)) {
        ranges.push(e);
        dirs.push(d);
      }
  }
  s.icmpExempt = doc.settings.Exemptions.includes('Icmp');
  s.dhcpExempt = doc.settings.Exemptions.includes('Dhcp');
  // Sorted once (by family, then start) for all four sets, then merged per set.
  const order = Array.from(ranges.keys()).sort((a, b) => compareRanges(ranges[a] as Range, ranges[b] as Range));
  const sorted = { out4: [] as Range[], out6: [] as Range[], in4: [] as Range[], in6: [] as Range[] };
  for (const i of order) {
    const e = ranges[i] as Range;
    const d = dirs[i] as number;
    if (d & 1) (e.family === 4 ? sorted.out4 : sorted.out6).push(e);
    if (d & 2) (e.family === 4 ? sorted.in4 : sorted.in6).push(e);
  }
  for (const k of SETS) s[k] = mergeSorted(sorted[k]).map(elementText);
  return s;
}

const compareRanges = (a: Range, b: Range): number =>
  a.family !== b.family ? a.family - b.family : a.lo < b.lo ? -1 : a.lo > b.lo ? 1 : 0;

/** Sorted, with overlapping and adjacent ranges (of one family) merged. */
function mergeRanges(ranges: readonly Range[]): Range[] {
  return mergeSorted([...ranges].sort(compareRanges));
}

/** Ranges sorted by start, with overlapping and adjacent ones (of one family) merged. */
function mergeSorted(sorted: readonly Range[]): Range[] {
  const merged: Range[] = [];
  for (const r of sorted) {
    const last = merged.at(-1);
    // Adjacent counts as overlapping: hi + 1 of the same family.
    const touches =
      last?.family === 4
        ? r.family === 4 && r.lo <= last.hi + 1
        : last?.family === 6 && r.family === 6 && r.lo <= last.hi + 1n;
    if (last && touches) {
      // Ranges are shared (cached per entry): a merged one is a new object.
      if (r.hi > last.hi) merged[merged.length - 1] = { ...last, hi: r.hi } as Range;
    } else merged.push(r);
  }
  return merged;
}

/** Element texts of ranges seen before (most ranges are the cached ones of unchanged rules). */
const elementTexts = new WeakMap<Range, string>();

function elementText(r: Range): string {
  let t = elementTexts.get(r);
  if (t === undefined) {
    t = rangeToText(r);
    elementTexts.set(r, t);
  }
  return t;
}

/**
 * Set elements in canonical form: sorted, overlapping and adjacent ones merged (a host inside a
 * subnet, two neighbouring hosts), each an address or a range. The kernel then holds exactly these
 * intervals, so a later change can add and delete single elements instead of rewriting the table.
 */
export function mergeElements(texts: readonly string[]): string[] {
  return mergeRanges(texts.map(entryToRange).filter((r): r is Range => r !== undefined)).map(rangeToText);
}

const set = (name: string, type: string, elements: string[]): string =>
  `  set ${name} { type ${type}; flags interval;${elements.length ? ` elements = { ${elements.join(', ')} };` : ''} }`;

const hostSet = (name: string, type: string, elements: string[]): string =>
  `  set ${name} { type ${type};${elements.length ? ` elements = { ${elements.join(', ')} };` : ''} }`;

/** A canonical element that is one address (no range): it goes to the hash set. */
const isHost = (e: string): boolean => !e.includes('-');

const SETS = ['out4', 'out6', 'in4', 'in6'] as const;

/**
 * The change from `prev` to `next` as one nft transaction of element deletions and additions, when
 * only the Require sets' contents differ (both in canonical form); undefined when anything else does
 * (exemptions, interface, mark): then the whole table is rewritten.
 */
export function renderGuardUpdate(prev: GuardSets, next: GuardSets): string | undefined {
  const rest = (g: GuardSets) => JSON.stringify({ ...g, out4: 0, out6: 0, in4: 0, in6: 0 });
  if (rest(prev) !== rest(next)) return undefined;
  const lines: string[] = [];
  const adds: string[] = [];
  for (const k of SETS) {
    const { gone, added } = elementChanges(prev[k], next[k]);
    // Deletions first: a merged interval that grew is deleted and added again.
    for (const [name, host] of [
      [`${k}h`, true],
      [k, false],
    ] as const) {
      const del = gone.filter((e) => isHost(e) === host);
      const add = added.filter((e) => isHost(e) === host);
      if (del.length) lines.push(`delete element inet ${GUARD_TABLE} ${name} { ${del.join(', ')} }`);
      if (add.length) adds.push(`add element inet ${GUARD_TABLE} ${name} { ${add.join(', ')} }`);
    }
  }
  return `${[...lines, ...adds].join('\n')}\n`;
}

/**
 * Elements of `next` not in `prev` and the other way round. Both are sorted and mostly the same
 * strings (a policy change moves one or two elements): the common head and tail are skipped
 * before the rest is compared as sets.
 */
function elementChanges(prev: readonly string[], next: readonly string[]): { gone: string[]; added: string[] } {
  let head = 0;
  const most = Math.min(prev.length, next.length);
  while (head < most && prev[head] === next[head]) head++;
  let tail = 0;
  while (tail < most - head && prev[prev.length - 1 - tail] === next[next.length - 1 - tail]) tail++;
  const was = prev.slice(head, prev.length - tail);
  const is = next.slice(head, next.length - tail);
  const wasSet = new Set(was);
  const isSet = new Set(is);
  return { gone: was.filter((e) => !isSet.has(e)), added: is.filter((e) => !wasSet.has(e)) };
}

const hex = (n: number): string => `0x${n.toString(16).padStart(8, '0')}`;

/** The whole table as one nft script (delete + create in one transaction). */
export function renderGuard(s: GuardSets, tun: string | undefined, mark: number): string {
  // What the data plane secures: through the TUN device (userspace), or through the kernel's XFRM
  // (kernel: an outbound packet routed into a transform bundle, an inbound one that came out of one).
  const toPlane = tun ? `oifname "${tun}"` : 'rt ipsec exists';
  const fromPlane = tun ? `iifname "${tun}"` : 'meta ipsec exists';
  const exempt = [
    // Neighbor discovery always passes: without it IPv6 cannot reach anybody.
    'meta l4proto ipv6-icmp icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept',
    ...(s.icmpExempt ? ['meta l4proto { icmp, ipv6-icmp } accept'] : []),
    ...(s.dhcpExempt ? ['udp sport { 67, 68, 546, 547 } udp dport { 67, 68, 546, 547 } accept'] : []),
  ];
  const lines = [
    `table inet ${GUARD_TABLE} {}`,
    `delete table inet ${GUARD_TABLE}`,
    `table inet ${GUARD_TABLE} {`,
    // Each Require set in two: single addresses in a hash set (a change is one element, whatever the
    // size), ranges and subnets in an interval set.
    ...SETS.flatMap((k) => {
      const type = k.endsWith('4') ? 'ipv4_addr' : 'ipv6_addr';
      return [
        hostSet(`${k}h`, type, s[k].filter(isHost)),
        set(
          k,
          type,
          s[k].filter((e) => !isHost(e)),
        ),
      ];
    }),
    // Who sent cleartext a Require rule refused (per address, with a counter): the IPsec Driver's
    // 4963 events, read by the daemon (readClearDrops).
    '  set clear4 { type ipv4_addr; size 4096; flags dynamic,timeout; timeout 10m; counter; }',
    '  set clear6 { type ipv6_addr; size 4096; flags dynamic,timeout; timeout 10m; counter; }',
    '  chain output {',
    '    type filter hook output priority 0; policy accept;',
    '    oifname "lo" accept',
    // Our own ESP and AH. (IPv6 conntrack reads through AH as an extension header, so a transport
    // mode AH packet shares the connection of the flow it protects: accept it before the check.)
    // (The kernel's own ESP carries no mark: it can hold nothing in clear.)
    tun ? `    meta mark ${mark} meta l4proto { esp, ah } accept` : '    meta l4proto { esp, ah } accept',
    // Our own IKE: no firewall rule stands between the keying service and its peers.
    `    meta mark ${mark} udp dport { 500, 4500 } accept`,
    // Firewall rules: an outbound authenticated bypass, then Block for protected and clear alike.
    ...s.firewall.bypassOut.map((e) => `    ${toPlane} ${e}`),
    ...s.firewall.blockOut.map((e) => `    ${e}`),
    `    ${toPlane} accept`,
    ...exempt.map((e) => `    ${e}`),
    ...s.exemptOut.map((e) => `    ${e}`),
    // Before our other marked sockets: the data plane's clear fallback must not carry a secured flow.
    `    ct state established ct mark and ${hex(SECURED_CT_MARK)} != 0 counter drop comment "secured flow in clear"`,
    // Cleartext a firewall rule allows only when secure (also the data plane's clear fallback).
    ...s.firewall.secureOut.map((e) => `    ${e}`),
    `    meta mark ${mark} accept`,
    '    ip daddr @out4h counter drop comment "cleartext to a Require peer"',
    '    ip daddr @out4 counter drop comment "cleartext to a Require peer"',
    '    ip6 daddr @out6h counter drop comment "cleartext to a Require peer"',
    '    ip6 daddr @out6 counter drop comment "cleartext to a Require peer"',
    '  }',
    // A gateway forwards for the hosts behind it: the same rules apply to what it forwards.
    '  chain forward {',
    '    type filter hook forward priority 0; policy accept;',
    `    ${toPlane} accept`,
    `    ${fromPlane} ct mark set ct mark or ${hex(SECURED_CT_MARK)} accept`,
    ...exempt.map((e) => `    ${e}`),
    ...s.exemptOut.map((e) => `    ${e}`),
    `    ct state established ct mark and ${hex(SECURED_CT_MARK)} != 0 counter drop comment "secured flow forwarded in clear"`,
    '    ip daddr @out4h counter drop comment "cleartext forwarded to a Require peer"',
    '    ip daddr @out4 counter drop comment "cleartext forwarded to a Require peer"',
    '    ip6 daddr @out6h counter drop comment "cleartext forwarded to a Require peer"',
    '    ip6 daddr @out6 counter drop comment "cleartext forwarded to a Require peer"',
    '    ip saddr @in4h counter drop comment "cleartext forwarded from a Require peer"',
    '    ip saddr @in4 counter drop comment "cleartext forwarded from a Require peer"',
    '    ip6 saddr @in6h counter drop comment "cleartext forwarded from a Require peer"',
    '    ip6 saddr @in6 counter drop comment "cleartext forwarded from a Require peer"',
    '  }',
    '  chain input {',
    '    type filter hook input priority 0; policy accept;',
    '    iifname "lo" accept',
    '    udp dport { 500, 4500 } accept',
    '    meta l4proto { esp, ah } accept',
    // Firewall Block rules: decrypted traffic too (an inbound bypass needs authorized accounts).
    ...s.firewall.blockIn.map((e) => `    ${e}`),
    // Decrypted traffic: its connection is secured from now on.
    `    ${fromPlane} ct mark set ct mark or ${hex(SECURED_CT_MARK)} accept`,
    ...exempt.map((e) => `    ${e}`),
    ...s.exemptIn.map((e) => `    ${e}`),
    `    ct state established ct mark and ${hex(SECURED_CT_MARK)} != 0 counter drop comment "cleartext in a secured flow"`,
    // Cleartext that a firewall rule allows only when secure ("allow the connection if it is secure").
    ...s.firewall.secureIn.map((e) => `    ${e}`),
    '    ip saddr @in4h update @clear4 { ip saddr } counter drop comment "cleartext from a Require peer"',
    '    ip saddr @in4 update @clear4 { ip saddr } counter drop comment "cleartext from a Require peer"',
    '    ip6 saddr @in6h update @clear6 { ip6 saddr } counter drop comment "cleartext from a Require peer"',
    '    ip6 saddr @in6 update @clear6 { ip6 saddr } counter drop comment "cleartext from a Require peer"',
    '  }',
    '}',
  ];
  return `${lines.join('\n')}\n`;
}

/**
 * Installs (or atomically replaces) the table, or applies a change to it, as one transaction:
 * through libnftables in this process (no nft process per change) when the ruleset is this
 * process's own, else by running nft (in `netns`); `spawned` learns the PID the kernel will name
 * as the change's author.
 */
export async function applyGuard(
  script: string,
  spawned: (pid: number) => void = () => {},
  netns?: string,
): Promise<void> {
  if (netns === undefined) {
    spawned(process.pid);
    const r = nftRun(script);
    if (r?.ok) return;
    if (r) throw new Error(`nft: ${r.error}`);
  }
  const [cmd, ...args] = inNetns(netns, ['nft', '-f', '-']) as [string, ...string[]];
  await new Promise<void>((resolve, reject) => {
    const p = execFile(cmd, args, { maxBuffer: 64 * 1024 * 1024 }, (err, _out, stderr) =>
      err ? reject(new Error(`nft: ${stderr.trim() || err.message}`)) : resolve(),
    );
    if (p.pid !== undefined) spawned(p.pid);
    p.stdin?.end(script);
  });
}

/** `argv` run in the named network namespace (`ip netns exec`), or here. */
const inNetns = (netns: string | undefined, argv: string[]): string[] =>
  netns ? ['ip', 'netns', 'exec', netns, ...argv] : argv;

/** A change to the table by a process other than the keeper's own nft (from `nft monitor`). */
export interface GuardChange {
  /** Generation of the ruleset after the change. */
  generation: number;
  pid: number;
  process: string;
  /** The monitor's lines about our table, first few, shortened. */
  changes: string[];
}

export interface GuardKeeperOptions {
  /** Someone else changed or removed the table (before it is put back). */
  tampered(change: GuardChange): void;
  /** The table is back as consec wrote it. */
  restored(change: GuardChange): void;
  error(err: Error): void;
  /** Delay before restarting a monitor that ended. Default 250 ms. */
  restartMs?: number;
  /** The network namespace whose ruleset to keep (default: this process's). */
  netns?: string;
}

const OUR_TABLE = new RegExp(`^\\S+ \\S+ inet ${GUARD_TABLE}(\\s|$)`);
const GENERATION = /^# new generation (\d+) by process (\d+) \((.*)\)$/;

/**
 * Keeps the table as consec wrote it while the daemon runs: `nft monitor` reports every committed
 * ruleset transaction with the process that made it; a transaction touching our table that our own
 * nft did not make (an admin's `nft flush ruleset`, a firewall manager's reload, a deleted element)
 * is reported and undone at once by installing the last script again (one atomic transaction).
 */
export class GuardKeeper {
  /** The table as last put in force, written out on demand. */
  private script?: () => string;
  private readonly ours = new Set<number>();
  private monitor?: ChildProcess;
  private pending: string[] = [];
  private closed = false;
  private restoring = false;
  private again?: GuardChange;
  private seen?: () => void;
  private watched = false;

  constructor(private readonly o: GuardKeeperOptions) {}

  /** Starts following the ruleset (before the first `apply`, so that one is seen). */
  start(): void {
    if (this.closed || this.monitor) return;
    // The monitor ends with the daemon, also after kill -9 (the parent-death signal, util-linux).
    const [cmd, ...args] = ['setpriv', '--pdeathsig', 'TERM', '--', ...inNetns(this.o.netns, ['nft', 'monitor'])] as [
      string,
      ...string[],
    ];
    const m = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.monitor = m;
    let stderr = '';
    m.stderr.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-400);
    });
    createInterface({ input: m.stdout }).on('line', (line) => this.line(line));
    m.on('error', (err) => this.o.error(new Error(`nft monitor: ${err.message}`)));
    m.on('close', (code) => {
      this.monitor = undefined;
      this.watched = false;
      if (this.closed) return;
      this.o.error(
        new Error(`nft monitor ended (${code ?? 'signal'}${stderr ? `: ${stderr.trim()}` : ''}); restarting`),
      );
      setTimeout(() => {
        if (this.closed) return;
        this.start();
        // What happened while nobody watched is unknown: install the table again.
        const script = this.script?.();
        if (script !== undefined) void this.install(script).catch((err: Error) => this.o.error(err));
      }, this.o.restartMs ?? 250).unref();
    });
  }

  /** Installs `script` as the table now in force; resolves once nft committed it. */
  async apply(script: string): Promise<void> {
    this.script = () => script;
    this.installed = undefined;
    await this.install(script);
  }

  /**
   * Puts `sets` in force: as element additions and deletions when only the Require sets changed
   * since the last call (one small transaction, whatever the table's size), else the whole table.
   */
  async applySets(sets: GuardSets, tun: string | undefined, mark: number): Promise<'elements' | 'table'> {
    // The whole table's text only when it is written whole (or put back after a foreign change).
    let full: string | undefined;
    const whole = (): string => (full ??= renderGuard(sets, tun, mark));
    const last = this.installed;
    const update = last && last.tun === tun && last.mark === mark ? renderGuardUpdate(last.sets, sets) : undefined;
    // What a foreign change is answered with: this table once the kernel took it, else the one it kept
    // (an nft transaction that fails changes nothing).
    const previous = this.script;
    this.script = whole;
    this.installed = undefined;
    if (update !== undefined) {
      try {
        if (update.trim()) await this.install(update);
        this.installed = { sets, tun, mark };
        return 'elements';
      } catch {
        // The table is not what we think (changed meanwhile): write it whole.
      }
    }
    try {
      await this.install(whole());
    } catch (err) {
      this.script = previous;
      throw err;
    }
    this.installed = { sets, tun, mark };
    return 'table';
  }

  /** What the table holds since the last applySets (undefined: unknown, rewrite it whole next time). */
  private installed?: { sets: GuardSets; tun: string | undefined; mark: number };

  /**
   * Resolves when the monitor has seen one of our own transactions, so a change from now on is
   * noticed; installs the table again if none was seen within `ms` (a monitor still subscribing).
   */
  async watching(ms = 1000): Promise<void> {
    for (let attempt = 0; !this.watched && !this.closed; attempt++) {
      const seen = new Promise<boolean>((resolve) => {
        this.seen = () => resolve(true);
        setTimeout(() => resolve(false), ms).unref();
      });
      const script = attempt > 0 ? this.script?.() : undefined;
      if (script !== undefined) await this.install(script);
      if (await seen) return;
    }
  }

  close(): void {
    this.closed = true;
    this.monitor?.kill();
  }

  private async install(script: string): Promise<void> {
    await applyGuard(
      script,
      (pid) => {
        this.ours.add(pid);
        // PIDs of our finished nft runs are forgotten after a while (PIDs are reused).
        if (this.ours.size > 64) this.ours.delete(this.ours.values().next().value as number);
      },
      this.o.netns,
    );
  }

  private line(line: string): void {
    if (OUR_TABLE.test(line)) {
      const short = line.length > 200 ? `${line.slice(0, 200)}…` : line;
      // The table itself (deleted, flushed) comes first: it says more than its rules' lines.
      if (/^\S+ table /.test(line)) this.pending.unshift(short);
      else if (this.pending.length < 8) this.pending.push(short);
      else if (this.pending.at(-1) !== '…') this.pending.push('…');
      return;
    }
    const g = GENERATION.exec(line);
    if (!g) return;
    const pid = Number(g[2]);
    const changes = this.pending;
    this.pending = [];
    if (this.ours.has(pid)) {
      this.watched = true;
      this.seen?.();
      return;
    }
    if (changes.length === 0 || this.script === undefined) return;
    const change: GuardChange = { generation: Number(g[1]), pid, process: g[3] ?? '', changes };
    this.o.tampered(change);
    void this.restore(change);
  }

  private async restore(change: GuardChange): Promise<void> {
    if (this.restoring) {
      this.again = change;
      return;
    }
    this.restoring = true;
    try {
      for (let c: GuardChange | undefined = change; c && !this.closed; c = this.again) {
        this.again = undefined;
        try {
          await this.install((this.script as () => string)());
          this.o.restored(c);
        } catch (err) {
          this.o.error(err as Error);
        }
      }
    } finally {
      this.restoring = false;
    }
  }
}

/** Removes the table (consec uninstalled or its policy no longer requires anything). */
export async function removeGuard(): Promise<void> {
  await exec('nft', ['delete', 'table', 'inet', GUARD_TABLE]).catch(() => {});
}

/**
 * Addresses whose cleartext the input chain dropped (Require), with the packets counted so far —
 * from the table's dynamic sets; empty when the table is not there.
 */
export async function readClearDrops(): Promise<{ address: string; packets: number }[]> {
  const out: { address: string; packets: number }[] = [];
  for (const name of ['clear4', 'clear6']) {
    let text: string;
    const command = `list set inet ${GUARD_TABLE} ${name}`;
    const r = nftRun(command, true);
    if (r && !r.ok) continue;
    try {
      text = r ? r.output : (await exec('nft', ['-j', ...command.split(' ')])).stdout;
    } catch {
      continue;
    }
    const doc = JSON.parse(text) as { nftables?: { set?: { elem?: unknown[] } }[] };
    for (const item of doc.nftables ?? [])
      for (const el of item.set?.elem ?? []) {
        const e = (el as { elem?: { val?: unknown; counter?: { packets?: number } } }).elem;
        if (typeof e?.val === 'string') out.push({ address: e.val, packets: e.counter?.packets ?? 0 });
      }
  }
  return out;
}
