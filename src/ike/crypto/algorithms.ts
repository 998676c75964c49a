/** The IKEv2 algorithms consec implements, with their key and output sizes (node:crypto names). */
import { EncrId, IntegId, KeId, PrfId } from '../wire/constants.ts';

export interface PrfAlg {
  hash: 'sha1' | 'sha256' | 'sha384' | 'sha512';
  /** Output length; also the preferred key length. */
  size: number;
}

export interface IntegAlg {
  hash: 'sha1' | 'sha256' | 'sha384' | 'sha512';
  keySize: number;
  icvSize: number;
}

export interface EncrAlg {
  mode: 'cbc' | 'gcm';
  blockSize: number;
  ivSize: number;
  keyLengths: number[];
  /** Bytes of salt taken from the key material after the key (GCM: 4). */
  saltSize: number;
  /** Integrity check value carried by the cipher itself (GCM: 16). */
  icvSize: number;
}

export const PRFS: Partial<Record<PrfId, PrfAlg>> = {
  [PrfId.HMAC_SHA1]: { hash: 'sha1', size: 20 },
  [PrfId.HMAC_SHA2_256]: { hash: 'sha256', size: 32 },
  [PrfId.HMAC_SHA2_384]: { hash: 'sha384', size: 48 },
  [PrfId.HMAC_SHA2_512]: { hash: 'sha512', size: 64 },
};

export const INTEGS: Partial<Record<IntegId, IntegAlg>> = {
  [IntegId.HMAC_SHA1_96]: { hash: 'sha1', keySize: 20, icvSize: 12 },
  [IntegId.HMAC_SHA2_256_128]: { hash: 'sha256', keySize: 32, icvSize: 16 },
  [IntegId.HMAC_SHA2_384_192]: { hash: 'sha384', keySize: 48, icvSize: 24 },
  [IntegId.HMAC_SHA2_512_256]: { hash: 'sha512', keySize: 64, icvSize: 32 },
};

export const ENCRS: Partial<Record<EncrId, EncrAlg>> = {
  [EncrId.AES_CBC]: { mode: 'cbc', blockSize: 16, ivSize: 16, keyLengths: [128, 192, 256], saltSize: 0, icvSize: 0 },
  [EncrId.AES_GCM_16]: { mode: 'gcm', blockSize: 4, ivSize: 8, keyLengths: [128, 192, 256], saltSize: 4, icvSize: 16 },
};

export const KE_GROUPS: KeId[] = [
  KeId.MODP_2048,
  KeId.MODP_3072,
  KeId.MODP_4096,
  KeId.ECP_256,
  KeId.ECP_384,
  KeId.ECP_521,
  KeId.CURVE25519,
];
