/**
 * AuthIP ([MS-AIPS]) numbers: exchange types, the payload types AuthIP adds to ISAKMP, its
 * authentication methods, notify types and flags. Section numbers are [MS-AIPS]'s.
 */
import { VendorId } from '../v1/constants.ts';

/** Exchange types (§2.2.1): the exchange type is what marks a datagram as AuthIP. */
export enum AuthIpExchange {
  MAIN_MODE = 243,
  QUICK_MODE = 244,
  EXTENDED_MODE = 245,
  NOTIFY = 246,
}

export const isAuthIpExchange = (t: number): t is AuthIpExchange => t >= 243 && t <= 246;

/** Payload types AuthIP adds (§2.2.3); the others are RFC 2408's (SA, KE, ID, HASH, Nonce, N, VID, NAT-D/OA). */
export enum AuthIpPayloadType {
  /** §2.2.3.1: Status, Flags, a raw mechanism token (Kerberos: the RFC 1964 framed AP-REQ / AP-REP). */
  GSS = 0x81,
  /** §2.2.3.2: first payload of every message; seqNUM, IV, and (E flag) the ciphertext after it. */
  CRYPTO = 0x85,
  /** §2.2.3.3: the responder's SPN, UTF-16, no terminator. */
  GSS_ID = 0x86,
  /** §2.2.3.4: the acceptable authentication methods, in order. */
  AUTH = 0x87,
  /** §2.2.3.7 / §2.2.3.8: key dictation (Windows 8 and later), opaque here. */
  KEY_DICTATION = 0x88,
  KEY_DICTATION_WEIGHT = 0x89,
}

/** Authentication methods of the Auth payload (§2.2.3.4); AuthIP has no pre-shared key method. */
export enum AuthIpMethod {
  KERBEROS = 2,
  ANONYMOUS = 3,
  /** Certificates, carried as TLS handshake messages in GSS payloads. */
  TLS = 4,
  NTLM = 5,
}

/** GSS payload flags (§2.2.3.1). */
export const GssFlags = {
  NEW_GSS_EXCHANGE: 0x01,
  IMPERSONATION_ACTIVE: 0x02,
  RETRY_CURRENT_AUTHENTICATION: 0x04,
  EXPLICIT_CREDENTIALS: 0x08,
  RESPONDER_AUTH_COMPLETE: 0x10,
} as const;

/** AuthIP notify types (§2.2.3.5). */
export enum AuthIpNotify {
  EXCHANGE_INFO = 40005,
  NOTIFY_STATUS = 40020,
  NOTIFY_DOS_COOKIE = 40021,
  NOTIFY_ACK = 40022,
  NOTIFY_QM_SYNCHRONIZE = 40023,
  NOTIFY_ACQUIRE = 40024,
}

/** Notify protocol IDs (§2.2.3.5). */
export const NotifyProtocol = { MAIN_OR_EXTENDED: 1, QUICK: 2 } as const;

/** The reliable-notify flag: the peer answers with NOTIFY_ACK (§2.2.3.5). */
export const RELIABLE_NOTIFY_FLAG = 0x01;

/** Windows error codes carried by NOTIFY_STATUS and the GSS payload's Status (§2.2.3.1, <9>). */
export const WindowsStatus = {
  /** ERROR_IPSEC_IKE_AUTH_FAIL */
  AUTH_FAIL: 13801,
  /** ERROR_IPSEC_IKE_TIMED_OUT */
  TIMED_OUT: 13805,
  /** ERROR_IPSEC_IKE_NO_POLICY */
  NO_POLICY: 13825,
  /** ERROR_IPSEC_IKE_POLICY_MATCH */
  POLICY_MATCH: 13868,
  /** ERROR_IPSEC_IKE_SA_DELETED: the sender deleted the SA */
  SA_DELETED: 13813,
  /** SEC_E_LOGON_DENIED: the security package refused the credentials */
  LOGON_DENIED: 0x8009030c,
} as const;

/** Vendor IDs (§6 <3>, <4>, <13>; [MS-IKEE] <6>). */
export const AuthIpVendorId = {
  /** "MS NT5 ISAKMPOAKLEY" (16 octets) followed by a 4-octet version; 9 = Windows 8 / 2012 and later. */
  MS_NT5: Buffer.from('1e2b516905991c7d7c96fcbfb587e461', 'hex'),
  /** "MS-MamieExists": sent in the IKEv1 message 1 of a host that also speaks AuthIP. */
  MAMIE_EXISTS: VendorId.MS_MAMIE_EXISTS,
  /** Kerberos (GSS-API) supported. */
  GSSAPI: Buffer.from('621b04bb09882ac1e15935fefa24aeee', 'hex'),
} as const;

/** MS NT5 ISAKMPOAKLEY versions that fix the Crypto payload's checksum at 12 octets (§2.2.3.2.1). */
export const TRUNCATED_ICV_VERSIONS = new Set([5, 6, 7]);

/** The version consec announces (Windows 8 / Server 2012 behaviour and later). */
export const MS_NT5_VERSION = 9;

export const msNt5Vid = (version: number): Buffer => {
  const v = Buffer.alloc(4);
  v.writeUInt32BE(version);
  return Buffer.concat([AuthIpVendorId.MS_NT5, v]);
};
