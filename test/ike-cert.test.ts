/**
 * Certificate authentication between two consec keying services (in memory), with certificates
 * made by openssl: ECDSA P-256/P-384 and RSA, RFC 7427 and the classic signature methods, and every
 * refusal the Windows rules call for (other CA, wrong EKU, expired, identity not in the certificate).
 * Also transport mode (USE_TRANSPORT_MODE), which strongSwan's userspace data plane cannot test.
 */
import assert from 'node:assert/strict';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { afterEach, before, describe, it } from 'node:test';
import { AuditCollector } from '../src/audit/events.ts';
import { MemoryNetwork } from '../src/ike/bind.ts';
import { IkeManager } from '../src/ike/manager.ts';
import { espProposals, ikeProposals } from '../src/ike/proposals.ts';
import type { PeerConfig } from '../src/ike/session.ts';
import type { CertCredentials } from '../src/ike/tasks/ike-cert.ts';
import { certIdentity } from '../src/ike/tasks/ike-cert.ts';
import { IdType, NotifyType } from '../src/ike/wire/constants.ts';
import { type KeySpec, LabPki } from '../src/lab/pki.ts';
import { mmProposal, qmProposal } from '../src/policy/model.ts';

const A = '192.0.2.1';
const B = '192.0.2.2';
const ip = (a: string) => Buffer.from(a.split('.').map(Number));
const host = (a: string) => ({ type: 7, ipProtocol: 0, startPort: 0, endPort: 65535, start: ip(a), end: ip(a) });
const mm = [mmProposal({ Encryption: 'AES256', Hash: 'SHA384', KeyExchange: 'DH20' })];
const qm = [qmProposal({ Encapsulation: ['ESP'], Encryption: 'AESGCM256', ESPHash: 'AESGMAC256' })];

const cred = (
  issued: { certPem: string; keyPem: string },
  ca: string,
  extra: Partial<CertCredentials> = {},
): CertCredentials => ({
  chain: [new X509Certificate(issued.certPem)],
  key: createPrivateKey(issued.keyPem),
  trustedCas: [new X509Certificate(ca)],
  ...extra,
});

function peer(local: string, remote: string, c: CertCredentials, mode: 'tunnel' | 'transport' = 'tunnel'): PeerConfig {
  const initiator = local === A;
  return {
    name: 'cert',
    ikeProposals: ikeProposals(mm).proposals,
    espProposals: (spi) => espProposals(qm, spi).proposals,
    credentials: { method: 'cert', ...c },
    localId: certIdentity(c),
    tsi: [host(initiator ? local : remote)],
    tsr: [host(initiator ? remote : local)],
    mode,
  };
}

const open: IkeManager[] = [];
afterEach(() => {
  for (const m of open.splice(0)) m.close();
});

async function negotiate(alice: PeerConfig, bob: PeerConfig, classic = false) {
  const net = new MemoryNetwork();
  const auditB = new AuditCollector();
  const auditA = new AuditCollector();
  const b = new IkeManager({ address: B, peerFor: () => bob, audit: auditB, timing: { retransmits: [50, 100] } });
  const a = new IkeManager({ address: A, peerFor: () => undefined, audit: auditA, timing: { retransmits: [50, 100] } });
  open.push(a, b);
  if (classic) {
    // Peers that do not announce RFC 7427 use the classic ECDSA/RSA methods: the network turns
    // SIGNATURE_HASH_ALGORITHMS (a notify payload of 14 octets, type 16431) into an unknown status
    // notify. The in-memory network hands over the sender's own buffer, so the AUTH computations of
    // both sides cover the same (rewritten) IKE_SA_INIT octets.
    const pattern = Buffer.from([0x00, 0x0e, 0x00, 0x00, 0x40, 0x2f]);
    net.drop = (_from, _to, data) => {
      const i = data.indexOf(pattern);
      if (i > 0) data.writeUInt16BE(16530, i + 4);
      return false;
    };
  }
  void a.listen((rx) => net.bind(A, rx));
  void b.listen((rx) => net.bind(B, rx));
  const result = await a.initiate({ remote: B, peer: alice }).then(
    (r) => ({ ok: true as const, r }),
    (err: Error) => ({ ok: false as const, err }),
  );
  return { result, auditA, auditB, b };
}

describe('IKEv2 certificate authentication (consec ↔ consec)', () => {
  let pki: LabPki;
  let other: LabPki;
  const issued: Record<string, { certPem: string; keyPem: string }> = {};
  before(() => {
    pki = LabPki.create();
    other = LabPki.create('another CA');
    for (const [name, ipAddr, spec] of [
      ['alice', A, 'P-384'],
      ['bob', B, 'P-384'],
      ['alice256', A, 'P-256'],
      ['alicersa', A, 'RSA-2048'],
    ] as const)
      issued[name] = pki.issue(name === 'bob' ? 'bob' : 'alice', ipAddr, { spec: spec as KeySpec });
    issued.clientOnly = pki.issue('alice', A, { eku: 'clientAuth' });
    issued.stranger = other.issue('alice', A);
  });

  for (const [who, classic] of [
    ['alice', false],
    ['alice256', false],
    ['alicersa', false],
    ['alice', true],
    ['alicersa', true],
  ] as const) {
    it(`${who === 'alicersa' ? 'RSA' : who === 'alice256' ? 'ECDSA P-256' : 'ECDSA P-384'} ${classic ? 'classic signature method' : 'RFC 7427 digital signature'}: established, 4651 with the peer's certificate`, async () => {
      const { result, auditA, auditB } = await negotiate(
        peer(A, B, cred(issued[who] as never, pki.ca.certPem)),
        peer(B, A, cred(issued.bob as never, pki.ca.certPem)),
        classic,
      );
      assert.ok(result.ok, result.ok ? '' : result.err.message);
      assert.match(result.r.session.peerCertificate?.subject ?? '', /CN=bob/);
      assert.equal(result.r.session.sa.peerSignatureHashes, !classic);
      const ev = auditA.events[0];
      assert.ok(ev?.id === 4651);
      assert.match(ev.mainMode.certificate?.remote?.subject ?? '', /CN=bob/);
      assert.equal(auditB.ids()[0], 4651);
    });
  }

  for (const [name, aliceCred, why] of [
    [
      'a certificate from another CA',
      () => cred(issued.stranger as never, pki.ca.certPem),
      /does not chain to a trusted CA/,
    ],
    [
      'a certificate with only the client authentication EKU',
      () => cred(issued.clientOnly as never, pki.ca.certPem),
      /lacks the IP security IKE intermediate or server authentication EKU/,
    ],
    [
      "an expired certificate (the responder's clock is a year ahead)",
      () => cred(issued.alice as never, pki.ca.certPem),
      /is not valid now/,
    ],
  ] as const) {
    it(`refuses ${name}: AUTHENTICATION_FAILED, 4652 on both sides`, async () => {
      const bobCred = cred(
        issued.bob as never,
        pki.ca.certPem,
        name.includes('expired') ? { now: () => new Date(Date.now() + 365 * 86_400_000) } : {},
      );
      const { result, auditA, auditB } = await negotiate(peer(A, B, aliceCred()), peer(B, A, bobCred));
      assert.equal(result.ok, false);
      assert.ok(
        !result.ok && (result.err as { notify?: number }).notify === NotifyType.AUTHENTICATION_FAILED,
        !result.ok ? result.err.message : '',
      );
      assert.deepEqual(auditA.ids(), [4652]);
      const ev = auditB.events[0];
      assert.ok(ev?.id === 4652);
      assert.match(ev.failure.failureReason, why);
    });
  }

  it('refuses an identity the certificate does not name (IPv4 ID of another address)', async () => {
    const alice = peer(A, B, cred(issued.alice as never, pki.ca.certPem));
    alice.localId = { type: IdType.IPV4_ADDR, data: ip('192.0.2.99') };
    const { result, auditB } = await negotiate(alice, peer(B, A, cred(issued.bob as never, pki.ca.certPem)));
    assert.equal(result.ok, false);
    const ev = auditB.events[0];
    assert.ok(ev?.id === 4652);
    assert.match(ev.failure.failureReason, /identity is not the one its certificate names/);
  });

  it('an IPv4 identity in the certificate subjectAltName is accepted', async () => {
    const alice = peer(A, B, cred(issued.alice as never, pki.ca.certPem));
    alice.localId = { type: IdType.IPV4_ADDR, data: ip(A) };
    const { result } = await negotiate(alice, peer(B, A, cred(issued.bob as never, pki.ca.certPem)));
    assert.ok(result.ok, result.ok ? '' : result.err.message);
  });

  it('RFC 7383: a lost fragment of IKE_AUTH is recovered by retransmission; fragments reassemble on both sides', async () => {
    const big = LabPki.create('RSA root', 'RSA-4096');
    const ca = big.ca.certPem;
    const net = new MemoryNetwork();
    let dropped = 0;
    net.drop = (_f, _t, data) => {
      // The first time, lose the second fragment of the initiator's IKE_AUTH (SKF, fragment 2).
      const skf = data.length > 36 && data[16] === 53 && data.readUInt16BE(32) === 2 && data[19] === 0x08;
      if (skf && dropped === 0) {
        dropped++;
        return true;
      }
      return false;
    };
    const bob = peer(B, A, cred(big.issue('bob', B, { spec: 'RSA-4096' }), ca));
    const b = new IkeManager({ address: B, peerFor: () => bob, timing: { retransmits: [50, 100, 200] } });
    const a = new IkeManager({ address: A, peerFor: () => undefined, timing: { retransmits: [50, 100, 200] } });
    open.push(a, b);
    void a.listen((rx) => net.bind(A, rx));
    void b.listen((rx) => net.bind(B, rx));
    const r = await a.initiate({ remote: B, peer: peer(A, B, cred(big.issue('alice', A, { spec: 'RSA-4096' }), ca)) });
    assert.equal(dropped, 1);
    assert.ok(r.session.sa.fragmentation);
    const fragments = net.sent.filter((d) => d.data[16] === 53);
    assert.ok(
      fragments.some((d) => d.from.address === A) && fragments.some((d) => d.from.address === B),
      'both sides fragmented',
    );
    assert.ok(
      fragments.every((d) => d.data.length <= 1280 - 28),
      'each fragment fits a 1280-octet datagram',
    );
  });

  it('transport mode (USE_TRANSPORT_MODE) is negotiated when both sides want it, refused otherwise', async () => {
    const ok = await negotiate(
      peer(A, B, cred(issued.alice as never, pki.ca.certPem), 'transport'),
      peer(B, A, cred(issued.bob as never, pki.ca.certPem), 'transport'),
    );
    assert.ok(ok.result.ok, ok.result.ok ? '' : ok.result.err.message);
    assert.equal(ok.result.r.child.mode, 'transport');
    const ev = ok.auditB.events.find((e) => e.id === 5451);
    assert.ok(ev?.id === 5451 && ev.quickMode.mode === 'Transport');
    const refused = await negotiate(
      peer(A, B, cred(issued.alice as never, pki.ca.certPem), 'transport'),
      peer(B, A, cred(issued.bob as never, pki.ca.certPem), 'tunnel'),
    );
    assert.equal(refused.result.ok, false);
    assert.match(!refused.result.ok ? refused.result.err.message : '', /NO_PROPOSAL_CHOSEN/);
    assert.ok(refused.auditB.ids().includes(4654), 'the responder audits the quick mode failure');
  });
});
