/**
 * Key export for Wireshark/tshark: rows of its `ikev2_decryption_table`, `ikev1_decryption_table`
 * and `esp_sa` tables, so an
 * independent implementation can decrypt and check our traffic. Written only when an operator asks
 * for it (like SSLKEYLOGFILE), to a file of mode 0600; never logged.
 */
import { closeSync, writeSync } from 'node:fs';
import { OwnFiles, openOwnAppend } from '../io/safe-file.ts';
import { join } from 'node:path';
import type { IkeSa } from './sa.ts';
import type { V1Session } from './v1/session.ts';
import type { ChildEntry } from './tasks/context.ts';
import { childSpec } from './child-spec.ts';
import type { ChildSaSpec } from '../sa/spec.ts';
import { espSaRows } from '../sa/wireshark.ts';
import { EncrId, IntegId, TransformType } from './wire/constants.ts';

const q = (s: string): string => `"${s}"`;

const IKE_INTEG: Partial<Record<IntegId, string>> = {
  [IntegId.HMAC_SHA1_96]: 'HMAC_SHA1_96 [RFC2404]',
  [IntegId.HMAC_SHA2_256_128]: 'HMAC_SHA2_256_128 [RFC4868]',
  [IntegId.HMAC_SHA2_384_192]: 'HMAC_SHA2_384_192 [RFC4868]',
  [IntegId.HMAC_SHA2_512_256]: 'HMAC_SHA2_512_256 [RFC4868]',
};
/** One ikev2_decryption_table row: SPIi, SPIr, SK_ei, SK_er, cipher, SK_ai, SK_ar, integrity. */
export function ikeDecryptionRow(sa: IkeSa): string {
  const k = sa.keys;
  const p = sa.chosen;
  if (!k || !p) throw new Error('the IKE SA has no keys yet');
  const encr = p.transforms.find((t) => t.type === TransformType.ENCR);
  const integ = p.transforms.find((t) => t.type === TransformType.INTEG);
  const cipher =
    encr?.id === EncrId.AES_GCM_16
      ? `AES-GCM-${encr.keyLength} with 16 octet ICV [RFC5282]`
      : `AES-CBC-${encr?.keyLength} [RFC3602]`;
  const integName = integ ? (IKE_INTEG[integ.id as IntegId] ?? '') : 'NONE [RFC4306]';
  return [
    sa.spiI.toString('hex'),
    sa.spiR.toString('hex'),
    k.skEi.toString('hex'),
    k.skEr.toString('hex'),
    q(cipher),
    k.skAi.toString('hex'),
    k.skAr.toString('hex'),
    q(integName),
  ].join(',');
}

/**
 * Appends `text` to `dir`/`name`: a file consec created there (src/io/safe-file.ts: never a link,
 * never someone else's file, never in a directory others may write to; the record in `dir`).
 */
function appendKeys(dir: string, name: string, text: string): void {
  const { fd } = openOwnAppend(join(dir, name), new OwnFiles(dir));
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
}

/** Appends the rows to `dir`/ikev2_decryption_table and `dir`/esp_sa (Wireshark's UAT file names). */
export function writeWiresharkKeys(dir: string, sa: IkeSa, child: ChildSaSpec | undefined): void {
  appendKeys(dir, 'ikev2_decryption_table', `${ikeDecryptionRow(sa)}\n`);
  if (child) appendEspKeys(dir, child);
}

/**
 * One ikev1_decryption_table row: the initiator cookie and the Phase 1 encryption key. Wireshark
 * derives the IVs itself from the KE payloads it sees (RFC 2409 Appendix B), so the capture must hold
 * Main Mode messages 3 and 4.
 */
export function ikev1DecryptionRow(s: V1Session): string {
  if (!s.keys) throw new Error('the ISAKMP SA has no keys yet');
  return `${s.cookieI.toString('hex')},${s.keys.encKey.toString('hex')}`;
}

/** Appends the rows to `dir`/ikev1_decryption_table and `dir`/esp_sa. */
export function writeWiresharkKeysV1(dir: string, s: V1Session, child: ChildEntry | undefined): void {
  appendKeys(dir, 'ikev1_decryption_table', `${ikev1DecryptionRow(s)}\n`);
  if (child)
    appendEspKeys(dir, childSpec(child.child, { local: s.local, remote: s.remote, udpEncapsulation: s.floated }));
}

/** Appends the esp_sa rows of a child SA. */
export function appendEspKeys(dir: string, spec: ChildSaSpec): void {
  appendKeys(dir, 'esp_sa', `${espSaRows(spec).join('\n')}\n`);
}
