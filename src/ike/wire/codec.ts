/**
 * IKEv2 message codec (RFC 7296 §3, RFC 7383 for SKF). Decoding checks every length against its
 * container and raises IkeDecodeError carrying the notify the RFC asks for (INVALID_SYNTAX,
 * UNSUPPORTED_CRITICAL_PAYLOAD, INVALID_MAJOR_VERSION); nothing else escapes. Encoding computes
 * every length and next-payload field. Encrypted payloads (SK, SKF) stay opaque here: the crypto
 * layer opens them and decodes their inner chain with decodePayloadChain.
 */
import { ConsecError } from '../../errors.ts';
import type { TrafficSelector } from '../../sa/spec.ts';
import {
  ATTR_KEY_LENGTH,
  Flags,
  HEADER_LENGTH,
  IKE_VERSION,
  NotifyType,
  PayloadType,
  type TransformType,
} from './constants.ts';

export class IkeDecodeError extends ConsecError {
  constructor(
    message: string,
    /** The notify to answer with, when the RFC says to answer at all. */
    readonly notify: NotifyType = NotifyType.INVALID_SYNTAX,
    /** For UNSUPPORTED_CRITICAL_PAYLOAD: the payload type. */
    readonly notifyData?: Buffer,
  ) {
    super('ERR_IKE_DECODE', message);
  }
}

export interface IkeHeader {
  spiI: Buffer;
  spiR: Buffer;
  nextPayload: number;
  exchange: number;
  flags: number;
  messageId: number;
  length: number;
}

export interface Transform {
  type: TransformType;
  id: number;
  keyLength?: number;
}

export interface Proposal {
  number: number;
  protocol: number;
  spi: Buffer;
  transforms: Transform[];
}

/** A traffic selector (RFC 7296 §3.13.1): the neutral type every keying module and data plane share. */
export type { TrafficSelector } from '../../sa/spec.ts';

/** Encrypted payload: `innerType` is the type of the first payload inside. */
export interface SkPayload {
  type: PayloadType.SK;
  critical?: boolean;
  innerType: number;
  body: Buffer;
  /** Offset of the payload's generic header in the message (the AAD ends 4 bytes after it). */
  offset: number;
}

export interface SkfPayload {
  type: PayloadType.SKF;
  critical?: boolean;
  innerType: number;
  fragment: number;
  total: number;
  body: Buffer;
  offset: number;
}

export type KnownPayload =
  | { type: PayloadType.SA; critical?: boolean; proposals: Proposal[] }
  | { type: PayloadType.KE; critical?: boolean; group: number; data: Buffer }
  | { type: PayloadType.IDi | PayloadType.IDr; critical?: boolean; idType: number; data: Buffer }
  | { type: PayloadType.CERT | PayloadType.CERTREQ; critical?: boolean; encoding: number; data: Buffer }
  | { type: PayloadType.AUTH; critical?: boolean; method: number; data: Buffer }
  | { type: PayloadType.NONCE; critical?: boolean; data: Buffer }
  | { type: PayloadType.NOTIFY; critical?: boolean; protocol: number; spi: Buffer; notify: number; data: Buffer }
  | { type: PayloadType.DELETE; critical?: boolean; protocol: number; spiSize: number; spis: Buffer[] }
  | { type: PayloadType.VENDOR_ID; critical?: boolean; data: Buffer }
  | { type: PayloadType.TSi | PayloadType.TSr; critical?: boolean; selectors: TrafficSelector[] }
  | { type: PayloadType.CP; critical?: boolean; cfgType: number; attributes: { type: number; value: Buffer }[] }
  | { type: PayloadType.EAP; critical?: boolean; data: Buffer }
  | SkPayload
  | SkfPayload;

/** A non-critical payload of a type we do not know, kept so it can be logged. */
export interface UnknownPayload {
  type: number & {};
  critical?: boolean;
  unknown: true;
  data: Buffer;
}

export type Payload = KnownPayload | UnknownPayload;

export interface IkeMessage {
  header: IkeHeader;
  payloads: Payload[];
  /** The whole message as received (the SK integrity check and AUTH cover raw bytes). */
  raw: Buffer;
}

const fail = (message: string, notify = NotifyType.INVALID_SYNTAX): never => {
  throw new IkeDecodeError(message, notify);
};

export function decodeHeader(buf: Buffer): IkeHeader {
  if (buf.length < HEADER_LENGTH) fail(`message of ${buf.length} bytes is shorter than the IKE header`);
  const version = buf[17] as number;
  if (version >> 4 !== 2) fail(`IKE major version ${version >> 4} is not 2`, NotifyType.INVALID_MAJOR_VERSION);
  const length = buf.readUInt32BE(24);
  if (length !== buf.length) fail(`header length ${length} does not match the datagram length ${buf.length}`);
  return {
    spiI: buf.subarray(0, 8),
    spiR: buf.subarray(8, 16),
    nextPayload: buf[16] as number,
    exchange: buf[18] as number,
    flags: buf[19] as number,
    messageId: buf.readUInt32BE(20),
    length,
  };
}

/** Decodes a whole IKE message (without a non-ESP marker). */
export function decodeMessage(buf: Buffer): IkeMessage {
  const header = decodeHeader(buf);
  const payloads = decodePayloadChain(buf, HEADER_LENGTH, buf.length, header.nextPayload);
  return { header, payloads, raw: buf };
}

/** Decodes a chain of payloads in buf[start, end) whose first type is `first`. */
export function decodePayloadChain(buf: Buffer, start: number, end: number, first: number): Payload[] {
  const out: Payload[] = [];
  let type = first;
  let off = start;
  while (type !== PayloadType.NONE) {
    if (off + 4 > end) fail(`payload header of type ${type} runs past the end of the message`);
    const next = buf[off] as number;
    const critical = ((buf[off + 1] as number) & 0x80) !== 0;
    const length = buf.readUInt16BE(off + 2);
    if (length < 4 || off + length > end) fail(`payload of type ${type} has length ${length}, outside its message`);
    const body = buf.subarray(off + 4, off + length);
    if (type === PayloadType.SK || type === PayloadType.SKF) {
      // The encrypted payload must be the last one; its next-payload field names the inner first payload.
      if (off + length !== end) fail('the encrypted payload is not the last payload');
      if (type === PayloadType.SKF) {
        if (body.length < 4) fail('SKF payload shorter than its fragment header');
        const fragment = body.readUInt16BE(0);
        const total = body.readUInt16BE(2);
        if (fragment === 0 || total === 0 || fragment > total) fail(`bad fragment number ${fragment} of ${total}`);
        out.push({ type, critical, innerType: next, fragment, total, body: body.subarray(4), offset: off });
      } else {
        out.push({ type, critical, innerType: next, body, offset: off });
      }
      return out;
    }
    out.push(decodePayload(type, critical, body));
    type = next;
    off += length;
  }
  if (off !== end) fail(`${end - off} bytes follow the last payload`);
  return out;
}

function decodePayload(type: number, critical: boolean, b: Buffer): Payload {
  switch (type) {
    case PayloadType.SA:
      return { type, critical, proposals: decodeProposals(b) };
    case PayloadType.KE:
      if (b.length < 4) fail('KE payload too short');
      return { type, critical, group: b.readUInt16BE(0), data: b.subarray(4) };
    case PayloadType.IDi:
    case PayloadType.IDr:
      if (b.length < 4) fail('ID payload too short');
      return { type, critical, idType: b[0] as number, data: b.subarray(4) };
    case PayloadType.CERT:
    case PayloadType.CERTREQ:
      if (b.length < 1) fail('CERT payload too short');
      return { type, critical, encoding: b[0] as number, data: b.subarray(1) };
    case PayloadType.AUTH:
      if (b.length < 4) fail('AUTH payload too short');
      return { type, critical, method: b[0] as number, data: b.subarray(4) };
    case PayloadType.NONCE:
      if (b.length < 16 || b.length > 256) fail(`nonce of ${b.length} bytes (16-256 allowed)`);
      return { type, critical, data: b };
    case PayloadType.NOTIFY: {
      if (b.length < 4) fail('Notify payload too short');
      const spiSize = b[1] as number;
      if (4 + spiSize > b.length) fail('Notify SPI runs past the payload');
      return {
        type,
        critical,
        protocol: b[0] as number,
        spi: b.subarray(4, 4 + spiSize),
        notify: b.readUInt16BE(2),
        data: b.subarray(4 + spiSize),
      };
    }
    case PayloadType.DELETE: {
      if (b.length < 4) fail('Delete payload too short');
      const protocol = b[0] as number;
      const spiSize = b[1] as number;
      const count = b.readUInt16BE(2);
      if (protocol === 1 ? spiSize !== 0 || count !== 0 : spiSize !== 4)
        fail(`Delete payload with SPI size ${spiSize} for protocol ${protocol}`);
      if (4 + spiSize * count !== b.length) fail('Delete payload SPI count does not match its length');
      const spis: Buffer[] = [];
      for (let i = 0; i < count; i++) spis.push(b.subarray(4 + i * spiSize, 4 + (i + 1) * spiSize));
      return { type, critical, protocol, spiSize, spis };
    }
    case PayloadType.VENDOR_ID:
      return { type, critical, data: b };
    case PayloadType.EAP:
      return { type, critical, data: b };
    case PayloadType.TSi:
    case PayloadType.TSr:
      return { type, critical, selectors: decodeSelectors(b) };
    case PayloadType.CP: {
      if (b.length < 4) fail('CP payload too short');
      const attributes: { type: number; value: Buffer }[] = [];
      let off = 4;
      while (off < b.length) {
        if (off + 4 > b.length) fail('CP attribute header runs past the payload');
        const t = b.readUInt16BE(off) & 0x7fff;
        const len = b.readUInt16BE(off + 2);
        if (off + 4 + len > b.length) fail('CP attribute runs past the payload');
        attributes.push({ type: t, value: b.subarray(off + 4, off + 4 + len) });
        off += 4 + len;
      }
      return { type, critical, cfgType: b[0] as number, attributes };
    }
    default:
      if (critical) {
        const data = Buffer.from([type]);
        throw new IkeDecodeError(
          `unsupported critical payload type ${type}`,
          NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
          data,
        );
      }
      return { type: type as number & {}, critical, unknown: true, data: b };
  }
}

function decodeProposals(b: Buffer): Proposal[] {
  const out: Proposal[] = [];
  let off = 0;
  for (;;) {
    if (off + 8 > b.length) fail('proposal header runs past the SA payload');
    const last = b[off] as number;
    const length = b.readUInt16BE(off + 2);
    if ((last !== 0 && last !== 2) || length < 8 || off + length > b.length) fail('malformed proposal header');
    const number = b[off + 4] as number;
    const protocol = b[off + 5] as number;
    const spiSize = b[off + 6] as number;
    const count = b[off + 7] as number;
    if (8 + spiSize > length) fail('proposal SPI runs past the proposal');
    const spi = b.subarray(off + 8, off + 8 + spiSize);
    const transforms: Transform[] = [];
    let t = off + 8 + spiSize;
    const end = off + length;
    for (let i = 0; i < count; i++) {
      if (t + 8 > end) fail('transform header runs past the proposal');
      const tLast = b[t] as number;
      const tLen = b.readUInt16BE(t + 2);
      if ((tLast !== 0 && tLast !== 3) || tLen < 8 || t + tLen > end) fail('malformed transform header');
      if ((tLast === 0) !== (i === count - 1)) fail('transform "last" marker does not match the transform count');
      const tr: Transform = { type: b[t + 4] as number, id: b.readUInt16BE(t + 6) };
      let a = t + 8;
      while (a < t + tLen) {
        if (a + 4 > t + tLen) fail('transform attribute runs past the transform');
        const af = b.readUInt16BE(a);
        if (af & 0x8000) {
          if ((af & 0x7fff) === ATTR_KEY_LENGTH) tr.keyLength = b.readUInt16BE(a + 2);
          a += 4;
        } else {
          const alen = b.readUInt16BE(a + 2);
          if (a + 4 + alen > t + tLen) fail('transform attribute runs past the transform');
          a += 4 + alen;
        }
      }
      transforms.push(tr);
      t += tLen;
    }
    if (t !== end) fail('bytes after the last transform of a proposal');
    out.push({ number, protocol, spi, transforms });
    off = end;
    if (last === 0) break;
  }
  if (off !== b.length) fail('bytes after the last proposal');
  return out;
}

function decodeSelectors(b: Buffer): TrafficSelector[] {
  if (b.length < 4) fail('TS payload too short');
  const count = b[0] as number;
  const out: TrafficSelector[] = [];
  let off = 4;
  for (let i = 0; i < count; i++) {
    if (off + 8 > b.length) fail('traffic selector runs past the payload');
    const type = b[off] as number;
    const length = b.readUInt16BE(off + 2);
    const addrLen = type === 7 ? 4 : type === 8 ? 16 : -1;
    if (addrLen < 0) fail(`traffic selector type ${type} is not supported`);
    if (length !== 8 + 2 * addrLen || off + length > b.length) fail('traffic selector length does not match its type');
    out.push({
      type,
      ipProtocol: b[off + 1] as number,
      startPort: b.readUInt16BE(off + 4),
      endPort: b.readUInt16BE(off + 6),
      start: b.subarray(off + 8, off + 8 + addrLen),
      end: b.subarray(off + 8 + addrLen, off + 8 + 2 * addrLen),
    });
    off += length;
  }
  if (off !== b.length) fail('TS payload selector count does not match its length');
  return out;
}

// ---- encoding ---------------------------------------------------------------------------------

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

function encodeProposals(proposals: Proposal[]): Buffer {
  return Buffer.concat(
    proposals.map((p, pi) => {
      const transforms = p.transforms.map((t, ti) => {
        const attrs =
          t.keyLength === undefined
            ? Buffer.alloc(0)
            : Buffer.concat([u16(0x8000 | ATTR_KEY_LENGTH), u16(t.keyLength)]);
        const h = Buffer.alloc(8);
        h[0] = ti === p.transforms.length - 1 ? 0 : 3;
        h.writeUInt16BE(8 + attrs.length, 2);
        h[4] = t.type;
        h.writeUInt16BE(t.id, 6);
        return Buffer.concat([h, attrs]);
      });
      const body = Buffer.concat([p.spi, ...transforms]);
      const h = Buffer.alloc(8);
      h[0] = pi === proposals.length - 1 ? 0 : 2;
      h.writeUInt16BE(8 + body.length, 2);
      h[4] = p.number;
      h[5] = p.protocol;
      h[6] = p.spi.length;
      h[7] = p.transforms.length;
      return Buffer.concat([h, body]);
    }),
  );
}

function encodeBody(p: Payload): Buffer {
  if ('unknown' in p) return p.data;
  switch (p.type) {
    case PayloadType.SA:
      return encodeProposals(p.proposals);
    case PayloadType.KE:
      return Buffer.concat([u16(p.group), Buffer.alloc(2), p.data]);
    case PayloadType.IDi:
    case PayloadType.IDr:
      return Buffer.concat([Buffer.from([p.idType, 0, 0, 0]), p.data]);
    case PayloadType.CERT:
    case PayloadType.CERTREQ:
      return Buffer.concat([Buffer.from([p.encoding]), p.data]);
    case PayloadType.AUTH:
      return Buffer.concat([Buffer.from([p.method, 0, 0, 0]), p.data]);
    case PayloadType.NONCE:
    case PayloadType.VENDOR_ID:
    case PayloadType.EAP:
      return p.data;
    case PayloadType.NOTIFY:
      return Buffer.concat([Buffer.from([p.protocol, p.spi.length]), u16(p.notify), p.spi, p.data]);
    case PayloadType.DELETE:
      return Buffer.concat([Buffer.from([p.protocol, p.spiSize]), u16(p.spis.length), ...p.spis]);
    case PayloadType.TSi:
    case PayloadType.TSr:
      return Buffer.concat([
        Buffer.from([p.selectors.length, 0, 0, 0]),
        ...p.selectors.map((s) => {
          const h = Buffer.alloc(8);
          h[0] = s.type;
          h[1] = s.ipProtocol;
          h.writeUInt16BE(8 + s.start.length + s.end.length, 2);
          h.writeUInt16BE(s.startPort, 4);
          h.writeUInt16BE(s.endPort, 6);
          return Buffer.concat([h, s.start, s.end]);
        }),
      ]);
    case PayloadType.CP:
      return Buffer.concat([
        Buffer.from([p.cfgType, 0, 0, 0]),
        ...p.attributes.map((a) => Buffer.concat([u16(a.type & 0x7fff), u16(a.value.length), a.value])),
      ]);
    case PayloadType.SK:
      return p.body;
    case PayloadType.SKF:
      return Buffer.concat([u16(p.fragment), u16(p.total), p.body]);
  }
  throw new IkeDecodeError('cannot encode this payload');
}

/** Encodes a payload chain; returns the first payload's type and the bytes. */
export function encodePayloadChain(payloads: readonly Payload[]): { firstType: number; bytes: Buffer } {
  const parts: Buffer[] = [];
  payloads.forEach((p, i) => {
    const body = encodeBody(p);
    const next = payloads[i + 1];
    const h = Buffer.alloc(4);
    h[0] = next === undefined ? PayloadType.NONE : next.type;
    if (p.type === PayloadType.SK || p.type === PayloadType.SKF) h[0] = (p as { innerType: number }).innerType;
    h[1] = p.critical ? 0x80 : 0;
    if (4 + body.length > 0xffff) throw new IkeDecodeError(`payload of type ${p.type} exceeds 65535 bytes`);
    h.writeUInt16BE(4 + body.length, 2);
    parts.push(h, body);
  });
  return { firstType: payloads[0]?.type ?? PayloadType.NONE, bytes: Buffer.concat(parts) };
}

export function encodeHeader(h: Omit<IkeHeader, 'length'>, length: number): Buffer {
  const b = Buffer.alloc(HEADER_LENGTH);
  h.spiI.copy(b, 0);
  h.spiR.copy(b, 8);
  b[16] = h.nextPayload;
  b[17] = IKE_VERSION;
  b[18] = h.exchange;
  b[19] = h.flags;
  b.writeUInt32BE(h.messageId >>> 0, 20);
  b.writeUInt32BE(length, 24);
  return b;
}

/** Encodes a message whose payloads are all in clear (IKE_SA_INIT, or SK already built). */
export function encodeMessage(h: Omit<IkeHeader, 'length' | 'nextPayload'>, payloads: readonly Payload[]): Buffer {
  const { firstType, bytes } = encodePayloadChain(payloads);
  return Buffer.concat([encodeHeader({ ...h, nextPayload: firstType }, HEADER_LENGTH + bytes.length), bytes]);
}

export const isResponse = (h: IkeHeader): boolean => (h.flags & Flags.RESPONSE) !== 0;
export const isFromInitiator = (h: IkeHeader): boolean => (h.flags & Flags.INITIATOR) !== 0;
