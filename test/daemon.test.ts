/**
 * `consec daemon` in a lab host, configured only through Windows-syntax policy: strongSwan connects
 * to it (PSK, and certificates from the machine store as in the seeds' ESAE settings), a policy
 * change that keeps the rule keeps the SA, removing the rule deletes it at the peer, and stopping
 * the daemon deletes its SAs.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { GUARD_TABLE } from '../src/dataplane/guard.ts';
import { PacketBatch, UnixDatagramSocket } from '../src/io/native.ts';
import { run } from '../src/lab/exec.ts';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Lab, LabProcess } from '../src/lab/lab.ts';
import { Lab as LabClass } from '../src/lab/lab.ts';
import { LabPki } from '../src/lab/pki.ts';
import { Charon, certHostTunnel, pskHostTunnel } from '../src/lab/strongswan.ts';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { hostToHost } from '../src/lab/topology.ts';
import { consecArgv, consecDaemon, installMachineCert, logLines, ROOT, waitUntil } from './helpers.ts';
import { freshStateDir, ps } from './pwsh-helpers.ts';
import { runAuditpol } from '../src/audit/policy.ts';
import { PolicyStores } from '../src/policy/store.ts';
import { netSecurityCommands } from '../src/shell/netsecurity/cmdlets.ts';

const PSK = 'lab-only-daemon-psk-0123456789';

const until = waitUntil;

/** A Windows server-to-server tunnel policy: MM set and rule, QM set, phase 1 auth set, rule. */
const serverPolicy = (
  local: string,
  remote: string,
  mm: string,
  auth: string,
  names: { mm: string; p1: string; qm: string },
) => [
  `$mm = New-NetIPsecMainModeCryptoProposal ${mm}`,
  `$mmSet = New-NetIPsecMainModeCryptoSet -DisplayName "${names.mm}" -Proposal $mm`,
  `New-NetIPsecMainModeRule -DisplayName "${names.mm} rule" -LocalAddress ${local} -RemoteAddress ${remote} -MainModeCryptoSet $mmSet.Name | Out-Null`,
  '$qm = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -Encryption AESGCM256 -ESPHash AESGMAC256',
  `$qmSet = New-NetIPsecQuickModeCryptoSet -DisplayName "${names.qm}" -Proposal $qm`,
  `$auth = New-NetIPsecAuthProposal -Machine ${auth}`,
  `$p1 = New-NetIPsecPhase1AuthSet -DisplayName "${names.p1}" -Proposal $auth`,
];

const tunnelRule = (name: string, local: string, remote: string, p1: string, qm: string) =>
  `New-NetIPsecRule -DisplayName "${name}" -Mode Tunnel -LocalTunnelEndpoint ${local} -RemoteTunnelEndpoint ${remote} ` +
  `-LocalAddress ${local} -RemoteAddress ${remote} -InboundSecurity Require -OutboundSecurity Require ` +
  `-Phase1AuthSet ${p1} -QuickModeCryptoSet ${qm} | Out-Null`;

/** bob's PSK server-to-server tunnel policy towards alice (MM AES256/SHA256/DH14, QM AES-GCM-256). */
async function pskServerPolicy(dir: string, local: string, remote: string): Promise<void> {
  const setup = await ps(
    [
      ...serverPolicy(local, remote, '-Encryption AES256 -Hash SHA256 -KeyExchange DH14', `-PreSharedKey "${PSK}"`, {
        mm: 'MM',
        p1: 'PSK',
        qm: 'QM',
      }),
      tunnelRule('Server to server', local, remote, '$p1.Name', '$qmSet.Name'),
    ].join('\n'),
    dir,
  );
  assert.equal(setup.errors, 0, setup.err);
}

describe('consec daemon', () => {
  let lab: Lab;
  let a: string;
  let b: string;
  before(async () => {
    lab = await LabClass.create(hostToHost());
    a = lab.address('alice');
    b = lab.address('bob');
  });
  after(async () => {
    await lab?.destroy();
  });

  it('answers strongSwan per policy, keeps the SA across a compatible reload, deletes it when the rule goes', async () => {
    const dir = freshStateDir('consec-daemon-');
    await pskServerPolicy(dir, b, a);
    runAuditpol(dir, ['/set', '/subcategory:IPsec Main Mode', '/success:enable']);
    // Objects of every kind, also ones this peer does not use (a user auth set, a main mode rule elsewhere).
    const more = await ps(
      [
        '$k = New-NetIPsecAuthProposal -User -Kerberos',
        'New-NetIPsecPhase2AuthSet -DisplayName "User Kerberos" -Proposal $k | Out-Null',
        '$mm = Get-NetIPsecMainModeCryptoSet | Select-Object -First 1',
        'New-NetIPsecMainModeRule -DisplayName "elsewhere" -RemoteAddress 198.51.100.77 -MainModeCryptoSet $mm.Name | Out-Null',
      ].join('\n'),
      dir,
    );
    assert.equal(more.errors, 0, more.err);
    const d = consecDaemon(lab, 'bob', dir, b);
    let alice: Charon | undefined;
    try {
      await d.waitFor(/keying service started/);
      alice = await Charon.start(
        lab,
        'alice',
        pskHostTunnel(a, b, { name: 'c', secret: PSK, proposals: ['aes256-sha256-modp2048'], logLevel: 2 }),
      );
      await alice.initiate('c');
      const [sa] = await alice.listSas();
      assert.equal(sa?.state, 'ESTABLISHED');
      await until(() => logLines(d, 'audit 5451').length === 1, 'audit 5451');
      const audit = logLines(d, 'audit 4650')[0]?.audit as { mainMode: { role: string; cipher: string } };
      assert.deepEqual([audit.mainMode.role, audit.mainMode.cipher], ['Responder', 'AES-256']);
      assert.equal(logLines(d, 'SA installed')[0]?.spiOut, sa?.children[0]?.spiIn);

      // The live views, as an admin reads them: the same SPIs strongSwan shows, the socket root-only.
      const cli = (args: string[]) => run(consecArgv(args, dir), { allowFailure: true });
      const qm = await cli([
        'pwsh',
        '-Command',
        'Get-NetIPsecQuickModeSA | Format-List Name, InboundSpi, OutboundSpi, EncapsulationMode, EncryptionAlgorithm',
      ]);
      assert.equal(qm.code, 0, qm.stderr);
      assert.match(qm.stdout, new RegExp(`InboundSpi +: ${sa?.children[0]?.spiOut}`));
      assert.match(qm.stdout, new RegExp(`OutboundSpi +: ${sa?.children[0]?.spiIn}`));
      assert.match(qm.stdout, /EncapsulationMode +: Tunnel/);
      assert.match(qm.stdout, /EncryptionAlgorithm +: AESGCM256/);
      const mm = await cli(['netsh', 'advfirewall', 'monitor', 'show', 'mmsa']);
      assert.match(mm.stdout, new RegExp(`Remote IP Address: +${a}`));
      assert.match(mm.stdout, /MM Offer: +AES256-SHA256 DH Group 14/);
      assert.match(mm.stdout, /Ok\./);
      assert.equal(statSync(join(dir, 'control.sock')).mode & 0o777, 0o600);
      const nobody = await run(
        ['runuser', '-u', 'nobody', '--', ...consecArgv(['pwsh', '-Command', 'Get-NetIPsecMainModeSA'], dir)],
        { allowFailure: true },
      );
      assert.notEqual(nobody.code, 0, 'a non-root user gets nothing');
      assert.doesNotMatch(nobody.stdout, /CookiePair/);
      const stats = await cli(['pwsh', '-Command', 'Get-NetIPsecStatistics | Format-List']);
      assert.match(stats.stdout, /ActiveMainModeSAs +: 1/, stats.stdout + stats.stderr);
      assert.match(stats.stdout, /ActiveQuickModeSAs +: 1/);
      assert.match(stats.stdout, /MainModeSAsEstablished +: 1/);
      // Every Get- cmdlet consec has, with a live SA, as Format-List shows it: each has something to
      // show, nothing fails, and no value is printed as JavaScript would ([object Object]).
      // A firewall rule for the firewall cmdlets to show (it only drops cleartext to TCP port 9).
      const fw = await cli([
        'pwsh',
        '-Command',
        'New-NetFirewallRule -DisplayName probe -Protocol TCP -LocalPort 9 -Authentication Required | Out-Null',
      ]);
      assert.equal(fw.code, 0, fw.stderr);
      const input: Record<string, string> = {
        'Get-NetFirewallAddressFilter': 'Get-NetIPsecRule | ',
        'Get-NetFirewallPortFilter': 'Get-NetIPsecRule | ',
      };
      // What consec does not have says so, with an error.
      const refused: Record<string, RegExp> = { 'Get-NetIPsecDospSetting': /consec has no IPsec DoS protection/ };
      const args: Record<string, string> = {
        'Get-Service': ' IKEEXT, PolicyAgent',
        'Get-WinEvent': " -FilterHashtable @{LogName='Security'} -MaxEvents 5",
      };
      const gets = netSecurityCommands(new PolicyStores(dir))
        .map((c) => c.name)
        .filter((n) => n.startsWith('Get-'));
      assert.ok(gets.length >= 15, gets.join(' '));
      for (const name of gets) {
        const r = await cli(['pwsh', '-Command', `${input[name] ?? ''}${name}${args[name] ?? ''} | Format-List`]);
        const refusal = refused[name];
        if (refusal) {
          assert.notEqual(r.code, 0, name);
          assert.match(r.stderr, refusal);
          continue;
        }
        assert.equal(r.code, 0, `${name}: ${r.stderr}`);
        assert.match(r.stdout, /^\S+ +: \S/m, `${name} shows properties`);
        assert.doesNotMatch(r.stdout, /\[object Object\]|\[object |undefined/, `${name}:\n${r.stdout}`);
      }
      // Remove-NetIPsecQuickModeSA deletes the child SA at strongSwan too; the IKE SA stays.
      const rmq = await cli(['pwsh', '-Command', 'Get-NetIPsecQuickModeSA | Remove-NetIPsecQuickModeSA']);
      assert.equal(rmq.code, 0, rmq.stdout + rmq.stderr);
      await until(
        async () => ((await (alice as Charon).listSas())[0]?.children ?? []).length === 0,
        'strongSwan to drop the child SA',
      );
      assert.match(alice.log(), /received DELETE for ESP CHILD_SA/);

      // A change that leaves the rule alone keeps the SA.
      const add = await ps(
        `New-NetIPsecRule -DisplayName "unrelated" -RemoteAddress 198.51.100.7 -InboundSecurity Request -OutboundSecurity Request | Out-Null`,
        dir,
      );
      assert.equal(add.errors, 0, add.err);
      await until(() => logLines(d, 'policy reloaded').length === 1, 'reload');
      assert.deepEqual([logLines(d, 'policy reloaded')[0]?.kept, logLines(d, 'policy reloaded')[0]?.deleted], [1, 0]);
      assert.equal((await alice.listSas())[0]?.state, 'ESTABLISHED');

      // Removing the rule deletes the SA at strongSwan.
      const rm = await ps('Remove-NetIPsecRule -DisplayName "Server to server"', dir);
      assert.equal(rm.errors, 0, rm.err);
      await until(async () => (await (alice as Charon).listSas()).length === 0, 'strongSwan to drop the SA');
      assert.match(alice.log(), /received DELETE for IKE_SA/);
      // strongSwan drops the SA when our Delete arrives; ours ends (4655) when its answer is back.
      await until(
        () => logLines(d, 'audit 4655').some((l) => (l.audit as { reason: string }).reason === 'policy changed'),
        'the IKE SA to end for the policy change (4655)',
      );
    } finally {
      await alice?.stop();
      await d.stop('SIGTERM', 5000);
    }
  });

  it('Prometheus metrics: SAs by state, setup latency, failures by reason, traffic; parsed as text exposition format', async () => {
    const dir = freshStateDir('consec-daemon-metrics-');
    await pskServerPolicy(dir, b, a);
    const d = consecDaemon(lab, 'bob', dir, b, ['--metrics', '127.0.0.1:9464']);
    const scrape = async (path = '/metrics') => {
      const r = await lab.exec('bob', [
        process.execPath,
        '-e',
        `fetch('http://127.0.0.1:9464${path}').then(async (r) => process.stdout.write(r.status + ' ' + r.headers.get('content-type') + '\\n' + (await r.text())))`,
      ]);
      const nl = r.stdout.indexOf('\n');
      return { head: r.stdout.slice(0, nl), body: r.stdout.slice(nl + 1) };
    };
    let alice: Charon | undefined;
    try {
      await d.waitFor(/"msg":"ready"/);
      // A wrong PSK first (a failure with its reason), then the right one.
      const config = (secret: string) =>
        pskHostTunnel(a, b, { name: 'c', secret, proposals: ['aes256-sha256-modp2048'], logLevel: 1 });
      const wrong = await Charon.start(lab, 'alice', config('not-the-psk-0123456789'));
      await wrong.initiate('c').catch(() => {});
      await wrong.stop();
      await until(() => logLines(d, 'audit 4653').length >= 1, 'audit 4653');
      alice = await Charon.start(lab, 'alice', config(PSK));
      await alice.initiate('c');
      const ping = await lab.exec('alice', ['ping', '-c', '3', '-i', '0.2', '-W', '2', b], { allowFailure: true });
      assert.match(ping.stdout, / 0% packet loss/);

      const { head, body } = await scrape();
      assert.match(head, /^200 text\/plain; version=0\.0\.4/);
      const families = new Map(parsePrometheusTextFormat(body).map((f) => [f.name, f]));
      const sample = (name: string, labels: Record<string, string> = {}) =>
        families.get(name)?.metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v));
      const value = (name: string, labels: Record<string, string> = {}) => Number(sample(name, labels)?.value);
      assert.equal(families.get('consec_ike_sas')?.type, 'GAUGE');
      assert.equal(value('consec_ike_sas', { state: 'established' }), 1, body);
      assert.equal(value('consec_child_sas', { state: 'installed' }), 1);
      // (This parser folds a labelled histogram into its buckets: "+Inf" is the count.)
      const setupHist = families.get('consec_ike_sa_setup_seconds');
      assert.equal(setupHist?.type, 'HISTOGRAM');
      assert.match(body, /consec_ike_sa_setup_seconds_count\{role="responder"\} 1\n/);
      assert.equal(Number(setupHist?.metrics[0]?.buckets?.['+Inf']), 1, 'one IKE SA set up (the failed one never was)');
      assert.equal(Number(setupHist?.metrics[0]?.buckets?.['10']), 1, 'in less than 10 s');
      assert.ok(
        value('consec_negotiation_failures_total', { phase: 'main_mode', reason: 'AUTHENTICATION_FAILED' }) >= 1,
        JSON.stringify(families.get('consec_negotiation_failures_total')),
      );
      assert.ok(value('consec_audit_events_total', { id: '4653' }) >= 1);
      assert.equal(value('consec_audit_events_total', { id: '5478' }), 1, 'IPsec Services started');
      assert.equal(value('consec_audit_events_total', { id: '5451' }), 1);
      assert.ok(value('consec_dataplane_packets_total', { direction: 'in' }) >= 3, 'the pings came in through the SA');
      assert.ok(value('consec_dataplane_packets_total', { direction: 'out' }) >= 3);
      assert.ok(value('consec_dataplane_bytes_total', { direction: 'in' }) >= 3 * 84);
      assert.equal(families.get('consec_dataplane_bytes_total')?.type, 'COUNTER');
      assert.equal(value('consec_dataplane_queued_packets'), 0);
      assert.ok(value('consec_process_resident_memory_bytes') > 0, 'process metrics too');
      // Counters only grow between scrapes.
      await lab.exec('alice', ['ping', '-c', '2', '-i', '0.2', '-W', '2', b]);
      const again = new Map(parsePrometheusTextFormat((await scrape()).body).map((f) => [f.name, f]));
      const inAgain = again.get('consec_dataplane_packets_total')?.metrics.find((m) => m.labels?.direction === 'in');
      assert.ok(Number(inAgain?.value) >= value('consec_dataplane_packets_total', { direction: 'in' }) + 2);
      assert.match((await scrape('/')).head, /^404/);
      // Seed 000's check: the keying service runs.
      const svc = await run(consecArgv(['pwsh', '-Command', '(Get-Service IKEEXT).Status'], dir));
      assert.equal(svc.stdout, 'Running\n');
      const stats = await run(consecArgv(['pwsh', '-Command', '(Get-NetIPsecStatistics).AuthenticationFailures'], dir));
      assert.ok(Number(stats.stdout) >= 1, `the wrong PSK counted: ${stats.stdout}`);
      // What admin scripts run after a policy change: every main mode SA ends (the peer is told).
      const ended = logLines(d, 'audit 4655').length;
      const restart = await run(
        consecArgv(['pwsh', '-Command', '(Restart-Service -Name IKEEXT -Force -PassThru).Status'], dir),
      );
      assert.equal(restart.stdout, 'Running\n', restart.stderr);
      await until(
        () =>
          logLines(d, 'audit 4655')
            .slice(ended)
            .some((l) => (l.audit as { reason: string }).reason === 'removed by an administrator'),
        'the main mode SA ended by Restart-Service',
      );
    } finally {
      await alice?.stop();
      await d.stop('SIGTERM', 5000);
    }
  });

  it('IKE debug log (seed 000: netsh … set global ipsec debuglog): messages, proposals, notifies, no secrets; rotated; off again', async () => {
    const dir = freshStateDir('consec-daemon-debuglog-');
    await pskServerPolicy(dir, b, a);
    const netsh = (...words: string[]) =>
      run(consecArgv(['netsh', 'advfirewall', 'set', 'global', 'ipsec', 'debuglog', ...words], dir), {
        allowFailure: true,
      });
    // The seed's Windows path is refused with a clear message; nothing changes.
    const winPath = await netsh('file', 'C:Logsipsec.log');
    assert.notEqual(winPath.code, 0);
    assert.match(winPath.stdout + winPath.stderr, /is a Windows path; give a Linux path/);
    const file = join(dir, 'logs', 'ike.log');
    for (const words of [['enable'], ['file', file], ['size', '2']]) {
      const r = await netsh(...words);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /Ok\./);
    }
    const d = consecDaemon(lab, 'bob', dir, b);
    let alice: Charon | undefined;
    try {
      await d.waitFor(/"msg":"ready"/);
      alice = await Charon.start(
        lab,
        'alice',
        pskHostTunnel(a, b, { name: 'c', secret: PSK, proposals: ['aes256-sha256-modp2048'], logLevel: 1 }),
      );
      await alice.initiate('c');
      await until(() => logLines(d, 'audit 5451').length === 1, 'audit 5451');
      const [sa] = await alice.listSas();
      const read = (f: string) => (existsSync(f) ? readFileSync(f, 'utf8') : '');
      const trace = read(`${file}.1`) + read(file);
      assert.ok(existsSync(`${file}.1`), `rotated at 2 KB: ${read(file)}`);
      for (const f of [file, `${file}.1`]) assert.ok(statSync(f).size <= 2048, `${f}: ${statSync(f).size} octets`);
      assert.equal(statSync(file).mode & 0o777, 0o600);
      assert.match(trace, new RegExp(`received ${a}:500 -> ${b}:500 IKE_SA_INIT request #0`));
      assert.match(
        trace,
        /SA\[#1 IKE: AES_CBC\/256 INTEG_HMAC_SHA2_256_128 PRF_HMAC_SHA2_256 MODP_2048\] KE\(MODP_2048\)/,
      );
      assert.match(trace, new RegExp(`sent ${b}:500 -> ${a}:500 IKE_SA_INIT response #0`));
      assert.match(trace, /NOTIFY\(NAT_DETECTION_SOURCE_IP\)/);
      assert.match(trace, /received IKE_AUTH request #1 .* decrypted: IDi\(IPV4_ADDR /);
      assert.match(trace, /TSi\(/);
      assert.match(
        trace,
        /sent IKE_AUTH response #1 .*\(\+\d+ ms\) decrypted: .*AUTH\(SHARED_KEY_MIC\) SA\[#1 ESP spi=[0-9a-f]{8}: AES_GCM_16\/256 ESN_NO\]/,
      );
      assert.match(trace, /audit 5451 /);
      assert.match(trace, new RegExp(sa?.children[0]?.spiIn ?? 'no child', 'i'), 'the chosen child SA (its SPI)');
      assert.doesNotMatch(trace, new RegExp(PSK), 'never the PSK');
      // Off: nothing more is written.
      const off = await netsh('disable');
      assert.equal(off.code, 0);
      await until(
        () => logLines(d, 'IKE debug log settings').some((l) => l.enabled === false),
        'the daemon to follow the setting',
      );
      const before = read(file);
      await alice.stop();
      alice = undefined;
      await until(() => logLines(d, 'audit 4655').length >= 1, 'the IKE SA to end');
      assert.equal(read(file), before);
    } finally {
      await alice?.stop();
      await d.stop('SIGTERM', 5000);
    }
  });

  it('SIGTERM during start-up: the daemon finishes starting, then stops cleanly (exit 0), not killed half-way', async () => {
    const dir = freshStateDir('consec-daemon-early-');
    await pskServerPolicy(dir, b, a);
    const d = consecDaemon(lab, 'bob', dir, b);
    try {
      // The first line the daemon prints, long before the data plane and filters are up.
      await d.waitFor(/IKE debug log settings/);
      assert.doesNotMatch(d.output(), /"msg":"ready"/, 'the signal arrives during start-up');
      // The daemon alone, as systemd's KillMode=mixed does: its own helper commands finish.
      process.kill(d.pid as number, 'SIGTERM');
      const { code, signal } = await d.exited;
      assert.deepEqual({ code, signal }, { code: 0, signal: null }, d.output());
      assert.equal(logLines(d, 'stopping: deleting SAs at the peers')[0]?.signal, 'SIGTERM');
      assert.equal(logLines(d, 'stopped').length, 1);
    } finally {
      await d.stop('SIGKILL', 0);
    }
  });

  it('under systemd (Type=notify): READY=1 only once the fail-closed table is in the kernel, STATUS as it runs, RELOADING/READY around SIGHUP, STOPPING=1', async () => {
    const dir = freshStateDir('consec-daemon-notify-');
    await pskServerPolicy(dir, b, a);
    const sockDir = mkdtempSync('/tmp/consec-notify-');
    const path = join(sockDir, 'notify');
    const sock = UnixDatagramSocket.open(path);
    const batch = new PacketBatch(8, 4096);
    const got: string[] = [];
    const take = () => {
      const n = sock.recv(batch);
      for (let i = 0; i < n; i++) got.push(batch.packet(i).toString('utf8'));
      return n;
    };
    let tableAtReady = '';
    const d = consecDaemon(lab, 'bob', dir, b, [], { NOTIFY_SOCKET: path });
    try {
      await waitUntil(
        async () => {
          if (take() > 0 && got.some((m) => m.includes('READY=1')) && !tableAtReady)
            // What the kernel holds the moment systemd would let the network come up.
            tableAtReady = (
              await lab.exec('bob', ['nft', 'list', 'table', 'inet', GUARD_TABLE], { allowFailure: true })
            ).stdout;
          return tableAtReady !== '';
        },
        'READY=1',
        30_000,
      );
      const ready = got.find((m) => m.includes('READY=1')) as string;
      assert.match(
        ready,
        /^READY=1\nSTATUS=\d+ connection security rules; 0 main mode SAs, 0 quick mode SAs\nMAINPID=\d+\n$/,
      );
      assert.match(tableAtReady, /table inet consec/, 'the filters were in before READY');
      await d.waitFor(/"msg":"ready"/);
      // The daemon says READY right after its "ready" line, which comes after the table is in.
      const out = d.output();
      assert.ok(out.indexOf('"msg":"fail-closed filters installed"') >= 0, out.slice(-2000));
      assert.ok(out.indexOf('"msg":"fail-closed filters installed"') < out.indexOf('"msg":"ready"'));
      process.kill(d.pid as number, 'SIGHUP');
      await waitUntil(() => (take(), got.some((m) => m.startsWith('RELOADING=1\nMONOTONIC_USEC='))), 'RELOADING=1');
      await waitUntil(() => (take(), got.filter((m) => m.includes('READY=1')).length === 2), 'READY=1 after reload');
      process.kill(d.pid as number, 'SIGTERM');
      await d.exited;
      take();
      assert.ok(got.includes('STOPPING=1\n'), got.join(' | '));
    } finally {
      await d.stop('SIGKILL', 0);
      sock.close();
      rmSync(sockDir, { recursive: true, force: true });
    }
  });

  it('a store found corrupt at start-up: the service starts with the policy it last applied, says why, and takes the store again once repaired', async () => {
    const dir = freshStateDir('consec-daemon-corrupt-');
    await pskServerPolicy(dir, b, a);
    const first = consecDaemon(lab, 'bob', dir, b);
    let second: LabProcess | undefined;
    try {
      await first.waitFor(/"msg":"ready"/, 30_000);
      const rules = logLines(first, 'ready')[0]?.rules as number;
      assert.ok(rules > 0);
      process.kill(first.pid as number, 'SIGTERM');
      await first.exited;
      assert.equal(statSync(join(dir, 'applied-policy.json')).mode & 0o777, 0o600);
      // The store half-written (a crash, a full disk): not JSON any more.
      const file = join(dir, 'policy', 'PersistentStore.json');
      const good = readFileSync(file);
      writeFileSync(file, good.subarray(0, Math.floor(good.length / 2)));
      second = consecDaemon(lab, 'bob', dir, b);
      await second.waitFor(/"msg":"ready"/, 30_000);
      assert.match(
        second.output(),
        /is not valid JSON[^\n]*"msg":"policy store unreadable at start-up: the policy last applied is in force until the store is repaired"/,
      );
      assert.equal(logLines(second, 'ready')[0]?.rules, rules, 'the same rules in force');
      writeFileSync(file, good);
      await second.waitFor(/"msg":"policy reloaded"/, 15_000);
    } finally {
      await first.stop('SIGKILL', 0);
      await second?.stop('SIGTERM', 5000);
    }
  });

  it("no --listen, negotiation only: IKE follows the host's addresses (rtnetlink) — an IPv4 and an IPv6 address added answer at once, strongSwan gets an SA on the new one; an IPv6 address is taken only after DAD; removing one ends its SA (4655)", async () => {
    const b2 = '192.0.2.102';
    const v6 = '2001:db8:1::102';
    const dir = freshStateDir('consec-daemon-addresses-');
    await pskServerPolicy(dir, b2, a);
    // The fail-closed table earlier daemons left on bob (it outlives them by design) lets out only the
    // data plane's marked IKE; this daemon negotiates without a data plane, so the table goes first.
    await lab.exec('bob', consecArgv(['daemon', '--remove-filters'], freshStateDir('consec-daemon-rm-')));
    const d = lab.spawn('bob', consecArgv(['daemon', '--dataplane', 'none', '--dpd', '0'], dir));
    let alice: Charon | undefined;
    try {
      await d.waitFor(/keying service started/, 30_000);
      const started = logLines(d, 'keying service started')[0]?.addresses as string[];
      assert.ok(started.includes(b) && !started.includes(b2), started.join(' '));
      await lab.exec('bob', ['ip', 'addr', 'add', `${b2}/24`, 'dev', 'eth0']);
      await lab.exec('bob', ['ip', '-6', 'addr', 'add', `${v6}/64`, 'dev', 'eth0', 'nodad']);
      await d.waitFor(/"address":"192\.0\.2\.102"[^\n]*"msg":"local address added: IKE listens there"/);
      await d.waitFor(/"address":"2001:db8:1::102"[^\n]*"msg":"local address added: IKE listens there"/);
      alice = await Charon.start(
        lab,
        'alice',
        pskHostTunnel(a, b2, { name: 'c', secret: PSK, proposals: ['aes256-sha256-modp2048'] }),
      );
      await alice.initiate('c').catch((err: Error) => {
        throw new Error(`${err.message}\n--- consec:\n${d.output().slice(-6000)}`);
      });
      await until(() => logLines(d, 'audit 5451').length === 1, 'audit 5451');
      assert.equal(
        (logLines(d, 'audit 4650')[0]?.audit as { mainMode: { local: { address: string } } }).mainMode.local.address,
        b2,
      );
      // An IPv6 address with duplicate address detection (the lab turns it off; on here): the kernel
      // reports it tentative first, usable once DAD is done — only then does IKE listen there.
      const dad = '2001:db8:1::103';
      await lab.exec('bob', ['sysctl', '-qw', 'net.ipv6.conf.eth0.accept_dad=1']);
      await lab.exec('bob', ['ip', '-6', 'addr', 'add', `${dad}/64`, 'dev', 'eth0']);
      const tentative = (await lab.exec('bob', ['ip', '-6', 'addr', 'show', 'dev', 'eth0'])).stdout;
      assert.match(tentative, /2001:db8:1::103\/64 scope global tentative/, tentative);
      assert.doesNotMatch(d.output(), /"address":"2001:db8:1::103"[^\n]*local address added/);
      await d.waitFor(/"address":"2001:db8:1::103"[^\n]*"msg":"local address added: IKE listens there"/, 10_000);
      assert.doesNotMatch(
        (await lab.exec('bob', ['ip', '-6', 'addr', 'show', 'dev', 'eth0'])).stdout,
        /::103\/64 scope global tentative/,
      );
      await lab.exec('bob', ['ip', 'addr', 'del', `${b2}/24`, 'dev', 'eth0']);
      await d.waitFor(
        /"address":"192\.0\.2\.102"[^\n]*"msg":"local address removed: its SAs ended, IKE stopped there"/,
      );
      await until(
        () =>
          logLines(d, 'audit 4655').some(
            (l) => (l.audit as { reason: string }).reason === 'the local address was removed',
          ),
        '4655 for the removed address',
      );
    } finally {
      await alice?.stop();
      await d.stop('SIGTERM', 5000);
      await lab.exec('bob', ['ip', 'addr', 'del', `${b2}/24`, 'dev', 'eth0'], { allowFailure: true });
      await lab.exec('bob', ['ip', '-6', 'addr', 'del', `${v6}/64`, 'dev', 'eth0'], { allowFailure: true });
      await lab.exec('bob', ['ip', '-6', 'addr', 'del', '2001:db8:1::103/64', 'dev', 'eth0'], { allowFailure: true });
      await lab.exec('bob', ['sysctl', '-qw', 'net.ipv6.conf.eth0.accept_dad=0'], { allowFailure: true });
    }
  });

  it("certificates from the machine store (the seeds' ESAE rule); SIGTERM deletes the SA at the peer", async () => {
    const dir = freshStateDir('consec-daemon-cert-');
    const pki = LabPki.create();
    const bobCert = pki.issue('bob', b);
    const aliceCert = pki.issue('alice', a);
    installMachineCert(dir, 'bob', bobCert, pki.ca.certPem);
    const setup = await ps(
      [
        ...serverPolicy(
          b,
          a,
          '-Encryption AES256 -Hash SHA384 -KeyExchange DH20',
          '-Cert -Authority "O=consec lab, CN=consec lab root CA" -AuthorityType Root',
          { mm: 'ESAE MM', p1: 'ESAE certificates', qm: 'ESAE QM' },
        ),
        tunnelRule('ESAE', b, a, '$p1.Name', '$qmSet.Name'),
      ].join('\n'),
      dir,
    );
    assert.equal(setup.errors, 0, setup.err);
    const d = consecDaemon(lab, 'bob', dir, b);
    let alice: Charon | undefined;
    try {
      await d.waitFor(/keying service started/);
      alice = await Charon.start(
        lab,
        'alice',
        certHostTunnel(a, b, {
          name: 'c',
          cert: aliceCert.certPem,
          key: aliceCert.keyPem,
          ca: pki.ca.certPem,
          logLevel: 2,
        }),
      );
      await alice.initiate('c');
      const [sa] = await alice.listSas();
      assert.equal(sa?.state, 'ESTABLISHED', d.output());
      assert.equal(sa?.dhGroup, 'ECP_384');
      assert.match(alice.log(), /authentication of 'O=consec lab, CN=bob' with ECDSA_WITH_SHA384_DER successful/);
      await until(() => logLines(d, 'audit 4651').length === 1, 'audit 4651 (certificate main mode)');
      await d.stop('SIGTERM', 5000);
      await until(async () => (await (alice as Charon).listSas()).length === 0, 'strongSwan to see the Delete').catch(
        (err: Error) => {
          // What each side said about the Delete, to tell a lost message from a slow peer.
          throw new Error(
            `${err.message}\n--- consec\n${d.output().slice(-3000)}\n--- strongSwan\n${alice?.log().slice(-3000)}`,
          );
        },
      );
      assert.match(d.output(), /stopping: deleting SAs at the peers/);
    } finally {
      await alice?.stop();
      await d.stop('SIGTERM', 5000);
    }
  });
});

/**
 * Both hosts' stores (`a`'s, then `b`'s): Require between them in transport mode, a pre-shared key,
 * and the quick mode crypto set `qm` defines as $qmSet.
 */
async function transportPolicies(prefix: string, a: string, b: string, qm: string[]): Promise<[string, string]> {
  const dirs: [string, string] = [freshStateDir(`${prefix}a-`), freshStateDir(`${prefix}b-`)];
  for (const [dir, local, remote] of [
    [dirs[0], a, b],
    [dirs[1], b, a],
  ] as const) {
    const res = await ps(
      [
        ...qm,
        `$psk = New-NetIPsecAuthProposal -Machine -PreSharedKey "${PSK}"`,
        '$p1 = New-NetIPsecPhase1AuthSet -DisplayName "PSK" -Proposal $psk',
        `New-NetIPsecRule -DisplayName "Require to ${remote}" -LocalAddress ${local} -RemoteAddress ${remote} ` +
          '-InboundSecurity Require -OutboundSecurity Require -Phase1AuthSet $p1.Name -QuickModeCryptoSet $qmSet.Name | Out-Null',
      ].join('\n'),
      dir,
    );
    assert.equal(res.errors, 0, res.err);
  }
  return dirs;
}

describe('keying service: acquires from policy, consec ↔ consec, transport mode', () => {
  let lab: Lab;
  before(async () => {
    lab = await LabClass.create(hostToHost());
  });
  after(async () => {
    await lab?.destroy();
  });

  it('an acquire negotiates a transport-mode SA with the other consec; a second flow reuses it; stop deletes it', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const [dirA, dirB] = await transportPolicies('consec-ks-', a, b, [
      '$qm = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -Encryption AES256 -ESPHash SHA256',
      '$qmSet = New-NetIPsecQuickModeCryptoSet -DisplayName "QM" -Proposal $qm -PerfectForwardSecrecyGroup DH19',
    ]);
    const bob = lab.spawn('bob', [
      process.execPath,
      '--import',
      'tsx',
      join(ROOT, 'test/fixtures/keying-service.ts'),
      dirB,
      b,
      '--stay',
      '4000',
    ]);
    try {
      await bob.waitFor(/"event":"started"/);
      const alice = lab.spawn('alice', [
        process.execPath,
        '--import',
        'tsx',
        join(ROOT, 'test/fixtures/keying-service.ts'),
        dirA,
        a,
        '--acquire',
        `${b}:1`,
        '--acquire',
        `${b}:6`,
        '--stay',
        '300',
      ]);
      await alice.exited;
      const out = alice
        .output()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const acquired = out.filter((e) => e.event === 'acquired');
      assert.equal(acquired.length, 2, alice.output());
      assert.equal(acquired[0]?.mode, 'transport', 'USE_TRANSPORT_MODE negotiated');
      assert.equal(acquired[1]?.spiIn, acquired[0]?.spiIn, 'the second flow is covered by the same child SA');
      assert.equal(out.filter((e) => e.event === 'install').length, 1);
      await bob.exited;
      const bobOut = bob.output();
      assert.match(bobOut, /"event":"install".*"mode":"transport"/);
      assert.match(bobOut, /"event":"delete"/, 'alice deleted the SA when she stopped');
      assert.match(bobOut, /"event":"sessions","count":0/);
    } finally {
      await bob.stop();
    }
  });

  it('a firewall rule that starts requiring encryption with the peer: the integrity-only child SA in force goes at both ends (policy reloaded)', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const [dirA, dirB] = await transportPolicies('consec-ks-enc-', a, b, [
      '$null_ = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -Encryption None -ESPHash SHA256',
      '$aes = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -Encryption AES256 -ESPHash SHA256',
      '$qmSet = New-NetIPsecQuickModeCryptoSet -DisplayName "QM" -Proposal $null_,$aes',
    ]);
    const spawn = (host: string, args: string[]) =>
      lab.spawn(host, [process.execPath, '--import', 'tsx', join(ROOT, 'test/fixtures/keying-service.ts'), ...args]);
    const bob = spawn('bob', [dirB, b, '--stay', '20000']);
    const alice = spawn('alice', [dirA, a, '--acquire', `${b}:1`, '--stay', '15000']);
    try {
      await bob.waitFor(/"event":"started"/);
      await alice.waitFor(/"event":"acquired"/);
      assert.match(alice.output(), /"event":"install".*"cipher":"null"/, 'the first proposal: integrity only');
      const fw = await ps(
        `New-NetFirewallRule -DisplayName "encrypted only" -RemoteAddress ${b} -Authentication Required -Encryption Required | Out-Null`,
        dirA,
      );
      assert.equal(fw.errors, 0, fw.err);
      await alice.waitFor(/"event":"delete"/);
      await bob.waitFor(/"event":"delete"/);
    } finally {
      await alice.stop();
      await bob.stop();
    }
  });
});
