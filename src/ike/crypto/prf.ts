/** IKEv2 PRF and prf+ (RFC 7296 §2.13) over node:crypto HMAC. */
import { createHmac } from 'node:crypto';
import type { PrfAlg } from './algorithms.ts';

export function prf(alg: PrfAlg, key: Buffer, ...data: Buffer[]): Buffer {
  const h = createHmac(alg.hash, key);
  for (const d of data) h.update(d);
  return h.digest();
}

/** prf+ (K,S) = T1 | T2 | …, Tn = prf(K, Tn-1 | S | n), truncated to `length` bytes. */
export function prfPlus(alg: PrfAlg, key: Buffer, seed: Buffer, length: number): Buffer {
  const blocks = Math.ceil(length / alg.size);
  if (blocks > 255) throw new RangeError(`prf+ cannot produce ${length} bytes with a ${alg.size}-byte PRF`);
  const out: Buffer[] = [];
  let t: Buffer = Buffer.alloc(0);
  for (let n = 1; n <= blocks; n++) {
    t = prf(alg, key, t, seed, Buffer.from([n]));
    out.push(t);
  }
  return Buffer.concat(out).subarray(0, length);
}
