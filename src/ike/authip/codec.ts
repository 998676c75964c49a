/**
 * AuthIP message codec ([MS-AIPS] §2.2): the ISAKMP header with AuthIP's exchange types, the Crypto
 * payload every message starts with, and AuthIP's own payloads (GSS-API token, GSS_ID, Auth,
 * key dictation, the AuthIP form of Notify); SA, KE, ID, HASH, Nonce, VID and NAT-D/NAT-OA are
 * RFC 2408's and decoded by the IKEv1 codec. Pure and strict: every length is checked against
 * its container and a malformed message raises V1DecodeError, nothing else.
 *
 * A message with the E flag carries, after the Crypto payload, ciphertext and an integrity
 * checksum (§2.2.3.2.1); `decodeAuthIp` returns them as `sealed` and crypto.ts opens them.
 */
import { HEADER_SIZE, NotifyType, PayloadType } from '../v1/constants.ts';
import {
  type V1Payload,
  V1DecodeError,
  decodeV1Payload,
  findAllPayloadsOf,
  findPayloadOf,
  payloadBody,
  walkPayloads,
} from '../v1/codec.ts';
import { type AuthIpExchange, AuthIpPayloadType, isAuthIpExchange } from './constants.ts';

export interface AuthIpHeader {
  cookieI: Buffer;
  cookieR: Buffer;
  nextPayload: number;
  version: number;
  exchange: AuthIpExchange;
  /** Only the E flag (§2.2.1). */
  encrypted: boolean;
  messageId: number;
  length: number;
}

export interface AuthMethodEntry {
  method: number;
  flags: number;
}

/** The payloads an AuthIP message carries (the Crypto payload is in the message, not here). */
export type AuthIpPayload = (
  | Extract<
      V1Payload,
      {
        type:
          | PayloadType.SA
          | PayloadType.KE
          | PayloadType.ID
          | PayloadType.HASH
          | PayloadType.NONCE
          | PayloadType.VID
          | PayloadType.NAT_D
          | PayloadType.NAT_OA;
      }
    >
  | { type: AuthIpPayloadType.GSS; status: number; flags: number; token: Buffer }
  | { type: AuthIpPayloadType.GSS_ID; spn: string }
  | { type: AuthIpPayloadType.AUTH; methods: AuthMethodEntry[] }
  | { type: AuthIpPayloadType.KEY_DICTATION | AuthIpPayloadType.KEY_DICTATION_WEIGHT; data: Buffer }
  | {
      type: PayloadType.N;
      doi: number;
      /** 1: Main/Extended Mode, 2: Quick Mode (§2.2.3.5). */
      protocol: number;
      flags: number;
      notify: number;
      data: Buffer;
    }
) & { raw?: Buffer };

export interface CryptoPayload {
  seq: number;
  /** Present in cleartext messages once the responder has keys (<8>), always when encrypted. */
  iv?: Buffer;
}

export interface AuthIpMessage {
  header: AuthIpHeader;
  /** Undefined only for NOTIFY_DOS_COOKIE, the one message without a Crypto payload (§2.2.3.2). */
  crypto?: CryptoPayload;
  /** The cleartext payloads (empty when encrypted: open `sealed` first). */
  payloads: AuthIpPayload[];
  /** E flag: the octets after the Crypto payload (ciphertext, then the checksum). */
  sealed?: Buffer;
  /** Offset of the first octet after the Crypto payload. */
  bodyOffset: number;
  raw: Buffer;
}

/** Longest SPN accepted in a GSS_ID payload, in octets. */
const MAX_SPN_OCTETS = 1024;

/** Reads the header of a datagram that may be AuthIP: undefined when the exchange type is not AuthIP's. */
export function authIpHeader(raw: Buffer): AuthIpHeader | undefined {
  if (raw.length < HEADER_SIZE || !isAuthIpExchange(raw[18] as number)) return undefined;
  const version = raw[17] as number;
  // Major 1; a minor above 0 MUST be accepted (§2.2.1).
  if (version >> 4 !== 1)
    throw new V1DecodeError(`ISAKMP major version ${version >> 4}`, NotifyType.INVALID_MAJOR_VERSION);
  const length = raw.readUInt32BE(24);
  if (length !== raw.length)
    throw new V1DecodeError(
      `header length ${length} but the datagram has ${raw.length} octets`,
      NotifyType.UNEQUAL_PAYLOAD_LENGTHS,
    );
  const flags = raw[19] as number;
  if (flags & ~0x01) throw new V1DecodeError(`AuthIP flags 0x${flags.toString(16)}`, NotifyType.INVALID_FLAGS);
  return {
    cookieI: raw.subarray(0, 8),
    cookieR: raw.subarray(8, 16),
    nextPayload: raw[16] as number,
    version,
    exchange: raw[18] as AuthIpExchange,
    encrypted: (flags & 1) === 1,
    messageId: raw.readUInt32BE(20),
    length,
  };
}

/** Decodes an AuthIP datagram; the body of an encrypted one stays sealed. */
export function decodeAuthIp(raw: Buffer): AuthIpMessage {
  const header = authIpHeader(raw);
  if (!header) throw new V1DecodeError('not an AuthIP exchange type', NotifyType.INVALID_EXCHANGE_TYPE);
  const body = raw.subarray(HEADER_SIZE);
  if (header.nextPayload === PayloadType.N && !header.encrypted) {
    // NOTIFY_DOS_COOKIE: the one message that does not start with a Crypto payload (§2.2.3.2).
    const payloads = decodeAuthIpPayloads(PayloadType.N, body);
    return { header, payloads, bodyOffset: HEADER_SIZE, raw };
  }
  if (header.nextPayload !== AuthIpPayloadType.CRYPTO)
    throw new V1DecodeError(`AuthIP message starts with payload ${header.nextPayload}, not Crypto`);
  if (body.length < 8) throw new V1DecodeError('truncated Crypto payload');
  const next = body[0] as number;
  const len = body.readUInt16BE(2);
  if (len < 8 || len > body.length) throw new V1DecodeError(`Crypto payload length ${len}`);
  const crypto: CryptoPayload = { seq: body.readUInt32BE(4) };
  if (len > 8) crypto.iv = body.subarray(8, len);
  const bodyOffset = HEADER_SIZE + len;
  if (header.encrypted) {
    // §2.2.3.2.1: next payload 0, an IV of one cipher block (8 or 16), then ciphertext and checksum.
    if (next !== 0) throw new V1DecodeError('encrypted Crypto payload names a next payload');
    if (len !== 16 && len !== 24) throw new V1DecodeError(`encrypted Crypto payload of ${len} octets`);
    return { header, crypto, payloads: [], sealed: raw.subarray(bodyOffset), bodyOffset, raw };
  }
  // Cleartext: an IV is optional (8 or 16 octets in all; <8>).
  if (len !== 8 && len !== 16) throw new V1DecodeError(`Crypto payload of ${len} octets`);
  return { header, crypto, payloads: decodeAuthIpPayloads(next, body.subarray(len)), bodyOffset, raw };
}

function authIpPayload(type: number, body: Buffer): AuthIpPayload {
  switch (type) {
    case AuthIpPayloadType.GSS:
      if (body.length < 5) throw new V1DecodeError('GSS-API payload shorter than its status and flags');
      return { type, status: body.readUInt32BE(0), flags: body[4] as number, token: body.subarray(5) };
    case AuthIpPayloadType.GSS_ID:
      if (body.length % 2 !== 0 || body.length > MAX_SPN_OCTETS)
        throw new V1DecodeError(`GSS_ID of ${body.length} octets is not an SPN in UTF-16`);
      return { type, spn: body.toString('utf16le') };
    case AuthIpPayloadType.AUTH: {
      if (body.length === 0 || body.length % 4 !== 0)
        throw new V1DecodeError(`Auth payload of ${body.length} octets is not a list of methods`);
      const methods: AuthMethodEntry[] = [];
      for (let o = 0; o < body.length; o += 4)
        methods.push({ method: body.readUInt16BE(o), flags: body.readUInt16BE(o + 2) });
      return { type, methods };
    }
    case AuthIpPayloadType.KEY_DICTATION:
    case AuthIpPayloadType.KEY_DICTATION_WEIGHT:
      return { type, data: body };
    case PayloadType.N:
      if (body.length < 8) throw new V1DecodeError('AuthIP notify shorter than its header');
      return {
        type,
        doi: body.readUInt32BE(0),
        protocol: body[4] as number,
        flags: body[5] as number,
        notify: body.readUInt16BE(6),
        data: body.subarray(8),
      };
    case PayloadType.SA:
    case PayloadType.KE:
    case PayloadType.ID:
    case PayloadType.HASH:
    case PayloadType.NONCE:
    case PayloadType.VID:
    case PayloadType.NAT_D:
    case PayloadType.NAT_OA:
      return decodeV1Payload(type, body) as AuthIpPayload;
    default:
      // CERT, CR, SIG and Delete are not used by AuthIP (§2.2.3); nothing else is known.
      throw new V1DecodeError(`payload type ${type} in an AuthIP message`, NotifyType.INVALID_PAYLOAD_TYPE);
  }
}

/** Decodes a payload chain; octets after the last payload are refused. */
export function decodeAuthIpPayloads(first: number, body: Buffer): AuthIpPayload[] {
  const { payloads, end } = walkPayloads(first, body, authIpPayload);
  if (end !== body.length) throw new V1DecodeError(`${body.length - end} octets after the last payload`);
  return payloads;
}

// ---- encoding ----------------------------------------------------------------------------------

function bodyOf(p: AuthIpPayload): Buffer {
  switch (p.type) {
    case AuthIpPayloadType.GSS: {
      const h = Buffer.alloc(5);
      h.writeUInt32BE(p.status >>> 0, 0);
      h[4] = p.flags;
      return Buffer.concat([h, p.token]);
    }
    case AuthIpPayloadType.GSS_ID:
      return Buffer.from(p.spn, 'utf16le');
    case AuthIpPayloadType.AUTH: {
      const b = Buffer.alloc(4 * p.methods.length);
      p.methods.forEach((m, i) => {
        b.writeUInt16BE(m.method, 4 * i);
        b.writeUInt16BE(m.flags, 4 * i + 2);
      });
      return b;
    }
    case AuthIpPayloadType.KEY_DICTATION:
    case AuthIpPayloadType.KEY_DICTATION_WEIGHT:
      return p.data;
    case PayloadType.N: {
      const h = Buffer.alloc(8);
      h.writeUInt32BE(p.doi, 0);
      h[4] = p.protocol;
      h[5] = p.flags;
      h.writeUInt16BE(p.notify, 6);
      return Buffer.concat([h, p.data]);
    }
    default:
      return payloadBody(p);
  }
}

/** Encodes a payload chain with generic headers; sets each payload's `raw`. */
export function encodeAuthIpPayloads(payloads: readonly AuthIpPayload[]): Buffer {
  return Buffer.concat(
    payloads.map((p, i) => {
      const body = bodyOf(p);
      if (body.length + 4 > 0xffff) throw new V1DecodeError('payload too long to encode');
      const raw = Buffer.alloc(4 + body.length);
      raw[0] = payloads[i + 1]?.type ?? PayloadType.NONE;
      raw.writeUInt16BE(raw.length, 2);
      body.copy(raw, 4);
      p.raw = raw;
      return raw;
    }),
  );
}

export interface AuthIpHeaderFields {
  cookieI: Buffer;
  cookieR: Buffer;
  exchange: AuthIpExchange;
  messageId: number;
}

/** The 28-octet header (length filled in by the caller's total). */
export function encodeAuthIpHeader(h: AuthIpHeaderFields, next: number, encrypted: boolean, total: number): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  h.cookieI.copy(b, 0);
  h.cookieR.copy(b, 8);
  b[16] = next;
  b[17] = 0x10;
  b[18] = h.exchange;
  b[19] = encrypted ? 1 : 0;
  b.writeUInt32BE(h.messageId >>> 0, 20);
  b.writeUInt32BE(total, 24);
  return b;
}

/** The Crypto payload: generic header, seqNUM, optional IV; `next` names the first payload after it. */
export function encodeCryptoPayload(next: number, seq: number, iv?: Buffer): Buffer {
  const b = Buffer.alloc(8 + (iv?.length ?? 0));
  b[0] = next;
  b.writeUInt16BE(b.length, 2);
  b.writeUInt32BE(seq >>> 0, 4);
  iv?.copy(b, 8);
  return b;
}

/** A cleartext AuthIP message: header, Crypto payload, payloads. */
export function encodeAuthIp(
  h: AuthIpHeaderFields,
  seq: number,
  payloads: readonly AuthIpPayload[],
  iv?: Buffer,
): Buffer {
  const body = encodeAuthIpPayloads(payloads);
  const crypto = encodeCryptoPayload(payloads[0]?.type ?? PayloadType.NONE, seq, iv);
  const total = HEADER_SIZE + crypto.length + body.length;
  return Buffer.concat([encodeAuthIpHeader(h, AuthIpPayloadType.CRYPTO, false, total), crypto, body]);
}

export const findAuthIp = <T extends AuthIpPayload['type']>(payloads: readonly AuthIpPayload[], type: T) =>
  findPayloadOf(payloads, type);
export const findAllAuthIp = <T extends AuthIpPayload['type']>(payloads: readonly AuthIpPayload[], type: T) =>
  findAllPayloadsOf(payloads, type);
