/**
 * IKEv1 key derivation and message protection (RFC 2409 §5, §5.5, Appendix B), all with
 * node:crypto: SKEYID per authentication method, SKEYID_d/_a/_e, the encryption key (expanded when
 * SKEYID_e is short), the Phase 1 IV and the per-exchange IVs, CBC encryption with IV chaining,
 * HASH_I/HASH_R, the Quick Mode and Informational hashes, and KEYMAT for child SAs.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac } from 'node:crypto';
import { V1DecodeError } from './codec.ts';
import { NotifyType } from './constants.ts';

export type HashName = 'sha1' | 'sha256' | 'sha384' | 'sha512';

/** The negotiated Phase 1 algorithms. */
export interface V1Suite {
  hash: HashName;
  /** AES-CBC key length in octets (16, 24, 32). */
  keyBytes: number;
}

export const BLOCK = 16;

export function prf(hash: HashName, key: Buffer, ...data: Buffer[]): Buffer {
  const h = createHmac(hash, key);
  for (const d of data) h.update(d);
  return h.digest();
}

export function digest(hash: HashName, ...data: Buffer[]): Buffer {
  const h = createHash(hash);
  for (const d of data) h.update(d);
  return h.digest();
}

export interface Phase1Keys {
  skeyid: Buffer;
  d: Buffer;
  a: Buffer;
  e: Buffer;
  /** The encryption key (RFC 2409 Appendix B expansion when SKEYID_e is shorter). */
  encKey: Buffer;
}

/**
 * SKEYID (RFC 2409 §5): pre-shared keys prf(key, Ni_b | Nr_b); signatures prf(Ni_b | Nr_b, g^xy).
 * Then SKEYID_d = prf(SKEYID, g^xy | CKY-I | CKY-R | 0), _a and _e chained with 1 and 2.
 */
export function phase1Keys(
  suite: V1Suite,
  secret: { psk: Buffer } | { signatures: true },
  ni: Buffer,
  nr: Buffer,
  gxy: Buffer,
  cookieI: Buffer,
  cookieR: Buffer,
): Phase1Keys {
  const h = suite.hash;
  const skeyid = 'psk' in secret ? prf(h, secret.psk, ni, nr) : prf(h, Buffer.concat([ni, nr]), gxy);
  const d = prf(h, skeyid, gxy, cookieI, cookieR, Buffer.from([0]));
  const a = prf(h, skeyid, d, gxy, cookieI, cookieR, Buffer.from([1]));
  const e = prf(h, skeyid, a, gxy, cookieI, cookieR, Buffer.from([2]));
  let encKey: Buffer;
  if (e.length >= suite.keyBytes) encKey = Buffer.from(e.subarray(0, suite.keyBytes));
  else {
    // Ka = K1 | K2 | …, K1 = prf(SKEYID_e, 0), Kn = prf(SKEYID_e, Kn-1).
    const parts: Buffer[] = [];
    let k = prf(h, e, Buffer.from([0]));
    parts.push(k);
    while (Buffer.concat(parts).length < suite.keyBytes) {
      k = prf(h, e, k);
      parts.push(k);
    }
    encKey = Buffer.concat(parts).subarray(0, suite.keyBytes);
  }
  return { skeyid, d, a, e, encKey };
}

/** The Phase 1 IV: hash(g^xi | g^xr), truncated to the block size (Appendix B). */
export const phase1Iv = (suite: V1Suite, gxi: Buffer, gxr: Buffer): Buffer =>
  digest(suite.hash, gxi, gxr).subarray(0, BLOCK);

/** A Quick Mode or Informational exchange's first IV: hash(last Phase 1 CBC block | M-ID). */
export function exchangeIv(suite: V1Suite, lastPhase1Block: Buffer, messageId: number): Buffer {
  const mid = Buffer.alloc(4);
  mid.writeUInt32BE(messageId >>> 0, 0);
  return digest(suite.hash, lastPhase1Block, mid).subarray(0, BLOCK);
}

const cipherName = (keyBytes: number) => `aes-${keyBytes * 8}-cbc`;

/**
 * Encrypts a payload chain (padded with zeros to the block size). Returns the ciphertext; its last
 * block is the next IV of the exchange.
 */
export function encryptBody(suite: V1Suite, key: Buffer, iv: Buffer, plain: Buffer): Buffer {
  const pad = (BLOCK - (plain.length % BLOCK)) % BLOCK;
  const c = createCipheriv(cipherName(suite.keyBytes), key, iv);
  c.setAutoPadding(false);
  return Buffer.concat([c.update(plain), c.update(Buffer.alloc(pad)), c.final()]);
}

/** Decrypts a message body; a length that is not a whole number of blocks is malformed. */
export function decryptBody(suite: V1Suite, key: Buffer, iv: Buffer, cipher: Buffer): Buffer {
  if (cipher.length === 0 || cipher.length % BLOCK !== 0)
    throw new V1DecodeError(
      `encrypted body of ${cipher.length} octets is not whole blocks`,
      NotifyType.PAYLOAD_MALFORMED,
    );
  const d = createDecipheriv(cipherName(suite.keyBytes), key, iv);
  d.setAutoPadding(false);
  return Buffer.concat([d.update(cipher), d.final()]);
}

/** The last cipher block of a body: the IV that follows it. */
export const lastBlock = (cipher: Buffer): Buffer => Buffer.from(cipher.subarray(cipher.length - BLOCK));

/**
 * HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b) and HASH_R with the values of
 * the responder first (RFC 2409 §5). `mine` says whose hash: the initiator's or the responder's.
 */
export function mainModeHash(
  suite: V1Suite,
  skeyid: Buffer,
  who: 'initiator' | 'responder',
  gxi: Buffer,
  gxr: Buffer,
  cookieI: Buffer,
  cookieR: Buffer,
  saiBody: Buffer,
  idBody: Buffer,
): Buffer {
  return who === 'initiator'
    ? prf(suite.hash, skeyid, gxi, gxr, cookieI, cookieR, saiBody, idBody)
    : prf(suite.hash, skeyid, gxr, gxi, cookieR, cookieI, saiBody, idBody);
}

const mid = (m: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(m >>> 0, 0);
  return b;
};

/** Quick Mode HASH(1) = prf(SKEYID_a, M-ID | payloads after HASH) (§5.5); Informational hashes alike. */
export const hash1 = (suite: V1Suite, skeyidA: Buffer, messageId: number, rest: Buffer): Buffer =>
  prf(suite.hash, skeyidA, mid(messageId), rest);

/** HASH(2) = prf(SKEYID_a, M-ID | Ni_b | payloads after HASH). */
export const hash2 = (suite: V1Suite, skeyidA: Buffer, messageId: number, ni: Buffer, rest: Buffer): Buffer =>
  prf(suite.hash, skeyidA, mid(messageId), ni, rest);

/** HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b). */
export const hash3 = (suite: V1Suite, skeyidA: Buffer, messageId: number, ni: Buffer, nr: Buffer): Buffer =>
  prf(suite.hash, skeyidA, Buffer.from([0]), mid(messageId), ni, nr);

/**
 * KEYMAT for one direction of a child SA (§5.5): K1 = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI |
 * Ni_b | Nr_b), Kn = prf(SKEYID_d, Kn-1 | the same); `spi` is the SPI of the SA's receiver.
 */
export function keymat(
  suite: V1Suite,
  skeyidD: Buffer,
  protocol: number,
  spi: Buffer,
  ni: Buffer,
  nr: Buffer,
  length: number,
  pfsSecret?: Buffer,
): Buffer {
  const seed = Buffer.concat([pfsSecret ?? Buffer.alloc(0), Buffer.from([protocol]), spi, ni, nr]);
  const parts: Buffer[] = [];
  let total = 0;
  let k: Buffer = Buffer.alloc(0);
  while (total < length) {
    k = prf(suite.hash, skeyidD, k, seed);
    parts.push(k);
    total += k.length;
  }
  return Buffer.concat(parts).subarray(0, length);
}

/** NAT-D (RFC 3947 §3.2): HASH(CKY-I | CKY-R | IP | Port) with the negotiated hash. */
export function natD(suite: V1Suite, cookieI: Buffer, cookieR: Buffer, ip: Buffer, port: number): Buffer {
  const p = Buffer.alloc(2);
  p.writeUInt16BE(port, 0);
  return digest(suite.hash, cookieI, cookieR, ip, p);
}
