/**
 * Prometheus metrics of the daemon (`consec daemon --metrics ADDRESS:PORT`), with prom-client on a
 * registry of its own (no global): IKE and child SAs by state, IKE SA setup latency, negotiation
 * failures by reason, audit events by ID, data plane packets/bytes per direction, drops by reason,
 * packets sent in clear, the acquire queue, and the process' own metrics. Gauges and counters that
 * mirror live state are read at scrape time; nothing on the packet path touches prom-client.
 */
import { createServer, type Server } from 'node:http';
import { isIP } from 'node:net';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AuditEvent } from '../audit/events.ts';
import type { DataPlaneStats } from '../dataplane/plane.ts';
import { ConsecError } from '../errors.ts';
import type { KeyedSession } from './keying.ts';

/** What the metrics read at scrape time. */
export interface MetricsSources {
  sessions(): KeyedSession[];
  dataplane?(): { stats: DataPlaneStats; clearPackets: number; queuedPackets: number } | undefined;
}

/** `host:port` or `[v6]:port` → parts; only literal addresses (metrics belong on loopback or a management address). */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:]+):(\d+)$/.exec(text);
  const port = Number(m?.[2]);
  if (!m || isIP(m[1] as string) === 0 || !Number.isInteger(port) || port < 1 || port > 65535)
    throw new ConsecError('ERR_USAGE', `--metrics ${text}: give ADDRESS:PORT, e.g. 127.0.0.1:9464 or [::1]:9464`);
  return { host: m[1] as string, port };
}

/** A low-cardinality label for a failure: the RFC 7296 notify, or a timeout, or "other". */
function failureLabel(e: { failureReason: string; notify?: string }): string {
  if (e.notify) return e.notify;
  return /time(d)? ?out|no response|retransmi/i.test(e.failureReason) ? 'TIMEOUT' : 'OTHER';
}

/** A counter that follows a monotonic value kept elsewhere (incremented by the difference at scrape). */
function mirrorCounter(
  registry: Registry,
  name: string,
  help: string,
  labelNames: string[],
  read: () => [Record<string, string>, number][],
): void {
  const last = new Map<string, number>();
  new Counter({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      for (const [labels, value] of read()) {
        const key = JSON.stringify(labels);
        const delta = value - (last.get(key) ?? 0);
        if (delta > 0) this.inc(labels, delta);
        else if (!last.has(key)) this.inc(labels, 0);
        last.set(key, Math.max(value, last.get(key) ?? 0));
      }
    },
  });
}

export class DaemonMetrics {
  readonly registry = new Registry();
  private readonly setup: Histogram<'role'>;
  private readonly failures: Counter<'phase' | 'reason'>;
  private readonly audits: Counter<'id'>;

  constructor(src: MetricsSources) {
    const r = this.registry;
    collectDefaultMetrics({ register: r, prefix: 'consec_' });
    this.setup = new Histogram({
      name: 'consec_ike_sa_setup_seconds',
      help: 'Time from the first IKE_SA_INIT to an established IKE SA (with its first child SA)',
      labelNames: ['role'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [r],
    });
    this.failures = new Counter({
      name: 'consec_negotiation_failures_total',
      help: 'Failed negotiations by phase (main_mode = IKE SA, quick_mode = child SA) and reason (RFC 7296 notify)',
      labelNames: ['phase', 'reason'],
      registers: [r],
    });
    this.audits = new Counter({
      name: 'consec_audit_events_total',
      help: 'Windows audit events raised, by event ID (whether or not auditpol writes them)',
      labelNames: ['id'],
      registers: [r],
    });
    new Gauge({
      name: 'consec_ike_sas',
      help: 'IKE SAs (main mode SAs) by state',
      labelNames: ['state'],
      registers: [r],
      collect() {
        this.reset();
        const by = new Map<string, number>();
        for (const s of src.sessions()) by.set(s.state, (by.get(s.state) ?? 0) + 1);
        for (const state of ['connecting', 'half-open', 'established', 'deleting'])
          this.set({ state }, by.get(state) ?? 0);
      },
    });
    new Gauge({
      name: 'consec_child_sas',
      help: 'Child SAs (quick mode SAs) of established IKE SAs by state',
      labelNames: ['state'],
      registers: [r],
      collect() {
        this.reset();
        const by = new Map<string, number>();
        for (const s of src.sessions())
          for (const c of s.children.values()) by.set(c.state.kind, (by.get(c.state.kind) ?? 0) + 1);
        for (const state of ['installed', 'rekeying', 'deleting']) this.set({ state }, by.get(state) ?? 0);
      },
    });
    const dp = () => src.dataplane?.();
    const perDirection = (name: string, help: string, pick: (st: DataPlaneStats) => [number, number]) =>
      mirrorCounter(r, name, help, ['direction'], () => {
        const d = dp();
        if (!d) return [];
        const [inbound, outbound] = pick(d.stats);
        return [
          [{ direction: 'in' }, inbound],
          [{ direction: 'out' }, outbound],
        ];
      });
    perDirection('consec_dataplane_packets_total', 'Packets through SAs, by direction', (st) => [
      st.packetsIn,
      st.packetsOut,
    ]);
    perDirection('consec_dataplane_bytes_total', 'Octets of IP packets through SAs, by direction', (st) => [
      st.bytesIn,
      st.bytesOut,
    ]);
    mirrorCounter(
      r,
      'consec_dataplane_drops_total',
      'Packets the data plane dropped, by reason (unknown SPI, integrity, replay, queue full …)',
      ['reason'],
      () => Object.entries(dp()?.stats.drops ?? {}).map(([reason, n]) => [{ reason }, n ?? 0]),
    );
    mirrorCounter(
      r,
      'consec_dataplane_clear_packets_total',
      'Packets the data plane sent in clear (exempt, or Request without an SA)',
      [],
      () => {
        const d = dp();
        return d ? [[{}, d.clearPackets]] : [];
      },
    );
    new Gauge({
      name: 'consec_dataplane_queued_packets',
      help: 'Packets waiting for an SA (Require, while IKE negotiates)',
      registers: [r],
      collect() {
        this.set(dp()?.queuedPackets ?? 0);
      },
    });
  }

  /** An IKE SA became established: its setup time. */
  established(s: KeyedSession): void {
    if (s.startedAt <= 0 || s.establishedAt < s.startedAt) return;
    this.setup.observe({ role: s.sa.role }, (s.establishedAt - s.startedAt) / 1000);
  }

  /** Every audit event the daemon raises. */
  audit(e: AuditEvent): void {
    this.audits.inc({ id: String(e.id) });
    if (e.id === 4652 || e.id === 4653) this.failures.inc({ phase: 'main_mode', reason: failureLabel(e.failure) });
    if (e.id === 4654) this.failures.inc({ phase: 'quick_mode', reason: failureLabel(e.failure) });
  }

  /** Serves GET /metrics (text exposition format) until closed. */
  async serve(listen: string): Promise<Server> {
    const { host, port } = parseListen(listen);
    const server = createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try GET /metrics\n');
        return;
      }
      this.registry
        .metrics()
        .then((text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text))
        .catch((err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err.message}\n`));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(new ConsecError('ERR_METRICS', `cannot serve metrics on ${listen}: ${err.message}`)),
      );
      server.listen(port, host, () => resolve());
    });
    return server;
  }
}
