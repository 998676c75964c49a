import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { ENCRS, INTEGS, PRFS } from '../src/ike/crypto/algorithms.ts';
import { pskAuth } from '../src/ike/crypto/auth.ts';
import { KeyExchange, KeyExchangeError } from '../src/ike/crypto/ke.ts';
import { deriveChildKeys, deriveIkeKeys } from '../src/ike/crypto/keys.ts';
import { prf, prfPlus } from '../src/ike/crypto/prf.ts';
import {
  openFragment,
  openMessage,
  protectFragmented,
  protectMessage,
  Reassembly,
  type SkKeys,
} from '../src/ike/crypto/sk.ts';
import { decodeMessage, IkeDecodeError } from '../src/ike/wire/codec.ts';
import { EncrId, ExchangeType, Flags, IntegId, KeId, PayloadType, PrfId } from '../src/ike/wire/constants.ts';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const must = <T>(v: T | undefined): T => {
  assert.ok(v !== undefined);
  return v;
};

describe('IKEv2 PRF (RFC 4868 §2.7.1 test case 1)', () => {
  const data = Buffer.from('Hi There');
  it('PRF_HMAC_SHA2_256 / 384 / 512', () => {
    assert.equal(
      prf(must(PRFS[PrfId.HMAC_SHA2_256]), Buffer.alloc(32, 0x0b), data).toString('hex'),
      '198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7',
    );
    assert.equal(
      prf(must(PRFS[PrfId.HMAC_SHA2_384]), Buffer.alloc(48, 0x0b), data).toString('hex'),
      'b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee9737a959796489bddbc4c5df61d5b3297b4fb68dab9f1b582c2',
    );
    assert.equal(
      prf(must(PRFS[PrfId.HMAC_SHA2_512]), Buffer.alloc(64, 0x0b), data).toString('hex'),
      '637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8ac2878ebd5803f6f0b61dbce5e251ff8789a4722c1be65aea45fd464e89f8f5b',
    );
  });

  it('integrity algorithms truncate as RFC 4868 says (128/192/256 bits)', () => {
    assert.deepEqual(
      [IntegId.HMAC_SHA2_256_128, IntegId.HMAC_SHA2_384_192, IntegId.HMAC_SHA2_512_256].map((i) => [
        INTEGS[i]?.keySize,
        INTEGS[i]?.icvSize,
      ]),
      [
        [32, 16],
        [48, 24],
        [64, 32],
      ],
    );
  });

  it('prf+ chains T1 = prf(K, S | 0x01), T2 = prf(K, T1 | S | 0x02), … and truncates', () => {
    const alg = must(PRFS[PrfId.HMAC_SHA2_256]);
    const k = Buffer.from('key');
    const s = Buffer.from('seed');
    const t1 = createHmac('sha256', k)
      .update(Buffer.concat([s, Buffer.from([1])]))
      .digest();
    const t2 = createHmac('sha256', k)
      .update(Buffer.concat([t1, s, Buffer.from([2])]))
      .digest();
    assert.deepEqual(prfPlus(alg, k, s, 40), Buffer.concat([t1, t2]).subarray(0, 40));
    assert.throws(() => prfPlus(alg, k, s, 255 * 32 + 1), RangeError);
  });
});

describe('key exchange', () => {
  it('ECP 256 (group 19) matches RFC 5903 §8.1', () => {
    const i = KeyExchange.create(KeId.ECP_256, hex('C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433'));
    const r = KeyExchange.create(KeId.ECP_256, hex('C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53'));
    assert.equal(
      i.publicValue.toString('hex').toUpperCase(),
      'DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180' +
        '5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3',
    );
    const gir = 'D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE';
    assert.equal(i.sharedSecret(r.publicValue).toString('hex').toUpperCase(), gir);
    assert.equal(r.sharedSecret(i.publicValue).toString('hex').toUpperCase(), gir);
  });

  it('ECP 384 (group 20) matches RFC 5903 §8.2', () => {
    const i = KeyExchange.create(
      KeId.ECP_384,
      hex('099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655E35B538041E649EE3FAEF896783AB194'),
    );
    const r = KeyExchange.create(
      KeId.ECP_384,
      hex('41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942E0308312916B8ED2960E4BD55A7448FC'),
    );
    assert.equal(
      i.publicValue.subarray(0, 48).toString('hex').toUpperCase(),
      '667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6DE3AC808ACB4BDB4C88732AEE95F41AA',
    );
    assert.equal(
      r.publicValue.subarray(0, 48).toString('hex').toUpperCase(),
      'E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D0D1AC43A0336DEF96FDA41D0774A3571',
    );
    assert.equal(
      i.sharedSecret(r.publicValue).toString('hex').toUpperCase(),
      '11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4D603135569B9E9D09CF5D4A270F59746',
    );
  });

  it('Curve25519 (group 31) matches RFC 7748 §6.1 and refuses a low-order point', () => {
    const alice = KeyExchange.create(
      KeId.CURVE25519,
      hex('77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a'),
    );
    assert.equal(alice.publicValue.toString('hex'), '8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a');
    const bob = KeyExchange.create(
      KeId.CURVE25519,
      hex('5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb'),
    );
    assert.equal(bob.publicValue.toString('hex'), 'de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f');
    assert.equal(
      alice.sharedSecret(bob.publicValue).toString('hex'),
      '4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742',
    );
    assert.throws(() => alice.sharedSecret(Buffer.alloc(32)), KeyExchangeError);
  });

  for (const group of [KeId.MODP_2048, KeId.MODP_3072, KeId.MODP_4096, KeId.ECP_521]) {
    it(`group ${group}: both sides agree; bad public values are refused`, () => {
      const a = KeyExchange.create(group);
      const b = KeyExchange.create(group);
      assert.deepEqual(a.sharedSecret(b.publicValue), b.sharedSecret(a.publicValue));
      const len = a.publicValue.length;
      assert.equal(len, { 14: 256, 15: 384, 16: 512, 21: 132 }[group as 14]);
      assert.throws(() => a.sharedSecret(b.publicValue.subarray(1)), KeyExchangeError);
      const one = Buffer.alloc(len);
      one[len - 1] = 1;
      assert.throws(() => a.sharedSecret(one), KeyExchangeError);
    });
  }

  it('unsupported groups are a typed error', () => {
    assert.throws(() => KeyExchange.create(KeId.MODP_1024), /group 2 is not supported/);
  });
});

describe('SK payload', () => {
  const suites: [string, SkKeys][] = [
    [
      'AES-CBC-256 + HMAC-SHA2-256-128',
      {
        encr: must(ENCRS[EncrId.AES_CBC]),
        encrKey: Buffer.alloc(32, 1),
        integ: INTEGS[IntegId.HMAC_SHA2_256_128],
        integKey: Buffer.alloc(32, 2),
      },
    ],
    [
      'AES-CBC-128 + HMAC-SHA2-384-192',
      {
        encr: must(ENCRS[EncrId.AES_CBC]),
        encrKey: Buffer.alloc(16, 1),
        integ: INTEGS[IntegId.HMAC_SHA2_384_192],
        integKey: Buffer.alloc(48, 2),
      },
    ],
    [
      'AES-GCM-16-256',
      { encr: must(ENCRS[EncrId.AES_GCM_16]), encrKey: Buffer.alloc(36, 3), integKey: Buffer.alloc(0) },
    ],
    [
      'AES-GCM-16-128',
      { encr: must(ENCRS[EncrId.AES_GCM_16]), encrKey: Buffer.alloc(20, 3), integKey: Buffer.alloc(0) },
    ],
  ];
  const header = {
    spiI: Buffer.alloc(8, 0xaa),
    spiR: Buffer.alloc(8, 0xbb),
    exchange: ExchangeType.IKE_AUTH,
    flags: Flags.INITIATOR,
    messageId: 1,
  };
  const inner = [
    { type: PayloadType.IDi, idType: 1, data: Buffer.from([192, 0, 2, 1]) } as const,
    { type: PayloadType.AUTH, method: 2, data: Buffer.alloc(32, 9) } as const,
  ];
  for (const [name, keys] of suites) {
    it(`${name}: protect → open round trip; any flipped bit is refused`, () => {
      const wire = protectMessage(header, inner, keys);
      const msg = decodeMessage(wire);
      assert.equal(msg.header.nextPayload, PayloadType.SK);
      assert.deepEqual(
        openMessage(msg, keys),
        inner.map((p) => ({ ...p, critical: false })),
      );
      fc.assert(
        fc.property(fc.integer({ min: 0, max: wire.length * 8 - 1 }), (bit) => {
          const bad = Buffer.from(wire);
          bad[bit >> 3] = (bad[bit >> 3] as number) ^ (1 << (bit & 7));
          let m;
          try {
            m = decodeMessage(bad);
          } catch (e) {
            assert.ok(e instanceof IkeDecodeError);
            return;
          }
          assert.throws(() => openMessage(m, keys), IkeDecodeError);
        }),
        { numRuns: 400 },
      );
    });

    it(`${name}: RFC 7383 fragments fit the size, reassemble in any order, and each is authenticated`, () => {
      const big = [
        { type: PayloadType.IDi, idType: 1, data: Buffer.from([192, 0, 2, 1]) } as const,
        { type: PayloadType.CERT, encoding: 4, data: Buffer.alloc(1500, 7) } as const,
        { type: PayloadType.AUTH, method: 14, data: Buffer.alloc(520, 9) } as const,
      ];
      assert.deepEqual(protectFragmented(header, inner, keys, 1200).length, 1, 'small messages stay whole');
      const frags = protectFragmented(header, big, keys, 576);
      assert.ok(frags.length >= 4);
      for (const f of frags) assert.ok(f.length <= 576, `fragment of ${f.length} octets`);
      const msgs = frags.map((f) => decodeMessage(f));
      assert.ok(msgs.every((m) => m.header.nextPayload === PayloadType.SKF));
      const r = new Reassembly(1, msgs.length);
      const order = [...msgs.keys()].reverse();
      let whole;
      for (const i of order) whole = r.add(openFragment(msgs[i] as never, keys)) ?? whole;
      assert.deepEqual(
        whole,
        big.map((p) => ({ ...p, critical: false })),
      );
      const bad = Buffer.from(frags[1] as Buffer);
      bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 1;
      assert.throws(() => openFragment(decodeMessage(bad), keys), IkeDecodeError);
    });
  }
});

describe('key derivation', () => {
  it('splits prf+ output into SK_d, SK_ai, SK_ar, SK_ei, SK_er, SK_pi, SK_pr of the suite sizes', () => {
    const suite = {
      prf: must(PRFS[PrfId.HMAC_SHA2_256]),
      encr: must(ENCRS[EncrId.AES_CBC]),
      encrKeyBits: 256,
      integ: INTEGS[IntegId.HMAC_SHA2_256_128],
    };
    const ni = Buffer.alloc(32, 1);
    const nr = Buffer.alloc(32, 2);
    const gir = Buffer.alloc(256, 3);
    const spiI = Buffer.alloc(8, 4);
    const spiR = Buffer.alloc(8, 5);
    const k = deriveIkeKeys(suite, ni, nr, gir, spiI, spiR);
    const skeyseed = createHmac('sha256', Buffer.concat([ni, nr]))
      .update(gir)
      .digest();
    const km = prfPlus(suite.prf, skeyseed, Buffer.concat([ni, nr, spiI, spiR]), 32 * 7);
    assert.deepEqual(Buffer.concat([k.skD, k.skAi, k.skAr, k.skEi, k.skEr, k.skPi, k.skPr]), km);
    const gcm = deriveIkeKeys(
      { ...suite, encr: must(ENCRS[EncrId.AES_GCM_16]), integ: undefined },
      ni,
      nr,
      gir,
      spiI,
      spiR,
    );
    assert.deepEqual([gcm.skAi.length, gcm.skEi.length], [0, 36]);
    const child = deriveChildKeys(suite.prf, k.skD, ni, nr, 36, 0);
    assert.deepEqual(Buffer.concat([child.encrI, child.encrR]), prfPlus(suite.prf, k.skD, Buffer.concat([ni, nr]), 72));
  });

  it('PSK AUTH follows RFC 7296 §2.15', () => {
    const alg = must(PRFS[PrfId.HMAC_SHA2_256]);
    const psk = Buffer.from('lab-only-psk');
    const msg = Buffer.from('message 1');
    const nonce = Buffer.alloc(32, 7);
    const skP = Buffer.alloc(32, 8);
    const id = Buffer.from([1, 0, 0, 0, 192, 0, 2, 1]);
    const inner = createHmac('sha256', psk).update('Key Pad for IKEv2').digest();
    const octets = Buffer.concat([msg, nonce, createHmac('sha256', skP).update(id).digest()]);
    assert.deepEqual(pskAuth(alg, psk, msg, nonce, skP, id), createHmac('sha256', inner).update(octets).digest());
  });
});
