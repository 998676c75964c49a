/**
 * An etcd v3 cluster for the lab's fleet (Debian's etcd-server): one member per lab host, TLS
 * between members and to clients with certificates of the lab CA (the client certificate's CN is
 * the etcd user, `--client-cert-auth`), data in a private directory removed with the lab. Members
 * can be killed and started again, as a fault injection.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LabPrerequisiteError, LabTimeoutError } from '../errors.ts';
import { which } from './exec.ts';
import type { Lab, LabProcess } from './lab.ts';
import type { LabPki } from './pki.ts';

export interface EtcdCredentials {
  /** PEM files of the lab CA and of a client certificate whose CN is the etcd user. */
  ca: string;
  cert: string;
  key: string;
}

interface Member {
  host: string;
  name: string;
  address: string;
  dataDir: string;
  proc?: LabProcess;
}

export class EtcdCluster {
  private constructor(
    private readonly lab: Lab,
    private readonly pki: LabPki,
    private readonly dir: string,
    private readonly members: Member[],
    private readonly argv: (m: Member) => string[],
  ) {}

  /** The client URLs of every member. */
  get endpoints(): string[] {
    return this.members.map((m) => `https://${m.address}:2379`);
  }

  /** Starts one member on each of `hosts` (a new cluster) and waits until it has a leader. */
  static async start(lab: Lab, hosts: string[], pki: LabPki): Promise<EtcdCluster> {
    for (const tool of ['etcd', 'etcdctl'])
      if (!which(tool))
        throw new LabPrerequisiteError(`${tool} not found: install Debian's etcd-server and etcd-client packages`);
    const dir = mkdtempSync(join(tmpdir(), 'consec-etcd-'));
    lab.adopt(dir);
    writeFileSync(join(dir, 'ca.pem'), pki.ca.certPem);
    const members: Member[] = hosts.map((host, i) => ({
      host,
      name: `m${i + 1}`,
      address: lab.address(host),
      dataDir: join(dir, `m${i + 1}.data`),
    }));
    for (const m of members) {
      const c = pki.issue(m.name, m.address, { spec: 'P-256', eku: 'serverAuth,clientAuth' });
      writeFileSync(join(dir, `${m.name}.pem`), c.certPem);
      writeFileSync(join(dir, `${m.name}.key`), c.keyPem, { mode: 0o600 });
    }
    const initial = members.map((m) => `${m.name}=https://${m.address}:2380`).join(',');
    const argv = (m: Member): string[] => {
      const cert = join(dir, `${m.name}.pem`);
      const key = join(dir, `${m.name}.key`);
      const ca = join(dir, 'ca.pem');
      return [
        'etcd',
        `--name=${m.name}`,
        `--data-dir=${m.dataDir}`,
        `--listen-client-urls=https://${m.address}:2379`,
        `--advertise-client-urls=https://${m.address}:2379`,
        `--listen-peer-urls=https://${m.address}:2380`,
        `--initial-advertise-peer-urls=https://${m.address}:2380`,
        `--initial-cluster=${initial}`,
        '--initial-cluster-state=new',
        `--initial-cluster-token=consec-lab-${lab.id}`,
        '--client-cert-auth',
        `--trusted-ca-file=${ca}`,
        `--cert-file=${cert}`,
        `--key-file=${key}`,
        '--peer-client-cert-auth',
        `--peer-trusted-ca-file=${ca}`,
        `--peer-cert-file=${cert}`,
        `--peer-key-file=${key}`,
        // Its own metrics, in plain HTTP on the member's address (the benchmark reads the request rate).
        `--listen-metrics-urls=http://${m.address}:2381`,
        '--logger=zap',
        '--log-outputs=stderr',
        '--heartbeat-interval=100',
        '--election-timeout=1000',
      ];
    };
    const cluster = new EtcdCluster(lab, pki, dir, members, argv);
    for (const m of members) cluster.launch(m);
    await cluster.healthy();
    return cluster;
  }

  private launch(m: Member): void {
    mkdirSync(m.dataDir, { recursive: true, mode: 0o700 });
    m.proc = this.lab.spawn(m.host, this.argv(m));
  }

  /** A client certificate for the etcd user `user` (its CN), as files in the cluster's directory. */
  credentials(user: string): EtcdCredentials {
    if (!/^[A-Za-z0-9_.@-]+$/.test(user)) throw new Error(`not a lab etcd user name: ${user}`);
    const c = this.pki.issue(user, '192.0.2.254', { spec: 'P-256', eku: 'clientAuth' });
    const cert = join(this.dir, `client-${user}.pem`);
    const key = join(this.dir, `client-${user}.key`);
    writeFileSync(cert, c.certPem);
    writeFileSync(key, c.keyPem, { mode: 0o600 });
    return { ca: join(this.dir, 'ca.pem'), cert, key };
  }

  /** etcdctl as `user` (root by default) from lab host `host`; its output (with its errors: `stderr`). */
  async etcdctl(
    args: string[],
    o: { host?: string; user?: string; allowFailure?: boolean; stderr?: boolean } = {},
  ): Promise<string> {
    const c = this.credentials(o.user ?? 'root');
    const r = await this.lab.exec(
      o.host ?? this.members[0]?.host ?? '',
      [
        'etcdctl',
        `--endpoints=${this.endpoints.join(',')}`,
        `--cacert=${c.ca}`,
        `--cert=${c.cert}`,
        `--key=${c.key}`,
        '--dial-timeout=3s',
        '--command-timeout=10s',
        ...args,
      ],
      { env: { ...process.env, ETCDCTL_API: '3' }, allowFailure: o.allowFailure },
    );
    return o.stderr ? r.stdout + r.stderr : r.stdout;
  }

  /**
   * Turns on etcd's access control, as a fleet runs: the user root (no password: it authenticates
   * with its certificate) and `admins` with the root role — the fleet's admins, who write GPOs, the
   * directory and hosts' roles. Every other certificate's CN is a user only once a role is made
   * for it (`consec fleet host` does that for hosts).
   */
  async enableAuth(admins: string[]): Promise<void> {
    for (const user of ['root', ...admins]) {
      await this.etcdctl(['user', 'add', user, '--no-password']);
      await this.etcdctl(['user', 'grant-role', user, 'root']);
    }
    await this.etcdctl(['auth', 'enable']);
  }

  /** Waits until every running member answers and the cluster has a leader (etcdctl exits 0 only then). */
  async healthy(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const c = this.credentials('root');
    let last = '';
    while (Date.now() < deadline) {
      const running = this.members.filter((m) => m.proc?.running);
      const r = await this.lab.exec(
        this.members[0]?.host ?? '',
        [
          'etcdctl',
          `--endpoints=${running.map((m) => `https://${m.address}:2379`).join(',')}`,
          `--cacert=${c.ca}`,
          `--cert=${c.cert}`,
          `--key=${c.key}`,
          '--dial-timeout=2s',
          '--command-timeout=3s',
          'endpoint',
          'health',
        ],
        { env: { ...process.env, ETCDCTL_API: '3' }, allowFailure: true },
      );
      last = r.stdout + r.stderr;
      if (running.length > 0 && r.code === 0) return;
      await new Promise((res) => setTimeout(res, 200));
    }
    throw new LabTimeoutError(`etcd cluster not healthy after ${timeoutMs} ms: ${last.slice(-1500)}`);
  }

  /** Kills a member (SIGKILL), as a crash. */
  async kill(host: string): Promise<void> {
    const m = this.members.find((x) => x.host === host);
    await m?.proc?.stop('SIGKILL', 2000);
  }

  /** Starts a killed member again (its data directory kept). */
  async restart(host: string): Promise<void> {
    if (!this.members.some((x) => x.host === host)) return;
    await this.resume();
  }

  /** Starts every stopped member again (their data kept) and waits for the cluster. */
  async resume(): Promise<void> {
    for (const m of this.members)
      if (!m.proc?.running)
        m.proc = this.lab.spawn(
          m.host,
          this.argv(m).map((a) => (a === '--initial-cluster-state=new' ? '--initial-cluster-state=existing' : a)),
        );
    await this.healthy();
  }

  /** Stops every member. */
  async stop(): Promise<void> {
    for (const m of this.members) await m.proc?.stop('SIGTERM', 5000);
  }

  /** Stops the cluster and removes its data. */
  async dispose(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
