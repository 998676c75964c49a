/**
 * The network-namespace lab: named hosts (one namespace each) joined by veth pairs with TEST-NET
 * addresses, commands run inside a host, background processes tracked, and everything torn down on
 * success, failure, Ctrl-C and process exit. A crashed run's leftovers are found by their state
 * files (owner PID gone) and removed by the next run.
 *
 * Nothing here touches the host's own interfaces: veth pairs are created directly inside their
 * namespaces, and only namespaces named with NS_PREFIX and recorded as ours are ever deleted.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LabCommandError, LabTimeoutError } from '../errors.ts';
import { parsePrefix } from '../io/addr.ts';
import { killGroup, type RunOptions, type RunResult, requireLabPrerequisites, run, runSync } from './exec.ts';
import { hostAddress, type TopologySpec, validateTopology } from './topology.ts';

export const LAB_STATE_DIR = process.env.CONSEC_LAB_STATE_DIR ?? '/run/consec/lab';
export const NS_PREFIX = 'csl-';

interface LabState {
  id: string;
  ownerPid: number;
  ownerStart: string;
  topology: string;
  namespaces: string[];
  /** Directories the lab owns (guests' shared directories), removed with it. */
  paths?: string[];
}

/** A process started inside a lab host, in its own process group. */
export class LabProcess {
  private out = '';
  private readonly waiters = new Set<() => void>();
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    readonly child: ChildProcess,
    readonly label: string,
  ) {
    const append = (d: string): void => {
      this.out += d;
      if (this.out.length > 4_000_000) this.out = this.out.slice(-2_000_000);
      for (const w of this.waiters) w();
    };
    child.stdout?.setEncoding('utf8').on('data', append);
    child.stderr?.setEncoding('utf8').on('data', append);
    this.exited = new Promise((resolve) => {
      child.on('close', (code, signal) => {
        for (const w of this.waiters) w();
        resolve({ code, signal });
      });
      child.on('error', (err) => {
        append(`\n[spawn error] ${err.message}\n`);
        resolve({ code: null, signal: null });
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Everything the process has printed so far (stdout and stderr interleaved). */
  output(): string {
    return this.out;
  }

  /** Resolves when the output matches `pattern`; rejects on timeout or if the process exits first. */
  waitFor(pattern: RegExp, timeoutMs = 10_000): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const m = this.out.match(pattern);
        if (m) {
          done();
          resolve(m);
        } else if (!this.running) {
          done();
          reject(
            new LabCommandError(
              `${this.label} exited before printing ${pattern}: ${this.out.slice(-1000)}`,
              this.child.exitCode,
              this.out.slice(-4000),
            ),
          );
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new LabTimeoutError(
            `${this.label}: ${pattern} not seen within ${timeoutMs} ms; output: ${this.out.slice(-2000)}`,
          ),
        );
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  /** Sends `signal` to the process group, then SIGKILL after `graceMs`; resolves when it has exited. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', graceMs = 3000): Promise<void> {
    if (!this.running) return;
    killGroup(this.child, signal);
    const timer = setTimeout(() => killGroup(this.child, 'SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
}

export class Lab {
  private readonly processes = new Set<LabProcess>();
  private readonly paths = new Set<string>();
  private destroyed = false;

  private constructor(
    readonly id: string,
    readonly spec: TopologySpec,
  ) {}

  /**
   * Builds the topology. Cleans up stale labs of crashed runs first. On any failure everything
   * created so far is removed before the error is rethrown.
   */
  static async create(spec: TopologySpec): Promise<Lab> {
    validateTopology(spec);
    const needsNft = spec.hosts.some((h) => h.masqueradeOut !== undefined);
    requireLabPrerequisites(needsNft ? ['ip', 'nft'] : ['ip']);
    await Lab.cleanupStale();
    const lab = new Lab(randomBytes(3).toString('hex'), spec);
    lab.writeState();
    liveLabs.add(lab);
    installExitHandlers();
    try {
      await lab.build();
    } catch (err) {
      await lab.destroy();
      throw err;
    }
    return lab;
  }

  /** The namespace name of `host`. */
  ns(host: string): string {
    if (!this.spec.hosts.some((h) => h.name === host))
      throw new LabCommandError(`no host ${host} in lab ${this.spec.name}`, null, '');
    return `${NS_PREFIX}${this.id}-${host}`;
  }

  get namespaces(): string[] {
    return this.spec.hosts.map((h) => `${NS_PREFIX}${this.id}-${h.name}`);
  }

  /** A host's address of the given family (the first one, or the one on `ifName`). */
  address(host: string, family: 4 | 6 = 4, ifName?: string): string {
    return hostAddress(this.spec, host, family, ifName);
  }

  /** Runs argv inside `host` to completion. */
  exec(host: string, argv: readonly string[], options?: RunOptions): Promise<RunResult> {
    return run(['ip', 'netns', 'exec', this.ns(host), ...argv], options);
  }

  /** Starts argv inside `host` in the background; it is stopped by destroy() at the latest. */
  spawn(host: string, argv: readonly string[], options: SpawnOptions = {}): LabProcess {
    const child = spawn('ip', ['netns', 'exec', this.ns(host), ...argv], {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      env: options.env ?? process.env,
    });
    const proc = new LabProcess(child, `${host}: ${argv.join(' ')}`);
    this.processes.add(proc);
    void proc.exited.then(() => this.processes.delete(proc));
    return proc;
  }

  /** Makes `path` (a directory under /tmp) the lab's: removed on teardown, also after a crash. */
  adopt(path: string): void {
    if (!path.startsWith('/tmp/consec-')) throw new LabCommandError(`lab refuses to own ${path}`, null, '');
    this.paths.add(path);
    this.writeState();
  }

  /**
   * The DNS server `host`'s processes use: /etc/netns/<namespace>/resolv.conf, which `ip netns exec`
   * puts in place of /etc/resolv.conf inside the namespace (ip-netns(8)). Removed with the lab. A
   * query unanswered is given up after 1 s (twice), not glibc's 5 s.
   */
  resolver(host: string, nameserver: string, search?: string): void {
    const dir = join('/etc/netns', this.ns(host));
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    this.paths.add(dir);
    this.writeState();
    writeFileSync(
      join(dir, 'resolv.conf'),
      `${search ? `search ${search}\n` : ''}nameserver ${nameserver}\noptions timeout:1 attempts:2\n`,
      {
        mode: 0o644,
      },
    );
  }

  /** Stops every process, then deletes every namespace (killing whatever still runs inside). */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    await Promise.all([...this.processes].map((p) => p.stop('SIGTERM', 2000)));
    this.destroySync();
  }

  /** Synchronous teardown for signal and exit handlers. Idempotent; never throws. */
  destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const p of this.processes) killGroup(p.child, 'SIGKILL');
    removeNamespaces(this.namespaces);
    removePaths([...this.paths]);
    rmSync(join(LAB_STATE_DIR, `${this.id}.json`), { force: true });
    liveLabs.delete(this);
  }

  /** Removes labs whose owning process is gone (crashed runs) and unrecorded csl- namespaces. */
  static async cleanupStale(): Promise<string[]> {
    const removed: string[] = [];
    const liveNamespaces = new Set<string>();
    let files: string[] = [];
    try {
      files = readdirSync(LAB_STATE_DIR).filter((f) => f.endsWith('.json'));
    } catch {
      /* no state yet */
    }
    for (const f of files) {
      const path = join(LAB_STATE_DIR, f);
      let state: LabState;
      try {
        state = JSON.parse(readFileSync(path, 'utf8')) as LabState;
      } catch {
        rmSync(path, { force: true });
        continue;
      }
      if (processStart(state.ownerPid) === state.ownerStart) {
        for (const n of state.namespaces) liveNamespaces.add(n);
        continue;
      }
      removed.push(...removeNamespaces(state.namespaces));
      removePaths(state.paths ?? []);
      rmSync(path, { force: true });
    }
    // Namespaces of ours with no state file at all (state removed by hand, or a partial crash).
    const listed = runSync(['ip', 'netns', 'list']).stdout;
    const orphans = listed
      .split('\n')
      .map((l) => l.split(' ')[0] ?? '')
      .filter((n) => n.startsWith(NS_PREFIX) && !liveNamespaces.has(n));
    removed.push(...removeNamespaces(orphans));
    // Their resolver entries too, and those left by namespaces already gone.
    let entries: string[] = [];
    try {
      entries = readdirSync('/etc/netns').filter((n) => n.startsWith(NS_PREFIX) && !liveNamespaces.has(n));
    } catch {
      /* no /etc/netns */
    }
    removePaths(entries.map((n) => join('/etc/netns', n)));
    return removed;
  }

  private writeState(): void {
    mkdirSync(LAB_STATE_DIR, { recursive: true, mode: 0o700 });
    const state: LabState = {
      id: this.id,
      ownerPid: process.pid,
      ownerStart: processStart(process.pid) ?? '',
      topology: this.spec.name,
      namespaces: this.namespaces,
      paths: [...this.paths],
    };
    const path = join(LAB_STATE_DIR, `${this.id}.json`);
    writeFileSync(`${path}.tmp`, JSON.stringify(state));
    renameSync(`${path}.tmp`, path);
  }

  /**
   * Waits until every veth reports operstate UP. The kernel activates a link's queue (linkwatch)
   * some milliseconds after "link set up"; packets sent before that are silently dropped, which shows
   * up as a lost first IPv6 ping.
   */
  private async waitLinksUp(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const pending = new Set(this.spec.links.flatMap((l) => [l.a, l.b]).map((i) => `${i.host}/${i.name}`));
    while (pending.size > 0) {
      for (const key of [...pending]) {
        const [host = '', name = ''] = key.split('/');
        const { stdout } = await run(['ip', '-n', this.ns(host), '-o', 'link', 'show', 'dev', name]);
        if (/ state UP /.test(stdout)) pending.delete(key);
      }
      if (pending.size === 0) break;
      if (Date.now() > deadline)
        throw new LabTimeoutError(`links not up after ${timeoutMs} ms: ${[...pending].join(', ')}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  private async build(): Promise<void> {
    const ip = (...args: string[]): Promise<RunResult> => run(['ip', ...args]);
    for (const h of this.spec.hosts) {
      const ns = this.ns(h.name);
      await ip('netns', 'add', ns);
      await ip('-n', ns, 'link', 'set', 'lo', 'up');
      const sysctls = ['net/ipv6/conf/all/accept_dad=0', 'net/ipv6/conf/default/accept_dad=0'];
      if (h.forwarding) sysctls.push('net/ipv4/ip_forward=1', 'net/ipv6/conf/all/forwarding=1');
      const script = sysctls
        .map((s) => {
          const [k, v] = s.split('=');
          return `echo ${v} > /proc/sys/${k}`;
        })
        .join(' && ');
      await this.exec(h.name, ['sh', '-c', script]);
    }
    for (const l of this.spec.links) {
      const args = ['link', 'add', 'name', l.a.name, 'netns', this.ns(l.a.host)];
      if (l.mtu) args.push('mtu', String(l.mtu));
      args.push('type', 'veth', 'peer', 'name', l.b.name, 'netns', this.ns(l.b.host));
      if (l.mtu) args.push('mtu', String(l.mtu));
      await ip(...args);
      for (const i of [l.a, l.b]) {
        const ns = this.ns(i.host);
        for (const a of i.addresses) {
          const extra = parsePrefix(a).family === 6 ? ['nodad'] : [];
          await ip('-n', ns, 'addr', 'add', a, 'dev', i.name, ...extra);
        }
        await ip('-n', ns, 'link', 'set', i.name, 'up');
      }
    }
    for (const h of this.spec.hosts) {
      if (!h.bridge) continue;
      const ns = this.ns(h.name);
      await ip('-n', ns, 'link', 'add', 'br0', 'type', 'bridge');
      for (const l of this.spec.links)
        for (const i of [l.a, l.b]) if (i.host === h.name) await ip('-n', ns, 'link', 'set', i.name, 'master', 'br0');
      await ip('-n', ns, 'link', 'set', 'br0', 'up');
    }
    await this.waitLinksUp();
    for (const r of this.spec.routes ?? []) {
      const fam = r.to === 'default6' || (r.to !== 'default' && parsePrefix(r.to).family === 6) ? '-6' : '-4';
      await ip(fam, '-n', this.ns(r.host), 'route', 'add', r.to.startsWith('default') ? 'default' : r.to, 'via', r.via);
    }
    for (const h of this.spec.hosts) {
      if (h.masqueradeOut === undefined) continue;
      const rules = [
        'table inet consec_lab_nat {',
        '  chain postrouting {',
        '    type nat hook postrouting priority srcnat; policy accept;',
        `    oifname "${h.masqueradeOut}" masquerade`,
        '  }',
        '}',
      ].join('\n');
      await this.exec(h.name, ['nft', '-f', '-'], { input: `${rules}\n` });
    }
  }
}

/** Kills what runs in each namespace (they are ours: we created them) and deletes it. */
function removeNamespaces(names: readonly string[]): string[] {
  const removed: string[] = [];
  for (const ns of names) {
    if (!ns.startsWith(NS_PREFIX)) continue;
    const pids = runSync(['ip', 'netns', 'pids', ns]);
    if (pids.code !== 0) continue; // does not exist (any more)
    for (const pid of pids.stdout.split(/\s+/).filter(Boolean).map(Number)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone already */
      }
    }
    if (runSync(['ip', 'netns', 'del', ns]).code === 0) removed.push(ns);
  }
  return removed;
}

/** Removes lab-owned temporary directories (only ever under /tmp/consec-). */
/** Removes the lab's own files: its /tmp/consec-* directories and its namespaces' /etc/netns entries. */
function removePaths(paths: readonly string[]): void {
  for (const p of paths)
    if ((p.startsWith('/tmp/consec-') || p.startsWith(`/etc/netns/${NS_PREFIX}`)) && !p.includes('..'))
      rmSync(p, { recursive: true, force: true });
  // ip-netns' directory goes too once no namespace has an entry in it (it is created on demand).
  if (paths.some((p) => p.startsWith('/etc/netns/')))
    try {
      rmdirSync('/etc/netns');
    } catch {
      // other namespaces' entries remain
    }
}

/** The start time of `pid` (field 22 of /proc/PID/stat), or undefined if it does not exist. */
function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

// Process-wide by nature: signals and exit belong to the process, so the labs it owns are tracked here.
const liveLabs = new Set<Lab>();
let handlersInstalled = false;

function installExitHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  const teardownAll = (): void => {
    for (const lab of [...liveLabs]) lab.destroySync();
  };
  process.on('exit', teardownAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      teardownAll();
      process.exitCode = 128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1);
      process.kill(process.pid, sig);
    });
  }
}
