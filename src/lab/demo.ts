/**
 * `consec lab demo`: the main job. Builds a two-host lab, applies the Windows-syntax policy of
 * examples/demo-policy.ps1 on alice with consec's PowerShell front-end, then starts `consec daemon`
 * there: alice's own ping to bob enters consec's data plane, waits while IKEv2 with strongSwan on
 * bob negotiates what the policy asks for, and crosses as ESP, while a capture on bob shows that only
 * IKE and ESP cross the wire.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runPwsh } from '../shell/pwsh-cli.ts';
import { Capture } from './capture.ts';
import { requireLabPrerequisites } from './exec.ts';
import { Lab, type LabProcess } from './lab.ts';
import { Charon, pskHostTunnel, strongSwanAvailable } from './strongswan.ts';
import { hostToHost } from './topology.ts';

export const DEMO_POLICY = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'examples', 'demo-policy.ps1');
export const DEMO_PSK = 'lab-only-psk-0123456789abcdef';

export interface DemoOptions {
  out?: (line: string) => void;
}

/** The consec CLI as this process runs it (built dist/ or sources through tsx). */
function consecArgv(): string[] {
  return [process.execPath, ...process.execArgv, process.argv[1] as string];
}

/** Runs the demo; resolves with a process exit status. */
export async function runDemo(options: DemoOptions = {}): Promise<number> {
  const out = options.out ?? ((l: string) => process.stdout.write(`${l}\n`));
  requireLabPrerequisites(['ip', 'ping', 'tshark', 'swanctl']);
  if (!strongSwanAvailable()) throw new Error('strongSwan (strongswan-charon) is needed for the demo peer');
  out('== consec lab demo ==');
  out('1. Building the lab: two hosts on one segment (TEST-NET-1)');
  const lab = await Lab.create(hostToHost());
  const state = mkdtempSync(join(tmpdir(), 'consec-demo-'));
  let bob: Charon | undefined;
  let daemon: LabProcess | undefined;
  try {
    const a = lab.address('alice');
    const b = lab.address('bob');
    out(`   alice ${a} (${lab.ns('alice')}, runs consec)  <->  bob ${b} (${lab.ns('bob')}, runs strongSwan)`);
    const ping = await lab.exec('alice', ['ping', '-c', '1', '-W', '2', b], { allowFailure: true });
    out(`   cleartext reachability: ${ping.code === 0 ? 'ok' : 'FAILED'}`);
    if (ping.code !== 0) return 1;

    out('2. Policy on alice, in Windows NetSecurity syntax (examples/demo-policy.ps1), applied with consec pwsh:');
    const script = readFileSync(DEMO_POLICY, 'utf8');
    for (const line of script.split('\n')) if (line.trim() && !line.startsWith('#')) out(`   | ${line}`);
    let text = '';
    const status = await runPwsh(
      { source: script, scriptName: 'demo-policy.ps1' },
      state,
      { stdout: (t) => (text += t), stderr: (t) => (text += t) },
      { ...process.env, LAB_LOCAL: a, LAB_REMOTE: b },
    );
    for (const line of text.split('\n')) if (line.trim()) out(`     ${line}`);
    out(`   policy applied: ${status === 0 ? 'ok' : 'FAILED'}`);
    if (status !== 0) return 1;

    out('3. consec daemon on alice enforces it; alice pings bob: the first packet waits while IKEv2 negotiates');
    // bob's strongSwan accepts what the demo policy proposes.
    bob = await Charon.start(lab, 'bob', pskHostTunnel(b, a, { name: 'lab', secret: DEMO_PSK }));
    const cap = await Capture.start(lab, 'bob', 'eth0');
    daemon = lab.spawn('alice', [...consecArgv(), '--state-dir', state, 'daemon', '--listen', a, '--dpd', '0']);
    await daemon.waitFor(/"msg":"ready"/, 30_000);
    const neg = await lab.exec('alice', ['ping', '-c', '3', '-i', '0.3', '-W', '3', b], { allowFailure: true });
    for (const line of neg.stdout.split('\n')) if (line.trim()) out(`   | ${line}`);
    out('   the daemon said (Windows audit events and data plane):');
    for (const line of daemon.output().split('\n')) {
      if (!line.startsWith('{')) continue;
      const e = JSON.parse(line) as {
        msg?: string;
        audit?: {
          id: number;
          mainMode?: { cipher?: string; dhGroup?: string };
          quickMode?: { protocol: string; encryption: string; inboundSpi: number; outboundSpi: number };
        };
      };
      if (e.audit?.mainMode)
        out(`     ${e.audit.id} main mode SA established: ${e.audit.mainMode.cipher}, ${e.audit.mainMode.dhGroup}`);
      else if (e.audit?.quickMode)
        out(
          `     ${e.audit.id} quick mode SA established: ${e.audit.quickMode.protocol} ${e.audit.quickMode.encryption}, SPIs in ${e.audit.quickMode.inboundSpi.toString(16).padStart(8, '0')} out ${e.audit.quickMode.outboundSpi.toString(16).padStart(8, '0')}`,
        );
      else if (e.msg === 'acquire' || e.msg === 'fail-closed filters installed') out(`     ${e.msg}`);
    }

    out("4. strongSwan's view on bob (swanctl --list-sas):");
    for (const line of (await bob.swanctl(['--list-sas'])).split('\n')) if (line.trim()) out(`   ${line}`);

    const rows = await cap.fields(['frame.protocols']);
    await cap.dispose();
    const counts = new Map<string, number>();
    for (const [proto = ''] of rows) if (proto.includes(':ip:')) counts.set(proto, (counts.get(proto) ?? 0) + 1);
    out('5. On the wire at bob (dumpcap, decoded by tshark):');
    for (const [proto, n] of counts) out(`     ${String(n).padStart(3)} x ${proto}`);
    const clear = [...counts.keys()].filter((k) => !k.endsWith(':esp') && !k.endsWith(':isakmp'));
    const esp = [...counts.entries()].filter(([k]) => k.endsWith(':esp')).reduce((n, [, c]) => n + c, 0);
    out(
      clear.length === 0
        ? `   only IKE and ESP crossed the wire (${esp} ESP packets): no cleartext.`
        : `   CLEARTEXT SEEN: ${clear.join(', ')}`,
    );
    return neg.code === 0 && clear.length === 0 && esp >= 6 ? 0 : 1;
  } finally {
    await daemon?.stop('SIGTERM', 5000);
    await bob?.stop();
    await lab.destroy();
    rmSync(state, { recursive: true, force: true });
    out('6. Lab torn down.');
  }
}
