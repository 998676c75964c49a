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

/**
 * An IKE SA's keys, {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}, in one block of their
 * own (not Node's shared pool, where they would pin a slab): each key is a view made when it is
 * read, so an SA holds one buffer rather than seven.
 */
export class IkeKeys {
  private block: Buffer;

  constructor(
    km: Buffer,
    private readonly prfBytes: number,
    private readonly integBytes: number,
    private readonly encrBytes: number,
  ) {
    this.block = Buffer.allocUnsafeSlow(km.length);
    km.copy(this.block);
  }

  /** The `size` octets after `before` keys of SK_d's size, `integ` and `encr` integrity and encryption keys. */
  private key(before: { prf?: number; integ?: number; encr?: number }, size: number): Buffer {
    const at =
      (before.prf ?? 0) * this.prfBytes + (before.integ ?? 0) * this.integBytes + (before.encr ?? 0) * this.encrBytes;
    if (at + size > this.block.length) throw new Error('SK_pi and SK_pr are gone once IKE_AUTH is done');
    return this.block.subarray(at, at + size);
  }

  get skD(): Buffer {
    return this.key({}, this.prfBytes);
  }
  get skAi(): Buffer {
    return this.key({ prf: 1 }, this.integBytes);
  }
  get skAr(): Buffer {
    return this.key({ prf: 1, integ: 1 }, this.integBytes);
  }
  get skEi(): Buffer {
    return this.key({ prf: 1, integ: 2 }, this.encrBytes);
  }
  get skEr(): Buffer {
    return this.key({ prf: 1, integ: 2, encr: 1 }, this.encrBytes);
  }
  get skPi(): Buffer {
    return this.key({ prf: 1, integ: 2, encr: 2 }, this.prfBytes);
  }
  get skPr(): Buffer {
    return this.key({ prf: 2, integ: 2, encr: 2 }, this.prfBytes);
  }

  /**
   * SK_pi and SK_pr serve the AUTH payloads alone (§2.15): zeroed and let go once IKE_AUTH is done.
   * The whole old block is zeroed, so a view of another key read before this reads zeros after it:
   * read keys when they are used (as `IkeSa.skKeys` does), never keep them.
   */
  dropAuthKeys(): void {
    const keep = this.prfBytes + 2 * this.integBytes + 2 * this.encrBytes;
    if (this.block.length === keep) return;
    const smaller = Buffer.allocUnsafeSlow(keep);
    this.block.copy(smaller, 0, 0, keep);
    this.block.fill(0);
    this.block = smaller;
  }
}

const encrKeyBytes = (s: IkeSuite): number => s.encrKeyBits / 8 + s.encr.saltSize;

/**
 * SKEYSEED = prf(Ni | Nr, g^ir); {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} =
 * prf+(SKEYSEED, Ni | Nr | SPIi | SPIr). For a rekey, pass the old SK_d and its PRF in `rekey`:
 * SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr).
 */
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
  // SKEYSEED is not kept: every later key comes from SK_d.
  return new IkeKeys(km, p, integ, encr);
}

/**
 * Hands out consecutive keys from KEYMAT, all in one allocation of its own: small copies from
 * Node's shared 8 KiB pool would keep whole pool slabs alive as long as the keys live.
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
