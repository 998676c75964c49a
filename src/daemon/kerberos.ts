/**
 * This host's Kerberos for AuthIP: the computer account in the host keytab (KRB5_KTNAME, else
 * /etc/krb5.keytab, as every Linux Kerberos tool reads it), used to ask the KDC for tickets to
 * peers (initiator) and to accept theirs (acceptor). Realm and KDC come from krb5.conf.
 */
import { closeSync, constants, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { GssPeer, KerberosProvider } from '../ike/authip/session.ts';
import { ConsecError } from '../errors.ts';
import { readFdBounded } from '../io/bounded.ts';
import { GssContext, gssAvailable, keytabPrincipals } from '../io/gss.ts';

/** A user's tickets cannot be used (none, not theirs, a cache type consec cannot read). */
export class UserCredentialsError extends ConsecError {
  constructor(message: string) {
    super('ERR_USER_CREDENTIALS', message);
  }
}

/** The largest credential cache read: 1 MiB (a cache holds a few tickets of a few KiB). */
const MAX_CCACHE_BYTES = 1024 * 1024;

/** A [libdefaults] value of krb5.conf (KRB5_CONFIG's files, else /etc/krb5.conf), as MIT reads it. */
function libdefault(name: string, env: NodeJS.ProcessEnv): string | undefined {
  for (const file of (env.KRB5_CONFIG ?? '/etc/krb5.conf').split(':')) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    let section = '';
    for (const line of text.split('\n')) {
      const head = /^\s*\[([^\]]+)\]/.exec(line);
      if (head) section = head[1] as string;
      const kv = section === 'libdefaults' ? new RegExp(`^\\s*${name}\\s*=\\s*(\\S+)`).exec(line) : null;
      if (kv) return kv[1];
    }
  }
  return undefined;
}

/**
 * The file of a user's credential cache: krb5.conf's default_ccache_name with %{uid} expanded, else
 * MIT's default FILE:/tmp/krb5cc_%{uid}. Only FILE caches are read (KEYRING and KCM caches live in
 * the user's session, which a service cannot enter).
 */
export function userCcacheFile(uid: number, env: NodeJS.ProcessEnv = process.env): string {
  const name = libdefault('default_ccache_name', env) ?? 'FILE:/tmp/krb5cc_%{uid}';
  const type = /^([A-Za-z]+):/.exec(name)?.[1]?.toUpperCase();
  if (type && type !== 'FILE')
    throw new UserCredentialsError(`user credential caches are ${type} caches (${name}): consec reads FILE caches`);
  const path = name
    .replace(/^FILE:/i, '')
    .replace(/%\{(uid|euid|USERID)\}/g, String(uid))
    .replace(/%\{TEMP\}/g, '/tmp');
  if (path.includes('%{')) throw new UserCredentialsError(`cannot expand the credential cache name ${name}`);
  return path;
}

/**
 * A private copy of user `uid`'s tickets, for one Extended Mode. The user's cache is opened without
 * following a link and used only if it is a regular file owned by that user — a user can present
 * no tickets but their own — then copied into a directory only root can enter (mkdtemp, 0700), so
 * krb5 reads the checked octets and the user's own cache is never written by root.
 */
export function userCredentials(
  uid: number,
  env: NodeJS.ProcessEnv = process.env,
): { ccache: string; dispose(): void } {
  const path = userCcacheFile(uid, env);
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as { code?: string }).code;
    throw new UserCredentialsError(
      code === 'ENOENT'
        ? `user ${uid} has no Kerberos tickets (no ${path})`
        : code === 'ELOOP'
          ? `${path} is a symbolic link: not used as user ${uid}'s tickets`
          : `cannot read user ${uid}'s tickets (${path}): ${code ?? (err as Error).message}`,
    );
  }
  let data: Buffer;
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.uid !== uid)
      throw new UserCredentialsError(`${path} is not a credential cache of user ${uid} (owner ${st.uid}): not used`);
    data = readFdBounded(fd, path, MAX_CCACHE_BYTES);
  } finally {
    closeSync(fd);
  }
  // The service's runtime directory (/run/consec, 0700) where systemd gives one, else the temp dir.
  const dir = mkdtempSync(join(process.env.RUNTIME_DIRECTORY?.split(':')[0] || tmpdir(), 'consec-user-'));
  writeFileSync(join(dir, 'ccache'), data, { mode: 0o600, flag: 'wx' });
  return { ccache: `FILE:${join(dir, 'ccache')}`, dispose: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A Kerberos initiator as user `uid` toward `target` (Extended Mode); closing it removes the copy. */
export function userInitiator(uid: number, target: string, env: NodeJS.ProcessEnv = process.env): GssPeer {
  const creds = userCredentials(uid, env);
  let ctx: GssContext;
  try {
    ctx = GssContext.initiator({ target, ccache: creds.ccache });
  } catch (err) {
    creds.dispose();
    throw err;
  }
  return {
    step: (token) => ctx.step(token),
    sessionKey: () => ctx.sessionKey(),
    names: () => ctx.names(),
    close: () => {
      ctx.close();
      creds.dispose();
    },
  };
}

export interface HostKerberos {
  provider?: KerberosProvider;
  /** Why there is none (no addon, no keytab, no computer account in it). */
  reason?: string;
  principal?: string;
}

export function hostKerberos(env: NodeJS.ProcessEnv = process.env): HostKerberos {
  if (!gssAvailable()) return { reason: 'consec was built without Kerberos (libkrb5-dev)' };
  const keytab = env.KRB5_KTNAME ?? 'FILE:/etc/krb5.keytab';
  let principals: string[];
  try {
    principals = keytabPrincipals(keytab);
  } catch (err) {
    return { reason: `no host keytab (${keytab}): ${(err as Error).message}` };
  }
  const principal = principals.find((p) => /^host\//i.test(p)) ?? principals[0];
  if (!principal) return { reason: `the host keytab ${keytab} holds no account` };
  // Tickets live in memory: nothing of this host's credentials is written to disk.
  const ccache = `MEMORY:consec-${process.pid}`;
  return {
    principal,
    provider: {
      initiator: (spn) => GssContext.initiator({ target: spn, principal, clientKeytab: keytab, ccache }),
      acceptor: () => GssContext.acceptor({ keytab }),
      spn: () => principal,
      user: (uid, target) => userInitiator(uid, target, env),
    },
  };
}
