/**
 * Address sets for classification: every policy address entry becomes one interval of the IPv4
 * (number) or IPv6 (bigint) address space, so matching is a pair of comparisons.
 */
import { isIPv4 } from 'node:net';
import { readIp, writeIp } from '../io/addr.ts';

export interface V4Range {
  family: 4;
  lo: number;
  hi: number;
}
export interface V6Range {
  family: 6;
  lo: bigint;
  hi: bigint;
}
export type Range = V4Range | V6Range;

const V6_MAX = (1n << 128n) - 1n;

export const ANY_V4: V4Range = { family: 4, lo: 0, hi: 0xffffffff };
export const ANY_V6: V6Range = { family: 6, lo: 0n, hi: V6_MAX };

export function v4ToNumber(a: string): number {
  const p = a.split('.');
  return ((Number(p[0]) << 24) >>> 0) + (Number(p[1]) << 16) + (Number(p[2]) << 8) + Number(p[3]);
}

export function v6ToBigint(a: string): bigint {
  const b = Buffer.alloc(16);
  writeIp(a, b);
  return (b.readBigUInt64BE(0) << 64n) | b.readBigUInt64BE(8);
}

/** A literal address, prefix or range (canonical policy spelling) as a range; undefined for keywords. */
/**
 * Parsed entries, shared (frozen): a policy of thousands of host rules is parsed again on every
 * change (filters, fail-closed sets, routes), and most entries are the same each time. Bounded.
 */
const parsed = new Map<string, Range | null>();
const PARSED_MAX = 1 << 16;

export function entryToRange(entry: string): Range | undefined {
  const hit = parsed.get(entry);
  if (hit !== undefined) return hit ?? undefined;
  const r = parseEntry(entry);
  if (parsed.size >= PARSED_MAX) parsed.clear();
  parsed.set(entry, r ? Object.freeze(r) : null);
  return r;
}

function parseEntry(entry: string): Range | undefined {
  const dash = entry.indexOf('-');
  const slash = entry.indexOf('/');
  if (slash > 0) {
    const addr = entry.slice(0, slash);
    const len = Number(entry.slice(slash + 1));
    if (isIPv4(addr)) {
      const base = v4ToNumber(addr);
      const size = 2 ** (32 - len);
      const lo = Math.floor(base / size) * size;
      return { family: 4, lo, hi: lo + size - 1 };
    }
    const base = v6ToBigint(addr);
    const hostBits = BigInt(128 - len);
    const lo = (base >> hostBits) << hostBits;
    return { family: 6, lo, hi: lo + (1n << hostBits) - 1n };
  }
  if (dash > 0 && !entry.startsWith('-')) {
    const a = entry.slice(0, dash);
    const b = entry.slice(dash + 1);
    if (isIPv4(a)) return { family: 4, lo: v4ToNumber(a), hi: v4ToNumber(b) };
    return { family: 6, lo: v6ToBigint(a), hi: v6ToBigint(b) };
  }
  if (isIPv4(entry)) {
    const n = v4ToNumber(entry);
    return { family: 4, lo: n, hi: n };
  }
  if (entry.includes(':')) {
    const n = v6ToBigint(entry);
    return { family: 6, lo: n, hi: n };
  }
  return undefined;
}

/** How many addresses a range covers, as a specificity measure (log2, so /32 → 0, Any → 32 or 128). */
export function rangeBits(r: Range): number {
  if (r.family === 4) return Math.log2(r.hi - r.lo + 1);
  const size = r.hi - r.lo + 1n;
  return size.toString(2).length - 1;
}

export function inRange(r: Range, family: 4 | 6, v4: number, v6: bigint): boolean {
  if (r.family !== family) return false;
  return family === 4
    ? v4 >= (r as V4Range).lo && v4 <= (r as V4Range).hi
    : v6 >= (r as V6Range).lo && v6 <= (r as V6Range).hi;
}

/** One end of a range (lo or hi) as address octets: 4 for IPv4, 16 for IPv6. */
export function boundBytes(v: number | bigint, family: 4 | 6): Buffer {
  const b = Buffer.alloc(family === 4 ? 4 : 16);
  if (family === 4) b.writeUInt32BE(Number(v));
  else {
    b.writeBigUInt64BE(BigInt(v) >> 64n, 0);
    b.writeBigUInt64BE(BigInt(v) & 0xffffffffffffffffn, 8);
  }
  return b;
}

/** A range as text: one address, or `first-last` (nftables' interval notation). */
export function rangeToText(r: Range): string {
  const text = (v: number | bigint): string => readIp(boundBytes(v, r.family), 0, r.family);
  return r.lo === r.hi ? text(r.lo) : `${text(r.lo)}-${text(r.hi)}`;
}
