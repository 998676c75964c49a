/**
 * Domain isolation between two Linux hosts, as two Windows domain members do it: the lab's domain
 * (a dc namespace running MIT krb5-kdc, members with keytabs from kadmin.local), each member's
 * policy from the seeds' own server-to-server script (computer Kerberos, Require in and out), and
 * consec daemons that negotiate AuthIP with Kerberos. A host outside the domain gets nothing.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Capture } from '../src/lab/capture.ts';
import { LabDomain } from '../src/lab/kdc.ts';
import { Lab, type LabProcess } from '../src/lab/lab.ts';
import { domain } from '../src/lab/topology.ts';
import { consecDaemon, consecPwsh } from './helpers.ts';
import { freshStateDir, ps } from './pwsh-helpers.ts';

const SEED_SCRIPT = join(import.meta.dirname, '..', '..', 'shared', 'reference', 'scripts', '02-server-to-server.ps1');

/** The seeds' server-to-server script (computer Kerberos, Require/Require) for two lab addresses. */
async function seedPolicy(dir: string, local: string, remote: string): Promise<void> {
  const script = readFileSync(SEED_SCRIPT, 'utf8').replaceAll('10.0.1.20', local).replaceAll('10.0.1.30', remote);
  const r = await ps(script, dir);
  assert.equal(r.errors, 0, r.err);
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

  const member = (host: string) => ({ KRB5_CONFIG: dom.krb5Conf, KRB5_KTNAME: `FILE:${dom.keytab(host)}` });

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
        const d = consecDaemon(lab, host, dir, local, [], member(host));
        daemons.push(d);
        await d.waitFor(/"msg":"ready"/);
        assert.match(d.output(), new RegExp(`"principal":"host/${host}\\.corp\\.example@CORP\\.EXAMPLE"`));
      }
      const ping = await lab.exec('alice', ['ping', '-c', '4', '-i', '0.2', '-W', '3', b], { allowFailure: true });
      assert.match(
        ping.stdout,
        / 0% packet loss/,
        `${ping.stdout}\n${daemons.map((d) => d.output().slice(-3000)).join('\n---\n')}`,
      );
      await cap.stop();
      const protocols = new Set(await cap.protocols('ip && !arp && !(udp.port == 88)'));
      assert.ok(
        [...protocols].some((p) => p.endsWith('ip:esp')),
        [...protocols].join(' '),
      );
      for (const p of protocols)
        assert.match(p, /ip:(esp|udp:isakmp)$/, `only IKE and ESP: ${[...protocols].join(' ')}`);
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
});
