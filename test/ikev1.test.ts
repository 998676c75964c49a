import assert from 'node:assert/strict';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { AuditCollector } from '../src/audit/events.ts';
import { eventMessage } from '../src/audit/log.ts';
import { MemoryNetwork } from '../src/ike/bind.ts';
import { NO_KERBEROS } from '../src/ike/authip/session.ts';
import { IkeManager } from '../src/ike/manager.ts';
import { espProposals, ikeProposals } from '../src/ike/proposals.ts';
import type { Lifetimes, PeerConfig } from '../src/ike/session.ts';
import type { Credentials } from '../src/ike/tasks/ike-auth.ts';
import { certIdentity } from '../src/ike/tasks/ike-cert.ts';
import { type KeySpec, LabPki } from '../src/lab/pki.ts';
import {
  attrNumber,
  decodeV1,
  decodeV1Payloads,
  encodeV1,
  encodeV1Payloads,
  type V1Message,
  type V1Payload,
} from '../src/ike/v1/codec.ts';
import { AuthMethod, ExchangeType, IdType, PayloadType, VendorId } from '../src/ike/v1/constants.ts';
import { readPhase1 } from '../src/ike/v1/proposals.ts';
import { fragmentMessage, Reassembly } from '../src/ike/v1/fragment.ts';
import { idOfSelector, selectorOfId } from '../src/ike/v1/quick-mode.ts';
import { vendorName } from '../src/ike/v1/trace.ts';
import { mmProposal, qmProposal } from '../src/policy/model.ts';
import type { ChildSaSink } from '../src/sa/sink.ts';
import type { ChildSaSpec } from '../src/sa/spec.ts';

const A = '192.0.2.1';
const B = '192.0.2.2';
const ip = (a: string) => Buffer.from(a.split('.').map(Number));
const hostTs = (a: string) => ({ type: 7, ipProtocol: 0, startPort: 0, endPort: 65535, start: ip(a), end: ip(a) });
const HOUR: Partial<Lifetimes> = { ikeExpireMs: 3_600_000, childExpireMs: 3_600_000 };

class SadRecorder implements ChildSaSink {
  readonly installed = new Map<number, ChildSaSpec>();
  /** SAs outbound traffic may use, and packets "received" per inbound SPI (bumped by a test). */
  readonly active = new Set<number>();
  readonly received = new Map<number, number>();
  install(spec: ChildSaSpec): void {
    this.installed.set(spec.inbound.spi, spec);
    if (spec.outboundActive ?? true) this.active.add(spec.inbound.spi);
  }
  activate(spiIn: number): void {
    if (this.installed.has(spiIn)) this.active.add(spiIn);
  }
  delete(spiIn: number): void {
    this.installed.delete(spiIn);
    this.active.delete(spiIn);
  }
  counters(spiIn: number) {
    const packetsIn = this.received.get(spiIn) ?? 0;
    return this.installed.has(spiIn) ? { packetsIn, packetsOut: 0, bytesIn: 0, bytesOut: 0 } : undefined;
  }
  receive(spiIn: number): void {
    this.received.set(spiIn, (this.received.get(spiIn) ?? 0) + 1);
  }
}

interface Opts {
  psk?: [string, string];
  pfs?: boolean;
  ah?: boolean;
  qmA?: 'AESGCM256' | 'AES256';
  qmB?: 'AESGCM256' | 'AES256';
  mode?: 'tunnel' | 'transport';
  encap?: boolean;
  net?: MemoryNetwork;
  retransmits?: number[];
  lifetimes?: Partial<Lifetimes>;
  /** The responder's half-open count from which it hands out DoS-protection cookies. */
  cookieThreshold?: number;
  /** Certificates instead of the pre-shared key: [initiator's, responder's]. */
  certs?: [Credentials, Credentials];
}

function config(local: string, remote: string, psk: string, o: Opts, qmEnc: 'AESGCM256' | 'AES256'): PeerConfig {
  const qm = o.ah
    ? [qmProposal({ Encapsulation: ['AH'], AHHash: 'SHA256' })]
    : qmEnc === 'AES256'
      ? [qmProposal({ Encapsulation: ['ESP'], Encryption: 'AES256', ESPHash: 'SHA256' })]
      : [qmProposal({ Encapsulation: ['ESP'], Encryption: 'AESGCM256', ESPHash: 'AESGMAC256' })];
  const initiatorSide = local === A;
  return {
    name: 'v1',
    ikeProposals: ikeProposals([mmProposal({ Encryption: 'AES256', Hash: 'SHA256', KeyExchange: 'DH14' })]).proposals,
    espProposals: (spi) => espProposals(qm, spi, o.pfs ? 20 : undefined).proposals,
    ...credentialsOf(local, psk, o),
    tsi: [hostTs(initiatorSide ? local : remote)],
    tsr: [hostTs(initiatorSide ? remote : local)],
    mode: o.mode ?? 'transport',
    lifetimes: { ...HOUR, ...o.lifetimes },
  };
}

function credentialsOf(local: string, psk: string, o: Opts): Pick<PeerConfig, 'credentials' | 'localId' | 'remoteId'> {
  const c = o.certs?.[local === A ? 0 : 1];
  if (c?.method === 'cert') return { credentials: c, localId: certIdentity(c) };
  const remote = local === A ? B : A;
  return {
    credentials: { method: 'psk', psk: Buffer.from(psk) },
    localId: { type: IdType.IPV4_ADDR, data: ip(local) },
    remoteId: { type: IdType.IPV4_ADDR, data: ip(remote) },
  };
}

const open: IkeManager[] = [];
afterEach(() => {
  for (const m of open.splice(0)) m.close();
});

function side(net: MemoryNetwork, local: string, remote: string, o: Opts, psk: string, qm: 'AESGCM256' | 'AES256') {
  const sad = new SadRecorder();
  const audit = new AuditCollector();
  const events: string[] = [];
  const m = new IkeManager({
    address: local,
    peerFor: (a) => (a === remote ? config(local, remote, psk, o, qm) : undefined),
    dataplane: sad,
    audit,
    timing: { retransmits: o.retransmits ?? [40, 80, 160, 320, 640], dpdMs: 0 },
    cookieThreshold: o.cookieThreshold,
    log: (e, d) => events.push(`${e} ${JSON.stringify(d ?? {})}`),
  });
  void m.listen((rx) => net.bind(local, rx));
  open.push(m);
  return { m, sad, audit, events };
}

function pair(o: Opts = {}) {
  const net = o.net ?? new MemoryNetwork();
  const [pa, pb] = o.psk ?? ['memory-psk', 'memory-psk'];
  const a = side(net, A, B, o, pa, o.qmA ?? 'AESGCM256');
  const b = side(net, B, A, o, pb, o.qmB ?? o.qmA ?? 'AESGCM256');
  const start = () =>
    a.m.v1.initiate({ remote: B, peer: config(A, B, pa, o, o.qmA ?? 'AESGCM256'), forceUdpEncapsulation: o.encap });
  return { net, a, b, start };
}

async function until(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

function assertMirrored(a: SadRecorder, b: SadRecorder): void {
  assert.equal(a.installed.size, b.installed.size);
  for (const s of a.installed.values()) {
    const peer = b.installed.get(s.outbound.spi);
    assert.ok(peer, 'the peer receives on the SPI we send with');
    assert.equal(peer.outbound.spi, s.inbound.spi);
    assert.deepEqual(s.outbound.encrKey, peer.inbound.encrKey);
    assert.deepEqual(s.outbound.integKey, peer.inbound.integKey);
    assert.deepEqual(s.inbound.encrKey, peer.outbound.encrKey);
    assert.notDeepEqual(
      Buffer.concat([s.inbound.encrKey, s.inbound.integKey]),
      Buffer.concat([s.outbound.encrKey, s.outbound.integKey]),
      'each direction has keys of its own',
    );
  }
}

describe('IKEv1 codec', () => {
  it('round-trips an SA payload with basic and variable attributes, byte for byte', () => {
    const payloads: V1Payload[] = [
      {
        type: PayloadType.SA,
        doi: 1,
        situation: 1,
        proposals: [
          {
            number: 1,
            protocol: 1,
            spi: Buffer.alloc(0),
            transforms: [
              {
                number: 1,
                id: 1,
                attributes: [
                  { type: 1, value: 7 },
                  { type: 14, value: 256 },
                  { type: 12, value: 86400 },
                ],
              },
              {
                number: 2,
                id: 1,
                attributes: [
                  { type: 1, value: 7 },
                  { type: 12, value: Buffer.from('00015180', 'hex') },
                ],
              },
            ],
          },
        ],
      },
      { type: PayloadType.VID, data: VendorId.RFC3947 },
      { type: PayloadType.N, doi: 1, protocol: 1, spi: Buffer.alloc(16, 1), notify: 24578, data: Buffer.alloc(0) },
      {
        type: PayloadType.D,
        doi: 1,
        protocol: 3,
        spiSize: 4,
        spis: [Buffer.from('01020304', 'hex'), Buffer.from('05060708', 'hex')],
      },
    ];
    const raw = encodeV1(
      { cookieI: Buffer.alloc(8, 0xaa), cookieR: Buffer.alloc(8), exchange: 2, flags: 0, messageId: 0 },
      payloads,
    );
    const msg = decodeV1(raw);
    const back = decodeV1Payloads(msg.header.nextPayload, msg.body);
    assert.equal(back.length, 4);
    const sa = back[0];
    assert.ok(sa?.type === PayloadType.SA);
    const t2 = sa.proposals[0]?.transforms[1];
    assert.equal(attrNumber(t2?.attributes[1]), 86400);
    // Encoding what was decoded gives the same octets.
    assert.deepEqual(encodeV1Payloads(back), msg.body);
  });

  it('refuses what RFC 2408 calls malformed, with the notify it names', () => {
    const good = encodeV1(
      { cookieI: Buffer.alloc(8, 1), cookieR: Buffer.alloc(8), exchange: 2, flags: 0, messageId: 0 },
      [{ type: PayloadType.VID, data: VendorId.DPD }],
    );
    const v2 = Buffer.from(good);
    v2[17] = 0x20;
    assert.throws(() => decodeV1(v2), /major version 2/);
    const long = Buffer.concat([good, Buffer.alloc(1)]);
    assert.throws(() => decodeV1(long), /header length/);
    const unknown = Buffer.from(good);
    unknown[16] = 99;
    const m = decodeV1(unknown);
    assert.throws(() => decodeV1Payloads(m.header.nextPayload, m.body), /payload type 99/);
  });

  it('selectors ↔ ID payloads: hosts, subnets, ranges, single ports', () => {
    const sel = (s: string, e: string, proto = 0, port = 0) => ({
      type: 7,
      ipProtocol: proto,
      startPort: port,
      endPort: port || 65535,
      start: ip(s),
      end: ip(e),
    });
    for (const [ts, idType] of [
      [sel('198.51.100.7', '198.51.100.7'), IdType.IPV4_ADDR],
      [sel('198.51.100.0', '198.51.100.255'), IdType.IPV4_ADDR_SUBNET],
      [sel('198.51.100.5', '198.51.100.9', 6, 443), IdType.IPV4_ADDR_RANGE],
    ] as const) {
      const id = idOfSelector(ts);
      assert.equal(id.idType, idType);
      assert.deepEqual(selectorOfId(id), ts);
    }
  });

  it('names the vendor IDs Windows sends (MS-IKEE)', () => {
    assert.equal(
      vendorName(Buffer.concat([VendorId.MS_NT5_PREFIX, Buffer.from('00000009', 'hex')])),
      'MS NT5 ISAKMPOAKLEY v9',
    );
    assert.equal(vendorName(VendorId.MS_INITIAL_CONTACT), 'Vid-Initial-Contact');
    assert.equal(vendorName(Buffer.concat([VendorId.FRAGMENTATION, Buffer.from('80000000', 'hex')])), 'FRAGMENTATION');
  });
});

/** A Windows-sent message from test/fixtures/windows-ike (its source is named in SOURCE.md there). */
const windowsMessage = (name: string): Buffer =>
  Buffer.from(readFileSync(join(import.meta.dirname, 'fixtures', 'windows-ike', `${name}.hex`), 'utf8').trim(), 'hex');

describe('IKEv1 fragment reassembly (MS-IKEE §3.3.5.3)', () => {
  const header = {
    cookieI: Buffer.alloc(8, 1),
    cookieR: Buffer.alloc(8, 2),
    exchange: ExchangeType.IDENTITY_PROTECTION,
    flags: 0,
    messageId: 0,
  };
  const original = encodeV1({ ...header, flags: 1 }, [{ type: PayloadType.HASH, data: Buffer.alloc(1500, 7) }]);
  const pieces = () => (fragmentMessage(original, 9, 576, 500, false) ?? []).map(decodeV1);

  it('out of order and with duplicates: the original message, octet for octet', () => {
    const r = new Reassembly();
    const [f1, f2, f3] = pieces();
    assert.ok(f1 && f2 && f3 && pieces().length === 3);
    assert.equal(r.add(f3, 'p', true), undefined);
    assert.equal(r.add(f1, 'p', true), undefined);
    assert.equal(r.add(f1, 'p', true), undefined, 'a duplicate is ignored');
    assert.deepEqual(r.add(f2, 'p', true), original);
    r.close();
  });

  it('drops what MS-IKEE says to drop, and fragments of SAs we do not hold', () => {
    const r = new Reassembly();
    const [f1, f2, f3] = pieces() as [V1Message, V1Message, V1Message];
    assert.equal(r.add(f1, 'p', false), undefined);
    assert.equal(r.add(f2, 'p', false), undefined);
    assert.equal(r.add(f3, 'p', false), undefined, 'unknown cookies: nothing kept');
    // Two fragments flagged LAST: the message is discarded, the rest no longer completes it.
    const twoLast = encodeV1(header, [
      { type: PayloadType.FRAGMENT, id: 9, number: 2, last: true, data: Buffer.alloc(4) },
    ]);
    assert.equal(r.add(f3, 'q', true), undefined);
    assert.equal(r.add(decodeV1(twoLast), 'q', true), undefined);
    assert.equal(r.add(f1, 'q', true), undefined);
    assert.equal(r.add(f2, 'q', true), undefined);
    // A fragment that shares its message with another payload is not a fragment message.
    const mixed = encodeV1(header, [
      { type: PayloadType.FRAGMENT, id: 3, number: 1, last: true, data: original },
      { type: PayloadType.VID, data: Buffer.alloc(16) },
    ]);
    assert.equal(r.add(decodeV1(mixed), 'p', true), undefined);
    // Reassembled octets that are not a message with these cookies are dropped.
    const alien = encodeV1(header, [
      { type: PayloadType.FRAGMENT, id: 4, number: 1, last: true, data: Buffer.alloc(40, 9) },
    ]);
    assert.equal(r.add(decodeV1(alien), 'p', true), undefined);
    r.close();
  });
});

describe('what Windows sends (known answers: test/fixtures/windows-ike/SOURCE.md)', () => {
  it('Windows 8/10 Main Mode message 1: decodes, re-encodes octet for octet, its transforms and vendor IDs read as Windows means them', () => {
    const raw = windowsMessage('win10-ikev1-mm1');
    assert.equal(raw.length, 408);
    const msg = decodeV1(raw);
    assert.equal(msg.header.exchange, ExchangeType.IDENTITY_PROTECTION);
    assert.equal(msg.header.cookieR.toString('hex'), '0000000000000000');
    const payloads = decodeV1Payloads(msg.header.nextPayload, msg.body);
    assert.deepEqual(encodeV1(msg.header, payloads), raw, 'byte for byte');
    const sa = payloads.find((p) => p.type === PayloadType.SA);
    assert.ok(sa?.type === PayloadType.SA);
    const read = (sa.proposals[0]?.transforms ?? []).map(readPhase1);
    assert.deepEqual(
      read.map(
        (r) =>
          r && `${r.suite.hash}/aes${r.suite.keyBytes * 8}/${r.group}/${AuthMethod[r.authMethod]}/${r.lifeSeconds}`,
      ),
      ['sha1/aes256/20/PSK/28800', 'sha1/aes128/19/PSK/28800', 'sha1/aes256/14/PSK/28800', undefined, undefined],
      'the three AES transforms are usable; 3DES ones are not offered back',
    );
    const vids = payloads
      .filter((p) => p.type === PayloadType.VID)
      .map((p) => vendorName((p as { data: Buffer }).data));
    assert.deepEqual(vids.slice(1), [
      'MS NT5 ISAKMPOAKLEY v9',
      'RFC 3947',
      'draft-ietf-ipsec-nat-t-ike-02\\n',
      'FRAGMENTATION',
      'MS-Negotiation Discovery Capable',
      'Vid-Initial-Contact',
      'IKE CGA version 1',
    ]);
  });

  it('a consec responder answers that message 1: one transform (the first it accepts, echoed as sent), RFC 3947 over the draft', async () => {
    const net = new MemoryNetwork();
    const W = '192.0.2.77';
    const m = new IkeManager({
      address: B,
      peerFor: (a) =>
        a === W
          ? {
              ...config(B, W, 'windows-psk', {}, 'AESGCM256'),
              ikeProposals: ikeProposals([mmProposal({ Encryption: 'AES256', Hash: 'SHA1', KeyExchange: 'DH20' })])
                .proposals,
            }
          : undefined,
      audit: new AuditCollector(),
      timing: { retransmits: [1000], dpdMs: 0 },
    });
    open.push(m);
    void m.listen((rx) => net.bind(B, rx));
    const answers: Buffer[] = [];
    const windows = net.bind(W, { ike: (d: Buffer) => answers.push(d), esp: () => {} } as never);
    const raw = windowsMessage('win10-ikev1-mm1');
    windows.sendIke(raw, 500, { address: B, port: 500 });
    await until(() => answers.length === 1);
    const answer = decodeV1(answers[0] as Buffer);
    assert.equal(answer.header.cookieI.toString('hex'), raw.subarray(0, 8).toString('hex'));
    assert.notEqual(answer.header.cookieR.toString('hex'), '0000000000000000');
    const payloads = decodeV1Payloads(answer.header.nextPayload, answer.body);
    const sa = payloads.find((p) => p.type === PayloadType.SA);
    assert.ok(sa?.type === PayloadType.SA);
    const offered = decodeV1Payloads(decodeV1(raw).header.nextPayload, decodeV1(raw).body).find(
      (p) => p.type === PayloadType.SA,
    );
    assert.ok(offered?.type === PayloadType.SA);
    assert.equal(sa.proposals[0]?.transforms.length, 1);
    assert.deepEqual(
      sa.proposals[0]?.transforms[0],
      offered.proposals[0]?.transforms[0],
      'transform 1 echoed as Windows sent it',
    );
    const vids = payloads
      .filter((p) => p.type === PayloadType.VID)
      .map((p) => vendorName((p as { data: Buffer }).data));
    assert.ok(vids.includes('RFC 3947') && !vids.some((v) => v.startsWith('draft-')), vids.join(', '));
    assert.equal(m.v1.sessions().length, 1, 'one half-open ISAKMP SA');
  });

  it('a host that offers AuthIP alongside (its IKEv1 message 1 marked MS-MamieExists) is not answered over IKEv1 where this host answers AuthIP (MS-AIPS §3.3.5.2); without the mark, or without AuthIP here, IKEv1 answers', async () => {
    const W = '192.0.2.77';
    const raw = windowsMessage('win10-ikev1-mm1');
    const msg = decodeV1(raw);
    const payloads = decodeV1Payloads(msg.header.nextPayload, msg.body);
    const marked = encodeV1(msg.header, [...payloads, { type: PayloadType.VID, data: VendorId.MS_MAMIE_EXISTS }]);
    assert.equal(vendorName(VendorId.MS_MAMIE_EXISTS), 'MS-MamieExists');
    const psk = {
      ...config(B, W, 'windows-psk', {}, 'AESGCM256'),
      ikeProposals: ikeProposals([mmProposal({ Encryption: 'AES256', Hash: 'SHA1', KeyExchange: 'DH20' })]).proposals,
    };
    const responder = (authIp: boolean) => {
      const net = new MemoryNetwork();
      const log: string[] = [];
      const m = new IkeManager({
        address: B,
        peerFor: (a) => (a === W ? psk : undefined),
        // This host's rule for W starts with computer Kerberos (AuthIP), then the key over IKEv1.
        authIpPeerFor: (a) => (a === W && authIp ? { ...psk, credentials: { method: 'kerberos' } } : undefined),
        kerberos: authIp ? NO_KERBEROS : undefined,
        audit: new AuditCollector(),
        timing: { retransmits: [1000], dpdMs: 0 },
        log: (e) => log.push(e),
      });
      open.push(m);
      void m.listen((rx) => net.bind(B, rx));
      const answers: Buffer[] = [];
      const windows = net.bind(W, { ike: (d: Buffer) => answers.push(d), esp: () => {} } as never);
      return { m, log, answers, send: (d: Buffer) => windows.sendIke(d, 500, { address: B, port: 500 }) };
    };
    const r = responder(true);
    r.send(marked);
    await until(() => r.log.includes('IKEv1 Main Mode discarded: the peer offers AuthIP alongside, which is answered'));
    assert.equal(r.answers.length, 0, 'nothing sent back');
    assert.equal(r.m.v1.sessions().length, 0, 'no state kept');
    r.send(raw);
    await until(() => r.answers.length === 1);
    assert.equal(decodeV1(r.answers[0] as Buffer).header.exchange, ExchangeType.IDENTITY_PROTECTION);
    const plain = responder(false);
    plain.send(marked);
    await until(() => plain.answers.length === 1);
    assert.equal(plain.m.v1.sessions().length, 1, 'a host without AuthIP answers the marked message over IKEv1');
  });

  it('Windows Server 2008 R2 AuthIP message 1 (exchange 243): the header decodes, and the IKEv1 module leaves it alone — no answer, no state — so Windows falls back to IKEv1', async () => {
    const raw = windowsMessage('win2008r2-authip-mm1');
    const msg = decodeV1(raw);
    assert.equal(msg.header.exchange, 243);
    assert.equal(msg.header.length, raw.length);
    const net = new MemoryNetwork();
    const audit = new AuditCollector();
    const m = new IkeManager({
      address: B,
      peerFor: (a) => config(B, a, 'windows-psk', {}, 'AESGCM256'),
      audit,
      timing: { retransmits: [1000], dpdMs: 0 },
    });
    open.push(m);
    void m.listen((rx) => net.bind(B, rx));
    const windows = net.bind('192.0.2.78', { ike: () => assert.fail('no answer to AuthIP'), esp: () => {} } as never);
    windows.sendIke(raw, 500, { address: B, port: 500 });
    // The same message as IKEv1 Main Mode would be answered: wait for that to prove delivery.
    const mm1 = windowsMessage('win10-ikev1-mm1');
    const answered: Buffer[] = [];
    const probe = net.bind('192.0.2.79', { ike: (d: Buffer) => answered.push(d), esp: () => {} } as never);
    probe.sendIke(mm1, 500, { address: B, port: 500 });
    await until(() => net.sent.some((x) => x.to.address === '192.0.2.79'));
    assert.equal(net.sent.filter((x) => x.to.address === '192.0.2.78').length, 0);
    assert.equal(m.v1.sessions().filter((s) => s.remote.address === '192.0.2.78').length, 0);
  });
});

describe('IKEv1 Main Mode + Quick Mode (consec ↔ consec, in memory)', () => {
  it('PSK, AES-256/SHA-256/DH14, ESP AES-GCM-256 transport: both SADs hold mirrored SAs with the same keys', async () => {
    const { a, b, start } = pair();
    const { session, child } = await start();
    assert.equal(session.state, 'established');
    assert.equal(child.child.mode, 'transport');
    await until(() => b.sad.installed.size === 1);
    assertMirrored(a.sad, b.sad);
    const [bs] = b.m.v1.sessions();
    assert.equal(bs?.state, 'established');
    assert.deepEqual(a.audit.ids(), [4650, 5451]);
    assert.deepEqual(b.audit.ids(), [4650, 5451]);
    const spec = [...a.sad.installed.values()][0];
    assert.equal(spec?.cipher, 'aes-gcm-16');
    assert.equal(spec?.inbound.encrKey.length, 36, 'AES-256 key + 4-octet salt');
  });

  it('PFS (ECP-384) with ESP AES-CBC-256/SHA-256 in tunnel mode, and AH', async () => {
    for (const o of [{ pfs: true, qmA: 'AES256' as const, mode: 'tunnel' as const }, { ah: true }]) {
      const { a, b, start } = pair(o);
      const { child } = await start();
      assert.equal(child.child.pfsGroup, o.pfs ? 20 : undefined);
      await until(() => b.sad.installed.size === 1);
      assertMirrored(a.sad, b.sad);
      const spec = [...b.sad.installed.values()][0];
      assert.equal(spec?.protocol, o.ah ? 'ah' : 'esp');
      assert.equal(spec?.mode, o.mode ?? 'transport');
      assert.equal(spec?.integrity, 'sha256-128');
      for (const m of open.splice(0)) m.close();
    }
  });

  it('forced encapsulation floats to UDP 4500 and both sides carry ESP in UDP', async () => {
    const { a, b, net, start } = pair({ encap: true });
    const { session } = await start();
    assert.equal(session.floated, true);
    await until(() => b.sad.installed.size === 1);
    assert.equal([...a.sad.installed.values()][0]?.udpEncapsulation, true);
    assert.equal([...b.sad.installed.values()][0]?.udpEncapsulation, true);
    assert.ok(
      net.sent.some((d) => d.to.port === 4500 && d.data.readUInt32BE(0) === 0),
      'Main Mode 5 went to 4500 with the marker',
    );
  });

  it('a second child SA on the same ISAKMP SA, then Delete both ways removes them at both ends', async () => {
    const { a, b, start } = pair();
    const { session } = await start();
    // A second child for TCP only (the same selectors again would be a renewal of the first).
    await a.m.v1.createChild(session, {
      tsi: [{ ...hostTs(A), ipProtocol: 6 }],
      tsr: [{ ...hostTs(B), ipProtocol: 6 }],
    });
    await until(() => b.sad.installed.size === 2);
    assertMirrored(a.sad, b.sad);
    const [first] = session.children.values();
    assert.ok(first);
    await session.deleteChild(first, 'test');
    await until(() => b.sad.installed.size === 1).catch((e: Error) => {
      throw new Error(`${e.message}\n${b.events.join('\n')}`);
    });
    const [bs] = b.m.v1.sessions();
    assert.ok(bs);
    await bs.delete('test');
    await until(() => a.m.v1.sessions().length === 0 && a.sad.installed.size === 0);
    assert.ok(a.audit.ids().includes(4655));
  });

  it("the Phase 1 responder starts a Quick Mode (the peer's own child rekey) on the ISAKMP SA we initiated: accepted within the rule's selectors", async () => {
    const { a, b, start } = pair();
    await start();
    await until(() => b.sad.installed.size === 1);
    const [bs] = b.m.v1.sessions();
    assert.ok(bs);
    const first = [...a.sad.installed.keys()];
    // The same selectors: b's new child renews the first, which b then deletes at a.
    const renewed = await b.m.v1.createChild(bs, { tsi: [hostTs(B)], tsr: [hostTs(A)] });
    await until(() => a.sad.installed.size === 1 && !a.sad.installed.has(first[0] as number)).catch((e: Error) => {
      throw new Error(`${e.message}\n${a.events.join('\n')}`);
    });
    assert.ok(a.sad.installed.has(renewed.child.spiOut.readUInt32BE(0)), 'a receives on the SPI b sends with');
    assertMirrored(a.sad, b.sad);
  });

  it('Phase 1 renewal before expiry (make-before-break): the new ISAKMP SA inherits the child SA at both ends, the old one is deleted, no child SA lost — twice', async () => {
    const { a, b, start } = pair({ lifetimes: { ikeExpireMs: 2000 } });
    const { session, child } = await start();
    const spi = child.child.spiIn.readUInt32BE(0);
    await until(() => b.sad.installed.size === 1);
    const renewed = (m: IkeManager, old: unknown) => () => {
      const up = m.v1.sessions().filter((s) => s.state === 'established');
      return up.length === 1 && up[0] !== old && up[0]?.children.size === 1;
    };
    await until(renewed(a.m, session), 4000);
    const [second] = a.m.v1.sessions();
    assert.ok(second?.children.has(spi), 'the child SA moved to the new ISAKMP SA');
    assert.equal(session.state, 'dead');
    await until(() => b.m.v1.sessions().length === 1 && b.m.v1.sessions()[0]?.children.size === 1);
    await until(renewed(a.m, second), 4000);
    await until(() => b.m.v1.sessions().length === 1 && b.m.v1.sessions()[0]?.children.size === 1);
    assert.deepEqual([...a.sad.installed.keys()], [spi], 'the data plane kept the one SA throughout');
    assert.equal(b.sad.installed.size, 1);
    for (const side of [a, b]) {
      assert.ok(!side.audit.ids().includes(5452), 'no child SA ended');
      assert.deepEqual(
        side.audit.ids().filter((id) => id === 4650),
        [4650, 4650, 4650],
      );
    }
    // Each old ISAKMP SA ended as renewed — retired here, or deleted by the peer that retired it first.
    const ended = a.audit.events.filter((e) => e.id === 4655).map((e) => ('reason' in e ? e.reason : ''));
    assert.equal(ended.length, 2);
    for (const r of ended) assert.match(r, /^(rekeyed|deleted by the peer)$/);
    // Quick Mode still works on the newest ISAKMP SA: a new child with the same selectors replaces
    // the inherited one, which is deleted at the peer through the new ISAKMP SA.
    const third = a.m.v1.sessions()[0] as NonNullable<typeof second>;
    const more = await a.m.v1.createChild(third, config(A, B, 'memory-psk', {}, 'AESGCM256'));
    const next = more.child.spiIn.readUInt32BE(0);
    assert.deepEqual([...third.children.keys()], [next]);
    await until(() => b.sad.installed.size === 1 && !b.sad.installed.has(child.child.spiOut.readUInt32BE(0)));
    assert.deepEqual([...a.sad.installed.keys()], [next]);
  });

  it("a child made on the old ISAKMP SA after the peer's reauthentication began (strongSwan's race): when the peer deletes that SA, the child is renewed over the new one at once", async () => {
    const { a, b, start } = pair();
    const { session } = await start();
    await until(() => b.sad.installed.size === 1);
    // a reauthenticates (as charon does: the new ISAKMP SA first) …
    a.m.v1.renewPhase1(session);
    await until(() => b.m.v1.sessions().filter((s) => s.state === 'established').length === 2);
    // … and a Quick Mode still ends on the old one: b holds that child on the old SA.
    const late = await a.m.v1.createChild(session, { tsi: [hostTs(A)], tsr: [hostTs(B)] });
    const lateAtB = late.child.spiOut.readUInt32BE(0);
    await until(() => b.sad.installed.has(lateAtB));
    // a deletes the old ISAKMP SA (after its grace): b renews that child over the new SA itself.
    await until(() => b.events.some((e) => e.startsWith('child SA renewed at once')), 6000).catch((e: Error) => {
      throw new Error(`${e.message}\n${b.events.join('\n')}`);
    });
    await until(() => b.sad.installed.size === 1 && !b.sad.installed.has(lateAtB), 6000);
    const [renewed] = [...b.sad.installed.values()];
    assert.ok(renewed && a.sad.installed.has(renewed.outbound.spi), 'a receives on what b now sends with');
    // b's Delete of the child it replaced reaches a a moment later.
    await until(() => a.sad.installed.size === 1, 6000);
    assertMirrored(a.sad, b.sad);
    const [only] = b.m.v1.sessions();
    assert.equal(b.m.v1.sessions().length, 1);
    assert.equal(only?.children.size, 1, 'the renewed child lives on the new ISAKMP SA');
  });

  it('DoS protection (MS-IKEE §3.9): a responder past its threshold answers message 1 with a stateless cookie (4646), the initiator returns it, the SA comes up; a wrong cookie leaves no state', async () => {
    const { b, net, start } = pair({ cookieThreshold: 0 });
    const { session } = await start();
    assert.equal(session.state, 'established');
    await until(() => b.audit.ids().includes(5451));
    assert.deepEqual(b.audit.ids(), [4646, 4650, 5451]);
    const [bs] = b.m.v1.sessions();
    // The responder's cookie is the one it handed out: no state was kept before it came back.
    const toA = net.sent.filter((x) => x.to.address === A).map((x) => decodeV1(x.data));
    const first = toA[0];
    assert.ok(first && first.header.cookieR.equals(Buffer.alloc(8)), 'the cookie answer carries no responder cookie');
    const n = decodeV1Payloads(first.header.nextPayload, first.body)[0];
    assert.ok(n?.type === PayloadType.N && n.notify === 40004);
    assert.deepEqual(n.data, bs?.cookieR);
    // Message 1 with a made-up cookie: dropped, nothing kept.
    const forged = Buffer.from(net.sent.find((x) => x.to.address === B)?.data as Buffer);
    forged.fill(0x41, 0, 8);
    forged.fill(0x42, 8, 16);
    const before = b.m.v1.sessions().length;
    net.bind('192.0.2.66', { ike: () => {}, esp: () => {} } as never).sendIke(forged, 500, { address: B, port: 500 });
    // A fresh message 1 after it (delivered in order): once its cookie answer is out, the forged one was handled.
    const fresh = Buffer.from(forged);
    fresh.fill(0x43, 0, 8);
    fresh.fill(0, 8, 16);
    net.bind('192.0.2.67', { ike: () => {}, esp: () => {} } as never).sendIke(fresh, 500, { address: B, port: 500 });
    await until(() => net.sent.some((x) => x.to.address === '192.0.2.67'));
    assert.equal(b.m.v1.sessions().length, before);
    assert.equal(net.sent.filter((x) => x.to.address === '192.0.2.66').length, 0, 'the forged message got no answer');
  });

  it('survives 30 % loss: retransmissions and answers to duplicates', async () => {
    const net = new MemoryNetwork();
    let n = 0;
    net.drop = () => [1, 4, 7].includes(n++ % 10);
    const { a, b, start } = pair({ net, retransmits: [30, 60, 120, 240, 480, 960] });
    await start();
    await until(() => b.sad.installed.size === 1, 5000);
    assertMirrored(a.sad, b.sad);
    assert.ok(n > 9, 'datagrams were lost');
  });

  /** The initiator's Quick Mode message 3 (HASH(3) only: the short one) of exchange `mid`. */
  const isQuickMode3 = (data: Buffer, mid: number) =>
    data.length >= 28 && data[18] === ExchangeType.QUICK_MODE && data.readUInt32BE(20) === mid && data.length < 100;

  it('a child renewal whose Quick Mode message 3 never arrives: while the peer keeps sending on the old SA only, the new one carries no traffic; it is given up (Delete) and renewed again, which the peer takes', async () => {
    const net = new MemoryNetwork();
    const { a, b, start } = pair({ net });
    const { child } = await start();
    const old = child.child.spiIn.readUInt32BE(0);
    await until(() => b.sad.installed.size === 1);
    const mids: number[] = [];
    net.drop = (from, _to, data) => {
      if (from !== A || data[18] !== ExchangeType.QUICK_MODE) return false;
      const mid = data.readUInt32BE(20);
      if (!mids.includes(mid)) mids.push(mid);
      return mid === mids[0] && isQuickMode3(data, mid);
    };
    // The peer keeps sending on the SA it has: ESP counted on the old SA at a.
    const talk = setInterval(() => a.sad.receive(old), 5);
    try {
      a.m.v1.expire(old, false);
      await until(() => a.sad.installed.size === 2);
      const [lost] = [...a.sad.installed.keys()].filter((k) => k !== old);
      assert.ok(lost !== undefined);
      assert.ok(!a.sad.active.has(lost), 'the unconfirmed SA carries no outbound traffic');
      // Given up and renewed again; the second Quick Mode gets through and b installs it.
      await until(() => !a.sad.installed.has(lost) && b.sad.installed.size === 2, 4000).catch((e: Error) => {
        throw new Error(`${e.message}\n${a.events.join('\n')}`);
      });
      assert.equal(mids.length, 2, 'one more Quick Mode');
      assert.ok(a.events.some((e) => e.startsWith('child SA renewal not taken by the peer')));
      const [taken] = [...a.sad.installed.keys()].filter((k) => k !== old);
      assert.ok(taken !== undefined && b.sad.installed.get(a.sad.installed.get(taken)?.outbound.spi ?? 0));
      // The peer moves to it: ESP arrives on it, and outbound traffic follows.
      clearInterval(talk);
      a.m.noteEsp(taken);
      assert.ok(a.sad.active.has(taken));
      assertMirrored(
        a.sad,
        Object.assign(new SadRecorder(), {
          installed: new Map([...b.sad.installed].filter(([, v]) => a.sad.installed.has(v.outbound.spi))),
        }),
      );
    } finally {
      clearInterval(talk);
    }
  });

  it('a child renewal with a quiet peer: nothing tells against the new SA, so it carries traffic after the first retransmission wait, and nothing is given up', async () => {
    const { a, b, start } = pair();
    const { child } = await start();
    const old = child.child.spiIn.readUInt32BE(0);
    await until(() => b.sad.installed.size === 1);
    a.m.v1.expire(old, false);
    await until(() => a.sad.installed.size === 2 && b.sad.installed.size === 2);
    const [fresh] = [...a.sad.installed.keys()].filter((k) => k !== old);
    assert.ok(fresh !== undefined);
    await until(() => a.sad.active.has(fresh));
    await new Promise((r) => setTimeout(r, 400));
    assert.ok(a.sad.installed.has(fresh));
    assert.ok(!a.events.some((e) => e.startsWith('child SA renewal not taken by the peer')));
  });

  it('different pre-shared keys: 4653 at both ends, no SA', async () => {
    const { a, b, start } = pair({ psk: ['one-key', 'another-key'] });
    await assert.rejects(start(), /pre-shared keys differ|did not answer/);
    await until(() => b.audit.ids().includes(4653));
    assert.ok(a.audit.ids().includes(4653));
    const e = b.audit.events.find((x) => x.id === 4653);
    assert.ok(e && 'failure' in e);
    assert.match(e.failure.failureReason, /pre-shared keys differ/);
    assert.match(eventMessage(e), /Failure Reason:\t+IKE authentication credentials are unacceptable\./);
    assert.equal(a.sad.installed.size + b.sad.installed.size, 0);
  });

  describe('certificates (RFC 2409 §5.1 signatures, RFC 4754 ECDSA)', () => {
    let pki: LabPki;
    let other: LabPki;
    const issued: Record<string, { certPem: string; keyPem: string }> = {};
    before(() => {
      pki = LabPki.create();
      other = LabPki.create('another CA');
      for (const spec of ['P-256', 'P-384', 'RSA-2048'] as const) {
        issued[`a${spec}`] = pki.issue('alice', A, { spec: spec as KeySpec });
        issued[`b${spec}`] = pki.issue('bob', B, { spec: spec as KeySpec });
      }
      issued.stranger = other.issue('alice', A, { spec: 'P-256' });
      issued.clientOnly = pki.issue('alice', A, { spec: 'P-256', eku: 'clientAuth' });
    });
    const cert = (i: { certPem: string; keyPem: string }, ca = pki.ca.certPem): Credentials => ({
      method: 'cert',
      chain: [new X509Certificate(i.certPem)],
      key: createPrivateKey(i.keyPem),
      trustedCas: [new X509Certificate(ca)],
    });

    for (const spec of ['P-256', 'P-384', 'RSA-2048'] as const) {
      it(`${spec.startsWith('RSA') ? 'RSA signature' : `ECDSA ${spec}`}: Main Mode with CERT and SIG, 4651 naming the peer's certificate, ESP SAs installed`, async () => {
        const { a, b, start } = pair({ certs: [cert(issued[`a${spec}`] as never), cert(issued[`b${spec}`] as never)] });
        const { session } = await start();
        assert.equal(session.state, 'established');
        assert.match(session.peerCertificate?.subject ?? '', /CN=bob/);
        await until(() => b.sad.installed.size === 1);
        assertMirrored(a.sad, b.sad);
        const ev = a.audit.events[0];
        assert.ok(ev?.id === 4651);
        assert.equal(ev.mainMode.authenticationMethod, 'Certificate');
        assert.match(ev.mainMode.certificate?.remote?.subject ?? '', /CN=bob/);
        assert.deepEqual(b.audit.ids(), [4651, 5451]);
        const [bs] = b.m.v1.sessions();
        assert.match(bs?.peerCertificate?.subject ?? '', /CN=alice/);
      });
    }

    for (const [name, alice, why] of [
      ['a certificate from another CA', () => issued.stranger, /does not chain to a trusted CA/],
      [
        'a certificate with only the client authentication EKU',
        () => issued.clientOnly,
        /lacks the IP security IKE intermediate or server authentication EKU/,
      ],
    ] as const) {
      it(`${name}: refused by the responder (4652), no SA`, async () => {
        const { a, b, start } = pair({ certs: [cert(alice() as never), cert(issued['bP-256'] as never)] });
        await assert.rejects(start());
        await until(() => b.audit.ids().includes(4652));
        const e = b.audit.events.find((x) => x.id === 4652);
        assert.ok(e && 'failure' in e);
        assert.match(e.failure.failureReason, why);
        assert.equal(a.sad.installed.size + b.sad.installed.size, 0);
      });
    }

    it('IKE fragmentation (MS-IKEE §3.3): Main Mode 5 and 6 with RSA-4096 chains cross as 576-octet fragments both ways and are reassembled', async () => {
      const big = { a: pki.issue('alice', A, { spec: 'RSA-4096' }), b: pki.issue('bob', B, { spec: 'RSA-4096' }) };
      const { a, b, net, start } = pair({ certs: [cert(big.a), cert(big.b)] });
      const { session } = await start();
      assert.equal(session.state, 'established');
      assert.ok(session.peerFragmentation);
      await until(() => b.sad.installed.size === 1);
      for (const [from, to] of [
        [A, B],
        [B, A],
      ]) {
        const frags = net.sent.filter((x) => x.from.address === from && x.to.address === to && x.data[16] === 132);
        assert.ok(frags.length >= 3, `${from} sent its certificate message in fragments`);
        for (const f of frags)
          assert.ok(f.data.length + 28 <= 576, `a fragment datagram of ${f.data.length + 28} octets`);
      }
      assert.deepEqual(a.audit.ids(), [4651, 5451]);
    });

    it('an RSA initiator and an ECDSA responder share no auth method: NO-PROPOSAL-CHOSEN in Main Mode', async () => {
      const { b, start } = pair({ certs: [cert(issued['aRSA-2048'] as never), cert(issued['bP-256'] as never)] });
      await assert.rejects(start(), /refused Main Mode|NO.PROPOSAL.CHOSEN/i);
      await until(() => b.audit.ids().length > 0);
      assert.equal(b.sad.installed.size, 0);
    });
  });

  it('no common Quick Mode proposal: NO-PROPOSAL-CHOSEN and 4654', async () => {
    const { b, start } = pair({ qmA: 'AES256', qmB: 'AESGCM256' });
    await assert.rejects(start(), /NO_PROPOSAL_CHOSEN|refused Quick Mode/);
    assert.ok(b.audit.ids().includes(4654));
    const e = b.audit.events.find((x) => x.id === 4654);
    assert.ok(e);
    assert.match(eventMessage(e), /Failure Reason:\t+Policy match error\.\n\tDetail:/);
  });

  it('Aggressive Mode is refused with INVALID-EXCHANGE-TYPE and audited', async () => {
    const { b, net } = pair();
    const probe = new AuditCollector();
    const got: Buffer[] = [];
    net.bind('192.0.2.9', { ike: (m) => got.push(m) });
    const aggressive = encodeV1(
      {
        cookieI: Buffer.alloc(8, 7),
        cookieR: Buffer.alloc(8),
        exchange: ExchangeType.AGGRESSIVE,
        flags: 0,
        messageId: 0,
      },
      [{ type: PayloadType.VID, data: VendorId.DPD }],
    );
    // From an address bob has a rule for would be the same; an unknown one is refused alike.
    (b.m as unknown as { ike(d: Buffer, f: { address: string; port: number }, p: 500): void }).ike(
      aggressive,
      { address: '192.0.2.9', port: 500 },
      500,
    );
    await until(() => got.length === 1);
    const reply = decodeV1(got[0] as Buffer);
    const [n] = decodeV1Payloads(reply.header.nextPayload, reply.body);
    assert.ok(n?.type === PayloadType.N);
    assert.equal(n.notify, 7);
    assert.ok(b.audit.ids().includes(4653));
    assert.equal(probe.events.length, 0);
  });

  it('fuzz: 100,000 mutated datagrams at a responder — no exception escapes, half-open SAs stay capped', async () => {
    const net = new MemoryNetwork({ record: false });
    const { a, b, start } = pair({ net });
    // Real messages of a negotiation to mutate.
    const seen: Buffer[] = [];
    const capture = new MemoryNetwork();
    const c = pair({ net: capture });
    await c.start();
    for (const d of capture.sent) seen.push(d.to.port === 4500 ? d.data.subarray(4) : d.data);
    await start();
    const rx = b.m as unknown as { ike(d: Buffer, f: { address: string; port: number }, p: 500 | 4500): void };
    let count = 0;
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: seen.length - 1 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
        fc.integer({ min: 0, max: 3 }),
        (which, flips, cut) => {
          const d = Buffer.from(seen[which] as Buffer);
          for (const [at, v] of flips) d[at % d.length] = v;
          const m = cut ? d.subarray(0, Math.max(0, d.length - cut * 7)) : d;
          rx.ike(m, { address: A, port: 500 }, count++ % 2 ? 500 : 4500);
        },
      ),
      { numRuns: 100_000 },
    );
    assert.ok(b.m.v1.halfOpen <= 4096);
    assert.equal(b.m.v1.sessions().filter((s) => s.state === 'established').length >= 1, true);
    assert.ok(a.sad.installed.size >= 1);
  });
});
