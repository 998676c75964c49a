/**
 * Key export for Wireshark/tshark: rows of its `ikev2_decryption_table` and `esp_sa` tables, so an
 * independent implementation can decrypt and check our traffic. Written only when an operator asks
 * for it (like SSLKEYLOGFILE), to a file of mode 0600; never logged.
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { join } from 'node:path';
import type { IkeSa } from './sa.ts';
import type { ChildSa } from './tasks/child-create.ts';
import { EncrId, IntegId, TransformType } from './wire/constants.ts';

const q = (s: string): string => `"${s}"`;

const IKE_INTEG: Partial<Record<IntegId, string>> = {
  [IntegId.HMAC_SHA1_96]: 'HMAC_SHA1_96 [RFC2404]',
  [IntegId.HMAC_SHA2_256_128]: 'HMAC_SHA2_256_128 [RFC4868]',
  [IntegId.HMAC_SHA2_384_192]: 'HMAC_SHA2_384_192 [RFC4868]',
  [IntegId.HMAC_SHA2_512_256]: 'HMAC_SHA2_512_256 [RFC4868]',
};
const ESP_AUTH: Partial<Record<IntegId, string>> = {
  [IntegId.HMAC_SHA1_96]: 'HMAC-SHA-1-96 [RFC2404]',
  [IntegId.HMAC_SHA2_256_128]: 'HMAC-SHA-256-128 [RFC4868]',
  [IntegId.HMAC_SHA2_384_192]: 'HMAC-SHA-384-192 [RFC4868]',
  [IntegId.HMAC_SHA2_512_256]: 'HMAC-SHA-512-256 [RFC4868]',
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

/** The two esp_sa rows of a child SA (initiator → responder, then back). */
export function espSaRows(child: ChildSa, initiator: string, responder: string, weAreInitiator: boolean): string[] {
  const encr = child.proposal.transforms.find((t) => t.type === TransformType.ENCR);
  const integ = child.proposal.transforms.find((t) => t.type === TransformType.INTEG);
  const cipher =
    encr?.id === EncrId.AES_GCM_16
      ? 'AES-GCM with 16 octet ICV [RFC4106]'
      : encr?.id === EncrId.NULL
        ? 'NULL'
        : 'AES-CBC [RFC3602]';
  const auth = integ ? (ESP_AUTH[integ.id as IntegId] ?? 'NULL') : 'NULL';
  const family = isIPv4(initiator) ? 'IPv4' : 'IPv6';
  // The SPI of a direction is chosen by its receiver.
  const spiItoR = weAreInitiator ? child.spiOut : child.spiIn;
  const spiRtoI = weAreInitiator ? child.spiIn : child.spiOut;
  const row = (src: string, dst: string, spi: Buffer, key: Buffer, ikey: Buffer) =>
    [
      q(family),
      q(src),
      q(dst),
      q(`0x${spi.toString('hex')}`),
      q(cipher),
      q(`0x${key.toString('hex')}`),
      q(auth),
      q(ikey.length ? `0x${ikey.toString('hex')}` : ''),
    ].join(',');
  return [
    row(initiator, responder, spiItoR, child.keys.encrI, child.keys.integI),
    row(responder, initiator, spiRtoI, child.keys.encrR, child.keys.integR),
  ];
}

/** Appends the rows to `dir`/ikev2_decryption_table and `dir`/esp_sa (Wireshark's UAT file names). */
export function writeWiresharkKeys(
  dir: string,
  sa: IkeSa,
  child: ChildSa | undefined,
  initiator: string,
  responder: string,
): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  appendFileSync(join(dir, 'ikev2_decryption_table'), `${ikeDecryptionRow(sa)}\n`, { mode: 0o600 });
  if (child)
    appendFileSync(
      join(dir, 'esp_sa'),
      `${espSaRows(child, initiator, responder, sa.role === 'initiator').join('\n')}\n`,
      { mode: 0o600 },
    );
}

/** Appends the esp_sa rows of a child SA between `local` (us) and `remote` (the data plane's view). */
export function appendEspKeys(dir: string, child: ChildSa, local: string, remote: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const [initiator, responder] = child.initiator ? [local, remote] : [remote, local];
  appendFileSync(join(dir, 'esp_sa'), `${espSaRows(child, initiator, responder, child.initiator).join('\n')}\n`, {
    mode: 0o600,
  });
}
