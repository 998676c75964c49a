import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { run, type RunResult } from '../src/lab/exec.ts';
import type { Lab, LabProcess } from '../src/lab/lab.ts';
import type { Issued } from '../src/lab/pki.ts';
import type { ChildSaSpec, TrafficSelector } from '../src/sa/spec.ts';
import { ps } from './pwsh-helpers.ts';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Polls `cond` (every 100 ms) until it holds; fails naming `what` after `ms`. The wait for an event, never a sleep. */
export async function waitUntil(cond: () => boolean | Promise<boolean>, what: string, ms = 8000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Starts test/fixtures/<name>.ts inside a lab host with this Node and tsx. */
export function fixture(
  lab: Lab,
  host: string,
  name: string,
  args: readonly (string | number)[] = [],
  env?: Record<string, string>,
): LabProcess {
  return lab.spawn(
    host,
    [process.execPath, '--import', 'tsx', join(ROOT, 'test', 'fixtures', `${name}.ts`), ...args.map(String)],
    env ? { env: { ...process.env, ...env } } : {},
  );
}

/** Parses the JSON lines a fixture printed and returns those with the given event. */
export function events<T = Record<string, unknown>>(proc: LabProcess, event: string): T[] {
  return proc
    .output()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((e) => e.event === event) as T[];
}

/** A daemon's JSON log lines with message `msg`. */
export function logLines(p: LabProcess, msg: string): Record<string, unknown>[] {
  return p
    .output()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === msg);
}

/** argv running the consec CLI from source with this Node and tsx, against `stateDir` when given. */
export function consecArgv(args: readonly string[], stateDir?: string): string[] {
  return [
    process.execPath,
    '--import',
    'tsx',
    join(ROOT, 'src/cli/main.ts'),
    ...(stateDir === undefined ? [] : ['--state-dir', stateDir]),
    ...args,
  ];
}

/** `consec pwsh -Command …` as a separate process (as an admin runs it), never failing on exit status. */
export function consecPwsh(stateDir: string, command: string): Promise<RunResult> {
  return run(consecArgv(['pwsh', '-Command', command], stateDir), { allowFailure: true });
}

/** `consec daemon` on `listen` in a lab host, with the policy of `stateDir` (liveness checks off). */
export function consecDaemon(
  lab: Lab,
  host: string,
  stateDir: string,
  listen: string,
  extra: string[] = [],
  env?: Record<string, string>,
): LabProcess {
  return lab.spawn(
    host,
    consecArgv(['daemon', '--listen', listen, '--dpd', '0', ...extra], stateDir),
    env ? { env: { ...process.env, ...env } } : {},
  );
}

export const DATAPLANE_PSK = 'lab-only-dataplane-psk-0123456789';

export interface PolicyOptions {
  local: string;
  remote: string;
  /** A tunnel between local and remote (else transport between the two hosts). */
  tunnel?: boolean;
  /** The protected traffic, when it is not the two hosts' own (tunnel mode between subnets). */
  localAddress?: string;
  remoteAddress?: string;
  /** The quick mode proposal's parameters (default ESP AES-GCM-256). */
  qm?: string;
  /** A main mode rule for the IKE peers with AES256-SHA256-DH19 (strongSwan's side of the lab expects it). */
  mm?: boolean;
  /** That main mode crypto set's -MaxMinutes (the main mode SA lifetime; Windows' default 480). */
  mmMaxMinutes?: number;
  /** The phase 1 auth proposal's parameters (default: the pre-shared key `psk`). */
  auth?: string;
  psk?: string;
  /** Request or Require (default) in both directions. */
  security?: 'Request' | 'Require';
  /** The quick mode crypto set's -PerfectForwardSecrecyGroup (none by default, as on Windows). */
  pfs?: string;
  /** The rule's -KeyModule (Windows' default: Default). */
  keyModule?: 'Default' | 'IKEv1' | 'IKEv2';
}

/** A Require rule written as a Windows admin would, with a PSK auth set, into `stateDir`. */
export async function applyPolicy(stateDir: string, o: PolicyOptions): Promise<void> {
  const lines = [
    `$qm = New-NetIPsecQuickModeCryptoProposal ${o.qm ?? '-Encapsulation ESP -Encryption AESGCM256 -ESPHash AESGMAC256'}`,
    `$qmSet = New-NetIPsecQuickModeCryptoSet -DisplayName "QM" -Proposal $qm${o.pfs ? ` -PerfectForwardSecrecyGroup ${o.pfs}` : ''}`,
    `$psk = New-NetIPsecAuthProposal -Machine ${o.auth ?? `-PreSharedKey "${o.psk ?? DATAPLANE_PSK}"`}`,
    '$p1 = New-NetIPsecPhase1AuthSet -DisplayName "PSK" -Proposal $psk',
  ];
  if (o.mm)
    lines.push(
      '$mm = New-NetIPsecMainModeCryptoProposal -Encryption AES256 -Hash SHA256 -KeyExchange DH19',
      `$mmSet = New-NetIPsecMainModeCryptoSet -DisplayName "MM" -Proposal $mm${o.mmMaxMinutes ? ` -MaxMinutes ${o.mmMaxMinutes}` : ''}`,
      `New-NetIPsecMainModeRule -DisplayName "MM" -LocalAddress ${o.local} -RemoteAddress ${o.remote} -MainModeCryptoSet $mmSet.Name | Out-Null`,
    );
  const tunnel = o.tunnel ? `-Mode Tunnel -LocalTunnelEndpoint ${o.local} -RemoteTunnelEndpoint ${o.remote} ` : '';
  lines.push(
    `New-NetIPsecRule -DisplayName "protect ${o.remoteAddress ?? o.remote}" ${tunnel}` +
      `-LocalAddress ${o.localAddress ?? o.local} -RemoteAddress ${o.remoteAddress ?? o.remote} ` +
      `-InboundSecurity ${o.security ?? 'Require'} -OutboundSecurity ${o.security ?? 'Require'} ` +
      `-Phase1AuthSet $p1.Name -QuickModeCryptoSet $qmSet.Name${o.keyModule ? ` -KeyModule ${o.keyModule}` : ''} | Out-Null`,
  );
  const r = await ps(lines.join('\n'), stateDir);
  assert.equal(r.errors, 0, r.err);
}

/** Puts a machine certificate (with its key) and the root CA into `stateDir`'s machine stores. */
export function installMachineCert(stateDir: string, name: string, cert: Issued, rootPem: string): void {
  for (const sub of ['my', 'root']) mkdirSync(join(stateDir, 'certs', sub), { recursive: true, mode: 0o700 });
  writeFileSync(join(stateDir, 'certs', 'my', `${name}.pem`), cert.certPem + cert.keyPem, { mode: 0o600 });
  writeFileSync(join(stateDir, 'certs', 'root', 'lab-root.pem'), rootPem);
}

/**
 * A negotiated AES-GCM-256 tunnel-mode child SA with random keys, as the data plane's SAD takes it
 * (SAD tests and the SAD lookup bench): inbound and outbound SPI `spi`, our selectors `tsi`.
 */
export function gcmChildSa(spi: number, tsi: TrafficSelector[], tsr: TrafficSelector[]): ChildSaSpec {
  return {
    protocol: 'esp',
    mode: 'tunnel',
    cipher: 'aes-gcm-16',
    esn: false,
    inbound: { spi, encrKey: randomBytes(36), integKey: Buffer.alloc(0) },
    outbound: { spi, encrKey: randomBytes(36), integKey: Buffer.alloc(0) },
    localTs: tsi,
    remoteTs: tsr,
    local: { address: '192.0.2.1', port: 0 },
    remote: { address: '192.0.2.2', port: 0 },
    udpEncapsulation: false,
  };
}

/**
 * tshark over a capture, with the Wireshark key tables consec wrote into `keysDir`
 * (ikev2_decryption_table / ikev1_decryption_table, esp_sa): the fields of the matching packets.
 */
export async function tsharkWithKeys(
  capFile: string,
  keysDir: string,
  tables: readonly string[],
  filter: string,
  fields: readonly string[],
): Promise<string[]> {
  const uat = tables.flatMap((table) =>
    readFileSync(join(keysDir, table), 'utf8')
      .trim()
      .split('\n')
      .flatMap((row) => ['-o', `uat:${table}:${row}`]),
  );
  const { stdout } = await run([
    'tshark',
    '-n',
    '-r',
    capFile,
    ...uat,
    '-o',
    'esp.enable_encryption_decode:TRUE',
    '-Y',
    filter,
    '-T',
    'fields',
    ...fields.flatMap((f) => ['-e', f]),
  ]);
  return stdout.trim().split('\n');
}

/**
 * A counted 30 % loss of IKE datagrams (UDP 500/4500) arriving at each of `hosts`: the first three
 * of every ten are dropped (nft numgen), so loss certainly happens, every run. `dropped()` reads each
 * host's counter; `remove()` takes the tables away (also when a test failed).
 */
export async function ikeLoss(
  lab: Lab,
  hosts: readonly string[],
): Promise<{ dropped(): Promise<Record<string, number>>; remove(): Promise<void> }> {
  const table = [
    'table inet consec_loss {',
    '  chain input { type filter hook input priority 0; udp dport { 500, 4500 } numgen inc mod 10 < 3 counter drop; }',
    '}',
  ].join('\n');
  for (const h of hosts) await lab.exec(h, ['nft', '-f', '-'], { input: table });
  return {
    async dropped() {
      const out: Record<string, number> = {};
      for (const h of hosts) {
        const list = await lab.exec(h, ['nft', 'list', 'table', 'inet', 'consec_loss']);
        out[h] = Number(/counter packets (\d+)/.exec(list.stdout)?.[1] ?? 0);
      }
      return out;
    },
    async remove() {
      for (const h of hosts)
        await lab.exec(h, ['nft', 'delete', 'table', 'inet', 'consec_loss'], { allowFailure: true });
    },
  };
}
