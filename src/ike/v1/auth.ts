/**
 * Main Mode authentication with certificates (RFC 2409 §5.1): CERT payloads with our chain and a
 * SIG payload over HASH_I / HASH_R — RSA as a PKCS#1 v1.5 signature without DigestInfo (§5.1:
 * "encoded as in PKCS#1"), ECDSA per RFC 4754 (auth methods 9/10/11, r‖s) over the hash itself, as
 * strongSwan and libreswan sign it (node:crypto always hashes again, so the addon's OpenSSL call
 * signs the digest). The peer's chain, validity, EKU and identity are checked by the same code as IKEv2's
 * (`checkPeerCertificate`). CERTREQ names the CAs we trust by subject DN (RFC 2408 §3.10).
 */
import { constants, type KeyObject, privateEncrypt, publicDecrypt, timingSafeEqual } from 'node:crypto';
import { ecdsaSignDigest, ecdsaVerifyDigest } from '../../io/native.ts';
import { IkeError } from '../errors.ts';
import type { Identity } from '../tasks/ike-auth.ts';
import { type CertCredentials, certificatesIn, checkPeerCertificate, type PeerCertificate } from '../tasks/ike-cert.ts';
import { subjectDer } from '../crypto/x509.ts';
import { NotifyType as V2Notify } from '../wire/constants.ts';
import type { V1Payload } from './codec.ts';
import { AuthMethod, CertEncoding, PayloadType } from './constants.ts';

/** The ECDSA auth methods (RFC 4754): each one's curve and hash. */
const ECDSA: Partial<Record<number, { curve: string; hash: 'sha256' | 'sha384' | 'sha512' }>> = {
  [AuthMethod.ECDSA_SHA256]: { curve: 'prime256v1', hash: 'sha256' },
  [AuthMethod.ECDSA_SHA384]: { curve: 'secp384r1', hash: 'sha384' },
  [AuthMethod.ECDSA_SHA512]: { curve: 'secp521r1', hash: 'sha512' },
};

/** The hash of an ECDSA auth method (RFC 4754), undefined for the other methods. */
export const ecdsaHash = (method: number): 'sha256' | 'sha384' | 'sha512' | undefined => ECDSA[method]?.hash;

const fail = (why: string): never => {
  throw new IkeError(why, V2Notify.AUTHENTICATION_FAILED);
};

/** The Phase 1 authentication method our certificate's key signs with. */
export function signatureMethod(key: KeyObject): number {
  const kt = key.asymmetricKeyType;
  if (kt === 'rsa') return AuthMethod.RSA_SIG;
  if (kt === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    const method = Object.entries(ECDSA).find(([, e]) => e?.curve === curve)?.[0];
    if (method) return Number(method);
  }
  return fail(`certificate keys of type ${kt} are not supported in IKEv1 (use RSA or ECDSA P-256/P-384/P-521)`);
}

/** SIG_I / SIG_R over HASH_I / HASH_R with the negotiated method. */
export function signHash(method: number, key: KeyObject, hash: Buffer): Buffer {
  if (method === AuthMethod.RSA_SIG) return privateEncrypt({ key, padding: constants.RSA_PKCS1_PADDING }, hash);
  if (!ECDSA[method]) return fail(`auth method ${AuthMethod[method] ?? method} cannot sign`);
  return ecdsaSignDigest(key, hash);
}

function verifyHash(method: number, key: KeyObject, hash: Buffer, sig: Buffer): boolean {
  if (method === AuthMethod.RSA_SIG) {
    if (key.asymmetricKeyType !== 'rsa') return fail('RSA signature with a non-RSA certificate');
    let recovered: Buffer;
    try {
      recovered = publicDecrypt({ key, padding: constants.RSA_PKCS1_PADDING }, sig);
    } catch {
      return false;
    }
    return recovered.length === hash.length && timingSafeEqual(recovered, hash);
  }
  const curve = ECDSA[method]?.curve;
  if (!curve) return fail(`auth method ${AuthMethod[method] ?? method} is not a signature method`);
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== curve)
    return fail(`the peer's certificate key does not fit auth method ${AuthMethod[method]}`);
  return ecdsaVerifyDigest(key, hash, sig);
}

/** CERTREQ payloads naming each CA we trust (its subject DN). */
export const certRequests = (cred: CertCredentials): V1Payload[] =>
  cred.trustedCas.map((ca) => ({ type: PayloadType.CR, encoding: CertEncoding.X509_SIG, data: subjectDer(ca) }));

/** Our CERT payloads (leaf first) and the SIG payload over `hash`. */
export function signaturePayloads(method: number, cred: CertCredentials, hash: Buffer): V1Payload[] {
  return [
    ...cred.chain.map((x): V1Payload => ({ type: PayloadType.CERT, encoding: CertEncoding.X509_SIG, data: x.raw })),
    { type: PayloadType.SIG, data: signHash(method, cred.key, hash) },
  ];
}

/** The peer's certificate checked like IKEv2's, and its SIG over `hash`. */
export function verifySignaturePayloads(
  method: number,
  cred: CertCredentials,
  id: Identity,
  payloads: readonly V1Payload[],
  hash: Buffer,
): PeerCertificate {
  const sig = payloads.find((p) => p.type === PayloadType.SIG);
  if (!sig || !('data' in sig)) return fail('the peer sent no signature (SIG payload)');
  const certs = certificatesIn(
    payloads as readonly { type: number; encoding?: number; data?: Buffer }[],
    PayloadType.CERT,
  );
  const { leaf, peer } = checkPeerCertificate(certs, id, cred);
  if (!verifyHash(method, leaf.publicKey, hash, sig.data))
    fail("the peer's signature does not verify with its certificate");
  return peer;
}
