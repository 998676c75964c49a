/**
 * The fleet's directory, as Active Directory holds it for Group Policy: containers (an OU-like path,
 * "corp.example/Servers/SQL") with their GPO links in link order, inheritance blocking and enforced
 * links; each host's container and groups; each GPO's security filtering. Kept in etcd under
 * `/consec/dir/<domain>/`, one key per container, host and filter, readable by every host of the
 * fleet (as a domain's directory is by its computers); written by the fleet's admins.
 *
 * `targetedGpos` is Group Policy's processing order for one host: the domain, then each container
 * down to the host's (LSDOU without sites), within a container the highest link order first so
 * that link order 1 is processed last and wins; a container that blocks inheritance drops the
 * non-enforced links above it; enforced links are processed after all others, the host's own
 * container first and the domain last, so that an enforced link higher up wins; a GPO applies only
 * to hosts its security filtering names (by host name or group; "Authenticated Users" and
 * "Domain Computers" name every host).
 */
import type { Etcd3 } from 'etcd3';
import { z } from 'zod';
import { FleetError } from './config.ts';

const name = z.string().min(1).max(256);

export const linkSchema = z.strictObject({
  /** The GPO's name within the domain ("Isolation" for corp.example\Isolation). */
  gpo: name,
  enabled: z.boolean().default(true),
  enforced: z.boolean().default(false),
});

export const containerSchema = z.strictObject({
  /** The container's path, the domain first: "corp.example/Servers/SQL". */
  path: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9.-]*(\/[^/\\\s][^/\\]*)*$/, 'domain/container/…'),
  blockInheritance: z.boolean().default(false),
  /** The GPO links in link order (the first is link order 1, the highest precedence). */
  links: z.array(linkSchema).default([]),
});

export const hostSchema = z.strictObject({
  /** The container the host's account is in (the domain itself when not given). */
  container: z.string().min(1).optional(),
  groups: z.array(name).default([]),
});

export const filterSchema = z.strictObject({
  /** Who a GPO applies to: host names and groups ("Authenticated Users": every host). */
  apply: z.array(name).min(1),
});

export type GpoLink = z.infer<typeof linkSchema>;
export type Container = z.infer<typeof containerSchema>;
export type HostEntry = z.infer<typeof hostSchema>;
export type SecurityFilter = z.infer<typeof filterSchema>;

/** Names that every host of the fleet is a member of, as Windows' well-known groups are. */
const EVERYONE = new Set(['authenticated users', 'domain computers', 'everyone']);

export interface Directory {
  domain: string;
  /** By lower-case path. */
  containers: Map<string, Container>;
  /** By lower-case host name. */
  hosts: Map<string, HostEntry>;
  /** By lower-case GPO name. */
  filters: Map<string, SecurityFilter>;
}

export const directoryPrefix = (domain: string): string => `/consec/dir/${domain.toLowerCase()}/`;
const part = (s: string): string => encodeURIComponent(s.toLowerCase());
export const containerKey = (domain: string, path: string): string =>
  `${directoryPrefix(domain)}container/${part(path)}`;
export const hostKey = (domain: string, host: string): string => `${directoryPrefix(domain)}host/${part(host)}`;
export const filterKey = (domain: string, gpo: string): string => `${directoryPrefix(domain)}filter/${part(gpo)}`;
export const statusKey = (domain: string, host: string): string =>
  `/consec/status/${domain.toLowerCase()}/${part(host)}`;
export const statusPrefix = (domain: string): string => `/consec/status/${domain.toLowerCase()}/`;

export const emptyDirectory = (domain: string): Directory => ({
  domain: domain.toLowerCase(),
  containers: new Map(),
  hosts: new Map(),
  filters: new Map(),
});

/**
 * The directory from its keys (as read under `directoryPrefix`). A record that is not valid is an
 * error naming its key: a host never guesses at its targeting.
 */
export function parseDirectory(domain: string, kvs: Iterable<[string, string]>): Directory {
  const dir = emptyDirectory(domain);
  const prefix = directoryPrefix(domain);
  for (const [key, text] of kvs) {
    if (!key.startsWith(prefix)) continue;
    const [kind, id, ...rest] = key.slice(prefix.length).split('/') as [string, string | undefined];
    // Only the form consec writes (lower case, encoded): a record under another spelling of a name
    // would otherwise be missed by its lookups — a security filter ignored is a GPO applied to all.
    if (id === undefined || rest.length > 0)
      throw new FleetError(`the fleet directory's key ${key} is not one consec writes`);
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (err) {
      throw new FleetError(`the fleet directory's ${key} is not JSON: ${(err as Error).message}`);
    }
    const parse = <T>(schema: z.ZodType<T>): T => {
      const r = schema.safeParse(raw);
      if (!r.success)
        throw new FleetError(
          `the fleet directory's ${key}: ${r.error.issues.map((i) => `${i.path.join('.') || 'value'}: ${i.message}`).join('; ')}`,
        );
      return r.data;
    };
    let lower: string;
    try {
      lower = decodeURIComponent(id);
    } catch {
      throw new FleetError(`the fleet directory's key ${key} is not one consec writes`);
    }
    if (id !== encodeURIComponent(lower.toLowerCase()))
      throw new FleetError(`the fleet directory's key ${key} is not one consec writes (names are lower case, encoded)`);
    if (kind === 'container') {
      const c = parse(containerSchema);
      if (c.path.toLowerCase() !== lower) throw new FleetError(`the fleet directory's ${key} holds ${c.path}`);
      dir.containers.set(lower, c);
    } else if (kind === 'host') dir.hosts.set(lower, parse(hostSchema));
    else if (kind === 'filter') dir.filters.set(lower, parse(filterSchema));
    else throw new FleetError(`the fleet directory's key ${key} is not one consec writes`);
  }
  return dir;
}

/** One GPO as it applies to a host: where it is linked and how. */
export interface AppliedLink {
  gpo: string;
  container: string;
  linkOrder: number;
  enforced: boolean;
}

export interface Targeting {
  /** The host's container path. */
  container: string;
  groups: string[];
  /** The GPOs that apply, in processing order: the last one has the highest precedence. */
  applied: AppliedLink[];
  /** GPOs linked above or at the host's container that do not apply, with Windows' reason. */
  denied: (AppliedLink & { reason: string })[];
}

/** The containers from the domain down to `path` ("corp.example", "corp.example/Servers", …). */
export function containerChain(domain: string, path: string | undefined): string[] {
  const parts = (path ?? domain).split('/').filter((p) => p.length > 0);
  if ((parts[0] ?? '').toLowerCase() !== domain.toLowerCase())
    throw new FleetError(`the container ${path} is not in the domain ${domain}`);
  return parts.map((_, i) => parts.slice(0, i + 1).join('/'));
}

export function targetedGpos(dir: Directory, host: string): Targeting {
  const entry = dir.hosts.get(host.toLowerCase()) ?? { groups: [] };
  const chain = containerChain(dir.domain, entry.container);
  const members = new Set([host.toLowerCase(), ...entry.groups.map((g) => g.toLowerCase())]);
  const containers = chain.map((p) => dir.containers.get(p.toLowerCase()));
  // The deepest container that blocks inheritance: non-enforced links above it do not reach the host.
  let blockedAbove = -1;
  containers.forEach((c, i) => {
    if (c?.blockInheritance) blockedAbove = i;
  });
  const applied: AppliedLink[] = [];
  const denied: Targeting['denied'] = [];
  const consider = (c: Container, i: number, enforcedPass: boolean): void => {
    for (let n = c.links.length; n >= 1; n--) {
      const link = c.links[n - 1] as GpoLink;
      if (link.enforced !== enforcedPass) continue;
      const a: AppliedLink = { gpo: link.gpo, container: c.path, linkOrder: n, enforced: link.enforced };
      const filter = dir.filters.get(link.gpo.toLowerCase());
      if (!link.enabled) denied.push({ ...a, reason: 'Disabled Link' });
      else if (!link.enforced && i < blockedAbove) denied.push({ ...a, reason: 'Blocked Inheritance' });
      else if (filter && !filter.apply.some((g) => EVERYONE.has(g.toLowerCase()) || members.has(g.toLowerCase())))
        denied.push({ ...a, reason: 'Denied (Security)' });
      else applied.push(a);
    }
  };
  containers.forEach((c, i) => c && consider(c, i, false));
  for (let i = containers.length - 1; i >= 0; i--) {
    const c = containers[i];
    if (c) consider(c, i, true);
  }
  // A GPO linked more than once is processed once, where it has the highest precedence.
  const last = new Map(applied.map((a, i) => [a.gpo.toLowerCase(), i]));
  return {
    container: chain[chain.length - 1] as string,
    groups: entry.groups,
    applied: applied.filter((a, i) => last.get(a.gpo.toLowerCase()) === i),
    denied,
  };
}

export interface DirectorySnapshot {
  dir: Directory;
  revision: string;
  /** Each key's mod_revision as read. */
  modRevisions: Map<string, string>;
  kvs: [string, string][];
}

/** The directory as the cluster holds it now, with its revision and each key's mod_revision. */
export async function readDirectory(etcd: Etcd3, domain: string): Promise<DirectorySnapshot> {
  const r = await etcd.getAll().prefix(directoryPrefix(domain)).exec();
  const kvs = r.kvs.map((kv) => [kv.key.toString('utf8'), kv.value.toString('utf8')] as [string, string]);
  return {
    dir: parseDirectory(domain, kvs),
    kvs,
    revision: String(r.header.revision),
    modRevisions: new Map(r.kvs.map((kv) => [kv.key.toString('utf8'), String(kv.mod_revision)])),
  };
}
