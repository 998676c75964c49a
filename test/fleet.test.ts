/**
 * The fleet's Group Policy in a real etcd v3 cluster (Debian's etcd-server, three members in lab
 * hosts, TLS with client certificates of a lab CA): admins edit a domain GPO with Windows' own
 * Open-NetGPO / Save-NetGPO sessions from their workstations; a save is a compare-and-swap on the
 * revision the session opened.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EtcdCluster } from '../src/lab/etcd.ts';
import { Lab } from '../src/lab/lab.ts';
import { LabPki } from '../src/lab/pki.ts';
import { fleet } from '../src/lab/topology.ts';
import { consecArgv } from './helpers.ts';
import { freshStateDir } from './pwsh-helpers.ts';

const GPO = 'corp.example\\Isolation';

describe('fleet GPOs in etcd: Open-NetGPO / Save-NetGPO with compare-and-swap', () => {
  let lab: Lab;
  let cluster: EtcdCluster;
  before(async () => {
    lab = await Lab.create(fleet());
    cluster = await EtcdCluster.start(lab, ['etcd1', 'etcd2', 'etcd3'], LabPki.create());
  });
  after(async () => {
    await cluster?.dispose();
    await lab?.destroy();
  });

  /** An admin's state directory, joined to the fleet with its own client certificate. */
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
  const inCluster = async (dir: string): Promise<{ revision: string; rules: string[] }> => {
    const r = await consec(dir, ['fleet', 'gpo', GPO]);
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

  it('a GPO the cluster holds that is not a valid consec policy is refused with its reason; a fleet GPO changed outside an edit session is refused; an unreachable cluster is an error, not a hang', async () => {
    const dir = await admin('admin-three');
    await cluster.etcdctl(['put', '/consec/gpo/corp.example/broken', '{"format":"consec-policy","version":1}']);
    const broken = await pwsh(dir, 'Open-NetGPO -PolicyStore corp.example\\Broken | Out-Null');
    assert.notEqual(broken.code, 0);
    assert.match(broken.stdout + broken.stderr, /not a valid consec policy/);
    // A change outside an edit session would stay on this host: refused, as the message says why.
    const direct = await pwsh(dir, 'New-NetIPsecRule -DisplayName "local only" -PolicyStore corp.example\\Other');
    assert.notEqual(direct.code, 0);
    assert.match(direct.stdout + direct.stderr, /is a GPO of this host's fleet: open it with Open-NetGPO/);
    await cluster.stop();
    const t0 = Date.now();
    const down = await pwsh(dir, `Open-NetGPO -PolicyStore ${GPO} | Out-Null`);
    assert.notEqual(down.code, 0);
    assert.match(down.stdout + down.stderr, /could not be reached/);
    assert.ok(Date.now() - t0 < 30_000, 'fails within the call deadlines');
  });
});
