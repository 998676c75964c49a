/**
 * Domain isolation between two Linux hosts, as two Windows domain members do it: the lab's domain
 * (a dc namespace running MIT krb5-kdc, members with keytabs from kadmin.local), each member's
 * policy from the seeds' own server-to-server script (computer Kerberos, Require in and out), and
 * consec daemons that negotiate AuthIP with Kerberos. A host outside the domain gets nothing.
 */
import assert from 'node:assert/strict';
import { chownSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Capture } from '../src/lab/capture.ts';
import { LabDomain } from '../src/lab/kdc.ts';
import { Charon, ikeV1, pskHostTunnel } from '../src/lab/strongswan.ts';
import { Lab, type LabProcess } from '../src/lab/lab.ts';
import { domain } from '../src/lab/topology.ts';
import { consecArgv, consecDaemon, consecPwsh, fixture } from './helpers.ts';
import { freshStateDir, ps } from './pwsh-helpers.ts';

const SEED_SCRIPT = join(import.meta.dirname, '..', '..', 'shared', 'reference', 'scripts', '02-server-to-server.ps1');

/** The seeds' server-to-server script (computer Kerberos, Require/Require) for two lab addresses. */
async function seedPolicy(
  dir: string,
  local: string,
  remote: string,
  security?: 'Request',
  thenPsk?: string,
): Promise<void> {
  let script = readFileSync(SEED_SCRIPT, 'utf8').replaceAll('10.0.1.20', local).replaceAll('10.0.1.30', remote);
  if (security) script = script.replaceAll('Security Require', `Security ${security}`);
  // A second method after Kerberos in the same auth set (Windows tries them in order).
  if (thenPsk)
    script = script.replace(
      '$krb = New-NetIPsecAuthProposal -Machine -Kerberos',
      `$krb = (New-NetIPsecAuthProposal -Machine -Kerberos), (New-NetIPsecAuthProposal -Machine -PreSharedKey "${thenPsk}")`,
    );
  const r = await ps(script, dir);
  assert.equal(r.errors, 0, r.err);
}

/**
 * consec daemon on a lab host with the realm's krb5.conf and a keytab: the host's own (a member) or
 * `keytab` (carol's names a file that does not exist: not a member). Resolves once it is ready.
 */
async function memberDaemon(
  lab: Lab,
  dom: LabDomain,
  host: string,
  dir: string,
  daemons: LabProcess[],
  keytab = dom.keytab(host),
  args: string[] = [],
): Promise<LabProcess> {
  const d = consecDaemon(lab, host, dir, lab.address(host), args, {
    KRB5_CONFIG: dom.krb5Conf,
    KRB5_KTNAME: `FILE:${keytab}`,
  });
  daemons.push(d);
  await d.waitFor(/"msg":"ready"/);
  return d;
}

describe('domain isolation: AuthIP with Kerberos between two members of a real KDC', () => {
  let lab: Lab;
  let dom: LabDomain;
  before(async () => {
    lab = await Lab.create(domain());
    dom = await LabDomain.create(lab);
    await dom.join('alice');
    await dom.join('bob');
  });
  after(async () => {
    await lab?.destroy();
  });

  it("the seeds' server-to-server rule: pings as ESP only, Get-NetIPsecMainModeSA shows AuthIp and both computer accounts", async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const daemons: LabProcess[] = [];
    const dirs: Record<string, string> = {};
    const cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'ip' });
    try {
      for (const [host, local, remote] of [
        ['bob', b, a],
        ['alice', a, b],
      ] as const) {
        const dir = freshStateDir(`consec-dom-${host}-`);
        dirs[host] = dir;
        await seedPolicy(dir, local, remote);
        const metrics = host === 'bob' ? ['--metrics', '127.0.0.1:9465'] : [];
        const d = await memberDaemon(lab, dom, host, dir, daemons, dom.keytab(host), metrics);
        assert.match(d.output(), new RegExp(`"principal":"host/${host}\\.corp\\.example@CORP\\.EXAMPLE"`));
      }
      const ping = await lab.exec('alice', ['ping', '-c', '4', '-i', '0.2', '-W', '3', b], { allowFailure: true });
      assert.match(
        ping.stdout,
        / 0% packet loss/,
        `${ping.stdout}\n${daemons.map((d) => d.output().slice(-3000)).join('\n---\n')}`,
      );
      await cap.stop();
      // Everything between the two members (the segment also carries IGMP and the hosts' Kerberos).
      const protocols = new Set(await cap.protocols(`ip.addr == ${a} && ip.addr == ${b}`));
      assert.ok(
        [...protocols].some((p) => p.endsWith('ip:esp')),
        [...protocols].join(' '),
      );
      for (const p of protocols)
        assert.match(p, /ip:(esp|udp:isakmp)$/, `only IKE and ESP: ${[...protocols].join(' ')}`);
      // tshark knows ISAKMP but not AuthIP's exchange types: it walks consec's payload chain and
      // finds nothing malformed.
      assert.ok(
        (await cap.fields(['frame.number'], 'isakmp.exchangetype == 243')).length >= 4,
        'AuthIP Main Mode on the wire',
      );
      assert.deepEqual(await cap.fields(['frame.number'], '_ws.malformed || _ws.expert.severity >= "error"'), []);
      // The views, as an admin on alice reads them (alice initiated).
      const mm = JSON.parse(
        (await consecPwsh(dirs.alice as string, 'Get-NetIPsecMainModeSA | ConvertTo-Json')).stdout,
      ) as {
        KeyModule: string;
        LocalFirstId: { Identity: string; AuthenticationMethod: string };
        RemoteFirstId: { Identity: string };
      };
      assert.equal(mm.KeyModule, 'AuthIp');
      assert.deepEqual(
        [mm.LocalFirstId.Identity, mm.RemoteFirstId.Identity, mm.LocalFirstId.AuthenticationMethod],
        ['CORP\\ALICE$', 'CORP\\BOB$', 'MachineKerberos'],
      );
      const qm = JSON.parse(
        (await consecPwsh(dirs.bob as string, 'Get-NetIPsecQuickModeSA | ConvertTo-Json')).stdout,
      ) as {
        LocalEndpoint: string;
        RemoteEndpoint: string;
      };
      assert.deepEqual([qm.LocalEndpoint, qm.RemoteEndpoint], [b, a]);
      // Statistics and metrics count the AuthIP SAs like the others.
      const stats = (await consecPwsh(dirs.alice as string, 'Get-NetIPsecStatistics | Format-List')).stdout;
      for (const line of [
        /ActiveMainModeSAs +: 1/,
        /ActiveQuickModeSAs +: 1/,
        /MainModeSAsEstablished +: 1/,
        /QuickModeSAsEstablished +: 1/,
      ])
        assert.match(stats, line, stats);
      const scraped = (
        await lab.exec('bob', [
          process.execPath,
          '-e',
          "fetch('http://127.0.0.1:9465/metrics').then(async (r) => process.stdout.write(await r.text()))",
        ])
      ).stdout;
      assert.match(scraped, /^consec_ike_sas\{state="established"\} 1$/m, scraped);
      assert.match(scraped, /^consec_child_sas\{state="installed"\} 1$/m);
      assert.match(scraped, /^consec_ike_sa_setup_seconds_count\{role="responder"\} 1$/m, 'the AuthIP setup is timed');
      // A policy change that keeps the rule keeps the AuthIP SA (no 4655, the same SA listed).
      const more = await ps(
        'New-NetIPsecRule -DisplayName "elsewhere" -RemoteAddress 198.51.100.9 | Out-Null',
        dirs.alice as string,
      );
      assert.equal(more.errors, 0, more.err);
      const alice = daemons[1] as LabProcess;
      await alice.waitFor(/"msg":"policy reloaded"/);
      assert.match(alice.output(), /"kept":1,"deleted":0,"msg":"policy reloaded"/);
      assert.doesNotMatch(alice.output(), /"id":4655/);
      // Remove-NetIPsecMainModeSA on alice deletes the AuthIP SA at bob too (NOTIFY_STATUS).
      const rm = await consecPwsh(dirs.alice as string, 'Get-NetIPsecMainModeSA | Remove-NetIPsecMainModeSA');
      assert.equal(rm.code, 0, rm.stdout + rm.stderr);
      const bob = daemons[0] as LabProcess;
      await bob.waitFor(/"reason":"deleted by the peer"[^\n]*"msg":"AuthIP SA ended"/);
      assert.equal((await consecPwsh(dirs.bob as string, '@(Get-NetIPsecMainModeSA).Count')).stdout.trim(), '0');
      // The KDC issued alice a ticket for bob's computer account.
      assert.match(
        dom.log(),
        /TGS_REQ .* host\/alice\.corp\.example@CORP\.EXAMPLE for host\/bob\.corp\.example@CORP\.EXAMPLE/,
      );
    } finally {
      await cap.dispose();
      for (const d of daemons.reverse()) await d.stop('SIGTERM', 5000);
    }
  });
  it("Extended Mode (the seeds' rule with a Phase 2 user Kerberos set): dave, with a ticket, gets through as ESP and bob sees him as CORP\\dave; erin, without one, is refused (4984) and nothing of hers reaches bob in clear", async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const [dave, erin] = [1001, 1002];
    await dom.addUser('dave', 'Dave-Pass-1');
    await dom.kinit('alice', 'dave', 'Dave-Pass-1', `FILE:${dom.userCcache(dave)}`);
    chownSync(dom.userCcache(dave), dave, dave);
    const daemons: LabProcess[] = [];
    const dirs: Record<string, string> = {};
    const cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'ip' });
    const server = fixture(lab, 'bob', 'tcp-transfer', ['server', b, 5007]);
    try {
      await server.waitFor(/listening/);
      for (const [host, local, remote] of [
        ['bob', b, a],
        ['alice', a, b],
      ] as const) {
        const dir = freshStateDir(`consec-em-${host}-`);
        dirs[host] = dir;
        await seedPolicy(dir, local, remote);
        // The second authentication, in Windows syntax: the user's Kerberos (AuthIP's Extended Mode).
        const r = await ps(
          [
            '$user = New-NetIPsecAuthProposal -User -Kerberos',
            'New-NetIPsecPhase2AuthSet -Name "UserKerberos" -DisplayName "User Kerberos" -Proposal $user | Out-Null',
            'Set-NetIPsecRule -DisplayName "Server-to-Server IPsec" -Phase2AuthSet "UserKerberos"',
          ].join('\n'),
          dir,
        );
        assert.equal(r.errors, 0, r.err);
        await memberDaemon(lab, dom, host, dir, daemons);
      }
      // One line over TCP as a given user (the socket's owner is whom Extended Mode authenticates).
      const talk = (uid: number) =>
        lab.exec(
          'alice',
          [
            'timeout',
            '8',
            'setpriv',
            `--reuid=${uid}`,
            `--regid=${uid}`,
            '--clear-groups',
            'bash',
            '-c',
            `exec 3<>/dev/tcp/${b}/5007 && echo hello-from-${uid} >&3 && read -t 6 line <&3 && echo "got $line"`,
          ],
          { allowFailure: true },
        );
      const logs = () => daemons.map((d) => d.output().slice(-4000)).join('\n---\n');
      const ok = await talk(dave);
      assert.match(ok.stdout, new RegExp(`got hello-from-${dave}`), `${ok.stdout}${ok.stderr}\n${logs()}`);
      const [bob, alice] = daemons as [LabProcess, LabProcess];
      await bob.waitFor(/"id":4979/);
      const mm = JSON.parse(
        (await consecPwsh(dirs.bob as string, 'Get-NetIPsecMainModeSA | ConvertTo-Json')).stdout,
      ) as {
        RemoteFirstId: { Identity: string };
        RemoteSecondId: { Identity: string; AuthenticationMethod: string };
      };
      assert.deepEqual(
        [mm.RemoteFirstId.Identity, mm.RemoteSecondId.Identity, mm.RemoteSecondId.AuthenticationMethod],
        ['CORP\\ALICE$', 'CORP\\dave', 'UserKerberos'],
      );
      // The KDC issued dave, not the computer, a ticket for bob.
      assert.match(dom.log(), /TGS_REQ .* dave@CORP\.EXAMPLE for host\/bob\.corp\.example@CORP\.EXAMPLE/);
      // dave's connection is over (bash exited): its SA goes with it, so no one else can send as dave
      // from the same port.
      await alice.waitFor(/"msg":"the user's connection ended: its SA deleted"/, 30_000);
      const refused = await talk(erin);
      assert.doesNotMatch(refused.stdout, /got /);
      await alice.waitFor(/"id":4984/);
      assert.match(alice.output(), new RegExp(`user ${erin} has no Kerberos tickets`));
      await cap.stop();
      // Between the members: IKE and ESP only; erin's connection never reached bob in clear.
      for (const p of new Set(await cap.protocols(`ip.addr == ${a} && ip.addr == ${b}`)))
        assert.match(p, /ip:(esp|udp:isakmp)$/, p);
      assert.ok(
        (await cap.fields(['frame.number'], 'isakmp.exchangetype == 245')).length >= 6,
        'Extended Mode on the wire',
      );
    } finally {
      await cap.dispose();
      await server.stop('SIGTERM', 3000);
      for (const d of daemons.reverse()) await d.stop('SIGTERM', 5000);
    }
  });
});

describe('domain isolation: a host outside the domain', () => {
  let lab: Lab;
  let dom: LabDomain;
  before(async () => {
    lab = await Lab.create(domain());
    dom = await LabDomain.create(lab);
    await dom.join('bob');
  });
  after(async () => {
    await lab?.destroy();
  });

  it('carol has no computer account: her AuthIP Main Mode fails (4653 on both sides), her Request falls back to clear, and bob (Require) lets none of it in', async () => {
    const b = lab.address('bob');
    const c = lab.address('carol');
    const daemons: LabProcess[] = [];
    const cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'ip' });
    try {
      const bobDir = freshStateDir('consec-dom-bob-');
      await seedPolicy(bobDir, b, c);
      const bob = await memberDaemon(lab, dom, 'bob', bobDir, daemons);
      const carolDir = freshStateDir('consec-dom-carol-');
      await seedPolicy(carolDir, c, b, 'Request');
      const carol = await memberDaemon(lab, dom, 'carol', carolDir, daemons, `${dom.dir}/carol-has-none.keytab`);
      assert.match(carol.output(), /Kerberos: none/);
      const ping = await lab.exec('carol', ['ping', '-c', '3', '-i', '0.3', '-W', '2', b], { allowFailure: true });
      assert.match(ping.stdout, / 100% packet loss/, ping.stdout);
      // On a failure, both sides' logs: which of them gave up where.
      const both = (err: Error) => {
        throw new Error(`${err.message}\n--- carol:\n${carol.output().slice(-4000)}`);
      };
      await bob.waitFor(/"id":4653/, 20_000).catch(both);
      await carol.waitFor(/"id":4653/, 20_000).catch(both);
      assert.match(bob.output(), /could not authenticate with Kerberos/);
      await cap.stop();
      // carol's echo requests reached bob's wire in clear (Request); bob answered none of them.
      const icmp = await cap.protocols('icmp');
      assert.ok(icmp.length > 0, 'carol fell back to clear');
      assert.deepEqual(await cap.protocols(`icmp && ip.src == ${b}`), [], 'bob sent nothing in clear');
    } finally {
      await cap.dispose();
      for (const d of daemons.reverse()) await d.stop('SIGTERM', 5000);
    }
  });
});

describe('the next method of the auth set after Kerberos', () => {
  let lab: Lab;
  let dom: LabDomain;
  before(async () => {
    lab = await Lab.create(domain());
    dom = await LabDomain.create(lab);
    await dom.join('bob');
  });
  after(async () => {
    await lab?.destroy();
  });

  it('computer Kerberos then a pre-shared key: carol (no computer account) fails AuthIP, then gets an SA with the key over IKEv2; Require holds throughout', async () => {
    const b = lab.address('bob');
    const c = lab.address('carol');
    const psk = 'lab-only-fallback-psk-0123456789';
    const daemons: LabProcess[] = [];
    try {
      const bobDir = freshStateDir('consec-next-bob-');
      await seedPolicy(bobDir, b, c, undefined, psk);
      await memberDaemon(lab, dom, 'bob', bobDir, daemons);
      const carolDir = freshStateDir('consec-next-carol-');
      await seedPolicy(carolDir, c, b, undefined, psk);
      const carol = await memberDaemon(lab, dom, 'carol', carolDir, daemons, `${dom.dir}/carol-has-none.keytab`);
      const ping = await lab.exec('carol', ['ping', '-c', '4', '-i', '0.3', '-W', '5', b], { allowFailure: true });
      assert.match(ping.stdout, / [0-2]5?% packet loss/, `${ping.stdout}\n${carol.output().slice(-3000)}`);
      assert.match(carol.output(), /Kerberos \(AuthIP\) failed; trying the next method of the authentication set/);
      const mm = JSON.parse((await consecPwsh(carolDir, 'Get-NetIPsecMainModeSA | ConvertTo-Json')).stdout) as {
        KeyModule: string;
        LocalFirstId: { AuthenticationMethod: string };
      };
      assert.deepEqual([mm.KeyModule, mm.LocalFirstId.AuthenticationMethod], ['IkeV2', 'MachinePSK']);
    } finally {
      for (const d of daemons.reverse()) await d.stop('SIGTERM', 5000);
    }
  });
});

describe('the lockout analyzer against the real KDC (seed 001)', () => {
  let lab: Lab;
  let dom: LabDomain;
  before(async () => {
    lab = await Lab.create(domain());
    // The DC serves DNS too: members find the KDC by its SRV records, as Windows members do.
    dom = await LabDomain.create(lab, { dns: true });
    await dom.join('alice');
    await dom.join('bob');
  });
  after(async () => {
    await lab?.destroy();
  });

  it('Require toward the whole segment, DC included: Test-NetIPsecFlow warns for Kerberos and DNS, alice cannot even find the KDC and gets no SA; with the DC (its KDC and DNS) exempted she does', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const dc = lab.address('dc');
    const env = (host: string) => ({ KRB5_CONFIG: dom.krb5Conf, KRB5_KTNAME: `FILE:${dom.keytab(host)}` });
    const daemons: LabProcess[] = [];
    try {
      const bobDir = freshStateDir('consec-lock-bob-');
      await seedPolicy(bobDir, b, a);
      await memberDaemon(lab, dom, 'bob', bobDir, daemons);
      const aliceDir = freshStateDir('consec-lock-alice-');
      // The seeds' rule, widened to the whole segment: the domain controller falls under it too.
      await seedPolicy(aliceDir, a, '192.0.2.0/24');
      // The what-if, on alice (her resolver is the DC): Kerberos to the DC and the DNS queries that
      // find it both need IPsec first.
      const whatIf = (port: number) =>
        lab.exec(
          'alice',
          consecArgv(
            [
              'pwsh',
              '-Command',
              `Test-NetIPsecFlow -LocalAddress ${a} -RemoteAddress ${dc} -Protocol UDP -RemotePort ${port} | ForEach-Object { $_.Decision; $_.Warnings }`,
            ],
            aliceDir,
          ),
          { env: { ...process.env, ...env('alice') }, allowFailure: true },
        );
      const kdcFlow = await whatIf(88);
      assert.match(
        kdcFlow.stdout,
        /Kerberos needs that domain controller to get the ticket/,
        kdcFlow.stdout + kdcFlow.stderr,
      );
      const dnsFlow = await whatIf(53);
      assert.match(
        dnsFlow.stdout,
        new RegExp(
          `DNS server ${dc.replaceAll('.', '\\.')}.*Without name resolution the host cannot find its domain controllers`,
        ),
        dnsFlow.stdout + dnsFlow.stderr,
      );
      const alice = await memberDaemon(lab, dom, 'alice', aliceDir, daemons);
      const locked = await lab.exec('alice', ['ping', '-c', '2', '-i', '0.3', '-W', '2', b], { allowFailure: true });
      assert.match(locked.stdout, / 100% packet loss/, locked.stdout);
      // Her Kerberos request to the DC is itself traffic the rule requires IPsec for (its own AuthIP
      // attempt with the DC goes unanswered): the Main Mode with bob fails for want of a ticket.
      await alice.waitFor(new RegExp(`"remote":\\{"address":"${b}"[^\\n]*"failureReason":"[^"]*KDC`), 40_000);
      assert.doesNotMatch(
        dom.log(),
        new RegExp(`TGS_REQ .* ${dom.computerPrincipal('alice').replaceAll('.', '\\.')} for host/bob`),
      );
      // The fix the warning names: exempt the domain controller. The running daemon follows the store.
      const exempt = await ps(
        `New-NetIPsecRule -DisplayName "Exempt the domain controller" -RemoteAddress ${dc} | Out-Null`,
        aliceDir,
      );
      assert.equal(exempt.errors, 0, exempt.err);
      await alice.waitFor(/"msg":"policy reloaded"/, 15_000);
      const open = await lab.exec('alice', ['ping', '-c', '4', '-i', '0.3', '-W', '3', b], { allowFailure: true });
      assert.match(open.stdout, / [0-2]5?% packet loss/, `${open.stdout}\n${alice.output().slice(-3000)}`);
      assert.match(
        dom.log(),
        /TGS_REQ .* host\/alice\.corp\.example@CORP\.EXAMPLE for host\/bob\.corp\.example@CORP\.EXAMPLE/,
      );
      // She found the KDC through DNS: the SRV query, from her address, answered by the DC.
      assert.match(
        dom.dnsLog(),
        new RegExp(`query\\[SRV\\] _kerberos\\._udp\\.CORP\\.EXAMPLE from ${a.replaceAll('.', '\\.')}`, 'i'),
      );
    } finally {
      for (const d of daemons.reverse()) await d.stop('SIGTERM', 5000);
    }
  });
});

describe('KeyModule Default: AuthIP and IKEv1 side by side (MS-AIPS §3.2.4)', () => {
  let lab: Lab;
  let dom: LabDomain;
  before(async () => {
    lab = await Lab.create(domain());
    dom = await LabDomain.create(lab);
    await dom.join('alice');
  });
  after(async () => {
    await lab?.destroy();
  });

  it('a member (computer Kerberos, then a pre-shared key) and charon, which speaks IKEv1 and no AuthIP: both Main Modes go out at once, the IKEv1 one marked MS-MamieExists; charon answers IKEv1, which carries the SA while the first pings wait; the AuthIP attempt ends', async () => {
    const a = lab.address('alice');
    const c = lab.address('carol');
    const psk = 'lab-only-alongside-psk-0123456789';
    const charon = await Charon.start(
      lab,
      'carol',
      ikeV1(pskHostTunnel(c, a, { name: 'c', secret: psk, proposals: ['aes256-sha256-ecp256'], esp: ['aes256gcm16'] })),
    );
    const daemons: LabProcess[] = [];
    const cap = await Capture.start(lab, 'alice', 'eth0', { filter: 'udp port 500 or udp port 4500' });
    try {
      const dir = freshStateDir('consec-alongside-');
      const r = await ps(
        [
          `$auth = (New-NetIPsecAuthProposal -Machine -Kerberos), (New-NetIPsecAuthProposal -Machine -PreSharedKey "${psk}")`,
          '$p1 = New-NetIPsecPhase1AuthSet -DisplayName "Kerberos, then the key" -Proposal $auth',
          '$qm = New-NetIPsecQuickModeCryptoProposal -Encapsulation ESP -Encryption AESGCM256 -ESPHash AESGMAC256',
          '$qmSet = New-NetIPsecQuickModeCryptoSet -DisplayName QM -Proposal $qm',
          '$mm = New-NetIPsecMainModeCryptoProposal -Encryption AES256 -Hash SHA256 -KeyExchange DH19',
          '$mmSet = New-NetIPsecMainModeCryptoSet -DisplayName MM -Proposal $mm',
          `New-NetIPsecMainModeRule -DisplayName MM -LocalAddress ${a} -RemoteAddress ${c} -MainModeCryptoSet $mmSet.Name | Out-Null`,
          `New-NetIPsecRule -DisplayName carol -Mode Tunnel -LocalTunnelEndpoint ${a} -RemoteTunnelEndpoint ${c} -LocalAddress ${a} -RemoteAddress ${c} -InboundSecurity Require -OutboundSecurity Require -Phase1AuthSet $p1.Name -QuickModeCryptoSet $qmSet.Name | Out-Null`,
        ].join('\n'),
        dir,
      );
      assert.equal(r.errors, 0, r.err);
      const alice = await memberDaemon(lab, dom, 'alice', dir, daemons);
      const ping = await lab.exec('alice', ['ping', '-c', '3', '-i', '0.3', '-W', '5', c], { allowFailure: true });
      assert.match(
        ping.stdout,
        / 0% packet loss/,
        `${ping.stdout}\n${alice.output().slice(-3000)}\n${charon.log().slice(-2000)}`,
      );
      assert.match(alice.output(), /"msg":"IKEv1 answered alongside AuthIP: the peer speaks no AuthIP"/);
      assert.doesNotMatch(alice.output(), /Kerberos \(AuthIP\) failed/, 'no waiting for AuthIP to give up');
      const mm = JSON.parse((await consecPwsh(dir, 'Get-NetIPsecMainModeSA | ConvertTo-Json')).stdout) as {
        KeyModule: string;
        LocalFirstId: { AuthenticationMethod: string };
      };
      assert.deepEqual([mm.KeyModule, mm.LocalFirstId.AuthenticationMethod], ['IkeV1', 'MachinePSK']);
      await cap.stop();
      const from = `ip.src == ${a} && ip.dst == ${c}`;
      assert.ok(
        (await cap.fields(['frame.number'], `${from} && isakmp.exchangetype == 243`)).length >= 1,
        'AuthIP Main Mode 1',
      );
      const vids = (
        await cap.fields(
          ['isakmp.vid_bytes'],
          `${from} && isakmp.exchangetype == 2 && isakmp.rspi == 00:00:00:00:00:00:00:00`,
        )
      ).join(',');
      assert.match(vids, /214ca4faffa7f32d6748e5303395ae83/, `MS-MamieExists in IKEv1 message 1: ${vids}`);
    } finally {
      await cap.dispose();
      for (const d of daemons.reverse()) await d.stop('SIGTERM', 5000);
      await charon.stop();
    }
  });
});
