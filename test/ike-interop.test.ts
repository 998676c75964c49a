import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Capture } from '../src/lab/capture.ts';
import { Lab } from '../src/lab/lab.ts';
import { Charon, type CharonConfig, pskHostTunnel } from '../src/lab/strongswan.ts';
import { behindNat, hostToHost } from '../src/lab/topology.ts';
import { events, fixture, tsharkWithKeys } from './helpers.ts';

const PSK = 'lab-only-psk-0123456789abcdef';

function responder(local: string, remote: string, proposals: string[], esp: string[]): CharonConfig {
  return pskHostTunnel(local, remote, { name: 'consec', secret: PSK, proposals, esp, logLevel: 2 });
}

interface Established {
  spiI: string;
  spiR: string;
  nat: boolean;
  spiIn: string;
  spiOut: string;
  mode: string;
}

describe('IKEv2: strongSwan initiator → consec responder, and consec ↔ consec', () => {
  let lab: Lab;
  before(async () => {
    lab = await Lab.create(hostToHost());
  });
  after(async () => {
    await lab?.destroy();
  });

  it('strongSwan initiates to consec; pings through its tunnel are answered by consec', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const resp = fixture(lab, 'bob', 'ike-respond', [b, a, PSK, 'AES256-SHA256-DH14', 'AESGCM256', 3]);
    await resp.waitFor(/"event":"listening"/);
    // The same helper config, seen from alice: she initiates the connection named "consec".
    const alice = await Charon.start(lab, 'alice', responder(a, b, ['aes256-sha256-modp2048'], ['aes256gcm16']));
    try {
      await alice.initiate('consec');
      const [est] = events<{ spiIn: string; spiOut: string }>(resp, 'established');
      assert.ok(est, resp.output());
      const ping = await lab.exec('alice', ['ping', '-c', '3', '-i', '0.2', '-W', '2', b], { allowFailure: true });
      assert.equal(ping.code, 0, `${ping.stdout}\n${resp.output()}`);
      await resp.exited;
      assert.deepEqual(events(resp, 'echoed'), [{ event: 'echoed', echoes: 3 }]);
      const [sa] = await alice.listSas();
      assert.equal(sa?.state, 'ESTABLISHED');
      assert.equal(sa?.initiator, true);
      const child = sa?.children[0];
      assert.deepEqual([child?.spiIn, child?.spiOut], [est.spiOut, est.spiIn]);
      assert.deepEqual([child?.packetsOut, child?.packetsIn], [3, 3]);
    } finally {
      await alice.stop();
      await resp.stop();
    }
  });

  it('consec initiator ↔ consec responder: IKEv2 and pings through the child SA', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const resp = fixture(lab, 'bob', 'ike-respond', [b, a, PSK, 'AES256-SHA384-DH20', 'AESGCM256', 3]);
    await resp.waitFor(/"event":"listening"/);
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        PSK,
        'AES256-SHA384-DH20',
        'AESGCM256',
        '--ping',
        '--encap',
      ]);
      await init.exited;
      const [ok] = events<Established>(init, 'established');
      const [est] = events<{ spiIn: string; spiOut: string }>(resp, 'established');
      assert.ok(ok && est, `${init.output()}\n${resp.output()}`);
      assert.deepEqual([ok.spiIn, ok.spiOut], [est.spiOut, est.spiIn]);
      assert.deepEqual(events(init, 'esp'), [{ event: 'esp', replies: [1, 2, 3] }]);
      // The forced encapsulation made the responder see a NAT as well (strongSwan's encap=yes).
      assert.match(resp.output(), /"event":"IKE_SA_INIT".*"nat":true/);
    } finally {
      await resp.stop();
    }
  });
});

describe('IKEv2: consec initiator ↔ strongSwan responder', () => {
  let lab: Lab;
  before(async () => {
    lab = await Lab.create(hostToHost());
  });
  after(async () => {
    await lab?.destroy();
  });

  for (const [name, mm, qm, swanIke, swanEsp] of [
    [
      "PSK, AES256-SHA256-DH14, ESP AES-GCM-256 (the seeds' server-to-server rule)",
      'AES256-SHA256-DH14',
      'AESGCM256',
      'aes256-sha256-modp2048',
      'aes256gcm16',
    ],
    [
      'PSK, AES256-SHA384-DH20 (ECP-384), ESP AES-CBC-256/SHA-256',
      'AES256-SHA384-DH20',
      'AES256',
      'aes256-sha384-ecp384',
      'aes256-sha256',
    ],
    [
      'PSK, AES128-SHA256-DH19 (ECP-256), ESP AES-GCM-128',
      'AES128-SHA256-DH19',
      'AESGCM128',
      'aes128-sha256-ecp256',
      'aes128gcm16',
    ],
  ] as const) {
    it(name, async () => {
      const a = lab.address('alice');
      const b = lab.address('bob');
      const bob = await Charon.start(lab, 'bob', responder(b, a, [swanIke], [swanEsp]));
      try {
        const init = fixture(lab, 'alice', 'ike-initiate', [a, b, PSK, mm, qm]);
        await init.exited;
        const [ok] = events<Established>(init, 'established');
        assert.ok(ok, `${init.output()}\n--- charon ---\n${bob.log().slice(-4000)}`);
        // strongSwan must see the same SAs, established and installed.
        const [sa] = await bob.listSas();
        assert.equal(sa?.state, 'ESTABLISHED');
        assert.equal(sa?.initiator, false);
        const child = sa?.children[0];
        assert.equal(child?.state, 'INSTALLED');
        assert.equal(child?.spiIn, ok.spiOut, 'charon receives on the SPI we send with');
        assert.equal(child?.spiOut, ok.spiIn, 'charon sends with the SPI we receive on');
        assert.deepEqual(child?.localTs, [`${b}/32`]);
        assert.deepEqual(child?.remoteTs, [`${a}/32`]);
      } finally {
        await bob.stop();
      }
    });
  }

  it("the child SA keys carry traffic: pings through strongSwan's tunnel come back decrypted", async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const bob = await Charon.start(lab, 'bob', responder(b, a, ['aes256-sha256-modp2048'], ['aes256gcm16']));
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [a, b, PSK, 'AES256-SHA256-DH14', 'AESGCM256', '--ping']);
      await init.exited;
      const [esp] = events<{ replies: number[] }>(init, 'esp');
      assert.deepEqual(esp?.replies, [1, 2, 3], `${init.output()}\n${bob.log().slice(-3000)}`);
      const child = (await bob.listSas())[0]?.children[0];
      assert.deepEqual(
        [child?.packetsIn, child?.packetsOut],
        [3, 3],
        'charon decrypted our three requests and sent three replies',
      );
    } finally {
      await bob.stop();
    }
  });

  it('tshark decrypts our IKE_AUTH and our ESP with the keys consec exports (ikev2_decryption_table, esp_sa)', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const bob = await Charon.start(lab, 'bob', responder(b, a, ['aes256-sha256-modp2048'], ['aes256gcm16']));
    const keys = mkdtempSync(join(tmpdir(), 'consec-keys-'));
    const cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'udp port 500 or udp port 4500' });
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        PSK,
        'AES256-SHA256-DH14',
        'AESGCM256',
        '--ping',
        '--keylog',
        keys,
      ]);
      await init.exited;
      assert.deepEqual(events(init, 'esp'), [{ event: 'esp', replies: [1, 2, 3] }], init.output());
      await cap.stop();
      const tshark = async (filter: string, fields: string[]) => ({
        stdout: (await tsharkWithKeys(cap.file, keys, ['ikev2_decryption_table', 'esp_sa'], filter, fields)).join('\n'),
      });
      // IKE_AUTH request and response: the identities inside the SK payload are readable only with our keys.
      const ids = (await tshark('isakmp.exchangetype == 35', ['isakmp.id.data.ipv4_addr', 'isakmp.auth.method'])).stdout
        .trim()
        .split('\n');
      assert.deepEqual(
        ids,
        [`${a},${b}\t2`, `${b}\t2`],
        "decrypted: the request's IDi and IDr, the response's IDr, and AUTH (shared key) in both",
      );
      // The ESP packets: three echo requests and three replies inside.
      const icmp = (await tshark('icmp', ['icmp.type'])).stdout.trim().split('\n');
      assert.deepEqual(icmp, ['8', '0', '8', '0', '8', '0']);
    } finally {
      await cap.dispose();
      rmSync(keys, { recursive: true, force: true });
      await bob.stop();
    }
  });

  it('an INFORMATIONAL Delete from consec tears the SA down at strongSwan', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const bob = await Charon.start(lab, 'bob', responder(b, a, ['aes256-sha256-modp2048'], ['aes256gcm16']));
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [a, b, PSK, 'AES256-SHA256-DH14', 'AESGCM256', '--delete']);
      await init.exited;
      assert.deepEqual(events(init, 'deleted'), [{ event: 'deleted' }], init.output());
      assert.match(init.output(), /"event":"IKE SA deleted"/, 'strongSwan answered the Delete');
      assert.deepEqual(await bob.listSas(), []);
      assert.match(bob.log(), /received DELETE for IKE_SA/);
    } finally {
      await bob.stop();
    }
  });

  it('a wrong pre-shared key fails with AUTHENTICATION_FAILED on both sides', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const bob = await Charon.start(lab, 'bob', responder(b, a, ['aes256-sha256-modp2048'], ['aes256gcm16']));
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [a, b, 'not-the-key', 'AES256-SHA256-DH14', 'AESGCM256']);
      await init.exited;
      const [failed] = events<{ message: string; code: number }>(init, 'failed');
      assert.equal(failed?.code, 24, init.output());
      assert.match(failed?.message ?? '', /AUTHENTICATION_FAILED/);
      assert.deepEqual(await bob.listSas(), []);
    } finally {
      await bob.stop();
    }
  });

  it('no common proposal fails with NO_PROPOSAL_CHOSEN', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const bob = await Charon.start(lab, 'bob', responder(b, a, ['aes128-sha1-modp3072'], ['aes256gcm16']));
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [a, b, PSK, 'AES256-SHA256-DH14', 'AESGCM256']);
      await init.exited;
      const [failed] = events<{ message: string; code: number }>(init, 'failed');
      assert.equal(failed?.code, 14, init.output());
    } finally {
      await bob.stop();
    }
  });
});

describe('IKEv2 through the lab NAT router', () => {
  it('consec behind a masquerading router: NAT detected, IKE floats to 4500, pings through the SA', async () => {
    const lab = await Lab.create(behindNat());
    try {
      const a = lab.address('alice'); // 198.51.100.10, inside
      const b = lab.address('bob'); // 203.0.113.2, outside
      // bob sees alice as the router's outside address, but alice still authenticates as herself.
      const bob = await Charon.start(
        lab,
        'bob',
        pskHostTunnel(b, a, {
          name: 'consec',
          secret: PSK,
          proposals: ['aes256-sha256-modp2048'],
          remoteAddrs: ['%any'],
        }),
      );
      const cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'udp port 4500' });
      try {
        const init = fixture(lab, 'alice', 'ike-initiate', [
          a,
          b,
          PSK,
          'AES256-SHA256-DH14',
          'AESGCM256',
          '--ping',
          '--keepalive',
          '150',
          '--stay',
          '700',
        ]);
        await init.exited;
        await cap.stop();
        // NAT keepalives (RFC 3948 §2.3): one-octet 0xff datagrams from behind the NAT to 4500.
        const keepalives = await cap.fields(['udp.srcport', 'udp.payload'], 'udp.length == 9');
        assert.ok(keepalives.length >= 2, `NAT keepalives seen: ${JSON.stringify(keepalives)}`);
        assert.ok(
          keepalives.every(([, d]) => d === 'ff'),
          JSON.stringify(keepalives),
        );
        const [ok] = events<Established>(init, 'established');
        assert.ok(ok, `${init.output()}\n${bob.log().slice(-3000)}`);
        assert.equal(ok.nat, true, 'the NAT was detected');
        assert.deepEqual(events(init, 'esp'), [{ event: 'esp', replies: [1, 2, 3] }]);
        const [sa] = await bob.listSas();
        assert.equal(sa?.state, 'ESTABLISHED');
        assert.equal(sa?.remoteHost, '203.0.113.1', "strongSwan sees the router's address");
      } finally {
        await cap.dispose();
        await bob.stop();
      }
    } finally {
      await lab.destroy();
    }
  });
});
