/**
 * AuthIP key derivation and message protection ([MS-AIPS] §3.1.7.4, §2.2.3.2.1), with node:crypto:
 *
 * - A-KDF, the SP 800-56A concatenation KDF, Hash(counter ‖ Z ‖ OtherInfo) for counter = 1, 2, …
 *   with OtherInfo = AlgorithmID (the Main Mode cipher's RFC 2409 number, 16 bits) ‖ CKY-I ‖ CKY-R ‖
 *   public info ‖ private info; Z is g^xy when a Diffie-Hellman exchange took place, else empty.
 * - SKEYID from the GSS-API session key (Kerberos: the context's session key), then SKEYID_d,
 *   SKEYID_a and SKEYID_e chained with 0, 1, 2 as §3.1.7.4 lists them.
 * - Auth1/Auth2: a prf with SKEYID over the hash chain of every Main Mode message (SHA-256 for #1
 *   and #2, before a hash is agreed) and 1 or 2 (§3.1.7.4).
 * - The encrypted Crypto payload: ESP-like (RFC 4303 without the SPI), CBC with an explicit IV,
 *   plaintext ‖ padding ‖ pad length ‖ next payload, then an HMAC over the message from its header
 *   (with the length field zeroed) to the checksum (§2.2.3.2.1).
 * - Quick Mode keys per direction (receiving SPI) from SKEYID_d and the Quick Mode nonces.
 *
 * Where [MS-AIPS] leaves a detail open, the choice is named here and used by both ends:
 * "#n" in the chain is the whole message as sent (header included); the checksum uses SKEYID_a and
 * the cipher the first octets of SKEYID_e; Quick Mode key material is authentication key first
 * (§3.4.5.2, §3.5.5.2), then encryption key.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { randomOctets } from '../crypto/random.ts';
import { V1DecodeError } from '../v1/codec.ts';
import { NotifyType } from '../v1/constants.ts';
import type { HashName } from '../v1/crypto.ts';
import { TRUNCATED_ICV_VERSIONS } from './constants.ts';

export interface AuthIpSuite {
  hash: HashName;
  /** RFC 2409 Appendix A encryption algorithm number (7 = AES-CBC). */
  cryptoId: number;
  /** Cipher key length in octets (16, 24, 32). */
  keyBytes: number;
}

const HASH_BYTES: Record<HashName, number> = { sha1: 20, sha256: 32, sha384: 48, sha512: 64 };
/** Checksum length: HMAC-SHA-1-96, otherwise RFC 4868's truncation to half the hash. */
const ICV_BYTES: Record<HashName, number> = { sha1: 12, sha256: 16, sha384: 24, sha512: 32 };
const BLOCK = 16;

export const hashBytes = (h: HashName): number => HASH_BYTES[h];
export const icvBytes = (h: HashName, peerNt5Version?: number): number =>
  peerNt5Version !== undefined && TRUNCATED_ICV_VERSIONS.has(peerNt5Version) ? 12 : ICV_BYTES[h];

/** SP 800-56A concatenation KDF: Hash(counter32 ‖ Z ‖ OtherInfo) for counter 1, 2, … truncated to `length`. */
export function aKdf(hash: HashName, z: Buffer, otherInfo: Buffer, length: number): Buffer {
  const out: Buffer[] = [];
  let have = 0;
  for (let counter = 1; have < length; counter++) {
    const c = Buffer.alloc(4);
    c.writeUInt32BE(counter);
    const block = createHash(hash).update(c).update(z).update(otherInfo).digest();
    out.push(block);
    have += block.length;
  }
  return Buffer.concat(out).subarray(0, length);
}

/** OtherInfo(pub, priv) = AlgorithmID ‖ PartyUInfo (CKY-I) ‖ PartyVInfo (CKY-R) ‖ pub ‖ priv. */
export function otherInfo(suite: AuthIpSuite, cookieI: Buffer, cookieR: Buffer, pub: Buffer, priv: Buffer): Buffer {
  const alg = Buffer.alloc(2);
  alg.writeUInt16BE(suite.cryptoId);
  return Buffer.concat([alg, cookieI, cookieR, pub, priv]);
}

export interface AuthIpKeys {
  skeyid: Buffer;
  d: Buffer;
  a: Buffer;
  e: Buffer;
  /** The cipher key: the first keyBytes octets of SKEYID_e. */
  encKey: Buffer;
}

/** Main Mode keys (§3.1.7.4) from the GSS-API secret, the nonces, the cookies and g^xy if any. */
export function mainModeKeys(
  suite: AuthIpSuite,
  gssSecret: Buffer,
  ni: Buffer,
  nr: Buffer,
  cookieI: Buffer,
  cookieR: Buffer,
  gxy: Buffer = Buffer.alloc(0),
): AuthIpKeys {
  const n = hashBytes(suite.hash);
  const info = (pub: Buffer, priv: Buffer) => otherInfo(suite, cookieI, cookieR, pub, priv);
  const nonces = Buffer.concat([ni, nr]);
  const tag = (b: number) => Buffer.concat([nonces, Buffer.from([b])]);
  const skeyid = aKdf(suite.hash, gxy, info(nonces, gssSecret), n);
  const d = aKdf(suite.hash, gxy, info(tag(0), skeyid), n);
  const a = aKdf(suite.hash, gxy, info(tag(1), Buffer.concat([d, skeyid])), n);
  const e = aKdf(suite.hash, gxy, info(tag(2), Buffer.concat([a, skeyid])), Math.max(n, suite.keyBytes));
  return { skeyid, d, a, e, encKey: e.subarray(0, suite.keyBytes) };
}

/**
 * The Main Mode transcript (§3.1.7.4): H1 = SHA-256(#1), H2 = SHA-256(#2 ‖ H1), then
 * Hn = hash(#n ‖ Hn-1) with the agreed hash for the GSS-API messages that follow.
 */
export class Transcript {
  private value = Buffer.alloc(0);
  private count = 0;

  /** `sha256First`: how many messages are hashed with SHA-256 before the agreed hash (2 in Main Mode). */
  constructor(
    private readonly hash: () => HashName | undefined,
    private readonly sha256First = 2,
  ) {}

  add(message: Buffer): void {
    const h = this.count < this.sha256First ? 'sha256' : (this.hash() ?? 'sha256');
    this.value = createHash(h).update(message).update(this.value).digest();
    this.count++;
  }

  get digest(): Buffer {
    return this.value;
  }

  get messages(): number {
    return this.count;
  }
}

/**
 * SKEYID_em (§3.1.7.4): A-KDF(Z, OtherInfo(Ni ‖ Nr, GSS-APIsecret_em), hashLength) — the Main Mode
 * nonces with the session key of Extended Mode's own GSS-API exchange (the user's).
 */
export function extendedModeKey(
  suite: AuthIpSuite,
  gssSecretEm: Buffer,
  ni: Buffer,
  nr: Buffer,
  cookieI: Buffer,
  cookieR: Buffer,
  gxy: Buffer = Buffer.alloc(0),
): Buffer {
  const info = otherInfo(suite, cookieI, cookieR, Buffer.concat([ni, nr]), gssSecretEm);
  return aKdf(suite.hash, gxy, info, hashBytes(suite.hash));
}

/**
 * Auth3 (initiator) or Auth4 (responder) (§3.1.7.4): prf(SKEYID_em, H ‖ Auth1) and
 * prf(SKEYID_em, H ‖ Auth2), H the hash chain over the Extended Mode messages before the final
 * two, each as plaintext payloads. (The section leaves the prf's bracket open; it is read as
 * Auth1/Auth2 do it: the suffix inside.)
 */
export const extendedAuthHash = (suite: AuthIpSuite, skeyidEm: Buffer, chain: Buffer, auth12: Buffer): Buffer =>
  createHmac(suite.hash, skeyidEm).update(chain).update(auth12).digest();

/** Auth1 (initiator, 1) or Auth2 (responder, 2): prf(SKEYID, transcript ‖ n). */
export const authHash = (suite: AuthIpSuite, skeyid: Buffer, transcript: Buffer, who: 1 | 2): Buffer =>
  createHmac(suite.hash, skeyid)
    .update(transcript)
    .update(Buffer.from([who]))
    .digest();

export const sameHash = (a: Buffer, b: Buffer): boolean => a.length === b.length && timingSafeEqual(a, b);

const cipherName = (keyBytes: number): string => `aes-${keyBytes * 8}-cbc`;

/**
 * An encrypted message (§2.2.3.2.1): header (E flag, Crypto next payload) ‖ Crypto payload
 * (seqNUM, IV) ‖ CBC(payloads ‖ padding ‖ pad length ‖ next payload) ‖ checksum.
 */
export function sealMessage(
  suite: AuthIpSuite,
  keys: Pick<AuthIpKeys, 'a' | 'encKey'>,
  header: Buffer,
  seq: number,
  firstPayload: number,
  payloads: Buffer,
  icvLength: number,
): Buffer {
  const iv = randomOctets(BLOCK);
  const padTo = Math.ceil((payloads.length + 2) / BLOCK) * BLOCK;
  const padLength = padTo - payloads.length - 2;
  const trailer = Buffer.alloc(padLength + 2);
  for (let i = 0; i < padLength; i++) trailer[i] = i + 1; // RFC 4303 §2.4 monotonic padding
  trailer[padLength] = padLength;
  trailer[padLength + 1] = firstPayload;
  const c = createCipheriv(cipherName(suite.keyBytes), keys.encKey, iv).setAutoPadding(false);
  const ciphertext = Buffer.concat([c.update(payloads), c.update(trailer), c.final()]);
  const crypto = Buffer.alloc(8 + BLOCK);
  crypto[0] = 0;
  crypto.writeUInt16BE(crypto.length, 2);
  crypto.writeUInt32BE(seq >>> 0, 4);
  iv.copy(crypto, 8);
  const head = Buffer.from(header);
  head[19] = ((head[19] as number) | 1) & 0xff;
  const total = head.length + crypto.length + ciphertext.length + icvLength;
  head.writeUInt32BE(total, 24);
  const icv = checksum(suite, keys.a, [head, crypto, ciphertext], icvLength);
  return Buffer.concat([head, crypto, ciphertext, icv]);
}

function checksum(suite: AuthIpSuite, key: Buffer, parts: Buffer[], icvLength: number): Buffer {
  const h = createHmac(suite.hash, key);
  const [head, ...rest] = parts;
  const zeroed = Buffer.from(head as Buffer);
  zeroed.writeUInt32BE(0, 24); // the header's length field is zero in the checksum (§2.2.3.2.1)
  h.update(zeroed);
  for (const p of rest) h.update(p);
  return h.digest().subarray(0, icvLength);
}

/** Checks and decrypts a sealed message; returns the first payload type and the payload octets. */
export function openMessage(
  suite: AuthIpSuite,
  keys: Pick<AuthIpKeys, 'a' | 'encKey'>,
  raw: Buffer,
  bodyOffset: number,
  iv: Buffer,
  icvLength: number,
): { firstPayload: number; payloads: Buffer } {
  const sealed = raw.subarray(bodyOffset);
  if (sealed.length < icvLength + BLOCK || (sealed.length - icvLength) % BLOCK !== 0 || iv.length !== BLOCK)
    throw new V1DecodeError(`sealed body of ${sealed.length} octets`, NotifyType.PAYLOAD_MALFORMED);
  const ciphertext = sealed.subarray(0, sealed.length - icvLength);
  const icv = sealed.subarray(sealed.length - icvLength);
  const expected = checksum(suite, keys.a, [raw.subarray(0, 28), raw.subarray(28, bodyOffset), ciphertext], icvLength);
  if (!sameHash(icv, expected))
    throw new V1DecodeError(
      'the checksum of an encrypted AuthIP message does not match',
      NotifyType.INVALID_HASH_INFORMATION,
    );
  const d = createDecipheriv(cipherName(suite.keyBytes), keys.encKey, iv).setAutoPadding(false);
  const plain = Buffer.concat([d.update(ciphertext), d.final()]);
  const padLength = plain[plain.length - 2] as number;
  const firstPayload = plain[plain.length - 1] as number;
  if (padLength + 2 > plain.length)
    throw new V1DecodeError(`pad length ${padLength} in ${plain.length} octets`, NotifyType.PAYLOAD_MALFORMED);
  return { firstPayload, payloads: plain.subarray(0, plain.length - 2 - padLength) };
}

/**
 * Quick Mode key material for one direction, named by its receiving SPI (§3.1.7.4):
 * A-KDF(Z(qm), OtherInfo(MessageId ‖ SPI ‖ Ni(qm) ‖ Nr(qm) ‖ SKEYID_d, priv), length), priv empty
 * or, after Extended Mode, Ni(mm) ‖ Nr(mm) ‖ SKEYID_em: the SA's keys then depend on the user's
 * authentication too.
 */
export function quickModeKeymat(
  suite: AuthIpSuite,
  skeyidD: Buffer,
  cookieI: Buffer,
  cookieR: Buffer,
  messageId: number,
  spi: Buffer,
  niQm: Buffer,
  nrQm: Buffer,
  length: number,
  zQm: Buffer = Buffer.alloc(0),
  priv: Buffer = Buffer.alloc(0),
): Buffer {
  const mid = Buffer.alloc(4);
  mid.writeUInt32BE(messageId >>> 0);
  const pub = Buffer.concat([mid, spi, niQm, nrQm, skeyidD]);
  return aKdf(suite.hash, zQm, otherInfo(suite, cookieI, cookieR, pub, priv), length);
}
