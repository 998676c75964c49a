import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { LabCommandError, LabTopologyError } from '../src/errors.ts';
import { Capture } from '../src/lab/capture.ts';
import { run } from '../src/lab/exec.ts';
import { Lab } from '../src/lab/lab.ts';
import { behindNat, domain, hostToHost, siteToSite, type TopologySpec } from '../src/lab/topology.ts';
import { ROOT } from './helpers.ts';

async function namespaces(): Promise<string[]> {
  const { stdout } = await run(['ip', 'netns', 'list']);
  return stdout
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

async function ping(lab: Lab, from: string, to: string): Promise<boolean> {
  const v6 = to.includes(':') ? ['-6'] : [];
  const r = await lab.exec(from, ['ping', ...v6, '-c', '1', '-W', '1', to], { allowFailure: true });
  return r.code === 0;
}

describe('lab topologies', () => {
  it('host-to-host: both families reach each other; destroy removes every namespace', async () => {
    const lab = await Lab.create(hostToHost());
    try {
      const ours = await namespaces();
      for (const ns of lab.namespaces) assert.ok(ours.includes(ns), `${ns} exists`);
      assert.ok(await ping(lab, 'alice', lab.address('bob', 4)));
      assert.ok(await ping(lab, 'bob', lab.address('alice', 6)));
      // The host's own interfaces are untouched: the veth ends live only in the namespaces.
      const { stdout } = await run(['ip', '-o', 'link']);
      assert.doesNotMatch(stdout, new RegExp(lab.id));
    } finally {
      await lab.destroy();
    }
    const after = await namespaces();
    for (const ns of lab.namespaces) assert.ok(!after.includes(ns), `${ns} removed`);
  });

  it('nat: alice reaches bob only through the masquerading router (seen on the wire)', async () => {
    const lab = await Lab.create(behindNat());
    try {
      const cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'icmp' });
      assert.ok(await ping(lab, 'alice', lab.address('bob')));
      const rows = await cap.fields(['ip.src', 'ip.dst', 'icmp.type']);
      await cap.dispose();
      assert.deepEqual(rows, [
        ['203.0.113.1', '203.0.113.2', '8'],
        ['203.0.113.2', '203.0.113.1', '0'],
      ]);
      assert.equal(await ping(lab, 'bob', lab.address('alice')), false, 'bob has no route to the inside');
    } finally {
      await lab.destroy();
    }
  });

  it('site-to-site: each side reaches its gateways, but not the other site without a tunnel', async () => {
    const lab = await Lab.create(siteToSite());
    try {
      assert.ok(await ping(lab, 'hosta', lab.address('gwa', 4, 'inside')));
      assert.ok(await ping(lab, 'hosta', lab.address('gwa', 6, 'outside')));
      assert.ok(await ping(lab, 'gwa', lab.address('gwb', 4, 'outside')));
      assert.ok(await ping(lab, 'hostb', lab.address('gwb', 4, 'outside')));
      assert.equal(await ping(lab, 'hosta', lab.address('hostb')), false);
      assert.equal(await ping(lab, 'hosta', lab.address('hostb', 6)), false);
    } finally {
      await lab.destroy();
    }
  });
});

describe('lab domain topology', () => {
  it('dc, two members and a non-member on one switched segment: every host reaches every other, IPv4 and IPv6', async () => {
    const lab = await Lab.create(domain());
    try {
      for (const [from, to] of [
        ['alice', 'bob'],
        ['alice', 'dc'],
        ['bob', 'carol'],
        ['carol', 'dc'],
      ] as const) {
        assert.ok(await ping(lab, from, lab.address(to)), `${from} → ${to}`);
        assert.ok(await ping(lab, from, lab.address(to, 6)), `${from} → ${to} (IPv6)`);
      }
    } finally {
      await lab.destroy();
    }
  });
});

describe('lab failure handling', () => {
  it('rejects an invalid topology before creating anything', async () => {
    const before = await namespaces();
    const bad: TopologySpec[] = [
      { name: 'Bad Name', hosts: [], links: [] },
      { name: 'x', hosts: [{ name: 'a' }, { name: 'a' }], links: [] },
      {
        name: 'x',
        hosts: [{ name: 'a' }],
        links: [{ a: { host: 'a', name: 'e0', addresses: [] }, b: { host: 'zz', name: 'e0', addresses: [] } }],
      },
      {
        name: 'x',
        hosts: [{ name: 'a' }, { name: 'b' }],
        links: [
          { a: { host: 'a', name: 'e0', addresses: ['192.0.2.1'] }, b: { host: 'b', name: 'e0', addresses: [] } },
        ],
      },
      { name: 'x', hosts: [{ name: 'a', masqueradeOut: 'nope' }], links: [] },
      {
        name: 'x',
        hosts: [{ name: 'a' }, { name: 'sw', bridge: true }],
        links: [
          { a: { host: 'a', name: 'e0', addresses: [] }, b: { host: 'sw', name: 'p0', addresses: ['192.0.2.9/24'] } },
        ],
      },
    ];
    for (const spec of bad) await assert.rejects(Lab.create(spec), LabTopologyError);
    assert.deepEqual(await namespaces(), before);
  });

  it('a failure half-way through building removes what was built', async () => {
    const before = await namespaces();
    const spec = hostToHost();
    spec.routes = [{ host: 'alice', to: '203.0.113.0/24', via: '198.51.100.99' }]; // unreachable gateway
    await assert.rejects(
      Lab.create(spec),
      (e: unknown) => e instanceof LabCommandError && /Nexthop has invalid gateway|unreachable/i.test(e.message),
    );
    assert.deepEqual(await namespaces(), before);
  });

  it('a failing command inside a host is a LabCommandError with its stderr', async () => {
    const lab = await Lab.create(hostToHost());
    try {
      await assert.rejects(lab.exec('alice', ['ip', 'link', 'show', 'nonexistent0']), (e: unknown) => {
        return e instanceof LabCommandError && e.exitCode !== 0 && /does not exist/.test(e.stderr);
      });
      assert.throws(() => lab.ns('mallory'), LabCommandError);
    } finally {
      await lab.destroy();
    }
  });

  async function holder(): Promise<{ child: ReturnType<typeof spawn>; namespaces: string[] }> {
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test/fixtures/lab-holder.ts')], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    const ready = await new Promise<{ namespaces: string[] }>((resolve, reject) => {
      child.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        const line = out.split('\n').find((l) => l.includes('"ready"'));
        if (line) resolve(JSON.parse(line) as { namespaces: string[] });
      });
      child.on('exit', (code) => reject(new Error(`holder exited ${code}: ${out}`)));
    });
    return { child, namespaces: ready.namespaces };
  }

  it('Ctrl-C (SIGINT) tears the lab down', async () => {
    const { child, namespaces: theirs } = await holder();
    for (const ns of theirs) assert.ok((await namespaces()).includes(ns));
    const exited = new Promise((r) => child.on('exit', r));
    child.kill('SIGINT');
    await exited;
    const after = await namespaces();
    for (const ns of theirs) assert.ok(!after.includes(ns), `${ns} removed on SIGINT`);
  });

  it('leftovers of a crashed run (SIGKILL) are removed by the next lab', async () => {
    const { child, namespaces: theirs } = await holder();
    const exited = new Promise((r) => child.on('exit', r));
    child.kill('SIGKILL');
    await exited;
    const during = await namespaces();
    for (const ns of theirs) assert.ok(during.includes(ns), `${ns} survives a SIGKILL`);
    const removed = await Lab.cleanupStale();
    assert.deepEqual(removed.sort(), [...theirs].sort());
    const after = await namespaces();
    for (const ns of theirs) assert.ok(!after.includes(ns));
  });
});
