/**
 * `consec lab demo --domain`: domain isolation between two Linux hosts. Builds the lab's domain (a
 * dc running MIT krb5-kdc and the domain's DNS, members alice and bob with computer accounts in
 * their keytabs, finding the KDC through DNS), applies
 * examples/domain-isolation.ps1 on both members with consec's PowerShell front-end, starts
 * `consec daemon` on each: alice's ping to bob waits while AuthIP authenticates both computers with
 * Kerberos, then crosses as ESP. Shows the SA as Get-NetIPsecMainModeSA does and what the wire
 * carried.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runPwsh } from '../shell/pwsh-cli.ts';
import { Capture } from './capture.ts';
import { requireLabPrerequisites } from './exec.ts';
import { LabDomain } from './kdc.ts';
import { Lab, type LabProcess } from './lab.ts';
import { domain } from './topology.ts';

export const DOMAIN_POLICY = join(
  dirname(fileURLToPath(import.meta.url)),
  '..',
  '..',
  'examples',
  'domain-isolation.ps1',
);

const consecArgv = (): string[] => [process.execPath, ...process.execArgv, process.argv[1] as string];

async function pwsh(source: string, state: string, env: NodeJS.ProcessEnv): Promise<{ status: number; text: string }> {
  let text = '';
  const status = await runPwsh(
    { source, scriptName: 'domain-isolation.ps1' },
    state,
    { stdout: (t) => (text += t), stderr: (t) => (text += t) },
    env,
  );
  return { status, text };
}

/** Runs the domain demo; resolves with a process exit status. */
export async function runDomainDemo(out: (line: string) => void): Promise<number> {
  requireLabPrerequisites(['ip', 'ping', 'tshark', 'krb5kdc', 'kadmin.local']);
  out('== consec lab demo --domain ==');
  out('1. Building the domain: dc (KDC and DNS of CORP.EXAMPLE), members alice and bob, on one switched segment');
  const lab = await Lab.create(domain());
  const states: Record<string, string> = {};
  const daemons: LabProcess[] = [];
  try {
    const dom = await LabDomain.create(lab, { dns: true });
    for (const m of ['alice', 'bob']) {
      await dom.join(m);
      out(`   ${m} ${lab.address(m)} joined: computer account ${dom.computerPrincipal(m)} in its keytab`);
    }
    const dc = lab.address('dc');
    const script = readFileSync(DOMAIN_POLICY, 'utf8');
    out('2. Policy on both members, in Windows NetSecurity syntax (examples/domain-isolation.ps1):');
    for (const line of script.split('\n')) if (line.trim() && !line.startsWith('#')) out(`   | ${line}`);
    for (const m of ['alice', 'bob']) {
      states[m] = mkdtempSync(join(tmpdir(), `consec-demo-${m}-`));
      const r = await pwsh(script, states[m], { ...process.env, LAB_SEGMENT: '192.0.2.0/24', LAB_DC: dc });
      if (m === 'alice') for (const line of r.text.split('\n')) if (line.trim()) out(`     ${line}`);
      if (r.status !== 0) {
        out(`   policy on ${m}: FAILED\n${r.text}`);
        return 1;
      }
    }
    out('3. consec daemon on each member (Kerberos from its keytab); alice pings bob');
    const cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'ip' });
    for (const m of ['bob', 'alice']) {
      const env = { ...process.env, KRB5_CONFIG: dom.krb5Conf, KRB5_KTNAME: `FILE:${dom.keytab(m)}` };
      const d = lab.spawn(
        m,
        [...consecArgv(), '--state-dir', states[m] as string, 'daemon', '--listen', lab.address(m), '--dpd', '0'],
        { env },
      );
      daemons.push(d);
      await d.waitFor(/"msg":"ready"/, 30_000);
    }
    const a = lab.address('alice');
    const b = lab.address('bob');
    const ping = await lab.exec('alice', ['ping', '-c', '3', '-i', '0.3', '-W', '3', b], { allowFailure: true });
    for (const line of ping.stdout.split('\n')) if (line.trim()) out(`   | ${line}`);
    out('4. The main mode SA on alice (Get-NetIPsecMainModeSA):');
    const view = await pwsh(
      'Get-NetIPsecMainModeSA | Format-List LocalEndpoint, RemoteEndpoint, KeyModule, LocalFirstId, RemoteFirstId, CipherAlgorithm, HashAlgorithm',
      states.alice as string,
      process.env,
    );
    for (const line of view.text.split('\n')) if (line.trim()) out(`   ${line}`);
    const rows = await cap.fields(['frame.protocols', 'isakmp.exchangetype'], `ip.addr == ${a} && ip.addr == ${b}`);
    await cap.dispose();
    const counts = new Map<string, number>();
    for (const [proto = '', x = ''] of rows) {
      const k = proto.endsWith(':isakmp') ? `${proto} (exchange ${x}: AuthIP)` : proto;
      counts.set(k, (counts.get(k) ?? 0) + 1);
    }
    out('5. On the wire between alice and bob (dumpcap at bob, decoded by tshark):');
    for (const [proto, n] of counts) out(`     ${String(n).padStart(3)} x ${proto}`);
    const clear = [...counts.keys()].filter((k) => !k.includes(':esp') && !k.includes(':isakmp'));
    const esp = [...counts.entries()].filter(([k]) => k.endsWith(':esp')).reduce((n, [, c]) => n + c, 0);
    out(
      clear.length === 0
        ? `   only AuthIP and ESP crossed between the members (${esp} ESP packets): no cleartext.`
        : `   CLEARTEXT SEEN: ${clear.join(', ')}`,
    );
    return ping.code === 0 && clear.length === 0 && esp >= 6 ? 0 : 1;
  } finally {
    for (const d of daemons.reverse()) await d.stop('SIGTERM', 5000);
    await lab.destroy();
    for (const s of Object.values(states)) rmSync(s, { recursive: true, force: true });
    out('6. Lab torn down.');
  }
}
