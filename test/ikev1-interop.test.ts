// IKEv1 interoperability with strongSwan's charon (`version = 1`) in a lab namespace: kernel-libipsec
// (userspace ESP, tunnel mode only, ESP in UDP 4500 with `encap = yes`, which makes charon fake a
// NAT so both sides float to 4500 — RFC 3947 as between NATed hosts).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Capture } from '../src/lab/capture.ts';
import { Lab } from '../src/lab/lab.ts';
import { type KeySpec, LabPki } from '../src/lab/pki.ts';
import { Charon, type CharonConfig, certHostTunnel, ikeV1, pskHostTunnel } from '../src/lab/strongswan.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { events, fixture, ikeLoss, tsharkWithKeys, waitUntil } from './helpers.ts';

const PSK = 'lab-only-psk-0123456789abcdef';

const v1 = (local: string, remote: string, proposals: string[], esp: string[], secret = PSK): CharonConfig =>
  ikeV1(pskHostTunnel(local, remote, { name: 'consec', secret, proposals, esp, logLevel: 2 }));

function v1cert(
  local: string,
  remote: string,
  cert: { certPem: string; keyPem: string },
  ca: string,
  ike: string,
): CharonConfig {
  return ikeV1(
    certHostTunnel(local, remote, {
      name: 'consec',
      cert: cert.certPem,
      key: cert.keyPem,
      ca,
      proposals: [ike],
      esp: ['aes256gcm16'],
      logLevel: 2,
    }),
  );
}

interface Established {
  spiI: string;
  spiR: string;
  nat: boolean;
  spiIn: string;
  spiOut: string;
  mode: string;
}

describe('IKEv1 with strongSwan charon (namespace, kernel-libipsec, tunnel mode)', () => {
  let lab: Lab;
  let dir: string;
  let pki: LabPki;
  const issued: Record<string, { certPem: string; keyPem: string; files: string[] }> = {};
  before(async () => {
    lab = await Lab.create(hostToHost());
    dir = mkdtempSync(join(tmpdir(), 'consec-v1-certs-'));
    pki = LabPki.create();
    writeFileSync(join(dir, 'ca.pem'), pki.ca.certPem, { mode: 0o600 });
    for (const [who, spec] of [
      ['alice', 'P-384'],
      ['bob', 'P-384'],
      ['alice', 'RSA-2048'],
      ['bob', 'RSA-2048'],
    ] as const) {
      const i = pki.issue(who, lab.address(who), { spec: spec as KeySpec });
      const name = `${who}-${spec}`;
      writeFileSync(join(dir, `${name}.pem`), i.certPem, { mode: 0o600 });
      writeFileSync(join(dir, `${name}.key`), i.keyPem, { mode: 0o600 });
      issued[name] = {
        ...i,
        files: ['--cert', join(dir, `${name}.pem`), '--key', join(dir, `${name}.key`), '--ca', join(dir, 'ca.pem')],
      };
    }
  });
  after(async () => {
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  for (const [name, mm, qm, swanIke, swanEsp, extra] of [
    [
      'PSK, AES256-SHA256-DH14, ESP AES-GCM-256: pings through the child SA come back',
      'AES256-SHA256-DH14',
      'AESGCM256',
      'aes256-sha256-modp2048',
      'aes256gcm16',
      ['--ping'],
    ],
    [
      'PSK, AES256-SHA384-DH20, ESP AES-GCM-256 with PFS ECP-384',
      'AES256-SHA384-DH20',
      'AESGCM256',
      'aes256-sha384-ecp384',
      'aes256gcm16-ecp384',
      ['--pfs', '20', '--ping'],
    ],
    [
      'PSK, AES128-SHA1-DH19, ESP AES-CBC-256/SHA-256 with PFS DH14',
      'AES128-SHA1-DH19',
      'AES256',
      'aes128-sha1-ecp256',
      'aes256-sha256-modp2048',
      ['--pfs', '14'],
    ],
  ] as const) {
    it(`consec initiates Main Mode + Quick Mode to charon: ${name}`, async () => {
      const a = lab.address('alice');
      const b = lab.address('bob');
      const bob = await Charon.start(lab, 'bob', v1(b, a, [swanIke], [swanEsp]));
      try {
        const init = fixture(lab, 'alice', 'ike-initiate', [a, b, PSK, mm, qm, '--v1', ...extra]);
        await init.exited;
        const [ok] = events<Established>(init, 'established');
        assert.ok(ok, `${init.output()}\n--- charon ---\n${bob.log().slice(-5000)}`);
        assert.equal(ok.nat, true, 'charon faked a NAT (encap=yes): the SA floated to 4500');
        const [sa] = await bob.listSas();
        assert.equal(sa?.version, 1);
        assert.equal(sa?.state, 'ESTABLISHED');
        assert.equal(sa?.initiator, false);
        const child = sa?.children[0];
        assert.equal(child?.state, 'INSTALLED');
        assert.equal(child?.encap, true);
        assert.equal(child?.spiIn, ok.spiOut, 'charon receives on the SPI we send with');
        assert.equal(child?.spiOut, ok.spiIn, 'charon sends with the SPI we receive on');
        assert.deepEqual(child?.localTs, [`${b}/32`]);
        assert.deepEqual(child?.remoteTs, [`${a}/32`]);
        if ((extra as readonly string[]).includes('--ping')) {
          assert.deepEqual(events(init, 'esp'), [{ event: 'esp', replies: [1, 2, 3] }], init.output());
          const after = (await bob.listSas())[0]?.children[0];
          assert.deepEqual(
            [after?.packetsIn, after?.packetsOut],
            [3, 3],
            'charon decrypted our requests and sealed its replies',
          );
        }
      } finally {
        await bob.stop();
      }
    });
  }

  it('ECDSA P-384 certificates (RFC 4754): consec initiates Main Mode to charon, which verifies our signature; pings come back', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const bob = await Charon.start(
      lab,
      'bob',
      v1cert(b, a, issued['bob-P-384'] as never, pki.ca.certPem, 'aes256-sha384-ecp384'),
    );
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        '',
        'AES256-SHA384-DH20',
        'AESGCM256',
        '--v1',
        '--ping',
        ...(issued['alice-P-384']?.files ?? []),
      ]);
      await init.exited;
      const [ok] = events<Established & { peer: string }>(init, 'established');
      assert.ok(ok, `${init.output()}\n--- charon ---\n${bob.log().slice(-5000)}`);
      assert.match(ok.peer, /CN=bob/);
      assert.equal(events<{ id: number }>(init, 'audit')[0]?.id, 4651, 'certificate MM SA: 4651');
      assert.deepEqual(events(init, 'esp'), [{ event: 'esp', replies: [1, 2, 3] }], init.output());
      const [sa] = await bob.listSas();
      assert.equal(sa?.version, 1);
      assert.equal(sa?.state, 'ESTABLISHED');
      assert.match(bob.log(), /authentication of 'O=consec lab, CN=alice' with ECDSA.* successful/);
      // Our certificate message exceeds 576 octets: it crossed in fragments charon put back together.
      assert.match(bob.log(), /parsed ID_PROT request 0 \[ FRAG\(1\) \]/);
      assert.match(bob.log(), /received fragment #1, waiting for complete IKE message/);
    } finally {
      await bob.stop();
    }
  });

  for (const [spec, mm, ike] of [
    ['RSA-2048', 'AES256-SHA256-DH14', 'aes256-sha256-modp2048'],
    ['P-384', 'AES256-SHA256-DH19', 'aes256-sha256-ecp256'],
  ] as const)
    it(`${spec.startsWith('RSA') ? 'RSA' : `ECDSA ${spec}`} certificates: charon initiates Main Mode to consec, both verify; pings answered through the child SA`, async () => {
      const a = lab.address('alice');
      const b = lab.address('bob');
      const resp = fixture(lab, 'bob', 'ike-respond', [
        b,
        a,
        '',
        mm,
        'AESGCM256',
        3,
        ...(issued[`bob-${spec}`]?.files ?? []),
      ]);
      await resp.waitFor(/"event":"listening"/);
      const swan = v1cert(a, b, issued[`alice-${spec}`] as never, pki.ca.certPem, ike);
      // charon fragments its certificate message as Windows does, into datagrams of 576 octets.
      swan.charon = { ...swan.charon, fragment_size: 576 };
      const alice = await Charon.start(lab, 'alice', swan);
      try {
        await alice.initiate('consec').catch((err: Error) => {
          throw new Error(`${err.message}\n--- consec ---\n${resp.output().slice(-4000)}`);
        });
        // Quick Mode's third message reaches consec after charon's initiate returns: wait for it.
        await resp.waitFor(/"event":"established"/).catch(() => undefined);
        const [est] = events<{ spiIn: string; spiOut: string }>(resp, 'established');
        assert.ok(est, `${resp.output()}\n--- charon ---\n${alice.log().slice(-5000)}`);
        const ping = await lab.exec('alice', ['ping', '-c', '3', '-i', '0.2', '-W', '2', b], { allowFailure: true });
        assert.equal(ping.code, 0, `${ping.stdout}\n${resp.output()}`);
        await resp.exited;
        assert.deepEqual(events(resp, 'echoed'), [{ event: 'echoed', echoes: 3 }]);
        assert.ok(
          events<{ id: number }>(resp, 'audit').some((e) => e.id === 4651),
          resp.output(),
        );
        assert.match(
          alice.log(),
          new RegExp(
            `authentication of 'O=consec lab, CN=bob' with ${spec.startsWith('RSA') ? 'RSA' : 'ECDSA'}.* successful`,
          ),
        );
        // Message 5 and 6 (certificate and signature) exceed 576 octets: each side sent fragments,
        // the other put them back together.
        assert.match(alice.log(), /received fragment #\d+, reassembled fragmented IKE message/);
        assert.match(
          alice.log(),
          /generating ID_PROT request 0 \[ FRAG\(1\) \]|splitting IKE message .* into \d+ fragments/,
        );
      } finally {
        await alice.stop();
        await resp.stop();
      }
    });

  it('charon initiates IKEv1 to consec; its pings through the tunnel are answered by consec', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const resp = fixture(lab, 'bob', 'ike-respond', [b, a, PSK, 'AES256-SHA256-DH14', 'AESGCM256', 3]);
    await resp.waitFor(/"event":"listening"/);
    const alice = await Charon.start(lab, 'alice', v1(a, b, ['aes256-sha256-modp2048'], ['aes256gcm16']));
    try {
      await alice.initiate('consec');
      // Quick Mode's third message reaches consec after charon's initiate returns: wait for it.
      await resp.waitFor(/"event":"established"/).catch(() => undefined);
      const [est] = events<{ spiIn: string; spiOut: string }>(resp, 'established');
      assert.ok(est, resp.output());
      const ping = await lab.exec('alice', ['ping', '-c', '3', '-i', '0.2', '-W', '2', b], { allowFailure: true });
      assert.equal(ping.code, 0, `${ping.stdout}\n${resp.output()}`);
      await resp.exited;
      assert.deepEqual(events(resp, 'echoed'), [{ event: 'echoed', echoes: 3 }]);
      const [sa] = await alice.listSas();
      assert.equal(sa?.version, 1);
      assert.equal(sa?.state, 'ESTABLISHED');
      const child = sa?.children[0];
      assert.deepEqual([child?.spiIn, child?.spiOut], [est.spiOut, est.spiIn]);
      assert.deepEqual([child?.packetsOut, child?.packetsIn], [3, 3]);
      // Windows' view of it: a main mode and a quick mode event of the IKEv1 module.
      assert.deepEqual(
        events<{ id: number }>(resp, 'audit')
          .map((e) => e.id)
          .filter((id) => id === 4650 || id === 5451),
        [4650, 5451],
      );
    } finally {
      await alice.stop();
      await resp.stop();
    }
  });

  it('tshark decrypts our Main Mode messages 5–6, Quick Mode and ESP with the keys consec exports (ikev1_decryption_table, esp_sa)', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const bob = await Charon.start(lab, 'bob', v1(b, a, ['aes256-sha256-modp2048'], ['aes256gcm16']));
    const keys = mkdtempSync(join(tmpdir(), 'consec-v1-keys-'));
    const cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'udp port 500 or udp port 4500' });
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        PSK,
        'AES256-SHA256-DH14',
        'AESGCM256',
        '--v1',
        '--ping',
        '--keylog',
        keys,
      ]);
      await init.exited;
      assert.deepEqual(events(init, 'esp'), [{ event: 'esp', replies: [1, 2, 3] }], init.output());
      await cap.stop();
      const tshark = (filter: string, fields: string[]) =>
        tsharkWithKeys(cap.file, keys, ['ikev1_decryption_table', 'esp_sa'], filter, fields);
      // Main Mode 5 and 6: the identities and hashes inside are readable only with our key.
      assert.deepEqual(
        await tshark('isakmp.exchangetype == 2 && isakmp.id.data.ipv4_addr', ['isakmp.id.data.ipv4_addr']),
        [a, b],
      );
      // Quick Mode 1 and 2: the client IDs (the tunnel's selectors), decrypted.
      const qm = await tshark('isakmp.exchangetype == 32 && isakmp.id.data.ipv4_addr', ['isakmp.id.data.ipv4_addr']);
      assert.deepEqual(qm, [`${a},${b}`, `${a},${b}`], qm.join(' | '));
      // ESP in UDP: three echo requests and three replies inside.
      assert.deepEqual(await tshark('icmp', ['icmp.type']), ['8', '0', '8', '0', '8', '0']);
    } finally {
      await cap.dispose();
      rmSync(keys, { recursive: true, force: true });
      await bob.stop();
    }
  });

  it('Phase 1 renewal before expiry with charon: a new ISAKMP SA, the old one deleted, the child SA kept by both and still carrying pings', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const bob = await Charon.start(lab, 'bob', v1(b, a, ['aes256-sha256-modp2048'], ['aes256gcm16']));
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        PSK,
        'AES256-SHA256-DH14',
        'AESGCM256',
        '--v1',
        '--rekey',
        '1500,600000',
        '--ping',
        '--stay',
        '6500',
        '--ping-again',
      ]);
      await init.exited;
      const [ok] = events<Established>(init, 'established');
      assert.ok(ok, init.output());
      const [again] = events<{ replies: number[]; sessions: { spiI: string; state: string; children: number }[] }>(
        init,
        'esp-again',
      );
      const swanLog = () =>
        bob
          .log()
          .split('\n')
          .filter((l) => !/vici|CFG/.test(l))
          .join('\n')
          .slice(-6000);
      assert.ok(again, init.output());
      assert.deepEqual(again.replies, [1, 2, 3], `${init.output()}\n--- charon ---\n${swanLog()}`);
      assert.equal(again.sessions.length, 1, JSON.stringify(again.sessions));
      assert.notEqual(again.sessions[0]?.spiI, ok.spiI, 'a new ISAKMP SA');
      assert.equal(again.sessions[0]?.children, 1);
      const sas = await bob.listSas();
      assert.equal(sas.length, 1, swanLog());
      assert.equal(sas[0]?.spiI, again.sessions[0]?.spiI);
      assert.deepEqual(
        [sas[0]?.children[0]?.spiIn, sas[0]?.children[0]?.spiOut],
        [ok.spiOut, ok.spiIn],
        'charon kept the child SA across the renewal',
      );
      assert.deepEqual(
        events<{ id: number; reason?: string }>(init, 'audit')
          .filter((e) => e.id === 5452)
          .map((e) => e.reason),
        ['keying service stopped'],
        'the child SA ended only when the fixture stopped',
      );
    } finally {
      await bob.stop();
    }
  });

  it('charon renews Phase 1 first (its reauthentication every 4 s): consec answers the new Main Mode, keeps a working child SA, and pings still pass', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const resp = fixture(lab, 'bob', 'ike-respond', [b, a, PSK, 'AES256-SHA256-DH14', 'AESGCM256', 0, '--stay', 9000]);
    await resp.waitFor(/"event":"listening"/);
    const cfg = v1(a, b, ['aes256-sha256-modp2048'], ['aes256gcm16']);
    for (const conn of Object.values(cfg.connections)) Object.assign(conn, { rekey_time: '4s', over_time: '2s' });
    const alice = await Charon.start(lab, 'alice', cfg);
    try {
      await alice.initiate('consec');
      const [first] = await alice.listSas();
      assert.ok(first, alice.log().slice(-3000));
      await waitUntil(async () => {
        const sas = await alice.listSas();
        return sas.some(
          (x) => x.state === 'ESTABLISHED' && x.spiI !== first.spiI && x.children[0]?.state === 'INSTALLED',
        );
      }, 'charon to reauthenticate: a new ISAKMP SA holding the child SA').catch(async (err: Error) =>
        assert.fail(
          `${err.message}: ${JSON.stringify(await alice.listSas())}\n${alice
            .log()
            .split('\n')
            .filter((l) => /\[(IKE|CHD)\]/.test(l))
            .join('\n')
            .slice(-5000)}\n--- consec ---\n${resp.output().slice(-3000)}`,
        ),
      );
      const ping = await lab.exec('alice', ['ping', '-c', '3', '-i', '0.2', '-W', '2', b], { allowFailure: true });
      assert.equal(ping.code, 0, `${ping.stdout}\n${resp.output().slice(-4000)}`);
      const audits = events<{ id: number; reason?: string }>(resp, 'audit');
      assert.ok(audits.filter((e) => e.id === 4650).length >= 2, resp.output().slice(-4000));
      assert.ok(!audits.some((e) => e.id === 4653 || e.id === 4654), 'no failed negotiation');
    } finally {
      await alice.stop();
      await resp.stop();
    }
  });

  it('DPD (RFC 3706): charon answers R-U-THERE while alive; when it dies, consec declares the peer dead and ends the SA (4655)', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const bob = await Charon.start(lab, 'bob', v1(b, a, ['aes256-sha256-modp2048'], ['aes256gcm16']));
    let stopped = false;
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        PSK,
        'AES256-SHA256-DH14',
        'AESGCM256',
        '--v1',
        '--dpd',
        '400',
        '--retransmits',
        '200,400,800',
        '--stay',
        '9000',
      ]);
      await init.waitFor(/"event":"established"/);
      // Alive: R-U-THERE answered with R-U-THERE-ACK, the SA stays.
      await waitUntil(
        () => (bob.log().match(/generating INFORMATIONAL_V1 request \d+ \[ HASH N\(DPD_ACK\) \]/g) ?? []).length >= 2,
        'charon answering our R-U-THERE',
      ).catch((err: Error) =>
        assert.fail(`${err.message}\n${bob.log().slice(-3000)}\n--- consec ---\n${init.output()}`),
      );
      assert.equal(events<{ id: number }>(init, 'audit').filter((e) => e.id === 4655).length, 0);
      await bob.kill();
      await bob.stop();
      stopped = true;
      await init.exited;
      const ended = events<{ id: number; reason?: string }>(init, 'audit').find((e) => e.id === 4655);
      assert.match(ended?.reason ?? init.output(), /not responding \(DPD\)/);
    } finally {
      if (!stopped) await bob.stop();
    }
  });

  it('Main Mode and Quick Mode through 30 % loss (nft numgen: 3 of every 10 IKE datagrams dropped on both hosts, counted)', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const loss = await ikeLoss(lab, ['alice', 'bob']);
    const bob = await Charon.start(lab, 'bob', v1(b, a, ['aes256-sha256-modp2048'], ['aes256gcm16']));
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        PSK,
        'AES256-SHA256-DH14',
        'AESGCM256',
        '--v1',
        '--retransmits',
        '250,250,250,250,250,250,250,250,250,250,250,250',
        '--delete',
      ]);
      await init.exited;
      assert.equal(events(init, 'established').length, 1, init.output());
      for (const [h, n] of Object.entries(await loss.dropped())) assert.ok(n > 0, `${h} lost IKE datagrams`);
    } finally {
      await bob.stop();
      await loss.remove();
    }
  });

  it('a Delete from consec tears the SAs down at charon', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const bob = await Charon.start(lab, 'bob', v1(b, a, ['aes256-sha256-modp2048'], ['aes256gcm16']));
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        PSK,
        'AES256-SHA256-DH14',
        'AESGCM256',
        '--v1',
        '--delete',
      ]);
      await init.exited;
      assert.equal(events(init, 'deleted').length, 1, init.output());
      const deadline = Date.now() + 10_000;
      let sas = await bob.listSas();
      while (sas.length > 0 && Date.now() < deadline) sas = await bob.listSas();
      assert.deepEqual(
        sas,
        [],
        bob
          .log()
          .split('\n')
          .filter((l) => !/vici/.test(l))
          .join('\n')
          .slice(-6000),
      );
    } finally {
      await bob.stop();
    }
  });

  it('different pre-shared keys: 4653 at consec, and charon logs the failed authentication', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const bob = await Charon.start(
      lab,
      'bob',
      v1(b, a, ['aes256-sha256-modp2048'], ['aes256gcm16'], 'another-lab-only-psk-987654321'),
    );
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        PSK,
        'AES256-SHA256-DH14',
        'AESGCM256',
        '--v1',
        '--retransmits',
        '300,600,1200',
      ]);
      await init.exited;
      const [failed] = events<{ message: string }>(init, 'failed');
      assert.ok(failed, init.output());
      const audits = events<{ id: number; reason?: string }>(init, 'audit');
      assert.ok(
        audits.some((e) => e.id === 4653),
        init.output(),
      );
      assert.deepEqual(
        (await bob.listSas()).filter((x) => x.state === 'ESTABLISHED'),
        [],
      );
      assert.match(
        bob
          .log()
          .split('\n')
          .filter((l) => !/vici/.test(l))
          .join('\n')
          .slice(-6000),
        /integrity check failed|invalid HASH|decryption failed|verification of .* failed|message parsing failed|INVALID_HASH/i,
      );
    } finally {
      await bob.stop();
    }
  });

  it('no common Quick Mode proposal: NO-PROPOSAL-CHOSEN from charon ends our Quick Mode (4654)', async () => {
    const a = lab.address('alice');
    const b = lab.address('bob');
    const bob = await Charon.start(lab, 'bob', v1(b, a, ['aes256-sha256-modp2048'], ['aes128-sha1']));
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        PSK,
        'AES256-SHA256-DH14',
        'AESGCM256',
        '--v1',
        '--retransmits',
        '300,600,1200',
      ]);
      await init.exited;
      const [failed] = events<{ message: string }>(init, 'failed');
      assert.ok(failed, init.output());
      assert.match(failed.message, /NO_PROPOSAL_CHOSEN|did not answer/);
      assert.ok(
        events<{ id: number }>(init, 'audit').some((e) => e.id === 4654),
        init.output(),
      );
    } finally {
      await bob.stop();
    }
  });
});
