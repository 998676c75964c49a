/**
 * The fleet admin's side of the directory: linking GPOs to containers, placing hosts and their
 * groups, security filtering — and the cluster's access rights that follow from them.
 *
 * Access (etcd RBAC, with client certificates: a certificate's CN is its etcd user): each host is
 * the etcd user of its name with one role, `consec-host:<domain>:<host>`, that may read the fleet's
 * directory, read exactly the GPOs that target the host, and read and write its own status key —
 * nothing else. A pre-shared key in a GPO is therefore readable only by the hosts that GPO
 * targets (put a pair's key in a GPO filtered to that pair). Writing GPOs and the directory is for
 * admin identities (a role with write access to `/consec/`); changing the directory also changes
 * hosts' roles, which in etcd is for its root role.
 *
 * A directory change is read, changed, and written back in one transaction that holds only if none
 * of the keys it writes changed meanwhile (else it is done again on the new state). Rights a change
 * gives are granted before it is written, rights it takes away are revoked after: a host never
 * sees a GPO it may not read yet.
 */
import { randomBytes } from 'node:crypto';
import type { Etcd3 } from 'etcd3';
import {
  containerKey,
  type Directory,
  directoryPrefix,
  filterKey,
  hostKey,
  parseDirectory,
  statusKey,
  targetedGpos,
} from './directory.ts';
import { FleetConflictError, gpoKey } from './gpo.ts';

export interface DirectorySnapshot {
  dir: Directory;
  revision: string;
  /** Each key's mod_revision as read. */
  modRevisions: Map<string, string>;
  kvs: [string, string][];
}

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

/** The directory as keys and their JSON text. */
function directoryKeys(dir: Directory): Map<string, string> {
  const out = new Map<string, string>();
  for (const c of dir.containers.values()) out.set(containerKey(dir.domain, c.path), JSON.stringify(c));
  for (const [h, e] of dir.hosts) out.set(hostKey(dir.domain, h), JSON.stringify(e));
  for (const [g, f] of dir.filters) out.set(filterKey(dir.domain, g), JSON.stringify(f));
  return out;
}

export const hostRole = (domain: string, host: string): string =>
  `consec-host:${domain.toLowerCase()}:${host.toLowerCase()}`;

/** The keys a host may read (besides the directory) in a given directory: the GPOs that target it. */
function readableGpos(dir: Directory, host: string): Set<string> {
  return new Set(targetedGpos(dir, host).applied.map((a) => gpoKey(`${dir.domain}\\${a.gpo}`)));
}

/**
 * Changes the directory with `edit` (on a copy) and writes what changed, with the hosts' access
 * rights kept to match; done again on a fresh read when someone else changed the same keys.
 */
export async function editDirectory(
  etcd: Etcd3,
  domain: string,
  edit: (dir: Directory) => void,
  o: { access?: boolean } = {},
): Promise<{ revision: string; dir: Directory }> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const before = await readDirectory(etcd, domain);
    const after = { dir: parseDirectory(domain, before.kvs) };
    edit(after.dir);
    // Every host's targeting must still be computable: a container outside the domain is refused here.
    for (const h of after.dir.hosts.keys()) targetedGpos(after.dir, h);
    const oldKeys = directoryKeys(before.dir);
    const newKeys = directoryKeys(after.dir);
    const changed = [...new Set([...oldKeys.keys(), ...newKeys.keys()])].filter(
      (k) => oldKeys.get(k) !== newKeys.get(k),
    );
    if (changed.length === 0) return { revision: before.revision, dir: after.dir };
    const hosts = new Set([...before.dir.hosts.keys(), ...after.dir.hosts.keys()]);
    const access = o.access !== false;
    if (access) {
      const known = {
        roles: new Set((await etcd.getRoles()).map((x) => x.name)),
        users: new Set((await etcd.getUsers()).map((u) => u.name)),
      };
      // Only hosts whose rights grow (a new host, or GPOs that now target it).
      for (const h of after.dir.hosts.keys()) {
        const now = readableGpos(after.dir, h);
        const was = before.dir.hosts.has(h) ? readableGpos(before.dir, h) : undefined;
        if (was && [...now].every((k) => was.has(k)) && known.roles.has(hostRole(domain, h))) continue;
        await grantHost(etcd, domain, h, [...(was ?? []), ...now], known);
      }
    }
    const txn = changed.reduce(
      (t, k) => {
        const mod = before.modRevisions.get(k);
        return t === undefined
          ? etcd.if(k, mod ? 'Mod' : 'Create', '==', mod ?? 0)
          : t.and(k, mod ? 'Mod' : 'Create', '==', mod ?? 0);
      },
      undefined as ReturnType<Etcd3['if']> | undefined,
    ) as ReturnType<Etcd3['if']>;
    const r = await txn
      .then(
        ...changed.map((k) => {
          const v = newKeys.get(k);
          return v === undefined ? etcd.delete().key(k) : etcd.put(k).value(v);
        }),
      )
      .commit();
    if (!r.succeeded) continue;
    if (access)
      for (const h of hosts) {
        if (!after.dir.hosts.has(h)) {
          if (before.dir.hosts.has(h)) await removeHost(etcd, domain, h);
          continue;
        }
        const now = readableGpos(after.dir, h);
        if (before.dir.hosts.has(h) && [...readableGpos(before.dir, h)].some((k) => !now.has(k)))
          await revokeHost(etcd, domain, h, now);
      }
    return { revision: String(r.header.revision), dir: after.dir };
  }
  throw new FleetConflictError(
    `The fleet's directory kept changing while this change was made (5 tries): nothing was changed. Try again.`,
  );
}

/** Creates the host's etcd user and role if needed and grants the directory, its status and `gpos`. */
async function grantHost(
  etcd: Etcd3,
  domain: string,
  host: string,
  gpos: string[],
  known: { roles: Set<string>; users: Set<string> },
): Promise<void> {
  const roleName = hostRole(domain, host);
  if (!known.roles.has(roleName)) {
    await etcd.role(roleName).create();
    known.roles.add(roleName);
  }
  // The host authenticates with its certificate (CN = host name); the user has no password.
  if (!known.users.has(host)) {
    await etcd.auth.userAdd({
      name: host,
      password: randomBytes(24).toString('base64'),
      options: { no_password: true },
    });
    known.users.add(host);
  }
  await etcd.auth.userGrantRole({ user: host, role: roleName });
  const role = etcd.role(roleName);
  await role.grant({ permission: 'Read', range: etcd.range({ prefix: directoryPrefix(domain) }) });
  await role.grant({ permission: 'Readwrite', key: statusKey(domain, host) });
  for (const key of new Set(gpos)) await role.grant({ permission: 'Read', key });
}

/** Takes from the host's role every GPO it may no longer read. */
async function revokeHost(etcd: Etcd3, domain: string, host: string, keep: Set<string>): Promise<void> {
  const role = etcd.role(hostRole(domain, host));
  const prefix = Buffer.from(`/consec/gpo/${domain.toLowerCase()}/`);
  for (const p of await role.permissions()) {
    const start = p.range.start;
    if (!start.subarray(0, prefix.length).equals(prefix) || keep.has(start.toString('utf8'))) continue;
    await role.revoke({ permission: p.permission, range: p.range });
  }
}

/** A host taken out of the directory loses its role (its user stays: an admin may still use the name). */
async function removeHost(etcd: Etcd3, domain: string, host: string): Promise<void> {
  const roleName = hostRole(domain, host);
  if ((await etcd.getRoles()).some((r) => r.name === roleName)) await etcd.role(roleName).delete();
}

/** Every host's reported status, with the directory's view of it. */
export async function fleetStatus(
  etcd: Etcd3,
  domain: string,
): Promise<{ host: string; container: string; status?: Record<string, unknown> }[]> {
  const { dir } = await readDirectory(etcd, domain);
  const r = await etcd.getAll().prefix(`/consec/status/${domain.toLowerCase()}/`).exec();
  const statuses = new Map<string, Record<string, unknown>>();
  for (const kv of r.kvs) {
    try {
      const s = JSON.parse(kv.value.toString('utf8')) as Record<string, unknown>;
      statuses.set(decodeURIComponent(kv.key.toString('utf8').split('/').pop() ?? ''), s);
    } catch {
      // a status that is not JSON is shown as missing
    }
  }
  const names = new Set([...dir.hosts.keys(), ...statuses.keys()]);
  return [...names].sort().map((h) => ({
    host: h,
    container: dir.hosts.get(h)?.container ?? dir.domain,
    status: statuses.get(h),
  }));
}
