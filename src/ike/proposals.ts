/**
 * Proposals from policy (Windows MM/QM crypto proposals → IKEv2 transforms) and proposal
 * selection, shared by every keying module. Unsupported Windows algorithms (DES, 3DES, MD5, DH1/2,
 * AH) are left out with a reason, so an admin can see why a proposal was not offered.
 */
import type { MainModeCryptoProposal, QuickModeCryptoProposal } from '../policy/model.ts';
import type { Proposal, Transform } from './wire/codec.ts';
import { EncrId, EsnId, IntegId, KeId, PrfId, ProtocolId, TransformType } from './wire/constants.ts';

const ENCR: Record<string, { id: EncrId; bits: number } | undefined> = {
  AES128: { id: EncrId.AES_CBC, bits: 128 },
  AES192: { id: EncrId.AES_CBC, bits: 192 },
  AES256: { id: EncrId.AES_CBC, bits: 256 },
  AESGCM128: { id: EncrId.AES_GCM_16, bits: 128 },
  AESGCM192: { id: EncrId.AES_GCM_16, bits: 192 },
  AESGCM256: { id: EncrId.AES_GCM_16, bits: 256 },
};
const PRF: Record<string, PrfId | undefined> = {
  SHA1: PrfId.HMAC_SHA1,
  SHA256: PrfId.HMAC_SHA2_256,
  SHA384: PrfId.HMAC_SHA2_384,
};
const INTEG: Record<string, IntegId | undefined> = {
  SHA1: IntegId.HMAC_SHA1_96,
  SHA256: IntegId.HMAC_SHA2_256_128,
  SHA384: IntegId.HMAC_SHA2_384_192,
};
const KE: Record<string, KeId | undefined> = {
  DH14: KeId.MODP_2048,
  DH19: KeId.ECP_256,
  DH20: KeId.ECP_384,
  DH24: KeId.MODP_2048_256,
};

export interface Mapped {
  proposals: Proposal[];
  /** Windows proposals that could not be offered, and why. */
  skipped: string[];
}

/** IKE SA proposals from a main mode crypto set, in the set's order of preference. */
export function ikeProposals(set: readonly MainModeCryptoProposal[]): Mapped {
  const proposals: Proposal[] = [];
  const skipped: string[] = [];
  for (const p of set) {
    const encr = ENCR[p.Encryption];
    const prf = PRF[p.Hash];
    const integ = INTEG[p.Hash];
    const ke = KE[p.KeyExchange];
    const name = `${p.Encryption}-${p.Hash}-${p.KeyExchange}`;
    if (!encr) skipped.push(`${name}: encryption ${p.Encryption} is not offered by consec (use AES)`);
    else if (!prf || !integ) skipped.push(`${name}: hash ${p.Hash} is not offered by consec (use SHA256 or SHA384)`);
    else if (!ke || ke === KeId.MODP_2048_256)
      skipped.push(`${name}: key exchange ${p.KeyExchange} is not offered by consec (use DH14, DH19 or DH20)`);
    else {
      const transforms: Transform[] = [
        { type: TransformType.ENCR, id: encr.id, keyLength: encr.bits },
        { type: TransformType.PRF, id: prf },
      ];
      if (encr.id !== EncrId.AES_GCM_16) transforms.push({ type: TransformType.INTEG, id: integ });
      transforms.push({ type: TransformType.KE, id: ke });
      proposals.push({ number: proposals.length + 1, protocol: ProtocolId.IKE, spi: Buffer.alloc(0), transforms });
    }
  }
  return { proposals, skipped };
}

/** Child SA proposals (ESP, or AH) from a quick mode crypto set; AH+ESP bundles are left out with a reason. */
export function espProposals(set: readonly QuickModeCryptoProposal[], spi: Buffer, pfs?: KeId): Mapped {
  const proposals: Proposal[] = [];
  const skipped: string[] = [];
  for (const p of set) {
    const name = `${p.Encapsulation.join('+')}:${p.ESPHash}-${p.Encryption}`;
    if (p.Encapsulation.includes('AH')) {
      if (p.Encapsulation.includes('ESP')) {
        skipped.push(`${name}: AH together with ESP is a bundle IKEv2 cannot negotiate (RFC 7296 §1.7)`);
        continue;
      }
      const integ = INTEG[p.AHHash];
      if (!integ) {
        skipped.push(`${name}: AH integrity ${p.AHHash} is not offered by consec`);
        continue;
      }
      const ah: Transform[] = [{ type: TransformType.INTEG, id: integ }];
      if (pfs !== undefined) ah.push({ type: TransformType.KE, id: pfs });
      ah.push({ type: TransformType.ESN, id: EsnId.NO });
      proposals.push({ number: proposals.length + 1, protocol: ProtocolId.AH, spi, transforms: ah });
      continue;
    }
    const transforms: Transform[] = [];
    if (p.Encryption === 'None') transforms.push({ type: TransformType.ENCR, id: EncrId.NULL });
    else {
      const encr = ENCR[p.Encryption];
      if (!encr) {
        skipped.push(`${name}: encryption ${p.Encryption} is not offered by consec`);
        continue;
      }
      transforms.push({ type: TransformType.ENCR, id: encr.id, keyLength: encr.bits });
    }
    if (!p.ESPHash.startsWith('AESGMAC') && p.ESPHash !== 'None') {
      const integ = INTEG[p.ESPHash];
      if (!integ) {
        skipped.push(`${name}: integrity ${p.ESPHash} is not offered by consec`);
        continue;
      }
      transforms.push({ type: TransformType.INTEG, id: integ });
    }
    if (pfs !== undefined) transforms.push({ type: TransformType.KE, id: pfs });
    transforms.push({ type: TransformType.ESN, id: EsnId.NO });
    proposals.push({ number: proposals.length + 1, protocol: ProtocolId.ESP, spi, transforms });
  }
  return { proposals, skipped };
}

const sameTransform = (a: Transform, b: Transform): boolean =>
  a.type === b.type && a.id === b.id && a.keyLength === b.keyLength;

/**
 * Chosen transforms, interned: every SA that chose the same algorithms shares one frozen array (an
 * SA keeps its choice as long as it lives). The choices come out of our own proposals, so there
 * are few; the table is bounded all the same.
 */
const choices = new Map<string, readonly Transform[]>();
const MAX_CHOICES = 4096;

function sharedChoice(picked: readonly Transform[]): Transform[] {
  const key = picked.map((t) => `${t.type}:${t.id}:${t.keyLength ?? ''}`).join(',');
  let transforms = choices.get(key);
  if (!transforms) {
    transforms = Object.freeze(
      picked.map((t) =>
        Object.freeze(
          t.keyLength === undefined ? { type: t.type, id: t.id } : { type: t.type, id: t.id, keyLength: t.keyLength },
        ),
      ),
    );
    if (choices.size < MAX_CHOICES) choices.set(key, transforms);
  }
  return transforms as Transform[];
}

/**
 * Responder selection (RFC 7296 §2.7): the first of the peer's proposals for which we support
 * one transform of every type the proposal lists and that is one of ours. Returns the chosen
 * proposal reduced to one transform per type, with the peer's proposal number and SPI.
 */
export function selectProposal(offered: readonly Proposal[], supported: readonly Proposal[]): Proposal | undefined {
  for (const p of offered) {
    for (const ours of supported) {
      if (ours.protocol !== p.protocol) continue;
      const types = new Set(p.transforms.map((t) => t.type));
      const oursTypes = new Set(ours.transforms.map((t) => t.type));
      if (types.size !== oursTypes.size || [...types].some((t) => !oursTypes.has(t))) continue;
      const chosen: Transform[] = [];
      for (const type of types) {
        const pick = p.transforms.find((t) => t.type === type && ours.transforms.some((o) => sameTransform(o, t)));
        if (!pick) break;
        chosen.push(pick);
      }
      if (chosen.length === types.size)
        return { number: p.number, protocol: p.protocol, spi: p.spi, transforms: sharedChoice(chosen) };
    }
  }
  return undefined;
}

/** Initiator check: the responder's choice must be one transform per type out of one proposal we sent. */
export function acceptChosen(sent: readonly Proposal[], chosen: Proposal): Proposal | undefined {
  const ours = sent.find((p) => p.number === chosen.number && p.protocol === chosen.protocol);
  if (!ours) return undefined;
  const types = new Set(chosen.transforms.map((t) => t.type));
  if (types.size !== chosen.transforms.length) return undefined;
  if (!chosen.transforms.every((t) => ours.transforms.some((o) => sameTransform(o, t)))) return undefined;
  const oursTypes = new Set(ours.transforms.map((t) => t.type));
  if ([...oursTypes].some((t) => !types.has(t))) return undefined;
  return { ...chosen, transforms: sharedChoice(chosen.transforms) };
}

export const transformOf = (p: Proposal, type: TransformType): Transform | undefined =>
  p.transforms.find((t) => t.type === type);
