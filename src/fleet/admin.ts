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
  directoryPrefix,
  type Directory,
  filterKey,
  hostKey,
  parseDirectory,
  readDirectory,
  statusKey,
  targetedGpos,
} from './directory.ts';
import { FleetConflictError, linkedGpoKey } from './gpo.ts';
import { FleetError } from './config.ts';

/** etcd's default limit of operations in one transaction (--max-txn-ops). */
export const MAX_TXN_OPS = 128;

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
  return new Set(targetedGpos(dir, host).applied.map((a) => linkedGpoKey(dir.domain, a.gpo)));
}

/** The key every directory change bumps: changes are compared against it, so they apply one at a time. */
export const directoryVersionKey = (domain: string): string => `/consec/dirversion/${domain.toLowerCase()}`;

/**
 * Changes the directory with `edit` (on a copy) and writes what changed in one transaction that holds
 * only if no other directory change was committed since it was read (else it is done again on a
 * fresh read). Hosts' access rights follow: those a change gives are granted before it is written,
 * those it takes away revoked after; `repair` also brings every host's rights in line with the
 * directory when nothing changed.
 */
export async function editDirectory(
  etcd: Etcd3,
  domain: string,
  edit: (dir: Directory) => void,
  o: { access?: boolean; repair?: boolean } = {},
): Promise<{ revision: string; dir: Directory }> {
  const access = o.access !== false;
  const versionKey = directoryVersionKey(domain);
  /** Hosts granted rights by an attempt (also one that lost): brought in line after the commit. */
  const granted = new Set<string>();
  let known: { roles: Set<string>; users: Set<string> } | undefined;
  const knownRights = async () =>
    (known ??= {
      roles: new Set((await etcd.getRoles()).map((x) => x.name)),
      users: new Set((await etcd.getUsers()).map((u) => u.name)),
    });
  for (let attempt = 0; attempt < 5; attempt++) {
    const version = (await etcd.get(versionKey).exec()).kvs[0];
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
    if (changed.length === 0) {
      if (access && o.repair) await reconcile(etcd, domain, after.dir, after.dir.hosts.keys(), await knownRights());
      return { revision: before.revision, dir: after.dir };
    }
    if (changed.length + 1 > MAX_TXN_OPS)
      throw new FleetError(
        `This directory change writes ${changed.length} keys, more than one etcd transaction takes (${MAX_TXN_OPS} operations, its --max-txn-ops): nothing was changed. Make it in parts.`,
      );
    if (access) {
      const k = await knownRights();
      // Hosts whose rights grow (a new host, or GPOs that now target it): before the change is visible.
      for (const h of after.dir.hosts.keys()) {
        const now = readableGpos(after.dir, h);
        const was = before.dir.hosts.has(h) ? readableGpos(before.dir, h) : undefined;
        if (was && [...now].every((key) => was.has(key)) && k.roles.has(hostRole(domain, h))) continue;
        await grantHost(etcd, domain, h, [...(was ?? []), ...now], k);
        granted.add(h);
      }
    }
    let r: Awaited<ReturnType<ReturnType<Etcd3['if']>['commit']>>;
    try {
      r = await etcd
        .if(versionKey, version ? 'Mod' : 'Create', '==', version ? String(version.mod_revision) : 0)
        .then(
          ...changed.map((key) => {
            const v = newKeys.get(key);
            return v === undefined ? etcd.delete().key(key) : etcd.put(key).value(v);
          }),
          etcd.put(versionKey).value(new Date().toISOString()),
        )
        .commit();
    } catch (err) {
      // etcd refuses a request that raced a change of its access rules; it is only to be sent again.
      if (/revision of auth store is old/.test((err as Error).message)) continue;
      throw err;
    }
    if (!r.succeeded) continue;
    if (access) {
      const hosts = new Set([...before.dir.hosts.keys(), ...granted]);
      for (const h of hosts)
        if (!after.dir.hosts.has(h)) await removeHost(etcd, domain, h);
        else {
          const now = readableGpos(after.dir, h);
          if (granted.has(h) || [...readableGpos(before.dir, h)].some((key) => !now.has(key)))
            await revokeHost(etcd, domain, h, now);
        }
    }
    return { revision: String(r.header.revision), dir: after.dir };
  }
  throw new FleetConflictError(
    `The fleet's directory kept changing while this change was made (5 tries): nothing was changed. Try again.`,
  );
}

/** Every host of `hosts` gets exactly the rights the directory gives it. */
async function reconcile(
  etcd: Etcd3,
  domain: string,
  dir: Directory,
  hosts: Iterable<string>,
  known: { roles: Set<string>; users: Set<string> },
): Promise<void> {
  for (const h of hosts) {
    const now = readableGpos(dir, h);
    await grantHost(etcd, domain, h, [...now], known);
    await revokeHost(etcd, domain, h, now);
  }
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
