/**
 * consec against peers with a real Linux IPsec stack: strongSwan (kernel-netlink) and libreswan in
 * User-Mode Linux guests, each standing in for a lab host. This is Windows' most common
 * configuration — transport mode, host to host, raw ESP (protocol 50) — which strongSwan's userspace
 * data plane cannot do. Every test checks the guest kernel's own XFRM states (SPIs, algorithms, byte
 * counters), not only consec's view, and the wire with tshark.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Capture } from '../src/lab/capture.ts';
import { charonHostToHost, GuestCharon, GuestPluto } from '../src/lab/guest-peers.ts';
import { Lab, type LabProcess } from '../src/lab/lab.ts';
import { LabPki } from '../src/lab/pki.ts';
import type { CharonConfig } from '../src/lab/strongswan.ts';
import { behindNat, hostToHost, type TopologySpec } from '../src/lab/topology.ts';
import { Guest, type GuestKind, type XfrmState } from '../src/lab/uml.ts';
import {
  applyPolicy,
  consecDaemon,
  installMachineCert,
  consecPwsh,
  DATAPLANE_PSK as PSK,
  events,
  fixture,
  waitUntil,
} from './helpers.ts';
import { freshStateDir } from './pwsh-helpers.ts';

const log = (msg: string): void => console.log(`# ${msg}`);

/** A strongSwan transport-mode connection between two host addresses, PSK by address. */
const swanTransport = (local: string, remote: string, esp: string, extra: { encap?: boolean } = {}): CharonConfig =>
  charonHostToHost(local, remote, { psk: PSK, esp, encap: extra.encap });

interface QmView {
  OutboundSpi: string;
  InboundSpi: string;
  PacketsOut: number;
  PacketsIn: number;
  BytesOut: number;
  BytesIn: number;
}

async function quickModeSas(dir: string): Promise<QmView[]> {
  const view = await consecPwsh(dir, 'Get-NetIPsecQuickModeSA | ConvertTo-Json');
  const parsed = JSON.parse(view.stdout || '[]') as QmView | QmView[];
  return Array.isArray(parsed) ? parsed : [parsed];
}

const spiHex = (s: string): string => s.replace(/^0x/, '').toLowerCase().padStart(8, '0');

/** The guest's ESP states towards and from `peer`, checked to be transport mode, raw ESP. */
function espPair(states: XfrmState[], guestAddr: string, peer: string): { out: XfrmState; in: XfrmState } {
  const out = states.find((s) => s.src === guestAddr && s.dst === peer && s.proto === 'esp');
  const inbound = states.find((s) => s.src === peer && s.dst === guestAddr && s.proto === 'esp');
  assert.ok(out && inbound, `the guest kernel holds an ESP SA each way: ${JSON.stringify(states)}`);
  return { out, in: inbound };
}

/** ping + a TCP transfer echoed by socat in the guest, bytes compared end to end. */
async function pingAndTransfer(lab: Lab, guest: Guest, from: string, to: string, bytes: number, daemon: LabProcess) {
  // The first packet starts IKE; a guest daemon under UML may take seconds to answer (slow generic
  // crypto), so wait for the SA with single pings first, then require a clean run.
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const first = await lab.exec(from, ['ping', '-c', '1', '-W', '1', to], { allowFailure: true });
    if (first.code === 0) break;
  }
  const ping = await lab.exec(from, ['ping', '-c', '4', '-i', '0.2', '-W', '3', to], { allowFailure: true });
  assert.match(ping.stdout, / 0% packet loss/, `${ping.stdout}\n${daemon.output().slice(-3000)}`);
  await guest.sh(`socat -T 20 TCP6-LISTEN:5001,ipv6only=0,reuseaddr,fork EXEC:cat > /dev/null 2>&1 &`);
  await guest.sh('for i in $(seq 1 50); do ss -Hltn | grep -q :5001 && exit 0; sleep 0.1; done; exit 1');
  const client = fixture(lab, from, 'tcp-transfer', ['client', to, 5001, bytes]);
  await client.exited;
  await guest.sh('pkill -x socat', { allowFailure: true });
  const [done] = events<{ sent: string; received: string; bytes: number }>(client, 'done');
  assert.ok(done, client.output());
  assert.equal(done.bytes, bytes);
  assert.equal(done.received, done.sent, 'every byte came back unchanged');
}

/**
 * A lab of `topology` whose host bob is a UML guest of `kind`, built before the suite's tests and
 * torn down after them (also when they fail).
 */
function guestLab(kind: GuestKind, topology: () => TopologySpec): { lab: Lab; guest: Guest } {
  const env = {} as { lab: Lab; guest: Guest };
  before(async () => {
    env.lab = await Lab.create(topology());
    env.guest = await Guest.boot(env.lab, 'bob', { kind, log });
    const image = env.guest.image.built ? `built in ${env.guest.image.ms} ms` : 'cached';
    log(`${kind} guest booted in ${env.guest.bootMs} ms (image ${image})`);
  });
  after(async () => {
    await env.guest?.stop();
    await env.lab?.destroy();
  });
  return env;
}

describe('kernel-ESP peer: strongSwan (kernel-netlink) in a UML guest, transport mode, raw ESP', () => {
  const env = guestLab('strongswan', hostToHost);

  for (const [name, qm, esp, aead, enc] of [
    [
      'AES-GCM-256',
      '-Encapsulation ESP -Encryption AESGCM256 -ESPHash AESGMAC256',
      'aes256gcm16',
      'rfc4106(gcm(aes))',
      undefined,
    ],
    [
      'AES-CBC-256 + HMAC-SHA-256',
      '-Encapsulation ESP -Encryption AES256 -ESPHash SHA256',
      'aes256-sha256',
      undefined,
      'cbc(aes)',
    ],
  ] as const) {
    it(`${name}, consec initiates: ping and 2 MB TCP byte for byte; the guest kernel's SAs match consec's; only IKE and ESP on the wire`, async () => {
      const { lab, guest } = env;
      const a = lab.address('alice');
      const b = lab.address('bob');
      const dir = freshStateDir('consec-kp-');
      await applyPolicy(dir, { local: a, remote: b, mm: true, qm });
      const swan = await GuestCharon.start(guest, swanTransport(b, a, esp));
      const cap = await Capture.start(lab, 'alice', 'eth0');
      const daemon = consecDaemon(lab, 'alice', dir, a);
      try {
        await daemon.waitFor(/"msg":"ready"/);
        await pingAndTransfer(lab, guest, 'alice', b, 2 * 1024 * 1024, daemon);
        const [sa] = await swan.listSas();
        assert.equal(sa?.children[0]?.mode, 'TRANSPORT', JSON.stringify(sa));
        assert.equal(sa?.children[0]?.encap, false);
        const states = await guest.xfrmStates();
        const pair = espPair(states, b, a);
        assert.equal(pair.out.mode, 'transport');
        assert.equal(pair.out.encap, undefined, 'raw ESP, no UDP encapsulation');
        if (aead) assert.equal(pair.in.aead, aead);
        if (enc) {
          assert.equal(pair.in.enc, enc);
          assert.equal(pair.in.auth, 'hmac(sha256)');
          assert.equal(pair.in.icvBits, 128);
        }
        // The kernel decrypted and authenticated what consec sent (its inbound counters), and no
        // packet failed integrity or replay checks.
        assert.ok(pair.in.bytes > 2 * 1024 * 1024, `guest inbound bytes ${pair.in.bytes}`);
        assert.equal(pair.in.integrityFailed, 0);
        assert.equal(pair.in.replayErrors, 0);
        const [qm0] = await quickModeSas(dir);
        assert.ok(qm0, 'consec lists the quick mode SA');
        assert.equal(spiHex(qm0.OutboundSpi), pair.in.spi, 'our outbound SPI is the guest inbound SA');
        assert.equal(spiHex(qm0.InboundSpi), pair.out.spi, 'our inbound SPI is the guest outbound SA');
        // Both ends count the same packets and octets (what ESP protects, as the kernel counts it),
        // each direction, once the transfer's last segments have crossed.
        let last = '';
        await waitUntil(async () => {
          const g = espPair(await guest.xfrmStates(), b, a);
          const [qm] = await quickModeSas(dir);
          const ours = [qm?.PacketsOut, qm?.BytesOut, qm?.PacketsIn, qm?.BytesIn];
          const theirs = [g.in.packets, g.in.bytes, g.out.packets, g.out.bytes];
          last = `consec out/in ${ours.join(' ')} vs kernel ${theirs.join(' ')}`;
          return ours.every((v, i) => v === theirs[i]);
        }, 'consec and the guest kernel to agree on packets and octets').catch((err: Error) =>
          assert.fail(`${err.message}: ${last}`),
        );
        await cap.stop();
        const protocols = new Set(await cap.protocols('ip'));
        assert.ok(
          [...protocols].some((p) => p.endsWith('ip:esp')),
          [...protocols].join(' '),
        );
        for (const p of protocols)
          assert.match(p, /ip:(esp|udp:isakmp)$/, `only IKE and raw ESP: ${[...protocols].join(' ')}`);
      } finally {
        await cap.dispose();
        await daemon.stop('SIGTERM', 5000);
        await swan.stop();
      }
    });
  }
});

describe('kernel peer without any IPsec policy: Require vs Request', () => {
  const env = guestLab('strongswan', hostToHost);

  for (const security of ['Require', 'Request'] as const) {
    it(`${security}: ${security === 'Require' ? 'nothing reaches the guest in clear and its pings are dropped' : 'traffic falls back to clear while IKE is refused'}`, async () => {
      const { lab, guest } = env;
      const a = lab.address('alice');
      const b = lab.address('bob');
      const dir = freshStateDir('consec-kpr-');
      await applyPolicy(dir, { local: a, remote: b, mm: true, security });
      const cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'ip' });
      const daemon = consecDaemon(lab, 'alice', dir, a);
      try {
        await daemon.waitFor(/"msg":"ready"/);
        const out = await lab.exec('alice', ['ping', '-c', '4', '-i', '0.5', '-W', '1', b], { allowFailure: true });
        // The guest pings us too: Require drops its cleartext at our door.
        const back = await guest.exec(['ping', '-c', '2', '-i', '0.3', '-W', '1', a], { allowFailure: true });
        await cap.stop();
        // Echo requests and replies only: ip.src also matches the header quoted inside the guest's
        // "port unreachable" answers to our IKE packets.
        const icmpFromAlice = (await cap.fields(['ip.src'], `(icmp.type == 0 || icmp.type == 8) && ip.src == ${a}`))
          .length;
        const ike = (await cap.fields(['ip.src'], 'udp.port == 500')).length;
        assert.ok(ike > 0, 'IKE was tried');
        assert.deepEqual(await guest.xfrmStates(), [], 'the guest has no SA');
        if (security === 'Require') {
          assert.match(out.stdout, / 100% packet loss/);
          assert.equal(icmpFromAlice, 0, 'no cleartext ICMP from alice on the wire');
          assert.match(back.stdout, / 100% packet loss/, 'cleartext from the guest is not answered');
        } else {
          assert.match(out.stdout, / 0% packet loss/, `${out.stdout}${daemon.output().slice(-2000)}`);
          assert.ok(icmpFromAlice >= 4, 'the pings went in clear');
          assert.match(back.stdout, / 0% packet loss/);
        }
      } finally {
        await cap.dispose();
        await daemon.stop('SIGTERM', 5000);
      }
    });
  }
});

describe('kernel-ESP peer: IPv6 transport mode', () => {
  const env = guestLab('strongswan', hostToHost);

  it('consec ↔ strongSwan over IPv6, raw ESP AES-GCM-256: ping6 and TCP byte for byte; the guest kernel decrypts', async () => {
    const { lab, guest } = env;
    const a = lab.address('alice', 6);
    const b = lab.address('bob', 6);
    const dir = freshStateDir('consec-kp6-');
    await applyPolicy(dir, { local: a, remote: b, mm: true });
    const swan = await GuestCharon.start(guest, swanTransport(b, a, 'aes256gcm16'));
    const cap = await Capture.start(lab, 'alice', 'eth0', { filter: 'ip6' });
    const daemon = consecDaemon(lab, 'alice', dir, a);
    try {
      await daemon.waitFor(/"msg":"ready"/);
      await pingAndTransfer(lab, guest, 'alice', b, 1024 * 1024, daemon);
      const pair = espPair(await guest.xfrmStates(), b, a);
      assert.equal(pair.in.mode, 'transport');
      assert.equal(pair.in.aead, 'rfc4106(gcm(aes))');
      assert.ok(pair.in.bytes > 1024 * 1024, `guest inbound bytes ${pair.in.bytes}`);
      const [qm0] = await quickModeSas(dir);
      assert.equal(spiHex(qm0?.OutboundSpi ?? ''), pair.in.spi);
      await cap.stop();
      // Neighbour discovery stays in clear (ICMPv6, exempt by default); everything else is IKE or ESP.
      const protocols = new Set(await cap.protocols('ipv6 && !icmpv6'));
      assert.ok(
        [...protocols].some((p) => p.endsWith('ipv6:esp')),
        [...protocols].join(' '),
      );
      for (const p of protocols)
        assert.match(p, /ipv6:(esp|udp:isakmp)$/, `only IKE and raw ESP: ${[...protocols].join(' ')}`);
    } finally {
      await cap.dispose();
      await daemon.stop('SIGTERM', 5000);
      await swan.stop();
    }
  });
});

describe('kernel-ESP peer behind the lab NAT router: transport mode in ESP-in-UDP', () => {
  const env = guestLab('strongswan', behindNat);

  for (const version of [2, 1] as const) {
    it(`consec behind a masquerading router ↔ strongSwan (kernel)${version === 1 ? ', IKEv1 only (consec falls back from IKEv2)' : ''}: floats to 4500, transport mode ESP-in-UDP, ping and TCP byte for byte`, async () => {
      const { lab, guest } = env;
      const a = lab.address('alice');
      const b = lab.address('bob');
      const dir = freshStateDir('consec-kpn-');
      await applyPolicy(dir, { local: a, remote: b, mm: true });
      const config = swanTransport(b, '%any', 'aes256gcm16');
      const conn = config.connections.c as NonNullable<(typeof config.connections)['c']>;
      conn.version = version;
      conn.remote = { auth: 'psk', id: a };
      config.psks = [{ ids: [b, a], secret: PSK }];
      const swan = await GuestCharon.start(guest, config);
      const cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'ip' });
      const daemon = consecDaemon(lab, 'alice', dir, a);
      try {
        await daemon.waitFor(/"msg":"ready"/);
        await pingAndTransfer(lab, guest, 'alice', b, 1024 * 1024, daemon).catch(async (err: unknown) => {
          console.log((await swan.log()).slice(-6000));
          throw err;
        });
        const [sa] = await swan.listSas();
        assert.equal(sa?.version, version);
        assert.equal(sa?.remoteHost, lab.address('router', 4, 'eth1'), 'strongSwan sees the router, not alice');
        assert.equal(sa?.children[0]?.mode, 'TRANSPORT');
        assert.equal(sa?.children[0]?.encap, true);
        const states = await guest.xfrmStates();
        const inbound = states.find((s) => s.dst === b && s.proto === 'esp');
        assert.equal(inbound?.encap?.type, 'espinudp', JSON.stringify(states));
        assert.equal(inbound?.mode, 'transport');
        assert.ok((inbound?.bytes ?? 0) > 1024 * 1024);
        await cap.stop();
        const protocols = new Set(await cap.protocols('ip'));
        for (const p of protocols)
          assert.match(p, /udp:(isakmp|udpencap)/, `only IKE and ESP-in-UDP: ${[...protocols].join(' ')}`);
        assert.ok(
          [...protocols].some((p) => p.endsWith('udpencap:esp')),
          [...protocols].join(' '),
        );
      } finally {
        await cap.dispose();
        await daemon.stop('SIGTERM', 5000);
        await swan.stop();
      }
    });
  }
});

describe('kernel-ESP peer: strongSwan initiates to consec, certificates', () => {
  const env = guestLab('strongswan', hostToHost);

  for (const version of [2, 1] as const)
    it(`ECDSA P-384 certificates, AES-CBC-256 + HMAC-SHA-256${version === 1 ? ', IKEv1 Main Mode (RFC 4754 signatures)' : ''}: the guest initiates, consec responds; traffic both ways`, async () => {
      const { lab, guest } = env;
      const a = lab.address('alice');
      const b = lab.address('bob');
      const dir = freshStateDir('consec-kpc-');
      const pki = LabPki.create();
      const aliceCert = pki.issue('alice', a);
      const bobCert = pki.issue('bob', b);
      installMachineCert(dir, 'alice', aliceCert, pki.ca.certPem);
      await applyPolicy(dir, {
        local: a,
        remote: b,
        mm: true,
        qm: '-Encapsulation ESP -Encryption AES256 -ESPHash SHA256',
        auth: '-Cert -Authority "O=consec lab, CN=consec lab root CA" -AuthorityType Root',
      });
      const daemon = consecDaemon(lab, 'alice', dir, a);
      const swan = await GuestCharon.start(guest, {
        connections: {
          c: {
            version,
            local_addrs: [b],
            remote_addrs: [a],
            proposals: ['aes256-sha256-ecp256'],
            encap: false,
            local: { auth: 'pubkey', certs: ['self.crt'] },
            remote: { auth: 'pubkey', cacerts: ['ca.crt'] },
            children: {
              c: { local_ts: ['dynamic'], remote_ts: ['dynamic'], esp_proposals: ['aes256-sha256'], mode: 'transport' },
            },
          },
        },
        files: {
          x509: { 'self.crt': bobCert.certPem },
          x509ca: { 'ca.crt': pki.ca.certPem },
          private: { 'self.key': bobCert.keyPem },
        },
      });
      try {
        await daemon.waitFor(/"msg":"ready"/);
        await swan.initiate('c');
        const [sa] = await swan.listSas();
        assert.equal(sa?.state, 'ESTABLISHED');
        assert.equal(sa?.initiator, true);
        assert.equal(sa?.children[0]?.mode, 'TRANSPORT');
        assert.equal(sa?.version, version);
        assert.match(
          await swan.log(),
          version === 2
            ? /authentication of 'O=consec lab, CN=alice' with ECDSA_WITH_SHA384_DER successful/
            : /authentication of 'O=consec lab, CN=alice' with ECDSA.* successful/,
        );
        // Traffic the guest starts and traffic consec starts both use the SA the guest negotiated.
        const fromGuest = await guest.exec(['ping', '-c', '3', '-i', '0.2', '-W', '3', a], { allowFailure: true });
        assert.match(fromGuest.stdout, / 0% packet loss/, `${fromGuest.stdout}\n${daemon.output().slice(-3000)}`);
        await pingAndTransfer(lab, guest, 'alice', b, 1024 * 1024, daemon);
        const pair = espPair(await guest.xfrmStates(), b, a);
        assert.equal(pair.in.enc, 'cbc(aes)');
        assert.ok(pair.in.bytes > 1024 * 1024);
        const [qm0] = await quickModeSas(dir);
        assert.equal(spiHex(qm0?.OutboundSpi ?? ''), pair.in.spi);
        assert.equal((await quickModeSas(dir)).length, 1, 'one SA pair, no second negotiation from our side');
      } finally {
        await daemon.stop('SIGTERM', 5000);
        await swan.stop();
      }
    });
});

describe('kernel-ESP peer: libreswan (pluto, kernel XFRM) in a UML guest, transport mode, raw ESP', () => {
  const env = guestLab('libreswan', hostToHost);

  for (const initiator of ['consec', 'libreswan'] as const) {
    it(`PSK, AES-GCM-256, ${initiator} initiates: ping and TCP byte for byte; SPIs equal on both sides`, async () => {
      const { lab, guest } = env;
      const a = lab.address('alice');
      const b = lab.address('bob');
      const dir = freshStateDir('consec-kpl-');
      await applyPolicy(dir, { local: a, remote: b, mm: true });
      const pluto = await GuestPluto.start(guest, {
        conns: {
          c: {
            type: 'transport',
            left: b,
            right: a,
            authby: 'secret',
            ike: 'aes256-sha2_256;dh19',
            esp: 'aes_gcm256',
            auto: 'add',
          },
        },
        psks: [{ ids: [b, a], secret: PSK }],
      });
      const daemon = consecDaemon(lab, 'alice', dir, a);
      const cap = await Capture.start(lab, 'alice', 'eth0');
      try {
        await daemon.waitFor(/"msg":"ready"/);
        if (initiator === 'libreswan') await pluto.up('c');
        await pingAndTransfer(lab, guest, 'alice', b, 1024 * 1024, daemon);
        assert.match(await pluto.trafficStatus(), /type=ESP/);
        const pair = espPair(await guest.xfrmStates(), b, a);
        assert.equal(pair.in.aead, 'rfc4106(gcm(aes))');
        assert.equal(pair.in.mode, 'transport');
        assert.ok(pair.in.bytes > 1024 * 1024);
        const [qm0] = await quickModeSas(dir);
        assert.equal(spiHex(qm0?.OutboundSpi ?? ''), pair.in.spi);
        assert.equal(spiHex(qm0?.InboundSpi ?? ''), pair.out.spi);
        await cap.stop();
        const protocols = new Set(await cap.protocols('ip'));
        for (const p of protocols)
          assert.match(p, /ip:(esp|udp:isakmp)$/, `only IKE and raw ESP: ${[...protocols].join(' ')}`);
      } finally {
        await cap.dispose();
        await daemon.stop('SIGTERM', 5000);
        await pluto.stop();
      }
    });
  }
});

describe('kernel-ESP peer: libreswan speaking IKEv1 (Main Mode + Quick Mode), transport mode, raw ESP', () => {
  const env = guestLab('libreswan', hostToHost);

  // Windows' quick mode sets have no PFS unless asked; libreswan's conns have it unless told not to.
  for (const [initiator, keyModule, esp, qm, pfs] of [
    ['consec', 'IKEv1', 'aes_gcm256', undefined, undefined],
    ['libreswan', 'Default', 'aes256-sha2_256', '-Encapsulation ESP -Encryption AES256 -ESPHash SHA256', 'DH19'],
  ] as const) {
    it(`PSK, ${esp}${pfs ? ` with PFS ${pfs}` : ''}, ${initiator} initiates (consec rule KeyModule ${keyModule}): ping and TCP byte for byte; the guest kernel's SPIs are consec's; IKEv1 and raw ESP on the wire`, async () => {
      const { lab, guest } = env;
      const a = lab.address('alice');
      const b = lab.address('bob');
      const dir = freshStateDir('consec-kpl1-');
      await applyPolicy(dir, {
        local: a,
        remote: b,
        mm: true,
        keyModule,
        ...(qm ? { qm } : {}),
        ...(pfs ? { pfs } : {}),
      });
      const pluto = await GuestPluto.start(guest, {
        conns: {
          c: {
            type: 'transport',
            left: b,
            right: a,
            authby: 'secret',
            ikev2: false,
            ike: 'aes256-sha2_256;dh19',
            esp,
            pfs: pfs ? 'yes' : 'no',
            auto: 'add',
          },
        },
        psks: [{ ids: [b, a], secret: PSK }],
      });
      const daemon = consecDaemon(lab, 'alice', dir, a);
      const cap = await Capture.start(lab, 'alice', 'eth0');
      try {
        await daemon.waitFor(/"msg":"ready"/);
        const withPlutoLog = async (err: unknown) => {
          throw new Error(`${(err as Error).message}\n--- pluto ---\n${(await pluto.log()).slice(-6000)}`);
        };
        if (initiator === 'libreswan') await pluto.up('c').catch(withPlutoLog);
        await pingAndTransfer(lab, guest, 'alice', b, 1024 * 1024, daemon).catch(withPlutoLog);
        assert.match(await pluto.trafficStatus(), /type=ESP/);
        assert.match(await pluto.log(), /ISAKMP SA established|IPsec SA established transport mode/);
        const pair = espPair(await guest.xfrmStates(), b, a);
        assert.equal(pair.in.mode, 'transport');
        assert.equal(pair.out.encap, undefined, 'raw ESP');
        if (esp === 'aes_gcm256') assert.equal(pair.in.aead, 'rfc4106(gcm(aes))');
        else assert.equal(pair.in.enc, 'cbc(aes)');
        assert.ok(pair.in.bytes > 1024 * 1024);
        assert.equal(pair.in.integrityFailed, 0);
        const [qm0] = await quickModeSas(dir);
        assert.equal(spiHex(qm0?.OutboundSpi ?? ''), pair.in.spi);
        assert.equal(spiHex(qm0?.InboundSpi ?? ''), pair.out.spi);
        const mm = JSON.parse((await consecPwsh(dir, 'Get-NetIPsecMainModeSA | ConvertTo-Json')).stdout) as {
          KeyModule: string;
        };
        assert.equal(mm.KeyModule, 'IkeV1');
        await cap.stop();
        const protocols = new Set(await cap.protocols('ip'));
        for (const p of protocols)
          assert.match(p, /ip:(esp|udp:isakmp)$/, `only IKE and raw ESP: ${[...protocols].join(' ')}`);
        const versions = (await cap.fields(['isakmp.version'], 'isakmp')).map((r) => r[0]);
        assert.ok(versions.length > 0 && versions.every((v) => v === '0x10'), `ISAKMP 1.0 only: ${versions.join(' ')}`);
      } finally {
        await cap.dispose();
        await daemon.stop('SIGTERM', 5000);
        await pluto.stop();
      }
    });
  }
});

describe('kernel-ESP peer: libreswan speaking IKEv1 with RSA certificates', () => {
  const env = guestLab('libreswan', hostToHost);

  it('RSA certificates from an NSS database, libreswan initiates Main Mode to consec (machine store, Authority rule): ping and TCP byte for byte', async () => {
    const { lab, guest } = env;
    const a = lab.address('alice');
    const b = lab.address('bob');
    const dir = freshStateDir('consec-kplc-');
    const pki = LabPki.create();
    const aliceCert = pki.issue('alice', a, { spec: 'RSA-2048' });
    const bobCert = pki.issue('bob', b, { spec: 'RSA-2048' });
    installMachineCert(dir, 'alice', aliceCert, pki.ca.certPem);
    await applyPolicy(dir, {
      local: a,
      remote: b,
      mm: true,
      auth: '-Cert -Authority "O=consec lab, CN=consec lab root CA" -AuthorityType Root',
    });
    const pluto = await GuestPluto.start(guest, {
      conns: {
        c: {
          type: 'transport',
          left: b,
          right: a,
          authby: 'rsasig',
          ikev2: false,
          leftcert: 'bob',
          leftid: '%fromcert',
          rightid: '%fromcert',
          ike: 'aes256-sha2_256;dh19',
          esp: 'aes_gcm256',
          pfs: 'no',
          auto: 'add',
        },
      },
      pkcs12: { base64: pki.pkcs12(bobCert, 'bob', 'lab-only'), password: 'lab-only' },
      caPem: pki.ca.certPem,
    });
    const daemon = consecDaemon(lab, 'alice', dir, a);
    try {
      await daemon.waitFor(/"msg":"ready"/);
      await pluto.up('c').catch(async (err: Error) => {
        throw new Error(
          `${err.message}\n--- pluto ---\n${(await pluto.log()).slice(-6000)}\n--- consec ---\n${daemon.output().slice(-3000)}`,
        );
      });
      await pingAndTransfer(lab, guest, 'alice', b, 1024 * 1024, daemon);
      const pair = espPair(await guest.xfrmStates(), b, a);
      assert.equal(pair.in.aead, 'rfc4106(gcm(aes))');
      assert.ok(pair.in.bytes > 1024 * 1024);
      const mm = JSON.parse((await consecPwsh(dir, 'Get-NetIPsecMainModeSA | ConvertTo-Json')).stdout) as {
        KeyModule: string;
      };
      assert.equal(mm.KeyModule, 'IkeV1');
      assert.match(await pluto.trafficStatus(), /type=ESP/);
      // consec verified pluto's RSA signature and certificate (4651 names it); pluto verified ours (SA up).
      assert.match(daemon.output(), /"id":4651[^\n]*"subject":"O=consec lab, CN=bob"/);
    } finally {
      await daemon.stop('SIGTERM', 5000);
      await pluto.stop();
    }
  });
});

describe('kernel-ESP peer: manual SAs (no IKE) against the guest kernel — the wire format alone', () => {
  const env = guestLab('strongswan', hostToHost);

  // [name, consec's YAML fields, the kernel's algorithm arguments, key octets, integrity key octets]
  const suites = [
    [
      'ESP AES-GCM-256',
      'encapsulation: esp\n    cipher: aes-gcm-256',
      (k: string) => `aead 'rfc4106(gcm(aes))' 0x${k} 128`,
      36,
      0,
      'esp',
      4,
    ],
    [
      'ESP AES-CBC-256 + HMAC-SHA-256',
      'encapsulation: esp\n    cipher: aes-cbc-256\n    integrity: sha256',
      (k: string, i: string) => `enc 'cbc(aes)' 0x${k} auth-trunc 'hmac(sha256)' 0x${i} 128`,
      32,
      32,
      'esp',
      4,
    ],
    [
      'ESP NULL + HMAC-SHA-512 (integrity only)',
      'encapsulation: esp\n    cipher: null\n    integrity: sha512',
      (_k: string, i: string) => `enc 'ecb(cipher_null)' '' auth-trunc 'hmac(sha512)' 0x${i} 256`,
      0,
      64,
      'esp',
      4,
    ],
    [
      'AH HMAC-SHA-256',
      'encapsulation: ah\n    integrity: sha256',
      (_k: string, i: string) => `auth-trunc 'hmac(sha256)' 0x${i} 128`,
      0,
      32,
      'ah',
      4,
    ],
    [
      'AH HMAC-SHA-256 over IPv6',
      'encapsulation: ah\n    integrity: sha256',
      (_k: string, i: string) => `auth-trunc 'hmac(sha256)' 0x${i} 128`,
      0,
      32,
      'ah',
      6,
    ],
  ] as const;

  for (const [name, yaml, kernelAlg, keyLen, integLen, proto, family = 4] of suites) {
    it(`${name}, transport mode: ping and TCP byte for byte with keys given on both sides; the kernel counts and verifies our packets`, async () => {
      const { lab, guest } = env;
      const a = lab.address('alice', family);
      const b = lab.address('bob', family);
      const host = family === 4 ? 32 : 128;
      const hex = (n: number) => randomBytes(n).toString('hex');
      const keyAB = { k: hex(keyLen), i: hex(integLen) };
      const keyBA = { k: hex(keyLen), i: hex(integLen) };
      const spiAB = 0x1000 + randomBytes(2).readUInt16BE();
      const spiBA = 0x20000 + randomBytes(2).readUInt16BE();
      const field = (label: string, v: string) => (v ? `, ${label}: ${v}` : '');
      const dir = freshStateDir('consec-kpm-');
      const file = join(dir, 'manual.yaml');
      writeFileSync(
        file,
        [
          'sas:',
          '  - name: to-guest',
          `    local: ${a}`,
          `    remote: ${b}`,
          '    mode: transport',
          `    ${yaml}`,
          `    inbound: { spi: ${spiBA}${field('key', keyBA.k)}${field('integrityKey', keyBA.i)} }`,
          `    outbound: { spi: ${spiAB}${field('key', keyAB.k)}${field('integrityKey', keyAB.i)} }`,
        ].join('\n'),
        { mode: 0o600 },
      );
      // IPv6 neighbour discovery stays in clear on both sides: consec's manual SA protects only what
      // the TUN routes, and the guest kernel gets the usual bypass policies for ND (types 133-137).
      const ndBypass =
        family === 6
          ? [133, 134, 135, 136, 137].flatMap((t) =>
              ['in', 'out'].map((d) => `ip xfrm policy add src ::/0 dst ::/0 proto 58 type ${t} dir ${d} priority 1`),
            )
          : [];
      await guest.sh(
        [
          'ip xfrm state flush; ip xfrm policy flush',
          `ip xfrm state add src ${a} dst ${b} proto ${proto} spi ${spiAB} mode transport ${kernelAlg(keyAB.k, keyAB.i)}`,
          `ip xfrm state add src ${b} dst ${a} proto ${proto} spi ${spiBA} mode transport ${kernelAlg(keyBA.k, keyBA.i)}`,
          ...ndBypass,
          `ip xfrm policy add src ${a}/${host} dst ${b}/${host} dir in priority 100 tmpl src ${a} dst ${b} proto ${proto} mode transport`,
          `ip xfrm policy add src ${b}/${host} dst ${a}/${host} dir out priority 100 tmpl src ${b} dst ${a} proto ${proto} mode transport`,
        ].join(' && '),
      );
      const ipName = family === 4 ? 'ip' : 'ipv6';
      const cap = await Capture.start(lab, 'alice', 'eth0', { filter: family === 4 ? 'ip' : 'ip6' });
      const daemon = consecDaemon(lab, 'alice', freshStateDir('consec-kpm-state-'), a, ['--manual-sas', file]);
      try {
        await daemon.waitFor(/"msg":"ready"/);
        await pingAndTransfer(lab, guest, 'alice', b, 512 * 1024, daemon);
        const states = await guest.xfrmStates();
        const inbound = states.find((s) => s.src === a && s.proto === proto);
        const outbound = states.find((s) => s.src === b && s.proto === proto);
        assert.ok(inbound && outbound, JSON.stringify(states));
        assert.ok(inbound.bytes > 512 * 1024, `the kernel accepted our ${proto.toUpperCase()}: ${inbound.bytes} bytes`);
        assert.equal(inbound.integrityFailed, 0, 'no integrity failure at the kernel');
        assert.equal(inbound.replayErrors, 0);
        await cap.stop();
        // Neighbour discovery aside, ESP hides the payload; AH leaves it readable but every packet
        // carries it. Nothing else, no IKE.
        const protocols = new Set(
          await cap.protocols(family === 4 ? 'ip' : 'ipv6 && !(icmpv6.type >= 133 && icmpv6.type <= 137)'),
        );
        assert.ok(protocols.size > 0);
        for (const p of protocols)
          assert.match(
            p,
            proto === 'esp'
              ? new RegExp(`^eth:ethertype:${ipName}:esp$`)
              : new RegExp(`^eth:ethertype:${ipName}:ah:(icmp|icmpv6|tcp)(:|$)`),
            [...protocols].join(' '),
          );
      } finally {
        await cap.dispose();
        await daemon.stop('SIGTERM', 5000);
        await guest.sh('ip xfrm state flush; ip xfrm policy flush', { allowFailure: true });
      }
    });
  }
});
