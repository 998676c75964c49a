/**
 * IKEv1 SA payloads from the shared proposals (src/ike/proposals.ts builds them from the Windows
 * crypto sets as neutral transforms) and back: Phase 1 transforms with their attributes (RFC 2409
 * Appendix A), Quick Mode proposals (RFC 2407 §4.4–4.5), and responder selection through the
 * shared `selectProposal`, so both keying modules choose alike. A peer's transform that cannot be
 * read as neutral transforms is simply not chosen.
 */
import type { Proposal, Transform } from '../wire/codec.ts';
import {
  EncrId,
  EsnId,
  IntegId,
  type KeId,
  PrfId,
  ProtocolId as V2Protocol,
  TransformType,
} from '../wire/constants.ts';
import { selectProposal, transformOf } from '../proposals.ts';
import { type Attribute, attrNumber, type V1Proposal, type V1Transform } from './codec.ts';
import {
  AhTransform,
  Encapsulation,
  EspTransform,
  KEY_IKE,
  LifeType,
  P1Attr,
  P1Encryption,
  P1Hash,
  P2Attr,
  P2Auth,
  ProtocolId,
} from './constants.ts';
import type { HashName, V1Suite } from './crypto.ts';

const P1_HASH: Partial<Record<number, { prf: PrfId; hash: HashName }>> = {
  [P1Hash.SHA]: { prf: PrfId.HMAC_SHA1, hash: 'sha1' },
  [P1Hash.SHA2_256]: { prf: PrfId.HMAC_SHA2_256, hash: 'sha256' },
  [P1Hash.SHA2_384]: { prf: PrfId.HMAC_SHA2_384, hash: 'sha384' },
  [P1Hash.SHA2_512]: { prf: PrfId.HMAC_SHA2_512, hash: 'sha512' },
};
const HASH_OF_PRF: Partial<Record<number, P1Hash>> = {
  [PrfId.HMAC_SHA1]: P1Hash.SHA,
  [PrfId.HMAC_SHA2_256]: P1Hash.SHA2_256,
  [PrfId.HMAC_SHA2_384]: P1Hash.SHA2_384,
  [PrfId.HMAC_SHA2_512]: P1Hash.SHA2_512,
};

/** A Phase 1 transform read as neutral transforms, with what IKEv1 adds. */
export interface Phase1Choice {
  /** The peer's transform, echoed as it was (RFC 2409 §5: the responder returns the chosen transform). */
  transform: V1Transform;
  /** The same as a neutral proposal (views, reload checks). */
  proposal: Proposal;
  suite: V1Suite;
  group: number;
  authMethod: number;
  /** Seconds the peer proposed (0: none given). */
  lifeSeconds: number;
}

/** Phase 1 transforms for our neutral IKE proposals (AES-CBC only: IKEv1 has no AEAD for itself). */
export function phase1Transforms(
  proposals: readonly Proposal[],
  authMethod: number,
  lifeSeconds: number,
): V1Transform[] {
  const out: V1Transform[] = [];
  for (const p of proposals) {
    const encr = transformOf(p, TransformType.ENCR);
    const hash = HASH_OF_PRF[transformOf(p, TransformType.PRF)?.id ?? -1];
    const group = transformOf(p, TransformType.KE)?.id;
    if (encr?.id !== EncrId.AES_CBC || hash === undefined || group === undefined) continue;
    out.push({
      number: out.length + 1,
      id: KEY_IKE,
      attributes: [
        { type: P1Attr.ENCRYPTION, value: P1Encryption.AES_CBC },
        { type: P1Attr.KEY_LENGTH, value: encr.keyLength ?? 128 },
        { type: P1Attr.HASH, value: hash },
        { type: P1Attr.GROUP, value: group },
        { type: P1Attr.AUTH_METHOD, value: authMethod },
        { type: P1Attr.LIFE_TYPE, value: LifeType.SECONDS },
        { type: P1Attr.LIFE_DURATION, value: lifeSeconds },
      ],
    });
  }
  return out;
}

/** Reads one Phase 1 transform; undefined when it has anything consec does not implement. */
export function readPhase1(t: V1Transform): Phase1Choice | undefined {
  if (t.id !== KEY_IKE) return undefined;
  let enc: number | undefined;
  let keyBits: number | undefined;
  let hash: number | undefined;
  let group: number | undefined;
  let auth: number | undefined;
  let lifeSeconds = 0;
  let lifeType: number | undefined;
  for (const a of t.attributes) {
    const v = attrNumber(a) as number;
    switch (a.type) {
      case P1Attr.ENCRYPTION:
        enc = v;
        break;
      case P1Attr.KEY_LENGTH:
        keyBits = v;
        break;
      case P1Attr.HASH:
        hash = v;
        break;
      case P1Attr.GROUP:
        group = v;
        break;
      case P1Attr.AUTH_METHOD:
        auth = v;
        break;
      case P1Attr.LIFE_TYPE:
        lifeType = v;
        break;
      case P1Attr.LIFE_DURATION:
        // A duration belongs to the life type just before it; kilobyte lifetimes are not kept for IKE SAs.
        if (lifeType === LifeType.SECONDS) lifeSeconds = v;
        else if (lifeType !== LifeType.KILOBYTES) return undefined;
        break;
      default:
        return undefined; // GROUP_TYPE, PRF, private groups …: not implemented
    }
  }
  const h = P1_HASH[hash ?? -1];
  if (enc !== P1Encryption.AES_CBC || !h || group === undefined || auth === undefined) return undefined;
  const bits = keyBits ?? 128;
  if (bits !== 128 && bits !== 192 && bits !== 256) return undefined;
  return {
    transform: t,
    proposal: {
      number: 1,
      protocol: V2Protocol.IKE,
      spi: Buffer.alloc(0),
      transforms: [
        { type: TransformType.ENCR, id: EncrId.AES_CBC, keyLength: bits },
        { type: TransformType.PRF, id: h.prf },
        { type: TransformType.INTEG, id: integOfPrf(h.prf) },
        { type: TransformType.KE, id: group },
      ],
    },
    suite: { hash: h.hash, keyBytes: bits / 8 },
    group,
    authMethod: auth,
    lifeSeconds,
  };
}

function integOfPrf(prf: PrfId): IntegId {
  switch (prf) {
    case PrfId.HMAC_SHA1:
      return IntegId.HMAC_SHA1_96;
    case PrfId.HMAC_SHA2_384:
      return IntegId.HMAC_SHA2_384_192;
    case PrfId.HMAC_SHA2_512:
      return IntegId.HMAC_SHA2_512_256;
    default:
      return IntegId.HMAC_SHA2_256_128;
  }
}

/**
 * The responder's Phase 1 choice: the first of the peer's transforms (in its order of preference)
 * that one of our proposals allows and whose authentication method is ours.
 */
export function selectPhase1(
  offered: readonly V1Transform[],
  ours: readonly Proposal[],
  authMethods: readonly number[],
): Phase1Choice | undefined {
  for (const t of offered) {
    const c = readPhase1(t);
    if (!c || !authMethods.includes(c.authMethod)) continue;
    if (selectProposal([c.proposal], ours.map(withInteg))) return c;
  }
  return undefined;
}

/** Our IKE proposals carry no INTEG for AEAD; IKEv1 derives its integrity from the hash: make them comparable. */
function withInteg(p: Proposal): Proposal {
  if (transformOf(p, TransformType.INTEG)) return p;
  const prf = transformOf(p, TransformType.PRF)?.id;
  return prf === undefined
    ? p
    : { ...p, transforms: [...p.transforms, { type: TransformType.INTEG, id: integOfPrf(prf) }] };
}

// ---- Quick Mode --------------------------------------------------------------------------------

const P2_AUTH_OF_INTEG: Partial<Record<number, P2Auth>> = {
  [IntegId.HMAC_SHA1_96]: P2Auth.HMAC_SHA,
  [IntegId.HMAC_SHA2_256_128]: P2Auth.HMAC_SHA2_256,
  [IntegId.HMAC_SHA2_384_192]: P2Auth.HMAC_SHA2_384,
  [IntegId.HMAC_SHA2_512_256]: P2Auth.HMAC_SHA2_512,
};
const INTEG_OF_P2_AUTH: Partial<Record<number, IntegId>> = {
  [P2Auth.HMAC_SHA]: IntegId.HMAC_SHA1_96,
  [P2Auth.HMAC_SHA2_256]: IntegId.HMAC_SHA2_256_128,
  [P2Auth.HMAC_SHA2_384]: IntegId.HMAC_SHA2_384_192,
  [P2Auth.HMAC_SHA2_512]: IntegId.HMAC_SHA2_512_256,
};
const AH_OF_INTEG: Partial<Record<number, AhTransform>> = {
  [IntegId.HMAC_SHA1_96]: AhTransform.SHA,
  [IntegId.HMAC_SHA2_256_128]: AhTransform.SHA2_256,
  [IntegId.HMAC_SHA2_384_192]: AhTransform.SHA2_384,
  [IntegId.HMAC_SHA2_512_256]: AhTransform.SHA2_512,
};

/** How ESP/AH is carried: the mode, in UDP per RFC 3947 or draft-02 (whichever the vendor IDs agreed). */
export type NattVariant = 'none' | 'rfc' | 'draft';

export function encapsulation(mode: 'tunnel' | 'transport', natt: NattVariant): Encapsulation {
  if (natt === 'none') return mode === 'tunnel' ? Encapsulation.TUNNEL : Encapsulation.TRANSPORT;
  if (natt === 'rfc') return mode === 'tunnel' ? Encapsulation.UDP_TUNNEL : Encapsulation.UDP_TRANSPORT;
  return mode === 'tunnel' ? Encapsulation.UDP_TUNNEL_DRAFT : Encapsulation.UDP_TRANSPORT_DRAFT;
}

export function modeOfEncapsulation(e: number): { mode: 'tunnel' | 'transport'; udp: boolean } | undefined {
  switch (e) {
    case Encapsulation.TUNNEL:
      return { mode: 'tunnel', udp: false };
    case Encapsulation.TRANSPORT:
      return { mode: 'transport', udp: false };
    case Encapsulation.UDP_TUNNEL:
    case Encapsulation.UDP_TUNNEL_DRAFT:
      return { mode: 'tunnel', udp: true };
    case Encapsulation.UDP_TRANSPORT:
    case Encapsulation.UDP_TRANSPORT_DRAFT:
      return { mode: 'transport', udp: true };
    default:
      return undefined;
  }
}

export interface ChildLifetime {
  seconds: number;
  kilobytes?: number;
}

const lifeAttrs = (life: ChildLifetime): Attribute[] => {
  const a: Attribute[] = [
    { type: P2Attr.LIFE_TYPE, value: LifeType.SECONDS },
    { type: P2Attr.LIFE_DURATION, value: life.seconds },
  ];
  if (life.kilobytes)
    a.push(
      { type: P2Attr.LIFE_TYPE, value: LifeType.KILOBYTES },
      { type: P2Attr.LIFE_DURATION, value: life.kilobytes },
    );
  return a;
};

/** Quick Mode proposals (one per neutral ESP/AH proposal, each with one transform) under one SPI. */
export function phase2Proposals(
  neutral: readonly Proposal[],
  spi: Buffer,
  encaps: Encapsulation,
  life: ChildLifetime,
): V1Proposal[] {
  const out: V1Proposal[] = [];
  for (const p of neutral) {
    const encr = transformOf(p, TransformType.ENCR);
    const integ = transformOf(p, TransformType.INTEG)?.id;
    const group = transformOf(p, TransformType.KE)?.id;
    const attrs: Attribute[] = [...lifeAttrs(life)];
    if (group !== undefined) attrs.push({ type: P2Attr.GROUP, value: group });
    attrs.push({ type: P2Attr.ENCAPSULATION, value: encaps });
    let id: number | undefined;
    let protocol: number;
    if (p.protocol === V2Protocol.AH) {
      protocol = ProtocolId.AH;
      id = integ === undefined ? undefined : AH_OF_INTEG[integ];
      if (integ !== undefined) attrs.push({ type: P2Attr.AUTH_ALGORITHM, value: P2_AUTH_OF_INTEG[integ] as number });
    } else {
      protocol = ProtocolId.ESP;
      id =
        encr?.id === EncrId.AES_CBC
          ? EspTransform.AES
          : encr?.id === EncrId.AES_GCM_16
            ? EspTransform.AES_GCM_16
            : encr?.id === EncrId.NULL
              ? EspTransform.NULL
              : undefined;
      if (integ !== undefined) attrs.push({ type: P2Attr.AUTH_ALGORITHM, value: P2_AUTH_OF_INTEG[integ] as number });
      if (encr?.keyLength) attrs.push({ type: P2Attr.KEY_LENGTH, value: encr.keyLength });
    }
    if (id === undefined) continue;
    out.push({ number: out.length + 1, protocol, spi, transforms: [{ number: 1, id, attributes: attrs }] });
  }
  return out;
}

/** A Quick Mode transform read as a neutral proposal, with its mode and lifetimes. */
export interface Phase2Read {
  proposal: Proposal;
  encapsulation: number;
  life: ChildLifetime;
}

export function readPhase2(p: V1Proposal, t: V1Transform): Phase2Read | undefined {
  let lifeType: number | undefined;
  const life: ChildLifetime = { seconds: 0 };
  let group: number | undefined;
  let encaps: number | undefined;
  let auth: number | undefined;
  let keyBits: number | undefined;
  for (const a of t.attributes) {
    const v = attrNumber(a) as number;
    switch (a.type) {
      case P2Attr.LIFE_TYPE:
        lifeType = v;
        break;
      case P2Attr.LIFE_DURATION:
        if (lifeType === LifeType.SECONDS) life.seconds = v;
        else if (lifeType === LifeType.KILOBYTES) life.kilobytes = v;
        else return undefined;
        break;
      case P2Attr.GROUP:
        group = v;
        break;
      case P2Attr.ENCAPSULATION:
        encaps = v;
        break;
      case P2Attr.AUTH_ALGORITHM:
        auth = v;
        break;
      case P2Attr.KEY_LENGTH:
        keyBits = v;
        break;
      default:
        return undefined; // key rounds, compression, ECN tunnel: not implemented
    }
  }
  const transforms: Transform[] = [];
  const integ = auth === undefined ? undefined : INTEG_OF_P2_AUTH[auth];
  if (auth !== undefined && integ === undefined) return undefined;
  if (p.protocol === ProtocolId.ESP) {
    if (t.id === EspTransform.AES)
      transforms.push({ type: TransformType.ENCR, id: EncrId.AES_CBC, keyLength: keyBits ?? 128 });
    else if (t.id === EspTransform.AES_GCM_16) {
      if (integ !== undefined) return undefined;
      transforms.push({ type: TransformType.ENCR, id: EncrId.AES_GCM_16, keyLength: keyBits ?? 128 });
    } else if (t.id === EspTransform.NULL) transforms.push({ type: TransformType.ENCR, id: EncrId.NULL });
    else return undefined;
    if (integ !== undefined) transforms.push({ type: TransformType.INTEG, id: integ });
  } else if (p.protocol === ProtocolId.AH) {
    if (integ === undefined || AH_OF_INTEG[integ] !== t.id) return undefined;
    transforms.push({ type: TransformType.INTEG, id: integ });
  } else return undefined;
  if (group !== undefined) transforms.push({ type: TransformType.KE, id: group as KeId });
  transforms.push({ type: TransformType.ESN, id: EsnId.NO });
  return {
    proposal: {
      number: p.number,
      protocol: p.protocol === ProtocolId.AH ? V2Protocol.AH : V2Protocol.ESP,
      spi: p.spi,
      transforms,
    },
    encapsulation: encaps ?? -1,
    life,
  };
}

export interface Phase2Choice extends Phase2Read {
  /** The peer's proposal and transform, to echo. */
  offered: V1Proposal;
  transform: V1Transform;
}

/**
 * The responder's Quick Mode choice: the first of the peer's proposals whose transform one of ours
 * allows, in the encapsulation mode we expect. AH+ESP bundles (several proposals with one number)
 * are not chosen.
 */
export function selectPhase2(
  offered: readonly V1Proposal[],
  ours: readonly Proposal[],
  encapsOk: (encapsulation: number) => boolean,
): Phase2Choice | undefined {
  for (const p of offered) {
    if (offered.filter((q) => q.number === p.number).length > 1) continue;
    if (p.spi.length !== 4) continue;
    for (const t of p.transforms) {
      const r = readPhase2(p, t);
      if (!r || !encapsOk(r.encapsulation)) continue;
      const chosen = selectProposal([r.proposal], ours);
      if (chosen) return { ...r, proposal: chosen, offered: p, transform: t };
    }
  }
  return undefined;
}
