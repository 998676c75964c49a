/**
 * `consec daemon`: runs in the foreground, logs JSON lines (pino) to stdout, answers and initiates
 * IKEv2 per the active policy of the state directory, follows policy changes, and on SIGINT/SIGTERM
 * deletes its SAs at the peers before exiting. Audit events go to the Security log (as auditpol
 * enables them), the journal, the debug log and stdout as `{"audit": {...}}` lines.
 */
import { existsSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { TrafficSelector } from '../sa/spec.ts';
import { isIP, isIPv4 } from 'node:net';
import pino from 'pino';
import type { AuditEvent } from '../audit/events.ts';
import { SecurityLog } from '../audit/log.ts';
import { LiveAuditPolicy } from '../audit/policy.ts';
import { ConsecError } from '../errors.ts';
import { hostAddresses, systemHostContext } from '../filter/host-context.ts';
import { activeProfiles, networkCategories, networkCategoriesStamp } from '../filter/location.ts';
import type { ChildSaSink } from '../sa/sink.ts';
import { PolicyStores } from '../policy/store.ts';
import { deleteChildSa, KeyingService } from './keying.ts';
import { KERNEL_IKE_MARK, KernelDataPlane } from '../dataplane/kernel.ts';
import { UserspaceDataPlane } from '../dataplane/plane.ts';
import { ANY_V4, ANY_V6, boundBytes, type Range } from '../filter/address.ts';
import {
  GUARD_TABLE,
  type GuardChange,
  GuardKeeper,
  guardSets,
  mergeElements,
  readClearDrops,
  removeGuard,
} from '../dataplane/guard.ts';
import type { PolicyDocument } from '../policy/model.ts';
import {
  type CompiledPolicy,
  compiledPolicy,
  compilePolicy,
  type HostContext,
  resolveAddressEntry,
} from '../filter/compile.ts';
import type { IpInfo } from '../dataplane/ip.ts';
import type { Verdict } from '../dataplane/plane.ts';
import { readIp } from '../io/addr.ts';
import { appendEspKeys } from '../ike/keylog.ts';
import { loadManualSas, manualSpec } from '../dataplane/manual.ts';
import { hostKerberos } from './kerberos.ts';
import { serviceNotifier } from './notify.ts';
import { AppliedPolicy } from './applied.ts';
import { safeDirectory } from '../io/safe-file.ts';
import { type AddressEvent, AddressWatch } from './addresses.ts';
import { IkeDebugLog } from '../audit/debuglog.ts';
import { JournalSink } from '../io/journal.ts';
import { StateDirLock } from './lock.ts';
import type { DaemonMetrics } from './metrics.ts';
import { startControlServer } from './control.ts';
import { mainModeSaView, quickModeSaView } from './views.ts';
import { FleetAgent } from '../fleet/agent.ts';
import { type FleetConfig, fleetFile, readFleetConfig } from '../fleet/config.ts';
import { consecVersion } from '../version.ts';

/** The outbound verdict of the compiled policy for a packet in the TUN (IPv4 on the allocation-free path). */
function verdictFor(policy: CompiledPolicy, packet: Buffer, ip: IpInfo): Verdict {
  const icmpType = ip.protocol === 1 || ip.protocol === 58 ? (packet[ip.headerLength] ?? -1) : -1;
  const filter =
    ip.family === 4
      ? policy.classifyV4Filter(
          packet.readUInt32BE(ip.src),
          packet.readUInt32BE(ip.dst),
          ip.protocol,
          ip.srcPort,
          ip.dstPort,
          icmpType,
        )
      : policy.classify({
          direction: 'Outbound',
          local: readIp(packet, ip.src, 6),
          remote: readIp(packet, ip.dst, 6),
          protocol: ip.protocol,
          localPort: ip.srcPort >= 0 ? ip.srcPort : undefined,
          remotePort: ip.dstPort >= 0 ? ip.dstPort : undefined,
          icmpType: icmpType >= 0 ? icmpType : undefined,
        }).filter;
  if (!filter) return 'none';
  if (filter.kind !== 'negotiate') return 'exempt';
  return filter.outbound === 'Require' ? 'require' : filter.outbound === 'Request' ? 'request' : 'none';
}

/** The data plane, plus the ESP keys appended for Wireshark when the operator asked for them. */
function withKeyExport(sink: ChildSaSink, dir: string | undefined): ChildSaSink {
  if (!dir) return sink;
  return {
    install: (spec) => {
      appendEspKeys(dir, spec);
      sink.install(spec);
    },
    delete: (spi) => sink.delete(spi),
    activate: sink.activate ? (spi) => sink.activate?.(spi) : undefined,
    update: sink.update ? (spi, remote) => sink.update?.(spi, remote) : undefined,
  };
}

/**
 * Routes the protected peers' addresses into the TUN, so their first packet triggers negotiation;
 * address keywords (LocalSubnet, DNS, DefaultGateway …) are resolved with the host context.
 */
async function routeProtected(
  service: KeyingService,
  plane: UserspaceDataPlane,
  ctx: HostContext,
  log: pino.Logger,
  /** Selectors by address entry from earlier calls (the host context is fixed for the daemon's run). */
  cache: Map<string, TrafficSelector[]>,
): Promise<void> {
  const families = plane.families;
  const selectors: TrafficSelector[] = [];
  for (const entry of service.protectedRanges()) {
    let cached = cache.get(entry);
    if (!cached) {
      // Any (server and domain isolation): everything of our families goes through the data plane,
      // which sends exempt and unruled traffic on in clear.
      const resolved = resolveAddressEntry(entry, ctx);
      const ranges = resolved === 'any' ? families.map((f) => (f === 4 ? ANY_V4 : ANY_V6)) : resolved;
      if (ranges.length === 0) log.warn({ entry }, 'an address keyword that stands for no address on this host');
      // Ranges of the other family come in too: a tunnel mode rule may carry IPv6 inside IPv4 (or
      // the other way round); without such an SA they are held (Require) or sent in clear (Request).
      cached = ranges.map((r) => ({
        type: r.family === 4 ? 7 : 8,
        ipProtocol: 0,
        startPort: 0,
        endPort: 65535,
        start: boundBytes(r.lo, r.family),
        end: boundBytes(r.hi, r.family),
      }));
      cache.set(entry, cached);
    }
    selectors.push(...cached);
  }
  if (cache.size > 2 * selectors.length + 1024) cache.clear(); // entries of rules long gone
  await plane.setProtected(selectors);
}

/** How often the kernel's per-address cleartext drop counters (event 4963) and the network location are read. */
const HOUSEKEEPING_MS = 5000;

export interface DaemonOptions {
  listen?: string[];
  encap?: boolean;
  /**
   * 'kernel': the kernel's ESP/AH through netlink XFRM; 'userspace': consec's own ESP data plane on a
   * TUN device; 'auto' (default): the kernel where it carries ESP, else userspace; 'none': SAs are only logged.
   */
  dataplane?: 'auto' | 'kernel' | 'userspace' | 'none';
  /** The userspace data plane's TUN offloads (TSO/USO super-packets in, GRO out); default on. */
  offload?: boolean;
  /** Remove consec's nftables table, routing rule and routes, and exit (refused while a daemon runs). */
  removeFilters?: boolean;
  /** With removeFilters: stop the running daemon first (SIGTERM: its SAs deleted at the peers). */
  force?: boolean;
  /** Append every child SA's keys to DIR/esp_sa (Wireshark's table), for decrypting captures. Mode 0600. */
  wiresharkKeys?: string;
  /** A YAML file of manual SAs (keys and SPIs, no IKE), installed in the data plane at start. */
  manualSas?: string;
  /** Liveness check after this many seconds of silence (0: off). */
  dpd?: number;
  /** Serve Prometheus metrics on ADDRESS:PORT. */
  metrics?: string;
  /** The log's level: info (default: every SA set up and taken down), warn (problems only) or error. */
  logLevel?: 'info' | 'warn' | 'error';
}

/**
 * The data plane asked for, made concrete: `auto` takes the kernel's ESP when the kernel accepts an
 * ESP SA (KernelDataPlane.probe), else consec's userspace plane; `kernel` on a kernel without ESP is
 * refused with the kernel's reason.
 */
function chooseDataplane(
  asked: NonNullable<DaemonOptions['dataplane']>,
  log: pino.Logger,
): 'kernel' | 'userspace' | 'none' {
  const probe = asked === 'userspace' || asked === 'none' ? undefined : KernelDataPlane.probe();
  if (probe?.ok) return 'kernel';
  if (asked === 'kernel')
    throw new ConsecError('ERR_USAGE', `--dataplane kernel: this kernel cannot carry ESP: ${probe?.reason}`);
  // An earlier run on the kernel's data plane left its Require entries in the SPD (fail-closed): they
  // would catch this data plane's own IKE and ESP.
  KernelDataPlane.removeAll();
  if (probe) log.info({ reason: probe.reason }, 'the kernel carries no ESP here: userspace data plane');
  return asked === 'none' ? 'none' : 'userspace';
}

/** Stops the daemon `pid` that holds `stateDir` (SIGTERM: an orderly stop) and waits until it has let go. */
async function stopDaemon(stateDir: string, pid: number, log: pino.Logger): Promise<void> {
  if (pid > 0) {
    log.info({ pid }, 'stopping the running daemon');
    try {
      process.kill(pid, 'SIGTERM');
    } catch (err) {
      if ((err as { code?: string }).code !== 'ESRCH') throw err;
    }
  }
  const end = Date.now() + 30_000;
  while (StateDirLock.holder(stateDir) !== undefined) {
    if (Date.now() > end)
      throw new ConsecError('ERR_DAEMON_RUNNING', `consec daemon PID ${pid} did not stop within 30 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function runDaemon(stateDir: string, o: DaemonOptions): Promise<number> {
  const log = pino({ base: { service: 'consec' }, timestamp: pino.stdTimeFunctions.isoTime });
  if (o.removeFilters) {
    // The filters belong to a running daemon: removing them under it would let Require traffic out in clear.
    const owner = StateDirLock.holder(stateDir);
    if (owner !== undefined) {
      if (!o.force)
        throw new ConsecError(
          'ERR_DAEMON_RUNNING',
          `consec daemon PID ${owner} enforces the policy of ${stateDir}: stop it first, or add --force to stop it (its SAs deleted at the peers) and then remove the filters`,
        );
      await stopDaemon(stateDir, owner, log);
    }
    await removeGuard();
    await UserspaceDataPlane.removeRouting();
    KernelDataPlane.removeAll();
    log.info({}, 'fail-closed filters, routing rule, routes and kernel IPsec entries removed');
    return 0;
  }
  // The state directory holds the policy and the control socket: a root daemon takes it only when
  // it is a real directory of its own that nobody else may write to (else anyone could plant policy).
  safeDirectory(stateDir);
  // One daemon per state directory: a second one stops here, before it touches anything.
  const lock = StateDirLock.acquire(stateDir);
  // Signals are caught from here on: a stop asked for during start-up (a service manager's timeout,
  // an admin's Ctrl-C) waits until the SAs it may have brought up can be deleted at the peers.
  const signals = new DaemonSignals();
  try {
    return await serve(stateDir, o, log, lock, signals);
  } finally {
    signals.close();
  }
}

/**
 * SIGINT/SIGTERM/SIGHUP for the daemon's whole life. Until the daemon is ready they are remembered
 * (Node's default would end the process at once, SAs left up at the peers); then they run.
 */
class DaemonSignals {
  private pendingStop: string | undefined;
  private pendingReload = false;
  private onStop: ((signal: string) => void) | undefined;
  private onReload: (() => void) | undefined;
  private readonly handlers: Record<'SIGINT' | 'SIGTERM' | 'SIGHUP', () => void> = {
    SIGINT: () => this.stop('SIGINT'),
    SIGTERM: () => this.stop('SIGTERM'),
    SIGHUP: () => (this.onReload ? this.onReload() : (this.pendingReload = true)),
  };

  constructor() {
    for (const [signal, handler] of Object.entries(this.handlers)) process.on(signal, handler);
  }

  private stop(signal: string): void {
    if (this.onStop) this.onStop(signal);
    else this.pendingStop ??= signal;
  }

  /** The daemon is up: a remembered stop runs now (a remembered reload, if no stop). */
  ready(onStop: (signal: string) => void, onReload: () => void): void {
    this.onStop = onStop;
    this.onReload = onReload;
    if (this.pendingStop) onStop(this.pendingStop);
    else if (this.pendingReload) onReload();
  }

  /** Stopping: Node's defaults come back, so a second SIGINT/SIGTERM ends the process at once. */
  stopping(): void {
    this.close();
  }

  close(): void {
    for (const [signal, handler] of Object.entries(this.handlers)) process.off(signal, handler);
  }
}

async function serve(
  stateDir: string,
  o: DaemonOptions,
  log: pino.Logger,
  lock: StateDirLock,
  signals: DaemonSignals,
): Promise<number> {
  // What happens per SA and per packet event (keying, data plane, audit lines) at the level asked
  // for; the daemon's own life (settings, ready, stopping) is always logged.
  const activity = o.logLevel && o.logLevel !== 'info' ? log.child({}, { level: o.logLevel }) : log;
  const ctx = systemHostContext();
  const addresses = o.listen && o.listen.length > 0 ? o.listen : ctx.localAddresses;
  for (const a of addresses)
    if (isIP(a) === 0) throw new ConsecError('ERR_USAGE', `--listen ${JSON.stringify(a)} is not an IP address`);
  // Manual SAs are read and checked before anything changes on the host.
  const manual = o.manualSas ? loadManualSas(o.manualSas) : [];
  const kind = chooseDataplane(o.dataplane ?? 'auto', log);
  if (manual.length > 0 && kind === 'none')
    throw new ConsecError('ERR_USAGE', 'manual SAs need a data plane (--dataplane auto, kernel or userspace)');
  // Negotiation outcomes, counted from the audit events (Get-NetIPsecStatistics).
  const auditCounts = new Map<number, number>();
  let plane: UserspaceDataPlane | undefined;
  const kernel =
    kind === 'kernel'
      ? KernelDataPlane.open({ log: (event, detail) => activity.info(detail ?? {}, event) })
      : undefined;
  // The IKE debug log (netsh advfirewall set global ipsec debuglog …), followed live.
  const debugLog = new IkeDebugLog(
    stateDir,
    (err) => log.warn({ reason: err.message }, 'IKE debug log'),
    (s) => log.info({ enabled: s.enabled, file: s.file ?? null, sizeKb: s.sizeKb }, 'IKE debug log settings'),
  );
  const unwatchDebugLog = debugLog.watch();
  // Prometheus metrics (and its client's modules) only for a daemon asked to serve them.
  const metrics: DaemonMetrics | undefined = o.metrics
    ? new (await import('./metrics.ts')).DaemonMetrics({
        sessions: () => service.sessions(),
        dataplane: () => plane,
      })
    : undefined;
  // The Security log: the events `auditpol` enables, for Get-WinEvent (the debug log above has them all).
  const auditPolicy = new LiveAuditPolicy(stateDir, (err) =>
    log.warn({ reason: err.message }, 'audit policy unreadable; keeping the last good one'),
  );
  // Written events also go to the systemd journal, when this host has one.
  const journal = JournalSink.open();
  const securityLog = new SecurityLog(
    stateDir,
    auditPolicy,
    (err) => log.warn({ reason: err.message }, 'cannot write the Security log'),
    { journal },
  );
  // Every audit event, from the keying service and the data plane: counted, traced, logged, and
  // written to the Security log when its subcategory is enabled.
  let authFailures = 0;
  const emitAudit = (event: AuditEvent): void => {
    auditCounts.set(event.id, (auditCounts.get(event.id) ?? 0) + 1);
    if ((event.id === 4652 || event.id === 4653) && event.failure.notify === 'AUTHENTICATION_FAILED') authFailures++;
    metrics?.audit(event);
    if (debugLog.enabled()) debugLog.line(`audit ${event.id} ${JSON.stringify(event)}`);
    activity.info({ audit: event }, `audit ${event.id}`);
    securityLog.emit(event);
  };
  // What the policy says per packet (exempt, Request, Require), recompiled with every policy change.
  let classify: (packet: Buffer, ip: IpInfo) => Verdict = () => 'require';
  if (kind === 'userspace') {
    plane = await UserspaceDataPlane.open({
      locals: addresses,
      follow: !o.listen?.length,
      offload: o.offload ?? true,
      classify: (packet, ip) => classify(packet, ip),
      onDriverDrop: (d) => emitAudit({ ...d, subcategory: 'IPsec Driver', success: false }),
      onPolicyDrop: (d) =>
        emitAudit({
          id: 5152,
          subcategory: 'Filtering Platform Packet Drop',
          success: false,
          direction: 'Outbound',
          layerName: 'Transport',
          ...d,
        }),
      log: (event, detail) => activity.info(detail ?? {}, event),
    });
  }
  const logOnly: ChildSaSink = {
    install: (spec) =>
      activity.info(
        {
          spiIn: spec.inbound.spi.toString(16).padStart(8, '0'),
          spiOut: spec.outbound.spi.toString(16).padStart(8, '0'),
          mode: spec.mode,
          remote: spec.remote,
        },
        'child SA ready for the data plane',
      ),
    delete: (spiIn) =>
      activity.info({ spiIn: spiIn.toString(16).padStart(8, '0') }, 'child SA removed from the data plane'),
  };
  const stores = new PolicyStores(stateDir, { cacheReads: true });
  // A store unreadable at start-up (corrupt, half-written): the policy last applied, not none.
  const applied = new AppliedPolicy(stateDir);
  const appliedError = (err: Error) => log.warn({ reason: err.message }, 'cannot keep a copy of the applied policy');
  let initialPolicy: PolicyDocument | undefined;
  try {
    initialPolicy = stores.read('ActiveStore');
  } catch (err) {
    initialPolicy = applied.load();
    if (!initialPolicy) throw err;
    log.error(
      { reason: (err as Error).message },
      'policy store unreadable at start-up: the policy last applied is in force until the store is repaired',
    );
  }
  // The firewall profiles in force (network location): the rules the keying service applies.
  const profilesInForce = () => activeProfiles(networkCategories(stateDir));
  // Kerberos for AuthIP rules: the computer account of the host keytab, if this host has one.
  const kerberos = hostKerberos();
  log.info(
    kerberos.provider ? { principal: kerberos.principal } : { reason: kerberos.reason },
    kerberos.provider ? 'Kerberos: computer account' : 'Kerberos: none (AuthIP rules get no SA)',
  );
  const service = new KeyingService({
    kerberos: kerberos.provider,
    stores,
    initialPolicy,
    onApplied: (doc) => applied.saveSoon(doc, appliedError),
    profiles: profilesInForce,
    // The data plane's addresses (those it could open), else the host's.
    addresses: plane ? plane.addresses : addresses,
    follow: !o.listen?.length,
    ctx,
    dataplane: withKeyExport(plane ?? kernel ?? logOnly, o.wiresharkKeys),
    onPolicy: (doc) => onPolicy(doc, true),
    onEstablished: (s) => metrics?.established(s),
    trace: debugLog,
    bind: plane
      ? (address) => (rx) => (plane as UserspaceDataPlane).bind(address, rx)
      : kernel
        ? (address) => (rx) => kernel.bind(address, rx)
        : undefined,
    audit: { emit: emitAudit },
    timing: o.dpd !== undefined ? { dpdMs: o.dpd * 1000 } : undefined,
    forceUdpEncapsulation: o.encap,
    log: activity,
    serviceLog: log,
  });
  // The data plane's traffic events go to the keying service: acquires, lifetimes, activity.
  plane?.attach({
    acquire: (flow) =>
      void service.acquire(flow).catch((err: Error) => {
        log.warn({ remote: flow.remote, reason: err.message }, 'negotiation for queued traffic failed');
        plane?.acquireFailed(flow.remote);
      }),
    expire: (spi, hard) => service.expire(spi, hard),
    activity: (spi) => service.noteEsp(spi),
  });
  // The kernel's acquires and lifetimes likewise (its own SPD drops or passes the packets meanwhile).
  kernel?.attach({
    acquire: (flow) =>
      void service
        .acquire(flow)
        .catch((err: Error) =>
          log.warn({ remote: flow.remote, reason: err.message }, 'negotiation for traffic failed'),
        ),
    expire: (spi, hard) => service.expire(spi, hard),
  });
  // Fail-closed: the kernel drops cleartext to and from Require peers, also when this process dies;
  // while it runs, a change to the table by anyone else is undone at once (and audited, 5447).
  const filterChange = (c: GuardChange, changeType: 'Add' | 'Delete', pid: number, name: string): void =>
    emitAudit({
      id: 5447,
      subcategory: 'Filtering Platform Policy Change',
      success: true,
      processId: pid,
      processName: name,
      changeType,
      filterName: `consec fail-closed filters (nftables table inet ${GUARD_TABLE})`,
      layerName: 'nftables inet: input, output, forward',
      changes: changeType === 'Delete' ? c.changes : [`restored after generation ${c.generation}`],
    });
  const keeper = new GuardKeeper({
    tampered: (c) => {
      log.warn(
        { pid: c.pid, process: c.process, generation: c.generation, changes: c.changes },
        'fail-closed filters changed by another process: restoring',
      );
      filterChange(c, 'Delete', c.pid, c.process);
    },
    restored: (c) => {
      log.info({ generation: c.generation }, 'fail-closed filters restored');
      filterChange(c, 'Add', process.pid, 'consec');
    },
    error: (err) => log.error({ reason: err.message }, 'fail-closed filters watch'),
  });
  if (plane || kernel) keeper.start();
  // Address entries resolved for the table, kept across policy versions (most entries stay).
  const guardCache = new Map<string, readonly Range[]>();
  const routeCache = new Map<string, TrafficSelector[]>();
  const guard = async (doc: PolicyDocument): Promise<boolean> => {
    if (!plane && !kernel) return false;
    try {
      if (guardCache.size > 4 * doc.rules.length + 1024) guardCache.clear(); // entries of rules long gone
      const sets = guardSets(doc, ctx, guardCache);
      // Traffic of a manual SA is protected traffic: never in clear either.
      for (const sa of manual)
        for (const sel of sa.remoteSelectors ?? [sa.remote]) {
          const v4 = !sel.includes(':');
          (v4 ? sets.out4 : sets.out6).push(sel);
          (v4 ? sets.in4 : sets.in6).push(sel);
        }
      if (manual.length) for (const k of ['out4', 'out6', 'in4', 'in6'] as const) sets[k] = mergeElements(sets[k]);
      const how = await keeper.applySets(sets, plane?.tunName, plane?.mark ?? KERNEL_IKE_MARK);
      log.info({ how }, 'fail-closed filters installed');
      return true;
    } catch (err) {
      log.error({ reason: (err as Error).message }, 'cannot install the fail-closed filters');
      return false;
    }
  };
  const compile = (doc: PolicyDocument) => {
    const policy = compiledPolicy(doc, ctx);
    classify = (packet, ip) => verdictFor(policy, packet, ip);
    if (kernel) {
      const families = [...new Set(service.addresses.map((a) => (isIPv4(a) ? 4 : 6) as 4 | 6))];
      const r = kernel.setFilters(policy.filters, families.length > 0 ? families : [4, 6]);
      if (r.failed > 0) log.error({ failed: r.failed }, 'kernel IPsec policies refused');
      else log.info({ policies: r.policies }, 'kernel IPsec policies in force');
    }
  };
  compile(service.policy);
  let spdOnly = false;
  // Those waiting for the next policy read from the stores to be enforced (the fleet agent): only a
  // read of the stores that started after they asked answers them.
  let enforcedWaiters: { resolve: () => void; reject: (err: Error) => void }[] = [];
  const onPolicy = (doc: PolicyDocument, fromStores = false): void => {
    const waiting = fromStores ? enforcedWaiters : [];
    if (fromStores) enforcedWaiters = [];
    const t0 = performance.now();
    try {
      compile(doc);
    } catch (err) {
      log.error({ reason: (err as Error).message }, 'policy not compiled: the filters in force stay');
      for (const w of waiting) w.reject(err as Error);
      return;
    }
    const t1 = performance.now();
    let t2 = t1;
    // Filters first, then routes for what the new policy protects (rules added while running).
    void guard(doc)
      .then((installed) => {
        // (A kernel without nf_tables has no table: its SPD alone enforces, as at start-up.)
        if (!installed && (plane || (kernel && !spdOnly))) {
          const err = new Error('the fail-closed filters of the new policy could not be installed');
          for (const w of waiting.splice(0)) w.reject(err);
        }
        t2 = performance.now();
        return plane ? routeProtected(service, plane, ctx, log, routeCache) : undefined;
      })
      .then(() => {
        const t3 = performance.now();
        const ms = (a: number, b: number) => Math.round(b - a);
        log.info(
          {
            rules: doc.rules.length,
            ms: ms(t0, t3),
            compileMs: ms(t0, t1),
            filtersMs: ms(t1, t2),
            routesMs: ms(t2, t3),
          },
          'policy enforced',
        );
        for (const w of waiting) w.resolve();
      })
      .catch((err: Error) => {
        log.error({ reason: err.message }, 'policy not fully enforced');
        for (const w of waiting.splice(0)) w.reject(err);
      });
  };
  try {
    await service.start();
  } catch (err) {
    keeper.close();
    await plane?.close();
    kernel?.close();
    throw err;
  }
  // No --listen: IKE and the data plane follow the host's addresses as they come and go
  // (rtnetlink), as Windows' keying service answers on every interface. Each change also renews
  // what depends on the host's addresses: address keywords, the routes of Any rules per family.
  let follow: AddressWatch | undefined;
  if (!o.listen?.length) {
    let refresh: NodeJS.Timeout | undefined;
    const hostChanged = () => {
      clearTimeout(refresh);
      refresh = setTimeout(() => {
        Object.assign(ctx, systemHostContext());
        routeCache.clear();
        guardCache.clear();
        onPolicy(service.policy);
      }, 200);
      refresh.unref();
    };
    const add = async (address: string) => {
      if (plane && !plane.addresses.includes(address)) await plane.addAddress(address);
      if (!service.addresses.includes(address)) {
        await service.addAddress(address);
        log.info({ address }, 'local address added: IKE listens there');
      }
    };
    const remove = (address: string) => {
      if (!service.addresses.includes(address) && !plane?.addresses.includes(address)) return;
      service.removeAddress(address);
      plane?.removeAddress(address);
      log.info({ address }, 'local address removed: its SAs ended, IKE stopped there');
    };
    // One change at a time, in the kernel's order.
    let queue = Promise.resolve();
    const apply = (e: AddressEvent) => {
      queue = queue
        .then(() => (e.op === 'add' ? add(e.address) : remove(e.address)))
        .then(hostChanged)
        .catch((err: Error) =>
          log.warn(
            { address: e.address, reason: err.message },
            `local address ${e.op === 'add' ? 'added' : 'removed'}, but it could not be used`,
          ),
        );
    };
    follow = AddressWatch.start(apply, (err) => log.error({ reason: err.message }, 'address watch'));
    const settle = (now: string[]) => {
      for (const a of new Set([...service.addresses, ...(plane?.addresses ?? [])]))
        if (!now.includes(a)) apply({ op: 'remove', address: a });
      for (const a of now) apply({ op: 'add', address: a });
    };
    follow.onResync = settle;
    // What changed between start-up and the watch (the watch is open now: nothing more is missed).
    settle(hostAddresses());
  }
  const sink = plane ?? kernel;
  if (sink) {
    // Filters first: until the routes are in place, Require traffic is dropped, never sent in clear.
    if ((await guard(service.policy)) || !kernel) {
      await keeper.watching();
      log.info({}, 'fail-closed filters watched');
    } else {
      // A kernel without nf_tables: its own SPD (the required templates) is what keeps Require traffic in.
      spdOnly = true;
      keeper.close();
      log.warn({}, 'no nftables table: the kernel IPsec policies alone enforce Require');
    }
    if (plane) await routeProtected(service, plane, ctx, log, routeCache);
    for (const sa of manual) {
      sink.install(manualSpec(sa));
      log.info(
        { name: sa.name, remote: sa.remote, inboundSpi: sa.inbound.spi, outboundSpi: sa.outbound.spi },
        'manual SA installed',
      );
    }
  }
  // A host of a fleet: its Group Policy agent watches the GPOs that target it and writes them to
  // fleet-gpos.json; the store watch reads them into the ActiveStore, and the agent reports the
  // revision once this daemon enforces it.
  let fleetConfig: FleetConfig | undefined;
  try {
    fleetConfig = readFleetConfig(stateDir);
  } catch (err) {
    log.error({ reason: (err as Error).message }, 'fleet membership unreadable: no fleet policy updates');
  }
  const agent = fleetConfig
    ? new FleetAgent({
        config: fleetConfig,
        policyDir: stores.policyDir,
        log,
        version: consecVersion(),
        joined: () => existsSync(fleetFile(stateDir)),
        // The GPOs compiled as this daemon will: one it cannot use is refused before it is written.
        check: (docs) => {
          for (const d of docs) compilePolicy(d, ctx);
        },
        enforce: () =>
          new Promise<void>((resolve, reject) => {
            const timer = setTimeout(() => {
              enforcedWaiters = enforcedWaiters.filter((w) => w !== waiter);
              reject(new Error('the fleet policy was written but not enforced within 15 s (see the daemon log)'));
            }, 15_000);
            const waiter = {
              resolve: () => {
                clearTimeout(timer);
                resolve();
              },
              reject: (err: Error) => {
                clearTimeout(timer);
                reject(err);
              },
            };
            enforcedWaiters.push(waiter);
          }),
      })
    : undefined;
  agent?.start();
  const fleetAgent = (): FleetAgent => {
    if (!agent) throw new ConsecError('ERR_NO_FLEET', 'This host has not joined a fleet (consec fleet join).');
    return agent;
  };
  // The control API the CLI's live commands use (SA views and removal), root only.
  const control = await startControlServer(stateDir, async (req) => {
    const established = service.sessions().filter((x) => x.state === 'established' || x.state === 'rekeyed');
    switch (req.method) {
      case 'mmsa.list':
        return established.filter((x) => x.state === 'established').map(mainModeSaView);
      case 'qmsa.list':
        return established.flatMap((x) =>
          [...x.children.values()].map((e) => quickModeSaView(x, e, sink?.counters(e.child.spiIn.readUInt32BE(0)))),
        );
      case 'stats': {
        const count = (...ids: number[]) => ids.reduce((n, id) => n + (auditCounts.get(id) ?? 0), 0);
        const st = plane?.stats;
        return {
          ActiveMainModeSAs: established.filter((x) => x.state === 'established').length,
          ActiveQuickModeSAs: established.reduce((n, x) => n + x.children.size, 0),
          PendingMainModeSAs: service.halfOpen,
          MainModeSAsEstablished: count(4650, 4651),
          MainModeNegotiationFailures: count(4652, 4653),
          QuickModeSAsEstablished: count(5451),
          QuickModeNegotiationFailures: count(4654),
          MainModeSAsEnded: count(4655),
          QuickModeSAsEnded: count(5452),
          PacketsOut: st?.packetsOut ?? 0,
          PacketsIn: st?.packetsIn ?? 0,
          BytesOut: st?.bytesOut ?? 0,
          BytesIn: st?.bytesIn ?? 0,
          PacketsSentInClear: plane?.clearPackets ?? 0,
          AuthenticationFailures: authFailures,
          ClearTextPacketsDroppedByRequire: sink ? (await readClearDrops()).reduce((n, d) => n + d.packets, 0) : 0,
          DroppedPackets: { ...(st?.drops ?? {}) },
        };
      }
      case 'gpupdate':
        return fleetAgent().refresh(req.params.force === true);
      case 'fleet.status':
        return fleetAgent().status;
      case 'mmsa.remove': {
        const target = established.find((x) => mainModeSaView(x).Name === req.params.name);
        if (!target) throw new ConsecError('ERR_NOT_FOUND', `No main mode SA named ${req.params.name}.`);
        await target.delete('removed by an administrator');
        return { removed: req.params.name };
      }
      case 'qmsa.remove': {
        for (const x of established)
          for (const e of x.children.values())
            if (String(e.child.spiIn.readUInt32BE(0)) === req.params.name) {
              await deleteChildSa(x, e, 'removed by an administrator');
              return { removed: req.params.name };
            }
        throw new ConsecError('ERR_NOT_FOUND', `No quick mode SA named ${req.params.name}.`);
      }
    }
  });
  const metricsServer = o.metrics && metrics ? await metrics.serve(o.metrics) : undefined;
  if (metricsServer) log.info({ metrics: `http://${o.metrics}/metrics` }, 'serving Prometheus metrics');
  // Every few seconds: 4963 for cleartext a Require rule refused (the kernel counts it per
  // address), and the network location (Set-NetConnectionProfile) → the rules of the profiles in force.
  const clearSeen = new Map<string, number>();
  const locationStamp = () => `${networkCategoriesStamp(stateDir)}|${profilesInForce().join()}`;
  let location = locationStamp();
  // systemd (Type=notify): READY once the filters are in and IKE listens; STATUS as it runs.
  const notifier = serviceNotifier(process.env, (err) => log.warn({ reason: err.message }, 'sd_notify'));
  const statusLine = () => {
    const sessions = service.sessions().filter((x) => x.state === 'established');
    const children = sessions.reduce((n, x) => n + x.children.size, 0);
    return `${service.policy.rules.length} connection security rules; ${sessions.length} main mode SAs, ${children} quick mode SAs`;
  };
  let lastStatus = '';
  const housekeeping = setInterval(() => {
    const line = statusLine();
    if (line !== lastStatus) notifier.status((lastStatus = line));
    const now = locationStamp();
    if (now !== location) {
      location = now;
      log.info({ profiles: now.split('|')[1] }, 'network location changed');
      service.locationChanged();
    }
    if (!sink) return;
    void readClearDrops().then((drops) => {
      for (const d of drops) {
        const last = clearSeen.get(d.address) ?? 0;
        const before = d.packets < last ? 0 : last; // the entry timed out and came back
        clearSeen.set(d.address, d.packets);
        if (d.packets > before)
          emitAudit({
            id: 4963,
            subcategory: 'IPsec Driver',
            success: false,
            remoteAddress: d.address,
            spi: 0,
            packets: d.packets - before,
          });
      }
    });
  }, HOUSEKEEPING_MS);
  housekeeping.unref();
  emitAudit({ id: 5478, subcategory: 'IPsec Driver', success: true });
  log.info(
    {
      dataplane: kind,
      rules: service.policy.rules.length,
      routes: plane?.routeStats.routes,
      routeBatches: plane?.routeStats.batches,
    },
    'ready',
  );
  notifier.ready((lastStatus = statusLine()));
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      log.info({ signal }, 'stopping: deleting SAs at the peers');
      notifier.stopping();
      signals.stopping();
      control.close();
      applied.flush(appliedError);
      void agent?.close();
      follow?.close();
      clearInterval(housekeeping);
      keeper.close();
      metricsServer?.close();
      void service
        .stop()
        .then(() => {
          if (plane) log.info({ stats: plane.stats, clear: plane.clearPackets }, 'data plane stats');
          emitAudit({ id: 5479, subcategory: 'IPsec Driver', success: true });
          kernel?.close();
          return plane?.close();
        })
        .finally(() => {
          // Last: stopping still writes events (4655, 5452, 5479) to the debug log and the journal.
          unwatchDebugLog();
          debugLog.close();
          securityLog.close();
          lock.release();
          journal?.close();
          notifier.close();
          resolve();
        });
    };
    // SIGHUP (systemctl reload): the policy read again now; SAs the policy still allows stay up.
    // An unreadable store keeps the policy in force.
    const onHup = () => {
      notifier.reloading();
      try {
        service.reload(stores.read('ActiveStore'));
        log.info({ signal: 'SIGHUP' }, 'policy reloaded on request');
        emitAudit({ id: 5465, subcategory: 'Filtering Platform Policy Change', success: true });
      } catch (err) {
        log.error(
          { signal: 'SIGHUP', reason: (err as Error).message },
          'policy not reloaded: keeping the policy in force',
        );
        emitAudit({
          id: 5461,
          subcategory: 'Filtering Platform Policy Change',
          success: false,
          policy: stores.policyDir,
          errorCode: (err as Error).message,
        });
      }
    };
    signals.ready(stop, () => {
      onHup();
      notifier.ready(statusLine());
    });
  });
  log.info({}, 'stopped');
  return 0;
}
