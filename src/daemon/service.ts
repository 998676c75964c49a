/**
 * consec as a systemd service: the unit `consec service install` writes, and its status.
 *
 * The unit starts the daemon before the network (DefaultDependencies=no, Before=network-pre.target,
 * Wants=network-pre.target): with Type=notify, network-pre.target — and so every network unit
 * after it — waits for READY=1, which the daemon sends only once its fail-closed nftables table is
 * in the kernel and IKE listens (src/daemon/notify.ts). A Require host therefore sends nothing in
 * clear while it boots. Restart=on-failure brings it back; while it is down the table stays (the
 * kernel keeps it, and on the kernel data plane the SPD's Require entries too), so nothing leaks
 * then either.
 *
 * Capabilities (CapabilityBoundingSet; the daemon runs as root inside that set, nothing more):
 * - CAP_NET_ADMIN: the TUN device, routes and routing rules, the nftables table, SO_MARK; the
 *   kernel's SAs and policies (netlink XFRM) and the IKE sockets' per-socket IPsec bypass;
 * - CAP_NET_RAW: the raw ESP, AH and IPPROTO_RAW sockets of the data plane;
 * - CAP_NET_BIND_SERVICE: UDP 500 (IKE) is below 1024;
 * - CAP_DAC_READ_SEARCH: reading a user's Kerberos tickets (mode 0600, the user's own) for AuthIP's
 *   Extended Mode — the file is checked and copied, never written (src/daemon/kerberos.ts).
 * The rest of the hardening: no new privileges, a read-only system except the state directory,
 * no access to kernel tunables, modules, logs or the clock, only the /dev/net/tun device, the
 * address families IPsec needs (inet, inet6, netlink, unix), no namespaces, no realtime, no SUID.
 * MemoryDenyWriteExecute stays off: V8's JIT writes the code it runs. PrivateTmp stays off: the
 * users' tickets live in /tmp (read there; the copies go to the runtime directory, /run/consec).
 */
import { execFile } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ConsecError } from '../errors.ts';
import { writeFileAtomic } from '../io/atomic.ts';

const run = promisify(execFile);

export const UNIT_NAME = 'consec.service';
export const UNIT_DIR = '/etc/systemd/system';

export interface UnitOptions {
  /** The command that runs consec: node, its flags, the CLI script. */
  command: string[];
  /** The state directory (policy, audit log, control socket). */
  stateDir: string;
}

/** systemd's quoting of one ExecStart word (systemd.service(5), "Command lines"). */
function quote(word: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word;
  return `"${word.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\$/g, '$$$$').replace(/%/g, '%%')}"`;
}

/** The unit file's text. */
export function unitText(o: UnitOptions): string {
  const exec = [...o.command, '--state-dir', o.stateDir, 'daemon'].map(quote).join(' ');
  return [
    '# Written by `consec service install`; `consec service uninstall` removes it.',
    '[Unit]',
    'Description=consec: Windows-style IPsec connection security',
    'Documentation=https://learn.microsoft.com/powershell/module/netsecurity/',
    // Up before the network: network-pre.target waits for READY (the filters are in).
    'DefaultDependencies=no',
    // /dev/net/tun exists once the static device nodes are made.
    'After=local-fs.target systemd-modules-load.service kmod-static-nodes.service systemd-tmpfiles-setup-dev.service',
    'Wants=network-pre.target',
    'Before=network-pre.target shutdown.target',
    'Conflicts=shutdown.target',
    '',
    '[Service]',
    'Type=notify',
    'NotifyAccess=main',
    `ExecStart=${exec}`,
    'ExecReload=/bin/kill -HUP $MAINPID',
    'Restart=on-failure',
    'RestartSec=2s',
    'TimeoutStartSec=90s',
    'TimeoutStopSec=30s',
    'UMask=0077',
    // /run/consec: scratch space only root reads (copies of users' tickets for Extended Mode).
    'RuntimeDirectory=consec',
    'RuntimeDirectoryMode=0700',
    // Kerberos' replay cache (AuthIP acceptors) there too: /var/tmp is read-only under ProtectSystem.
    'Environment=KRB5RCACHEDIR=/run/consec',
    // Scratch files (a source checkout's TypeScript loader caches there) likewise: /tmp is read-only.
    'Environment=TMPDIR=/run/consec',
    'CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE CAP_DAC_READ_SEARCH',
    'NoNewPrivileges=yes',
    'ProtectSystem=strict',
    `ReadWritePaths=${o.stateDir}`,
    'ProtectHome=read-only',
    'ProtectKernelTunables=yes',
    'ProtectKernelModules=yes',
    'ProtectKernelLogs=yes',
    'ProtectControlGroups=yes',
    'ProtectClock=yes',
    'ProtectHostname=yes',
    'DevicePolicy=closed',
    'DeviceAllow=/dev/net/tun rw',
    'RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK',
    'RestrictNamespaces=yes',
    'RestrictRealtime=yes',
    'RestrictSUIDSGID=yes',
    'LockPersonality=yes',
    'SystemCallArchitectures=native',
    '',
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

/** The command that runs this consec: the node binary, its loader flags, the CLI script. */
export function thisCommand(): string[] {
  // A loader named by package (`--import tsx`, a source checkout) resolves from the working
  // directory; systemd starts the service in /: named by its file URL instead.
  const flags = process.execArgv.map((a, i, all) =>
    i > 0 && (all[i - 1] === '--import' || all[i - 1] === '--loader') && !/^[./]|^file:/.test(a)
      ? import.meta.resolve(a)
      : a,
  );
  return [process.execPath, ...flags, realpathSync(process.argv[1] as string)];
}

/** Whether systemd runs this host (sd_booted(3)). */
export const systemdRunning = (): boolean => existsSync('/run/systemd/system');

async function systemctl(args: string[]): Promise<string> {
  try {
    return (await run('systemctl', args)).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new ConsecError('ERR_SYSTEMCTL', `systemctl ${args.join(' ')} failed: ${(e.stderr || e.message).trim()}`);
  }
}

/**
 * Writes the unit (atomically, mode 0644; a link in its place is replaced, never followed), then —
 * where systemd runs — reloads systemd and enables the unit (and starts it with `now`).
 */
export async function installService(
  o: UnitOptions & { unitDir?: string; now?: boolean },
  out: (line: string) => void,
): Promise<number> {
  const dir = o.unitDir ?? UNIT_DIR;
  if (!existsSync(dir)) throw new ConsecError('ERR_USAGE', `${dir} does not exist: is this a systemd host?`);
  const path = join(dir, UNIT_NAME);
  // ReadWritePaths= needs the state directory to exist, or the service cannot start.
  mkdirSync(o.stateDir, { recursive: true, mode: 0o700 });
  writeFileAtomic(path, unitText(o), 0o644);
  out(`wrote ${path}`);
  if (!systemdRunning() || o.unitDir) {
    out(`systemd is not running here: enable it at boot with "systemctl enable ${UNIT_NAME}"`);
    return 0;
  }
  await systemctl(['daemon-reload']);
  await systemctl(['enable', ...(o.now ? ['--now'] : []), UNIT_NAME]);
  out(`enabled ${UNIT_NAME}${o.now ? ' and started it' : ' (starts at boot; now: systemctl start consec)'}`);
  return 0;
}

/** Disables and removes the unit (the policy in the state directory stays). */
export async function uninstallService(o: { unitDir?: string }, out: (line: string) => void): Promise<number> {
  const path = join(o.unitDir ?? UNIT_DIR, UNIT_NAME);
  let isOurs = false;
  try {
    isOurs = lstatSync(path).isFile() && readFileSync(path, 'utf8').includes('consec service install');
  } catch {
    out(`${path} does not exist: nothing to remove`);
    return 0;
  }
  if (!isOurs) throw new ConsecError('ERR_USAGE', `${path} was not written by consec: not removed`);
  if (systemdRunning() && !o.unitDir) await systemctl(['disable', '--now', UNIT_NAME]);
  rmSync(path);
  if (systemdRunning() && !o.unitDir) await systemctl(['daemon-reload']);
  out(`removed ${path}`);
  return 0;
}

/** The service as systemd sees it: state, main PID and the daemon's own status line. */
export async function serviceStatus(out: (line: string) => void): Promise<number> {
  if (!systemdRunning()) {
    out('systemd is not running here: the daemon, if any, runs outside a service (consec pwsh Get-NetIPsecMainModeSA)');
    return 3;
  }
  const text = await systemctl([
    'show',
    UNIT_NAME,
    '--property=LoadState,UnitFileState,ActiveState,SubState,MainPID,StatusText,ExecMainStartTimestamp',
  ]);
  const p = Object.fromEntries(
    text
      .split('\n')
      .filter((l) => l.includes('='))
      .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
  out(`${UNIT_NAME}: ${p.LoadState === 'loaded' ? `${p.ActiveState} (${p.SubState})` : 'not installed'}`);
  if (p.UnitFileState) out(`  at boot:  ${p.UnitFileState}`);
  if (p.MainPID && p.MainPID !== '0') out(`  main PID: ${p.MainPID}, since ${p.ExecMainStartTimestamp}`);
  if (p.StatusText) out(`  status:   ${p.StatusText}`);
  out('  logs:     journalctl -u consec');
  // systemctl's own convention: 0 running, 3 not running.
  return p.ActiveState === 'active' ? 0 : 3;
}
