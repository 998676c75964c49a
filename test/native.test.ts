import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync, sign, verify } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { NativeIoError } from '../src/errors.ts';
import {
  ecdsaSignDigest,
  ecdsaVerifyDigest,
  PacketBatch,
  RawIpSocket,
  TunDevice,
  UdpSocket,
} from '../src/io/native.ts';
import { Lab } from '../src/lab/lab.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { events, fixture, waitUntil } from './helpers.ts';

/** IP packets delivered to sockets in `host`'s namespace so far (Ip: InDelivers, or Ip6InDelivers). */
async function ipInDelivers(lab: Lab, host: string, family: 4 | 6): Promise<number> {
  const r = await lab.exec(host, ['cat', family === 4 ? '/proc/net/snmp' : '/proc/net/snmp6']);
  if (family === 6) return Number(/^Ip6InDelivers\s+(\d+)/m.exec(r.stdout)?.[1] ?? NaN);
  const [names, values] = r.stdout.split('\n').filter((l) => l.startsWith('Ip: '));
  const i = (names ?? '').split(' ').indexOf('InDelivers');
  return Number((values ?? '').split(' ')[i]);
}

interface Pkt {
  version: number;
  proto: number;
  src: string;
  dst: string;
}
interface Received {
  packets: { from: string; length: number; hex: string; batch: number }[];
  batches: number;
}

describe('native addon in lab namespaces', () => {
  let lab: Lab;
  before(async () => {
    lab = await Lab.create(hostToHost());
  });
  after(async () => {
    await lab?.destroy();
  });

  it('route requests over rtnetlink make exactly the routes ip route makes, thousands in one call', async () => {
    const a = lab.address('alice');
    const dir = mkdtempSync(join(tmpdir(), 'consec-rtnl-'));
    await lab.exec('alice', ['ip', 'link', 'add', 'csdummy0', 'type', 'veth', 'peer', 'name', 'csdummy1']);
    try {
      await lab.exec('alice', ['ip', 'link', 'set', 'csdummy0', 'up']);
      const cidrs = [
        '198.51.100.7/32',
        '203.0.113.0/24',
        '2001:db8:5::1/128',
        '2001:db8:6::/48',
        ...Array.from({ length: 3000 }, (_, i) => `2001:db8:7::${(i + 1).toString(16)}/128`),
      ];
      // ip's own routes in table 100; ours in table 50668 (above 255: the table goes as an attribute).
      const batch = cidrs
        .map((c) => `route replace ${c} dev csdummy0 table 100${c.includes(':') ? '' : ` src ${a}`}`)
        .join('\n');
      writeFileSync(join(dir, 'batch'), `${batch}\n`);
      await lab.exec('alice', ['ip', '-batch', join(dir, 'batch')]);
      const send = async (wanted: object[]): Promise<string[]> => {
        writeFileSync(join(dir, 'wanted.json'), JSON.stringify(wanted));
        const p = fixture(lab, 'alice', 'rtnetlink-routes', [join(dir, 'wanted.json')]);
        await p.exited;
        return (events<{ answers: string[] }>(p, 'answers')[0] as { answers: string[] }).answers;
      };
      const answers = await send(
        cidrs.map((cidr) => ({
          op: 'replace',
          cidr,
          table: 50668,
          dev: 'csdummy0',
          src: cidr.includes(':') ? undefined : a,
        })),
      );
      assert.deepEqual(new Set(answers), new Set(['0']));
      const show = async (family: string, table: number) => {
        const r = await lab.exec('alice', ['ip', '-j', family, 'route', 'show', 'table', String(table)]);
        return (JSON.parse(r.stdout) as Record<string, unknown>[]).map((x) => JSON.stringify({ ...x, table: 0 }));
      };
      for (const family of ['-4', '-6']) assert.deepEqual(await show(family, 50668), await show(family, 100), family);
      assert.equal((await show('-6', 50668)).length, 3002);
      // Deletions; a route that is not there is answered ESRCH, and the others still go.
      const del = await send([
        { op: 'delete', cidr: '203.0.113.0/24', table: 50668 },
        { op: 'delete', cidr: '192.0.2.99/32', table: 50668 },
        { op: 'delete', cidr: '2001:db8:6::/48', table: 50668 },
      ]);
      assert.deepEqual(del, ['0', 'ESRCH', '0']);
      assert.deepEqual(
        (await show('-4', 50668)).map((r) => (JSON.parse(r) as { dst: string }).dst),
        ['198.51.100.7'],
      );
    } finally {
      await lab.exec('alice', ['ip', 'link', 'del', 'csdummy0'], { allowFailure: true });
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('routes a ping into a TUN device, reads it and answers it (IPv4 and IPv6)', async () => {
    const echo = fixture(lab, 'alice', 'tun-echo', ['cstun0', 6]);
    await echo.waitFor(/"event":"ready"/);
    await lab.exec('alice', ['ip', 'addr', 'add', '198.51.100.1/24', 'dev', 'cstun0']);
    await lab.exec('alice', ['ip', 'addr', 'add', '2001:db8:2::1/64', 'dev', 'cstun0', 'nodad']);
    await lab.exec('alice', ['ip', 'link', 'set', 'cstun0', 'up']);
    const v4 = await lab.exec('alice', ['ping', '-c', '3', '-i', '0.2', '-W', '2', '198.51.100.2'], {
      allowFailure: true,
    });
    assert.equal(v4.code, 0, v4.stdout + v4.stderr);
    assert.match(v4.stdout, /3 packets transmitted, 3 received/);
    const v6 = await lab.exec('alice', ['ping', '-6', '-c', '3', '-i', '0.2', '-W', '2', '2001:db8:2::2'], {
      allowFailure: true,
    });
    assert.equal(v6.code, 0, v6.stdout + v6.stderr);
    assert.match(v6.stdout, /3 packets transmitted, 3 received/);
    await echo.exited;
    const pkts = events<Pkt>(echo, 'packet').filter(
      (p) => (p.proto === 1 || p.proto === 58) && !p.dst.startsWith('ff'),
    );
    assert.deepEqual(
      pkts.filter((p) => p.version === 4).map((p) => [p.src, p.dst]),
      Array(3).fill(['198.51.100.1', '198.51.100.2']),
    );
    assert.deepEqual(
      pkts.filter((p) => p.version === 6).map((p) => [p.src, p.dst]),
      Array(3).fill(['2001:db8:2::1', '2001:db8:2::2']),
    );
  });

  for (const family of [4, 6] as const) {
    it(`sends a batch of raw ESP packets between namespaces with sendmmsg/recvmmsg (IPv${family})`, async () => {
      const recv = fixture(lab, 'bob', 'raw-recv', [family, 50, 32, '-', 'deferred']);
      await recv.waitFor(/"event":"ready"/);
      const delivered = await ipInDelivers(lab, 'bob', family);
      const send = fixture(lab, 'alice', 'raw-send', [family, 50, lab.address('bob', family), 32, 'c0ffee01']);
      await send.exited;
      assert.deepEqual(events(send, 'sent'), [{ event: 'sent', sent: 32 }]);
      // All 32 delivered to bob's socket (his namespace's IP delivery counter moved by 32) before it drains.
      await waitUntil(async () => (await ipInDelivers(lab, 'bob', family)) >= delivered + 32, 'the packets at bob');
      process.kill(recv.pid ?? 0, 'SIGUSR1');
      await recv.exited;
      const [got] = events<Received>(recv, 'received');
      if (!got) return assert.fail(`no packets received: ${recv.output()}`);
      assert.equal(got.packets.length, 32);
      got.packets.forEach((p, i) => {
        assert.equal(p.from, lab.address('alice', family));
        assert.equal(p.length, 64);
        assert.equal(p.hex.slice(0, 8), 'c0ffee01');
        assert.equal(Number.parseInt(p.hex.slice(8, 16), 16), i + 1);
      });
      // Everything was queued before the receiver drained: one recvmmsg call returns all 32.
      assert.equal(got.batches, 1);
    });
  }

  it('raw AH (protocol 51) sockets carry their protocol only', async () => {
    const recvAh = fixture(lab, 'bob', 'raw-recv', [4, 51, 2]);
    const recvEsp = fixture(lab, 'bob', 'raw-recv', [4, 50, 1]);
    await Promise.all([recvAh.waitFor(/"event":"ready"/), recvEsp.waitFor(/"event":"ready"/)]);
    await fixture(lab, 'alice', 'raw-send', [4, 51, lab.address('bob'), 2, '0badc0de']).exited;
    await fixture(lab, 'alice', 'raw-send', [4, 50, lab.address('bob'), 1, '00e5e5e5']).exited;
    await Promise.all([recvAh.exited, recvEsp.exited]);
    const [ah] = events<Received>(recvAh, 'received');
    const [esp] = events<Received>(recvEsp, 'received');
    assert.deepEqual(
      ah?.packets.map((p) => p.hex.slice(0, 8)),
      ['0badc0de', '0badc0de'],
    );
    assert.deepEqual(
      esp?.packets.map((p) => p.hex.slice(0, 8)),
      ['00e5e5e5'],
    );
  });

  for (const [mode, family, mtu] of [
    ['on', 4, 1392],
    ['on', 6, 1371],
    ['off', 4, 1392],
  ] as const)
    it(`TUN offloads ${mode} (IPv${family}, MTU ${mtu}): two TCP transfers at once through a relay of two TUN devices come back byte for byte${mode === 'on' ? '; the kernel hands over super-packets and takes coalesced ones' : ''}`, async () => {
      const relay = fixture(lab, 'alice', 'tun-relay', ['csra0', 'csrb0', mode]);
      const [ready] = events<{ offloads: string[] }>(
        await relay.waitFor(/"event":"ready".*/).then(() => relay),
        'ready',
      );
      try {
        if (mode === 'on')
          assert.ok(ready?.offloads.includes('tso4') && ready.offloads.includes('csum'), relay.output());
        await lab.exec('alice', ['ip', 'link', 'set', 'csrb0', 'netns', lab.ns('bob')]);
        const [x, y] = family === 4 ? ['203.0.113.1', '203.0.113.2'] : ['2001:db8:3::1', '2001:db8:3::2'];
        for (const [host, dev, mine, theirs] of [
          ['alice', 'csra0', x, y],
          ['bob', 'csrb0', y, x],
        ] as const) {
          await lab.exec(host, ['ip', 'link', 'set', dev, 'mtu', String(mtu), 'up']);
          if (family === 4)
            await lab.exec(host, ['ip', 'addr', 'add', `${mine}/32`, 'peer', `${theirs}/32`, 'dev', dev]);
          else {
            await lab.exec(host, ['ip', 'addr', 'add', `${mine}/128`, 'dev', dev, 'nodad']);
            await lab.exec(host, ['ip', 'route', 'add', `${theirs}/128`, 'dev', dev]);
          }
        }
        const server = fixture(lab, 'bob', 'tcp-transfer', ['server', y, 5301]);
        try {
          await server.waitFor(/listening/);
          const clients = [0, 1].map(() =>
            fixture(lab, 'alice', 'tcp-transfer', ['client', y, 5301, 12 * 1024 * 1024]),
          );
          for (const c of clients) {
            await c.exited;
            const [done] = events<{ sent: string; received: string; bytes: number }>(c, 'done');
            assert.ok(done, c.output());
            assert.equal(done.bytes, 12 * 1024 * 1024);
            assert.equal(done.received, done.sent, 'every byte came back unchanged');
          }
        } finally {
          await server.stop();
        }
        // Octets per packet as each kernel counted them: what it sent into its TUN (TSO) and what it
        // took from it (the relay's coalesced writes).
        const perPacket = async (host: string, dev: string) => {
          const [link] = JSON.parse((await lab.exec(host, ['ip', '-s', '-j', 'link', 'show', dev])).stdout) as {
            stats64: { tx: { bytes: number; packets: number }; rx: { bytes: number; packets: number } };
          }[];
          const s = link?.stats64;
          assert.ok(s);
          return { tx: s.tx.bytes / s.tx.packets, rx: s.rx.bytes / s.rx.packets };
        };
        const pa = await perPacket('alice', 'csra0');
        const pb = await perPacket('bob', 'csrb0');
        if (mode === 'on')
          for (const p of [pa, pb]) assert.ok(p.tx > 2 * mtu && p.rx > 2 * mtu, JSON.stringify({ pa, pb }));
        else for (const p of [pa, pb]) assert.ok(p.tx <= mtu && p.rx <= mtu, JSON.stringify({ pa, pb }));
      } finally {
        await relay.stop('SIGTERM', 3000);
      }
      const [stats] = events<{ packets: number; drops: number }>(relay, 'stats');
      assert.equal(stats?.drops, 0);
    });

  it('a multi-queue TUN spreads flows over its queues', async () => {
    const mq = fixture(lab, 'alice', 'tun-multiqueue', ['csmq0', 16]);
    await mq.waitFor(/"event":"ready"/);
    assert.deepEqual(events<{ names: string[] }>(mq, 'ready')[0]?.names, ['csmq0', 'csmq0']);
    await lab.exec('alice', ['ip', 'addr', 'add', '198.51.100.33/24', 'dev', 'csmq0']);
    await lab.exec('alice', ['ip', 'link', 'set', 'csmq0', 'up']);
    // 16 UDP flows (different source ports) to one destination: the kernel hashes flows to queues.
    const send = `
      const dgram = require('node:dgram');
      let left = 16;
      for (let i = 0; i < 16; i++) {
        const s = dgram.createSocket('udp4');
        s.bind(20000 + i, () => s.send('x', 9999, '198.51.100.34', () => { s.close(); left--; }));
      }`;
    await lab.exec('alice', [process.execPath, '-e', send]);
    await mq.exited;
    const [done] = events<{ perQueue: number[] }>(mq, 'done');
    assert.equal((done?.perQueue[0] ?? 0) + (done?.perQueue[1] ?? 0), 16);
    assert.ok(
      (done?.perQueue[0] ?? 0) > 0 && (done?.perQueue[1] ?? 0) > 0,
      `both queues used: ${JSON.stringify(done)}`,
    );
  });

  it('SO_MARK keeps marked ESP out of a TUN route (the wg-quick fwmark pattern)', async () => {
    const bob = lab.address('bob');
    const tun = fixture(lab, 'alice', 'tun-echo', ['cstun1', 4]);
    await tun.waitFor(/"event":"ready"/);
    await lab.exec('alice', ['ip', 'link', 'set', 'cstun1', 'up']);
    await lab.exec('alice', ['ip', 'route', 'add', `${bob}/32`, 'dev', 'cstun1', 'table', '100']);
    await lab.exec('alice', ['ip', 'rule', 'add', 'not', 'fwmark', '42', 'table', '100', 'pref', '100']);
    try {
      const recv = fixture(lab, 'bob', 'raw-recv', [4, 50, 4]);
      await recv.waitFor(/"event":"ready"/);
      await fixture(lab, 'alice', 'raw-send', [4, 50, bob, 4, 'aa000001', 42]).exited;
      await recv.exited;
      const [got] = events<Received>(recv, 'received');
      assert.equal(got?.packets.length, 4, 'marked packets reach bob over the veth');
      await fixture(lab, 'alice', 'raw-send', [4, 50, bob, 4, 'aa000002']).exited;
      await tun.exited;
      const inTun = events<Pkt>(tun, 'packet').filter((p) => !p.dst.startsWith('ff'));
      assert.deepEqual(
        inTun.map((p) => [p.proto, p.dst]),
        Array(4).fill([50, bob]),
        'unmarked packets are routed into the TUN',
      );
    } finally {
      await lab.exec('alice', ['ip', 'rule', 'del', 'pref', '100'], { allowFailure: true });
    }
  });
});

describe('native UDP sockets (loopback)', () => {
  it('sendmmsg/recvmmsg a batch with per-packet peers and ports, IPv4 and IPv6', async () => {
    for (const [family, addr] of [
      [4, '127.0.0.1'],
      [6, '::1'],
    ] as const) {
      const a = UdpSocket.open(family);
      const b = UdpSocket.open(family);
      try {
        a.bind(addr, 45001);
        b.bind(addr, 45002);
        const out = new PacketBatch(32, 2048);
        for (let i = 0; i < 32; i++) out.set(i, Buffer.from(`datagram ${i}`), addr, 45002);
        out.count = 32;
        assert.equal(a.send(out), 32);
        const got = new PacketBatch(64, 2048);
        const seen: string[] = [];
        const deadline = Date.now() + 2000;
        while (seen.length < 32 && Date.now() < deadline) {
          const n = b.recv(got);
          for (let i = 0; i < n; i++) {
            assert.equal(got.ports[i], 45001, 'the source port is reported');
            assert.equal(got.address(i, family), addr);
            seen.push(got.packet(i).toString());
          }
          if (n === 0) await new Promise((r) => setTimeout(r, 5));
        }
        assert.deepEqual(
          seen,
          Array.from({ length: 32 }, (_, i) => `datagram ${i}`),
        );
      } finally {
        a.close();
        b.close();
      }
    }
  });
});

describe('native addon errors', () => {
  it('rejects bad arguments with typed errors and never crashes', () => {
    assert.throws(() => TunDevice.open('a-name-longer-than-15'), { code: 'ERR_INVALID_ARG' });
    assert.throws(() => RawIpSocket.open(4, 256), { code: 'ERR_INVALID_ARG' });
    assert.throws(() => RawIpSocket.open(5 as 4, 50), { code: 'ERR_INVALID_ARG' });
  });

  it('reports errno failures as NativeIoError and refuses a closed descriptor', () => {
    const sock = RawIpSocket.open(4, 50);
    assert.throws(
      () => sock.bind('203.0.113.254'),
      (e: unknown) => e instanceof NativeIoError && e.sysCode === 'EADDRNOTAVAIL' && e.syscall === 'bind',
    );
    assert.throws(
      () => sock.bind('2001:db8::1'),
      (e: unknown) => e instanceof NativeIoError && e.sysCode === 'EAFNOSUPPORT',
    );
    const batch = new PacketBatch(4, 128);
    assert.equal(sock.recv(batch), 0, 'non-blocking receive with nothing queued returns 0');
    sock.close();
    assert.throws(
      () => sock.recv(batch),
      (e: unknown) => e instanceof NativeIoError && e.sysCode === 'EBADF',
    );
    sock.close(); // idempotent
  });

  it('PacketBatch refuses a packet larger than its slot', () => {
    const batch = new PacketBatch(2, 64);
    assert.throws(() => batch.set(0, Buffer.alloc(65)), RangeError);
    batch.set(1, Buffer.from('abcd'), '192.0.2.9');
    assert.equal(batch.packet(1).toString(), 'abcd');
    assert.equal(batch.address(1, 4), '192.0.2.9');
  });
});

describe('ECDSA over a computed digest (IKEv1 signatures)', () => {
  for (const [curve, hash, width] of [
    ['prime256v1', 'sha256', 32],
    ['secp384r1', 'sha384', 48],
    ['secp521r1', 'sha512', 66],
  ] as const) {
    it(`${curve}: agrees with node:crypto's ECDSA-${hash} when the digest is ${hash} of the message, both ways`, () => {
      const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: curve });
      const message = Buffer.from(`HASH_I stand-in for ${curve}`);
      const digest = createHash(hash).update(message).digest();
      const ours = ecdsaSignDigest(privateKey, digest);
      assert.equal(ours.length, width * 2, 'r‖s, each the field width');
      assert.ok(verify(hash, message, { key: publicKey, dsaEncoding: 'ieee-p1363' }, ours));
      const theirs = sign(hash, message, { key: privateKey, dsaEncoding: 'ieee-p1363' });
      assert.ok(ecdsaVerifyDigest(publicKey, digest, theirs));
      const flipped = Buffer.from(theirs);
      flipped[5] = (flipped[5] as number) ^ 1;
      assert.equal(ecdsaVerifyDigest(publicKey, digest, flipped), false);
      assert.equal(ecdsaVerifyDigest(publicKey, digest, theirs.subarray(1)), false, 'wrong length');
      const other = createHash(hash).update('another message').digest();
      assert.equal(ecdsaVerifyDigest(publicKey, other, theirs), false);
    });
  }

  it('refuses keys that are not EC', () => {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 1024 });
    assert.throws(() => ecdsaSignDigest(privateKey, Buffer.alloc(32)), /not an EC private key/);
    assert.throws(() => ecdsaVerifyDigest(publicKey, Buffer.alloc(32), Buffer.alloc(64)), /not an EC public key/);
  });
});
