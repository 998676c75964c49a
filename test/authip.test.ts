/**
 * AuthIP ([MS-AIPS]) wire format: a Main Mode message 1 Windows Server 2008 R2 sent (captured in the
 * wild; test/fixtures/windows-ike/SOURCE.md) decoded field by field and re-encoded byte for byte;
 * each AuthIP payload built from its section's field table; strict decoding under 100,000 mutations.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  type AuthIpPayload,
  decodeAuthIp,
  encodeAuthIp,
  encodeAuthIpPayloads,
  findAllAuthIp,
  findAuthIp,
} from '../src/ike/authip/codec.ts';
import {
  AuthIpExchange,
  AuthIpMethod,
  AuthIpNotify,
  AuthIpPayloadType,
  AuthIpVendorId,
  GssFlags,
  RELIABLE_NOTIFY_FLAG,
} from '../src/ike/authip/constants.ts';
import { V1DecodeError } from '../src/ike/v1/codec.ts';
import {
  type AuthIpSuite,
  Transcript,
  aKdf,
  authHash,
  extendedAuthHash,
  extendedModeKey,
  mainModeKeys,
  openMessage,
  quickModeKeymat,
  sealMessage,
} from '../src/ike/authip/crypto.ts';
import { execFileSync } from 'node:child_process';
import { after, before } from 'node:test';
import { AuthIpManager } from '../src/ike/authip/manager.ts';
import type { AuthIpConfig } from '../src/ike/authip/session.ts';
import { espProposals, ikeProposals } from '../src/ike/proposals.ts';
import { SpiRegistry } from '../src/ike/spi.ts';
import { AuditCollector } from '../src/audit/events.ts';
import { windowsFailureReason } from '../src/audit/log.ts';
import { GssContext } from '../src/io/gss.ts';
import { userInitiator } from '../src/daemon/kerberos.ts';
import { LabDomain } from '../src/lab/kdc.ts';
import { mmProposal, qmProposal } from '../src/policy/model.ts';
import type { ChildSaSink } from '../src/sa/sink.ts';
import type { ChildSaSpec } from '../src/sa/spec.ts';
import { createHmac, randomBytes } from 'node:crypto';
import { PayloadType } from '../src/ike/v1/constants.ts';

const windowsMessage = (name: string): Buffer =>
  Buffer.from(readFileSync(join(import.meta.dirname, 'fixtures', 'windows-ike', `${name}.hex`), 'utf8').trim(), 'hex');

const hdr = { cookieI: Buffer.from('0102030405060708', 'hex'), cookieR: Buffer.alloc(8), messageId: 0 };

describe('AuthIP codec ([MS-AIPS] §2.2)', () => {
  it("decodes Windows Server 2008 R2's Main Mode message 1 field by field and re-encodes it byte for byte", () => {
    const raw = windowsMessage('win2008r2-authip-mm1');
    const m = decodeAuthIp(raw);
    assert.equal(m.header.exchange, AuthIpExchange.MAIN_MODE);
    assert.equal(m.header.cookieI.toString('hex'), '85f7330bf85f7b16');
    assert.equal(m.header.cookieR.toString('hex'), '0000000000000000');
    assert.equal(m.header.encrypted, false);
    assert.equal(m.header.messageId, 0, 'Message ID 0 in Main Mode (§2.2.1)');
    assert.deepEqual(m.crypto, { seq: 0 }, 'a Crypto payload of 8 octets: seqNUM 0, no IV');
    assert.deepEqual(
      m.payloads.map((p) => p.type),
      [
        PayloadType.SA,
        AuthIpPayloadType.AUTH,
        PayloadType.NONCE,
        PayloadType.VID,
        PayloadType.VID,
        PayloadType.VID,
        PayloadType.VID,
        PayloadType.VID,
        PayloadType.NAT_D,
        PayloadType.NAT_D,
      ],
    );
    const sa = findAuthIp(m.payloads, PayloadType.SA);
    const attrs = sa?.proposals[0]?.transforms.map((t) =>
      Object.fromEntries(t.attributes.map((a) => [a.type, a.value])),
    );
    // Encryption (1), key length (14), hash (2), group (4), life type (11), life duration (12).
    assert.deepEqual(attrs, [
      { 1: 7, 14: 128, 2: 2, 4: 0, 11: 1, 12: Buffer.from('00007080', 'hex') },
      { 1: 5, 2: 2, 4: 0, 11: 1, 12: Buffer.from('00007080', 'hex') },
    ]);
    assert.deepEqual(findAuthIp(m.payloads, AuthIpPayloadType.AUTH)?.methods, [
      { method: AuthIpMethod.KERBEROS, flags: 0 },
    ]);
    assert.equal(findAuthIp(m.payloads, PayloadType.NONCE)?.data.length, 48);
    const vids = findAllAuthIp(m.payloads, PayloadType.VID).map((v) => v.data.toString('hex'));
    assert.equal(vids[0], `${AuthIpVendorId.MS_NT5.toString('hex')}00000008`, 'MS NT5 ISAKMPOAKLEY version 8');
    assert.equal(findAuthIp(m.payloads, PayloadType.KE), undefined, 'Kerberos: no Diffie-Hellman (§3.2.4)');
    assert.equal(findAuthIp(m.payloads, AuthIpPayloadType.GSS), undefined, 'no GSS token: the SPN is not known yet');
    assert.deepEqual(encodeAuthIp({ ...m.header }, 0, m.payloads), raw, 'byte for byte');
  });

  it('each AuthIP payload as its field table lays it out', () => {
    const payloads: AuthIpPayload[] = [
      // §2.2.3.1: Status (4), Flags (1), token.
      {
        type: AuthIpPayloadType.GSS,
        status: 0x8009030c,
        flags: GssFlags.NEW_GSS_EXCHANGE,
        token: Buffer.from('6082', 'hex'),
      },
      // §2.2.3.3: the SPN in UTF-16, no terminator.
      { type: AuthIpPayloadType.GSS_ID, spn: 'host/bob.corp.example' },
      // §2.2.3.4: (Auth_Method 2, Flags 2) per entry.
      {
        type: AuthIpPayloadType.AUTH,
        methods: [
          { method: AuthIpMethod.KERBEROS, flags: 0 },
          { method: AuthIpMethod.TLS, flags: 0 },
        ],
      },
      // §2.2.3.5: DOI (4), Protocol-ID (1), Flags (1), type (2), data.
      {
        type: PayloadType.N,
        doi: 1,
        protocol: 1,
        flags: RELIABLE_NOTIFY_FLAG,
        notify: AuthIpNotify.NOTIFY_STATUS,
        data: Buffer.from('000035e9', 'hex'),
      },
    ];
    const wire = encodeAuthIpPayloads(payloads);
    const at = (p: AuthIpPayload) => (p.raw as Buffer).toString('hex');
    assert.equal(at(payloads[0] as AuthIpPayload), `8600000b8009030c016082`);
    assert.equal(
      at(payloads[1] as AuthIpPayload),
      `8700002e${Buffer.from('host/bob.corp.example', 'utf16le').toString('hex')}`,
    );
    assert.equal(at(payloads[2] as AuthIpPayload), '0b00000c0002000000040000');
    assert.equal(at(payloads[3] as AuthIpPayload), '000000100000000101019c54000035e9');
    // A whole message: header with exchange 243, the Crypto payload (seqNUM, 8-octet IV) first.
    const msg = encodeAuthIp({ ...hdr, exchange: AuthIpExchange.MAIN_MODE }, 3, payloads, Buffer.alloc(8, 0xaa));
    assert.equal(msg.subarray(16, 20).toString('hex'), '8510f300', 'next Crypto, version 1.0, MM, no flags');
    assert.equal(msg.subarray(28, 44).toString('hex'), `81000010${'00000003'}${'aa'.repeat(8)}`);
    const back = decodeAuthIp(msg);
    assert.deepEqual(back.crypto, { seq: 3, iv: Buffer.alloc(8, 0xaa) });
    assert.deepEqual(
      back.payloads.map(({ raw: _raw, ...p }) => p),
      payloads.map(({ raw: _raw, ...p }) => p),
    );
    assert.equal(wire.length, msg.length - 28 - 16);
  });

  it('an encrypted message keeps its body sealed: Crypto next payload 0 with a one-block IV; the rest is ciphertext and checksum', () => {
    const crypto = Buffer.concat([Buffer.from('00000018', 'hex'), Buffer.from('00000001', 'hex'), Buffer.alloc(16, 7)]);
    const sealed = Buffer.alloc(48, 0x5a);
    const head = Buffer.alloc(28);
    hdr.cookieI.copy(head, 0);
    head[16] = AuthIpPayloadType.CRYPTO;
    head[17] = 0x10;
    head[18] = AuthIpExchange.QUICK_MODE;
    head[19] = 1;
    head.writeUInt32BE(28 + crypto.length + sealed.length, 24);
    const m = decodeAuthIp(Buffer.concat([head, crypto, sealed]));
    assert.equal(m.header.encrypted, true);
    assert.deepEqual(m.crypto, { seq: 1, iv: Buffer.alloc(16, 7) });
    assert.deepEqual(m.sealed, sealed);
    assert.deepEqual(m.payloads, []);
  });

  it('refuses what is not AuthIP or not well formed, with the notify RFC 2408 names', () => {
    const raw = windowsMessage('win2008r2-authip-mm1');
    const bad = (f: (b: Buffer) => void) => {
      const b = Buffer.from(raw);
      f(b);
      return b;
    };
    const cases: [string, Buffer][] = [
      ['IKEv1 Main Mode', bad((b) => (b[18] = 2))],
      ['version 2.0', bad((b) => (b[17] = 0x20))],
      ['commit flag', bad((b) => (b[19] = 2))],
      ['length', bad((b) => b.writeUInt32BE(400, 24))],
      ['no Crypto payload first', bad((b) => (b[16] = 1))],
      ['Crypto payload of 12 octets', bad((b) => b.writeUInt16BE(12, 30))],
      ['Auth payload of 6 octets', bad((b) => b.writeUInt16BE(6, 0x7c + 2))],
      ['a certificate payload', bad((b) => (b[0x24] = PayloadType.CERT))],
    ];
    for (const [what, b] of cases) assert.throws(() => decodeAuthIp(b), V1DecodeError, what);
    // A minor version above 0 MUST be accepted (§2.2.1).
    assert.equal(decodeAuthIp(bad((b) => (b[17] = 0x11))).header.version, 0x11);
  });

  it('fuzz: 100,000 mutated datagrams decode or raise V1DecodeError, nothing else', () => {
    const seeds = [
      windowsMessage('win2008r2-authip-mm1'),
      encodeAuthIp({ ...hdr, exchange: AuthIpExchange.MAIN_MODE }, 1, [
        { type: AuthIpPayloadType.GSS, status: 0, flags: 1, token: Buffer.alloc(40, 1) },
        { type: AuthIpPayloadType.GSS_ID, spn: 'host/a.corp.example' },
      ]),
    ];
    let decoded = 0;
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: seeds.length - 1 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 6 }),
        fc.integer({ min: 0, max: 3 }),
        (which, flips, cut) => {
          const d = Buffer.from(seeds[which] as Buffer);
          for (const [at, v] of flips) d[at % d.length] = v;
          const m = cut ? d.subarray(0, Math.max(0, d.length - cut * 7)) : d;
          try {
            decodeAuthIp(m);
            decoded++;
          } catch (err) {
            if (!(err instanceof V1DecodeError)) throw err;
          }
        },
      ),
      { numRuns: 100_000 },
    );
    assert.ok(decoded > 0, 'some mutations are still valid messages');
  });
});

describe('AuthIP keys and protection ([MS-AIPS] §3.1.7.4, §2.2.3.2.1)', () => {
  const suite: AuthIpSuite = { hash: 'sha256', cryptoId: 7, keyBytes: 32 };

  it("A-KDF is SP 800-56's single-step KDF: the same octets as OpenSSL's SSKDF for SHA-1/256/384 and several lengths", () => {
    for (const [hash, name] of [
      ['sha1', 'SHA1'],
      ['sha256', 'SHA256'],
      ['sha384', 'SHA384'],
    ] as const)
      for (const length of [16, 20, 32, 48, 80]) {
        const z = randomBytes(24);
        const info = randomBytes(37);
        const openssl = execFileSync('openssl', [
          'kdf',
          '-keylen',
          String(length),
          '-kdfopt',
          `digest:${name}`,
          '-kdfopt',
          `hexkey:${z.toString('hex')}`,
          '-kdfopt',
          `hexinfo:${info.toString('hex')}`,
          '-binary',
          'SSKDF',
        ]);
        assert.deepEqual(aKdf(hash, z, info, length), openssl, `${hash}, ${length} octets`);
      }
  });

  it('both ends derive the same Main Mode keys from the same GSS-API session key; another key gives other keys', () => {
    const [ni, nr, ci, cr, secret] = [
      randomBytes(32),
      randomBytes(32),
      randomBytes(8),
      randomBytes(8),
      randomBytes(32),
    ];
    const a = mainModeKeys(suite, secret, ni, nr, ci, cr);
    const b = mainModeKeys(suite, Buffer.from(secret), ni, nr, ci, cr);
    assert.deepEqual(a, b);
    assert.equal(a.skeyid.length, 32);
    assert.equal(a.encKey.length, 32);
    assert.notDeepEqual(a.d, a.a);
    assert.notDeepEqual(mainModeKeys(suite, randomBytes(32), ni, nr, ci, cr).skeyid, a.skeyid);
    // Auth1 and Auth2 over the same transcript differ by their last octet's role.
    const t = new Transcript(() => 'sha256');
    for (const m of [randomBytes(100), randomBytes(120), randomBytes(700), randomBytes(200)]) t.add(m);
    assert.equal(t.messages, 4);
    assert.notDeepEqual(authHash(suite, a.skeyid, t.digest, 1), authHash(suite, a.skeyid, t.digest, 2));
  });

  it('sealed messages open with the same keys; one flipped octet anywhere is refused (INVALID-HASH-INFORMATION), nothing decrypted', () => {
    const keys = mainModeKeys(suite, randomBytes(32), randomBytes(32), randomBytes(32), randomBytes(8), randomBytes(8));
    const header = Buffer.alloc(28);
    header[16] = AuthIpPayloadType.CRYPTO;
    header[17] = 0x10;
    header[18] = AuthIpExchange.MAIN_MODE;
    const payloads = encodeAuthIpPayloads([
      { type: PayloadType.HASH, data: randomBytes(32) },
      { type: PayloadType.NONCE, data: randomBytes(32) },
    ]);
    const raw = sealMessage(suite, keys, header, 2, PayloadType.HASH, payloads, 16);
    const m = decodeAuthIp(raw);
    assert.equal(m.header.encrypted, true);
    assert.equal(m.crypto?.seq, 2);
    const opened = openMessage(suite, keys, raw, m.bodyOffset, m.crypto?.iv as Buffer, 16);
    assert.equal(opened.firstPayload, PayloadType.HASH);
    assert.deepEqual(opened.payloads, payloads);
    for (const at of [0, 20, 30, 40, raw.length - 20, raw.length - 1]) {
      const bad = Buffer.from(raw);
      bad[at] = (bad[at] as number) ^ 1;
      assert.throws(
        () => openMessage(suite, keys, bad, m.bodyOffset, bad.subarray(36, 52), 16),
        /checksum/,
        `octet ${at}`,
      );
    }
  });

  it('Quick Mode key material differs per direction (receiving SPI) and per Message ID', () => {
    const d = randomBytes(32);
    const [ci, cr, ni, nr] = [randomBytes(8), randomBytes(8), randomBytes(32), randomBytes(32)];
    const k = (mid: number, spi: string) => quickModeKeymat(suite, d, ci, cr, mid, Buffer.from(spi, 'hex'), ni, nr, 36);
    assert.equal(k(1, '11111111').length, 36);
    assert.notDeepEqual(k(1, '11111111'), k(1, '22222222'));
    assert.notDeepEqual(k(1, '11111111'), k(2, '11111111'));
    assert.deepEqual(k(1, '11111111'), k(1, '11111111'));
  });

  it("Extended Mode's keys as §3.1.7.4 lays them out: SKEYID_em from the MM nonces and the user's session key; Quick Mode keys then take Ni ‖ Nr ‖ SKEYID_em; Auth3/Auth4 bind Auth1/Auth2", () => {
    const [ci, cr, ni, nr, userKey, d] = [8, 8, 32, 32, 32, 32].map((n) => randomBytes(n)) as Buffer[];
    const em = extendedModeKey(suite, userKey as Buffer, ni as Buffer, nr as Buffer, ci as Buffer, cr as Buffer);
    // A-KDF(Z = "", OtherInfo(AlgorithmID ‖ CKY-I ‖ CKY-R ‖ Ni ‖ Nr ‖ GSS-APIsecret_em), hashLength), by hand.
    const alg = Buffer.from([0, suite.cryptoId]);
    const info = Buffer.concat([alg, ci as Buffer, cr as Buffer, ni as Buffer, nr as Buffer, userKey as Buffer]);
    assert.deepEqual(em, aKdf('sha256', Buffer.alloc(0), info, 32));
    const spi = Buffer.from('11111111', 'hex');
    const km = (priv?: Buffer) =>
      quickModeKeymat(
        suite,
        d as Buffer,
        ci as Buffer,
        cr as Buffer,
        0,
        spi,
        ni as Buffer,
        nr as Buffer,
        36,
        undefined,
        priv,
      );
    const plain = km();
    const withEm = km(Buffer.concat([ni as Buffer, nr as Buffer, em]));
    assert.notDeepEqual(plain, withEm, "the user's session key changes the SA's keys");
    const chain = randomBytes(32);
    const [auth1, auth2] = [randomBytes(32), randomBytes(32)];
    const auth3 = extendedAuthHash(suite, em, chain, auth1);
    assert.deepEqual(auth3, createHmac('sha256', em).update(chain).update(auth1).digest());
    assert.notDeepEqual(auth3, extendedAuthHash(suite, em, chain, auth2));
  });
});

const A = '192.0.2.1';
const B = '192.0.2.2';
const ipOf = (a: string) => Buffer.from(a.split('.').map(Number));
const hostTs = (a: string) => ({ type: 7, ipProtocol: 0, startPort: 0, endPort: 65535, start: ipOf(a), end: ipOf(a) });

class Sad implements ChildSaSink {
  readonly installed = new Map<number, ChildSaSpec>();
  readonly active = new Set<number>();
  install(spec: ChildSaSpec): void {
    this.installed.set(spec.inbound.spi, spec);
    if (spec.outboundActive ?? true) this.active.add(spec.inbound.spi);
  }
  activate(spi: number): void {
    this.active.add(spi);
  }
  delete(spi: number): void {
    this.installed.delete(spi);
    this.active.delete(spi);
  }
}

/** One consec end of an in-memory AuthIP wire, with Kerberos from `realm`. */
function authIpSide(
  realm: LabDomain,
  address: string,
  peer: string,
  host: string,
  wire: { sent: Buffer[] },
  keytab = realm.keytab(host),
  mm: Parameters<typeof mmProposal>[0] = { Encryption: 'AES256', Hash: 'SHA256', KeyExchange: 'DH14' },
  halfOpenMs = 60_000,
) {
  const sad = new Sad();
  const audit = new AuditCollector();
  const log: string[] = [];
  const trace: string[] = [];
  const config: AuthIpConfig = {
    name: 'Domain isolation',
    mmProposals: ikeProposals([mmProposal(mm)]).proposals,
    espProposals: (spi) =>
      espProposals([qmProposal({ Encapsulation: ['ESP'], Encryption: 'AESGCM256', ESPHash: 'AESGMAC256' })], spi)
        .proposals,
    localTs: [hostTs(address)],
    remoteTs: [hostTs(peer)],
    mode: 'transport',
    lifeSeconds: 28800,
    childLifeSeconds: 3600,
  };
  let other: AuthIpManager | undefined;
  const m = new AuthIpManager({
    address,
    spis: new SpiRegistry(),
    audit,
    dataplane: sad,
    send: (d, from) => {
      wire.sent.push(d);
      setImmediate(() => other?.receive(d, from));
    },
    kerberos: {
      initiator: (spn) =>
        GssContext.initiator({
          target: spn,
          principal: realm.computerPrincipal(host),
          clientKeytab: keytab,
          ccache: `MEMORY:authip-${host}-${Math.random()}`,
        }),
      acceptor: () => GssContext.acceptor({ keytab }),
      spn: () => realm.computerPrincipal(host),
    },
    log: (e, d) => log.push(`${e} ${JSON.stringify(d ?? {})}`),
    trace: { enabled: () => true, line: (t) => trace.push(t) },
    retransmits: [500, 1000, 2000],
    halfOpenMs,
    configFor: () => config,
  });
  return { m, sad, log, trace, audit, config, connect: (to: AuthIpManager) => (other = to) };
}

describe('AuthIP Main Mode and Quick Mode with Kerberos (consec ↔ consec in memory, a real KDC on loopback)', () => {
  let dom: LabDomain;
  const saved = process.env.KRB5_CONFIG;
  before(async () => {
    dom = await LabDomain.loopback();
    process.env.KRB5_CONFIG = dom.krb5Conf;
    await dom.join('alice');
    await dom.join('bob');
    await dom.join('carol');
    await dom.rekeyAccount('carol');
  });
  after(async () => {
    if (saved === undefined) delete process.env.KRB5_CONFIG;
    else process.env.KRB5_CONFIG = saved;
    await dom?.close();
  });

  const side = (
    address: string,
    peer: string,
    host: string,
    wire: { sent: Buffer[] },
    keytab = dom.keytab(host),
    mm?: Parameters<typeof mmProposal>[0],
  ) => authIpSide(dom, address, peer, host, wire, keytab, mm);

  it('two domain members: Main Mode by computer Kerberos (no Diffie-Hellman), the first Quick Mode inside it, mirrored ESP keys; the wire is AuthIP only', async () => {
    const wire = { sent: [] as Buffer[] };
    const a = side(A, B, 'alice', wire);
    const b = side(B, A, 'bob', wire);
    a.connect(b.m);
    b.connect(a.m);
    const { session, child } = a.m.initiate({ address: B, port: 500 }, a.config);
    const c = await child.catch((err: Error) => {
      throw new Error(`${err.message}\n${a.log.join('\n')}\n${b.log.join('\n')}`);
    });
    assert.equal(session.state, 'established');
    assert.equal(session.peerPrincipal, dom.computerPrincipal('bob'));
    const [bs] = b.m.sessions();
    assert.equal(bs?.peerPrincipal, dom.computerPrincipal('alice'), 'bob authenticated the computer account of alice');
    assert.equal(bs?.state, 'established');
    // Mirrored: what alice sends with, bob receives on, with the same keys.
    const ours = a.sad.installed.get(c.spiIn.readUInt32BE(0)) as ChildSaSpec;
    const theirs = b.sad.installed.get(c.spiOut.readUInt32BE(0)) as ChildSaSpec;
    assert.ok(ours && theirs);
    assert.deepEqual(ours.outbound.encrKey, theirs.inbound.encrKey);
    assert.deepEqual(ours.inbound.encrKey, theirs.outbound.encrKey);
    assert.notDeepEqual(ours.inbound.encrKey, ours.outbound.encrKey);
    assert.equal(ours.outbound.encrKey.length, 36, 'AES-GCM-256 key and salt');
    assert.ok(a.sad.active.has(c.spiIn.readUInt32BE(0)), 'outbound in use after Quick Mode synchronisation');
    // Eight messages, all AuthIP: #1–#4 in clear, #5–#8 sealed; exchange 243 then 244 for the sync.
    const decoded = wire.sent.map((d) => decodeAuthIp(d).header);
    assert.deepEqual(
      decoded.map((h) => [h.exchange, h.encrypted]),
      [
        [243, false],
        [243, false],
        [243, false],
        [243, false],
        [243, true],
        [243, true],
        [244, true],
        [244, true],
      ],
    );
    assert.ok(decodeAuthIp(wire.sent[2] as Buffer).payloads.some((p) => p.type === AuthIpPayloadType.GSS));
    // The debug log: each message described, the GSS token by its length only.
    assert.match(
      a.trace[0] ?? '',
      /^sent AuthIP MAIN_MODE to 192\.0\.2\.2:500 cookies [0-9a-f]{16}\/0{16} seq 0 \d+ octets: SA\(.*\), Auth\(KERBEROS\), NONCE, VID\(MS NT5 ISAKMPOAKLEY v9\)$/,
    );
    assert.ok(
      b.trace.some((l) => /^received AuthIP MAIN_MODE .* GSS\(status 0, flags 0x1, token \d+ octets\)$/.test(l)),
      b.trace.join('\n'),
    );
    assert.ok(a.trace.some((l) => l.includes(`GSS_ID(${dom.computerPrincipal('bob')})`)));
    assert.ok(a.trace.some((l) => /^sent AuthIP QUICK_MODE .*: encrypted$/.test(l)));
    // Audit: 4650 with Kerberos and both computer accounts as Windows names them, 5451 per side.
    const mm = a.audit.events.find((e) => e.id === 4650);
    assert.ok(mm && 'mainMode' in mm);
    assert.deepEqual(
      [
        mm.mainMode.keyingModule,
        mm.mainMode.authenticationMethod,
        mm.mainMode.local.principal,
        mm.mainMode.remote.principal,
      ],
      ['AuthIP', 'Kerberos', 'CORP\\ALICE$', 'CORP\\BOB$'],
    );
    assert.deepEqual(
      b.audit.events.filter((e) => e.id === 4650 || e.id === 5451).map((e) => e.id),
      [4650, 5451],
    );
    assert.equal(
      findAuthIp(decodeAuthIp(wire.sent[1] as Buffer).payloads, AuthIpPayloadType.GSS_ID)?.spn,
      dom.computerPrincipal('bob'),
      'message 2 names the responder SPN',
    );
  });

  it("a member whose keytab is out of date (its account reset at the KDC) gets no SA, and the responder's half-open SA goes", async () => {
    const wire = { sent: [] as Buffer[] };
    const c = side(A, B, 'carol', wire);
    const b = side(B, A, 'bob', wire);
    c.connect(b.m);
    b.connect(c.m);
    const { child } = c.m.initiate({ address: B, port: 500 }, c.config);
    await assert.rejects(child, /Decrypt integrity check failed/);
    assert.equal(c.sad.installed.size, 0);
    const deadline = Date.now() + 5000;
    while (b.m.sessions().length > 0 && Date.now() < deadline) await new Promise((r) => setImmediate(r));
    assert.deepEqual(b.m.sessions(), [], 'told by the GSS payload with a status, bob lets the SA go at once');
    assert.equal(b.sad.installed.size, 0);
    assert.match(b.log.join('\n'), /could not authenticate with Kerberos \(status 0x8009030c\)/);
    // 4653 on both sides, each naming who found the failure.
    const failed = (x: typeof c) =>
      x.audit.events.find((e) => e.id === 4653) as
        { failure: { failurePoint: string; failureReason: string } } | undefined;
    assert.match(failed(c)?.failure.failureReason ?? '', /Decrypt integrity check failed/);
    assert.equal(failed(c)?.failure.failurePoint, 'Local computer');
    assert.match(failed(b)?.failure.failureReason ?? '', /could not authenticate with Kerberos/);
  });

  it('Main Mode crypto sets with nothing in common: the responder refuses in clear (NOTIFY_STATUS) and the initiator stops at once, 4653 on both sides', async () => {
    const wire = { sent: [] as Buffer[] };
    const a = side(A, B, 'alice', wire, dom.keytab('alice'), {
      Encryption: 'AES128',
      Hash: 'SHA1',
      KeyExchange: 'DH14',
    });
    const b = side(B, A, 'bob', wire);
    a.connect(b.m);
    b.connect(a.m);
    const started = Date.now();
    const { child } = a.m.initiate({ address: B, port: 500 }, a.config);
    await assert.rejects(child, /the peer refused the Main Mode \(status 13868 POLICY_MATCH\)/);
    assert.ok(Date.now() - started < 400, 'no waiting for retransmissions');
    assert.deepEqual(
      decodeAuthIp(wire.sent[1] as Buffer).header.exchange,
      AuthIpExchange.NOTIFY,
      'the refusal is a Notify exchange',
    );
    const failure = (x: typeof a) =>
      (x.audit.events.find((e) => e.id === 4653) as { failure: { failurePoint: string } } | undefined)?.failure
        .failurePoint;
    assert.deepEqual([failure(a), failure(b)], ['Remote computer', 'Local computer']);
  });

  it('fuzz: 100,000 mutated datagrams of a real exchange at a responder — no exception escapes, half-open SAs stay capped', async () => {
    const wire = { sent: [] as Buffer[] };
    const a = side(A, B, 'alice', wire);
    const b = side(B, A, 'bob', wire);
    a.connect(b.m);
    b.connect(a.m);
    await a.m.initiate({ address: B, port: 500 }, a.config).child;
    const seen = [...wire.sent];
    const target = side(B, A, 'bob', { sent: [] });
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
          target.m.receive(m, { address: A, port: 500 + (count++ % 2) });
        },
      ),
      { numRuns: 100_000 },
    );
    assert.ok(target.m.halfOpen <= 1024, `${target.m.halfOpen} half-open`);
    assert.equal(target.sad.installed.size, 0, 'no mutated exchange installed a child SA');
    target.m.close();
  });

  it('renewal before the child SA expires: a new Main Mode and Quick Mode, then the old SA deleted at both ends; the data plane never without an SA', async () => {
    const wire = { sent: [] as Buffer[] };
    const a = side(A, B, 'alice', wire);
    const b = side(B, A, 'bob', wire);
    a.config.childLifeSeconds = 2; // renewed at 90 %: 1.8 s
    a.connect(b.m);
    b.connect(a.m);
    const { session, child } = a.m.initiate({ address: B, port: 500 }, a.config);
    const first = await child;
    const deadline = Date.now() + 5000;
    let gaps = 0;
    while (Date.now() < deadline && !(session.state === 'dead' && a.m.sessions().length === 1)) {
      if (a.sad.installed.size === 0) gaps++;
      await new Promise((r) => setImmediate(r));
    }
    assert.equal(session.state, 'dead', a.log.join('\n'));
    const [next] = a.m.sessions();
    assert.ok(next && next !== session && next.state === 'established');
    await new Promise<void>((resolve, reject) => {
      const until = Date.now() + 2000;
      const check = () =>
        b.m.sessions().length === 1 && b.sad.installed.size === 1
          ? resolve()
          : Date.now() > until
            ? reject(new Error(`bob: ${b.m.sessions().length} SAs, ${b.sad.installed.size} child SAs`))
            : setImmediate(check);
      check();
    });
    assert.equal(a.sad.installed.size, 1);
    assert.ok(!a.sad.installed.has(first.spiIn.readUInt32BE(0)), 'the old child SA is gone');
    assert.equal(gaps, 0, 'a child SA was installed throughout');
    assert.ok(a.audit.events.some((e) => e.id === 4655 && 'reason' in e && e.reason === 'rekeyed'));
    a.m.close();
    b.m.close();
  });

  it('the KDC is down and alice holds no ticket: no SA, 4653 says the KDC cannot be reached', async () => {
    const wire = { sent: [] as Buffer[] };
    const a = side(A, B, 'alice', wire);
    const b = side(B, A, 'bob', wire);
    a.connect(b.m);
    b.connect(a.m);
    await dom.stop();
    try {
      const { child } = a.m.initiate({ address: B, port: 500 }, a.config);
      await assert.rejects(child, /Cannot contact any KDC for realm 'CORP.EXAMPLE'/);
      const failure = a.audit.events.find((e) => e.id === 4653) as { failure: { failureReason: string } } | undefined;
      assert.match(failure?.failure.failureReason ?? '', /Cannot contact any KDC/);
      assert.equal(
        windowsFailureReason(failure?.failure ?? { failureReason: '' }),
        'No authority could be contacted for authentication.',
      );
      assert.equal(a.sad.installed.size + b.sad.installed.size, 0);
    } finally {
      await dom.start();
    }
  });
});

describe('AuthIP when the clocks disagree (a KDC 10 minutes ahead of the members)', () => {
  it("bob's acceptor refuses alice's ticket as too far off (not yet valid: the clocks are skewed); alice is told and gets no SA", async () => {
    const skewed = await LabDomain.loopback({ clockOffsetSeconds: 600 });
    const saved = process.env.KRB5_CONFIG;
    try {
      process.env.KRB5_CONFIG = skewed.krb5Conf;
      await skewed.join('alice');
      await skewed.join('bob');
      const wire = { sent: [] as Buffer[] };
      const a = authIpSide(skewed, A, B, 'alice', wire);
      const b = authIpSide(skewed, B, A, 'bob', wire);
      a.connect(b.m);
      b.connect(a.m);
      const { child } = a.m.initiate({ address: B, port: 500 }, a.config);
      await assert.rejects(child, /the peer refused the Main Mode/);
      const bobFailure = b.audit.events.find((e) => e.id === 4653) as
        { failure: { failureReason: string } } | undefined;
      assert.match(
        bobFailure?.failure.failureReason ?? '',
        /Ticket not yet valid|Clock skew too great/,
        b.log.join('\n'),
      );
      // As the Security log words it.
      assert.equal(
        windowsFailureReason(bobFailure?.failure ?? { failureReason: '' }),
        'The clocks on the client and server machines are skewed.',
      );
      assert.equal(a.sad.installed.size + b.sad.installed.size, 0);
    } finally {
      if (saved === undefined) delete process.env.KRB5_CONFIG;
      else process.env.KRB5_CONFIG = saved;
      await skewed.close();
    }
  });
});

describe('AuthIP Extended Mode: a user authenticated with Kerberos after the computers ([MS-AIPS] §3.6, §3.7)', () => {
  let dom: LabDomain;
  const saved = process.env.KRB5_CONFIG;
  const uid = process.getuid?.() ?? 0;
  before(async () => {
    dom = await LabDomain.loopback();
    process.env.KRB5_CONFIG = dom.krb5Conf;
    await dom.join('alice');
    await dom.join('bob');
    await dom.addUser('dave', 'Dave-Pass-1');
  });
  after(async () => {
    if (saved === undefined) delete process.env.KRB5_CONFIG;
    else process.env.KRB5_CONFIG = saved;
    await dom?.close();
  });

  /** Alice (initiator, as user `who`) and bob (responder), both asking for a user in phase 2. */
  const pair = (who: number | undefined, halfOpenMs?: number) => {
    const wire = { sent: [] as Buffer[] };
    const a = authIpSide(dom, A, B, 'alice', wire);
    const b = authIpSide(dom, B, A, 'bob', wire, undefined, undefined, halfOpenMs);
    a.config.extendedMode = who === undefined ? {} : { user: (spn) => userInitiator(who, spn) };
    b.config.extendedMode = {};
    a.connect(b.m);
    b.connect(a.m);
    return { wire, a, b };
  };

  it("dave has a ticket: Main Mode by the computers, Quick Mode, then Extended Mode by dave's ticket; SAs only after it, keyed by both sessions; 4979 on both sides", async () => {
    await dom.kinit('localhost', 'dave', 'Dave-Pass-1', `FILE:${dom.userCcache(uid)}`);
    const { wire, a, b } = pair(uid);
    const { session, child } = a.m.initiate({ address: B, port: 500 }, a.config);
    const c = await child.catch((err: Error) => {
      throw new Error(`${err.message}\n${a.log.join('\n')}\n${b.log.join('\n')}`);
    });
    // Main Mode (243), the sync (244), then Extended Mode (245): sealed, Message ID 1 (§2.2.1).
    const headers = wire.sent.map((d) => decodeAuthIp(d).header);
    assert.deepEqual(
      headers.map((h) => h.exchange),
      [243, 243, 243, 243, 243, 243, 244, 244, 245, 245, 245, 245, 245, 245],
    );
    assert.ok(headers.slice(8).every((h) => h.encrypted && h.messageId === 1));
    // Who is who: the computers in Main Mode, dave in Extended Mode.
    const [bs] = b.m.sessions();
    assert.equal(bs?.peerPrincipal, dom.computerPrincipal('alice'));
    assert.equal(bs?.peerUser, 'dave@CORP.EXAMPLE');
    assert.equal(session.localUser, 'dave@CORP.EXAMPLE');
    // Mirrored keys (both ends put dave's session key, SKEYID_em, into them).
    const ours = a.sad.installed.get(c.spiIn.readUInt32BE(0)) as ChildSaSpec;
    const theirs = b.sad.installed.get(c.spiOut.readUInt32BE(0)) as ChildSaSpec;
    assert.deepEqual(ours.outbound.encrKey, theirs.inbound.encrKey);
    assert.deepEqual(ours.inbound.encrKey, theirs.outbound.encrKey);
    assert.ok(a.sad.active.has(c.spiIn.readUInt32BE(0)), 'outbound in use once Auth4 is checked');
    // Events: 4979 (Main Mode and Extended Mode) in place of 4650, with the user as Windows names it.
    for (const x of [a, b]) {
      const ids = x.audit.events.map((e) => e.id);
      assert.ok(ids.includes(4979) && !ids.includes(4650), ids.join(' '));
    }
    const em = b.audit.events.find((e) => e.id === 4979) as { extendedMode: { remotePrincipal: string } };
    assert.equal(em.extendedMode.remotePrincipal, 'CORP\\dave');
    // The KDC issued dave a ticket for bob's computer account.
    assert.match(dom.log(), /TGS_REQ .* dave@CORP\.EXAMPLE for host\/bob\.corp\.example@CORP\.EXAMPLE/);
    a.m.close();
    b.m.close();
  });

  it('a user without tickets: Extended Mode fails, no SA at either end, 4984 on both sides with the reason', async () => {
    const { a, b } = pair(4242);
    const { child } = a.m.initiate({ address: B, port: 500 }, a.config);
    await assert.rejects(child, /user 4242 has no Kerberos tickets/);
    const deadline = Date.now() + 5000;
    while (b.m.sessions().length > 0 && Date.now() < deadline) await new Promise((r) => setImmediate(r));
    assert.deepEqual(b.m.sessions(), [], 'bob tears down Main Mode and Quick Mode (§3.7.7.1)');
    assert.equal(a.sad.installed.size + b.sad.installed.size, 0, 'no SA was ever installed');
    const failure = (x: typeof a) =>
      x.audit.events.find((e) => e.id === 4984) as { failure: { failureReason: string; state: string } } | undefined;
    assert.match(failure(a)?.failure.failureReason ?? '', /user 4242 has no Kerberos tickets/);
    assert.equal(failure(a)?.failure.state, 'Extended Mode');
    assert.match(failure(b)?.failure.failureReason ?? '', /user could not authenticate with Kerberos/);
    assert.ok(!a.audit.events.some((e) => e.id === 4979));
  });

  it('an initiator that authenticates no user: the responder, whose rule asks for one, installs nothing and ends the SA at its time-out (4984)', async () => {
    const { a, b } = pair(undefined, 2000);
    delete a.config.extendedMode;
    const { child } = a.m.initiate({ address: B, port: 500 }, a.config);
    await child; // alice's side believes it has an SA
    assert.equal(b.sad.installed.size, 0, 'bob has no SA for traffic whose user is not authenticated');
    // The responder's time-out (60 s on Windows, <12>; 2 s here) ends it.
    const deadline = Date.now() + 10_000;
    while (b.m.sessions().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(b.m.sessions(), []);
    const failure = b.audit.events.find((e) => e.id === 4984) as { failure: { failureReason: string } } | undefined;
    assert.match(failure?.failure.failureReason ?? '', /did not authenticate a user \(Extended Mode\)/);
    assert.equal(b.sad.installed.size, 0);
    a.m.close();
  });
});
