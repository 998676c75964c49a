/**
 * IKEv1 Main Mode (identity protection, RFC 2409 §5), both roles, six messages:
 *   1 I→R  SA, VIDs               2 R→I  SA (one transform), VIDs
 *   3 I→R  KE, Ni, NAT-D…         4 R→I  KE, Nr, NAT-D…
 *   5 I→R  [IDii, HASH_I]*        6 R→I  [IDir, HASH_R]*        (* encrypted, Appendix B IV chain)
 * with NAT traversal (RFC 3947 and draft-02: vendor IDs in 1–2, NAT-D in 3–4, UDP 4500 from 5 on),
 * DPD announcement (RFC 3706) and INITIAL-CONTACT. Pre-shared keys (HASH_I/HASH_R) or certificates
 * (CERTREQ in 3–4, CERT and SIG over the hash in 5–6; v1/auth.ts) authenticate.
 */
import { type KeyObject } from 'node:crypto';
import { randomOctets } from '../crypto/random.ts';
import { kept } from '../../io/kept.ts';
import { ipBytes } from '../../io/addr.ts';
import { KeyExchange } from '../crypto/ke.ts';
import { IkeError } from '../errors.ts';
import { NotifyType as V2Notify } from '../wire/constants.ts';
import { encodeV1, findAllV1, findV1, payloadBody, type V1Message, type V1Payload } from './codec.ts';
import {
  AuthMethod,
  DOI_IPSEC,
  ExchangeType,
  NotifyType,
  PayloadType,
  ProtocolId,
  SIT_IDENTITY_ONLY,
  VendorId,
} from './constants.ts';
import { mainModeHash, natD, phase1Iv, phase1Keys } from './crypto.ts';
import { certRequests, ecdsaHash, signatureMethod, signaturePayloads, verifySignaturePayloads } from './auth.ts';
import { type NattVariant, phase1Transforms, readPhase1, selectPhase1 } from './proposals.ts';
import { digestOf, Retransmission, type V1Session } from './session.ts';
import { type Identity, keyedCredentials } from '../tasks/ike-auth.ts';

const NONCE_BYTES = 32;

/** What Main Mode needs from the manager besides the session. */
export interface MainModeHooks {
  /** INITIAL-CONTACT may be sent: we hold no other SA with the peer. */
  firstContact(): boolean;
  /** The peer sent INITIAL-CONTACT: its older SAs are stale. */
  initialContact(s: V1Session): void;
  failed(s: V1Session, err: Error): void;
}

/**
 * The vendor IDs we announce: NAT-T (RFC 3947 and draft-02 as Windows sends it), DPD, and IKE
 * fragmentation (the bare 16 octets, as Windows sends them; MS-IKEE §3.3.4.1).
 */
export const OUR_VENDOR_IDS: readonly Buffer[] = [
  VendorId.RFC3947,
  VendorId.NATT_DRAFT_02N,
  VendorId.DPD,
  VendorId.FRAGMENTATION,
];

const vid = (data: Buffer): V1Payload => ({ type: PayloadType.VID, data });

/** What the peer's vendor IDs say: the NAT-T variant in common and DPD. */
function peerVendorIds(s: V1Session, payloads: readonly V1Payload[]): void {
  const ids = findAllV1(payloads, PayloadType.VID).map((p) => p.data);
  const has = (v: Buffer) => ids.some((d) => d.equals(v));
  const natt: NattVariant = has(VendorId.RFC3947)
    ? 'rfc'
    : has(VendorId.NATT_DRAFT_02N) || has(VendorId.NATT_DRAFT_02) || has(VendorId.NATT_DRAFT_03)
      ? 'draft'
      : 'none';
  s.natt = natt;
  s.peerDpd = has(VendorId.DPD);
  s.peerFragmentation = ids.some((d) => d.length >= 16 && d.subarray(0, 16).equals(VendorId.FRAGMENTATION));
}

/** The vendor IDs a responder answers with: the NAT-T variant it chose, and DPD. */
function answerVendorIds(s: V1Session): V1Payload[] {
  const out: V1Payload[] = [];
  if (s.natt === 'rfc') out.push(vid(VendorId.RFC3947));
  else if (s.natt === 'draft') out.push(vid(VendorId.NATT_DRAFT_02N));
  out.push(vid(VendorId.DPD));
  // MS-IKEE §3.3.5.1: a responder answers the initiator's FRAGMENTATION vendor ID with its own.
  if (s.peerFragmentation) out.push(vid(VendorId.FRAGMENTATION));
  return out;
}

const natDType = (s: V1Session) => (s.natt === 'rfc' ? PayloadType.NAT_D : PayloadType.NAT_D_DRAFT);

/**
 * NAT-D payloads (RFC 3947 §3.2): the peer's address and port as we send to it, then ours; with
 * forced encapsulation ours is a random value, so both sides see a NAT and ESP goes in UDP 4500.
 */
function natDPayloads(s: V1Session): V1Payload[] {
  if (s.natt === 'none') return [];
  const type = natDType(s);
  const suite = s.suite;
  const remote = natD(suite, s.cookieI, s.cookieR, ipBytes(s.remote.address), s.remote.port);
  const local = s.forceEncapsulation
    ? randomOctets(remote.length)
    : natD(suite, s.cookieI, s.cookieR, ipBytes(s.local.address), s.local.port);
  return [
    { type, data: remote },
    { type, data: local },
  ] as V1Payload[];
}

/** Reads the peer's NAT-D payloads: is our side mapped (the first), is the peer's (none of the others matches)? */
function detectNat(s: V1Session, payloads: readonly V1Payload[]): void {
  if (s.natt === 'none') return;
  const ds = payloads.filter((p) => p.type === natDType(s)) as { data: Buffer }[];
  if (ds.length < 2) return;
  const suite = s.suite;
  const ours = natD(suite, s.cookieI, s.cookieR, ipBytes(s.local.address), s.local.port);
  const theirs = natD(suite, s.cookieI, s.cookieR, ipBytes(s.remote.address), s.remote.port);
  s.natLocal = !(ds[0] as { data: Buffer }).data.equals(ours) || s.forceEncapsulation;
  s.natRemote = !ds.slice(1).some((d) => d.data.equals(theirs));
}

/** Our Phase 1 identification payload: protocol and port 0 (RFC 2407 §4.6.2). */
function ourId(s: V1Session): V1Payload {
  const id = s.peer.localId;
  return { type: PayloadType.ID, idType: id.type, protocol: 0, port: 0, data: id.data };
}

/** The auth method our credentials use: pre-shared key, or the signature our certificate's key makes. */
function methods(s: V1Session): number[] {
  const c = s.peer.credentials;
  return c.method === 'psk' ? [AuthMethod.PSK] : c.method === 'cert' ? [signatureMethod(c.key)] : [];
}

function skeyidSecret(s: V1Session): { psk: Buffer } | { signatures: true } {
  const c = s.peer.credentials;
  return c.method === 'psk' ? { psk: c.psk } : { signatures: true };
}

/** CERTREQ in messages 3 and 4 when certificates authenticate. */
function certRequestPayloads(s: V1Session): V1Payload[] {
  const c = s.peer.credentials;
  return c.method === 'cert' ? certRequests(c) : [];
}

/** The peer's ID payload checked against the identity the rule expects (when it names one). */
function checkPeerId(s: V1Session, payloads: readonly V1Payload[]): Extract<V1Payload, { type: PayloadType.ID }> {
  const id = findV1(payloads, PayloadType.ID);
  if (!id) throw new IkeError('Main Mode message without an identification payload', V2Notify.INVALID_SYNTAX);
  if (id.protocol !== 0 && !(id.protocol === 17 && (id.port === 500 || id.port === 0 || id.port === 4500)))
    throw new IkeError(`Phase 1 ID with protocol ${id.protocol} port ${id.port}`, V2Notify.AUTHENTICATION_FAILED);
  const want = s.peer.remoteId;
  if (want && (want.type !== id.idType || !want.data.equals(id.data)))
    throw new IkeError('the peer identified itself as someone the rule does not name', V2Notify.AUTHENTICATION_FAILED);
  s.peerId = { type: id.idType, data: Buffer.from(id.data) };
  return id;
}

/**
 * HASH_I / HASH_R (RFC 2409 §5). With ECDSA the prf is HMAC with the signature method's hash
 * (SHA-256/384/512 for P-256/384/521, RFC 4754), whatever hash Phase 1 negotiated — as strongSwan
 * computes it; SKEYID itself stays with the negotiated prf.
 */
function hashOf(s: V1Session, who: 'initiator' | 'responder', idBody: Buffer): Buffer {
  const ecdsa = s.choice ? ecdsaHash(s.choice.authMethod) : undefined;
  return mainModeHash(
    ecdsa ? { ...s.suite, hash: ecdsa } : s.suite,
    s.phase1.skeyid,
    who,
    s.gxi as Buffer,
    s.gxr as Buffer,
    s.cookieI,
    s.cookieR,
    s.saiBody as Buffer,
    idBody,
  );
}

/** The signature method Main Mode agreed on (message 1–2), our key's own before that. */
const signingMethod = (s: V1Session, key: KeyObject): number => s.choice?.authMethod ?? signatureMethod(key);

/** Our proof for message 5 or 6: HASH with a pre-shared key, CERT… and SIG over it with a certificate. */
function proofPayloads(s: V1Session, who: 'initiator' | 'responder', id: V1Payload): V1Payload[] {
  const hash = hashOf(s, who, payloadBody(id));
  const c = keyedCredentials(s.peer.credentials);
  if (c.method === 'psk') return [{ type: PayloadType.HASH, data: hash }];
  return signaturePayloads(signingMethod(s, c.key), c, hash);
}

/** The peer's proof: its HASH, or its certificate and signature (then remembered for the SA views). */
function verifyProof(
  s: V1Session,
  who: 'initiator' | 'responder',
  payloads: readonly V1Payload[],
  idRaw: Buffer,
): void {
  const hash = hashOf(s, who, idRaw.subarray(4));
  const c = s.peer.credentials;
  if (c.method === 'cert') {
    s.peerCertificate = verifySignaturePayloads(signingMethod(s, c.key), c, s.peerId as Identity, payloads, hash);
    return;
  }
  const h = findV1(payloads, PayloadType.HASH);
  if (!h || !h.data.equals(hash))
    throw new IkeError(
      `HASH_${who === 'initiator' ? 'I' : 'R'} does not verify: the pre-shared keys differ`,
      V2Notify.AUTHENTICATION_FAILED,
    );
}

function derive(s: V1Session, peerKe: Buffer): void {
  const gxy = (s.ke as KeyExchange).sharedSecret(peerKe);
  s.keys = phase1Keys(s.suite, skeyidSecret(s), s.ni as Buffer, s.nr as Buffer, gxy, s.cookieI, s.cookieR);
  s.iv = phase1Iv(s.suite, s.gxi as Buffer, s.gxr as Buffer);
}

function keAndNonce(payloads: readonly V1Payload[]): { ke: Buffer; nonce: Buffer } {
  const ke = findV1(payloads, PayloadType.KE);
  const nonce = findV1(payloads, PayloadType.NONCE);
  if (!ke || !nonce) throw new IkeError('Main Mode key exchange without KE or nonce', V2Notify.INVALID_SYNTAX);
  return { ke: Buffer.from(ke.data), nonce: Buffer.from(nonce.data) };
}

/**
 * A handler for the next Main Mode message: decrypts it where it is protected (a body that does not
 * decrypt to payloads means the keys differ: with pre-shared keys, the keys themselves); each
 * handler's errors end the negotiation (audit 4653 through the hooks).
 */
function step(s: V1Session, hooks: MainModeHooks, fn: (payloads: V1Payload[], msg: V1Message) => void) {
  return (msg: V1Message) => {
    try {
      let payloads: V1Payload[];
      try {
        payloads = s.decodeMainMode(msg);
      } catch (err) {
        if (!s.keys) throw err;
        const why = s.peer.credentials.method === 'psk' ? 'the pre-shared keys differ' : 'the keys differ';
        throw new IkeError(
          `Main Mode message does not decrypt to valid payloads: ${why} (${(err as Error).message})`,
          V2Notify.AUTHENTICATION_FAILED,
        );
      }
      fn(payloads, msg);
    } catch (err) {
      s.mmRetransmit?.stop();
      hooks.failed(s, err as Error);
    }
  };
}

// ---- initiator -----------------------------------------------------------------------------------

/** Sends message 1; the rest follows as the responder answers. Resolve with `s.whenEstablished()`. */
export function initiateMainMode(s: V1Session, hooks: MainModeHooks): void {
  const life = Math.round(s.lifetimes.ikeExpireMs / 1000);
  const [method] = methods(s);
  const transforms = phase1Transforms(s.peer.ikeProposals, method as number, life);
  if (transforms.length === 0)
    throw new IkeError(
      'none of the main mode proposals can be offered in IKEv1 (AES-CBC with SHA-1/SHA-2)',
      V2Notify.NO_PROPOSAL_CHOSEN,
    );
  const sa: V1Payload = {
    type: PayloadType.SA,
    doi: DOI_IPSEC,
    situation: SIT_IDENTITY_ONLY,
    proposals: [{ number: 1, protocol: ProtocolId.ISAKMP, spi: Buffer.alloc(0), transforms }],
  };
  s.saiBody = payloadBody(sa);
  /** Message 1; with the responder cookie of a DoS-protection answer when it goes again. */
  const message1 = (cookieR?: Buffer) =>
    encodeV1({ ...s.header(ExchangeType.IDENTITY_PROTECTION, 0, false), ...(cookieR ? { cookieR } : {}) }, [
      sa,
      ...OUR_VENDOR_IDS.map(vid),
      ...(s.announceAuthIp ? [vid(VendorId.MS_MAMIE_EXISTS)] : []),
    ]);
  const raw = message1();
  const waits = s.host.timing.retransmits;
  const failed = (err: Error) => hooks.failed(s, err);
  let cookieAsked = false;
  s.mmNext = step(s, hooks, (payloads, msg) => {
    const sar = findV1(payloads, PayloadType.SA);
    const notify = findV1(payloads, PayloadType.N);
    // MS-IKEE §3.9: a responder in DoS-prevention mode answers message 1 with a cookie alone; message 1
    // goes again with that cookie in the responder cookie field (once: a second request is refused).
    if (!sar && notify?.notify === NotifyType.MS_NOTIFY_DOS_COOKIE && notify.data.length >= 8 && !cookieAsked) {
      cookieAsked = true;
      s.mmRetransmit?.stop();
      const again = message1(notify.data.subarray(notify.data.length - 8));
      s.log('Main Mode message 1 again with the responder cookie (DoS protection)', {});
      s.mmRetransmit = new Retransmission(s, again, waits, failed);
      return;
    }
    if (!sar && notify)
      throw new IkeError(
        `the peer refused Main Mode: ${NotifyType[notify.notify] ?? notify.notify}`,
        V2Notify.NO_PROPOSAL_CHOSEN,
        true,
      );
    const t =
      sar?.proposals.length === 1 && sar.proposals[0]?.transforms.length === 1
        ? sar.proposals[0].transforms[0]
        : undefined;
    const chosen = t && readPhase1(t);
    const offered = chosen && transforms.map(readPhase1).find((o) => o && sameChoice(o, chosen));
    if (!chosen || !offered)
      throw new IkeError('the responder chose a transform we did not offer', V2Notify.NO_PROPOSAL_CHOSEN);
    s.mmRetransmit?.stop();
    s.cookieR = Buffer.from(msg.header.cookieR);
    s.markAnswered();
    s.choice = chosen;
    peerVendorIds(s, payloads);
    s.ke = KeyExchange.create(chosen.group);
    s.gxi = s.ke.publicValue;
    s.ni = kept(randomOctets(NONCE_BYTES));
    const m3 = encodeV1(s.header(ExchangeType.IDENTITY_PROTECTION, 0, false), [
      { type: PayloadType.KE, data: s.gxi },
      { type: PayloadType.NONCE, data: s.ni },
      ...certRequestPayloads(s),
      ...natDPayloads(s),
    ]);
    s.mmRetransmit = new Retransmission(s, m3, waits, failed);
    s.mmNext = step(s, hooks, (p4) => {
      const { ke, nonce } = keAndNonce(p4);
      s.mmRetransmit?.stop();
      s.gxr = ke;
      s.nr = nonce;
      detectNat(s, p4);
      derive(s, ke);
      if (s.floated) s.floatTo();
      const id = ourId(s);
      const p5: V1Payload[] = [id, ...proofPayloads(s, 'initiator', id)];
      if (hooks.firstContact()) p5.push(s.notifyPayload(NotifyType.INITIAL_CONTACT));
      const m5 = s.protect(ExchangeType.IDENTITY_PROTECTION, 0, p5, s.iv as Buffer);
      s.iv = m5.iv;
      s.mmRetransmit = new Retransmission(s, m5.raw, waits, failed);
      s.mmNext = step(s, hooks, (p6) => {
        const idr = checkPeerId(s, p6);
        verifyProof(s, 'responder', p6, idr.raw as Buffer);
        s.mmRetransmit?.stop();
        s.established();
      });
    });
  });
  s.mmRetransmit = new Retransmission(s, raw, waits, failed);
}

function sameChoice(
  a: NonNullable<ReturnType<typeof readPhase1>>,
  b: NonNullable<ReturnType<typeof readPhase1>>,
): boolean {
  return (
    a.authMethod === b.authMethod &&
    a.group === b.group &&
    a.suite.hash === b.suite.hash &&
    a.suite.keyBytes === b.suite.keyBytes
  );
}

// ---- responder -----------------------------------------------------------------------------------

/**
 * Message 1 from a new peer: the transform we accept and message 2, or why not (the manager
 * answers NO-PROPOSAL-CHOSEN and audits). Aggressive Mode never gets here (the manager refuses it).
 */
export function respondMainMode(
  s: V1Session,
  payloads: V1Payload[],
  hooks: MainModeHooks,
): { response: Buffer } | { refused: string } {
  const sa = findV1(payloads, PayloadType.SA);
  if (!sa) return { refused: 'Main Mode message 1 without an SA payload' };
  if (sa.doi !== DOI_IPSEC) return { refused: `DOI ${sa.doi} is not the IPsec DOI` };
  if (sa.situation !== SIT_IDENTITY_ONLY) return { refused: `situation ${sa.situation} is not SIT_IDENTITY_ONLY` };
  const p = sa.proposals[0];
  if (sa.proposals.length !== 1 || p?.protocol !== ProtocolId.ISAKMP)
    return { refused: 'Main Mode SA payload must carry one ISAKMP proposal' };
  let ours: number[];
  try {
    ours = methods(s);
  } catch (err) {
    return { refused: (err as Error).message };
  }
  const chosen = selectPhase1(p.transforms, s.peer.ikeProposals, ours);
  if (!chosen) {
    const offered = p.transforms.map((t) => {
      const r = readPhase1(t);
      return r
        ? `${r.suite.hash}/aes${r.suite.keyBytes * 8}/group ${r.group}/auth ${AuthMethod[r.authMethod] ?? r.authMethod}`
        : `transform ${t.number} (not implemented)`;
    });
    return { refused: `no proposal chosen: the peer offered ${offered.join(', ')}` };
  }
  s.choice = chosen;
  if (chosen.lifeSeconds > 0)
    s.lifetimes = { ...s.lifetimes, ikeExpireMs: Math.min(s.lifetimes.ikeExpireMs, chosen.lifeSeconds * 1000) };
  s.saiBody = Buffer.from((sa.raw as Buffer).subarray(4));
  peerVendorIds(s, payloads);
  const answer: V1Payload = {
    type: PayloadType.SA,
    doi: DOI_IPSEC,
    situation: SIT_IDENTITY_ONLY,
    proposals: [{ number: p.number, protocol: ProtocolId.ISAKMP, spi: p.spi, transforms: [chosen.transform] }],
  };
  const response = encodeV1(s.header(ExchangeType.IDENTITY_PROTECTION, 0, false), [answer, ...answerVendorIds(s)]);
  s.mmNext = step(s, hooks, (p3, msg3) => {
    const { ke, nonce } = keAndNonce(p3);
    s.gxi = ke;
    s.ni = nonce;
    s.ke = KeyExchange.create(chosen.group);
    s.gxr = s.ke.publicValue;
    s.nr = kept(randomOctets(NONCE_BYTES));
    detectNat(s, p3);
    derive(s, ke);
    const m4 = encodeV1(s.header(ExchangeType.IDENTITY_PROTECTION, 0, false), [
      { type: PayloadType.KE, data: s.gxr },
      { type: PayloadType.NONCE, data: s.nr },
      ...certRequestPayloads(s),
      ...natDPayloads(s),
    ]);
    s.mmAnswered = { request: digestOf(msg3.raw), response: m4 };
    s.send(m4);
    s.mmNext = step(s, hooks, (p5, msg5) => {
      const idi = checkPeerId(s, p5);
      verifyProof(s, 'initiator', p5, idi.raw as Buffer);
      const id = ourId(s);
      const m6 = s.protect(
        ExchangeType.IDENTITY_PROTECTION,
        0,
        [id, ...proofPayloads(s, 'responder', id)],
        s.iv as Buffer,
      );
      s.iv = m6.iv;
      s.mmAnswered = { request: digestOf(msg5.raw), response: m6.raw };
      s.send(m6.raw);
      const contact = findAllV1(p5, PayloadType.N).some((n) => n.notify === NotifyType.INITIAL_CONTACT);
      s.established();
      if (contact || s.initialContactVid) hooks.initialContact(s);
    });
  });
  return { response };
}
