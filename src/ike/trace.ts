/**
 * IKE messages as one line of text for the IKE debug log (`netsh advfirewall set global ipsec
 * debuglog enable`): exchange, role flags, message ID, SPIs, and per payload what a troubleshooter
 * needs — proposals with their transforms, notify types, identities, selectors, the key exchange
 * group, certificate and AUTH methods. Never payload data: no key exchange values, nonces, AUTH
 * octets, certificates or SK contents. Pure.
 */
import { selectorsText } from './describe.ts';
import type { IkeHeader, KnownPayload, Payload, Proposal } from './wire/codec.ts';
import {
  AuthMethod,
  EncrId,
  EsnId,
  ExchangeType,
  Flags,
  IdType,
  IntegId,
  KeId,
  NotifyType,
  PayloadType,
  PrfId,
  ProtocolId,
  TransformType,
} from './wire/constants.ts';

const name = (table: Record<number, string>, id: number, what: string): string => table[id] ?? `${what}${id}`;

/** "ENCR_AES_GCM_16/256 KE_ECP_256 …" for one proposal, in RFC 7296 registry names. */
export function proposalText(p: Proposal): string {
  const parts = p.transforms.map((t) => {
    switch (t.type) {
      case TransformType.ENCR:
        return `${name(EncrId, t.id, 'ENCR')}${t.keyLength ? `/${t.keyLength}` : ''}`;
      case TransformType.PRF:
        return `PRF_${name(PrfId, t.id, '')}`;
      case TransformType.INTEG:
        return `INTEG_${name(IntegId, t.id, '')}`;
      case TransformType.KE:
        return name(KeId, t.id, 'KE');
      case TransformType.ESN:
        return `ESN_${name(EsnId, t.id, '')}`;
      default:
        return `T${t.type}:${t.id}`;
    }
  });
  const spi = p.spi.length ? ` spi=${p.spi.toString('hex')}` : '';
  return `#${p.number} ${name(ProtocolId, p.protocol, 'PROTO')}${spi}: ${parts.join(' ')}`;
}

function identityText(idType: number, data: Buffer): string {
  switch (idType) {
    case IdType.IPV4_ADDR:
      return data.length === 4 ? [...data].join('.') : '?';
    case IdType.IPV6_ADDR:
      return data.toString('hex').replace(/(.{4})(?!$)/g, '$1:');
    case IdType.FQDN:
    case IdType.RFC822_ADDR:
      return data.toString('utf8').replace(/[^\x20-\x7e]/g, '?');
    default:
      return `${name(IdType, idType, 'ID')} (${data.length} octets)`;
  }
}

/** Status notifies consec does not act on, named for the trace (IANA IKEv2 Notify Message Types). */
const MORE_NOTIFIES: Record<number, string> = {
  16392: 'HTTP_CERT_LOOKUP_SUPPORTED',
  16394: 'ESP_TFC_PADDING_NOT_SUPPORTED',
  16395: 'NON_FIRST_FRAGMENTS_ALSO',
  16396: 'MOBIKE_SUPPORTED',
  16404: 'MULTIPLE_AUTH_SUPPORTED',
  16405: 'ANOTHER_AUTH_FOLLOWS',
  16406: 'REDIRECT_SUPPORTED',
  16407: 'REDIRECT',
  16408: 'REDIRECTED_FROM',
  16417: 'EAP_ONLY_AUTHENTICATION',
  16418: 'CHILDLESS_IKEV2_SUPPORTED',
  16419: 'QUICK_CRASH_DETECTION',
  16420: 'IKEV2_MESSAGE_ID_SYNC_SUPPORTED',
  16421: 'IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED',
};

/** One payload, without its secret or bulky contents. */
export function payloadText(payload: Payload): string {
  if ('unknown' in payload) return `payload ${payload.type} (${payload.data.length} octets)`;
  const p = payload as KnownPayload;
  switch (p.type) {
    case PayloadType.SA:
      return `SA[${p.proposals.map(proposalText).join(' | ')}]`;
    case PayloadType.KE:
      return `KE(${name(KeId, p.group, 'group ')})`;
    case PayloadType.IDi:
    case PayloadType.IDr:
      return `${p.type === PayloadType.IDi ? 'IDi' : 'IDr'}(${name(IdType, p.idType, 'ID')} ${identityText(p.idType, p.data)})`;
    case PayloadType.CERT:
      return `CERT(encoding ${p.encoding}, ${p.data.length} octets)`;
    case PayloadType.CERTREQ:
      return `CERTREQ(${Math.floor(p.data.length / 20)} authorities)`;
    case PayloadType.AUTH:
      return `AUTH(${name(AuthMethod, p.method, 'method ')})`;
    case PayloadType.NONCE:
      return `N(${p.data.length} octets)`;
    case PayloadType.NOTIFY: {
      const n = NotifyType[p.notify] ?? MORE_NOTIFIES[p.notify] ?? `type ${p.notify}`;
      // Values that help: the group asked for, the cookie's presence; never other notify data.
      const extra =
        p.notify === NotifyType.INVALID_KE_PAYLOAD && p.data.length === 2
          ? ` ${name(KeId, p.data.readUInt16BE(0), '')}`
          : '';
      return `NOTIFY(${n}${extra})`;
    }
    case PayloadType.DELETE:
      return `DELETE(${name(ProtocolId, p.protocol, 'PROTO')}${p.spis.length ? ` ${p.spis.map((s) => s.toString('hex')).join(',')}` : ''})`;
    case PayloadType.VENDOR_ID:
      return `V(${p.data.length} octets)`;
    case PayloadType.TSi:
    case PayloadType.TSr:
      return `${p.type === PayloadType.TSi ? 'TSi' : 'TSr'}(${selectorsText(p.selectors)})`;
    case PayloadType.CP:
      return `CP(type ${p.cfgType}, ${p.attributes.length} attributes)`;
    case PayloadType.EAP:
      return 'EAP';
    case PayloadType.SK:
      return `SK(${p.body.length} octets)`;
    case PayloadType.SKF:
      return 'SKF';
  }
}

/** The header: "IKE_AUTH request #1 (initiator) spi=… / …". */
export function headerText(h: IkeHeader): string {
  const response = (h.flags & Flags.RESPONSE) !== 0;
  const initiator = (h.flags & Flags.INITIATOR) !== 0;
  return (
    `${ExchangeType[h.exchange] ?? `exchange ${h.exchange}`} ${response ? 'response' : 'request'} #${h.messageId}` +
    ` (from the ${initiator ? 'original initiator' : 'original responder'}) spi ${h.spiI.toString('hex')}/${h.spiR.toString('hex')}`
  );
}

export const payloadsText = (payloads: readonly Payload[]): string => payloads.map(payloadText).join(' ');

/** Where the IKE debug trace goes; `enabled` is asked before any message is described. */
export interface IkeTrace {
  enabled(): boolean;
  line(text: string): void;
}
