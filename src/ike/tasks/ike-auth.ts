/**
 * IKE_AUTH authentication (RFC 7296 §2.15): our ID and AUTH payloads, and the check of the peer's.
 * Pre-shared keys here; certificates (RFC 7427 digital signatures) in ike-cert.ts. The exchange
 * itself is driven by the session (initiator) and `respondAuth` there (responder).
 */
import { pskAuth, verifyPskAuth } from '../crypto/auth.ts';
import { IkeError, notifyName } from '../errors.ts';
import type { IkeSa } from '../sa.ts';
import type { Payload } from '../wire/codec.ts';
import { AuthMethod, NotifyType, PayloadType } from '../wire/constants.ts';
import { type CertCredentials, certAuthPayloads, type PeerCertificate, verifyCertAuth } from './ike-cert.ts';
import { findNotifies, findPayload } from './task.ts';

export interface Identity {
  type: number;
  data: Buffer;
}

export const idBody = (id: Identity): Buffer => Buffer.concat([Buffer.from([id.type, 0, 0, 0]), id.data]);

/** How both sides prove who they are: one shared key, or certificates. */
export type Credentials = { method: 'psk'; psk: Buffer } | ({ method: 'cert' } & CertCredentials);

/** Windows' name for the method, for SA views and audit events. */
export const methodName = (c: Credentials): string => (c.method === 'psk' ? 'Preshared key' : 'Certificate');

/** The octets an AUTH payload covers (§2.15) — the IKE_SA_INIT message a side sent, the other's nonce. */
export function authContext(sa: IkeSa, side: 'i' | 'r') {
  const keys = sa.keys;
  const suite = sa.suite;
  const message = side === 'i' ? sa.initRequest : sa.initResponse;
  const nonce = side === 'i' ? sa.nonceR : sa.nonceI;
  if (!keys || !suite || !message || !nonce)
    throw new IkeError('IKE_AUTH before IKE_SA_INIT completed', NotifyType.INVALID_SYNTAX);
  return {
    prf: suite.prf,
    message,
    nonce,
    skP: side === 'i' ? keys.skPi : keys.skPr,
    rfc7427: sa.peerSignatureHashes,
  };
}

/** ID, [CERT …,] AUTH for our side (`side` = our role in this IKE SA). */
export function authPayloads(sa: IkeSa, side: 'i' | 'r', id: Identity, cred: Credentials): Payload[] {
  const idPayload: Payload = { type: side === 'i' ? PayloadType.IDi : PayloadType.IDr, idType: id.type, data: id.data };
  const c = authContext(sa, side);
  if (cred.method === 'cert') return [idPayload, ...certAuthPayloads(c, idBody(id), cred)];
  return [
    idPayload,
    {
      type: PayloadType.AUTH,
      method: AuthMethod.SHARED_KEY_MIC,
      data: pskAuth(c.prf, cred.psk, c.message, c.nonce, c.skP, idBody(id)),
    },
  ];
}

export interface Authenticated {
  id: Identity;
  certificate?: PeerCertificate;
}

/**
 * Verifies the peer's ID and AUTH (`side` = the peer's role). Throws AUTHENTICATION_FAILED with the
 * reason; a refusal the peer sent instead is reported as coming from the peer.
 */
export function verifyPeerAuth(
  sa: IkeSa,
  side: 'i' | 'r',
  payloads: readonly Payload[],
  cred: Credentials,
  expectedId?: Identity,
): Authenticated {
  if (findNotifies(payloads, NotifyType.AUTHENTICATION_FAILED).length > 0)
    throw new IkeError(
      'the peer refused our authentication (AUTHENTICATION_FAILED)',
      NotifyType.AUTHENTICATION_FAILED,
      true,
    );
  const idP = findPayload(payloads, side === 'i' ? PayloadType.IDi : PayloadType.IDr);
  const auth = findPayload(payloads, PayloadType.AUTH);
  if (!idP || !auth) {
    const err = payloads.find((p) => 'notify' in p && p.notify < 16384);
    if (err && 'notify' in err) throw new IkeError(`IKE_AUTH failed: ${notifyName(err.notify)}`, err.notify, true);
    throw new IkeError(`IKE_AUTH message lacks ${side === 'i' ? 'IDi' : 'IDr'} or AUTH`, NotifyType.INVALID_SYNTAX);
  }
  const id = { type: idP.idType, data: Buffer.from(idP.data) };
  if (expectedId && (id.type !== expectedId.type || !id.data.equals(expectedId.data)))
    throw new IkeError(
      'the peer authenticated as an identity other than the one expected',
      NotifyType.AUTHENTICATION_FAILED,
    );
  const c = authContext(sa, side);
  if (cred.method === 'cert') return { id, certificate: verifyCertAuth(c, id, auth, payloads, cred) };
  if (auth.method !== AuthMethod.SHARED_KEY_MIC)
    throw new IkeError(
      `the peer used auth method ${auth.method}, not a pre-shared key`,
      NotifyType.AUTHENTICATION_FAILED,
    );
  const expected = pskAuth(c.prf, cred.psk, c.message, c.nonce, c.skP, idBody(id));
  if (!verifyPskAuth(expected, auth.data))
    throw new IkeError("the peer's AUTH does not verify (different pre-shared key?)", NotifyType.AUTHENTICATION_FAILED);
  return { id };
}
