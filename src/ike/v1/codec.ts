/**
 * ISAKMP message codec for IKEv1 (RFC 2408 §3, RFC 2407 §4, RFC 3947 §3–5, Cisco/MS-IKEE fragments).
 * Pure: buffers in, buffers out. Decoding checks every length against its container and raises
 * V1DecodeError with the notify RFC 2408 names; nothing else escapes. Each decoded payload keeps
 * its wire octets (`raw`, generic header included) because IKEv1's hashes are computed over them
 * (HASH_I over the SA body, Quick Mode HASH(1) over every payload after HASH).
 */
import { ConsecError } from '../../errors.ts';
import { HEADER_SIZE, ISAKMP_VERSION, NotifyType, PayloadType } from './constants.ts';

export class V1DecodeError extends ConsecError {
  constructor(
    message: string,
    readonly notify: NotifyType = NotifyType.PAYLOAD_MALFORMED,
  ) {
    super('ERR_IKEV1_DECODE', message);
  }
}

export interface V1Header {
  cookieI: Buffer;
  cookieR: Buffer;
  nextPayload: number;
  /** The version octet (0x10 for IKEv1). */
  version: number;
  exchange: number;
  flags: number;
  messageId: number;
  length: number;
}

/** A data attribute (RFC 2408 §3.3): basic (TV, 16-bit value) or variable (TLV). */
export interface Attribute {
  type: number;
  value: number | Buffer;
}

export interface V1Transform {
  number: number;
  id: number;
  attributes: Attribute[];
}

export interface V1Proposal {
  number: number;
  protocol: number;
  spi: Buffer;
  transforms: V1Transform[];
}

type DataType =
  | PayloadType.KE
  | PayloadType.HASH
  | PayloadType.SIG
  | PayloadType.NONCE
  | PayloadType.VID
  | PayloadType.NAT_D
  | PayloadType.NAT_D_DRAFT;
/** One member per payload type, so `Extract<V1Payload, { type: T }>` finds each. */
type Each<T extends PayloadType, Body> = { [K in T]: { type: K } & Body }[T];

export type V1Payload = (
  | { type: PayloadType.SA; doi: number; situation: number; proposals: V1Proposal[] }
  | Each<DataType, { data: Buffer }>
  | { type: PayloadType.ID; idType: number; protocol: number; port: number; data: Buffer }
  | Each<PayloadType.CERT | PayloadType.CR, { encoding: number; data: Buffer }>
  | { type: PayloadType.N; doi: number; protocol: number; spi: Buffer; notify: number; data: Buffer }
  | { type: PayloadType.D; doi: number; protocol: number; spis: Buffer[]; spiSize: number }
  | Each<PayloadType.NAT_OA | PayloadType.NAT_OA_DRAFT, { idType: number; address: Buffer }>
  | { type: PayloadType.FRAGMENT; id: number; number: number; last: boolean; data: Buffer }
) & {
  /** The payload as on the wire, generic header included (set by the decoder and the encoder). */
  raw?: Buffer;
};

export interface V1Message {
  header: V1Header;
  /** The body after the header as received: payloads, or ciphertext when the E flag is set. */
  body: Buffer;
  raw: Buffer;
}

/** Reads the ISAKMP header and checks the message length; the body stays opaque (it may be encrypted). */
export function decodeV1(raw: Buffer): V1Message {
  if (raw.length < HEADER_SIZE) throw new V1DecodeError(`message of ${raw.length} octets is shorter than the header`);
  const version = raw[17] as number;
  if (version >> 4 !== 1)
    throw new V1DecodeError(`ISAKMP major version ${version >> 4}`, NotifyType.INVALID_MAJOR_VERSION);
  if ((version & 0xf) !== 0)
    throw new V1DecodeError(`ISAKMP minor version ${version & 0xf}`, NotifyType.INVALID_MINOR_VERSION);
  const length = raw.readUInt32BE(24);
  if (length !== raw.length)
    throw new V1DecodeError(
      `header length ${length} but the datagram has ${raw.length} octets`,
      NotifyType.UNEQUAL_PAYLOAD_LENGTHS,
    );
  const flags = raw[19] as number;
  if (flags & ~0x07) throw new V1DecodeError(`unknown flags 0x${flags.toString(16)}`, NotifyType.INVALID_FLAGS);
  return {
    header: {
      cookieI: raw.subarray(0, 8),
      cookieR: raw.subarray(8, 16),
      nextPayload: raw[16] as number,
      version,
      exchange: raw[18] as number,
      flags,
      messageId: raw.readUInt32BE(20),
      length,
    },
    body: raw.subarray(HEADER_SIZE),
    raw,
  };
}

function attributes(b: Buffer): Attribute[] {
  const out: Attribute[] = [];
  let o = 0;
  while (o < b.length) {
    if (o + 4 > b.length) throw new V1DecodeError('truncated data attribute');
    const t = b.readUInt16BE(o);
    if (t & 0x8000) {
      out.push({ type: t & 0x7fff, value: b.readUInt16BE(o + 2) });
      o += 4;
    } else {
      const len = b.readUInt16BE(o + 2);
      if (o + 4 + len > b.length) throw new V1DecodeError('variable data attribute overruns its transform');
      out.push({ type: t, value: b.subarray(o + 4, o + 4 + len) });
      o += 4 + len;
    }
  }
  return out;
}

/** The attribute's value as a number (variable attributes of up to 6 octets, e.g. long lifetimes). */
export function attrNumber(a: Attribute | undefined): number | undefined {
  if (!a) return undefined;
  if (typeof a.value === 'number') return a.value;
  if (a.value.length === 0 || a.value.length > 6)
    throw new V1DecodeError(
      `attribute ${a.type} has a ${a.value.length}-octet value`,
      NotifyType.ATTRIBUTES_NOT_SUPPORTED,
    );
  return a.value.readUIntBE(0, a.value.length);
}

/** Walks a chain of generic payload headers of one kind (proposals in an SA, transforms in a proposal). */
function* substructures(b: Buffer, kind: PayloadType, what: string): Generator<Buffer> {
  let o = 0;
  let next: number = kind;
  while (next !== PayloadType.NONE) {
    if (next !== kind)
      throw new V1DecodeError(`${what} chain names payload type ${next}`, NotifyType.BAD_PROPOSAL_SYNTAX);
    if (o + 4 > b.length) throw new V1DecodeError(`truncated ${what}`, NotifyType.BAD_PROPOSAL_SYNTAX);
    next = b[o] as number;
    const len = b.readUInt16BE(o + 2);
    if (len < 4 || o + len > b.length)
      throw new V1DecodeError(`${what} length ${len} overruns its container`, NotifyType.BAD_PROPOSAL_SYNTAX);
    yield b.subarray(o, o + len);
    o += len;
  }
  if (o !== b.length)
    throw new V1DecodeError(`${b.length - o} octets after the last ${what}`, NotifyType.BAD_PROPOSAL_SYNTAX);
}

function saPayload(body: Buffer): V1Payload {
  if (body.length < 8) throw new V1DecodeError('SA payload shorter than its DOI and situation');
  const doi = body.readUInt32BE(0);
  const situation = body.readUInt32BE(4);
  const proposals: V1Proposal[] = [];
  if (body.length > 8)
    for (const p of substructures(body.subarray(8), PayloadType.PROPOSAL, 'proposal')) {
      if (p.length < 8) throw new V1DecodeError('proposal shorter than its header', NotifyType.BAD_PROPOSAL_SYNTAX);
      const spiSize = p[6] as number;
      const count = p[7] as number;
      if (8 + spiSize > p.length)
        throw new V1DecodeError('proposal SPI overruns the proposal', NotifyType.BAD_PROPOSAL_SYNTAX);
      const transforms: V1Transform[] = [];
      for (const t of substructures(p.subarray(8 + spiSize), PayloadType.TRANSFORM, 'transform')) {
        if (t.length < 8) throw new V1DecodeError('transform shorter than its header', NotifyType.BAD_PROPOSAL_SYNTAX);
        transforms.push({ number: t[4] as number, id: t[5] as number, attributes: attributes(t.subarray(8)) });
      }
      if (transforms.length !== count)
        throw new V1DecodeError(
          `proposal announces ${count} transforms and carries ${transforms.length}`,
          NotifyType.BAD_PROPOSAL_SYNTAX,
        );
      proposals.push({ number: p[4] as number, protocol: p[5] as number, spi: p.subarray(8, 8 + spiSize), transforms });
    }
  return { type: PayloadType.SA, doi, situation, proposals };
}

/** One payload of an IKEv1 type from its body; undefined for a type IKEv1 does not know. */
export function decodeV1Payload(type: number, body: Buffer): V1Payload | undefined {
  const need = (n: number, what: string) => {
    if (body.length < n) throw new V1DecodeError(`${what} payload of ${body.length} octets is too short`);
  };
  switch (type) {
    case PayloadType.SA:
      return saPayload(body);
    case PayloadType.KE:
    case PayloadType.HASH:
    case PayloadType.SIG:
    case PayloadType.NONCE:
    case PayloadType.VID:
    case PayloadType.NAT_D:
    case PayloadType.NAT_D_DRAFT:
      if (type === PayloadType.NONCE && (body.length < 8 || body.length > 256))
        throw new V1DecodeError(`nonce of ${body.length} octets (8–256 allowed)`);
      return { type, data: body } as V1Payload;
    case PayloadType.ID:
      need(4, 'ID');
      return {
        type,
        idType: body[0] as number,
        protocol: body[1] as number,
        port: body.readUInt16BE(2),
        data: body.subarray(4),
      };
    case PayloadType.CERT:
    case PayloadType.CR:
      need(1, type === PayloadType.CERT ? 'certificate' : 'certificate request');
      return { type, encoding: body[0] as number, data: body.subarray(1) };
    case PayloadType.N: {
      need(8, 'notification');
      const spiSize = body[5] as number;
      if (8 + spiSize > body.length) throw new V1DecodeError('notification SPI overruns the payload');
      return {
        type,
        doi: body.readUInt32BE(0),
        protocol: body[4] as number,
        spi: body.subarray(8, 8 + spiSize),
        notify: body.readUInt16BE(6),
        data: body.subarray(8 + spiSize),
      };
    }
    case PayloadType.D: {
      need(8, 'delete');
      const spiSize = body[5] as number;
      const n = body.readUInt16BE(6);
      if (spiSize === 0 || body.length !== 8 + spiSize * n)
        throw new V1DecodeError(`delete payload of ${body.length} octets for ${n} SPIs of ${spiSize} octets`);
      const spis: Buffer[] = [];
      for (let i = 0; i < n; i++) spis.push(body.subarray(8 + i * spiSize, 8 + (i + 1) * spiSize));
      return { type, doi: body.readUInt32BE(0), protocol: body[4] as number, spiSize, spis };
    }
    case PayloadType.NAT_OA:
    case PayloadType.NAT_OA_DRAFT: {
      need(4, 'NAT-OA');
      const idType = body[0] as number;
      const len = idType === 1 ? 4 : idType === 5 ? 16 : -1;
      if (body.length !== 4 + len)
        throw new V1DecodeError(`NAT-OA of ID type ${idType} with ${body.length - 4} address octets`);
      return { type, idType, address: body.subarray(4) };
    }
    case PayloadType.FRAGMENT: {
      need(4, 'fragment');
      return {
        type,
        id: body.readUInt16BE(0),
        number: body[2] as number,
        last: ((body[3] as number) & 1) === 1,
        data: body.subarray(4),
      };
    }
    default:
      return undefined;
  }
}

/**
 * Decodes a payload chain starting with `first`. Octets after the last payload are CBC padding
 * (RFC 2409 Appendix B) and are ignored; an unknown payload type is refused (RFC 2408 §5.1:
 * INVALID-PAYLOAD-TYPE), since IKEv1 has no critical bit to skip by.
 */
export function decodeV1Payloads(first: number, body: Buffer): V1Payload[] {
  return walkPayloads(first, body, (type, payloadBody) => {
    const p = decodeV1Payload(type, payloadBody);
    if (!p) throw new V1DecodeError(`payload type ${type} is not known`, NotifyType.INVALID_PAYLOAD_TYPE);
    return p;
  }).payloads;
}

/**
 * Walks an ISAKMP payload chain from `first`, each payload's body decoded by `decode` and its wire
 * octets (generic header included) kept as `raw`; at most 64 payloads. Returns the payloads and the
 * offset after the last one (what follows is padding or the caller's to refuse).
 */
export function walkPayloads<P extends { raw?: Buffer }>(
  first: number,
  body: Buffer,
  decode: (type: number, payloadBody: Buffer) => P,
): { payloads: P[]; end: number } {
  const payloads: P[] = [];
  let next = first;
  let o = 0;
  while (next !== PayloadType.NONE) {
    if (o + 4 > body.length) throw new V1DecodeError('truncated payload header');
    const type = next;
    next = body[o] as number;
    const len = body.readUInt16BE(o + 2);
    if (len < 4 || o + len > body.length) throw new V1DecodeError(`payload length ${len} overruns the message`);
    const raw = body.subarray(o, o + len);
    const p = decode(type, raw.subarray(4));
    p.raw = raw;
    payloads.push(p);
    o += len;
    if (payloads.length > 64) throw new V1DecodeError('more than 64 payloads in one message');
  }
  return { payloads, end: o };
}

// ---- encoding ----------------------------------------------------------------------------------

function encodeAttributes(attrs: readonly Attribute[]): Buffer {
  const parts: Buffer[] = [];
  for (const a of attrs) {
    if (typeof a.value === 'number' && a.value <= 0xffff) {
      const b = Buffer.alloc(4);
      b.writeUInt16BE(0x8000 | a.type, 0);
      b.writeUInt16BE(a.value, 2);
      parts.push(b);
    } else {
      let v: Buffer;
      if (typeof a.value === 'number') {
        v = Buffer.alloc(4);
        v.writeUInt32BE(a.value, 0);
      } else v = a.value;
      const b = Buffer.alloc(4);
      b.writeUInt16BE(a.type, 0);
      b.writeUInt16BE(v.length, 2);
      parts.push(b, v);
    }
  }
  return Buffer.concat(parts);
}

const generic = (next: number, body: Buffer): Buffer => {
  if (body.length + 4 > 0xffff) throw new V1DecodeError('payload too long to encode');
  const h = Buffer.alloc(4);
  h[0] = next;
  h.writeUInt16BE(body.length + 4, 2);
  return Buffer.concat([h, body]);
};

/** The SA payload's body (DOI, situation, proposals): what HASH_I covers as SAi_b. */
export function saBody(doi: number, situation: number, proposals: readonly V1Proposal[]): Buffer {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(doi, 0);
  head.writeUInt32BE(situation, 4);
  const ps = proposals.map((p, i) => {
    const ts = p.transforms.map((t, j) => {
      const th = Buffer.alloc(4);
      th[0] = t.number;
      th[1] = t.id;
      return generic(
        j === p.transforms.length - 1 ? 0 : PayloadType.TRANSFORM,
        Buffer.concat([th, encodeAttributes(t.attributes)]),
      );
    });
    const ph = Buffer.alloc(4);
    ph[0] = p.number;
    ph[1] = p.protocol;
    ph[2] = p.spi.length;
    ph[3] = p.transforms.length;
    return generic(i === proposals.length - 1 ? 0 : PayloadType.PROPOSAL, Buffer.concat([ph, p.spi, ...ts]));
  });
  return Buffer.concat([head, ...ps]);
}

/** A payload's body (without the generic header). */
export function payloadBody(p: V1Payload): Buffer {
  switch (p.type) {
    case PayloadType.SA:
      return saBody(p.doi, p.situation, p.proposals);
    case PayloadType.ID: {
      const h = Buffer.alloc(4);
      h[0] = p.idType;
      h[1] = p.protocol;
      h.writeUInt16BE(p.port, 2);
      return Buffer.concat([h, p.data]);
    }
    case PayloadType.CERT:
    case PayloadType.CR:
      return Buffer.concat([Buffer.from([p.encoding]), p.data]);
    case PayloadType.N: {
      const h = Buffer.alloc(8);
      h.writeUInt32BE(p.doi, 0);
      h[4] = p.protocol;
      h[5] = p.spi.length;
      h.writeUInt16BE(p.notify, 6);
      return Buffer.concat([h, p.spi, p.data]);
    }
    case PayloadType.D: {
      const h = Buffer.alloc(8);
      h.writeUInt32BE(p.doi, 0);
      h[4] = p.protocol;
      h[5] = p.spiSize;
      h.writeUInt16BE(p.spis.length, 6);
      return Buffer.concat([h, ...p.spis]);
    }
    case PayloadType.NAT_OA:
    case PayloadType.NAT_OA_DRAFT: {
      const h = Buffer.alloc(4);
      h[0] = p.idType;
      return Buffer.concat([h, p.address]);
    }
    case PayloadType.FRAGMENT: {
      const h = Buffer.alloc(4);
      h.writeUInt16BE(p.id, 0);
      h[2] = p.number;
      h[3] = p.last ? 1 : 0;
      return Buffer.concat([h, p.data]);
    }
    default:
      return p.data;
  }
}

/** Encodes a payload chain (generic headers with next-payload and lengths); sets each payload's `raw`. */
export function encodeV1Payloads(payloads: readonly V1Payload[]): Buffer {
  const parts = payloads.map((p, i) => {
    const raw = generic(payloads[i + 1]?.type ?? PayloadType.NONE, payloadBody(p));
    p.raw = raw;
    return raw;
  });
  return Buffer.concat(parts);
}

export interface HeaderFields {
  cookieI: Buffer;
  cookieR: Buffer;
  exchange: number;
  flags: number;
  messageId: number;
}

/** The 28-octet header for a body of `bodyLength` octets whose first payload is `next`. */
export function encodeV1Header(h: HeaderFields, next: number, bodyLength: number): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  h.cookieI.copy(b, 0);
  h.cookieR.copy(b, 8);
  b[16] = next;
  b[17] = ISAKMP_VERSION;
  b[18] = h.exchange;
  b[19] = h.flags;
  b.writeUInt32BE(h.messageId >>> 0, 20);
  b.writeUInt32BE(HEADER_SIZE + bodyLength, 24);
  return b;
}

/** An unencrypted message. */
export function encodeV1(h: HeaderFields, payloads: readonly V1Payload[]): Buffer {
  const body = encodeV1Payloads(payloads);
  return Buffer.concat([encodeV1Header(h, payloads[0]?.type ?? PayloadType.NONE, body.length), body]);
}

/** Finds the first payload of a type, in any ISAKMP payload union (IKEv1's, AuthIP's). */
export function findPayloadOf<P extends { type: number }, T extends P['type']>(
  payloads: readonly P[],
  type: T,
): Extract<P, { type: T }> | undefined {
  return payloads.find((p) => p.type === type) as Extract<P, { type: T }> | undefined;
}

/** Every payload of a type, in order. */
export function findAllPayloadsOf<P extends { type: number }, T extends P['type']>(
  payloads: readonly P[],
  type: T,
): Extract<P, { type: T }>[] {
  return payloads.filter((p) => p.type === type) as Extract<P, { type: T }>[];
}

export const findV1 = <T extends V1Payload['type']>(payloads: readonly V1Payload[], type: T) =>
  findPayloadOf(payloads, type);
export const findAllV1 = <T extends V1Payload['type']>(payloads: readonly V1Payload[], type: T) =>
  findAllPayloadsOf(payloads, type);
