/**
 * IKE_AUTH (RFC 7296 §1.2, §2.15): our ID and AUTH payloads and the check of the peer's — pre-shared
 * keys here, certificates (RFC 7427 digital signatures) in ike-cert.ts — and the exchange in both
 * roles: the initiator as the task that follows IKE_SA_INIT, the responder as `respondAuth`.
 */
import { pskAuth, verifyPskAuth } from '../crypto/auth.ts';
import { IkeError, notifyName } from '../errors.ts';
import type { IkeSa } from '../sa.ts';
import type { Payload } from '../wire/codec.ts';
import { AuthMethod, ExchangeType, NotifyType, PayloadType } from '../wire/constants.ts';
import { type ChildSa, ChildCreateInitiator, respondChild } from './child-create.ts';
import type { SessionTask, TaskSession } from './context.ts';
import {
  type CertCredentials,
  certAuthPayloads,
  certRequest,
  type PeerCertificate,
  verifyCertAuth,
} from './ike-cert.ts';
import { deleteIkeExchange } from './ike-delete.ts';
import { findNotifies, findPayload, notify } from './task.ts';

export interface Identity {
  type: number;
  data: Buffer;
}

export const idBody = (id: Identity): Buffer => Buffer.concat([Buffer.from([id.type, 0, 0, 0]), id.data]);

/** How both sides prove who they are: one shared key, or certificates. */
/**
 * How this side authenticates: a pre-shared key, a certificate, or the computer's Kerberos account
 * (the host keytab; only AuthIP carries it — src/ike/authip).
 */
export type Credentials =
  { method: 'psk'; psk: Buffer } | ({ method: 'cert' } & CertCredentials) | { method: 'kerberos' };

/** Pre-shared key or certificate: what IKEv2 and IKEv1 authenticate with; Kerberos is refused here. */
export function keyedCredentials(c: Credentials): Exclude<Credentials, { method: 'kerberos' }> {
  if (c.method === 'kerberos')
    throw new IkeError(
      'Kerberos authentication is carried by AuthIP, not by this keying module',
      NotifyType.AUTHENTICATION_FAILED,
    );
  return c;
}

/** Windows' name for the method, for SA views and audit events. */
export const methodName = (c: Credentials): string =>
  c.method === 'psk' ? 'Preshared key' : c.method === 'cert' ? 'Certificate' : 'Kerberos';

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
export function authPayloads(sa: IkeSa, side: 'i' | 'r', id: Identity, credentials: Credentials): Payload[] {
  const cred = keyedCredentials(credentials);
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
  credentials: Credentials,
  expectedId?: Identity,
): Authenticated {
  const cred = keyedCredentials(credentials);
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

/** What IKE_AUTH reports to the keying service that owns the IKE SA (its index of peers, its audit). */
export interface AuthHooks {
  /** The peer proved its identity; `initialContact`: it says it holds no other IKE SA with us (§2.4). */
  authenticated(s: TaskSession, initialContact: boolean): void;
}

/** The initiator's IKE_AUTH with the first child SA (§1.2), as the second task of a new IKE SA. */
export class IkeAuthTask implements SessionTask {
  readonly name = 'ike-auth';
  readonly kind = 'establish';
  readonly migrates = false;
  /** The child SA negotiated with the IKE SA, once done. */
  child?: ChildSa;

  constructor(
    private readonly hooks: AuthHooks,
    /** Send INITIAL_CONTACT: asked when the request is built (no other IKE SA with this peer here then). */
    private readonly initialContact: () => boolean,
  ) {}

  async run(s: TaskSession): Promise<void> {
    const { sa, peer } = s;
    const [idi, ...proof] = authPayloads(sa, 'i', peer.localId, peer.credentials);
    const inner: Payload[] = [idi as Payload];
    if (peer.credentials.method === 'cert') inner.push(certRequest(peer.credentials));
    if (peer.remoteId) inner.push({ type: PayloadType.IDr, idType: peer.remoteId.type, data: peer.remoteId.data });
    inner.push(...proof);
    // §2.4: INITIAL_CONTACT says "I have no other IKE SA with you" — the peer deletes the others.
    if (this.initialContact()) inner.push(notify(NotifyType.INITIAL_CONTACT));
    const child = new ChildCreateInitiator(peer.espProposals, peer.tsi, peer.tsr, peer.mode);
    child.build(sa, inner);
    s.log('send IKE_AUTH', {});
    const payloads = await s.request(ExchangeType.IKE_AUTH, inner);
    s.authenticatedAs(verifyPeerAuth(sa, 'r', payloads, peer.credentials, peer.remoteId));
    this.hooks.authenticated(s, false);
    // The child's keys come from the IKE_SA_INIT nonces, which established() lets go.
    let childError: unknown;
    try {
      child.process(sa, payloads);
    } catch (err) {
      childError = err;
    }
    s.established();
    if (childError) {
      s.childFailed(childError as Error, 1);
      await deleteIkeExchange(s, 'no child SA');
      throw childError;
    }
    this.child = child.result as ChildSa;
    s.installChild(this.child);
    s.log('IKE_AUTH done', { spiIn: this.child.spiIn.toString('hex'), spiOut: this.child.spiOut.toString('hex') });
  }
}

/**
 * The responder's IKE_AUTH (the request already opened and authenticated as an SK message): verify
 * the peer, answer with our AUTH and the child SA (or the reason there is none), establish.
 * `failed` audits an authentication failure; the IKE SA is then gone.
 */
export function respondAuth(
  s: TaskSession,
  inner: readonly Payload[],
  raws: Buffer[],
  hooks: AuthHooks & { failed(err: Error): void },
): void {
  const { sa, peer } = s;
  let authenticated: Authenticated;
  try {
    authenticated = verifyPeerAuth(sa, 'i', inner, peer.credentials, peer.remoteId);
  } catch (err) {
    s.log('authentication failed', { from: sa.remote.address, reason: (err as Error).message });
    s.respond(ExchangeType.IKE_AUTH, 1, [notify(NotifyType.AUTHENTICATION_FAILED)], raws);
    hooks.failed(err as Error);
    s.terminate('authentication failed');
    return;
  }
  s.authenticatedAs(authenticated);
  hooks.authenticated(s, findNotifies(inner, NotifyType.INITIAL_CONTACT).length > 0);
  const child = respondChild(sa, inner, peer, 'auth');
  s.respond(
    ExchangeType.IKE_AUTH,
    1,
    [...authPayloads(sa, 'r', peer.localId, peer.credentials), ...child.payloads],
    raws,
  );
  s.established();
  s.log('IKE_AUTH', { from: sa.remote.address, child: child.child ? child.child.spiIn.toString('hex') : 'none' });
  if (child.child) s.installChild(child.child);
  else {
    const n = child.payloads.find((p) => 'notify' in p);
    s.childFailed(
      new IkeError(
        `no child SA: ${n && 'notify' in n ? notifyName(n.notify) : 'refused'}`,
        NotifyType.NO_PROPOSAL_CHOSEN,
      ),
      1,
    );
  }
}
