/**
 * Wireshark's `esp_sa` table (its UAT file format) for a child SA, so an independent implementation
 * can decrypt and check our ESP. Written only when an operator asks for it; never logged.
 */
import { isIPv4 } from 'node:net';
import type { ChildSaSpec } from './spec.ts';

const q = (s: string): string => `"${s}"`;

const CIPHER = { 'aes-gcm-16': 'AES-GCM with 16 octet ICV [RFC4106]', 'aes-cbc': 'AES-CBC [RFC3602]', null: 'NULL' };
const AUTH = {
  'sha1-96': 'HMAC-SHA-1-96 [RFC2404]',
  'sha256-128': 'HMAC-SHA-256-128 [RFC4868]',
  'sha384-192': 'HMAC-SHA-384-192 [RFC4868]',
  'sha512-256': 'HMAC-SHA-512-256 [RFC4868]',
};

/** The two esp_sa rows of a child SA: ours out (local → remote), then the peer's (remote → local). */
export function espSaRows(spec: ChildSaSpec): string[] {
  const local = spec.local.address;
  const remote = spec.remote.address;
  const family = isIPv4(local) ? 'IPv4' : 'IPv6';
  const cipher = CIPHER[spec.cipher ?? 'null'];
  const auth = spec.integrity ? AUTH[spec.integrity] : 'NULL';
  const hex = (b: Buffer) => `0x${b.toString('hex')}`;
  const row = (src: string, dst: string, d: ChildSaSpec['inbound']) =>
    [
      q(family),
      q(src),
      q(dst),
      q(`0x${d.spi.toString(16).padStart(8, '0')}`),
      q(cipher),
      q(hex(d.encrKey)),
      q(auth),
      q(d.integKey.length ? hex(d.integKey) : ''),
    ].join(',');
  return [row(local, remote, spec.outbound), row(remote, local, spec.inbound)];
}
