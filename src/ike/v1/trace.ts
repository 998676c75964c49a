/**
 * IKEv1 payloads as text for the IKE debug log: per payload what a troubleshooter needs (transforms
 * with their attributes, identities, notify and delete types, vendor IDs by name), never payload
 * data (no key exchange values, nonces, hashes or signatures). Pure.
 */
import { type Attribute, attrNumber, type V1Payload } from './codec.ts';
import { AuthMethod, IdType, NotifyType, P1Attr, P2Attr, PayloadType, ProtocolId, VendorId } from './constants.ts';

const VENDOR_NAMES: [Buffer, string][] = [
  [VendorId.RFC3947, 'RFC 3947'],
  [VendorId.NATT_DRAFT_02N, 'draft-ietf-ipsec-nat-t-ike-02\\n'],
  [VendorId.NATT_DRAFT_02, 'draft-ietf-ipsec-nat-t-ike-02'],
  [VendorId.NATT_DRAFT_03, 'draft-ietf-ipsec-nat-t-ike-03'],
  [VendorId.DPD, 'DPD'],
  [VendorId.MS_INITIAL_CONTACT, 'Vid-Initial-Contact'],
  [VendorId.MS_NEGOTIATION_DISCOVERY, 'MS-Negotiation Discovery Capable'],
  [VendorId.MS_IKE_CGA_V1, 'IKE CGA version 1'],
  [VendorId.MS_NLBS_PRESENT, 'NLBS_PRESENT'],
  [VendorId.MS_MAMIE_EXISTS, 'MS-MamieExists'],
];

/** A vendor ID's name (MS NT5 with its version, fragmentation by prefix), or its hex. */
export function vendorName(data: Buffer): string {
  for (const [v, n] of VENDOR_NAMES) if (data.equals(v)) return n;
  if (data.length === 20 && data.subarray(0, 16).equals(VendorId.MS_NT5_PREFIX))
    return `MS NT5 ISAKMPOAKLEY v${data.readUInt32BE(16)}`;
  if (data.length >= 16 && data.subarray(0, 16).equals(VendorId.FRAGMENTATION)) return 'FRAGMENTATION';
  return data.toString('hex');
}

const attrText = (a: Attribute, phase: 1 | 2): string => {
  const names = phase === 1 ? P1Attr : P2Attr;
  let v: string;
  try {
    v = String(attrNumber(a));
  } catch {
    v = `${(a.value as Buffer).length} octets`;
  }
  if (phase === 1 && a.type === P1Attr.AUTH_METHOD) v = AuthMethod[Number(v)] ?? v;
  return `${names[a.type] ?? a.type}=${v}`;
};

export function v1PayloadText(p: V1Payload): string {
  switch (p.type) {
    case PayloadType.SA:
      return `SA(${p.proposals
        .map(
          (x) =>
            `#${x.number} ${ProtocolId[x.protocol] ?? x.protocol}${x.spi.length ? ` spi=${x.spi.toString('hex')}` : ''}: ` +
            x.transforms
              .map(
                (t) =>
                  `[${t.number} id=${t.id} ${t.attributes.map((a) => attrText(a, x.protocol === ProtocolId.ISAKMP ? 1 : 2)).join(' ')}]`,
              )
              .join(' '),
        )
        .join('; ')})`;
    case PayloadType.ID:
      return `ID(${IdType[p.idType] ?? p.idType} proto ${p.protocol} port ${p.port}, ${p.data.length} octets)`;
    case PayloadType.N:
      return `N(${NotifyType[p.notify] ?? p.notify}${p.spi.length ? ` spi=${p.spi.toString('hex')}` : ''})`;
    case PayloadType.D:
      return `D(${ProtocolId[p.protocol] ?? p.protocol} ${p.spis.map((s) => s.toString('hex')).join(',')})`;
    case PayloadType.VID:
      return `VID(${vendorName(p.data)})`;
    case PayloadType.CERT:
    case PayloadType.CR:
      return `${PayloadType[p.type]}(encoding ${p.encoding})`;
    case PayloadType.FRAGMENT:
      return `FRAGMENT(id ${p.id} #${p.number}${p.last ? ' last' : ''})`;
    default:
      return PayloadType[p.type] ?? String(p.type);
  }
}

export const v1Text = (payloads: readonly V1Payload[]): string => payloads.map(v1PayloadText).join(', ');
