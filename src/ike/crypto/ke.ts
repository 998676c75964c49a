/**
 * Key exchange for IKEv2 (RFC 7296 §3.4, RFC 5903 ECP encoding, RFC 8031 Curve25519) with
 * node:crypto. Public values are checked before use: a bad peer value is an error, never a secret.
 */
import {
  createDiffieHellman,
  createECDH,
  createPrivateKey,
  createPublicKey,
  type DiffieHellman,
  diffieHellman,
  type ECDH,
  generateKeyPairSync,
  getDiffieHellman,
  type KeyObject,
} from 'node:crypto';
import { ConsecError } from '../../errors.ts';
import { KeId } from '../wire/constants.ts';

export class KeyExchangeError extends ConsecError {
  constructor(message: string) {
    super('ERR_IKE_KE', message);
  }
}

const MODP: Partial<Record<KeId, { name: string; bytes: number }>> = {
  [KeId.MODP_2048]: { name: 'modp14', bytes: 256 },
  [KeId.MODP_3072]: { name: 'modp15', bytes: 384 },
  [KeId.MODP_4096]: { name: 'modp16', bytes: 512 },
};
const ECP: Partial<Record<KeId, { curve: string; bytes: number }>> = {
  [KeId.ECP_256]: { curve: 'prime256v1', bytes: 32 },
  [KeId.ECP_384]: { curve: 'secp384r1', bytes: 48 },
  [KeId.ECP_521]: { curve: 'secp521r1', bytes: 66 },
};

export function isSupportedGroup(group: number): boolean {
  return group in MODP || group in ECP || group === KeId.CURVE25519;
}

const b64u = (b: Buffer): string => b.toString('base64url');

const modpCache = new Map<string, { prime: Buffer; generator: Buffer; primeValue: bigint }>();
/** The RFC 3526 group parameters, read once from OpenSSL's well-known groups. */
function modpParams(name: string): { prime: Buffer; generator: Buffer; primeValue: bigint } {
  let p = modpCache.get(name);
  if (!p) {
    const g = getDiffieHellman(name);
    const prime = g.getPrime();
    p = { prime, generator: g.getGenerator(), primeValue: BigInt(`0x${prime.toString('hex')}`) };
    modpCache.set(name, p);
  }
  return p;
}

/** One side's ephemeral key pair for a group. */
export class KeyExchange {
  private constructor(
    readonly group: KeId,
    /** The public value as carried in the KE payload. */
    readonly publicValue: Buffer,
    private readonly compute: (peer: Buffer) => Buffer,
  ) {}

  static create(group: number, privateKey?: Buffer): KeyExchange {
    const modp = MODP[group as KeId];
    if (modp) {
      const params = modpParams(modp.name);
      const dh: DiffieHellman = createDiffieHellman(params.prime, params.generator);
      if (privateKey) dh.setPrivateKey(privateKey);
      // With a private key set, generateKeys() derives its public value instead of a new pair.
      const pub = dh.generateKeys();
      const prime = params.primeValue;
      return new KeyExchange(group, leftPad(pub, modp.bytes), (peer) => {
        if (peer.length !== modp.bytes)
          throw new KeyExchangeError(`MODP public value of ${peer.length} bytes, expected ${modp.bytes}`);
        const y = BigInt(`0x${peer.toString('hex')}`);
        if (y <= 1n || y >= prime - 1n)
          throw new KeyExchangeError('MODP public value out of range (RFC 7296 §3.4 / RFC 6989 check)');
        return leftPad(dh.computeSecret(peer), modp.bytes);
      });
    }
    const ecp = ECP[group as KeId];
    if (ecp) {
      const ecdh: ECDH = createECDH(ecp.curve);
      if (privateKey) ecdh.setPrivateKey(privateKey);
      else ecdh.generateKeys();
      const pub = ecdh.getPublicKey().subarray(1); // x | y without the 0x04 prefix
      return new KeyExchange(group, Buffer.from(pub), (peer) => {
        if (peer.length !== 2 * ecp.bytes)
          throw new KeyExchangeError(`ECP public value of ${peer.length} bytes, expected ${2 * ecp.bytes}`);
        try {
          return leftPad(ecdh.computeSecret(Buffer.concat([Buffer.from([4]), peer])), ecp.bytes);
        } catch {
          throw new KeyExchangeError('ECP public value is not a point on the curve');
        }
      });
    }
    if (group === KeId.CURVE25519) {
      let priv: KeyObject;
      if (privateKey) {
        if (privateKey.length !== 32) throw new KeyExchangeError('X25519 private key must be 32 bytes');
        priv = createPrivateKey({ key: { kty: 'OKP', crv: 'X25519', d: b64u(privateKey), x: '' }, format: 'jwk' });
      } else {
        priv = generateKeyPairSync('x25519').privateKey;
      }
      const pub = Buffer.from(createPublicKey(priv).export({ format: 'jwk' }).x as string, 'base64url');
      return new KeyExchange(group, pub, (peer) => {
        if (peer.length !== 32)
          throw new KeyExchangeError(`Curve25519 public value of ${peer.length} bytes, expected 32`);
        let secret: Buffer;
        try {
          secret = diffieHellman({
            privateKey: priv,
            publicKey: createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: b64u(peer) }, format: 'jwk' }),
          });
        } catch {
          // OpenSSL refuses low-order points itself (the derivation would be all zero).
          throw new KeyExchangeError('Curve25519 public value is a low-order point');
        }
        // RFC 8031 §2: an all-zero result means the peer sent a low-order point.
        if (secret.every((x) => x === 0)) throw new KeyExchangeError('Curve25519 shared secret is all zero');
        return secret;
      });
    }
    throw new KeyExchangeError(`key exchange group ${group} is not supported`);
  }

  /** g^ir from the peer's public value. */
  sharedSecret(peerPublic: Buffer): Buffer {
    return this.compute(peerPublic);
  }
}

function leftPad(b: Buffer, length: number): Buffer {
  if (b.length >= length) return b;
  return Buffer.concat([Buffer.alloc(length - b.length), b]);
}
