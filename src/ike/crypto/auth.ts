/** The AUTH payload for a pre-shared key (RFC 7296 §2.15). The key never leaves this function. */
import { timingSafeEqual } from 'node:crypto';
import type { PrfAlg } from './algorithms.ts';
import { prf } from './prf.ts';

const KEY_PAD = Buffer.from('Key Pad for IKEv2', 'ascii');

/**
 * AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>), SignedOctets =
 * RealMessage | NonceOfTheOtherSide | prf(SK_p, IDPayloadBody) where IDPayloadBody is the ID
 * payload without its generic header.
 */
export function pskAuth(
  alg: PrfAlg,
  psk: Buffer,
  realMessage: Buffer,
  peerNonce: Buffer,
  skP: Buffer,
  idBody: Buffer,
): Buffer {
  const signed = Buffer.concat([realMessage, peerNonce, prf(alg, skP, idBody)]);
  return prf(alg, prf(alg, psk, KEY_PAD), signed);
}

export function verifyPskAuth(expected: Buffer, received: Buffer): boolean {
  return expected.length === received.length && timingSafeEqual(expected, received);
}
