/**
 * Network location: which firewall profiles (Domain, Private, Public) are in force, from the
 * network category of each connected interface — Windows' network location awareness, which Linux
 * does not have. An interface is DomainAuthenticated when this host is joined to a Kerberos realm
 * (krb5.conf default_realm and a host keytab of that realm), otherwise Public until an administrator says otherwise with
 * `Set-NetConnectionProfile -InterfaceAlias eth0 -NetworkCategory Private` (kept in
 * `<state dir>/network-categories.json`). A connection security rule applies when its Profile is
 * Any or names a profile in force (`policyForProfiles`).
 */
import { readFileSync, statSync } from 'node:fs';
import { type NetworkInterfaceInfo, networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import { ConsecError } from '../errors.ts';
import { writeFileAtomic } from '../io/atomic.ts';
import type { PolicyDocument, ProfileName } from '../policy/model.ts';

export type NetworkCategory = 'Public' | 'Private' | 'DomainAuthenticated';

/** Get-NetConnectionProfile's object (MSFT_NetConnectionProfile). */
export interface ConnectionProfile {
  Name: string;
  InterfaceAlias: string;
  InterfaceIndex: number;
  NetworkCategory: NetworkCategory;
  IPv4Connectivity: 'NoTraffic' | 'LocalNetwork' | 'Internet';
  IPv6Connectivity: 'NoTraffic' | 'LocalNetwork' | 'Internet';
}

const categoriesFile = (stateDir: string): string => join(stateDir, 'network-categories.json');
const categoriesSchema = z.record(z.string(), z.enum(['Public', 'Private']));

function readCategories(stateDir: string): Record<string, 'Public' | 'Private'> {
  try {
    return categoriesSchema.parse(JSON.parse(readFileSync(categoriesFile(stateDir), 'utf8')));
  } catch {
    return {};
  }
}

/**
 * The Kerberos realm this host is joined to, if any: krb5.conf's default_realm (KRB5_CONFIG, else
 * /etc/krb5.conf) *and* a host keytab (KRB5_KTNAME, else /etc/krb5.keytab) holding keys of that
 * realm — what a domain join (adcli, realmd, kadmin ktadd) leaves behind. A krb5.conf alone, such as
 * the sample Debian's krb5-config installs, joins nothing.
 */
export function domainRealm(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const confPath = env.KRB5_CONFIG?.split(':')[0] || '/etc/krb5.conf';
  const keytabPath = (env.KRB5_KTNAME ?? '/etc/krb5.keytab').replace(/^(?:FILE|WRFILE):/, '');
  try {
    const realm = /^\s*default_realm\s*=\s*(\S+)/m.exec(readFileSync(confPath, 'utf8'))?.[1];
    if (!realm) return undefined;
    // Keytab entries carry the realm as a counted string (MIT keytab format, version 0x502).
    const keytab = readFileSync(keytabPath);
    const counted = Buffer.alloc(2 + Buffer.byteLength(realm));
    counted.writeUInt16BE(Buffer.byteLength(realm), 0);
    counted.write(realm, 2);
    return keytab.includes(counted) ? realm : undefined;
  } catch {
    return undefined;
  }
}

function ifIndex(name: string): number {
  try {
    return Number(readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8').trim());
  } catch {
    return 0;
  }
}

/**
 * The devices with a default route of the family in a route table as /proc/net/route or
 * /proc/net/ipv6_route shows it. The tables can hold thousands of routes (consec's own, one per
 * protected peer): matched with one anchored expression over the text, not split line by line.
 */
export function defaultRouteDevices(table: string, family: 4 | 6): Set<string> {
  // IPv4: Iface, Destination 00000000 … Mask (8th) 00000000. IPv6: destination ::, prefix length
  // 00, then source, its length, next hop, metric, refcnt, use, flags, device.
  const line = family === 4 ? /^(\S+)\t00000000\t(?:\S+\t){5}00000000\t/gm : /^0{32} 00 (?:\S+ +){7}(\S+)$/gm;
  return new Set(Array.from(table.matchAll(line), (m) => m[1] as string));
}

function routeTable(family: 4 | 6): string {
  try {
    return readFileSync(family === 4 ? '/proc/net/route' : '/proc/net/ipv6_route', 'utf8');
  } catch {
    return ''; // no route table to read: no default route
  }
}

/** A connected interface (an address other than link-local; not loopback, not consec's TUN) and its category. */
interface ConnectedInterface {
  name: string;
  addresses: NetworkInterfaceInfo[];
  category: NetworkCategory;
}

function connectedInterfaces(stateDir: string): ConnectedInterface[] {
  const chosen = readCategories(stateDir);
  const realm = domainRealm();
  const out: ConnectedInterface[] = [];
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    if (name.startsWith('consec') || !addrs) continue;
    const addresses = addrs.filter((a) => !a.internal && !a.address.startsWith('fe80:'));
    if (addresses.length === 0) continue;
    out.push({ name, addresses, category: realm ? 'DomainAuthenticated' : (chosen[name] ?? 'Public') });
  }
  return out;
}

/**
 * The network categories of the connected interfaces: all the firewall profiles in force need (the
 * daemon reads them on every policy change; no route table is read).
 */
export function networkCategories(stateDir: string): NetworkCategory[] {
  return connectedInterfaces(stateDir).map((i) => i.category);
}

/** The connected interfaces with their network category and connectivity (Get-NetConnectionProfile). */
export function connectionProfiles(stateDir: string): ConnectionProfile[] {
  const realm = domainRealm();
  const defaults = { 4: defaultRouteDevices(routeTable(4), 4), 6: defaultRouteDevices(routeTable(6), 6) };
  return connectedInterfaces(stateDir)
    .map(({ name, addresses, category }): ConnectionProfile => {
      const connectivity = (family: 4 | 6) =>
        !addresses.some((a) => (family === 4 ? a.family === 'IPv4' : a.family === 'IPv6'))
          ? ('NoTraffic' as const)
          : defaults[family].has(name)
            ? ('Internet' as const)
            : ('LocalNetwork' as const);
      return {
        Name: realm ? realm.toLowerCase() : 'Network',
        InterfaceAlias: name,
        InterfaceIndex: ifIndex(name),
        NetworkCategory: category,
        IPv4Connectivity: connectivity(4),
        IPv6Connectivity: connectivity(6),
      };
    })
    .sort((a, b) => a.InterfaceIndex - b.InterfaceIndex);
}

/** Set-NetConnectionProfile: Public or Private for an interface (a domain network is not chosen, it is detected). */
export function setNetworkCategory(stateDir: string, alias: string, category: string): void {
  const c = category.toLowerCase();
  if (c === 'domainauthenticated')
    throw new ConsecError(
      'ERR_NETWORK_CATEGORY',
      "Unable to set NetworkCategory to 'DomainAuthenticated'. This NetworkCategory type will be set automatically when authenticated to a domain network.",
    );
  if (c !== 'public' && c !== 'private')
    throw new ConsecError('ERR_NETWORK_CATEGORY', `NetworkCategory "${category}" is not one of Public, Private.`);
  const next = { ...readCategories(stateDir), [alias]: c === 'public' ? 'Public' : 'Private' };
  writeFileAtomic(categoriesFile(stateDir), `${JSON.stringify(next, null, 2)}\n`);
}

/** A stamp that changes when the categories file changes (the daemon re-reads the profiles then). */
export function networkCategoriesStamp(stateDir: string): string {
  try {
    const st = statSync(categoriesFile(stateDir));
    return `${st.mtimeMs}:${st.size}:${st.ino}`;
  } catch {
    return 'none';
  }
}

/** The firewall profiles in force: one per category of a connected interface. */
export function activeProfiles(categories: readonly NetworkCategory[]): ProfileName[] {
  const names = new Set<ProfileName>();
  for (const c of categories)
    names.add(c === 'DomainAuthenticated' ? 'Domain' : c === 'Private' ? 'Private' : 'Public');
  return (['Domain', 'Private', 'Public'] as const).filter((n) => names.has(n));
}

/** The policy with only the rules (connection security, main mode, firewall) whose Profile is Any or in force. */
export function policyForProfiles(doc: PolicyDocument, active: readonly ProfileName[]): PolicyDocument {
  const applies = (profiles: readonly string[]) =>
    profiles.includes('Any') || profiles.some((p) => (active as readonly string[]).includes(p));
  return {
    ...doc,
    rules: doc.rules.filter((r) => applies(r.Profile)),
    mainModeRules: doc.mainModeRules.filter((r) => applies(r.Profile)),
    firewallRules: doc.firewallRules.filter((r) => applies(r.Profile)),
  };
}
