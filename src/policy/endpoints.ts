/**
 * Address, port and protocol syntax of connection security rules (reference §3.8): parsed,
 * validated and stored in a canonical spelling.
 */
import { isIPv4, isIPv6 } from 'node:net';
import { ConsecError } from '../errors.ts';
import { writeIp } from '../io/addr.ts';

export class PolicyValidationError extends ConsecError {
  constructor(
    readonly parameter: string,
    message: string,
  ) {
    super('ERR_POLICY_INVALID', message);
  }
}

export const ADDRESS_KEYWORDS = [
  'Any',
  'LocalSubnet',
  'DNS',
  'DHCP',
  'WINS',
  'DefaultGateway',
  'Internet',
  'Intranet',
  'IntranetRemoteAccess',
  'PlayToDevice',
];

function ipv4ToInt(a: string): number {
  return a.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}

function maskToPrefix(mask: string): number | undefined {
  if (!isIPv4(mask)) return undefined;
  const n = ipv4ToInt(mask);
  const bits = n.toString(2).padStart(32, '0');
  if (!/^1*0*$/.test(bits)) return undefined;
  return bits.indexOf('0') < 0 ? 32 : bits.indexOf('0');
}

/**
 * One address entry: a keyword, an address, addr/prefix, IPv4 addr/mask, or a range a-b of one
 * family with a ≤ b. Returns the canonical spelling (keywords as Windows spells them; masks as prefixes).
 */
export function parseAddress(parameter: string, value: string, allowKeywords = true): string {
  const v = value.trim();
  const kw = ADDRESS_KEYWORDS.find((k) => k.toLowerCase() === v.toLowerCase());
  if (kw) {
    if (!allowKeywords && kw !== 'Any')
      throw new PolicyValidationError(
        parameter,
        `The ${parameter} parameter accepts only IP addresses or Any, not "${value}".`,
      );
    return kw;
  }
  const bad = (): never => {
    throw new PolicyValidationError(
      parameter,
      `The address "${value}" given to ${parameter} is not valid: use an IP address, a subnet (address/prefix or address/mask), a range (address-address) or a keyword.`,
    );
  };
  if (isIPv4(v) || isIPv6(v)) return v;
  const slash = v.indexOf('/');
  if (slash > 0) {
    const addr = v.slice(0, slash);
    const len = v.slice(slash + 1);
    if (isIPv4(addr)) {
      if (/^\d{1,2}$/.test(len) && Number(len) <= 32) return `${addr}/${Number(len)}`;
      const p = maskToPrefix(len);
      if (p !== undefined) return `${addr}/${p}`;
      return bad();
    }
    if (isIPv6(addr) && /^\d{1,3}$/.test(len) && Number(len) <= 128) return `${addr}/${Number(len)}`;
    return bad();
  }
  const dash = v.indexOf('-');
  if (dash > 0) {
    const a = v.slice(0, dash);
    const b = v.slice(dash + 1);
    if (isIPv4(a) && isIPv4(b)) {
      if (ipv4ToInt(a) > ipv4ToInt(b)) bad();
      return `${a}-${b}`;
    }
    if (isIPv6(a) && isIPv6(b)) {
      const octets = (x: string) => {
        const buf = Buffer.alloc(16);
        writeIp(x, buf);
        return buf;
      };
      if (Buffer.compare(octets(a), octets(b)) > 0) bad();
      return `${a}-${b}`;
    }
  }
  return bad();
}

/** A list of addresses; "Any" cannot be combined with other entries. */
export function parseAddressList(parameter: string, values: readonly string[], allowKeywords = true): string[] {
  const out = values
    .flatMap((v) => v.split(','))
    .map((v) => v.trim())
    .filter(Boolean)
    .map((v) => parseAddress(parameter, v, allowKeywords));
  if (out.length === 0) return ['Any'];
  if (out.length > 1 && out.includes('Any'))
    throw new PolicyValidationError(parameter, `"Any" cannot be combined with other values in ${parameter}.`);
  return [...new Set(out)];
}

const PROTOCOL_NAMES: Record<string, string> = {
  tcp: 'TCP',
  udp: 'UDP',
  icmpv4: 'ICMPv4',
  icmpv6: 'ICMPv6',
  any: 'Any',
};
const PROTOCOL_NUMBERS: Record<number, string> = { 6: 'TCP', 17: 'UDP', 1: 'ICMPv4', 58: 'ICMPv6' };

export function parseProtocol(value: string | number): string {
  const v = String(value).trim();
  const named = PROTOCOL_NAMES[v.toLowerCase()];
  if (named) return named;
  if (/^\d{1,3}$/.test(v) && Number(v) <= 255) return PROTOCOL_NUMBERS[Number(v)] ?? String(Number(v));
  throw new PolicyValidationError(
    'Protocol',
    `The value "${value}" is not a valid protocol: use 0-255, TCP, UDP, ICMPv4, ICMPv6 or Any.`,
  );
}

/** Protocol number for a canonical protocol spelling, or undefined for Any. */
export function protocolNumber(protocol: string): number | undefined {
  if (protocol === 'Any') return undefined;
  const entry = Object.entries(PROTOCOL_NUMBERS).find(([, name]) => name === protocol);
  return entry ? Number(entry[0]) : Number(protocol);
}

const PORT_KEYWORDS = ['Any', 'RPC', 'RPC-EPMap', 'IPHTTPS'];

export function parsePortList(parameter: string, values: readonly (string | number)[]): string[] {
  const out = values
    .flatMap((v) => String(v).split(','))
    .map((v) => v.trim())
    .filter(Boolean)
    .map((v) => {
      const kw = PORT_KEYWORDS.find((k) => k.toLowerCase() === v.toLowerCase());
      if (kw) return kw;
      const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(v);
      const lo = Number(m?.[1]);
      const hi = m?.[2] === undefined ? lo : Number(m[2]);
      if (!m || lo > 65535 || hi > 65535 || lo > hi) {
        throw new PolicyValidationError(
          parameter,
          `The port "${v}" given to ${parameter} is not valid: use 0-65535, a range such as 1024-2048, or Any.`,
        );
      }
      return m[2] === undefined ? String(lo) : `${lo}-${hi}`;
    });
  if (out.length === 0) return ['Any'];
  if (out.length > 1 && out.includes('Any'))
    throw new PolicyValidationError(parameter, `"Any" cannot be combined with other values in ${parameter}.`);
  return [...new Set(out)];
}

/** The IP family of a single-address or subnet entry (undefined for keywords). */
export function addressFamily(entry: string): 4 | 6 | undefined {
  const a = entry.split(/[/-]/)[0] ?? '';
  return isIPv4(a) ? 4 : isIPv6(a) ? 6 : undefined;
}
