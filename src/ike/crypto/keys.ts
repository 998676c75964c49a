/** IKE SA and child SA key derivation (RFC 7296 §2.14, §2.17). */
import type { EncrAlg, IntegAlg, PrfAlg } from './algorithms.ts';
import { prf, prfPlus } from './prf.ts';

export interface IkeSuite {
  prf: PrfAlg;
  encr: EncrAlg;
  /** Encryption key length in bits. */
  encrKeyBits: number;
  /** Undefined for combined-mode ciphers (AES-GCM). */
  integ?: IntegAlg;
}

export interface IkeKeys {
  skD: Buffer;
  skAi: Buffer;
  skAr: Buffer;
  skEi: Buffer;
  skEr: Buffer;
  skPi: Buffer;
  skPr: Buffer;
}

const encrKeyBytes = (s: IkeSuite): number => s.encrKeyBits / 8 + s.encr.saltSize;

/**
 * SKEYSEED = prf(Ni | Nr, g^ir); {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} =
 * prf+(SKEYSEED, Ni | Nr | SPIi | SPIr). For a rekey, pass the old SK_d and its PRF in `rekey`:
 * SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr).
 */
/**
 * Hands out consecutive keys from KEYMAT, all in one allocation of its own: an SA's keys live as
 * long as the SA, and small copies from Node's shared 8 KiB pool would keep whole pool slabs alive
 * (measured: ≈ 10 KiB of pinned pool memory per SA at 1000 SAs).
 */
function keySlicer(km: Buffer): (n: number) => Buffer {
  const owned = Buffer.allocUnsafeSlow(km.length);
  km.copy(owned);
  let off = 0;
  return (n: number): Buffer => {
    const b = owned.subarray(off, off + n);
    off += n;
    return b;
  };
}

export function deriveIkeKeys(
  suite: IkeSuite,
  ni: Buffer,
  nr: Buffer,
  sharedSecret: Buffer,
  spiI: Buffer,
  spiR: Buffer,
  rekey?: { skD: Buffer; prf: PrfAlg },
): IkeKeys {
  const skeyseed = rekey
    ? prf(rekey.prf, rekey.skD, sharedSecret, ni, nr)
    : prf(suite.prf, Buffer.concat([ni, nr]), sharedSecret);
  const integ = suite.integ?.keySize ?? 0;
  const encr = encrKeyBytes(suite);
  const p = suite.prf.size;
  const km = prfPlus(suite.prf, skeyseed, Buffer.concat([ni, nr, spiI, spiR]), p + 2 * integ + 2 * encr + 2 * p);
  const take = keySlicer(km);
  // SKEYSEED is not kept: every later key comes from SK_d.
  return {
    skD: take(p),
    skAi: take(integ),
    skAr: take(integ),
    skEi: take(encr),
    skEr: take(encr),
    skPi: take(p),
    skPr: take(p),
  };
}

export interface ChildKeys {
  /** Keys for traffic from initiator to responder: encryption key (+salt) then integrity key. */
  encrI: Buffer;
  integI: Buffer;
  encrR: Buffer;
  integR: Buffer;
}

/** KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr), split per RFC 7296 §2.17. */
export function deriveChildKeys(
  prfAlg: PrfAlg,
  skD: Buffer,
  ni: Buffer,
  nr: Buffer,
  encrKeyBytes: number,
  integKeyBytes: number,
  pfsSecret?: Buffer,
): ChildKeys {
  const seed = pfsSecret ? Buffer.concat([pfsSecret, ni, nr]) : Buffer.concat([ni, nr]);
  const km = prfPlus(prfAlg, skD, seed, 2 * (encrKeyBytes + integKeyBytes));
  const take = keySlicer(km);
  const encrI = take(encrKeyBytes);
  const integI = take(integKeyBytes);
  const encrR = take(encrKeyBytes);
  const integR = take(integKeyBytes);
  return { encrI, integI, encrR, integR };
}
