/**
 * The fleet's GPOs in etcd v3: one key per GPO, `/consec/gpo/<domain>/<GPO name>`, holding the GPO
 * as a consec policy store file (the same format and checks as a local store). An admin's edit
 * session remembers the key's mod_revision when the GPO was opened; saving is one transaction that
 * writes only if the key is still at that revision (compare-and-swap): a second admin who opened the
 * same revision gets a conflict, and nothing is merged or lost.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from '../io/atomic.ts';
import { createRequire } from 'node:module';
import type * as Etcd from 'etcd3';
import type { Etcd3 } from 'etcd3';
import { readStoreText, storeFileText } from '../policy/store.ts';
import type { PolicyDocument } from '../policy/model.ts';
import { type FleetConfig, FleetError } from './config.ts';

export class FleetConflictError extends FleetError {
  constructor(message: string) {
    super(message, 'ERR_FLEET_CONFLICT');
  }
}

/** A client for the fleet's cluster, with this host's TLS certificate (its CN is the etcd user). */
export function connectFleet(config: FleetConfig): Etcd3 {
  let credentials: { rootCertificate: Buffer; certChain: Buffer; privateKey: Buffer };
  try {
    credentials = {
      rootCertificate: readFileSync(config.ca),
      certChain: readFileSync(config.cert),
      privateKey: readFileSync(config.key),
    };
  } catch (err) {
    throw new FleetError(`the fleet's TLS files: ${(err as Error).message}`);
  }
  // etcd's client (gRPC, protobuf: a few hundred modules) is loaded by the hosts and commands that
  // talk to a fleet, not by every consec command.
  const etcd3 = createRequire(import.meta.url)('etcd3') as typeof Etcd;
  return new etcd3.Etcd3({
    hosts: config.endpoints,
    credentials,
    dialTimeout: 3000,
    // Every call has a deadline: an unreachable cluster is an error, not a hang.
    defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + 5000 }),
  });
}

/** "corp.example\Isolation" → its domain and GPO name. */
export function splitGpoName(name: string): { domain: string; gpo: string } | undefined {
  const m = /^([A-Za-z0-9][A-Za-z0-9.-]*)[\\/](.+)$/.exec(name.trim());
  return m ? { domain: (m[1] as string).toLowerCase(), gpo: m[2] as string } : undefined;
}

export const gpoKey = (name: string): string => {
  const n = splitGpoName(name);
  if (!n) throw new FleetError(`"${name}" is not a domain GPO name (domain\\GPO name)`);
  return `/consec/gpo/${n.domain}/${encodeURIComponent(n.gpo.toLowerCase())}`;
};

/** The key of a GPO linked by its name within `domain` ("Isolation"). */
export const linkedGpoKey = (domain: string, gpo: string): string => gpoKey(`${domain}\\${gpo}`);

export interface GpoRecord {
  doc: PolicyDocument;
  /** The store file as it is in etcd. */
  text: string;
  /** etcd's mod_revision of the key ("0": no such GPO yet). */
  revision: string;
}

/** The GPO as etcd holds it now (revision "0" and an empty policy when it does not exist yet). */
export async function loadGpo(etcd: Etcd3, name: string): Promise<GpoRecord> {
  const r = await etcd.get(gpoKey(name)).exec();
  const kv = r.kvs[0];
  if (!kv) return { doc: readStoreText('', name), text: '', revision: '0' };
  const text = kv.value.toString('utf8');
  // Whatever is in the cluster is checked as a store file is: a broken GPO is refused here.
  return { doc: readStoreText(text, `${name} (fleet revision ${kv.mod_revision})`), text, revision: kv.mod_revision };
}

/**
 * Writes the GPO if its key is still at `opened` (the revision the edit session read); its new
 * revision. A change by anyone else since then: FleetConflictError, and etcd keeps theirs.
 */
export async function saveGpo(etcd: Etcd3, name: string, doc: PolicyDocument, opened: string): Promise<string> {
  const key = gpoKey(name);
  const value = storeFileText(name, doc);
  const t = await etcd
    .if(key, opened === '0' ? 'Create' : 'Mod', '==', opened === '0' ? 0 : opened)
    .then(etcd.put(key).value(value))
    .commit();
  if (!t.succeeded) {
    const now = await etcd.get(key).exec();
    throw new FleetConflictError(
      `The GPO ${name} was changed by someone else after it was opened (opened at revision ${opened}, now ${now.kvs[0]?.mod_revision ?? 'deleted'}): nothing was saved. Open it again with Open-NetGPO, make the change again, and save.`,
    );
  }
  return t.header.revision;
}

/**
 * The revisions this state directory's edit sessions opened (`<state dir>/fleet-sessions.json`):
 * Open-NetGPO records one, Save-NetGPO saves against it and records the new one.
 */
export class GpoSessions {
  constructor(private readonly stateDir: string) {}

  private get file(): string {
    return join(this.stateDir, 'fleet-sessions.json');
  }

  private all(): Record<string, string> {
    try {
      return JSON.parse(readFileSync(this.file, 'utf8')) as Record<string, string>;
    } catch {
      return {};
    }
  }

  opened(name: string): string | undefined {
    return this.all()[gpoKey(name)];
  }

  record(name: string, revision: string): void {
    writeFileAtomic(this.file, `${JSON.stringify({ ...this.all(), [gpoKey(name)]: revision }, null, 2)}\n`, 0o600);
  }

  /** Ends the edit session of `name` (Save-NetGPO wrote it). */
  close(name: string): void {
    const key = gpoKey(name);
    const rest = Object.fromEntries(Object.entries(this.all()).filter(([k]) => k !== key));
    writeFileAtomic(this.file, `${JSON.stringify(rest, null, 2)}\n`, 0o600);
  }
}
