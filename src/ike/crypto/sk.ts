/**
 * The Encrypted payload (RFC 7296 §3.14; RFC 5282 for AES-GCM): protect a chain of inner
 * payloads into a complete message, and verify and open a received one. Integrity is checked
 * before anything is decrypted; every failure is an IkeDecodeError for the state machine to drop.
 */
import { createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { HEADER_LENGTH, PayloadType } from '../wire/constants.ts';
import {
  decodePayloadChain,
  encodeHeader,
  encodePayloadChain,
  type IkeHeader,
  IkeDecodeError,
  type IkeMessage,
  type Payload,
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

/** Builds a whole message: header, clear payloads (rare), then SK with `inner` encrypted. */
export function protectMessage(
  h: Omit<IkeHeader, 'length' | 'nextPayload'>,
  inner: readonly Payload[],
  keys: SkKeys,
  clear: readonly Payload[] = [],
): Buffer {
  const { firstType: innerType, bytes: plain } = encodePayloadChain(inner);
  const alg = keys.encr;
  const keyBytes = keys.encrKey.length - alg.saltSize;
  const padLen = alg.mode === 'cbc' ? (alg.blockSize - ((plain.length + 1) % alg.blockSize)) % alg.blockSize : 0;
  const padded = Buffer.concat([plain, Buffer.alloc(padLen), Buffer.from([padLen])]);
  const iv = randomBytes(alg.ivSize);
  const icvLen = alg.mode === 'gcm' ? alg.icvSize : (keys.integ?.icvSize ?? 0);
  const skLen = 4 + iv.length + padded.length + icvLen;
  const { firstType: clearFirst, bytes: clearBytes } = encodePayloadChain(clear);
  const total = HEADER_LENGTH + clearBytes.length + skLen;
  // The clear chain's last next-payload must point at SK: re-encode with that link.
  const clearChain = clear.length === 0 ? Buffer.alloc(0) : relink(clearBytes, PayloadType.SK);
  const header = encodeHeader({ ...h, nextPayload: clear.length === 0 ? PayloadType.SK : clearFirst }, total);
  const skHeader = Buffer.alloc(4);
  skHeader[0] = innerType;
  skHeader.writeUInt16BE(skLen, 2);
  const aad = Buffer.concat([header, clearChain, skHeader]);
  if (alg.mode === 'gcm') {
    const salt = keys.encrKey.subarray(keyBytes);
    const c = createCipheriv(
      cipherName(alg, keyBytes) as 'aes-256-gcm',
      keys.encrKey.subarray(0, keyBytes),
      Buffer.concat([salt, iv]),
      {
        authTagLength: alg.icvSize,
      },
    );
    c.setAAD(aad);
    const ct = Buffer.concat([c.update(padded), c.final()]);
    return Buffer.concat([aad, iv, ct, c.getAuthTag()]);
  }
  const c = createCipheriv(cipherName(alg, keyBytes), keys.encrKey, iv);
  c.setAutoPadding(false);
  const ct = Buffer.concat([c.update(padded), c.final()]);
  const signed = Buffer.concat([aad, iv, ct]);
  const integ = keys.integ;
  if (!integ) throw new IkeDecodeError('a CBC cipher needs an integrity algorithm');
  const icv = createHmac(integ.hash, keys.integKey).update(signed).digest().subarray(0, integ.icvSize);
  return Buffer.concat([signed, icv]);
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
  const alg = keys.encr;
  const keyBytes = keys.encrKey.length - alg.saltSize;
  const icvLen = alg.mode === 'gcm' ? alg.icvSize : (keys.integ?.icvSize ?? 0);
  const body = sk.body;
  if (body.length < alg.ivSize + icvLen + 1) throw new IkeDecodeError('encrypted payload too short');
  const iv = body.subarray(0, alg.ivSize);
  const ct = body.subarray(alg.ivSize, body.length - icvLen);
  const icv = body.subarray(body.length - icvLen);
  const aad = msg.raw.subarray(0, sk.offset + 4);
  let plain: Buffer;
  if (alg.mode === 'gcm') {
    const salt = keys.encrKey.subarray(keyBytes);
    try {
      const d = createDecipheriv(
        cipherName(alg, keyBytes) as 'aes-256-gcm',
        keys.encrKey.subarray(0, keyBytes),
        Buffer.concat([salt, iv]),
        {
          authTagLength: alg.icvSize,
        },
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
      .update(msg.raw.subarray(0, msg.raw.length - icvLen))
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
  return decodePayloadChain(plain, 0, plain.length - padLen - 1, sk.innerType);
}
