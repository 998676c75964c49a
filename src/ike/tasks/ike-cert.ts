/**
 * Certificate authentication (RFC 7296 §2.15, §3.6–3.8; RFC 7427 digital signatures): our CERT and
 * signed AUTH, and the check of the peer's — chain to a CA the auth proposal names, validity,
 * Windows' EKU rule, identity bound to the certificate, signature over the signed octets. Only
 * node:crypto signs and verifies.
 */
import { createHash, type KeyObject, sign, verify, type X509Certificate, X509Certificate as X509 } from 'node:crypto';
import { readIp } from '../../io/addr.ts';
import type { PrfAlg } from '../crypto/algorithms.ts';
import { prf } from '../crypto/prf.ts';
import { spkiSha1, subjectDer } from '../crypto/x509.ts';
import { IkeError } from '../errors.ts';
import type { Payload } from '../wire/codec.ts';
import { AuthMethod, CertEncoding, IdType, NotifyType, PayloadType } from '../wire/constants.ts';
import type { Identity } from './ike-auth.ts';
import type { PayloadOf } from './task.ts';

export interface CertCredentials {
  /** Our certificate first, then intermediates the peer may need. */
  chain: X509Certificate[];
  key: KeyObject;
  /** The CAs the peer's certificate must chain to (the auth proposal's Authority). */
  trustedCas: X509Certificate[];
  /** 'windows' (default): an EKU extension must allow IKE intermediate, server auth or any purpose. */
  eku?: 'windows' | 'any';
  /** Clock for validity checks (tests). */
  now?: () => Date;
}

export interface PeerCertificate {
  subject: string;
  issuer: string;
  /** SHA-1 thumbprint, hex upper case, as Windows shows it. */
  sha1Thumbprint: string;
  /** Subject of the trust anchor the chain ends at. */
  root: string;
}

export interface AuthOctets {
  prf: PrfAlg;
  message: Buffer;
  nonce: Buffer;
  skP: Buffer;
  /** The peer announced RFC 7427 (SIGNATURE_HASH_ALGORITHMS): use the Digital Signature method. */
  rfc7427: boolean;
}

const EKU_IKE_INTERMEDIATE = '1.3.6.1.5.5.8.2.2';
const EKU_SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const EKU_ANY = '2.5.29.37.0';

/** RFC 7427 Appendix A AlgorithmIdentifiers. */
const ALG_IDS: { der: Buffer; hash: 'sha256' | 'sha384' | 'sha512'; key: 'ec' | 'rsa' }[] = [
  { der: Buffer.from('300a06082a8648ce3d040302', 'hex'), hash: 'sha256', key: 'ec' },
  { der: Buffer.from('300a06082a8648ce3d040303', 'hex'), hash: 'sha384', key: 'ec' },
  { der: Buffer.from('300a06082a8648ce3d040304', 'hex'), hash: 'sha512', key: 'ec' },
  { der: Buffer.from('300d06092a864886f70d01010b0500', 'hex'), hash: 'sha256', key: 'rsa' },
  { der: Buffer.from('300d06092a864886f70d01010c0500', 'hex'), hash: 'sha384', key: 'rsa' },
  { der: Buffer.from('300d06092a864886f70d01010d0500', 'hex'), hash: 'sha512', key: 'rsa' },
];

/** SIGNATURE_HASH_ALGORITHMS values (RFC 7427 §4): SHA2-256, SHA2-384, SHA2-512. */
export const SIGNATURE_HASHES = Buffer.from([0, 2, 0, 3, 0, 4]);

const signedOctets = (c: AuthOctets, idBody: Buffer): Buffer =>
  Buffer.concat([c.message, c.nonce, prf(c.prf, c.skP, idBody)]);

function ecHash(key: KeyObject): 'sha256' | 'sha384' | 'sha512' {
  const curve = key.asymmetricKeyDetails?.namedCurve;
  return curve === 'secp384r1' ? 'sha384' : curve === 'secp521r1' ? 'sha512' : 'sha256';
}

/** Our identity with a certificate: its subject DN (ID_DER_ASN1_DN). */
export const certIdentity = (cred: CertCredentials): Identity => ({
  type: IdType.DER_ASN1_DN,
  data: subjectDer(cred.chain[0] as X509Certificate),
});

/** CERTREQ naming the CAs we trust (SHA-1 of each SubjectPublicKeyInfo). */
export const certRequest = (cred: CertCredentials): Payload => ({
  type: PayloadType.CERTREQ,
  encoding: CertEncoding.X509_SIGNATURE,
  data: Buffer.concat(cred.trustedCas.map(spkiSha1)),
});

/** CERT payloads (our chain) and the signed AUTH. */
export function certAuthPayloads(c: AuthOctets, idBody: Buffer, cred: CertCredentials): Payload[] {
  const certs: Payload[] = cred.chain.map((x) => ({
    type: PayloadType.CERT,
    encoding: CertEncoding.X509_SIGNATURE,
    data: x.raw,
  }));
  const data = signedOctets(c, idBody);
  const kt = cred.key.asymmetricKeyType;
  let auth: Payload;
  if (kt === 'ec') {
    const hash = ecHash(cred.key);
    if (c.rfc7427) {
      const alg = ALG_IDS.find((a) => a.key === 'ec' && a.hash === hash) as (typeof ALG_IDS)[number];
      const sig = sign(hash, data, { key: cred.key, dsaEncoding: 'der' });
      auth = {
        type: PayloadType.AUTH,
        method: AuthMethod.DIGITAL_SIGNATURE,
        data: Buffer.concat([Buffer.from([alg.der.length]), alg.der, sig]),
      };
    } else {
      const method = {
        sha256: AuthMethod.ECDSA_SHA256_P256,
        sha384: AuthMethod.ECDSA_SHA384_P384,
        sha512: AuthMethod.ECDSA_SHA512_P521,
      }[hash];
      auth = { type: PayloadType.AUTH, method, data: sign(hash, data, { key: cred.key, dsaEncoding: 'ieee-p1363' }) };
    }
  } else if (kt === 'rsa') {
    if (c.rfc7427) {
      const alg = ALG_IDS[3] as (typeof ALG_IDS)[number];
      auth = {
        type: PayloadType.AUTH,
        method: AuthMethod.DIGITAL_SIGNATURE,
        data: Buffer.concat([Buffer.from([alg.der.length]), alg.der, sign('sha256', data, cred.key)]),
      };
    } else {
      auth = { type: PayloadType.AUTH, method: AuthMethod.RSA_SIGNATURE, data: sign('sha1', data, cred.key) };
    }
  } else {
    throw new IkeError(
      `certificate keys of type ${kt} are not supported (use RSA or ECDSA)`,
      NotifyType.AUTHENTICATION_FAILED,
    );
  }
  return [...certs, auth];
}

const fail = (why: string): never => {
  throw new IkeError(why, NotifyType.AUTHENTICATION_FAILED);
};

function validAt(x: X509Certificate, now: Date): void {
  if (now < new Date(x.validFrom) || now > new Date(x.validTo))
    fail(`certificate "${x.subject.replace(/\n/g, ', ')}" is not valid now (valid ${x.validFrom} to ${x.validTo})`);
}

/** Chains `leaf` through `intermediates` to one of `anchors`; returns the anchor. */
function chainTo(
  leaf: X509Certificate,
  intermediates: X509Certificate[],
  anchors: X509Certificate[],
  now: Date,
): X509Certificate {
  let current = leaf;
  for (let depth = 0; depth < 8; depth++) {
    validAt(current, now);
    const anchor = anchors.find((a) => current.checkIssued(a) && current.verify(a.publicKey));
    if (anchor) {
      validAt(anchor, now);
      return anchor;
    }
    const next = intermediates.find((i) => i.ca && current.checkIssued(i) && current.verify(i.publicKey));
    if (!next) break;
    current = next;
  }
  return fail(`the peer's certificate "${leaf.subject.replace(/\n/g, ', ')}" does not chain to a trusted CA`);
}

function idMatches(cert: X509Certificate, id: Identity): boolean {
  switch (id.type) {
    case IdType.DER_ASN1_DN:
      return subjectDer(cert).equals(id.data);
    case IdType.FQDN:
      return cert.checkHost(id.data.toString('ascii'), { subject: 'never' }) !== undefined;
    case IdType.IPV4_ADDR:
    case IdType.IPV6_ADDR: {
      if (id.data.length !== (id.type === IdType.IPV4_ADDR ? 4 : 16)) return false;
      return cert.checkIP(readIp(id.data, 0, id.type === IdType.IPV4_ADDR ? 4 : 6)) !== undefined;
    }
    default:
      return false;
  }
}

type AuthPayload = PayloadOf<PayloadType.AUTH>;

function verifySignature(key: KeyObject, auth: AuthPayload, data: Buffer): boolean {
  const kt = key.asymmetricKeyType;
  switch (auth.method) {
    case AuthMethod.DIGITAL_SIGNATURE: {
      const len = auth.data[0];
      if (len === undefined || auth.data.length < 1 + len) return fail('malformed Digital Signature AUTH payload');
      const algDer = auth.data.subarray(1, 1 + len);
      const alg = ALG_IDS.find((a) => a.der.equals(algDer));
      if (!alg) return fail('the peer signed with an algorithm consec does not accept (RFC 7427 AlgorithmIdentifier)');
      if (alg.key !== kt)
        return fail(`the peer signed with ${alg.key.toUpperCase()} but its certificate has a ${kt} key`);
      const sig = auth.data.subarray(1 + len);
      return alg.key === 'ec'
        ? verify(alg.hash, data, { key, dsaEncoding: 'der' }, sig)
        : verify(alg.hash, data, key, sig);
    }
    case AuthMethod.RSA_SIGNATURE:
      if (kt !== 'rsa') return fail('RSA signature AUTH with a non-RSA certificate');
      return verify('sha1', data, key, auth.data);
    case AuthMethod.ECDSA_SHA256_P256:
    case AuthMethod.ECDSA_SHA384_P384:
    case AuthMethod.ECDSA_SHA512_P521: {
      if (kt !== 'ec') return fail('ECDSA AUTH with a non-ECDSA certificate');
      const hash =
        auth.method === AuthMethod.ECDSA_SHA256_P256
          ? 'sha256'
          : auth.method === AuthMethod.ECDSA_SHA384_P384
            ? 'sha384'
            : 'sha512';
      if (ecHash(key) !== hash) return fail('ECDSA AUTH method does not match the certificate curve');
      return verify(hash, data, { key, dsaEncoding: 'ieee-p1363' }, auth.data);
    }
    default:
      return fail(`the peer used auth method ${auth.method}; consec expects a certificate signature`);
  }
}

/**
 * The checks every certificate authentication shares (IKEv2 here, IKEv1 Main Mode in v1/auth.ts):
 * the peer's chain (leaf first) leads to a CA the auth proposal names, each certificate valid now,
 * the leaf carries an EKU Windows accepts, and the identity the peer claimed is the leaf's.
 */
export function checkPeerCertificate(
  certs: readonly X509Certificate[],
  id: Identity,
  cred: CertCredentials,
): { leaf: X509Certificate; peer: PeerCertificate } {
  const leaf = certs[0] ?? fail('the peer sent no certificate (CERT payload)');
  const now = cred.now?.() ?? new Date();
  const anchor = chainTo(leaf, certs.slice(1), cred.trustedCas, now);
  if ((cred.eku ?? 'windows') === 'windows') {
    const eku = leaf.keyUsage as string[] | undefined;
    if (eku && eku.length > 0 && !eku.some((o) => o === EKU_IKE_INTERMEDIATE || o === EKU_SERVER_AUTH || o === EKU_ANY))
      fail(
        `the peer's certificate lacks the IP security IKE intermediate or server authentication EKU (has ${eku.join(', ')})`,
      );
  }
  if (!idMatches(leaf, id)) fail("the peer's identity is not the one its certificate names");
  return {
    leaf,
    peer: {
      subject: leaf.subject.replace(/\n/g, ', '),
      issuer: leaf.issuer.replace(/\n/g, ', '),
      sha1Thumbprint: createHash('sha1').update(leaf.raw).digest('hex').toUpperCase(),
      root: anchor.subject.replace(/\n/g, ', '),
    },
  };
}

/** X.509 certificates from CERT payloads (encoding 4 in both IKE versions); one that does not parse fails. */
export function certificatesIn(
  payloads: readonly { type: number; encoding?: number; data?: Buffer }[],
  certType: number,
): X509Certificate[] {
  const certs: X509Certificate[] = [];
  for (const p of payloads) {
    if (p.type !== certType || p.encoding !== CertEncoding.X509_SIGNATURE || !p.data) continue;
    try {
      certs.push(new X509(p.data));
    } catch {
      fail('the peer sent a certificate that does not parse');
    }
  }
  return certs;
}

/** Verifies the peer's certificate chain, EKU, identity binding and AUTH signature. */
export function verifyCertAuth(
  c: AuthOctets,
  id: Identity,
  auth: AuthPayload,
  payloads: readonly Payload[],
  cred: CertCredentials,
): PeerCertificate {
  const { leaf, peer } = checkPeerCertificate(
    certificatesIn(payloads as readonly { type: number; encoding?: number; data?: Buffer }[], PayloadType.CERT),
    id,
    cred,
  );
  const idBody = Buffer.concat([Buffer.from([id.type, 0, 0, 0]), id.data]);
  if (!verifySignature(leaf.publicKey, auth, signedOctets(c, idBody)))
    fail("the peer's AUTH signature does not verify with its certificate");
  return peer;
}

/** For logs: an identity as text (never secret). */
export function identityText(id: Identity): string {
  if (id.type === IdType.IPV4_ADDR || id.type === IdType.IPV6_ADDR)
    return readIp(id.data, 0, id.data.length === 4 ? 4 : 6);
  if (id.type === IdType.FQDN || id.type === IdType.RFC822_ADDR) return id.data.toString('ascii');
  if (id.type === IdType.DER_ASN1_DN) return `DN(${id.data.length} bytes)`;
  return `ID type ${id.type}`;
}
