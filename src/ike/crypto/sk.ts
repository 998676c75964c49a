/**
 * The Encrypted payload (RFC 7296 §3.14; RFC 5282 for AES-GCM) and its fragments (RFC 7383 SKF):
 * protect a chain of inner payloads into one message or into fragments, and verify and open a
 * received one. Integrity is checked before anything is decrypted; every failure is an
 * IkeDecodeError for the state machine to drop.
 */
import { createCipheriv, createDecipheriv, createHmac, timingSafeEqual } from 'node:crypto';
import { randomOctets } from './random.ts';
import { HEADER_LENGTH, PayloadType } from '../wire/constants.ts';
import {
  decodePayloadChain,
  encodeHeader,
  encodePayloadChain,
  type IkeHeader,
  IkeDecodeError,
  type IkeMessage,
  type Payload,
  type SkfPayload,
  type SkPayload,
} from '../wire/codec.ts';
import type { EncrAlg, IntegAlg } from './algorithms.ts';

export interface SkKeys {
  encr: EncrAlg;
  /** Encryption key with the salt appended (GCM). */
  encrKey: Buffer;
  integ?: IntegAlg;
  integKey: Buffer;
}

function cipherName(alg: EncrAlg, keyBytes: number): string {
  return `aes-${keyBytes * 8}-${alg.mode}`;
}

const icvLength = (keys: SkKeys): number => (keys.encr.mode === 'gcm' ? keys.encr.icvSize : (keys.integ?.icvSize ?? 0));

const padLength = (alg: EncrAlg, plainLen: number): number =>
  alg.mode === 'cbc' ? (alg.blockSize - ((plainLen + 1) % alg.blockSize)) % alg.blockSize : 0;

/** Octets the IV, padded plaintext and ICV of `plainLen` plaintext octets take. */
const sealedLength = (keys: SkKeys, plainLen: number): number =>
  keys.encr.ivSize + plainLen + padLength(keys.encr, plainLen) + 1 + icvLength(keys);

/** IV | ciphertext | ICV of `plain`, authenticating `aad` (everything of the message before the IV). */
function seal(aad: Buffer, plain: Buffer, keys: SkKeys): Buffer {
  const alg = keys.encr;
  const keyBytes = keys.encrKey.length - alg.saltSize;
  const padLen = padLength(alg, plain.length);
  const padded = Buffer.concat([plain, Buffer.alloc(padLen), Buffer.from([padLen])]);
  const iv = randomOctets(alg.ivSize);
  if (alg.mode === 'gcm') {
    const salt = keys.encrKey.subarray(keyBytes);
    const c = createCipheriv(
      cipherName(alg, keyBytes) as 'aes-256-gcm',
      keys.encrKey.subarray(0, keyBytes),
      Buffer.concat([salt, iv]),
      { authTagLength: alg.icvSize },
    );
    c.setAAD(aad);
    const ct = Buffer.concat([c.update(padded), c.final()]);
    return Buffer.concat([iv, ct, c.getAuthTag()]);
  }
  const c = createCipheriv(cipherName(alg, keyBytes), keys.encrKey, iv);
  c.setAutoPadding(false);
  const ct = Buffer.concat([c.update(padded), c.final()]);
  const integ = keys.integ;
  if (!integ) throw new IkeDecodeError('a CBC cipher needs an integrity algorithm');
  const icv = createHmac(integ.hash, keys.integKey)
    .update(aad)
    .update(iv)
    .update(ct)
    .digest()
    .subarray(0, integ.icvSize);
  return Buffer.concat([iv, ct, icv]);
}

/** Verifies and decrypts IV | ciphertext | ICV (`body`) with `aad`; returns the plaintext without padding. */
function unseal(aad: Buffer, body: Buffer, keys: SkKeys): Buffer {
  const alg = keys.encr;
  const keyBytes = keys.encrKey.length - alg.saltSize;
  const icvLen = icvLength(keys);
  if (body.length < alg.ivSize + icvLen + 1) throw new IkeDecodeError('encrypted payload too short');
  const iv = body.subarray(0, alg.ivSize);
  const ct = body.subarray(alg.ivSize, body.length - icvLen);
  const icv = body.subarray(body.length - icvLen);
  let plain: Buffer;
  if (alg.mode === 'gcm') {
    const salt = keys.encrKey.subarray(keyBytes);
    try {
      const d = createDecipheriv(
        cipherName(alg, keyBytes) as 'aes-256-gcm',
        keys.encrKey.subarray(0, keyBytes),
        Buffer.concat([salt, iv]),
        { authTagLength: alg.icvSize },
      );
      d.setAAD(aad);
      d.setAuthTag(icv);
      plain = Buffer.concat([d.update(ct), d.final()]);
    } catch {
      throw new IkeDecodeError('encrypted payload failed its integrity check');
    }
  } else {
    const integ = keys.integ;
    if (!integ) throw new IkeDecodeError('a CBC cipher needs an integrity algorithm');
    const expected = createHmac(integ.hash, keys.integKey)
      .update(aad)
      .update(body.subarray(0, body.length - icvLen))
      .digest()
      .subarray(0, icvLen);
    if (!timingSafeEqual(expected, icv)) throw new IkeDecodeError('encrypted payload failed its integrity check');
    if (ct.length === 0 || ct.length % alg.blockSize !== 0)
      throw new IkeDecodeError('ciphertext is not a whole number of blocks');
    const d = createDecipheriv(cipherName(alg, keyBytes), keys.encrKey, iv);
    d.setAutoPadding(false);
    plain = Buffer.concat([d.update(ct), d.final()]);
  }
  const padLen = plain[plain.length - 1] as number;
  if (padLen + 1 > plain.length) throw new IkeDecodeError('pad length exceeds the decrypted data');
  return plain.subarray(0, plain.length - padLen - 1);
}

/** Builds a whole message: header, clear payloads (rare), then SK with `inner` encrypted. */
export function protectMessage(
  h: Omit<IkeHeader, 'length' | 'nextPayload'>,
  inner: readonly Payload[],
  keys: SkKeys,
  clear: readonly Payload[] = [],
): Buffer {
  const { firstType: innerType, bytes: plain } = encodePayloadChain(inner);
  const skLen = 4 + sealedLength(keys, plain.length);
  const { firstType: clearFirst, bytes: clearBytes } = encodePayloadChain(clear);
  const total = HEADER_LENGTH + clearBytes.length + skLen;
  // The clear chain's last next-payload must point at SK: re-encode with that link.
  const clearChain = clear.length === 0 ? Buffer.alloc(0) : relink(clearBytes, PayloadType.SK);
  const header = encodeHeader({ ...h, nextPayload: clear.length === 0 ? PayloadType.SK : clearFirst }, total);
  const skHeader = Buffer.alloc(4);
  skHeader[0] = innerType;
  skHeader.writeUInt16BE(skLen, 2);
  const aad = Buffer.concat([header, clearChain, skHeader]);
  return Buffer.concat([aad, seal(aad, plain, keys)]);
}

/**
 * The message as one datagram when it fits `maxSize` octets, else as RFC 7383 fragments (each a
 * message with one SKF payload, the first naming the first inner payload) that each fit.
 */
export function protectFragmented(
  h: Omit<IkeHeader, 'length' | 'nextPayload'>,
  inner: readonly Payload[],
  keys: SkKeys,
  maxSize: number,
): Buffer[] {
  const whole = protectMessage(h, inner, keys);
  if (whole.length <= maxSize) return [whole];
  const { firstType: innerType, bytes: plain } = encodePayloadChain(inner);
  // The largest plaintext whose fragment message fits maxSize.
  const overhead = HEADER_LENGTH + 8;
  let chunk = maxSize - overhead - keys.encr.ivSize - icvLength(keys) - 1;
  while (chunk > 1 && overhead + sealedLength(keys, chunk) > maxSize) chunk--;
  if (chunk < 16) throw new IkeDecodeError(`fragment size ${maxSize} leaves no room for data`);
  const total = Math.ceil(plain.length / chunk);
  if (total > 0xffff) throw new IkeDecodeError('message too large to fragment');
  const out: Buffer[] = [];
  for (let i = 0; i < total; i++) {
    const part = plain.subarray(i * chunk, (i + 1) * chunk);
    const skfLen = 8 + sealedLength(keys, part.length);
    const header = encodeHeader({ ...h, nextPayload: PayloadType.SKF }, HEADER_LENGTH + skfLen);
    const skf = Buffer.alloc(8);
    skf[0] = i === 0 ? innerType : PayloadType.NONE;
    skf.writeUInt16BE(skfLen, 2);
    skf.writeUInt16BE(i + 1, 4);
    skf.writeUInt16BE(total, 6);
    const aad = Buffer.concat([header, skf]);
    out.push(Buffer.concat([aad, seal(aad, part, keys)]));
  }
  return out;
}

/** Sets the next-payload field of the last payload in an encoded chain. */
function relink(chain: Buffer, next: number): Buffer {
  const out = Buffer.from(chain);
  let off = 0;
  for (;;) {
    const len = out.readUInt16BE(off + 2);
    if (off + len >= out.length) {
      out[off] = next;
      return out;
    }
    off += len;
  }
}

/** Verifies and decrypts the SK payload of `msg`; returns the inner payloads. */
export function openMessage(msg: IkeMessage, keys: SkKeys): Payload[] {
  const last = msg.payloads[msg.payloads.length - 1];
  if (!last || last.type !== PayloadType.SK || !('body' in last) || 'fragment' in last) {
    throw new IkeDecodeError('message has no encrypted payload');
  }
  const sk = last as SkPayload;
  const plain = unseal(msg.raw.subarray(0, sk.offset + 4), sk.body, keys);
  return decodePayloadChain(plain, 0, plain.length, sk.innerType);
}

/** The SKF payload of `msg`, if it is a fragment. */
export const fragmentOf = (msg: IkeMessage): SkfPayload | undefined => {
  const last = msg.payloads[msg.payloads.length - 1];
  return last && last.type === PayloadType.SKF && 'fragment' in last ? (last as SkfPayload) : undefined;
};

/** Verifies and decrypts one fragment; returns its plaintext part. */
export function openFragment(
  msg: IkeMessage,
  keys: SkKeys,
): { fragment: number; total: number; innerType: number; plain: Buffer } {
  const f = fragmentOf(msg);
  if (!f) throw new IkeDecodeError('message is not a fragment');
  const plain = unseal(msg.raw.subarray(0, f.offset + 8), f.body, keys);
  return { fragment: f.fragment, total: f.total, innerType: f.innerType, plain };
}

/**
 * Collects the fragments of one message (RFC 7383 §2.6): verified parts by number; when all have
 * arrived, the inner payloads of the whole message. Fragments with another total are dropped.
 */
export class Reassembly {
  private readonly parts = new Map<number, Buffer>();
  private innerType = PayloadType.NONE as number;
  constructor(
    readonly mid: number,
    readonly total: number,
  ) {}

  /** Adds a verified fragment; returns the inner payloads once complete. */
  add(f: { fragment: number; total: number; innerType: number; plain: Buffer }): Payload[] | undefined {
    if (f.total !== this.total || this.parts.has(f.fragment)) return undefined;
    this.parts.set(f.fragment, f.plain);
    if (f.fragment === 1) this.innerType = f.innerType;
    if (this.parts.size < this.total) return undefined;
    const plain = Buffer.concat([...Array(this.total).keys()].map((i) => this.parts.get(i + 1) as Buffer));
    return decodePayloadChain(plain, 0, plain.length, this.innerType);
  }
}
