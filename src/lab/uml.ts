/**
 * Kernel-IPsec peers for the lab: User-Mode Linux guests (a Linux kernel running as ordinary host
 * processes) with a real XFRM/ESP/AH stack, which this host kernel lacks. See
 * shared/notes/kernel-esp-peer-uml.md for the recipe this follows.
 *
 * - Images: Debian bookworm (debootstrap minbase) plus the IKE daemon, the UML kernel's modules and a
 *   tiny PID 1 (`/sbin/consec-init`), made into an ext4 image with `mke2fs -d`. One image per daemon
 *   (libreswan and strongSwan conflict as packages), built once per machine and cached under
 *   GUEST_CACHE_DIR, keyed by a hash of the recipe; guests boot from a private copy-on-write file.
 * - Boot: inside a lab host's namespace, the host's veth joins a bridge with a TAP and the guest takes
 *   over the host's addresses and routes, so the guest *is* that host on the wire.
 * - Exec channel: a host directory mounted into the guest with hostfs; `ID.sh` dropped there runs in
 *   the guest, which writes `ID.out` and `ID.rc`.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { freemem } from 'node:os';
import { join } from 'node:path';
import { lock } from 'proper-lockfile';
import { LabCommandError, LabPrerequisiteError, LabTimeoutError } from '../errors.ts';
import { parsePrefix } from '../io/addr.ts';
import { run, which } from './exec.ts';
import type { Lab, LabProcess } from './lab.ts';

export const GUEST_CACHE_DIR = process.env.CONSEC_GUEST_CACHE ?? '/var/cache/consec/uml';
export const UML_KERNEL = '/usr/bin/linux.uml';
export const UML_MODULES = '/usr/lib/uml/modules';
const SUITE = 'bookworm';
/** Guest memory: enough for charon or pluto plus iperf3 (the note measured 200–260 MB PSS). */
const GUEST_MEM_MB = 384;

/** strongswan, libreswan: an IKE daemon's image; systemd: a guest that boots systemd as PID 1 (services). */
export const GUEST_KINDS = ['strongswan', 'libreswan', 'systemd'] as const;
export type GuestKind = (typeof GUEST_KINDS)[number];
export const isGuestKind = (k: string): k is GuestKind => (GUEST_KINDS as readonly string[]).includes(k);

// nftables (and netbase: /etc/protocols for its names): consec's own fail-closed table when consec
// runs in a guest (the kernel data plane).
const COMMON_PACKAGES = ['iproute2', 'iputils-ping', 'kmod', 'procps', 'iperf3', 'socat', 'nftables', 'netbase'];
const KIND_PACKAGES: Record<GuestKind, string[]> = {
  strongswan: ['strongswan-charon', 'strongswan-swanctl', 'libstrongswan-standard-plugins'],
  // libreswan depends on the virtual package "host", which debootstrap does not resolve: bind9-host provides it.
  libreswan: ['libreswan', 'bind9-host', 'libnss3-tools', 'openssl'],
  systemd: ['systemd', 'systemd-sysv'],
};

/**
 * In a systemd guest, the lab's part (exec channel, then the network set-up of boot.sh) is a unit
 * ordered like a network manager: after network-pre.target, before network.target — so what a
 * service orders before network-pre.target (consec's own unit) is up before the guest has a network.
 */
const LAB_UNIT = `[Unit]
Description=lab: the host's network and the exec channel (hostfs)
DefaultDependencies=no
After=local-fs.target network-pre.target
Wants=network-pre.target
Before=network.target

[Service]
Type=simple
ExecStart=/sbin/consec-init

[Install]
WantedBy=multi-user.target
`;

/**
 * PID 1 of a guest: mounts, loads the IPsec modules, runs the host's boot script (addresses, routes),
 * then serves the exec channel. Commands run in the background, so a slow one never blocks another.
 */
const INIT_SCRIPT = `#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /host
if [ $$ -eq 1 ]; then
  mount -t proc proc /proc
  mount -t sysfs sys /sys
  mount -t tmpfs tmpfs /run
  mount -t tmpfs tmpfs /tmp
  mkdir -p /dev/pts /dev/shm
  mount -t devpts devpts /dev/pts 2>/dev/null
  mount -t tmpfs tmpfs /dev/shm
fi
# (PID 1 has labdir= in its environment; a systemd unit reads it from the command line.)
[ -n "$labdir" ] || labdir=$(sed -n 's/.*[[:space:]]labdir=\\([^[:space:]]*\\).*/\\1/p' /proc/cmdline)
for m in af_key xfrm_user esp4 esp6 ah4 ah6 xfrm4_tunnel xfrm6_tunnel tunnel4 tunnel6 authenc authencesn gcm ccm ctr cbc aes_generic sha256_generic sha512_generic hmac echainiv seqiv; do
  modprobe -q $m 2>/dev/null
done
ip link set lo up
case "$labdir" in
  /tmp/consec-uml-*) ;;
  *) echo "consec-init: no labdir= on the kernel command line"; exec sleep infinity ;;
esac
mount -t hostfs none /host -o "$labdir" || { echo "consec-init: hostfs mount of $labdir failed"; exec sleep infinity; }
sh /host/boot.sh > /host/boot.out 2>&1
echo $? > /host/ready
echo "consec-init: ready"
cd /host/cmd || exec sleep infinity
while :; do
  for f in *.sh; do
    [ -e "$f" ] || continue
    id=\${f%.sh}
    mv "$f" "$id.run"
    ( sh "$id.run" > "$id.out" 2>&1 < /dev/null; echo $? > "$id.rc.tmp"; mv "$id.rc.tmp" "$id.rc" ) &
  done
  sleep 0.05
done
`;

/** Throws LabPrerequisiteError naming everything a guest needs that this machine lacks. */
export function requireGuestPrerequisites(): void {
  const missing: string[] = [];
  if (!existsSync(UML_KERNEL)) missing.push(`${UML_KERNEL} (Debian package user-mode-linux)`);
  else if (!existsSync(UML_MODULES)) missing.push(`${UML_MODULES} (Debian package user-mode-linux)`);
  for (const tool of ['debootstrap', 'mke2fs']) {
    if (!which(tool)) missing.push(`"${tool}" (Debian package ${tool === 'mke2fs' ? 'e2fsprogs' : tool})`);
  }
  const needMb = GUEST_MEM_MB + 128;
  if (freemem() < needMb * 1024 * 1024) {
    missing.push(`${needMb} MB of free memory for a guest (${Math.round(freemem() / 1048576)} MB free)`);
  }
  if (missing.length > 0) {
    throw new LabPrerequisiteError(`kernel-IPsec guests cannot run here; missing: ${missing.join(', ')}`);
  }
}

function umlKernelVersion(): string {
  const versions = readdirSync(UML_MODULES);
  const v = versions[0];
  if (v === undefined) throw new LabPrerequisiteError(`no kernel modules under ${UML_MODULES}`);
  return v;
}

/** The Debian mirror the host's apt uses (deb822 or one-line sources), else deb.debian.org. */
function debianMirror(): string {
  for (const file of ['/etc/apt/sources.list.d/debian.sources', '/etc/apt/sources.list']) {
    let text = '';
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    const deb822 = /^URIs:\s*(\S+)/m.exec(text);
    if (deb822?.[1] && !deb822[1].includes('security')) return deb822[1];
    const line = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s/m.exec(text);
    if (line?.[1]) return line[1];
  }
  return 'http://deb.debian.org/debian';
}

function recipe(kind: GuestKind): { key: string; packages: string[]; kernel: string } {
  const packages = [...COMMON_PACKAGES, ...KIND_PACKAGES[kind]];
  const kernel = umlKernelVersion();
  const key = createHash('sha256')
    .update(
      JSON.stringify({ v: 1, kind, packages, kernel, SUITE, INIT_SCRIPT, ...(kind === 'systemd' ? { LAB_UNIT } : {}) }),
    )
    .digest('hex')
    .slice(0, 12);
  return { key, packages, kernel };
}

export interface ImageBuild {
  path: string;
  /** True when the image was built now (false: taken from the cache). */
  built: boolean;
  ms: number;
}

/**
 * The cached image for `kind`, built first when missing (≈ 30–80 s). Builds are serialised across
 * processes with a lock; an image appears only complete (written to a temporary name, then renamed).
 */
/**
 * The preload that lets Debian bookworm's UML kernel boot on hosts with a large XSAVE area (AMX):
 * native/uml-xstate-shim.c, built once with the host's C compiler into the guest cache (keyed by its
 * source), its path.
 */
export function umlXstateShim(): string {
  const source = join(import.meta.dirname, '..', '..', 'native', 'uml-xstate-shim.c');
  const text = readFileSync(source);
  const out = join(
    GUEST_CACHE_DIR,
    `uml-xstate-shim-${createHash('sha256').update(text).digest('hex').slice(0, 12)}.so`,
  );
  if (existsSync(out)) return out;
  if (!which('cc')) throw new LabPrerequisiteError('cc not found: the UML guests need a C compiler (Debian gcc)');
  mkdirSync(GUEST_CACHE_DIR, { recursive: true, mode: 0o755 });
  const tmp = `${out}.${process.pid}.tmp`;
  execFileSync('cc', ['-shared', '-fPIC', '-O2', '-Wall', '-o', tmp, source, '-ldl']);
  renameSync(tmp, out);
  return out;
}

export async function ensureGuestImage(kind: GuestKind, log: (msg: string) => void = () => {}): Promise<ImageBuild> {
  requireGuestPrerequisites();
  const started = Date.now();
  const { key, packages, kernel } = recipe(kind);
  mkdirSync(GUEST_CACHE_DIR, { recursive: true, mode: 0o755 });
  const path = join(GUEST_CACHE_DIR, `${kind}-${key}.img`);
  if (existsSync(path)) return { path, built: false, ms: Date.now() - started };
  const release = await lock(GUEST_CACHE_DIR, {
    retries: { retries: 600, minTimeout: 500, maxTimeout: 1000 },
    stale: 20 * 60_000,
  });
  try {
    if (existsSync(path)) return { path, built: false, ms: Date.now() - started };
    // Images of older recipes of this kind are no longer used.
    for (const f of readdirSync(GUEST_CACHE_DIR)) {
      if (f.startsWith(`${kind}-`) && f.endsWith('.img')) rmSync(join(GUEST_CACHE_DIR, f), { force: true });
    }
    const root = join(GUEST_CACHE_DIR, `${kind}-${key}.root`);
    rmSync(root, { recursive: true, force: true });
    const debs = join(GUEST_CACHE_DIR, 'debs');
    mkdirSync(debs, { recursive: true });
    log(`building the ${kind} guest image (debootstrap ${SUITE} + ${KIND_PACKAGES[kind].join(' ')})`);
    try {
      await run(
        [
          'debootstrap',
          '--variant=minbase',
          `--cache-dir=${debs}`,
          `--include=${packages.join(',')}`,
          SUITE,
          root,
          debianMirror(),
        ],
        { timeoutMs: 15 * 60_000, env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } },
      );
      // Documentation and locales are dead weight in a guest.
      for (const dir of [
        'usr/share/doc',
        'usr/share/man',
        'usr/share/locale',
        'usr/share/info',
        'var/cache/apt',
        'var/lib/apt/lists',
      ]) {
        rmSync(join(root, dir), { recursive: true, force: true });
      }
      mkdirSync(join(root, 'lib', 'modules'), { recursive: true });
      await run(['cp', '-a', join(UML_MODULES, kernel), join(root, 'lib', 'modules', kernel)]);
      writeFileSync(join(root, 'sbin', 'consec-init'), INIT_SCRIPT, { mode: 0o755 });
      if (kind === 'systemd') {
        const units = join(root, 'etc', 'systemd', 'system');
        writeFileSync(join(units, 'consec-lab.service'), LAB_UNIT);
        mkdirSync(join(units, 'multi-user.target.wants'), { recursive: true });
        symlinkSync('../consec-lab.service', join(units, 'multi-user.target.wants', 'consec-lab.service'));
        // No consoles to log in on, no hardware to wait for.
        for (const unit of [
          'getty@.service',
          'serial-getty@.service',
          'console-getty.service',
          'systemd-udevd.service',
        ])
          symlinkSync('/dev/null', join(units, unit));
      }
      writeFileSync(join(root, 'etc', 'hostname'), `${kind}-guest\n`);
      const tmp = `${path}.tmp`;
      rmSync(tmp, { force: true });
      await run(['mke2fs', '-q', '-F', '-t', 'ext4', '-d', root, '-L', 'consec-guest', tmp, '1200M'], {
        timeoutMs: 10 * 60_000,
      });
      renameSync(tmp, path);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
    const ms = Date.now() - started;
    log(`${kind} guest image ready in ${(ms / 1000).toFixed(1)} s: ${path}`);
    return { path, built: true, ms };
  } finally {
    await release();
  }
}

export interface GuestOptions {
  kind: GuestKind;
  /** Prints image-build progress (the first build on a machine takes a while). */
  log?: (msg: string) => void;
  /** Boot timeout. Default 60 s. */
  bootTimeoutMs?: number;
}

export interface GuestExecOptions {
  timeoutMs?: number;
  allowFailure?: boolean;
}

/** Quotes one argument for the guest's /bin/sh. */
export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

/**
 * A User-Mode Linux guest standing in for a lab host. The host's namespace keeps only a bridge
 * (its veth plus the guest's TAP); the guest has the host's addresses and routes.
 */
export class Guest {
  private seq = 0;

  private constructor(
    readonly lab: Lab,
    readonly host: string,
    readonly kind: GuestKind,
    readonly dir: string,
    private readonly proc: LabProcess,
    readonly image: ImageBuild,
  ) {}

  /** Milliseconds from starting the kernel to the guest's network being configured. */
  bootMs = 0;

  /** Builds (or reuses) the image and boots a guest that takes over `host`'s addresses and routes. */
  static async boot(lab: Lab, host: string, options: GuestOptions): Promise<Guest> {
    requireGuestPrerequisites();
    const image = await ensureGuestImage(options.kind, options.log);
    const ifaces = lab.spec.links.flatMap((l) => [l.a, l.b]).filter((i) => i.host === host);
    const iface = ifaces[0];
    if (!iface || ifaces.length !== 1) {
      throw new LabCommandError(
        `a guest replaces a host with exactly one interface (${host} has ${ifaces.length})`,
        null,
        '',
      );
    }
    const ns = lab.ns(host);
    const ip = (...args: string[]): Promise<unknown> => run(['ip', '-n', ns, ...args]);
    // The namespace becomes a bridge: veth + TAP, no addresses of its own (IPv6 off, so it says nothing).
    await lab.exec(host, [
      'sh',
      '-c',
      'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6',
    ]);
    await ip('addr', 'flush', 'dev', iface.name);
    await ip('link', 'add', 'br0', 'type', 'bridge', 'stp_state', '0', 'forward_delay', '0');
    await ip('link', 'set', iface.name, 'master', 'br0');
    await ip('tuntap', 'add', 'dev', 'tap0', 'mode', 'tap');
    await ip('link', 'set', 'tap0', 'master', 'br0');
    await ip('link', 'set', 'tap0', 'up');
    await ip('link', 'set', 'br0', 'up');

    // The guest's init only mounts a directory of this shape (never an arbitrary host path).
    const dir = mkdtempSync(join('/tmp', `consec-uml-${host}-`));
    lab.adopt(dir);
    mkdirSync(join(dir, 'cmd'));
    mkdirSync(join(dir, 'uml'));
    const boot: string[] = [`hostname ${shellQuote(host)}`, 'ip link set eth0 up'];
    for (const a of iface.addresses) {
      boot.push(`ip addr add ${shellQuote(a)} dev eth0${parsePrefix(a).family === 6 ? ' nodad' : ''}`);
    }
    for (const r of lab.spec.routes ?? []) {
      if (r.host !== host) continue;
      const six = r.to === 'default6' || (r.to !== 'default' && parsePrefix(r.to).family === 6);
      boot.push(
        `ip ${six ? '-6' : '-4'} route add ${r.to.startsWith('default') ? 'default' : shellQuote(r.to)} via ${shellQuote(r.via)}`,
      );
    }
    writeFileSync(join(dir, 'boot.sh'), `set -e\n${boot.join('\n')}\n`);
    const started = Date.now();
    const preload = umlXstateShim();
    const proc = lab.spawn(
      host,
      [
        UML_KERNEL,
        `umid=consec-${lab.id}-${host}`,
        `uml_dir=${join(dir, 'uml')}`,
        `mem=${GUEST_MEM_MB}M`,
        `ubd0=${join(dir, 'root.cow')},${image.path}`,
        'root=/dev/ubda',
        'rw',
        options.kind === 'systemd' ? 'init=/lib/systemd/systemd' : 'init=/sbin/consec-init',
        'eth0=tuntap,tap0',
        'con=null',
        'con0=null,fd:1',
        'loglevel=4',
        `labdir=${dir}`,
      ],
      { env: { ...process.env, LD_PRELOAD: preload } },
    );
    const guest = new Guest(lab, host, options.kind, dir, proc, image);
    try {
      await guest.waitReady(options.bootTimeoutMs ?? 60_000);
    } catch (err) {
      await guest.stop();
      throw err;
    }
    guest.bootMs = Date.now() - started;
    return guest;
  }

  get running(): boolean {
    return this.proc.running;
  }

  /** The guest's console output so far. */
  console(): string {
    return this.proc.output();
  }

  private async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const ready = join(this.dir, 'ready');
    // The guest's `echo $? > ready` creates the file, then writes "N\n": it is done once the line is whole.
    const written = (): boolean => {
      try {
        return readFileSync(ready, 'utf8').endsWith('\n');
      } catch {
        return false;
      }
    };
    while (!written()) {
      if (!this.proc.running) {
        throw new LabCommandError(
          `guest ${this.host} stopped during boot:\n${this.proc.output().slice(-3000)}`,
          null,
          '',
        );
      }
      if (Date.now() > deadline) {
        throw new LabTimeoutError(
          `guest ${this.host} not ready after ${timeoutMs} ms:\n${this.proc.output().slice(-3000)}`,
        );
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    const rc = readFileSync(ready, 'utf8').trim();
    if (rc !== '0') {
      const out = readFileSync(join(this.dir, 'boot.out'), 'utf8');
      throw new LabCommandError(`guest ${this.host}: network set-up failed (exit ${rc}): ${out}`, Number(rc), out);
    }
  }

  /** Runs a shell script in the guest; its output (stdout and stderr together) and exit status. */
  async sh(script: string, options: GuestExecOptions = {}): Promise<{ stdout: string; code: number }> {
    return guestShell(this.dir, script, options, () => {
      if (!this.proc.running)
        throw new LabCommandError(
          `guest ${this.host} stopped while running: ${script}\n${this.proc.output().slice(-2000)}`,
          null,
          '',
        );
    });
  }

  /** Runs argv in the guest (quoted for its shell). */
  exec(argv: readonly string[], options: GuestExecOptions = {}): Promise<{ stdout: string; code: number }> {
    return this.sh(argv.map(shellQuote).join(' '), options);
  }

  /** Writes a file into the guest (through the shared directory; mode applied in the guest). */
  async writeFile(path: string, content: string, mode = 0o644): Promise<void> {
    const name = `f${++this.seq}`;
    writeFileSync(join(this.dir, name), content, { mode: 0o600 });
    await this.sh(
      `mkdir -p "$(dirname ${shellQuote(path)})" && cp /host/${name} ${shellQuote(path)} && chmod ${mode.toString(8)} ${shellQuote(path)}`,
    );
    rmSync(join(this.dir, name), { force: true });
  }

  /** The guest's XFRM states (`ip -s xfrm state`), parsed. */
  async xfrmStates(): Promise<XfrmState[]> {
    const { stdout } = await this.exec(['ip', '-s', 'xfrm', 'state']);
    return parseXfrmStates(stdout);
  }

  /** Adds lines to the host's boot script (run at every boot, after the addresses and routes). */
  appendBoot(lines: string[]): void {
    const path = join(this.dir, 'boot.sh');
    writeFileSync(path, `${readFileSync(path, 'utf8')}${lines.join('\n')}\n`);
  }

  /**
   * Reboots a systemd guest (UML runs itself again, same process, same disk): resolves once the lab
   * unit has set the network up again and serves the exec channel.
   */
  async reboot(timeoutMs = 180_000): Promise<void> {
    rmSync(join(this.dir, 'ready'), { force: true });
    await this.sh('(sleep 0.3; systemctl reboot) > /dev/null 2>&1 &');
    const started = Date.now();
    await this.waitReady(timeoutMs);
    this.bootMs = Date.now() - started;
  }

  /** Stops the guest (its whole process group) and removes its copy-on-write file. */
  async stop(): Promise<void> {
    await this.proc.stop('SIGKILL', 2000);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Runs a shell script in the guest whose shared directory is `dir` (the exec channel: `ID.sh` in,
 * `ID.out` and `ID.rc` back). Usable from any process, e.g. `consec lab guest-exec`; `alive` throws
 * when the guest is known to be gone.
 */
export async function guestShell(
  dir: string,
  script: string,
  options: GuestExecOptions = {},
  alive: () => void = () => {
    if (!existsSync(join(dir, 'ready'))) throw new LabCommandError(`no running guest at ${dir}`, null, '');
  },
): Promise<{ stdout: string; code: number }> {
  alive();
  const id = `c${process.pid}-${randomBytes(4).toString('hex')}`;
  const cmd = join(dir, 'cmd');
  writeFileSync(join(cmd, `${id}.tmp`), `${script}\n`);
  renameSync(join(cmd, `${id}.tmp`), join(cmd, `${id}.sh`));
  const timeoutMs = options.timeoutMs ?? 60_000;
  const deadline = Date.now() + timeoutMs;
  const rcFile = join(cmd, `${id}.rc`);
  while (!existsSync(rcFile)) {
    alive();
    if (Date.now() > deadline) throw new LabTimeoutError(`guest at ${dir}: no exit after ${timeoutMs} ms: ${script}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const code = Number(readFileSync(rcFile, 'utf8').trim());
  const stdout = readFileSync(join(cmd, `${id}.out`), 'utf8');
  for (const ext of ['run', 'out', 'rc']) rmSync(join(cmd, `${id}.${ext}`), { force: true });
  if (code !== 0 && !options.allowFailure) {
    throw new LabCommandError(
      `guest at ${dir}: ${script.slice(0, 200)}: exit ${code}: ${stdout.slice(-1000)}`,
      code,
      stdout,
    );
  }
  return { stdout, code };
}

/** One XFRM state as `ip -s xfrm state` prints it. Keys are deliberately not kept. */
export interface XfrmState {
  src: string;
  dst: string;
  proto: 'esp' | 'ah' | 'comp' | string;
  /** SPI as 8 lowercase hex digits. */
  spi: string;
  mode: string;
  /** Algorithm names: aead (e.g. rfc4106(gcm(aes))), enc (cbc(aes)), auth (hmac(sha256)). */
  aead?: string;
  enc?: string;
  auth?: string;
  /** ICV / truncation length in bits. */
  icvBits?: number;
  encap?: { type: string; sport: number; dport: number };
  bytes: number;
  packets: number;
  replayErrors: number;
  integrityFailed: number;
  selector?: string;
}

/** Parses `ip -s xfrm state` output. */
export function parseXfrmStates(text: string): XfrmState[] {
  const states: XfrmState[] = [];
  let cur: XfrmState | undefined;
  let inCurrent = false;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    let m: RegExpExecArray | null;
    if ((m = /^src (\S+) dst (\S+)$/.exec(line))) {
      cur = {
        src: m[1] ?? '',
        dst: m[2] ?? '',
        proto: '',
        spi: '',
        mode: '',
        bytes: 0,
        packets: 0,
        replayErrors: 0,
        integrityFailed: 0,
      };
      states.push(cur);
      inCurrent = false;
      continue;
    }
    if (!cur) continue;
    if ((m = /^proto (\S+) spi 0x([0-9a-f]+).*?mode (\S+)/.exec(line))) {
      cur.proto = m[1] ?? '';
      cur.spi = (m[2] ?? '').padStart(8, '0');
      cur.mode = m[3] ?? '';
    } else if ((m = /^aead (\S+) 0x[0-9a-f]+ \(\d+ bits\) (\d+)/.exec(line))) {
      cur.aead = m[1];
      cur.icvBits = Number(m[2]);
    } else if ((m = /^enc (\S+) 0x[0-9a-f]+/.exec(line))) {
      cur.enc = m[1];
    } else if ((m = /^auth-trunc (\S+) 0x[0-9a-f]+ \(\d+ bits\) (\d+)/.exec(line))) {
      cur.auth = m[1];
      cur.icvBits = Number(m[2]);
    } else if ((m = /^auth (\S+) 0x[0-9a-f]+/.exec(line))) {
      cur.auth = m[1];
    } else if ((m = /^encap type (\S+) sport (\d+) dport (\d+)/.exec(line))) {
      cur.encap = { type: m[1] ?? '', sport: Number(m[2]), dport: Number(m[3]) };
    } else if ((m = /^sel (.*)$/.exec(line))) {
      cur.selector = m[1];
    } else if (line === 'lifetime current:') {
      inCurrent = true;
    } else if (inCurrent && (m = /^(\d+)\(bytes\), (\d+)\(packets\)/.exec(line))) {
      cur.bytes = Number(m[1]);
      cur.packets = Number(m[2]);
      inCurrent = false;
    } else if ((m = /^replay-window \d+ replay (\d+) failed (\d+)/.exec(line))) {
      cur.replayErrors = Number(m[1]);
      cur.integrityFailed = Number(m[2]);
    }
  }
  return states;
}
