import { isIPv4, isIPv6 } from 'node:net';
import { ConsecError } from '../errors.ts';

export type IpFamily = 4 | 6;

export class AddressError extends ConsecError {
  constructor(message: string) {
    super('ERR_ADDRESS', message);
  }
}

export function ipFamily(addr: string): IpFamily {
  if (isIPv4(addr)) return 4;
  if (isIPv6(addr)) return 6;
  throw new AddressError(`not an IP address: ${JSON.stringify(addr)}`);
}

/** An address as its own octets: 4 for IPv4, 16 for IPv6. */
export function ipBytes(addr: string): Buffer {
  const b = Buffer.alloc(ipFamily(addr) === 4 ? 4 : 16);
  writeIp(addr, b);
  return b;
}

/** Writes an IPv4 (4 bytes) or IPv6 (16 bytes) address into `out` at `offset`; returns its family. */
export function writeIp(addr: string, out: Uint8Array, offset = 0): IpFamily {
  const family = ipFamily(addr);
  if (family === 4) {
    const parts = addr.split('.');
    for (let i = 0; i < 4; i++) out[offset + i] = Number(parts[i]);
    return 4;
  }
  const [headPart = '', tailPart] = addr.split('::') as [string, string | undefined];
  const words = (s: string): string[] => (s === '' ? [] : s.split(':'));
  let head = words(headPart);
  let tail = tailPart === undefined ? [] : words(tailPart);
  // An embedded IPv4 tail (::ffff:192.0.2.1) counts as two 16-bit groups.
  const expand = (groups: string[]): string[] => {
    const last = groups[groups.length - 1];
    if (last?.includes('.')) {
      const b = last.split('.').map(Number) as [number, number, number, number];
      return [...groups.slice(0, -1), ((b[0] << 8) | b[1]).toString(16), ((b[2] << 8) | b[3]).toString(16)];
    }
    return groups;
  };
  if (tailPart === undefined) head = expand(head);
  else tail = expand(tail);
  const zeros = 8 - head.length - tail.length;
  const all = [...head, ...new Array<string>(tailPart === undefined ? 0 : zeros).fill('0'), ...tail];
  for (let i = 0; i < 8; i++) {
    const v = Number.parseInt(all[i] ?? '0', 16);
    out[offset + 2 * i] = v >> 8;
    out[offset + 2 * i + 1] = v & 0xff;
  }
  return 6;
}

/** Reads an address of `family` from `buf` at `offset` in its canonical text form. */
export function readIp(buf: Uint8Array, offset: number, family: IpFamily): string {
  if (family === 4) {
    return `${buf[offset]}.${buf[offset + 1]}.${buf[offset + 2]}.${buf[offset + 3]}`;
  }
  const groups: number[] = [];
  for (let i = 0; i < 8; i++) groups.push(((buf[offset + 2 * i] ?? 0) << 8) | (buf[offset + 2 * i + 1] ?? 0));
  // RFC 5952: compress the longest run (length >= 2) of zero groups, the first one on ties.
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

/** Parses "addr/prefix" into its parts, validating the prefix length against the family. */
export function parsePrefix(cidr: string): { address: string; prefixLength: number; family: IpFamily } {
  const slash = cidr.indexOf('/');
  if (slash < 0) throw new AddressError(`missing prefix length in ${JSON.stringify(cidr)}`);
  const address = cidr.slice(0, slash);
  const lenText = cidr.slice(slash + 1);
  const family = ipFamily(address);
  const prefixLength = Number(lenText);
  if (!/^\d{1,3}$/.test(lenText) || prefixLength > (family === 4 ? 32 : 128)) {
    throw new AddressError(`bad prefix length in ${JSON.stringify(cidr)}`);
  }
  return { address, prefixLength, family };
}
