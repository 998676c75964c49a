/**
 * strongSwan (charon) as a lab peer: one charon per lab host with its own configuration, pid file,
 * vici socket and log, configured from a TypeScript object, driven with swanctl.
 *
 * This kernel has XFRM but no ESP, so charon uses its userspace data plane, kernel-libipsec (a TUN
 * named ipsec0, ESP in UDP 4500, tunnel mode only). Its own IKE/ESP packets carry fwmark 42 so the
 * routes it installs into ipsec0 do not swallow them. See shared/notes/strongswan-lab.md.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LabTimeoutError, PeerError } from '../errors.ts';
import { requireLabPrerequisites, which } from './exec.ts';
import type { Lab, LabProcess } from './lab.ts';

export const CHARON_PATHS = ['/usr/lib/ipsec/charon', '/usr/libexec/ipsec/charon'];

/** Plugins for kernel-libipsec; kernel-libipsec must load before kernel-netlink. */
const PLUGINS =
  'random nonce openssl aes sha1 sha2 hmac gcm kdf pem pkcs1 x509 pubkey curve25519 kernel-libipsec kernel-netlink socket-default vici';

export const CHARON_FWMARK = 42;

export interface SwanAuth {
  auth: 'psk' | 'pubkey';
  id?: string;
  certs?: string[];
  cacerts?: string[];
}

export interface SwanChild {
  local_ts: string[];
  remote_ts: string[];
  esp_proposals?: string[];
  /** kernel-libipsec supports tunnel mode only. */
  mode?: 'tunnel' | 'transport';
  start_action?: 'none' | 'trap' | 'start';
  rekey_time?: string;
  life_time?: string;
  rand_time?: string;
  dpd_action?: 'clear' | 'trap' | 'restart';
}

export interface SwanConnection {
  version?: 1 | 2;
  local_addrs: string[];
  remote_addrs: string[];
  proposals?: string[];
  /** Force ESP-in-UDP (needed by kernel-libipsec when there is no NAT). Default true. */
  encap?: boolean;
  mobike?: boolean;
  /** IKE SA rekeying and liveness (e.g. '20s'). */
  rekey_time?: string;
  over_time?: string;
  dpd_delay?: string;
  keyingtries?: number;
  /** IKE fragmentation (charon's default: yes, when a message exceeds its fragment size). */
  fragmentation?: 'yes' | 'no' | 'force' | 'accept';
  /** Uniqueness of IKE SAs per identity pair (yes, no, never, keep); charon's default is no. */
  unique?: 'yes' | 'no' | 'never' | 'keep';
  local: SwanAuth;
  remote: SwanAuth;
  children: Record<string, SwanChild>;
}

export interface CharonConfig {
  connections: Record<string, SwanConnection>;
  /** Pre-shared keys: the identities they are for and the secret. */
  psks?: { ids: string[]; secret: string }[];
  /** charon log level for the ike/cfg/knl subsystems (-1..4). Default 1. */
  logLevel?: number;
  /** PEM files for swanctl's x509 (own certificates), x509ca (trust anchors) and private (keys) directories. */
  files?: { x509?: Record<string, string>; x509ca?: Record<string, string>; private?: Record<string, string> };
  /** More strongswan.conf `charon` settings (e.g. cookie_threshold, block_threshold for load tests). */
  charon?: ConfObject;
}

export interface PskHostTunnel {
  /** Connection and child name (what `initiate` takes). */
  name: string;
  secret: string;
  /** IKE proposals in strongSwan syntax. Default aes256-sha256-ecp256. */
  proposals?: string[];
  /** ESP proposals. Default aes256gcm16. */
  esp?: string[];
  /** Where the peer may come from (e.g. %any behind a NAT). Default: its own address. */
  remoteAddrs?: string[];
  logLevel?: number;
}

/** One connection between two host addresses with a tunnel-mode child between them (kernel-libipsec does tunnel mode only). */
function hostTunnel(
  local: string,
  remote: string,
  o: Omit<PskHostTunnel, 'secret'>,
  auth: { local: SwanAuth; remote: SwanAuth },
  proposals: string[],
): SwanConnection {
  return {
    local_addrs: [local],
    remote_addrs: o.remoteAddrs ?? [remote],
    proposals: o.proposals ?? proposals,
    ...auth,
    children: {
      [o.name]: { local_ts: [`${local}/32`], remote_ts: [`${remote}/32`], esp_proposals: o.esp ?? ['aes256gcm16'] },
    },
  };
}

/** The same connections, negotiated with IKEv1 (Main Mode and Quick Mode) only. */
export function ikeV1(config: CharonConfig): CharonConfig {
  for (const conn of Object.values(config.connections)) conn.version = 1;
  return config;
}

/** A pre-shared-key connection between two host addresses, identified by those addresses. */
export function pskHostTunnel(local: string, remote: string, o: PskHostTunnel): CharonConfig {
  const auth: { local: SwanAuth; remote: SwanAuth } = {
    local: { auth: 'psk', id: local },
    remote: { auth: 'psk', id: remote },
  };
  return {
    connections: { [o.name]: hostTunnel(local, remote, o, auth, ['aes256-sha256-ecp256']) },
    psks: [{ ids: [local, remote], secret: o.secret }],
    logLevel: o.logLevel,
  };
}

export interface CertHostTunnel extends Omit<PskHostTunnel, 'secret'> {
  /** Our certificate and key (PEM), and the CA that issued the peer's. */
  cert: string;
  key: string;
  ca: string;
}

/** Like `pskHostTunnel`, authenticated with certificates (strongSwan's identity: its subject DN). */
export function certHostTunnel(local: string, remote: string, o: CertHostTunnel): CharonConfig {
  const auth: { local: SwanAuth; remote: SwanAuth } = {
    local: { auth: 'pubkey', certs: ['self.crt'] },
    remote: { auth: 'pubkey', cacerts: ['ca.crt'] },
  };
  return {
    connections: { [o.name]: hostTunnel(local, remote, o, auth, ['aes256-sha384-ecp384']) },
    files: { x509: { 'self.crt': o.cert }, x509ca: { 'ca.crt': o.ca }, private: { 'self.key': o.key } },
    logLevel: o.logLevel,
  };
}

export type ConfValue = string | number | boolean | string[] | ConfObject | undefined;
export interface ConfObject {
  [key: string]: ConfValue;
}

const SAFE_KEY = /^[A-Za-z0-9_.-]+$/;
const UNSAFE_VALUE = /[\n\r{}]/;

/** Renders strongswan.conf / swanctl.conf syntax: one key per line (';' is not a separator there). */
export function renderConf(obj: ConfObject, indent = ''): string {
  let out = '';
  for (const [key, value] of Object.entries(obj)) {
    if (value === undefined) continue;
    if (!SAFE_KEY.test(key)) throw new PeerError(`invalid strongSwan config key ${JSON.stringify(key)}`);
    if (typeof value === 'object' && !Array.isArray(value)) {
      out += `${indent}${key} {\n${renderConf(value, `${indent}  `)}${indent}}\n`;
      continue;
    }
    const text = Array.isArray(value)
      ? value.join(',')
      : typeof value === 'boolean'
        ? value
          ? 'yes'
          : 'no'
        : String(value);
    if (UNSAFE_VALUE.test(text)) throw new PeerError(`invalid strongSwan config value for ${key}`);
    out += `${indent}${key} = ${text}\n`;
  }
  return out;
}

export function swanctlConf(config: CharonConfig): string {
  const connections: ConfObject = {};
  for (const [name, c] of Object.entries(config.connections)) {
    const children: ConfObject = {};
    for (const [childName, ch] of Object.entries(c.children)) {
      children[childName] = { mode: 'tunnel', start_action: 'none', ...ch } as ConfObject;
    }
    connections[name] = {
      version: c.version ?? 2,
      local_addrs: c.local_addrs,
      remote_addrs: c.remote_addrs,
      proposals: c.proposals,
      encap: c.encap ?? true,
      mobike: c.mobike ?? false,
      rekey_time: c.rekey_time,
      over_time: c.over_time,
      dpd_delay: c.dpd_delay,
      keyingtries: c.keyingtries,
      unique: c.unique,
      fragmentation: c.fragmentation,
      local: { ...c.local } as ConfObject,
      remote: { ...c.remote } as ConfObject,
      children,
    };
  }
  const secrets: ConfObject = {};
  (config.psks ?? []).forEach((p, i) => {
    const entry: ConfObject = { secret: p.secret };
    p.ids.forEach((id, j) => {
      entry[`id-${j + 1}`] = id;
    });
    secrets[`ike-${i + 1}`] = entry;
  });
  return renderConf({ connections, secrets });
}

/** charon's file log: the IKE, config, kernel and ESP subsystems at `logLevel`, messages at ≤ 1. */
export function charonFileLog(path: string, logLevel: number): ConfObject {
  return {
    lab: {
      path,
      time_format: '%T',
      default: 0,
      ike: logLevel,
      cfg: logLevel,
      knl: logLevel,
      esp: logLevel,
      // Message parsing and fragmentation (RFC 7383) at level 1, packets sent/received at 1.
      enc: Math.min(logLevel, 1),
      net: Math.min(logLevel, 1),
      flush_line: true,
    },
  };
}

function strongswanConf(dir: string, logLevel: number, extra: ConfObject = {}): string {
  const vici = `unix://${join(dir, 'charon.vici')}`;
  return renderConf({
    charon: {
      load_modular: false,
      load: PLUGINS,
      install_virtual_ip: false,
      // charon.threads stays at its default (16): at 8 vici requests hang (shared/notes/strongswan-lab.md).
      filelog: charonFileLog(join(dir, 'charon.log'), logLevel),
      syslog: { identifier: 'consec-lab-charon', daemon: { default: -1 } },
      plugins: {
        vici: { socket: vici },
        'socket-default': { fwmark: CHARON_FWMARK },
        'kernel-netlink': { fwmark: `!${CHARON_FWMARK}` },
        'kernel-libipsec': { allow_peer_ts: true },
      },
      ...extra,
    },
    swanctl: { socket: vici },
  });
}

export interface VsaChild {
  name: string;
  state: string;
  mode: string;
  protocol: string;
  encap: boolean;
  spiIn: string;
  spiOut: string;
  encrAlg: string;
  encrKeysize?: number;
  integAlg?: string;
  bytesIn: number;
  bytesOut: number;
  packetsIn: number;
  packetsOut: number;
  localTs: string[];
  remoteTs: string[];
}

export interface VsaIke {
  name: string;
  state: string;
  version: number;
  localHost: string;
  remoteHost: string;
  initiator: boolean;
  /** Initiator SPI / cookie, hex. */
  spiI: string;
  encrAlg: string;
  integAlg?: string;
  prfAlg: string;
  dhGroup: string;
  children: VsaChild[];
}

/** A running charon inside a lab host. */
export class Charon {
  private constructor(
    private readonly lab: Lab,
    readonly host: string,
    readonly dir: string,
    private readonly proc: LabProcess,
  ) {}

  get uri(): string {
    return `unix://${join(this.dir, 'charon.vici')}`;
  }

  get logFile(): string {
    return join(this.dir, 'charon.log');
  }

  /** Writes the configuration, starts charon in `host`, waits for vici and loads the config. */
  static async start(lab: Lab, host: string, config: CharonConfig): Promise<Charon> {
    requireLabPrerequisites(['ip', 'swanctl']);
    const charon = CHARON_PATHS.find((p) => existsSync(p));
    if (!charon) {
      throw new PeerError(`strongSwan charon not found (${CHARON_PATHS.join(', ')}): install strongswan-charon`);
    }
    const dir = mkdtempSync(join(tmpdir(), `consec-swan-${host}-`));
    mkdirSync(join(dir, 'run'));
    mkdirSync(join(dir, 'swanctl'));
    writeFileSync(join(dir, 'strongswan.conf'), strongswanConf(dir, config.logLevel ?? 1, config.charon));
    writeFileSync(join(dir, 'swanctl', 'swanctl.conf'), swanctlConf(config), { mode: 0o600 });
    for (const [sub, files] of Object.entries(config.files ?? {})) {
      mkdirSync(join(dir, 'swanctl', sub), { mode: 0o700 });
      for (const [name, pem] of Object.entries(files)) {
        if (!SAFE_KEY.test(name)) throw new PeerError(`invalid strongSwan file name ${JSON.stringify(name)}`);
        writeFileSync(join(dir, 'swanctl', sub, name), pem, { mode: 0o600 });
      }
    }
    // charon 5.9 hard-codes /var/run/charon.pid: give it a private /run (ip netns exec already
    // runs us in a mount namespace of our own).
    const script = `mount --bind "${join(dir, 'run')}" /run && exec "${charon}"`;
    const proc = lab.spawn(host, ['sh', '-c', script], { env: { ...process.env, ...swanEnv(dir) } });
    const peer = new Charon(lab, host, dir, proc);
    try {
      await peer.waitForVici();
      await peer.swanctl(['--load-all', '--noprompt']);
    } catch (err) {
      await peer.stop();
      throw err;
    }
    return peer;
  }

  /** Runs swanctl against this charon (in its host, with its config directory). */
  async swanctl(args: readonly string[], timeoutMs = 30_000): Promise<string> {
    const { stdout } = await this.lab.exec(this.host, ['swanctl', ...args, '--uri', this.uri], {
      env: { ...process.env, ...swanEnv(this.dir) },
      timeoutMs,
    });
    return stdout;
  }

  /** Initiates a child SA (and its IKE SA) and waits for the result. */
  async initiate(child: string, timeoutSec = 15): Promise<void> {
    try {
      await this.swanctl(['--initiate', '--child', child, '--timeout', String(timeoutSec)], (timeoutSec + 5) * 1000);
    } catch (err) {
      throw new PeerError(
        `strongSwan could not initiate ${child}: ${(err as Error).message}\n${this.log().slice(-3000)}`,
        {
          cause: err,
        },
      );
    }
  }

  /** The IKE and child SAs charon currently holds. */
  async listSas(): Promise<VsaIke[]> {
    const raw = await this.swanctl(['--list-sas', '--raw', '--noblock']);
    return parseListSas(raw);
  }

  log(): string {
    try {
      return readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  /** Kills charon without letting it say goodbye (no Delete reaches the peer): a dead peer. */
  async kill(): Promise<void> {
    await this.proc.stop('SIGKILL', 3000);
  }

  async stop(): Promise<void> {
    await this.proc.stop('SIGTERM', 3000);
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async waitForVici(timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const sock = join(this.dir, 'charon.vici');
    while (Date.now() < deadline) {
      if (!this.proc.running) {
        throw new PeerError(
          `charon exited during start-up: ${this.proc.output().slice(-2000)}${this.log().slice(-2000)}`,
        );
      }
      if (existsSync(sock)) {
        try {
          await this.swanctl(['--stats'], 5000);
          return;
        } catch {
          /* not answering yet */
        }
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new LabTimeoutError(`charon in ${this.host}: vici socket not ready after ${timeoutMs} ms`);
  }
}

function swanEnv(dir: string): Record<string, string> {
  return { STRONGSWAN_CONF: join(dir, 'strongswan.conf'), SWANCTL_DIR: join(dir, 'swanctl') };
}

/** Parses `swanctl --list-sas --raw` output (one vici message per line) into plain objects. */
export function parseListSas(raw: string): VsaIke[] {
  const sas: VsaIke[] = [];
  for (const line of raw.split('\n')) {
    const m = line.match(/^list-sa event \{(.*)\}\s*$/);
    if (!m?.[1]) continue;
    const tree = parseVici(m[1]);
    for (const [name, v] of Object.entries(tree)) {
      if (typeof v !== 'object' || Array.isArray(v)) continue;
      const ike = v as ViciSection;
      const children: VsaChild[] = [];
      for (const c of Object.values(section(ike['child-sas']))) {
        const ch = c as ViciSection;
        children.push({
          name: str(ch.name),
          state: str(ch.state),
          mode: str(ch.mode),
          protocol: str(ch.protocol),
          encap: str(ch.encap) === 'yes',
          spiIn: str(ch['spi-in']),
          spiOut: str(ch['spi-out']),
          encrAlg: str(ch['encr-alg']),
          encrKeysize: ch['encr-keysize'] === undefined ? undefined : Number(ch['encr-keysize']),
          integAlg: ch['integ-alg'] === undefined ? undefined : str(ch['integ-alg']),
          bytesIn: Number(ch['bytes-in'] ?? 0),
          bytesOut: Number(ch['bytes-out'] ?? 0),
          packetsIn: Number(ch['packets-in'] ?? 0),
          packetsOut: Number(ch['packets-out'] ?? 0),
          localTs: list(ch['local-ts']),
          remoteTs: list(ch['remote-ts']),
        });
      }
      sas.push({
        name,
        state: str(ike.state),
        version: Number(ike.version ?? 0),
        localHost: str(ike['local-host']),
        remoteHost: str(ike['remote-host']),
        initiator: str(ike.initiator) === 'yes',
        spiI: str(ike['initiator-spi']),
        encrAlg: str(ike['encr-alg']),
        integAlg: ike['integ-alg'] === undefined ? undefined : str(ike['integ-alg']),
        prfAlg: str(ike['prf-alg']),
        dhGroup: str(ike['dh-group']),
        children,
      });
    }
  }
  return sas;
}

type ViciValue = string | string[] | ViciSection;
interface ViciSection {
  [key: string]: ViciValue;
}

const str = (v: ViciValue | undefined): string => (typeof v === 'string' ? v : '');
const list = (v: ViciValue | undefined): string[] => (Array.isArray(v) ? v : []);
const section = (v: ViciValue | undefined): ViciSection => (v && typeof v === 'object' && !Array.isArray(v) ? v : {});

/** Parses swanctl's raw vici notation: `key=value`, `key=[a b]`, `key {...}`, space separated. */
export function parseVici(text: string): ViciSection {
  let i = 0;
  const skip = (): void => {
    while (i < text.length && text[i] === ' ') i++;
  };
  const word = (): string => {
    const start = i;
    while (i < text.length && !' ={}[]'.includes(text[i] as string)) i++;
    return text.slice(start, i);
  };
  // A scalar runs to the next ` key=`, ` key {` or `}`: identities such as `O=consec lab, CN=bob`
  // contain spaces and '=' of their own.
  const value = (): string => {
    const rest = text.slice(i);
    const m = /^(.*?)(?= [a-z0-9_-]+(?:=| \{)| ?\}|$)/.exec(rest);
    const v = m?.[1] ?? '';
    i += v.length;
    return v;
  };
  const parseSection = (): ViciSection => {
    const out: ViciSection = {};
    for (;;) {
      skip();
      if (i >= text.length || text[i] === '}') {
        i++;
        return out;
      }
      const key = word();
      skip();
      const c = text[i];
      if (c === '=' && text[i + 1] === '[') {
        i += 2;
        const items: string[] = [];
        for (;;) {
          skip();
          if (i >= text.length) throw new PeerError('unterminated list in swanctl output');
          if (text[i] === ']') {
            i++;
            break;
          }
          items.push(word());
        }
        out[key] = items;
      } else if (c === '=') {
        i++;
        out[key] = value();
      } else if (c === '{') {
        i++;
        out[key] = parseSection();
      } else {
        throw new PeerError(`unparsable swanctl output near ${JSON.stringify(text.slice(i, i + 40))}`);
      }
    }
  };
  return parseSection();
}

/** True when `which swanctl` and charon exist. */
export function strongSwanAvailable(): boolean {
  return which('swanctl') !== undefined && CHARON_PATHS.some((p) => existsSync(p));
}
