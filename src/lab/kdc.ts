/**
 * The lab's domain controller: MIT Kerberos (`krb5-kdc`, Debian) for a realm such as CORP.EXAMPLE,
 * running in a lab host. Members get a computer account (`host/<fqdn>`) in their own keytab, as a
 * Windows domain join gives them; users get a password and can obtain a ticket (kinit) into a ccache.
 * Every file lives in one directory under /tmp owned by the lab; processes of a host find them
 * through the environment (KRB5_CONFIG, KRB5_KTNAME, KRB5_CLIENT_KTNAME, KRB5CCNAME) as every
 * Linux Kerberos tool does.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { LabCommandError } from '../errors.ts';
import { type RunOptions, type RunResult, run } from './exec.ts';
import { type Lab, LabProcess } from './lab.ts';

/** Where the KDC and the admin commands run: a lab host, or this host's loopback. */
interface KdcHost {
  address: string;
  exec(argv: readonly string[], o: RunOptions): Promise<RunResult>;
  spawn(argv: readonly string[], env: NodeJS.ProcessEnv): LabProcess;
  exec4(host: string, argv: readonly string[], o: RunOptions): Promise<RunResult>;
  /** Ends what the domain started outside a lab (a lab removes its own). */
  close(): void;
}

export interface DomainOptions {
  /** Kerberos realm (upper case), e.g. CORP.EXAMPLE. */
  realm?: string;
  /** The lab host that runs the KDC. */
  host?: string;
  /** Seconds of clock skew the realm tolerates (Kerberos' default is 300). */
  clockSkew?: number;
  /** The KDC's clock runs this many seconds ahead (krb5kdc -T): its tickets carry a skewed time. */
  clockOffsetSeconds?: number;
  /**
   * The domain controller also serves the domain's DNS zone (dnsmasq): every lab host's name, and
   * the KDC's SRV records. The other hosts resolve through it and find the KDC in DNS, as Windows
   * members find their domain controllers — so DNS becomes traffic a rule can lock out (seed 001).
   */
  dns?: boolean;
}

/** A member's Kerberos environment: what a process on that host needs to act as the computer. */
export interface MemberEnv {
  KRB5_CONFIG: string;
  KRB5_KTNAME: string;
  KRB5_CLIENT_KTNAME: string;
  KRB5CCNAME: string;
  [name: string]: string;
}

const REALM = /^[A-Z][A-Z0-9.-]{0,62}$/;
const NAME = /^[a-z][a-z0-9-]{0,31}$/;

export class LabDomain {
  private kdc: LabProcess | undefined;
  private dnsServer: LabProcess | undefined;

  private constructor(
    private readonly where: KdcHost,
    readonly realm: string,
    readonly host: string,
    readonly dir: string,
    private readonly clockSkew: number,
    private readonly port: number,
    private readonly clockOffset = 0,
    private readonly dns = false,
  ) {}

  /** The DNS domain of the realm (lower case). */
  get dnsDomain(): string {
    return this.realm.toLowerCase();
  }

  /** A host's fully qualified name in the domain. */
  fqdn(host: string): string {
    return `${host}.${this.dnsDomain}`;
  }

  /** The computer account of a lab host, as Windows names it in Kerberos. */
  computerPrincipal(host: string): string {
    return `host/${this.fqdn(host)}@${this.realm}`;
  }

  get krb5Conf(): string {
    return join(this.dir, 'krb5.conf');
  }

  keytab(host: string): string {
    return join(this.dir, `${host}.keytab`);
  }

  /** Creates the realm's database and starts the KDC on the lab host's address (UDP and TCP 88). */
  static async create(lab: Lab, o: DomainOptions = {}): Promise<LabDomain> {
    const host = o.host ?? 'dc';
    const dir = mkdtempSync('/tmp/consec-kdc-');
    lab.adopt(dir);
    const d = await LabDomain.start(
      {
        address: lab.address(host),
        exec: (argv, ro) => lab.exec(host, argv, ro),
        spawn: (argv, env) => lab.spawn(host, argv, { env }),
        exec4: (h, argv, ro) => lab.exec(h, argv, ro),
        close: () => {},
      },
      o,
      host,
      dir,
      88,
    );
    if (o.dns) await d.serveDns(lab);
    return d;
  }

  /** The zone on the domain controller (dnsmasq, Debian's dnsmasq-base); the other hosts use it. */
  private async serveDns(lab: Lab): Promise<void> {
    const records = lab.spec.hosts.flatMap((h) => {
      try {
        return [`--host-record=${this.fqdn(h.name)},${lab.address(h.name)}`];
      } catch {
        return []; // a host without an IPv4 address has no record
      }
    });
    this.dnsServer = this.where.spawn(
      [
        'dnsmasq',
        '--keep-in-foreground',
        '--log-facility=-',
        '--log-queries',
        '--conf-file=/dev/null',
        '--pid-file=',
        '--no-resolv',
        '--no-hosts',
        '--no-poll',
        '--bind-interfaces',
        `--listen-address=${this.where.address}`,
        `--local=/${this.dnsDomain}/`,
        `--domain=${this.dnsDomain}`,
        ...records,
        `--srv-host=_kerberos._udp.${this.dnsDomain},${this.fqdn(this.host)},88`,
        `--srv-host=_kerberos._tcp.${this.dnsDomain},${this.fqdn(this.host)},88`,
      ],
      process.env,
    );
    await this.dnsServer.waitFor(/started, version/, 10_000);
    for (const h of lab.spec.hosts) if (h.name !== this.host) lab.resolver(h.name, this.where.address, this.dnsDomain);
  }

  /** What the DNS server answered (dnsmasq's query log). */
  dnsLog(): string {
    return this.dnsServer?.output() ?? '';
  }

  /**
   * A realm whose KDC listens on this host's loopback (127.0.0.1, a free port above 20000), for
   * tests that run both Kerberos peers in one process. close() stops it and removes its files.
   */
  static async loopback(o: DomainOptions = {}): Promise<LabDomain> {
    const dir = mkdtempSync('/tmp/consec-kdc-');
    const started: LabProcess[] = [];
    const d = await LabDomain.start(
      {
        address: '127.0.0.1',
        exec: (argv, ro) => run(argv, ro),
        spawn: (argv, env) => {
          const [cmd = '', ...args] = argv;
          const p = new LabProcess(spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env }), cmd);
          started.push(p);
          return p;
        },
        exec4: (_h, argv, ro) => run(argv, ro),
        close: () => {
          for (const p of started) if (p.running && p.pid) process.kill(p.pid, 'SIGKILL');
          rmSync(dir, { recursive: true, force: true });
        },
      },
      o,
      'localhost',
      dir,
      20000 + Math.floor(Math.random() * 20000),
    );
    return d;
  }

  private static async start(where: KdcHost, o: DomainOptions, host: string, dir: string, port: number) {
    const realm = o.realm ?? 'CORP.EXAMPLE';
    if (!REALM.test(realm)) throw new LabCommandError(`bad realm ${JSON.stringify(realm)}`, null, '');
    const d = new LabDomain(where, realm, host, dir, o.clockSkew ?? 300, port, o.clockOffsetSeconds ?? 0, o.dns);
    d.writeConfig();
    // A random master password: the database is the lab's, thrown away with it.
    await d.admin(['kdb5_util', 'create', '-s', '-r', realm, '-P', randomBytes(18).toString('base64')]);
    try {
      await d.start();
    } catch (err) {
      where.close();
      throw err;
    }
    return d;
  }

  /** Stops a loopback KDC and removes its files (a lab's domain goes with the lab). */
  async close(): Promise<void> {
    await this.stop();
    this.where.close();
  }

  private writeConfig(): void {
    const kdcAddress = this.port === 88 ? this.where.address : `${this.where.address}:${this.port}`;
    writeFileSync(
      this.krb5Conf,
      [
        '[libdefaults]',
        `  default_realm = ${this.realm}`,
        // With the lab's DNS the KDC is found by its SRV records, as a Windows member finds its DC.
        `  dns_lookup_kdc = ${this.dns}`,
        '  dns_lookup_realm = false',
        '  rdns = false',
        '  dns_canonicalize_hostname = false',
        `  clockskew = ${this.clockSkew}`,
        // Users' tickets in the realm's directory, not in the machine's /tmp (the daemons read them
        // from here for Extended Mode, as from /tmp/krb5cc_<uid> on a real host).
        `  default_ccache_name = FILE:${join(this.dir, 'krb5cc_%{uid}')}`,
        // A KDC that does not answer is given up after 5 s (MIT's request_timeout), not ~30 s.
        '  request_timeout = 5',
        '',
        ...(this.dns ? [] : ['[realms]', `  ${this.realm} = {`, `    kdc = ${kdcAddress}`, '  }', '']),
        '[domain_realm]',
        `  .${this.dnsDomain} = ${this.realm}`,
        `  ${this.dnsDomain} = ${this.realm}`,
        '',
      ].join('\n'),
      { mode: 0o644 },
    );
    writeFileSync(
      join(this.dir, 'kdc.conf'),
      [
        '[kdcdefaults]',
        `  kdc_listen = ${this.port === 88 ? '88' : `127.0.0.1:${this.port}`}`,
        `  kdc_tcp_listen = ${this.port === 88 ? '88' : `127.0.0.1:${this.port}`}`,
        '',
        '[realms]',
        `  ${this.realm} = {`,
        `    database_name = ${join(this.dir, 'principal')}`,
        `    key_stash_file = ${join(this.dir, 'stash')}`,
        `    acl_file = ${join(this.dir, 'kadm5.acl')}`,
        '    max_life = 10h 0m 0s',
        '    supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal',
        '  }',
        '',
        '[logging]',
        `  kdc = FILE:${join(this.dir, 'kdc.log')}`,
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    writeFileSync(join(this.dir, 'kadm5.acl'), '', { mode: 0o600 });
  }

  private get adminEnv(): NodeJS.ProcessEnv {
    return { ...process.env, KRB5_CONFIG: this.krb5Conf, KRB5_KDC_PROFILE: join(this.dir, 'kdc.conf') };
  }

  /** Runs a realm administration command (kdb5_util, kadmin.local) on the domain controller. */
  private async admin(argv: string[]): Promise<string> {
    const r = await this.where.exec(argv, { env: this.adminEnv, allowFailure: true });
    if (r.code !== 0)
      throw new LabCommandError(`${argv[0]} failed (${r.code}): ${r.stderr || r.stdout}`, r.code, r.stderr);
    return r.stdout;
  }

  private kadmin(query: string): Promise<string> {
    return this.admin(['kadmin.local', '-r', this.realm, '-q', query]);
  }

  /** Starts (or restarts) the KDC; resolves when it serves. */
  async start(): Promise<void> {
    if (this.kdc?.running) return;
    const offset = this.clockOffset ? ['-T', String(this.clockOffset)] : [];
    this.kdc = this.where.spawn(['krb5kdc', '-n', '-r', this.realm, ...offset], this.adminEnv);
    // krb5kdc logs to its file, not to stdout: its socket says it serves.
    await this.waitListening();
  }

  private async waitListening(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = await this.where.exec(['ss', '-Hlnu', `sport = :${this.port}`], { allowFailure: true });
      if (r.stdout.trim() !== '') return;
      if (!this.kdc?.running) throw new LabCommandError(`krb5kdc exited: ${this.kdc?.output().slice(-1000)}`, null, '');
      if (Date.now() > deadline) throw new LabCommandError('krb5kdc not listening on port 88', null, '');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Stops the KDC (a domain controller that is down). */
  async stop(): Promise<void> {
    await this.kdc?.stop('SIGTERM', 3000);
    this.kdc = undefined;
  }

  /** Joins a lab host: its computer account with a random key, exported to the host's keytab. */
  async join(host: string): Promise<MemberEnv> {
    if (!NAME.test(host)) throw new LabCommandError(`bad host name ${JSON.stringify(host)}`, null, '');
    const principal = this.computerPrincipal(host);
    await this.kadmin(`addprinc -randkey ${principal}`);
    await this.kadmin(`ktadd -k ${this.keytab(host)} ${principal}`);
    return this.env(host);
  }

  /** A second key for a member's account: the keytab the host holds no longer matches the KDC's. */
  async rekeyAccount(host: string): Promise<void> {
    await this.kadmin(`cpw -randkey ${this.computerPrincipal(host)}`);
  }

  /** A domain user with a password. */
  async addUser(name: string, password: string): Promise<string> {
    if (!NAME.test(name)) throw new LabCommandError(`bad user name ${JSON.stringify(name)}`, null, '');
    const principal = `${name}@${this.realm}`;
    await this.kadmin(`addprinc -pw ${password} ${principal}`);
    return principal;
  }

  /** Where user `uid`'s tickets are in this realm (krb5.conf's default_ccache_name). */
  userCcache(uid: number): string {
    return join(this.dir, `krb5cc_${uid}`);
  }

  /** A user's ticket-granting ticket, obtained on `host` into `ccache` (kinit with the password). */
  async kinit(host: string, user: string, password: string, ccache: string): Promise<void> {
    const r = await this.where.exec4(host, ['kinit', '-c', ccache, `${user}@${this.realm}`], {
      env: { ...process.env, KRB5_CONFIG: this.krb5Conf },
      input: `${password}\n`,
      allowFailure: true,
    });
    if (r.code !== 0) throw new LabCommandError(`kinit ${user} failed: ${r.stderr}`, r.code, r.stderr);
  }

  /** The Kerberos environment of a member host's processes (its keytab, a private credential cache). */
  env(host: string): MemberEnv {
    const keytab = `FILE:${this.keytab(host)}`;
    return {
      KRB5_CONFIG: this.krb5Conf,
      KRB5_KTNAME: keytab,
      KRB5_CLIENT_KTNAME: keytab,
      KRB5CCNAME: `FILE:${join(this.dir, `${host}.ccache`)}`,
    };
  }

  /** The KDC's log (AS and TGS requests, errors). */
  log(): string {
    return existsSync(join(this.dir, 'kdc.log')) ? readFileSync(join(this.dir, 'kdc.log'), 'utf8') : '';
  }
}
