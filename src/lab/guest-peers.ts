/**
 * IKE daemons inside User-Mode Linux guests, with the guest kernel's own XFRM/ESP/AH data plane:
 * strongSwan's charon (kernel-netlink, transport and tunnel mode, raw ESP, AH) and libreswan's pluto.
 * Both are configured from TypeScript objects (rendered injection-safe) and driven through the
 * guest's exec channel.
 */
import { cpSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { PeerError } from '../errors.ts';
import { type CharonConfig, charonFileLog, parseListSas, renderConf, swanctlConf, type VsaIke } from './strongswan.ts';
import { type Guest, shellQuote } from './uml.ts';

const GUEST_PLUGINS =
  'random nonce openssl aes sha1 sha2 hmac gcm kdf pem pkcs1 pkcs8 x509 pubkey kernel-netlink socket-default vici';

/** charon in a guest. */
export class GuestCharon {
  private constructor(readonly guest: Guest) {}

  static async start(guest: Guest, config: CharonConfig): Promise<GuestCharon> {
    if (guest.kind !== 'strongswan') throw new PeerError(`guest ${guest.host} has no strongSwan (it is ${guest.kind})`);
    const conf = renderConf({
      charon: {
        load_modular: false,
        load: GUEST_PLUGINS,
        install_virtual_ip: false,
        filelog: charonFileLog('/var/log/charon.log', config.logLevel ?? 1),
        syslog: { daemon: { default: -1 } },
        // The guest has little entropy at boot: /dev/random would stall charon for seconds.
        plugins: { random: { random: '/dev/urandom', urandom: '/dev/urandom' } },
      },
    });
    await guest.writeFile('/etc/strongswan.conf', conf);
    await guest.sh('rm -rf /etc/swanctl/x509 /etc/swanctl/x509ca /etc/swanctl/private; mkdir -p /etc/swanctl');
    await guest.writeFile('/etc/swanctl/swanctl.conf', swanctlConf(config), 0o600);
    for (const [sub, files] of Object.entries(config.files ?? {})) {
      for (const [name, pem] of Object.entries(files)) {
        await guest.writeFile(`/etc/swanctl/${sub}/${name}`, pem, 0o600);
      }
    }
    await guest.sh(': > /var/log/charon.log; mkdir -p /var/run; /usr/lib/ipsec/charon > /var/log/charon.out 2>&1 &');
    const peer = new GuestCharon(guest);
    const ready = await guest.sh(
      'for i in $(seq 1 300); do swanctl --stats > /dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1',
      { allowFailure: true, timeoutMs: 45_000 },
    );
    if (ready.code !== 0) {
      throw new PeerError(`charon in guest ${guest.host} did not open vici: ${await peer.log()}`);
    }
    await peer.swanctl(['--load-all', '--noprompt']);
    return peer;
  }

  async swanctl(args: readonly string[], timeoutMs = 30_000): Promise<string> {
    return (await this.guest.exec(['swanctl', ...args], { timeoutMs })).stdout;
  }

  async initiate(child: string, timeoutSec = 15): Promise<void> {
    const r = await this.guest.exec(['swanctl', '--initiate', '--child', child, '--timeout', String(timeoutSec)], {
      allowFailure: true,
      timeoutMs: (timeoutSec + 10) * 1000,
    });
    if (r.code !== 0) {
      throw new PeerError(
        `strongSwan (guest ${this.guest.host}) could not initiate ${child}: ${r.stdout.slice(-2000)}`,
      );
    }
  }

  async listSas(): Promise<VsaIke[]> {
    return parseListSas(await this.swanctl(['--list-sas', '--raw', '--noblock']));
  }

  async log(): Promise<string> {
    return (await this.guest.sh('cat /var/log/charon.out /var/log/charon.log', { allowFailure: true })).stdout;
  }

  /** Stops charon (it deletes its SAs at the peer) and flushes the guest's XFRM state and policy. */
  async stop(): Promise<void> {
    await this.guest.sh(
      'pkill -TERM -x charon; for i in $(seq 1 50); do pgrep -x charon > /dev/null || break; sleep 0.1; done; pkill -KILL -x charon; ip xfrm state flush; ip xfrm policy flush',
      { allowFailure: true },
    );
  }
}

export interface PlutoConn {
  /** `transport` or `tunnel`. */
  type: 'transport' | 'tunnel';
  left: string;
  right: string;
  leftsubnet?: string;
  rightsubnet?: string;
  authby: 'secret' | 'rsasig' | 'ecdsa';
  /** IKEv2 (default) or IKEv1. */
  ikev2?: boolean;
  /** Algorithms in libreswan syntax: `aes256-sha2_256;dh19`, `aes_gcm256`. */
  ike?: string;
  esp?: string;
  /** `yes` to encapsulate in UDP even without NAT. */
  encapsulation?: 'yes' | 'no' | 'auto';
  /** Identities (e.g. `%fromcert`, `@bob`, an address). */
  leftid?: string;
  rightid?: string;
  /** NSS nickname of our certificate (certificate authentication). */
  leftcert?: string;
  auto?: 'add' | 'start' | 'ondemand';
  phase2?: 'esp' | 'ah';
  /** Perfect forward secrecy in Quick Mode / CREATE_CHILD_SA (libreswan's default: yes). */
  pfs?: 'yes' | 'no';
}

export interface PlutoConfig {
  conns: Record<string, PlutoConn>;
  /** ipsec.secrets lines' content: `{ ids, psk }`. */
  psks?: { ids: string[]; secret: string }[];
  /** Certificates for NSS: a PKCS#12 bundle (base64) with our key, and the CA to trust. */
  pkcs12?: { base64: string; password: string };
  caPem?: string;
}

const PLUTO_VALUE = /^[A-Za-z0-9_@%:,./;=+ -]+$/;

function ipsecConf(config: PlutoConfig): string {
  const lines = ['config setup', '    logfile=/var/log/pluto.log', '    logappend=no', '    ikev1-policy=accept', ''];
  for (const [name, conn] of Object.entries(config.conns)) {
    if (!/^[A-Za-z][A-Za-z0-9_-]*$/.test(name))
      throw new PeerError(`invalid libreswan conn name ${JSON.stringify(name)}`);
    lines.push(`conn ${name}`);
    const { ikev2, ...rest } = conn;
    const entries: [string, string | undefined][] = [
      ...Object.entries(rest).map(
        ([k, v]) => [k, v === undefined ? undefined : String(v)] as [string, string | undefined],
      ),
      ['ikev2', ikev2 === false ? 'no' : 'yes'],
    ];
    for (const [k, v] of entries) {
      if (v === undefined) continue;
      if (!PLUTO_VALUE.test(v)) throw new PeerError(`invalid libreswan value for ${k}`);
      lines.push(`    ${k}=${v}`);
    }
    lines.push('');
  }
  return `${lines.join('\n')}\n`;
}

/** libreswan's pluto in a guest. */
export class GuestPluto {
  private constructor(
    readonly guest: Guest,
    private readonly conns: string[],
  ) {}

  static async start(guest: Guest, config: PlutoConfig): Promise<GuestPluto> {
    if (guest.kind !== 'libreswan') throw new PeerError(`guest ${guest.host} has no libreswan (it is ${guest.kind})`);
    await guest.writeFile('/etc/ipsec.conf', ipsecConf(config));
    const secrets = (config.psks ?? []).map((p) => {
      if (/["\n\\]/.test(p.secret))
        throw new PeerError('a libreswan PSK may not contain quotes, backslashes or newlines');
      return `${p.ids.map(shellQuote).join(' ')} : PSK "${p.secret}"`;
    });
    await guest.writeFile('/etc/ipsec.secrets', `${secrets.join('\n')}\n`, 0o600);
    await guest.sh('rm -rf /var/lib/ipsec/nss && mkdir -p /var/lib/ipsec/nss /run/pluto && ipsec initnss > /dev/null');
    if (config.caPem) {
      await guest.writeFile('/tmp/ca.pem', config.caPem);
      await guest.sh('certutil -A -d sql:/var/lib/ipsec/nss -n labca -t "CT,," -a -i /tmp/ca.pem');
    }
    if (config.pkcs12) {
      await guest.writeFile('/tmp/self.p12.b64', config.pkcs12.base64, 0o600);
      await guest.sh(
        `base64 -d /tmp/self.p12.b64 > /tmp/self.p12 && pk12util -i /tmp/self.p12 -d sql:/var/lib/ipsec/nss -W ${shellQuote(config.pkcs12.password)} && rm -f /tmp/self.p12 /tmp/self.p12.b64`,
      );
    }
    await guest.sh(': > /var/log/pluto.log; ipsec pluto --config /etc/ipsec.conf');
    const ready = await guest.sh(
      'for i in $(seq 1 100); do ipsec whack --status > /dev/null 2>&1 && exit 0; sleep 0.1; done; exit 1',
      { allowFailure: true },
    );
    const peer = new GuestPluto(guest, Object.keys(config.conns));
    if (ready.code !== 0) throw new PeerError(`pluto in guest ${guest.host} did not start: ${await peer.log()}`);
    for (const name of peer.conns) await guest.exec(['ipsec', 'auto', '--add', name]);
    await guest.sh('ipsec auto --rereadsecrets');
    return peer;
  }

  async up(conn: string): Promise<void> {
    const r = await this.guest.exec(['ipsec', 'auto', '--up', conn], { allowFailure: true, timeoutMs: 40_000 });
    if (r.code !== 0)
      throw new PeerError(`libreswan (guest ${this.guest.host}) could not bring up ${conn}: ${r.stdout.slice(-2000)}`);
  }

  async trafficStatus(): Promise<string> {
    return (await this.guest.exec(['ipsec', 'whack', '--trafficstatus'], { allowFailure: true })).stdout;
  }

  async log(): Promise<string> {
    return (await this.guest.sh('cat /var/log/pluto.log', { allowFailure: true })).stdout;
  }

  async stop(): Promise<void> {
    await this.guest.sh(
      'ipsec whack --shutdown > /dev/null 2>&1; for i in $(seq 1 50); do pgrep -x pluto > /dev/null || break; sleep 0.1; done; pkill -KILL -x pluto; ip xfrm state flush; ip xfrm policy flush',
      { allowFailure: true },
    );
  }
}

/** Whether `root`'s compiled tree (dist/, `tsc -p tsconfig.build.json`) is newer than every source file. */
function builtEntry(root: string): boolean {
  let built: number;
  try {
    built = statSync(join(root, 'dist', 'cli', 'main.js')).mtimeMs;
  } catch {
    return false;
  }
  const newer = (dir: string): boolean =>
    readdirSync(dir, { withFileTypes: true }).some((d) =>
      d.isDirectory() ? newer(join(dir, d.name)) : statSync(join(dir, d.name)).mtimeMs > built,
    );
  return !newer(join(root, 'src'));
}

/**
 * consec itself in a guest, on the guest kernel's XFRM (the kernel data plane): this machine's Node
 * and consec's source tree are mounted read-only into the guest over hostfs (`/consec/node`,
 * `/consec/src`), the policy written on the host is copied into the guest's own state directory
 * (`/var/lib/consec`; hostfs has no flock), and the daemon's log is a file the host reads.
 */
export class GuestConsec {
  private constructor(
    readonly guest: Guest,
    private readonly argv: string,
  ) {}

  /** The guest's state directory. */
  static readonly STATE_DIR = '/var/lib/consec';

  /** Mounts Node and the source tree (once per guest; `persist`: also at every boot, through /etc/fstab). */
  static async mount(guest: Guest, root: string, nodeBinary: string, persist = false): Promise<string> {
    if (!/^[A-Za-z0-9_./-]+$/.test(root) || !/^[A-Za-z0-9_./-]+$/.test(nodeBinary))
      throw new PeerError('consec and Node must be at plain paths to be mounted into a guest');
    const nodeDir = dirname(nodeBinary);
    await guest.sh(
      [
        'mkdir -p /consec/node /consec/src',
        `mountpoint -q /consec/node || mount -t hostfs -o ro,${nodeDir} none /consec/node`,
        `mountpoint -q /consec/src || mount -t hostfs -o ro,${root} none /consec/src`,
        ...(persist
          ? [
              `grep -q ' /consec/src ' /etc/fstab || printf 'none /consec/node hostfs ro,${nodeDir} 0 0\\nnone /consec/src hostfs ro,${root} 0 0\\n' >> /etc/fstab`,
            ]
          : []),
      ].join(' && '),
    );
    // The compiled tree when it is current: transpiling the sources at every start (tsx, its cache in
    // the guest's fresh /tmp) costs a guest more than the command itself.
    const node = `/consec/node/${shellQuote(basename(nodeBinary))}`;
    const entry = builtEntry(root) ? '/consec/src/dist/cli/main.js' : '--import tsx /consec/src/src/cli/main.ts';
    return `${node} ${entry} --state-dir ${GuestConsec.STATE_DIR}`;
  }

  /**
   * Starts `consec daemon` in the guest with the policy of the host directory `stateDir` (copied in);
   * its output goes to `<guest dir>/consec.log`.
   */
  static async start(
    guest: Guest,
    o: { root: string; node: string; stateDir: string; args?: string[] },
  ): Promise<GuestConsec> {
    const c = await GuestConsec.prepare(guest, o);
    await c.launch(o.args ?? []);
    return c;
  }

  /**
   * Mounts consec into the guest and copies the policy of `stateDir` into the guest's state
   * directory, without starting anything (`persist`: the mounts come back at every boot).
   */
  static async prepare(
    guest: Guest,
    o: { root: string; node: string; stateDir: string; persist?: boolean },
  ): Promise<GuestConsec> {
    const argv = await GuestConsec.mount(guest, o.root, o.node, o.persist);
    const copy = `/host/state-${basename(o.stateDir)}`;
    cpSync(o.stateDir, join(guest.dir, basename(copy)), { recursive: true });
    await guest.sh(
      `rm -rf ${GuestConsec.STATE_DIR} && cp -a ${copy} ${GuestConsec.STATE_DIR} && chown -R root:root ${GuestConsec.STATE_DIR} && chmod 700 ${GuestConsec.STATE_DIR}`,
    );
    return new GuestConsec(guest, argv);
  }

  /** Runs a consec command in the guest (`consec <args>` with the guest's state directory). */
  async cli(args: string[]): Promise<{ stdout: string; code: number }> {
    return this.guest.sh(`cd /consec/src && ${this.argv} ${args.map(shellQuote).join(' ')}`, {
      allowFailure: true,
      timeoutMs: 120_000,
    });
  }

  /** (Re)starts the daemon with the state already in the guest. */
  async launch(args: string[]): Promise<void> {
    writeFileSync(join(this.guest.dir, 'consec.log'), '');
    await this.guest.sh(
      `cd /consec/src && (${this.argv} daemon ${args.map(shellQuote).join(' ')} >> /host/consec.log 2>&1 & echo $! > /run/consec.pid)`,
    );
  }

  /** Everything the daemon printed so far. */
  output(): string {
    try {
      return readFileSync(join(this.guest.dir, 'consec.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** Resolves once the daemon's output matches `pattern`. */
  async waitFor(pattern: RegExp, timeoutMs = 60_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.output().match(pattern);
      if (m) return m;
      if (!this.guest.running) throw new PeerError(`guest ${this.guest.host} stopped: ${this.output().slice(-2000)}`);
      if (Date.now() > deadline)
        throw new PeerError(`consec in guest ${this.guest.host}: ${pattern} not seen: ${this.output().slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** `consec pwsh -Command …` in the guest (the live views ask the daemon there). */
  async pwsh(command: string): Promise<{ stdout: string; code: number }> {
    return this.guest.sh(`cd /consec/src && ${this.argv} pwsh -Command ${shellQuote(command)}`, {
      allowFailure: true,
      timeoutMs: 120_000,
    });
  }

  /** Sends `signal` to the daemon; SIGTERM waits for it to finish stopping. */
  async signal(signal: 'TERM' | 'KILL'): Promise<void> {
    await this.guest.sh(
      `pid=$(cat /run/consec.pid); kill -${signal} $pid; for i in $(seq 1 300); do kill -0 $pid 2>/dev/null || exit 0; sleep 0.1; done; exit 1`,
      { allowFailure: true, timeoutMs: 60_000 },
    );
  }
}

/**
 * A charon connection between two hosts with a pre-shared key by address (`remote` may be '%any',
 * a peer behind a NAT): transport mode unless asked, the ESP proposal given, no rekeying of its own
 * when `noRekey` (the other end renews).
 */
export function charonHostToHost(
  local: string,
  remote: string,
  o: {
    psk: string;
    esp?: string;
    mode?: 'transport' | 'tunnel';
    encap?: boolean;
    noRekey?: boolean;
    logLevel?: number;
  },
): CharonConfig {
  return {
    connections: {
      c: {
        local_addrs: [local],
        remote_addrs: [remote],
        proposals: ['aes256-sha256-ecp256'],
        encap: o.encap ?? false,
        local: { auth: 'psk', id: local },
        remote: { auth: 'psk', id: remote },
        children: {
          c: {
            local_ts: ['dynamic'],
            remote_ts: ['dynamic'],
            esp_proposals: [o.esp ?? 'aes256gcm16'],
            mode: o.mode ?? 'transport',
            ...(o.noRekey ? { rekey_time: '0' } : {}),
          },
        },
      },
    },
    psks: [{ ids: [local, remote], secret: o.psk }],
    logLevel: o.logLevel ?? 1,
  };
}
