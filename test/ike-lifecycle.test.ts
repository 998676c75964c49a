/**
 * IKEv2 against strongSwan beyond the first exchange: certificate authentication (ECDSA P-384, the
 * seeds' ESAE settings) in both directions, CHILD and IKE SA rekeys driven by short lifetimes on
 * either side, dead peer detection, and negotiation through 30 % random loss on the veth.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Lab } from '../src/lab/lab.ts';
import { LabPki } from '../src/lab/pki.ts';
import { Charon, certHostTunnel, pskHostTunnel } from '../src/lab/strongswan.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { events, fixture, ikeLoss, waitUntil } from './helpers.ts';

const PSK = 'lab-only-psk-lifecycle-0123456789';
const ESAE = ['AES256-SHA384-DH20', 'AESGCM256'] as const;

interface Audit {
  id: number;
  reason?: string;
  inboundSpi?: number;
}
interface State {
  sessions: number;
  quiet?: boolean;
  spiI?: string;
  spiR?: string;
  children: [string, string][];
}

describe('IKEv2 with strongSwan: certificates, rekeying, liveness, loss', () => {
  let lab: Lab;
  let dir: string;
  let a: string;
  let b: string;
  const files: Record<string, string> = {};
  let pki: LabPki;
  let alice: { certPem: string; keyPem: string };
  let bob: { certPem: string; keyPem: string };
  before(async () => {
    lab = await Lab.create(hostToHost());
    a = lab.address('alice');
    b = lab.address('bob');
    dir = mkdtempSync(join(tmpdir(), 'consec-certs-'));
    pki = LabPki.create();
    alice = pki.issue('alice', a);
    bob = pki.issue('bob', b);
    for (const [name, pem] of Object.entries({
      'ca.pem': pki.ca.certPem,
      'alice.pem': alice.certPem,
      'alice.key': alice.keyPem,
      'bob.pem': bob.certPem,
      'bob.key': bob.keyPem,
    })) {
      files[name] = join(dir, name);
      writeFileSync(files[name] as string, pem, { mode: 0o600 });
    }
  });
  after(async () => {
    await lab?.destroy();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** consec answering on bob for `stayMs`, and the strongSwan config alice initiates with. */
  async function consecResponder(stayMs: number) {
    const resp = fixture(lab, 'bob', 'ike-respond', [
      b,
      a,
      PSK,
      'AES256-SHA256-DH14',
      'AESGCM256',
      0,
      '--stay',
      stayMs,
    ]);
    await resp.waitFor(/"event":"listening"/);
    const cfg = pskHostTunnel(a, b, { name: 'c', secret: PSK, proposals: ['aes256-sha256-modp2048'], logLevel: 2 });
    return { resp, cfg };
  }

  const certArgs = (who: 'alice' | 'bob') =>
    ['--cert', files[`${who}.pem`], '--key', files[`${who}.key`], '--ca', files['ca.pem']] as string[];

  it('ECDSA P-384 certificates, AES-CBC-256/SHA-384/ECP-384, child AES-GCM-256: consec → strongSwan', async () => {
    const peer = await Charon.start(
      lab,
      'bob',
      certHostTunnel(b, a, { name: 'c', cert: bob.certPem, key: bob.keyPem, ca: pki.ca.certPem, logLevel: 2 }),
    );
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [a, b, '', ...ESAE, ...certArgs('alice')]);
      await init.exited;
      const [ok] = events<{ spiOut: string; peer: string }>(init, 'established');
      assert.ok(ok, `${init.output()}\n--- charon ---\n${peer.log().slice(-4000)}`);
      assert.match(ok.peer, /CN=bob/);
      assert.deepEqual(
        events<Audit>(init, 'audit')
          .map((e) => e.id)
          .slice(0, 2),
        [4651, 5451],
        'certificate MM SA: 4651',
      );
      const [sa] = await peer.listSas();
      assert.equal(sa?.state, 'ESTABLISHED');
      assert.equal(sa?.encrAlg, 'AES_CBC');
      assert.equal(sa?.dhGroup, 'ECP_384');
      assert.equal(sa?.children[0]?.spiIn, ok.spiOut);
      assert.equal(sa?.children[0]?.encrAlg, 'AES_GCM_16');
      // strongSwan verified our signature with our certificate (RFC 7427 since both announced it).
      assert.match(peer.log(), /authentication of 'O=consec lab, CN=alice' with ECDSA_WITH_SHA384_DER successful/);
    } finally {
      await peer.stop();
    }
  });

  it('ECDSA P-384 certificates: strongSwan → consec, pings answered through the child SA', async () => {
    const resp = fixture(lab, 'bob', 'ike-respond', [b, a, '', ...ESAE, 3, ...certArgs('bob')]);
    await resp.waitFor(/"event":"listening"/);
    const peer = await Charon.start(
      lab,
      'alice',
      certHostTunnel(a, b, { name: 'c', cert: alice.certPem, key: alice.keyPem, ca: pki.ca.certPem, logLevel: 2 }),
    );
    try {
      await peer.initiate('c');
      const ping = await lab.exec('alice', ['ping', '-c', '3', '-i', '0.2', '-W', '2', b], { allowFailure: true });
      assert.equal(ping.code, 0, `${ping.stdout}\n${resp.output()}`);
      await resp.exited;
      assert.deepEqual(events(resp, 'echoed'), [{ event: 'echoed', echoes: 3 }]);
      assert.ok(events<Audit>(resp, 'audit').some((e) => e.id === 4651));
      assert.match(peer.log(), /authentication of 'O=consec lab, CN=bob' with ECDSA_WITH_SHA384_DER successful/);
    } finally {
      await peer.stop();
      await resp.stop();
    }
  });

  it('RSA-4096 certificates make IKE_AUTH too big for one datagram: RFC 7383 fragments both ways', async () => {
    const big = LabPki.create('consec lab RSA root', 'RSA-4096');
    const aliceRsa = big.issue('alice', a, { spec: 'RSA-4096' });
    const bobRsa = big.issue('bob', b, { spec: 'RSA-4096' });
    for (const [name, pem] of Object.entries({
      'rsa-ca.pem': big.ca.certPem,
      'rsa-alice.pem': aliceRsa.certPem,
      'rsa-alice.key': aliceRsa.keyPem,
    }))
      writeFileSync(join(dir, name), pem, { mode: 0o600 });
    const peer = await Charon.start(
      lab,
      'bob',
      certHostTunnel(b, a, {
        name: 'c',
        cert: bobRsa.certPem,
        key: bobRsa.keyPem,
        ca: big.ca.certPem,
        proposals: ['aes256-sha256-modp2048'],
        logLevel: 2,
      }),
    );
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        '',
        'AES256-SHA256-DH14',
        'AESGCM256',
        '--cert',
        join(dir, 'rsa-alice.pem'),
        '--key',
        join(dir, 'rsa-alice.key'),
        '--ca',
        join(dir, 'rsa-ca.pem'),
      ]);
      await init.exited;
      const [ok] = events<{ peer: string }>(init, 'established');
      assert.ok(ok, `${init.output()}\n--- charon ---\n${peer.log().slice(-4000)}`);
      assert.match(
        init.output(),
        /"event":"sending fragments","spi":"[0-9a-f]+","peer":"[0-9.]+","exchange":"IKE_AUTH","fragments":[2-9]/,
      );
      // strongSwan may take them in either order; it must put them together.
      assert.match(peer.log(), /received fragment #\d+ of \d+, waiting for complete IKE message/);
      assert.match(peer.log(), /reassembled fragmented IKE message/);
      assert.match(
        peer.log(),
        /splitting IKE message .* into \d+ fragments/,
        'strongSwan fragmented its answer, which consec reassembled',
      );
      assert.match(peer.log(), /authentication of 'O=consec lab, CN=alice' with RSA.* successful/);
      assert.equal((await peer.listSas())[0]?.state, 'ESTABLISHED');
    } finally {
      await peer.stop();
    }
  });

  it('a certificate from another CA is refused by strongSwan and audited by consec as 4652', async () => {
    const other = LabPki.create('some other CA');
    const stranger = other.issue('alice', a);
    writeFileSync(join(dir, 'stranger.pem'), stranger.certPem);
    writeFileSync(join(dir, 'stranger.key'), stranger.keyPem);
    const peer = await Charon.start(
      lab,
      'bob',
      certHostTunnel(b, a, { name: 'c', cert: bob.certPem, key: bob.keyPem, ca: pki.ca.certPem }),
    );
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        '',
        ...ESAE,
        '--cert',
        join(dir, 'stranger.pem'),
        '--key',
        join(dir, 'stranger.key'),
        '--ca',
        files['ca.pem'] as string,
      ]);
      await init.exited;
      const [failed] = events<{ message: string }>(init, 'failed');
      assert.match(failed?.message ?? init.output(), /AUTHENTICATION_FAILED/);
      assert.deepEqual(
        events<Audit>(init, 'audit').map((e) => e.id),
        [4652],
      );
      assert.deepEqual(await peer.listSas(), []);
    } finally {
      await peer.stop();
    }
  });

  it('consec rekeys the CHILD SA and the IKE SA at short lifetimes; strongSwan follows', async () => {
    const peer = await Charon.start(
      lab,
      'bob',
      pskHostTunnel(b, a, { name: 'c', secret: PSK, proposals: ['aes256-sha256-modp2048'], logLevel: 2 }),
    );
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        PSK,
        'AES256-SHA256-DH14',
        'AESGCM256',
        // Lifetimes whose multiples keep meeting (child rekeys at 0.7 s intervals, the IKE SA's at
        // 2.3 s, each with jitter): child and IKE rekeys land on the same request queue.
        '--rekey',
        '2300,700',
        '--stay',
        '5500',
      ]);
      await init.exited;
      const [state] = events<State>(init, 'state');
      assert.ok(state, init.output());
      assert.ok(state.quiet, `consec never came to rest: ${init.output()}`);
      const audit = events<Audit>(init, 'audit');
      assert.ok(audit.filter((e) => e.id === 5451).length >= 4, `child rekeys: ${JSON.stringify(audit)}`);
      assert.ok(
        audit.some((e) => e.id === 4655 && e.reason === 'rekeyed'),
        'the IKE SA was rekeyed',
      );
      const sas = await peer.listSas();
      assert.equal(sas.length, 1, JSON.stringify(sas));
      assert.equal(sas[0]?.state, 'ESTABLISHED');
      assert.equal(state.sessions, 1);
      // Same IKE SA (new SPIs), same single child on both ends.
      assert.deepEqual(
        sas[0]?.children.filter((c) => c.state === 'INSTALLED').map((c) => [c.spiOut, c.spiIn]),
        state.children,
        JSON.stringify(sas[0]?.children.map((c) => [c.state, c.spiIn, c.spiOut])),
      );
      assert.match(peer.log(), /rekeying IKE_SA|IKE_SA .* rekeyed|received DELETE for IKE_SA/);
    } finally {
      await peer.stop();
    }
  });

  it('strongSwan rekeys the CHILD SA and the IKE SA at short lifetimes; consec follows', async () => {
    const { resp, cfg } = await consecResponder(6000);
    const conn = cfg.connections.c;
    assert.ok(conn);
    Object.assign(conn, { rekey_time: '3s', over_time: '3s' });
    Object.assign(conn.children.c ?? {}, { rekey_time: '1s', life_time: '4s', rand_time: '0s' });
    const peer = await Charon.start(lab, 'alice', cfg);
    try {
      await peer.initiate('c');
      // consec reports its SA database and exits at 6 s; strongSwan's list right after must agree.
      await resp.exited;
      const sas = await peer.listSas();
      const [state] = events<State>(resp, 'state');
      const audit = events<Audit>(resp, 'audit');
      assert.ok(
        audit.filter((e) => e.id === 5451).length >= 3,
        `${JSON.stringify(audit)}\n${peer
          .log()
          .split('\n')
          .filter((l) => /\[(IKE|ENC)\]/.test(l))
          .slice(0, 60)
          .join('\n')}`,
      );
      assert.ok(
        audit.some((e) => e.id === 4655 && e.reason === 'rekeyed'),
        'IKE SA rekeyed by strongSwan',
      );
      assert.equal(sas.length, 1);
      assert.ok(state);
      assert.ok(state.quiet, `consec never came to rest: ${resp.output()}`);
      assert.equal(state.sessions, 1);
      assert.ok(
        state.children.length === 1 &&
          state.children.some(([spiIn, spiOut]) =>
            sas[0]?.children.some((c) => c.state !== 'DELETED' && c.spiIn === spiOut && c.spiOut === spiIn),
          ),
        `${JSON.stringify(state)} vs ${JSON.stringify(sas[0]?.children)}`,
      );
    } finally {
      await peer.stop();
      await resp.stop();
    }
  });

  it('when strongSwan dies, consec detects the dead peer and removes the SA (4655)', async () => {
    const peer = await Charon.start(
      lab,
      'bob',
      pskHostTunnel(b, a, { name: 'c', secret: PSK, proposals: ['aes256-sha256-modp2048'] }),
    );
    let stopped = false;
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        PSK,
        'AES256-SHA256-DH14',
        'AESGCM256',
        '--dpd',
        '500',
        '--retransmits',
        '200,400,800',
        '--stay',
        '8000',
      ]);
      await init.waitFor(/"event":"established"/);
      await peer.kill();
      await peer.stop();
      stopped = true;
      await init.exited;
      const ended = events<Audit>(init, 'audit').find((e) => e.id === 4655);
      assert.match(ended?.reason ?? init.output(), /dead peer/);
      assert.equal(events<State>(init, 'state')[0]?.sessions, 0);
    } finally {
      if (!stopped) await peer.stop();
    }
  });

  it('consec answers strongSwan liveness checks (dpd_delay 1 s): the SA stays up', async () => {
    const { resp, cfg } = await consecResponder(4000);
    Object.assign(cfg.connections.c ?? {}, { dpd_delay: '1s' });
    const peer = await Charon.start(lab, 'alice', cfg);
    try {
      await peer.initiate('c');
      // Several liveness checks answered (each a DPD request and its response in strongSwan's log).
      await waitUntil(() => (peer.log().match(/sending DPD request/g) ?? []).length >= 2, 'strongSwan’s DPD requests');
      const [sa] = await peer.listSas();
      assert.equal(sa?.state, 'ESTABLISHED');
      assert.match(peer.log(), /sending DPD request/);
      assert.doesNotMatch(peer.log(), /giving up after/);
    } finally {
      await peer.stop();
      await resp.stop();
    }
  });

  it('negotiates through 30 % loss (nft numgen: 3 of every 10 datagrams) on both hosts, consec initiating', async () => {
    // A counted pattern (the first three of every ten IKE datagrams each host receives are lost), so
    // loss certainly happens on both sides, every run; the counters prove it.
    const loss = await ikeLoss(lab, ['alice', 'bob']);
    const peer = await Charon.start(
      lab,
      'bob',
      pskHostTunnel(b, a, { name: 'c', secret: PSK, proposals: ['aes256-sha256-modp2048'] }),
    );
    try {
      const init = fixture(lab, 'alice', 'ike-initiate', [
        a,
        b,
        PSK,
        'AES256-SHA256-DH14',
        'AESGCM256',
        '--retransmits',
        '250,250,250,250,250,250,250,250,250,250,250,250',
        '--delete',
      ]);
      await init.exited;
      assert.equal(events(init, 'established').length, 1, init.output());
      for (const [h, n] of Object.entries(await loss.dropped())) assert.ok(n > 0, `${h} lost IKE datagrams`);
    } finally {
      await peer.stop();
      await loss.remove();
    }
  });
});
