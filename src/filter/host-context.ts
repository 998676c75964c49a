/** The host context the compiler resolves address keywords with, read from this machine. */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { HostContext } from './compile.ts';

function readLines(path: string): string[] {
  try {
    return readFileSync(path, 'utf8').split('\n');
  } catch {
    return [];
  }
}

/**
 * The host's global unicast addresses (getifaddrs: loopback and link-local left out; each once,
 * also when two interfaces carry it). What the daemon runs on without --listen.
 */
export function hostAddresses(ifaces: ReturnType<typeof networkInterfaces> = networkInterfaces()): string[] {
  const out: string[] = [];
  for (const addrs of Object.values(ifaces))
    for (const a of addrs ?? [])
      if (!a.internal && !a.address.toLowerCase().startsWith('fe80:') && !out.includes(a.address)) out.push(a.address);
  return out;
}

/** DNS servers from resolv.conf, KDCs given as addresses in krb5.conf, local addresses and subnets. */
export function systemHostContext(): HostContext {
  const dnsServers = readLines('/etc/resolv.conf')
    .map((l) => /^\s*nameserver\s+(\S+)/.exec(l)?.[1])
    .filter((a): a is string => a !== undefined && isIP(a) !== 0);
  // krb5.conf as every Kerberos tool finds it: KRB5_CONFIG (its first file), else /etc/krb5.conf.
  const domainControllers = readLines(process.env.KRB5_CONFIG?.split(':')[0] || '/etc/krb5.conf')
    .map((l) => /^\s*(?:kdc|admin_server)\s*=\s*\[?([0-9a-fA-F.:]+)\]?(?::\d+)?\s*$/.exec(l)?.[1])
    .filter((a): a is string => a !== undefined && isIP(a) !== 0);
  const ifaces = networkInterfaces();
  const localAddresses = hostAddresses(ifaces);
  const localSubnets: string[] = [];
  for (const addrs of Object.values(ifaces))
    for (const a of addrs ?? []) if (!a.internal && !a.address.startsWith('fe80:') && a.cidr) localSubnets.push(a.cidr);
  const defaultGateways = readLines('/proc/net/route')
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f[1] === '00000000' && f[2] && f[2] !== '00000000')
    .map((f) => {
      const n = Number.parseInt(f[2] as string, 16);
      return [n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >>> 24) & 255].join('.');
    });
  return {
    localAddresses,
    localSubnets,
    dnsServers,
    dhcpServers: [],
    winsServers: [],
    defaultGateways,
    domainControllers,
  };
}
