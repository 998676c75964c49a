/**
 * The fleet's Group Policy in a real etcd v3 cluster (Debian's etcd-server, three members in lab
 * hosts, TLS with client certificates of a lab CA): admins edit a domain GPO with Windows' own
 * Open-NetGPO / Save-NetGPO sessions from their workstations; a save is a compare-and-swap on the
 * revision the session opened.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EtcdCluster } from '../src/lab/etcd.ts';
import { LabDomain } from '../src/lab/kdc.ts';
import { Lab, type LabProcess } from '../src/lab/lab.ts';
import { LabPki } from '../src/lab/pki.ts';
import { fleet } from '../src/lab/topology.ts';
import { consecArgv, logLines, waitUntil } from './helpers.ts';
import { freshStateDir } from './pwsh-helpers.ts';

const GPO = 'corp.example\\Isolation';
const ISOLATION = 'corp.example\\Domain Isolation';

describe('fleet GPOs in etcd: Open-NetGPO / Save-NetGPO with compare-and-swap', () => {
  let lab: Lab;
  let cluster: EtcdCluster;
  let dom: LabDomain;
  before(async () => {
    lab = await Lab.create(fleet());
    cluster = await EtcdCluster.start(lab, ['etcd1', 'etcd2', 'etcd3'], LabPki.create());
    // Access control on, as a fleet runs it: the admins are etcd's root role, hosts get a role each.
    await cluster.enableAuth(['admin-one', 'admin-two', 'admin-three', 'admin-fleet']);
    dom = await LabDomain.create(lab);
    for (const h of ['alice', 'bob', 'carol']) await dom.join(h);
  });
  after(async () => {
    await cluster?.dispose();
    await lab?.destroy();
  });

  /** A state directory joined to the fleet with `user`'s client certificate (an admin's or a host's). */
  async function admin(user: string): Promise<string> {
    const dir = freshStateDir(`consec-fleet-${user}-`);
    const c = cluster.credentials(user);
    const r = await consec(dir, [
      'fleet',
      'join',
      '--endpoints',
      ...cluster.endpoints,
      '--ca',
      c.ca,
      '--cert',
      c.cert,
      '--key',
      c.key,
      '--domain',
      'corp.example',
      '--host',
      user,
    ]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    return dir;
  }

  const consec = (dir: string, args: string[]) =>
    lab.exec('admin', consecArgv(args, dir), { allowFailure: true, timeoutMs: 60_000 });
  const pwsh = (dir: string, script: string) => consec(dir, ['pwsh', '-Command', script]);
  const inCluster = async (dir: string, gpo = GPO): Promise<{ revision: string; rules: string[] }> => {
    const r = await consec(dir, ['fleet', 'gpo', gpo]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    return JSON.parse(r.stdout) as { revision: string; rules: string[] };
  };
  const rule = (name: string) =>
    `New-NetIPsecRule -DisplayName "${name}" -GPOSession $gpo -InboundSecurity Require -OutboundSecurity Request | Out-Null`;

  it('an admin writes a GPO as Windows scripts do; a second admin who opened the same revision gets a conflict and nothing is lost or merged; after a member is killed the cluster still serves both', async () => {
    const one = await admin('admin-one');
    const two = await admin('admin-two');
    // The first version of the GPO, in one script as Microsoft's examples write it.
    const first = await pwsh(
      one,
      [`$gpo = Open-NetGPO -PolicyStore ${GPO}`, rule('Domain isolation'), 'Save-NetGPO -GPOSession $gpo'].join('\n'),
    );
    assert.equal(first.code, 0, first.stdout + first.stderr);
    const v1 = await inCluster(two);
    assert.deepEqual(v1.rules, ['Domain isolation']);
    // Both admins open it; one saves first; the other's save is refused.
    for (const dir of [one, two]) assert.equal((await pwsh(dir, `Open-NetGPO -PolicyStore ${GPO} | Out-Null`)).code, 0);
    const saved = await pwsh(one, [`$gpo = '${GPO}'`, rule('Exempt DCs'), 'Save-NetGPO -GPOSession $gpo'].join('\n'));
    assert.equal(saved.code, 0, saved.stdout + saved.stderr);
    const late = await pwsh(two, [`$gpo = '${GPO}'`, rule('Servers'), 'Save-NetGPO -GPOSession $gpo'].join('\n'));
    assert.notEqual(late.code, 0, 'the second save fails');
    assert.match(late.stdout + late.stderr, /changed by someone else after it was opened/);
    const v2 = await inCluster(one);
    assert.deepEqual(v2.rules, ['Domain isolation', 'Exempt DCs'], 'the first save stands; the second is not merged');
    assert.ok(BigInt(v2.revision) > BigInt(v1.revision));
    // A member crashes: the cluster (two of three) keeps serving; the second admin opens again and saves.
    await cluster.kill('etcd1');
    const retry = await pwsh(
      two,
      [`$gpo = Open-NetGPO -PolicyStore ${GPO}`, rule('Servers'), 'Save-NetGPO -GPOSession $gpo'].join('\n'),
    );
    assert.equal(retry.code, 0, retry.stdout + retry.stderr);
    assert.deepEqual((await inCluster(one)).rules, ['Domain isolation', 'Exempt DCs', 'Servers']);
    await cluster.restart('etcd1');
  });

  it('domain isolation from a GPO: the two members it targets negotiate AuthIP with each other, the third gets nothing; a change reaches both while an etcd member is down; a GPO written badly by hand is refused whole with the error reported; with the cluster down hosts keep enforcing, also across a restart; a host can neither write a GPO nor read one that does not target it', async () => {
    const adm = await admin('admin-fleet');
    const ok = async (dir: string, args: string[]) => {
      const r = await consec(dir, args);
      assert.equal(r.code, 0, `consec ${args.join(' ')}: ${r.stdout}${r.stderr}`);
      return r.stdout;
    };
    const [a, b, c] = ['alice', 'bob', 'carol'].map((h) => lab.address(h)) as [string, string, string];
    // The directory: three servers in one container, two of them in the group the GPO is filtered to.
    for (const [h, groups] of [
      ['alice', ['Isolated Servers']],
      ['bob', ['Isolated Servers']],
      ['carol', []],
    ] as const)
      await ok(adm, [
        'fleet',
        'host',
        h,
        '--container',
        'corp.example/Servers',
        ...groups.flatMap((g) => ['--group', g]),
      ]);
    await ok(adm, ['fleet', 'link', 'Domain Isolation', '--container', 'corp.example/Servers']);
    await ok(adm, ['fleet', 'filter', 'Domain Isolation', '--apply', 'Isolated Servers']);
    // The seeds' isolation rule (Require in and out, computer Kerberos) with its exemptions, as
    // one script writes it into the GPO.
    const script = await pwsh(
      adm,
      [
        // Each cmdlet with -PolicyStore writes to the GPO in the cluster at once (no edit session).
        `$gpo = "${ISOLATION}"`,
        '$krb = New-NetIPsecAuthProposal -Machine -Kerberos',
        '$p1 = New-NetIPsecPhase1AuthSet -DisplayName "Computer Kerberos" -Proposal $krb -PolicyStore $gpo',
        'New-NetIPsecRule -DisplayName "Domain Isolation" -InboundSecurity Require -OutboundSecurity Require -RemoteAddress 192.0.2.0/24 -Phase1AuthSet $p1.Name -PolicyStore $gpo | Out-Null',
        `New-NetIPsecRule -DisplayName "Exempt the domain controller and the policy servers" -RemoteAddress ${['dc', 'etcd1', 'etcd2', 'etcd3'].map((h) => lab.address(h)).join(',')} -PolicyStore $gpo | Out-Null`,
      ].join('\n'),
    );
    assert.equal(script.code, 0, script.stdout + script.stderr);
    const first = (await inCluster(adm, ISOLATION)).revision;
    // The three members join the fleet with their own certificates and start their daemons.
    const daemons: Record<string, LabProcess> = {};
    const dirs: Record<string, string> = {};
    const start = async (h: string) => {
      const d = lab.spawn(h, consecArgv(['daemon', '--listen', lab.address(h), '--dpd', '0'], dirs[h]), {
        env: { ...process.env, ...dom.env(h) },
      });
      daemons[h] = d;
      await d.waitFor(/"msg":"ready"/, 30_000);
      return d;
    };
    /** Waits until a host's daemon has applied the fleet at `revision` or later. */
    const applied = (h: string, revision: string) =>
      waitUntil(
        () =>
          logLines(daemons[h] as LabProcess, 'fleet policy applied').some(
            (e) => BigInt(e.revision as string) >= BigInt(revision),
          ),
        `${h} applies fleet revision ${revision}`,
        30_000,
      ).catch((err: Error) => {
        throw new Error(`${err.message}\n${daemons[h]?.output().slice(-3000)}`);
      });
    try {
      for (const h of ['alice', 'bob', 'carol']) {
        dirs[h] = await admin(h);
        await start(h);
      }
      for (const h of ['alice', 'bob', 'carol']) await applied(h, first);
      // carol is filtered out: gpresult says why, and she has no connection security rule.
      const carolResult = await ok(dirs.carol as string, ['gpresult', '/r']);
      assert.match(carolResult, /Domain Isolation\n +Filtering: +Denied \(Security\)/, carolResult);
      const aliceResult = await ok(dirs.alice as string, ['gpresult', '/r']);
      assert.match(
        aliceResult,
        /Applied Group Policy Objects\n +-+\n +Domain Isolation +\(linked at corp.example\/Servers/,
      );
      const rules = async (h: string, store: string) =>
        (
          await ok(dirs[h] as string, [
            'pwsh',
            '-Command',
            `Get-NetIPsecRule -PolicyStore ${store} | ForEach-Object DisplayName`,
          ])
        )
          .split('\n')
          .filter(Boolean)
          .sort();
      assert.deepEqual(await rules('carol', 'ActiveStore'), []);
      assert.deepEqual(await rules('alice', 'RSOP'), [
        'Domain Isolation',
        'Exempt the domain controller and the policy servers',
      ]);
      // alice and bob: AuthIP with their computer accounts; carol, in the clear, is refused by both.
      const ping = (from: string, to: string) =>
        lab.exec(from, ['ping', '-c', '3', '-i', '0.3', '-W', '3', to], { allowFailure: true });
      const ab = await ping('alice', b);
      assert.match(
        ab.stdout,
        / 0% packet loss/,
        `${ab.stdout}\n--- alice:\n${daemons.alice?.output().slice(0, 4000)}\n--- bob:\n${daemons.bob?.output().slice(0, 4000)}`,
      );
      const mm = JSON.parse(
        await ok(dirs.alice as string, ['pwsh', '-Command', 'Get-NetIPsecMainModeSA | ConvertTo-Json']),
      ) as { KeyModule: string; RemoteFirstId: { Identity: string } };
      assert.deepEqual([mm.KeyModule, mm.RemoteFirstId.Identity], ['AuthIp', 'CORP\\BOB$']);
      assert.match((await ping('carol', a)).stdout, / 100% packet loss/);
      // The fleet's state as the admin sees it: every host at the first revision, no error.
      const status = JSON.parse(await ok(adm, ['fleet', 'status', '--json'])) as {
        host: string;
        status?: { revision: string; gpos: { name: string }[]; error?: string };
      }[];
      for (const h of ['alice', 'bob', 'carol']) {
        const s = status.find((x) => x.host === h)?.status;
        assert.ok(s && BigInt(s.revision) >= BigInt(first) && s.error === undefined, JSON.stringify(status));
        assert.deepEqual(
          s.gpos.map((g) => g.name),
          h === 'carol' ? [] : [ISOLATION],
        );
      }
      // Access control: a host's certificate cannot write a GPO, nor read one that does not target it.
      const key = '/consec/gpo/corp.example/domain%20isolation';
      const write = await cluster.etcdctl(['put', key, '{}'], { user: 'alice', allowFailure: true, stderr: true });
      assert.match(write, /permission denied/);
      assert.match(
        await cluster.etcdctl(['get', key], { user: 'carol', allowFailure: true, stderr: true }),
        /permission denied/,
      );
      assert.match(await cluster.etcdctl(['get', key, '--print-value-only'], { user: 'bob' }), /Domain Isolation/);
      // A member crashes; the admin exempts carol; both members apply it (their clients fail over).
      await cluster.kill('etcd1');
      const change = await pwsh(
        adm,
        [
          `$gpo = Open-NetGPO -PolicyStore "${ISOLATION}"`,
          `New-NetIPsecRule -DisplayName "Exempt carol" -RemoteAddress ${c} -GPOSession $gpo | Out-Null`,
          'Save-NetGPO -GPOSession $gpo',
        ].join('\n'),
      );
      assert.equal(change.code, 0, change.stdout + change.stderr);
      const second = (await inCluster(adm, ISOLATION)).revision;
      await Promise.all([applied('alice', second), applied('bob', second)]);
      assert.match((await ping('carol', a)).stdout, / 0% packet loss/);
      // Someone writes the GPO by hand, badly (a rule with a security that does not exist): both hosts
      // refuse that revision whole, keep the last good, and report why; the good text back clears it.
      const good = await cluster.etcdctl(['get', key, '--print-value-only']);
      const bad = good
        .split('\n')
        .map((l) =>
          l.includes('"Exempt carol"') ? l.replace('"InboundSecurity":"None"', '"InboundSecurity":"Sometimes"') : l,
        )
        .join('\n');
      assert.notEqual(bad, good);
      await cluster.etcdctl(['put', key, bad.trimEnd()]);
      const statusOf = async (h: string) =>
        (
          JSON.parse(await ok(adm, ['fleet', 'status', '--json'])) as {
            host: string;
            status?: { error?: string; gpos: { revision: string }[] };
          }[]
        ).find((x) => x.host === h)?.status;
      for (const h of ['alice', 'bob'])
        await waitUntil(
          async () => /Domain Isolation.*InboundSecurity/s.test((await statusOf(h))?.error ?? ''),
          `${h} reports the bad GPO`,
          30_000,
        ).catch(async (err: Error) => {
          const log = (daemons[h] as LabProcess)
            .output()
            .split('\n')
            .filter((l) => l.includes('fleet'))
            .join('\n');
          throw new Error(`${err.message}: ${JSON.stringify(await statusOf(h))}\n${log.slice(-3000)}`);
        });
      assert.deepEqual(await rules('alice', 'ActiveStore'), [
        'Domain Isolation',
        'Exempt carol',
        'Exempt the domain controller and the policy servers',
      ]);
      assert.match((await ping('carol', a)).stdout, / 0% packet loss/, 'the last good policy is still enforced');
      // bob is cut off from the network while the good text goes back: alice takes it at once; bob,
      // once his link is back, converges by himself.
      await lab.exec('bob', ['ip', 'link', 'set', 'eth0', 'down']);
      try {
        await cluster.etcdctl(['put', key, good.trimEnd()]);
        await waitUntil(
          async () => (await statusOf('alice'))?.error === undefined,
          'alice reports no error again',
          30_000,
        );
        assert.match((await statusOf('bob'))?.error ?? '', /InboundSecurity/, 'bob has not heard of it yet');
      } finally {
        await lab.exec('bob', ['ip', 'link', 'set', 'eth0', 'up']);
      }
      await waitUntil(
        async () => (await statusOf('bob'))?.error === undefined,
        'bob converges after the partition',
        60_000,
      );
      // The whole cluster goes down: hosts keep enforcing, also alice after her daemon restarts.
      await cluster.stop();
      await daemons.alice?.stop('SIGTERM', 10_000);
      const again = await start('alice');
      await again.waitFor(/enforcing the last good fleet policy until the cluster answers/, 10_000);
      await again.waitFor(/"msg":"fleet policy not applied: the last good fleet policy stays in force"/, 20_000);
      assert.deepEqual(await rules('alice', 'ActiveStore'), [
        'Domain Isolation',
        'Exempt carol',
        'Exempt the domain controller and the policy servers',
      ]);
      assert.match((await ping('alice', b)).stdout, / 0% packet loss/);
      assert.match((await ping('carol', a)).stdout, / 0% packet loss/);
      // The cluster is back: the hosts find it again by themselves and report in.
      await cluster.resume();
      await waitUntil(
        async () =>
          (
            JSON.parse(await ok(adm, ['fleet', 'status', '--json'])) as {
              host: string;
              status?: { error?: string; reportedAt: string };
            }[]
          ).some((x) => x.host === 'alice' && x.status?.error === undefined),
        'alice reports again without an error',
        60_000,
      );
    } finally {
      for (const d of Object.values(daemons)) await d.stop('SIGTERM', 10_000);
    }
  });

  it('a GPO the cluster holds that is not a valid consec policy is refused with its reason; a cmdlet’s -PolicyStore without an edit session writes to the cluster at once; an unreachable cluster is an error, not a hang', async () => {
    const dir = await admin('admin-three');
    await cluster.etcdctl(['put', '/consec/gpo/corp.example/broken', '{"format":"consec-policy","version":1}']);
    const broken = await pwsh(dir, 'Open-NetGPO -PolicyStore corp.example\\Broken | Out-Null');
    assert.notEqual(broken.code, 0);
    assert.match(broken.stdout + broken.stderr, /not a valid consec policy/);
    // Without an edit session a cmdlet's -PolicyStore writes to the cluster at once, and another
    // admin's Get- reads it from there.
    const direct = await pwsh(dir, 'New-NetIPsecRule -DisplayName "written through" -PolicyStore corp.example\\Other');
    assert.equal(direct.code, 0, direct.stdout + direct.stderr);
    assert.deepEqual((await inCluster(dir, 'corp.example\\Other')).rules, ['written through']);
    const other = await admin('admin-one');
    const seen = await pwsh(other, 'Get-NetIPsecRule -PolicyStore corp.example\\Other | ForEach-Object DisplayName');
    assert.equal(seen.stdout.trim(), 'written through', seen.stdout + seen.stderr);
    await cluster.stop();
    const t0 = Date.now();
    const down = await pwsh(dir, `Open-NetGPO -PolicyStore ${GPO} | Out-Null`);
    assert.notEqual(down.code, 0);
    assert.match(down.stdout + down.stderr, /could not be reached/);
    assert.ok(Date.now() - t0 < 30_000, 'fails within the call deadlines');
  });
});
