/**
 * Network location: which firewall profiles (Domain, Private, Public) are in force, from the
 * network category of each connected interface — Windows' network location awareness, which Linux
 * does not have. An interface is DomainAuthenticated when this host is joined to a Kerberos realm
 * (krb5.conf default_realm), otherwise Public until an administrator says otherwise with
 * `Set-NetConnectionProfile -InterfaceAlias eth0 -NetworkCategory Private` (kept in
 * `<state dir>/network-categories.json`). A connection security rule applies when its Profile is
 * Any or names a profile in force (`policyForProfiles`).
 */
import { readFileSync, statSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
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

/** The Kerberos realm this host is joined to, if any (krb5.conf [libdefaults] default_realm). */
function domainRealm(): string | undefined {
  try {
    const m = /^\s*default_realm\s*=\s*(\S+)/m.exec(readFileSync('/etc/krb5.conf', 'utf8'));
    return m?.[1];
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

function hasDefaultRoute(family: 4 | 6, name: string): boolean {
  try {
    const file = family === 4 ? '/proc/net/route' : '/proc/net/ipv6_route';
    return readFileSync(file, 'utf8')
      .split('\n')
      .some((l) => {
        const f = l.trim().split(/\s+/);
        return family === 4
          ? f[0] === name && f[1] === '00000000'
          : f[9] === name && f[0] === '00000000000000000000000000000000' && f[1] === '00000000';
      });
  } catch {
    return false;
  }
}

/**
 * The connected interfaces (an address other than link-local; not loopback, not consec's TUN) with
 * their network category.
 */
export function connectionProfiles(stateDir: string): ConnectionProfile[] {
  const chosen = readCategories(stateDir);
  const realm = domainRealm();
  const out: ConnectionProfile[] = [];
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    if (name.startsWith('consec') || !addrs) continue;
    const usable = addrs.filter((a) => !a.internal && !a.address.startsWith('fe80:'));
    if (usable.length === 0) continue;
    const connectivity = (family: 4 | 6) =>
      !usable.some((a) => (family === 4 ? a.family === 'IPv4' : a.family === 'IPv6'))
        ? ('NoTraffic' as const)
        : hasDefaultRoute(family, name)
          ? ('Internet' as const)
          : ('LocalNetwork' as const);
    const category: NetworkCategory = realm ? 'DomainAuthenticated' : (chosen[name] ?? 'Public');
    out.push({
      Name: realm ? realm.toLowerCase() : 'Network',
      InterfaceAlias: name,
      InterfaceIndex: ifIndex(name),
      NetworkCategory: category,
      IPv4Connectivity: connectivity(4),
      IPv6Connectivity: connectivity(6),
    });
  }
  return out.sort((a, b) => a.InterfaceIndex - b.InterfaceIndex);
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
export function activeProfiles(list: readonly ConnectionProfile[]): ProfileName[] {
  const names = new Set<ProfileName>();
  for (const p of list)
    names.add(
      p.NetworkCategory === 'DomainAuthenticated' ? 'Domain' : p.NetworkCategory === 'Private' ? 'Private' : 'Public',
    );
  return (['Domain', 'Private', 'Public'] as const).filter((n) => names.has(n));
}

/** The policy with only the rules (connection security and main mode) whose Profile is Any or in force. */
export function policyForProfiles(doc: PolicyDocument, active: readonly ProfileName[]): PolicyDocument {
  const applies = (profiles: readonly string[]) =>
    profiles.includes('Any') || profiles.some((p) => (active as readonly string[]).includes(p));
  return {
    ...doc,
    rules: doc.rules.filter((r) => applies(r.Profile)),
    mainModeRules: doc.mainModeRules.filter((r) => applies(r.Profile)),
  };
}
