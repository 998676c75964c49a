/**
 * consec on the kernel's own ESP (the kernel data plane, netlink XFRM) — inside User-Mode Linux
 * guests, whose kernel has ESP (this host's has not). consec runs in the guest with this machine's
 * Node and source tree mounted over hostfs, and takes the kernel data plane by itself
 * (`--dataplane auto`). Its peers: strongSwan with kernel ESP in a second guest, and consec's
 * userspace data plane on a lab host. Every test checks the guest kernels' own SAs and the wire.
 */
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Capture } from '../src/lab/capture.ts';
import { charonHostToHost, GuestCharon, GuestConsec } from '../src/lab/guest-peers.ts';
import { Lab } from '../src/lab/lab.ts';
import type { CharonConfig } from '../src/lab/strongswan.ts';
import { behindNat, hostToHost, type TopologySpec } from '../src/lab/topology.ts';
import { Guest, type GuestKind } from '../src/lab/uml.ts';
import { applyPolicy, consecDaemon, DATAPLANE_PSK as PSK, events, fixture, ROOT, waitUntil } from './helpers.ts';
import { freshStateDir } from './pwsh-helpers.ts';

const log = (msg: string): void => console.log(`# ${msg}`);

/** charon on the peer; consec renews by volume on the kernel's soft lifetime, charon must not rekey first. */
const swan = (local: string, remote: string, mode: 'transport' | 'tunnel'): CharonConfig =>
  charonHostToHost(local, remote, { psk: PSK, mode, noRekey: true });

/** `bytes` random octets from one guest to another over TCP; their SHA-256 on both sides. */
async function transfer(from: Guest, to: Guest, toAddress: string, bytes: number): Promise<void> {
  const target = toAddress.includes(':') ? `[${toAddress}]` : toAddress;
  await to.sh(
    'rm -f /tmp/rx.sha; (socat -u TCP6-LISTEN:5001,ipv6only=0,reuseaddr - | sha256sum > /tmp/rx.tmp && mv /tmp/rx.tmp /tmp/rx.sha) > /dev/null 2>&1 &',
  );
  await to.sh('for i in $(seq 1 100); do ss -Hltn | grep -q :5001 && exit 0; sleep 0.1; done; exit 1');
  const sent = await from.sh(
    `head -c ${bytes} /dev/urandom > /tmp/tx.bin && sha256sum < /tmp/tx.bin && socat -u FILE:/tmp/tx.bin TCP:${target}:5001,connect-timeout=20`,
    { timeoutMs: 180_000 },
  );
  const got = await to.sh(
    'for i in $(seq 1 600); do [ -e /tmp/rx.sha ] && cat /tmp/rx.sha && exit 0; sleep 0.1; done; exit 1',
    {
      timeoutMs: 90_000,
    },
  );
  assert.equal(got.stdout.trim(), sent.stdout.trim(), 'every byte arrived unchanged');
}

/** Pings until one answer (the first packet starts IKE), then requires a clean run. */
async function ping(from: Guest, to: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if ((await from.exec(['ping', '-c', '1', '-W', '1', to], { allowFailure: true })).code === 0) break;
  }
  const r = await from.exec(['ping', '-c', '3', '-i', '0.3', '-W', '3', to], { allowFailure: true });
  assert.match(r.stdout, / 0% packet loss/, r.stdout);
}

interface QmView {
  InboundSpi: string;
  OutboundSpi: string;
  PacketsIn: number;
  PacketsOut: number;
  BytesIn: number;
  BytesOut: number;
}

async function quickModeSas(consec: GuestConsec): Promise<QmView[]> {
  const r = await consec.pwsh('Get-NetIPsecQuickModeSA | ConvertTo-Json');
  const parsed = JSON.parse(r.stdout || '[]') as QmView | QmView[];
  return Array.isArray(parsed) ? parsed : [parsed];
}

const spiHex = (s: string): string => s.replace(/^0x/, '').toLowerCase().padStart(8, '0');

/**
 * Two UML guests standing in for alice (`aliceKind`) and bob (strongSwan's image: charon, or consec
 * mounted in), booted before a suite's tests and stopped after them (also when they fail).
 */
function twoGuests(topology: () => TopologySpec, aliceKind: GuestKind): { lab: Lab; alice: Guest; bob: Guest } {
  const env = {} as { lab: Lab; alice: Guest; bob: Guest };
  before(async () => {
    env.lab = await Lab.create(topology());
    [env.alice, env.bob] = await Promise.all([
      Guest.boot(env.lab, 'alice', { kind: aliceKind, log, bootTimeoutMs: 180_000 }),
      Guest.boot(env.lab, 'bob', { kind: 'strongswan', log }),
    ]);
    log(`guests booted in ${env.alice.bootMs} and ${env.bob.bootMs} ms`);
  });
  after(async () => {
    await env.alice?.stop();
    await env.bob?.stop();
    await env.lab?.destroy();
  });
  return env;
}

/** A state directory for the guest's consec, written on the host. */
function stateDir(): string {
  const dir = freshStateDir('consec-kd-');
  mkdirSync(join(dir, 'certs'), { recursive: true, mode: 0o700 });
  return dir;
}

describe('kernel data plane: consec on a UML guest kernel ↔ strongSwan with kernel ESP', () => {
  const env = twoGuests(hostToHost, 'strongswan');

  for (const [family, mode] of [
    [4, 'transport'],
    [4, 'tunnel'],
    [6, 'transport'],
  ] as const) {
    it(`IPv${family} ${mode} mode: consec picks the kernel by itself; ping and TCP byte for byte; the kernels' SAs match; only IKE and ESP on the wire; counters from the kernel`, async () => {
      const { lab, alice, bob } = env;
      const a = family === 4 ? lab.address('alice') : '2001:db8:1::1';
      const b = family === 4 ? lab.address('bob') : '2001:db8:1::2';
      const dir = stateDir();
      await applyPolicy(dir, { local: a, remote: b, mm: true, tunnel: mode === 'tunnel' });
      const charon = await GuestCharon.start(bob, swan(b, a, mode));
      const cap = await Capture.start(lab, 'bob', 'eth0');
      const consec = await GuestConsec.start(alice, {
        root: ROOT,
        node: process.execPath,
        stateDir: dir,
        args: ['--dpd', '0'],
      });
      try {
        const ready = await consec.waitFor(/"dataplane":"(\w+)"[^\n]*"msg":"ready"/, 120_000);
        assert.equal(ready[1], 'kernel', 'auto chose the kernel');
        await ping(alice, b);
        await transfer(alice, bob, b, 2 * 1024 * 1024);
        await transfer(bob, alice, a, 1024 * 1024);
        const [sa] = await charon.listSas();
        assert.equal(sa?.children[0]?.mode, mode.toUpperCase(), JSON.stringify(sa));
        const ours = await alice.xfrmStates();
        const theirs = await bob.xfrmStates();
        const out = ours.find((s) => s.src === a && s.dst === b && s.proto === 'esp');
        const inbound = ours.find((s) => s.src === b && s.dst === a && s.proto === 'esp');
        assert.ok(out && inbound, JSON.stringify(ours));
        assert.equal(out.mode, mode);
        assert.equal(out.aead, 'rfc4106(gcm(aes))');
        assert.ok(
          theirs.some((s) => s.spi === out.spi && s.dst === b),
          'the peer kernel has our outbound SPI',
        );
        assert.ok(
          theirs.some((s) => s.spi === inbound.spi && s.src === b),
          'and our inbound SPI',
        );
        assert.ok(inbound.bytes > 1024 * 1024 && out.bytes > 2 * 1024 * 1024, `${inbound.bytes} ${out.bytes}`);
        assert.equal(inbound.integrityFailed + inbound.replayErrors, 0);
        // Get-NetIPsecQuickModeSA reads the kernel's counters.
        let last = '';
        await waitUntil(
          async () => {
            const [qm] = await quickModeSas(consec);
            const k = await alice.xfrmStates();
            const o = k.find((s) => s.spi === out.spi);
            const i = k.find((s) => s.spi === inbound.spi);
            last = JSON.stringify({ qm, o: [o?.packets, o?.bytes], i: [i?.packets, i?.bytes] });
            return (
              qm !== undefined &&
              spiHex(qm.OutboundSpi) === out.spi &&
              spiHex(qm.InboundSpi) === inbound.spi &&
              qm.BytesOut === o?.bytes &&
              qm.BytesIn === i?.bytes &&
              qm.PacketsOut === o?.packets
            );
          },
          'Get-NetIPsecQuickModeSA to show the kernel counters',
          60_000,
        ).catch((err: Error) => assert.fail(`${err.message}: ${last}`));
        await cap.stop();
        const ip = family === 4 ? 'ip' : 'ipv6';
        const protocols = new Set(await cap.protocols(ip));
        assert.ok(
          [...protocols].some((p) => p.endsWith(`${ip}:esp`)),
          [...protocols].join(' '),
        );
        for (const p of protocols)
          assert.match(
            p,
            new RegExp(`${ip}:(esp|udp:isakmp|icmpv6)$`),
            `only IKE and ESP: ${[...protocols].join(' ')}`,
          );
      } finally {
        await cap.dispose();
        await consec.signal('TERM');
        await charon.stop();
      }
      // Stopped: its SAs left the kernel, its Require entries stayed.
      assert.deepEqual(
        // (spi 0: the kernel's own placeholder of an acquire for traffic sent since, no SA)
        (await alice.xfrmStates()).filter((s) => s.proto === 'esp' && s.spi !== '00000000'),
        [],
        'no SA outlives the daemon that keyed it',
      );
      assert.match((await alice.exec(['ip', 'xfrm', 'policy'])).stdout, /proto esp reqid 0 mode/);
      await alice.sh('ip xfrm policy flush; ip xfrm state flush; nft delete table inet consec 2>/dev/null; true');
    });
  }

  it("renews child SAs on the kernel's byte lifetime under a running TCP transfer; negotiates again after a foreign SA flush; Require holds while the daemon is killed (-9) and after its SAs are gone", async () => {
    const { lab, alice, bob } = env;
    const a = lab.address('alice');
    const b = lab.address('bob');
    const dir = stateDir();
    await applyPolicy(dir, {
      local: a,
      remote: b,
      mm: true,
      qm: '-Encapsulation ESP -Encryption AESGCM256 -ESPHash AESGMAC256 -MaxKiloBytes 20480',
    });
    const charon = await GuestCharon.start(bob, swan(b, a, 'transport'));
    const consec = await GuestConsec.start(alice, {
      root: ROOT,
      node: process.execPath,
      stateDir: dir,
      args: ['--dpd', '0'],
    });
    let cap: Capture | undefined;
    try {
      await consec.waitFor(/"msg":"ready"/, 120_000);
      await ping(alice, b);
      const first = (await alice.xfrmStates()).find((s) => s.src === a && s.proto === 'esp')?.spi;
      // 48 MB crosses the 20 MB lifetime twice: the kernel's soft expiry makes consec renew.
      await transfer(alice, bob, b, 48 * 1024 * 1024);
      await consec.waitFor(/kernel SA lifetime/, 30_000);
      const now = (await alice.xfrmStates()).filter((s) => s.src === a && s.proto === 'esp').map((s) => s.spi);
      assert.ok(now.length > 0 && !now.includes(first ?? ''), `renewed: ${first} → ${now.join(' ')}`);
      // Someone flushes the kernel's SAs under the running daemon: it hears of it and negotiates again.
      await alice.sh('ip xfrm state flush');
      await consec.waitFor(/kernel SA removed by someone else/, 30_000);
      await ping(alice, b);
      // kill -9: the SAs stay in the kernel (traffic stays encrypted); once they are gone, the
      // required templates drop everything to and from bob — nothing in clear, either way.
      await consec.signal('KILL');
      await alice.sh('ip xfrm state flush');
      await charon.stop(); // bob's SAs and policies go: its pings leave in clear
      cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'ip' });
      const outward = await alice.exec(['ping', '-c', '3', '-i', '0.3', '-W', '1', b], { allowFailure: true });
      const inward = await bob.exec(['ping', '-c', '3', '-i', '0.3', '-W', '1', a], { allowFailure: true });
      await cap.stop();
      assert.match(outward.stdout, / 100% packet loss/);
      assert.match(inward.stdout, / 100% packet loss/, 'cleartext from bob is not answered');
      assert.deepEqual(await cap.fields(['ip.src'], `icmp && ip.src == ${a}`), [], 'nothing of alice in clear');
      // Back up: the new daemon takes its entries, a new SA carries the traffic again.
      const again = await GuestCharon.start(bob, swan(b, a, 'transport'));
      try {
        await consec.launch(['--dpd', '0']);
        await consec.waitFor(/"msg":"ready"/, 120_000);
        await ping(alice, b);
      } finally {
        await consec.signal('TERM');
        await again.stop();
      }
    } finally {
      await cap?.dispose();
      await consec.signal('KILL');
      await charon.stop();
      await alice.sh('ip xfrm policy flush; ip xfrm state flush; nft delete table inet consec 2>/dev/null; true');
    }
  });

  it("consec ↔ consec, both on the kernel: both ends renew by volume under a 64 MB transfer (collisions included); a rekey responder's SA carries traffic once ESP arrives on it; every byte arrives", async () => {
    const { lab, alice, bob } = env;
    const a = lab.address('alice');
    const b = lab.address('bob');
    const qm = '-Encapsulation ESP -Encryption AESGCM256 -ESPHash AESGMAC256 -MaxKiloBytes 20480';
    const here = stateDir();
    const there = stateDir();
    await applyPolicy(here, { local: a, remote: b, mm: true, qm });
    await applyPolicy(there, { local: b, remote: a, mm: true, qm });
    const [ca, cb] = await Promise.all([
      GuestConsec.start(alice, { root: ROOT, node: process.execPath, stateDir: here, args: ['--dpd', '0'] }),
      GuestConsec.start(bob, { root: ROOT, node: process.execPath, stateDir: there, args: ['--dpd', '0'] }),
    ]);
    try {
      await Promise.all([ca.waitFor(/"msg":"ready"/, 120_000), cb.waitFor(/"msg":"ready"/, 120_000)]);
      await ping(alice, b);
      await transfer(alice, bob, b, 64 * 1024 * 1024);
      const renewals = (ca.output() + cb.output()).match(/"msg":"kernel SA lifetime"/g)?.length ?? 0;
      assert.ok(renewals >= 2, `renewed by volume at least twice (${renewals})`);
      await ping(bob, a);
    } finally {
      await ca.signal('TERM');
      await cb.signal('TERM');
      for (const g of [alice, bob]) await g.sh('ip xfrm policy flush; ip xfrm state flush; true');
    }
  });
});

describe("kernel data plane ↔ consec's userspace data plane", () => {
  let lab: Lab;
  let bob: Guest;
  before(async () => {
    lab = await Lab.create(hostToHost());
    bob = await Guest.boot(lab, 'bob', { kind: 'strongswan', log });
  });
  after(async () => {
    await bob?.stop();
    await lab?.destroy();
  });

  it('consec (userspace, lab host) ↔ consec (kernel, guest), transport mode, raw ESP: ping both ways and TCP byte for byte', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const here = stateDir();
    const there = stateDir();
    await applyPolicy(here, { local: a, remote: b, mm: true });
    await applyPolicy(there, { local: b, remote: a, mm: true });
    const guestConsec = await GuestConsec.start(bob, {
      root: ROOT,
      node: process.execPath,
      stateDir: there,
      args: ['--dpd', '0'],
    });
    const daemon = consecDaemon(lab, 'alice', here, a);
    try {
      await guestConsec.waitFor(/"dataplane":"kernel"[^\n]*"msg":"ready"/, 120_000);
      await daemon.waitFor(/"msg":"ready"/, 60_000);
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline)
        if ((await lab.exec('alice', ['ping', '-c', '1', '-W', '1', b], { allowFailure: true })).code === 0) break;
      const r = await lab.exec('alice', ['ping', '-c', '3', '-i', '0.3', '-W', '3', b], { allowFailure: true });
      assert.match(
        r.stdout,
        / 0% packet loss/,
        `${r.stdout}\n${daemon.output().slice(-2000)}\n${guestConsec.output().slice(-2000)}`,
      );
      await ping(bob, a);
      await bob.sh('socat -T 20 TCP6-LISTEN:5001,ipv6only=0,reuseaddr,fork EXEC:cat > /dev/null 2>&1 &');
      await bob.sh('for i in $(seq 1 50); do ss -Hltn | grep -q :5001 && exit 0; sleep 0.1; done; exit 1');
      const client = fixture(lab, 'alice', 'tcp-transfer', ['client', b, 5001, 2 * 1024 * 1024]);
      await client.exited;
      const [done] = events<{ sent: string; received: string; bytes: number }>(client, 'done');
      assert.ok(done, client.output());
      assert.equal(done.received, done.sent, 'every byte came back unchanged');
      const states = await bob.xfrmStates();
      assert.ok(
        states.some((s) => s.src === b && s.dst === a && s.proto === 'esp' && s.mode === 'transport' && !s.encap),
        JSON.stringify(states),
      );
    } finally {
      await daemon.stop('SIGTERM', 5000);
      await guestConsec.signal('TERM');
    }
  });
});

describe('kernel data plane behind a NAT: ESP in UDP through the kernel (RFC 3948)', () => {
  const env = twoGuests(behindNat, 'strongswan');

  it('consec (kernel, behind a masquerading router) ↔ strongSwan (kernel): floats to 4500, the kernels carry ESP-in-UDP both ways (the transfer’s acknowledgements come back in it), TCP byte for byte', async () => {
    const { lab, alice, bob } = env;
    const a = lab.address('alice');
    const b = lab.address('bob');
    const dir = stateDir();
    await applyPolicy(dir, { local: a, remote: b, mm: true });
    const config = swan(b, '%any', 'transport');
    const conn = config.connections.c as NonNullable<(typeof config.connections)['c']>;
    conn.remote = { auth: 'psk', id: a };
    config.psks = [{ ids: [b, a], secret: PSK }];
    const charon = await GuestCharon.start(bob, config);
    const cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'ip' });
    const consec = await GuestConsec.start(alice, {
      root: ROOT,
      node: process.execPath,
      stateDir: dir,
      args: ['--dpd', '0'],
    });
    try {
      await consec.waitFor(/"dataplane":"kernel"[^\n]*"msg":"ready"/, 120_000);
      await ping(alice, b);
      await transfer(alice, bob, b, 1024 * 1024);
      const [sa] = await charon.listSas();
      assert.equal(sa?.remoteHost, lab.address('router', 4, 'eth1'), 'strongSwan sees the router, not alice');
      assert.equal(sa?.children[0]?.encap, true);
      const ours = await alice.xfrmStates();
      const out = ours.find((s) => s.src === a && s.dst === b && s.proto === 'esp');
      const inbound = ours.find((s) => s.src === b && s.dst === a && s.proto === 'esp');
      assert.equal(out?.encap?.type, 'espinudp', JSON.stringify(ours));
      assert.equal(out?.encap?.dport, 4500);
      assert.equal(inbound?.encap?.type, 'espinudp');
      assert.ok((out?.bytes ?? 0) > 1024 * 1024 && (inbound?.packets ?? 0) > 0, JSON.stringify(ours));
      await cap.stop();
      const protocols = new Set(await cap.protocols('ip'));
      assert.ok(
        [...protocols].some((p) => p.endsWith('udpencap:esp')),
        [...protocols].join(' '),
      );
      for (const p of protocols)
        assert.match(p, /udp:(isakmp|udpencap)/, `only IKE and ESP-in-UDP: ${[...protocols].join(' ')}`);
    } finally {
      await cap.dispose();
      await consec.signal('TERM');
      await charon.stop();
    }
  });
});

describe('consec as a systemd service: a guest that boots systemd, kernel data plane, Require from the first packet', () => {
  const env = twoGuests(hostToHost, 'systemd');

  it('`consec service install --now`, then a reboot: the unit is up before the network (network-pre.target), the first packets at boot cross as ESP only, nothing in clear', async () => {
    const { lab, alice, bob } = env;
    const a = lab.address('alice');
    const b = lab.address('bob');
    const dir = stateDir();
    await applyPolicy(dir, { local: a, remote: b, mm: true });
    const charon = await GuestCharon.start(bob, swan(b, a, 'transport'));
    const consec = await GuestConsec.prepare(alice, {
      root: ROOT,
      node: process.execPath,
      stateDir: dir,
      persist: true,
    });
    let cap: Capture | undefined;
    try {
      const installed = await consec.cli(['service', 'install', '--now']);
      assert.equal(installed.code, 0, installed.stdout);
      const status = await consec.cli(['service', 'status']);
      assert.match(status.stdout, /active/, status.stdout);
      // At every boot, right when the network is up: traffic to bob (a Require peer).
      alice.appendBoot([`(for i in 1 2 3 4 5; do ping -c 1 -W 1 ${b}; done) > /dev/null 2>&1 &`]);
      cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'ip' });
      await alice.reboot();
      log(`rebooted in ${alice.bootMs} ms`);
      await ping(alice, b);
      await cap.stop();
      const order = await alice.sh(
        'systemctl show -p ActiveEnterTimestampMonotonic --value consec.service network-pre.target; systemctl show -p ExecMainStartTimestampMonotonic --value consec-lab.service',
      );
      const [consecUp, networkPre, labStart] = order.stdout
        .split('\n')
        .filter((l) => l.trim() !== '') // (systemctl show separates units with an empty line)
        .map(Number) as [number, number, number];
      if (!(consecUp > 0))
        log(
          (
            await alice.sh('systemctl status consec --no-pager; journalctl -b --no-pager | tail -80', {
              allowFailure: true,
            })
          ).stdout,
        );
      assert.ok(
        consecUp > 0 && consecUp <= networkPre && networkPre <= labStart,
        `consec ${consecUp}, network-pre ${networkPre}, network set-up ${labStart}`,
      );
      const journal = await alice.sh('journalctl -b -u consec.service -o cat');
      assert.match(journal.stdout, /"dataplane":"kernel"[^\n]*"msg":"ready"/, journal.stdout.slice(-3000));
      assert.deepEqual(
        await cap.fields(['ip.src'], `icmp && ip.src == ${a}`),
        [],
        'nothing of alice in clear, from the first packet',
      );
      const protocols = new Set(await cap.protocols('ip'));
      assert.ok(
        [...protocols].some((p) => p.endsWith('ip:esp')),
        [...protocols].join(' '),
      );
    } finally {
      await cap?.dispose();
      await consec.cli(['service', 'uninstall']);
      await charon.stop();
    }
  });
});
