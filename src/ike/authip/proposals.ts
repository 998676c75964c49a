/**
 * AuthIP Main Mode SA payloads ([MS-AIPS] §3.2.4): IKEv1 Phase 1 transforms without the
 * authentication method attribute (AuthIP names its methods in the Auth payload) and with group 0
 * when no Diffie-Hellman exchange is needed (Kerberos and certificates). Built and read through the
 * IKEv1 module's Phase 1 functions, so both modules accept the same algorithms.
 */
import type { Proposal } from '../wire/codec.ts';
import { TransformType } from '../wire/constants.ts';
import type { V1Transform } from '../v1/codec.ts';
import { P1Attr, P1Encryption } from '../v1/constants.ts';
import { type Phase1Choice, phase1Transforms, readPhase1, selectPhase1 } from '../v1/proposals.ts';
import type { AuthIpSuite } from './crypto.ts';

/** Our Main Mode transforms: the crypto set's proposals, DH group 0 (no KE), no authentication attribute. */
export function mmTransforms(proposals: readonly Proposal[], lifeSeconds: number): V1Transform[] {
  const noDh = proposals.map((p) => ({
    ...p,
    transforms: p.transforms.map((t) => (t.type === TransformType.KE ? { ...t, id: 0 } : t)),
  }));
  return phase1Transforms(noDh, 0, lifeSeconds).map((t) => ({
    ...t,
    attributes: t.attributes.filter((a) => a.type !== P1Attr.AUTH_METHOD),
  }));
}

/** IKEv1's reading of a transform, with the authentication attribute AuthIP leaves out. */
const asPhase1 = (t: V1Transform): V1Transform => ({
  ...t,
  attributes: [...t.attributes, { type: P1Attr.AUTH_METHOD, value: 0 }],
});

export interface MmChoice {
  /** The peer's transform as it was (the responder returns the accepted SA). */
  transform: V1Transform;
  phase1: Phase1Choice;
  suite: AuthIpSuite;
}

const suiteOf = (c: Phase1Choice): AuthIpSuite => ({
  hash: c.suite.hash,
  cryptoId: P1Encryption.AES_CBC,
  keyBytes: c.suite.keyBytes,
});

/** Reads one transform; undefined for algorithms consec does not implement or a DH group (not offered here). */
export function readMm(t: V1Transform): MmChoice | undefined {
  const c = readPhase1(asPhase1(t));
  return c && c.group === 0 ? { transform: t, phase1: c, suite: suiteOf(c) } : undefined;
}

/** The responder's choice: the first of the peer's transforms our proposals allow (§3.3.5.1). */
export function selectMm(offered: readonly V1Transform[], ours: readonly Proposal[]): MmChoice | undefined {
  const noDh = ours.map((p) => ({
    ...p,
    transforms: p.transforms.map((t) => (t.type === TransformType.KE ? { ...t, id: 0 } : t)),
  }));
  for (const t of offered) {
    const c = selectPhase1([asPhase1(t)], noDh, [0]);
    if (c && c.group === 0) return { transform: t, phase1: c, suite: suiteOf(c) };
  }
  return undefined;
}
