/**
 * A host's Group Policy client for the fleet (the daemon runs one when the host joined a fleet):
 * it watches the fleet's directory and the GPOs that target this host — watches, not polls: an
 * idle fleet costs the cluster nothing — and on each change reads them all at one revision,
 * checks every GPO as a store file, and applies them whole or not at all (`fleet-gpos.json`, which
 * the daemon's ActiveStore reads as RSOP's domain GPOs). What it applied, or why it could not, goes
 * back into the cluster under the host's status key, for `consec fleet status`.
 *
 * Faults: a cluster that cannot be reached, a GPO that is not valid here, a directory record that
 * is not — the last good fleet policy stays in force (it is on disk, so also across a restart), the
 * error is logged and reported when the cluster can be reached, and the agent tries again with a
 * growing pause; the client fails over between members and its watches resume where they stopped.
 */
import type { Etcd3, IKeyValue, Watcher } from 'etcd3';
import type { Logger } from '../logger.ts';
import { PolicyValidationError } from '../policy/endpoints.ts';
import { PolicyStoreError } from '../policy/errors.ts';
import {
  type AppliedGroupPolicy,
  readGroupPolicy,
  removeGroupPolicy,
  writeGroupPolicy,
} from '../policy/group-policy.ts';
import type { PolicyDocument } from '../policy/model.ts';
import { readStoreText } from '../policy/store.ts';
import { validateDocument } from '../policy/validate.ts';
import { type FleetConfig, FleetError } from './config.ts';
import {
  type AppliedLink,
  directoryPrefix,
  readDirectory,
  statusKey,
  type Targeting,
  targetedGpos,
} from './directory.ts';
import { connectFleet, linkedGpoKey } from './gpo.ts';

/** What a host reports under its status key. */
export interface HostStatus {
  host: string;
  /** The cluster revision the applied fleet policy was read at ("0": none yet). */
  revision: string;
  gpos: { name: string; revision: string }[];
  appliedAt?: string;
  /** Why the newest fleet policy is not in force (the last good one is), if it is not. */
  error?: string;
  /** When the host last wrote this (the last contact). */
  reportedAt: string;
  consec: string;
}

export interface FleetAgentOptions {
  config: FleetConfig;
  policyDir: string;
  log: Logger;
  /** consec's version, reported. */
  version: string;
  /**
   * Called after a new fleet policy was written; resolves once the daemon enforces it (compiled,
   * filters and data plane updated) and rejects when it cannot.
   */
  enforce: () => Promise<void>;
  /**
   * Checks the GPOs about to be applied as the daemon would use them (it compiles them); throws to
   * refuse the revision. Before anything is written.
   */
  check?: (docs: PolicyDocument[]) => void;
  /** Whether the host is still a member (`consec fleet leave` ends the agent's work). */
  joined?: () => boolean;
  /** How often the status is written again when nothing changes (the last-contact time); 10 min. */
  heartbeatMs?: number;
  /** The longest pause between attempts while the cluster cannot be reached; 30 s. */
  maxRetryMs?: number;
  /** A client for the cluster (tests); else one from the config. */
  connect?: (config: FleetConfig) => Etcd3;
}

export interface RefreshResult {
  /** The cluster revision the fleet's policy was last read at. */
  revision: string;
  changed: boolean;
  gpos: string[];
}

/** The applied policy without when and at which cluster revision it was read: its content. */
const content = (a: AppliedGroupPolicy | undefined): string =>
  a === undefined ? '' : JSON.stringify({ ...a, appliedAt: '', revision: '' });

/**
 * Errors of the fleet's content (a directory record or a GPO that is not valid here): reading again
 * gives the same answer, so the agent waits for the next change instead of retrying on a timer.
 */
const isContentError = (err: unknown): boolean =>
  err instanceof FleetError || err instanceof PolicyStoreError || err instanceof PolicyValidationError;

export class FleetAgent {
  private etcd?: Etcd3;
  private dirWatch?: Watcher;
  /** This host's targeting as last read, until the directory's watch reports a change. */
  private targeting?: Targeting;
  private directoryChanges = 0;
  private readonly gpoWatches = new Map<string, Watcher>();
  /** The refresh loop: one run at a time; a request during a run makes one more run after it. */
  private loop?: Promise<RefreshResult>;
  private pending?: { force: boolean };
  private timer?: NodeJS.Timeout;
  private heartbeat?: NodeJS.Timeout;
  private retryMs = 500;
  private closed = false;
  private last: HostStatus;
  /** Status reports, one at a time, in order. */
  private reports = Promise.resolve(true);

  constructor(private readonly o: FleetAgentOptions) {
    const applied = this.applied();
    this.last = {
      host: o.config.host,
      revision: applied?.revision ?? '0',
      gpos: (applied?.gpos ?? []).map((g) => ({ name: g.name, revision: g.revision })),
      appliedAt: applied?.appliedAt,
      reportedAt: new Date().toISOString(),
      consec: o.version,
    };
  }

  /** Starts watching; the first refresh runs at once. */
  start(): void {
    const applied = this.applied();
    this.o.log.info(
      { domain: this.o.config.domain, endpoints: this.o.config.endpoints, lastGood: applied?.revision ?? 'none' },
      applied ? 'fleet: enforcing the last good fleet policy until the cluster answers' : 'fleet: joined',
    );
    // Also a periodic re-read: a change a watch missed is found at the next beat, and the status's
    // last-contact time moves.
    this.heartbeat = setInterval(() => {
      this.forgetDirectory();
      this.request(false, true).catch((err: unknown) => {
        if (!isContentError(err)) this.schedule(this.retryMs);
      });
    }, this.o.heartbeatMs ?? 600_000);
    this.heartbeat.unref();
    this.schedule(0);
  }

  /** The status this host last reported (or would report). */
  get status(): HostStatus {
    return this.last;
  }

  /** `gpupdate [/force]`: reads the directory and every targeted GPO now (and applies them again). */
  refresh(force = false): Promise<RefreshResult> {
    return this.request(force, false);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.heartbeat);
    // A watch the cluster refused never answers its cancel: each gets a moment, not forever.
    const bounded = (p: Promise<unknown> | undefined) =>
      Promise.race([p, new Promise((r) => setTimeout(r, 2000).unref())]).catch(() => undefined);
    await Promise.all([
      bounded(this.loop),
      bounded(this.dirWatch?.cancel()),
      ...[...this.gpoWatches.values()].map((w) => bounded(w.cancel())),
    ]);
    await bounded(this.reports);
    this.etcd?.close();
  }

  private applied(): AppliedGroupPolicy | undefined {
    try {
      return readGroupPolicy(this.o.policyDir);
    } catch {
      return undefined;
    }
  }

  /**
   * Runs the refresh loop: a request while a run is under way (it may have read before the change
   * that asked) makes exactly one more run after it, and every caller gets that later run's result.
   */
  private request(force: boolean, report: boolean): Promise<RefreshResult> {
    this.pending = { force: force || (this.pending?.force ?? false) };
    this.reportAnyway ||= report;
    if (this.closed) return Promise.reject(new FleetError('the fleet agent is closed'));
    this.loop ??= (async () => {
      let result: RefreshResult | undefined;
      let failure: unknown;
      try {
        // A request made while a run failed is still served: the next run may succeed.
        while (this.pending && !this.closed) {
          const { force: f } = this.pending;
          this.pending = undefined;
          try {
            result = await this.run(f);
            failure = undefined;
          } catch (err) {
            failure = err;
          }
        }
      } finally {
        this.loop = undefined;
      }
      if (failure !== undefined) throw failure;
      if (!result) throw new FleetError('the fleet agent is closed');
      return result;
    })();
    return this.loop;
  }

  private reportAnyway = false;
  private due = 0;

  private schedule(ms: number): void {
    if (this.closed) return;
    // An earlier run already scheduled stays (a retry never postpones a read asked for now).
    const due = Date.now() + ms;
    if (this.timer && this.due <= due) return;
    clearTimeout(this.timer);
    this.due = due;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.request(false, false).then(
        () => {
          this.retryMs = 500;
        },
        (err: unknown) => {
          // The cluster could not be reached: again after a growing pause (the watches, once
          // connected, also ask). Content that is not valid: the next change will tell.
          if (isContentError(err)) return;
          this.schedule(this.retryMs);
          this.retryMs = Math.min(this.retryMs * 2, this.o.maxRetryMs ?? 30_000);
        },
      );
    }, ms);
    this.timer.unref();
  }

  /** The next run reads the directory again (and a run under way does not keep its targeting). */
  private forgetDirectory(): void {
    this.targeting = undefined;
    this.directoryChanges++;
  }

  private connect(): Etcd3 {
    if (this.etcd) return this.etcd;
    // The TLS files are read here: a file that cannot be read is an error of this attempt, and the
    // next attempt reads them again.
    try {
      this.etcd = (this.o.connect ?? connectFleet)(this.o.config);
    } catch (err) {
      throw new Error((err as Error).message); // not the fleet's content: tried again later
    }
    this.watchDirectory(this.etcd);
    return this.etcd;
  }

  /**
   * Watches the directory: any change of it, and each (re)connection of the watch (nothing
   * committed meanwhile is missed), reads it again. A watch the cluster ends (history compacted
   * while the host was away, rights taken) is made again after a pause.
   */
  private watchDirectory(etcd: Etcd3): void {
    if (this.closed) return;
    const changed = () => {
      this.forgetDirectory();
      this.schedule(0);
    };
    const w = etcd.watch().prefix(directoryPrefix(this.o.config.domain)).watcher();
    w.on('connected', changed).on('put', changed).on('delete', changed);
    w.on('error', (err: Error) => {
      this.o.log.warn({ reason: err.message }, 'fleet: the directory watch ended; watching again');
      if (this.dirWatch !== w) return;
      this.dirWatch = undefined;
      changed();
      setTimeout(() => this.watchDirectory(etcd), this.retryMs).unref();
    });
    this.dirWatch = w;
  }

  private async run(force: boolean): Promise<RefreshResult> {
    const { config } = this.o;
    if (this.o.joined && !this.o.joined()) {
      // `consec fleet leave` while the daemon runs: nothing more is fetched or written.
      this.o.log.info({ domain: config.domain }, 'fleet: this host left the fleet; no more fleet policy updates');
      removeGroupPolicy(this.o.policyDir);
      this.closed = true;
      void this.close();
      throw new FleetError('this host left the fleet');
    }
    let targeting: Targeting | undefined;
    const current = this.applied();
    try {
      const etcd = this.connect();
      let reads: { kvs: IKeyValue[] }[];
      let seen: number | undefined;
      let revision: string;
      if (this.targeting && !force) {
        // Only GPOs changed since the directory was read (its watch forgets the targeting on any
        // change of it): the GPOs alone, in one transaction, so at one revision.
        targeting = this.targeting;
        const keys = targeting.applied.map((a) => linkedGpoKey(config.domain, a.gpo));
        if (keys.length === 0) {
          reads = [];
          revision = (await etcd.get(statusKey(config.domain, config.host)).exec()).header.revision;
        } else {
          const t = await etcd
            .if(keys[0] as string, 'Version', '>', -1)
            .then(...keys.map((k) => etcd.get(k)))
            .commit();
          reads = t.responses.map((r) => ({ kvs: r.response_range?.kvs ?? [] }));
          revision = String(t.header.revision);
        }
      } else {
        this.targeting = undefined;
        seen = this.directoryChanges;
        const read = await readDirectory(etcd, config.domain);
        revision = read.revision;
        targeting = targetedGpos(read.dir, config.host);
        // Every GPO at the directory's revision: one consistent picture of the fleet's policy.
        reads = await Promise.all(
          targeting.applied.map((a) => etcd.get(linkedGpoKey(config.domain, a.gpo)).revision(revision).exec()),
        );
      }
      this.watchGpos(targeting);
      const gpos: AppliedGroupPolicy['gpos'] = [];
      const denied: AppliedGroupPolicy['denied'] = targeting.denied.map((d) => ({
        ...this.linkInfo(d, undefined),
        reason: d.reason,
      }));
      const docs: PolicyDocument[] = [];
      reads.forEach((r, i) => {
        const a = targeting?.applied[i] as AppliedLink;
        const kv = r.kvs[0];
        if (!kv) {
          denied.push({ ...this.linkInfo(a, undefined), reason: 'Not Found' });
          return;
        }
        const text = kv.value.toString('utf8');
        const info = this.linkInfo(a, String(kv.mod_revision));
        // All or nothing: one GPO that is not valid here refuses the whole revision.
        const doc = readStoreText(text, info.name, `The GPO ${info.name} (fleet revision ${info.revision})`);
        try {
          validateDocument(doc);
        } catch (err) {
          throw new PolicyStoreError(
            `The GPO ${info.name} (fleet revision ${info.revision}): ${(err as Error).message}`,
          );
        }
        docs.push(doc);
        gpos.push({ ...info, text });
      });
      this.o.check?.(docs);
      const next: AppliedGroupPolicy = {
        format: 'consec-group-policy',
        version: 1,
        domain: config.domain,
        host: config.host,
        container: targeting.container,
        groups: targeting.groups,
        revision,
        appliedAt: new Date().toISOString(),
        gpos,
        denied,
      };
      const changed = content(current) !== content(next);
      if (changed || force) {
        if (this.left()) throw new FleetError('this host left the fleet');
        writeGroupPolicy(this.o.policyDir, next);
        try {
          await this.o.enforce();
        } catch (err) {
          // Not in force: the previous fleet policy goes back, so the file stays the last good one.
          // Tried again at the next change (or the heartbeat), not on a timer: a policy the daemon
          // cannot enforce now will not be enforced in a second either.
          if (!this.left()) {
            if (current) writeGroupPolicy(this.o.policyDir, current);
            else removeGroupPolicy(this.o.policyDir);
          }
          throw new FleetError(`not enforced: ${(err as Error).message}`);
        }
        this.o.log.info(
          { revision, gpos: gpos.map((g) => `${g.name}@${g.revision}`), denied: denied.length, forced: force },
          'fleet policy applied',
        );
      }
      const inForce = changed || force ? next : (current as AppliedGroupPolicy);
      this.last = {
        host: config.host,
        revision: inForce.revision,
        gpos: inForce.gpos.map((g) => ({ name: g.name, revision: g.revision })),
        appliedAt: inForce.appliedAt,
        reportedAt: new Date().toISOString(),
        consec: this.o.version,
      };
      // Reported when it differs from what the cluster last took (a change, an error cleared, a
      // report that failed before), when forced, and on the heartbeat (the last-contact time).
      await this.reportIfNew(force);
      // Kept for changes of GPOs alone, unless the directory changed meanwhile.
      if (seen === this.directoryChanges) this.targeting = targeting;
      return { revision, changed, gpos: gpos.map((g) => g.name) };
    } catch (err) {
      const reason = (err as Error).message;
      const good = this.applied();
      this.o.log.error(
        { reason, lastGood: good?.revision ?? 'none' },
        'fleet policy not applied: the last good fleet policy stays in force',
      );
      this.last = { ...this.last, error: reason, reportedAt: new Date().toISOString() };
      // Reported when the cluster can be reached (a GPO that is not valid, a directory record …),
      // once per error (and on the heartbeat).
      await this.reportIfNew(false);
      throw err;
    }
  }

  /** Whether the host left the fleet (or the agent was closed) meanwhile. */
  private left(): boolean {
    return this.closed || (this.o.joined !== undefined && !this.o.joined());
  }

  private linkInfo(a: AppliedLink, revision: string | undefined) {
    return {
      name: `${this.o.config.domain}\\${a.gpo}`,
      revision: revision ?? '0',
      container: a.container,
      linkOrder: a.linkOrder,
      enforced: a.enforced,
    };
  }

  /** Writes the status under the host's key, after any report before it; whether the cluster took it. */
  private async reportIfNew(force: boolean): Promise<void> {
    const text = JSON.stringify({ ...this.last, reportedAt: '' });
    if (!force && !this.reportAnyway && text === this.reported) return;
    this.reportAnyway = false;
    if (await this.report()) this.reported = text;
  }

  /** The status the cluster last took (without its time). */
  private reported = '';

  private report(): Promise<boolean> {
    const status = { ...this.last, reportedAt: new Date().toISOString() };
    this.reports = this.reports.then(async () => {
      const etcd = this.etcd;
      if (!etcd || this.closed) return false;
      try {
        await etcd.put(statusKey(this.o.config.domain, this.o.config.host)).value(JSON.stringify(status));
        return true;
      } catch (err) {
        this.o.log.warn({ reason: (err as Error).message }, 'fleet: status not reported');
        return false;
      }
    });
    return this.reports;
  }

  /**
   * Watches each GPO this host applies (or would, once it exists). A change reads everything again
   * at a revision after it, so a watch started after the read misses nothing: the read covers
   * what came before, the watch (from the cluster's revision at its start) what comes after.
   */
  private watchGpos(targeting: Targeting): void {
    const etcd = this.etcd;
    if (!etcd || this.closed) return;
    const changed = () => this.schedule(0);
    const keys = new Set(targeting.applied.map((a) => linkedGpoKey(this.o.config.domain, a.gpo)));
    for (const [key, w] of this.gpoWatches)
      if (!keys.has(key)) {
        this.gpoWatches.delete(key);
        void w.cancel().catch(() => undefined);
      }
    for (const key of keys)
      if (!this.gpoWatches.has(key)) {
        const w = etcd.watch().key(key).watcher();
        w.on('connected', changed).on('put', changed).on('delete', changed);
        w.on('error', (err: Error) => {
          // Typically: this host may not read the GPO (yet). The directory watch tells when that changes.
          this.o.log.warn({ gpo: key, reason: err.message }, 'fleet: a GPO watch ended');
          if (this.gpoWatches.get(key) === w) this.gpoWatches.delete(key);
          this.forgetDirectory();
          this.schedule(this.retryMs);
        });
        this.gpoWatches.set(key, w);
      }
  }
}
