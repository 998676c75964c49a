/**
 * Policy stores (reference §1.2). PersistentStore and GPO stores are JSON files under the state
 * directory, written atomically (temp file, fsync, rename, fsync directory) under a lock shared by
 * every consec process, so a crash mid-write or two CLIs at once never lose or corrupt policy.
 * ActiveStore, RSOP and SystemDefaults are read-only views computed from them.
 */
import { mkdirSync, readdirSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import lockfile from 'proper-lockfile';
import { permissionDenied } from '../errors.ts';
import { writeFileAtomic } from '../io/atomic.ts';
import {
  type CollectionName,
  emptyDocument,
  systemDefaults,
  type IPsecRule,
  type MainModeRule,
  type NamedObject,
  type PolicyDocument,
} from './model.ts';
import { ipsecRuleSchema, mainModeRuleSchema, storeFileSchema, storeSkeletonSchema } from './schema.ts';
import { LARGE_COLLECTIONS, type LargeCollection, validateAdded, validateDocument } from './validate.ts';
import { InputTooLargeError, readFileBounded, readFileInto } from '../io/bounded.ts';
import { PolicyStoreError } from './errors.ts';
import { readGroupPolicy } from './group-policy.ts';

export { PolicyStoreError };

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
/** Where GPO stores kept outside this host are read and written (the fleet's cluster). */
export interface RemoteStores {
  /** Whether the store `name` is kept there and has no edit session open on this host. */
  owns(name: string): boolean;
  load(name: string): Promise<{ doc: PolicyDocument; revision: string }>;
  /** Writes `doc` if the store is still at `revision`; false when someone wrote it meanwhile. */
  save(name: string, doc: PolicyDocument, revision: string): Promise<boolean>;
}

export class PolicyStores {
  /**
   * Work done on store files so far: files read and written for changes, and rules validated (a
   * script's cost grows with these; a test holds them linear).
   */
  readonly work = { reads: 0, writes: 0, validated: 0 };

  constructor(
    readonly stateDir: string = stateDirFromEnv(),
    /** Keep the rules read (the daemon reads the store after every change): only new lines are parsed. */
    o: { cacheReads?: boolean } = {},
  ) {
    this.lineCaches = o.cacheReads ? new Map() : undefined;
  }

  private readonly lineCaches?: Map<string, StoreLineCache>;

  get policyDir(): string {
    return join(this.stateDir, 'policy');
  }

  resolve(name = 'PersistentStore'): ResolvedStore {
    let n = name.trim();
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
    // A local GPO (the host name or localhost) or a domain GPO "domain\GPO name" (Microsoft's
    // reference pages also write "domain/GPO name": the same store).
    if (/^[^\\/]+\/[^\\/]+$/.test(n)) n = n.replace('/', '\\');
    if (!/^[A-Za-z0-9][A-Za-z0-9 ._\\-]{0,254}$/.test(n) || n.includes('..')) {
      throw new PolicyStoreError(`The policy store "${name}" is not valid.`);
    }
    const key = lower === 'localhost' || lower === hostname().toLowerCase() ? 'localhost' : n;
    // A GPO of the fleet is edited in a copy that this host does not apply: what the host applies
    // of the fleet is what targets it, as the fleet agent fetched it (fleet-gpos.json).
    const dir = this.isFleetGpo?.(n) ? join(this.stateDir, 'fleet-edit') : join(this.policyDir, 'gpo');
    return { name: n, kind: 'gpo', writable: true, file: join(dir, `${encodeURIComponent(key)}.json`) };
  }

  /** Reads a store (or computes a view). Missing files read as a new store. */
  read(name = 'PersistentStore'): PolicyDocument {
    const s = this.resolve(name);
    switch (s.kind) {
      case 'persistent':
      case 'gpo':
        return this.readFile(s.file as string, s.name);
      case 'defaults':
        return systemDefaults();
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
   * local connection security rules; AllowLocalFirewallRules False drops the local firewall rules.
   */
  activeParts(): { doc: PolicyDocument; store: string; type: 'Local' | 'GroupPolicy' }[] {
    const local = this.read('PersistentStore');
    const gpo = this.gpoDocuments().reduce(mergeDocuments, undefined as PolicyDocument | undefined);
    if (!gpo) return [{ doc: local, store: 'PersistentStore', type: 'Local' }];
    const domain = gpo.profiles.find((p) => p.Name === 'Domain');
    if (domain?.AllowLocalIPsecRules === 'False') {
      local.rules = [];
      local.mainModeRules = [];
    }
    if (domain?.AllowLocalFirewallRules === 'False') local.firewallRules = [];
    return [
      { doc: local, store: 'PersistentStore', type: 'Local' },
      { doc: gpo, store: 'RSOP', type: 'GroupPolicy' },
    ];
  }

  /**
   * Runs `change` on a copy of the store under the store lock; validates and writes the result
   * atomically if it differs. On any error the store is untouched. Inside `transaction` the store
   * is read and locked once, changes apply to a working copy, and the file is written once at the end.
   */
  /** Whether a domain GPO's name is one of the fleet's (set by the shell of a host that joined one). */
  isFleetGpo?: (storeName: string) => boolean;

  /**
   * GPO stores kept elsewhere (the fleet's, in its cluster), set by the shell: a change to one that
   * has no edit session open is made there at once, as a cmdlet with `-PolicyStore domain\GPO` writes
   * to the domain controller on Windows; `prefetch` brings its current content into the local copy
   * before it is read.
   */
  remote?: RemoteStores;

  async update<T>(name: string | undefined, change: (doc: PolicyDocument) => T): Promise<T> {
    const s = this.resolve(name);
    if (!s.writable || !s.file) {
      throw new PolicyStoreError(
        `The policy store "${s.name}" is read-only; change PersistentStore or a GPO store instead.`,
      );
    }
    const file = s.file;
    if (s.kind === 'gpo' && this.remote?.owns(s.name)) return this.remoteUpdate(this.remote, s.name, file, change);
    if (this.session) return this.sessionUpdate(await this.openInSession(this.session, s.name, file), change);
    const release = await this.lock(s.name, file);
    try {
      const before = readStoreFile(file, s.name);
      this.work.reads++;
      const doc = structuredClone(before);
      const result = change(doc);
      if (JSON.stringify(doc) !== JSON.stringify(before)) {
        this.work.validated += doc.rules.length + doc.mainModeRules.length;
        validateDocument(doc);
        writeStoreFile(file, s.name, doc);
        this.work.writes++;
      }
      return result;
    } finally {
      await release();
    }
  }

  /** Brings a remote GPO store's current content into its local copy (before it is read). */
  async prefetch(name: string | undefined): Promise<void> {
    if (!name || !this.remote) return;
    let s: ResolvedStore;
    try {
      s = this.resolve(name);
    } catch {
      return; // the cmdlet reports a bad store name itself
    }
    if (s.kind !== 'gpo' || !s.file || !this.remote.owns(s.name)) return;
    const { doc } = await this.remote.load(s.name);
    mkdirSync(dirname(s.file), { recursive: true, mode: 0o700 });
    writeStoreFile(s.file, s.name, doc);
  }

  /**
   * A change made where the store is kept: read, changed, checked and written back only if nobody
   * wrote it meanwhile (else the change is made again on what they wrote); the local copy follows.
   */
  private async remoteUpdate<T>(
    remote: RemoteStores,
    name: string,
    file: string,
    change: (doc: PolicyDocument) => T,
  ): Promise<T> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const { doc: before, revision } = await remote.load(name);
      const doc = structuredClone(before);
      const result = change(doc);
      const changed = JSON.stringify(doc) !== JSON.stringify(before);
      if (changed) {
        validateDocument(doc);
        if (!(await remote.save(name, doc, revision))) continue;
      }
      mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
      writeStoreFile(file, name, doc);
      return result;
    }
    throw new PolicyStoreError(
      `The GPO ${name} kept changing while this change was made: it was not changed. Try again.`,
    );
  }

  /**
   * Runs `work` (a whole script) as one transaction on the stores it changes: each store is locked
   * and read at its first change, every change applies in memory (a failing change applies nothing,
   * as a failing cmdlet on Windows), reads see the changes, and each changed store is written once,
   * atomically, when `work` ends — also when it failed part-way: what ran before stays applied, as in
   * PowerShell. A process killed before the end writes nothing.
   */
  async transaction<T>(work: () => Promise<T>): Promise<T> {
    if (this.session) return work();
    const session = new Map<string, OpenStore>();
    this.session = session;
    let result: T;
    try {
      result = await work();
    } catch (err) {
      await this.commit(session); // a write failure here is the more urgent error
      throw err;
    }
    await this.commit(session);
    return result;
  }

  /** Ends a transaction: writes each changed store once, releases every lock; throws the first write error. */
  private async commit(session: Map<string, OpenStore>): Promise<void> {
    this.session = undefined;
    let failure: unknown;
    for (const open of session.values()) {
      try {
        if (open.dirty) {
          writeStoreFile(open.file, open.name, open.doc);
          this.work.writes++;
        }
      } catch (err) {
        failure ??= err;
      }
      await open.release().catch(() => {});
    }
    if (failure) throw failure;
  }

  private session?: Map<string, OpenStore>;

  private async lock(storeName: string, file: string): Promise<() => Promise<void>> {
    const needs = 'to change the policy stores';
    try {
      mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    } catch (err) {
      throw permissionDenied(err, dirname(file), needs);
    }
    try {
      return await lockfile.lock(file, {
        realpath: false,
        stale: 15_000,
        retries: { retries: 200, factor: 1.2, minTimeout: 5, maxTimeout: 100 },
      });
    } catch (cause) {
      const denied = permissionDenied(cause, file, needs);
      if (denied !== cause) throw denied;
      throw new PolicyStoreError(
        `The policy store "${storeName}" is locked by another consec process: ${(cause as Error).message}`,
        {
          cause,
        },
      );
    }
  }

  private async openInSession(session: Map<string, OpenStore>, storeName: string, file: string): Promise<OpenStore> {
    const had = session.get(file);
    if (had) return had;
    const release = await this.lock(storeName, file);
    try {
      const doc = readStoreFile(file, storeName);
      this.work.reads++;
      for (const c of LARGE_COLLECTIONS) for (const o of doc[c]) deepFreeze(o);
      const names = {} as OpenStore['names'];
      for (const c of LARGE_COLLECTIONS) {
        names[c] = new Map();
        for (const o of doc[c]) names[c].set(o.Name.toLowerCase(), (names[c].get(o.Name.toLowerCase()) ?? 0) + 1);
      }
      const open: OpenStore = { name: storeName, file, doc, release, dirty: false, names };
      session.set(file, open);
      return open;
    } catch (err) {
      await release();
      throw err;
    }
  }

  /**
   * One change in a transaction: on a draft that shares the (frozen) objects of the large
   * collections and copies the rest; what changed is validated — only the new or replaced rules when
   * nothing else changed, everything otherwise — and the draft becomes the working copy.
   */
  private sessionUpdate<T>(open: OpenStore, change: (doc: PolicyDocument) => T): T {
    const before = open.doc;
    const draft: PolicyDocument = {
      ...structuredClone({ ...before, rules: [], mainModeRules: [] }),
      rules: before.rules.slice(),
      mainModeRules: before.mainModeRules.slice(),
    };
    drafts.set(draft, open);
    const result = change(draft);
    drafts.delete(draft);
    type Large = IPsecRule | MainModeRule;
    const deltas = LARGE_COLLECTIONS.map((c) => ({
      c,
      ...changedObjects<Large>(before[c] as readonly Large[], draft[c] as readonly Large[]),
    }));
    const small = (d: PolicyDocument) => JSON.stringify({ ...d, rules: undefined, mainModeRules: undefined });
    const smallChanged = small(before) !== small(draft);
    if (!smallChanged && deltas.every((d) => d.added.length === 0 && d.removed.length === 0)) return result;
    if (smallChanged) {
      this.work.validated += draft.rules.length + draft.mainModeRules.length;
      validateDocument(draft);
    } else
      for (const d of deltas) {
        this.work.validated += d.added.length;
        validateAdded(draft, d.c, d.added, d.removed, open.names[d.c]);
      }
    for (const d of deltas) {
      const names = open.names[d.c];
      for (const o of d.removed) {
        const key = o.Name.toLowerCase();
        const n = (names.get(key) ?? 1) - 1;
        if (n > 0) names.set(key, n);
        else names.delete(key);
      }
      for (const o of d.added) {
        deepFreeze(o);
        names.set(o.Name.toLowerCase(), (names.get(o.Name.toLowerCase()) ?? 0) + 1);
      }
    }
    open.doc = draft;
    open.dirty = true;
    return result;
  }

  /** A store file, or its working copy in a transaction (a copy: callers may reassign its fields). */
  private readFile(file: string, storeName: string): PolicyDocument {
    const open = this.session?.get(file);
    if (open) return { ...open.doc };
    let cache = this.lineCaches?.get(file);
    if (this.lineCaches && !cache) this.lineCaches.set(file, (cache = new StoreLineCache()));
    return readStoreFile(file, storeName, cache);
  }

  /**
   * The GPOs of RSOP in processing order (the last has the highest precedence): the local GPO
   * stores, then the fleet's GPOs as this host last applied them (`fleet-gpos.json`).
   */
  rsopParts(): { name: string; doc: PolicyDocument }[] {
    const fleet = readGroupPolicy(this.policyDir);
    const domain = (fleet?.gpos ?? []).map((g) => ({
      name: g.name,
      doc: readStoreText(g.text, g.name, `The GPO ${g.name} (fleet revision ${g.revision})`),
    }));
    return [...this.localGpoDocuments(), ...domain];
  }

  private gpoDocuments(): PolicyDocument[] {
    return this.rsopParts().map((p) => p.doc);
  }

  private localGpoDocuments(): { name: string; doc: PolicyDocument }[] {
    const dir = join(this.policyDir, 'gpo');
    const files = new Set<string>();
    try {
      for (const f of readdirSync(dir)) if (f.endsWith('.json')) files.add(f);
    } catch {
      // no GPO yet
    }
    // GPO stores this transaction created are not on disk yet.
    for (const [file, open] of this.session ?? []) if (open.dirty && dirname(file) === dir) files.add(basename(file));
    return [...files].sort().map((f) => {
      const name = decodeURIComponent(f.slice(0, -5));
      return { name, doc: this.readFile(join(dir, f), name) };
    });
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
    firewallRules: merge(base.firewallRules, over.firewallRules),
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

/**
 * What a long-lived reader (the daemon, reading the store again after each change) keeps of the
 * last read of one store file: its bytes, where its lines start, and the rule or main mode rule read
 * from each line. The next read compares bytes: lines in the common head and tail of the two files
 * keep their objects, and of the lines between only those not seen before are parsed and checked.
 * The objects are frozen (shared between reads).
 */
export class StoreLineCache {
  /** The buffer holding the last read's bytes, and a spare one the next read goes into. */
  buffer: Buffer = Buffer.alloc(0);
  spare: Buffer = Buffer.alloc(0);
  bytes: Buffer = Buffer.alloc(0);
  /** Line i of `bytes` is [starts[i], starts[i + 1] - 1). */
  starts: Int32Array = new Int32Array([0, 1]);
  /** Per line of `bytes`: the object read from it and its collection (0 rules, 1 main mode rules, -1 none). */
  objects: (IPsecRule | MainModeRule | undefined)[] = [];
  kinds = new Int8Array(1).fill(-1);
}

/** A store file's bytes, or undefined when there is none (an empty store). */
function readStoreBytes(file: string, storeName: string, cache?: StoreLineCache): Buffer | undefined {
  const what = `The policy store file ${file}`;
  try {
    if (!cache) return readFileBounded(file, what);
    const { bytes, buffer } = readFileInto(file, what, cache.spare);
    cache.spare = buffer;
    return bytes;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    if (err instanceof InputTooLargeError) throw err;
    throw new PolicyStoreError(`Cannot read the policy store "${storeName}" (${file}): ${(err as Error).message}`);
  }
}

export function readStoreFile(file: string, storeName: string, cache?: StoreLineCache): PolicyDocument {
  const bytes = readStoreBytes(file, storeName, cache);
  if (!bytes) return emptyDocument();
  if (cache) {
    const doc = readStoreLines(bytes, cache);
    if (doc) return doc;
  }
  return readStoreText(bytes.toString('utf8'), storeName, `The policy store file ${file}`);
}

/**
 * A store's text (a store file, or a GPO as the fleet's cluster holds it) as a policy document;
 * empty text is an empty store. Not JSON, or not a valid consec policy: PolicyStoreError.
 */
export function readStoreText(
  text: string,
  storeName: string,
  what = `The policy store "${storeName}"`,
): PolicyDocument {
  if (text === '') return emptyDocument();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new PolicyStoreError(
      `${what} is not valid JSON; it was not changed. Restore it from a backup or remove it to start empty.`,
    );
  }
  const parsed = storeFileSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new PolicyStoreError(
      `${what} is not a valid consec policy (${issue?.path.join('.') || 'top level'}: ${issue?.message}); it was not changed.`,
    );
  }
  return parsed.data.document;
}

const RULE_KEYS = Object.keys(ipsecRuleSchema.shape);
const MAIN_MODE_RULE_KEYS = Object.keys(mainModeRuleSchema.shape);

/** How many leading bytes `a` and `b` share (blocks compared natively, then the last one bytewise). */
function commonHead(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  let p = 0;
  for (const block of [65536, 1024])
    while (p + block <= n && a.compare(b, p, p + block, p, p + block) === 0) p += block;
  while (p < n && a[p] === b[p]) p++;
  return p;
}

/** How many trailing bytes `a` and `b` share, at most `max`. */
function commonTail(a: Buffer, b: Buffer, max: number): number {
  let s = 0;
  for (const block of [65536, 1024])
    while (
      s + block <= max &&
      a.compare(b, b.length - s - block, b.length - s, a.length - s - block, a.length - s) === 0
    )
      s += block;
  while (s < max && a[a.length - 1 - s] === b[b.length - 1 - s]) s++;
  return s;
}

/** How a rule line starts: its indentation, then the object. */
const RULE_LINE = Buffer.from('    {');
const INDENT = RULE_LINE.length - 1;
const OPENERS: readonly [Buffer, LargeCollection][] = [
  [Buffer.from('  "rules": ['), 'rules'],
  [Buffer.from('  "mainModeRules": ['), 'mainModeRules'],
];
const KIND_OF: Record<LargeCollection, number> = { rules: 0, mainModeRules: 1 };

/** A rule line's object text: without its indentation and the comma that follows all but the last. */
const lineBody = (b: Buffer, start: number, end: number): string =>
  b.toString('utf8', start + INDENT, b[end - 1] === 44 ? end - 1 : end);

/**
 * A store file in the layout storeFileText writes, read with the line cache: the rules and main mode
 * rules each from their own line (kept from the last read, or parsed and checked alone), the rest as
 * a small skeleton. Anything else — a hand-edited layout, a line that does not check — is undefined,
 * and the caller reads the file the ordinary way (with its precise error messages).
 */
function readStoreLines(bytes: Buffer, cache: StoreLineCache): PolicyDocument | undefined {
  const old = cache.bytes;
  const was = cache.starts;
  const oldCount = was.length - 1;
  // Lines wholly inside the common head are the old lines of the same index; lines whose preceding
  // newline is inside the common tail are the old lines as far from the end. Only the lines between
  // are looked for (newlines searched) and looked at.
  const head = commonHead(old, bytes);
  const tail = commonTail(old, bytes, Math.min(old.length, bytes.length) - head);
  let headLines = 0;
  while (headLines < oldCount && (was[headLines + 1] as number) <= head) headLines++;
  let oldTail = oldCount;
  while (oldTail > headLines && (was[oldTail - 1] as number) - 1 >= old.length - tail) oldTail--;
  const delta = bytes.length - old.length;
  // New line starts: the head's as they were, those between found, the tail's moved by delta (the
  // last entry is the end: length + 1).
  const middle = was[headLines] as number;
  const tailStart = (was[oldTail] as number) + delta;
  const found = [middle];
  for (let p = bytes.indexOf(10, middle); p !== -1 && p + 1 < tailStart; p = bytes.indexOf(10, p + 1))
    found.push(p + 1);
  const starts = new Int32Array(headLines + found.length + oldCount - oldTail + 1);
  starts.set(was.subarray(0, headLines));
  starts.set(found, headLines);
  for (let k = oldTail; k <= oldCount; k++) starts[headLines + found.length + k - oldTail] = (was[k] as number) + delta;
  const count = starts.length - 1;
  const tailLine = oldTail - oldCount + count;
  let unseen: Map<string, IPsecRule | MainModeRule> | undefined;
  const skeleton: string[] = [];
  const objects: (IPsecRule | MainModeRule | undefined)[] = new Array(count);
  const kinds = new Int8Array(count).fill(-1);
  const out: Record<LargeCollection, (IPsecRule | MainModeRule)[]> = { rules: [], mainModeRules: [] };
  let inside: LargeCollection | undefined;
  for (let i = 0; i < count; i++) {
    const start = starts[i] as number;
    const end = (starts[i + 1] as number) - 1;
    if (inside) {
      if (
        end - start >= RULE_LINE.length &&
        bytes.compare(RULE_LINE, 0, RULE_LINE.length, start, start + RULE_LINE.length) === 0
      ) {
        const kind = KIND_OF[inside];
        const before = i < headLines ? i : i >= tailLine ? i - count + oldCount : -1;
        let o = before >= 0 && cache.kinds[before] === kind ? cache.objects[before] : undefined;
        if (!o) {
          const body = lineBody(bytes, start, end);
          if (!unseen) {
            // The old lines between by collection and object text, once: a rule moved within them,
            // or one that became or stopped being the last (its comma), is not parsed again.
            unseen = new Map();
            for (let k = headLines; k < oldTail; k++) {
              const ko = cache.objects[k];
              if (ko) unseen.set(`${cache.kinds[k]}${lineBody(old, was[k] as number, (was[k + 1] as number) - 1)}`, ko);
            }
          }
          o = unseen.get(`${kind}${body}`);
          if (!o) {
            let json: unknown;
            try {
              json = JSON.parse(body);
            } catch {
              return undefined;
            }
            const checked = (inside === 'rules' ? ipsecRuleSchema : mainModeRuleSchema).safeParse(json);
            if (!checked.success) return undefined;
            o = checked.data as IPsecRule | MainModeRule;
            deepFreeze(o);
          }
        }
        objects[i] = o;
        kinds[i] = kind;
        out[inside].push(o);
        skeleton.push(bytes[end - 1] === 44 ? '0,' : '0');
        continue;
      }
      inside = undefined;
    }
    for (const [opener, c] of OPENERS)
      if (end - start === opener.length && bytes.compare(opener, 0, opener.length, start, end) === 0) inside = c;
    skeleton.push(bytes.toString('utf8', start, end));
  }
  let json: unknown;
  try {
    json = JSON.parse(skeleton.join('\n'));
  } catch {
    return undefined;
  }
  const parsed = storeSkeletonSchema.safeParse(json);
  if (!parsed.success) return undefined;
  // The bytes stay for the next comparison; the buffer they were in becomes the spare.
  [cache.buffer, cache.spare] = [cache.spare, cache.buffer];
  // The spare as large, its pages touched now rather than during the next change.
  if (cache.spare.length < cache.buffer.length) cache.spare = Buffer.allocUnsafeSlow(cache.buffer.length).fill(0);
  cache.bytes = bytes;
  cache.starts = starts;
  cache.objects = objects;
  cache.kinds = kinds;
  return {
    ...parsed.data.document,
    rules: out.rules as IPsecRule[],
    mainModeRules: out.mainModeRules as MainModeRule[],
  };
}

/**
 * A store file's text: JSON with one object per line (a rule, a set, the settings), so a policy of
 * thousands of rules stays small, quick to parse and readable in a diff.
 */
export function storeFileText(storeName: string, doc: PolicyDocument): string {
  const head = JSON.stringify({ format: 'consec-policy', version: 1, store: storeName }).slice(0, -1);
  // Rules with their fields in one fixed order, so an unchanged rule is the same line every time.
  const order: Partial<Record<string, string[]>> = { rules: RULE_KEYS, mainModeRules: MAIN_MODE_RULE_KEYS };
  const fields = Object.entries(doc).map(([k, v]) =>
    Array.isArray(v)
      ? v.length === 0
        ? `  ${JSON.stringify(k)}: []`
        : `  ${JSON.stringify(k)}: [\n${v.map((o) => `    ${JSON.stringify(o, order[k])}`).join(',\n')}\n  ]`
      : `  ${JSON.stringify(k)}: ${JSON.stringify(v)}`,
  );
  return `${head},\n "document": {\n${fields.join(',\n')}\n}}\n`;
}

function writeStoreFile(file: string, storeName: string, doc: PolicyDocument): void {
  const body = storeFileText(storeName, doc);
  try {
    writeFileAtomic(file, body);
  } catch (err) {
    throw new PolicyStoreError(`Cannot write the policy store "${storeName}": ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/** A store opened by a transaction: its working copy, its lock, the names in its large collections. */
interface OpenStore {
  name: string;
  file: string;
  doc: PolicyDocument;
  release: () => Promise<void>;
  dirty: boolean;
  names: Record<LargeCollection, Map<string, number>>;
}

/**
 * What a change did to a large collection, by object identity: objects in `after` that were not in
 * `before` (new, or replaced by a changed copy) and the other way round. Appending — the common
 * change, one New- per line — is found in one pass without building sets.
 */
function changedObjects<O extends object>(before: readonly O[], after: readonly O[]): { added: O[]; removed: O[] } {
  if (after.length >= before.length) {
    let same = true;
    for (let i = 0; i < before.length && same; i++) same = before[i] === after[i];
    if (same) return { added: after.slice(before.length), removed: [] };
  }
  const was = new Set(before);
  const is = new Set(after);
  return { added: after.filter((o) => !was.has(o)), removed: before.filter((o) => !is.has(o)) };
}

/** Freezes a store object and what it holds (arrays of addresses, ports …). */
function deepFreeze(o: object): void {
  if (Object.isFrozen(o)) return;
  Object.freeze(o);
  for (const v of Object.values(o)) if (typeof v === 'object' && v !== null) deepFreeze(v as object);
}

/** The open store whose working copy a draft in a transaction was made from (for nameInUse). */
const drafts = new WeakMap<PolicyDocument, OpenStore>();

/**
 * Does `doc[collection]` hold an object named `name` (case-insensitive, as Windows compares)? In a
 * transaction's draft, from the working copy's name index and what the change did so far.
 */
export function nameInUse(doc: PolicyDocument, collection: CollectionName, name: string): boolean {
  const key = name.toLowerCase();
  const open = drafts.get(doc);
  if (open && (collection === 'rules' || collection === 'mainModeRules')) {
    const { added, removed } = changedObjects<NamedObject>(open.doc[collection], doc[collection]);
    const count =
      (open.names[collection].get(key) ?? 0) +
      added.filter((o) => o.Name.toLowerCase() === key).length -
      removed.filter((o) => o.Name.toLowerCase() === key).length;
    return count > 0;
  }
  return (doc[collection] as NamedObject[]).some((o) => o.Name.toLowerCase() === key);
}

/**
 * The object `o` of `doc[collection]` made changeable: in a transaction the objects of the large
 * collections are shared with the working copy and frozen, so a change replaces `o` in the draft with
 * a copy and edits that (copy on write); outside one, `o` itself.
 */
export function editable<O extends IPsecRule | MainModeRule>(
  doc: PolicyDocument,
  collection: LargeCollection,
  o: O,
): O {
  if (!Object.isFrozen(o)) return o;
  const list = doc[collection] as O[];
  const i = list.indexOf(o);
  const copy = structuredClone(o);
  if (i >= 0) list[i] = copy;
  return copy;
}
