/**
 * AuthIP messages as text for the IKE debug log: exchange, cookies, seqNUM and per payload what a
 * troubleshooter needs (methods, GSS status and flags with the token's length, SPN, notify types);
 * never payload data (no tokens, nonces, hashes). Pure.
 */
import type { V1Payload } from '../v1/codec.ts';
import { PayloadType } from '../v1/constants.ts';
import { v1PayloadText } from '../v1/trace.ts';
import type { AuthIpMessage, AuthIpPayload } from './codec.ts';
import { AuthIpExchange, AuthIpMethod, AuthIpNotify, AuthIpPayloadType } from './constants.ts';

function payloadText(p: AuthIpPayload): string {
  switch (p.type) {
    case AuthIpPayloadType.AUTH:
      return `Auth(${p.methods.map((m) => AuthIpMethod[m.method] ?? m.method).join(', ')})`;
    case AuthIpPayloadType.GSS:
      return `GSS(status ${p.status}, flags 0x${p.flags.toString(16)}, token ${p.token.length} octets)`;
    case AuthIpPayloadType.GSS_ID:
      return `GSS_ID(${p.spn})`;
    case AuthIpPayloadType.KEY_DICTATION:
    case AuthIpPayloadType.KEY_DICTATION_WEIGHT:
      return AuthIpPayloadType[p.type];
    case PayloadType.N:
      return `N(${AuthIpNotify[p.notify] ?? p.notify}${p.data.length === 4 ? ` ${p.data.readUInt32BE(0)}` : ''})`;
    default:
      return v1PayloadText(p as V1Payload);
  }
}

export const authIpText = (payloads: readonly AuthIpPayload[]): string => payloads.map(payloadText).join(', ');

/** One message's header line: exchange, cookies, Crypto seqNUM, and the clear payloads or "encrypted". */
export function authIpLine(dir: 'sent' | 'received', peer: string, m: AuthIpMessage): string {
  const x = AuthIpExchange[m.header.exchange] ?? m.header.exchange;
  const body = m.header.encrypted ? 'encrypted' : authIpText(m.payloads);
  return `${dir} AuthIP ${x} ${dir === 'sent' ? 'to' : 'from'} ${peer} cookies ${m.header.cookieI.toString('hex')}/${m.header.cookieR.toString('hex')} seq ${m.crypto?.seq ?? '-'} ${m.raw.length} octets: ${body}`;
}
