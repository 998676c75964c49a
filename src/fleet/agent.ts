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
import type { Etcd3, Watcher } from 'etcd3';
import { type AppliedGroupPolicy, readGroupPolicy, writeGroupPolicy } from '../policy/group-policy.ts';
import { readStoreText } from '../policy/store.ts';
import { type FleetConfig, FleetError } from './config.ts';
import {
  type AppliedLink,
  directoryPrefix,
  parseDirectory,
  statusKey,
  type Targeting,
  targetedGpos,
} from './directory.ts';
import { connectFleet, gpoKey } from './gpo.ts';

export interface AgentLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

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
  log: AgentLogger;
  /** consec's version, reported. */
  version: string;
  /**
   * Called after a new fleet policy was written; resolves once the daemon enforces it (compiled,
   * filters and data plane updated) and rejects when it cannot.
   */
  enforce: () => Promise<void>;
  /** How often the status is written again when nothing changes (the last-contact time); 10 min. */
  heartbeatMs?: number;
  /** The longest pause between attempts while the cluster cannot be reached; 30 s. */
  maxRetryMs?: number;
  /** A client for the cluster (tests); else one from the config. */
  connect?: (config: FleetConfig) => Etcd3;
}

export interface RefreshResult {
  revision: string;
  changed: boolean;
  gpos: string[];
}

const same = (a: AppliedGroupPolicy | undefined, b: AppliedGroupPolicy): boolean =>
  a !== undefined && JSON.stringify({ ...a, appliedAt: '' }) === JSON.stringify({ ...b, appliedAt: '' });

export class FleetAgent {
  private etcd?: Etcd3;
  private dirWatch?: Watcher;
  private readonly gpoWatches = new Map<string, Watcher>();
  private running?: Promise<RefreshResult>;
  private again = false;
  private timer?: NodeJS.Timeout;
  private heartbeat?: NodeJS.Timeout;
  private retryMs = 500;
  private closed = false;
  private last: HostStatus;

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
    this.etcd = (this.o.connect ?? connectFleet)(this.o.config);
    this.schedule(0);
    this.heartbeat = setInterval(() => void this.report(), this.o.heartbeatMs ?? 600_000);
    this.heartbeat.unref();
  }

  /** The status this host last reported (or would report). */
  get status(): HostStatus {
    return this.last;
  }

  /** `gpupdate /force`: reads the directory and every targeted GPO now and applies them again. */
  async refresh(force = false): Promise<RefreshResult> {
    if (this.running) {
      // One at a time: the one under way may have read before the change asked for; run again after.
      this.again = true;
      await this.running.catch(() => undefined);
    }
    this.running = this.run(force);
    try {
      return await this.running;
    } finally {
      this.running = undefined;
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.heartbeat);
    await Promise.allSettled([this.dirWatch?.cancel(), ...[...this.gpoWatches.values()].map((w) => w.cancel())]);
    this.etcd?.close();
  }

  private applied(): AppliedGroupPolicy | undefined {
    try {
      return readGroupPolicy(this.o.policyDir);
    } catch {
      return undefined;
    }
  }

  private schedule(ms: number): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.refresh().then(
        () => {
          this.retryMs = 500;
          if (this.again) {
            this.again = false;
            this.schedule(0);
          }
        },
        () => {
          this.schedule(this.retryMs);
          this.retryMs = Math.min(this.retryMs * 2, this.o.maxRetryMs ?? 30_000);
        },
      );
    }, ms);
    this.timer.unref();
  }

  private async run(force: boolean): Promise<RefreshResult> {
    const etcd = this.etcd;
    if (!etcd) throw new FleetError('the fleet agent is not started');
    const { config } = this.o;
    let targeting: Targeting | undefined;
    let revision = '0';
    try {
      const dirRead = await etcd.getAll().prefix(directoryPrefix(config.domain)).exec();
      revision = String(dirRead.header.revision);
      const directory = parseDirectory(
        config.domain,
        dirRead.kvs.map((kv) => [kv.key.toString('utf8'), kv.value.toString('utf8')] as [string, string]),
      );
      targeting = targetedGpos(directory, config.host);
      // Every GPO at the directory's revision: one consistent picture of the fleet's policy.
      const reads = await Promise.all(
        targeting.applied.map((a) =>
          etcd
            .get(gpoKey(`${config.domain}\\${a.gpo}`))
            .revision(revision)
            .exec(),
        ),
      );
      const gpos: AppliedGroupPolicy['gpos'] = [];
      const denied: AppliedGroupPolicy['denied'] = targeting.denied.map((d) => ({
        ...this.linkInfo(d, undefined),
        reason: d.reason,
      }));
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
        readStoreText(text, info.name, `The GPO ${info.name} (fleet revision ${info.revision})`);
        gpos.push({ ...info, text });
      });
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
      this.watch(targeting, revision);
      const current = this.applied();
      const changed = !same(current, next);
      if (changed || force) {
        writeGroupPolicy(this.o.policyDir, next);
        await this.o.enforce();
        this.o.log.info(
          { revision, gpos: gpos.map((g) => `${g.name}@${g.revision}`), denied: denied.length, forced: force },
          'fleet policy applied',
        );
      }
      const appliedAt = changed || force ? next.appliedAt : (current?.appliedAt ?? next.appliedAt);
      const hadError = this.last.error !== undefined;
      this.last = {
        host: config.host,
        revision: changed || force ? revision : (current?.revision ?? revision),
        gpos: gpos.map((g) => ({ name: g.name, revision: g.revision })),
        appliedAt,
        reportedAt: new Date().toISOString(),
        consec: this.o.version,
      };
      // Reported when it changed, and when it clears an error reported before.
      if (changed || force || hadError) await this.report();
      return { revision, changed, gpos: gpos.map((g) => g.name) };
    } catch (err) {
      const reason = (err as Error).message;
      const good = this.applied();
      this.o.log.error(
        { reason, lastGood: good?.revision ?? 'none' },
        'fleet policy not applied: the last good fleet policy stays in force',
      );
      this.last = { ...this.last, error: reason, reportedAt: new Date().toISOString() };
      // Reported when the cluster can be reached (a GPO that is not valid, a directory record …).
      await this.report();
      if (targeting) this.watch(targeting, revision);
      throw err;
    }
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

  /** Writes the status under the host's key; whether the cluster took it. */
  private async report(): Promise<boolean> {
    const etcd = this.etcd;
    if (!etcd || this.closed) return false;
    const status = { ...this.last, reportedAt: new Date().toISOString() };
    try {
      await etcd.put(statusKey(this.o.config.domain, this.o.config.host)).value(JSON.stringify(status));
      this.last = status;
      return true;
    } catch (err) {
      this.o.log.warn({ reason: (err as Error).message }, 'fleet: status not reported');
      return false;
    }
  }

  /**
   * Watches the directory and each GPO this host applies (or would, once it exists), from the
   * revision after the one read: nothing committed in between is missed.
   */
  private watch(targeting: Targeting, revision: string): void {
    const etcd = this.etcd;
    if (!etcd || this.closed) return;
    const from = String(BigInt(revision) + 1n);
    const changed = () => this.schedule(0);
    const failed = (what: string) => (err: Error) => {
      this.o.log.warn({ what, reason: err.message }, 'fleet: watch ended; reading again');
      if (what === 'directory') this.dirWatch = undefined;
      else this.gpoWatches.delete(what);
      this.schedule(this.retryMs);
    };
    if (!this.dirWatch) {
      const w = etcd.watch().prefix(directoryPrefix(this.o.config.domain)).startRevision(from).watcher();
      w.on('put', changed).on('delete', changed).on('error', failed('directory'));
      this.dirWatch = w;
    }
    const keys = new Set(targeting.applied.map((a) => gpoKey(`${this.o.config.domain}\\${a.gpo}`)));
    for (const [key, w] of this.gpoWatches)
      if (!keys.has(key)) {
        this.gpoWatches.delete(key);
        void w.cancel().catch(() => undefined);
      }
    for (const key of keys)
      if (!this.gpoWatches.has(key)) {
        const w = etcd.watch().key(key).startRevision(from).watcher();
        w.on('put', changed).on('delete', changed).on('error', failed(key));
        this.gpoWatches.set(key, w);
      }
  }
}
