/**
 * Policy stores (reference §1.2). PersistentStore and GPO stores are JSON files under the state
 * directory, written atomically (temp file, fsync, rename, fsync directory) under a lock shared by
 * every consec process, so a crash mid-write or two CLIs at once never lose or corrupt policy.
 * ActiveStore, RSOP and SystemDefaults are read-only views computed from them.
 */
import { mkdirSync, readdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import lockfile from 'proper-lockfile';
import { ConsecError, permissionDenied } from '../errors.ts';
import { writeFileAtomic } from '../io/atomic.ts';
import { emptyDocument, type PolicyDocument } from './model.ts';
import { storeFileSchema } from './schema.ts';
import { validateDocument } from './validate.ts';
import { InputTooLargeError, readTextBounded } from '../io/bounded.ts';

export class PolicyStoreError extends ConsecError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_POLICY_STORE', message, options);
  }
}

export const DEFAULT_STATE_DIR = '/var/lib/consec';

export function stateDirFromEnv(): string {
  return process.env.CONSEC_HOME || DEFAULT_STATE_DIR;
}

export type StoreKind = 'persistent' | 'gpo' | 'active' | 'rsop' | 'defaults';

export interface ResolvedStore {
  /** The name as Windows shows it in PolicyStoreSource. */
  name: string;
  kind: StoreKind;
  writable: boolean;
  /** File backing a writable store. */
  file?: string;
}

const READ_ONLY_VIEWS: Record<string, StoreKind> = {
  activestore: 'active',
  rsop: 'rsop',
  systemdefaults: 'defaults',
  staticservicestore: 'defaults',
};

/** Where each store lives and what it may do. */
export class PolicyStores {
  constructor(readonly stateDir: string = stateDirFromEnv()) {}

  get policyDir(): string {
    return join(this.stateDir, 'policy');
  }

  resolve(name = 'PersistentStore'): ResolvedStore {
    const n = name.trim();
    const lower = n.toLowerCase();
    if (lower === 'persistentstore' || lower === 'configurableservicestore') {
      const canonical = lower === 'persistentstore' ? 'PersistentStore' : 'ConfigurableServiceStore';
      return { name: canonical, kind: 'persistent', writable: true, file: join(this.policyDir, `${canonical}.json`) };
    }
    const view = READ_ONLY_VIEWS[lower];
    if (view) {
      const canonical = {
        active: 'ActiveStore',
        rsop: 'RSOP',
        defaults: lower === 'systemdefaults' ? 'SystemDefaults' : 'StaticServiceStore',
        persistent: '',
        gpo: '',
      }[view];
      return { name: canonical, kind: view, writable: false };
    }
    // A local GPO (the host name or localhost) or a domain GPO "domain\GPO name".
    if (!/^[A-Za-z0-9][A-Za-z0-9 ._\\-]{0,254}$/.test(n) || n.includes('..')) {
      throw new PolicyStoreError(`The policy store "${name}" is not valid.`);
    }
    const key = lower === 'localhost' || lower === hostname().toLowerCase() ? 'localhost' : n;
    return {
      name: n,
      kind: 'gpo',
      writable: true,
      file: join(this.policyDir, 'gpo', `${encodeURIComponent(key)}.json`),
    };
  }

  /** Reads a store (or computes a view). Missing files read as a new store. */
  read(name = 'PersistentStore'): PolicyDocument {
    const s = this.resolve(name);
    switch (s.kind) {
      case 'persistent':
      case 'gpo':
        return readStoreFile(s.file as string, s.name);
      case 'defaults':
        return emptyDocument();
      case 'rsop':
        return this.gpoDocuments().reduce(
          mergeDocuments,
          emptyDocument() as PolicyDocument | undefined,
        ) as PolicyDocument;
      case 'active':
        return this.activeParts().reduce(
          (acc, part) => mergeDocuments(acc, part.doc),
          undefined as PolicyDocument | undefined,
        ) as PolicyDocument;
    }
  }

  /**
   * What the ActiveStore is made of, lowest precedence first: the PersistentStore (Local) and the
   * merged GPOs (RSOP). A GPO that sets AllowLocalIPsecRules False — for the domain profile: consec
   * has no network location awareness and treats the host as on its domain network — drops the
   * local rules.
   */
  activeParts(): { doc: PolicyDocument; store: string; type: 'Local' | 'GroupPolicy' }[] {
    const local = this.read('PersistentStore');
    const gpo = this.gpoDocuments().reduce(mergeDocuments, undefined as PolicyDocument | undefined);
    if (!gpo) return [{ doc: local, store: 'PersistentStore', type: 'Local' }];
    if (gpo.profiles.find((p) => p.Name === 'Domain')?.AllowLocalIPsecRules === 'False') {
      local.rules = [];
      local.mainModeRules = [];
    }
    return [
      { doc: local, store: 'PersistentStore', type: 'Local' },
      { doc: gpo, store: 'RSOP', type: 'GroupPolicy' },
    ];
  }

  /**
   * Runs `change` on a copy of the store under the store lock; validates and writes the result
   * atomically if it differs. On any error the file is untouched.
   */
  async update<T>(name: string | undefined, change: (doc: PolicyDocument) => T): Promise<T> {
    const s = this.resolve(name);
    if (!s.writable || !s.file) {
      throw new PolicyStoreError(
        `The policy store "${s.name}" is read-only; change PersistentStore or a GPO store instead.`,
      );
    }
    const file = s.file;
    const needs = 'to change the policy stores';
    try {
      mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    } catch (err) {
      throw permissionDenied(err, dirname(file), needs);
    }
    let release: () => Promise<void>;
    try {
      release = await lockfile.lock(file, {
        realpath: false,
        stale: 15_000,
        retries: { retries: 200, factor: 1.2, minTimeout: 5, maxTimeout: 100 },
      });
    } catch (cause) {
      const denied = permissionDenied(cause, file, needs);
      if (denied !== cause) throw denied;
      throw new PolicyStoreError(
        `The policy store "${s.name}" is locked by another consec process: ${(cause as Error).message}`,
        { cause },
      );
    }
    try {
      const before = readStoreFile(file, s.name);
      const doc = structuredClone(before);
      const result = change(doc);
      if (JSON.stringify(doc) !== JSON.stringify(before)) {
        validateDocument(doc);
        writeStoreFile(file, s.name, doc);
      }
      return result;
    } finally {
      await release();
    }
  }

  private gpoDocuments(): PolicyDocument[] {
    const dir = join(this.policyDir, 'gpo');
    let files: string[];
    try {
      files = readdirSync(dir)
        .filter((f) => f.endsWith('.json'))
        .sort();
    } catch {
      return [];
    }
    return files.map((f) => readStoreFile(join(dir, f), decodeURIComponent(f.slice(0, -5))));
  }
}

/** GPO objects override local ones with the same Name (reference §1.1). */
export function mergeDocuments(base: PolicyDocument | undefined, over: PolicyDocument): PolicyDocument {
  if (!base) return over;
  const merge = <T extends { Name: string }>(a: T[], b: T[]): T[] => {
    const names = new Set(b.map((o) => o.Name.toLowerCase()));
    return [...a.filter((o) => !names.has(o.Name.toLowerCase())), ...b];
  };
  return {
    rules: merge(base.rules, over.rules),
    mainModeRules: merge(base.mainModeRules, over.mainModeRules),
    phase1AuthSets: merge(base.phase1AuthSets, over.phase1AuthSets),
    phase2AuthSets: merge(base.phase2AuthSets, over.phase2AuthSets),
    mainModeCryptoSets: merge(base.mainModeCryptoSets, over.mainModeCryptoSets),
    quickModeCryptoSets: merge(base.quickModeCryptoSets, over.quickModeCryptoSets),
    settings: { ...base.settings, ...over.settings },
    // Profile settings merge field by field: NotConfigured in the higher store keeps the lower value.
    profiles: base.profiles.map((bp) => {
      const op = over.profiles.find((p) => p.Name === bp.Name);
      if (!op) return bp;
      const merged = { ...bp };
      for (const [k, v] of Object.entries(op)) if (v !== 'NotConfigured') (merged as Record<string, unknown>)[k] = v;
      return merged;
    }),
  };
}

export function readStoreFile(file: string, storeName: string): PolicyDocument {
  let text: string;
  try {
    text = readTextBounded(file, `The policy store file ${file}`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return emptyDocument();
    if (err instanceof InputTooLargeError) throw err;
    throw new PolicyStoreError(`Cannot read the policy store "${storeName}" (${file}): ${(err as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new PolicyStoreError(
      `The policy store file ${file} is not valid JSON; it was not changed. Restore it from a backup or remove it to start empty.`,
    );
  }
  const parsed = storeFileSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new PolicyStoreError(
      `The policy store file ${file} is not a valid consec policy (${issue?.path.join('.') || 'top level'}: ${issue?.message}); it was not changed.`,
    );
  }
  return parsed.data.document;
}

function writeStoreFile(file: string, storeName: string, doc: PolicyDocument): void {
  const body = `${JSON.stringify({ format: 'consec-policy', version: 1, store: storeName, document: doc }, null, 2)}\n`;
  try {
    writeFileAtomic(file, body);
  } catch (err) {
    throw new PolicyStoreError(`Cannot write the policy store "${storeName}": ${(err as Error).message}`, {
      cause: err,
    });
  }
}
