/**
 * IKEv1 numbers: ISAKMP (RFC 2408), the IPsec DOI (RFC 2407), IKE (RFC 2409), NAT traversal
 * (RFC 3947 and its draft-02), DPD (RFC 3706), ECDSA (RFC 4754), SHA-2 (RFC 4868), AES (RFC 3602,
 * RFC 4106).
 */

/** ISAKMP version octet: major 1, minor 0 (RFC 2408 §3.1). */
export const ISAKMP_VERSION = 0x10;
export const HEADER_SIZE = 28;
/** The IPsec Domain of Interpretation (RFC 2407 §4.2). */
export const DOI_IPSEC = 1;
/** SIT_IDENTITY_ONLY (RFC 2407 §4.2.1): the only situation IKE uses. */
export const SIT_IDENTITY_ONLY = 1;

export enum PayloadType {
  NONE = 0,
  SA = 1,
  PROPOSAL = 2,
  TRANSFORM = 3,
  KE = 4,
  ID = 5,
  CERT = 6,
  CR = 7,
  HASH = 8,
  SIG = 9,
  NONCE = 10,
  N = 11,
  D = 12,
  VID = 13,
  /** RFC 3947 §3.2 / §5.2. */
  NAT_D = 20,
  NAT_OA = 21,
  /** draft-ietf-ipsec-nat-t-ike-02 private payload numbers. */
  NAT_D_DRAFT = 130,
  NAT_OA_DRAFT = 131,
  /** IKE fragmentation (Cisco's format, used by Windows; MS-IKEE §2.2.3.1). */
  FRAGMENT = 132,
}

export enum ExchangeType {
  BASE = 1,
  /** Main Mode. */
  IDENTITY_PROTECTION = 2,
  AUTHENTICATION_ONLY = 3,
  AGGRESSIVE = 4,
  INFORMATIONAL = 5,
  QUICK_MODE = 32,
  NEW_GROUP = 33,
}

export const Flags = { ENCRYPTION: 1, COMMIT: 2, AUTHENTICATION_ONLY: 4 } as const;

/** Protocol identifiers (RFC 2407 §4.4.1). */
export enum ProtocolId {
  ISAKMP = 1,
  AH = 2,
  ESP = 3,
  IPCOMP = 4,
}

export const KEY_IKE = 1;

/** IPsec AH transform IDs (RFC 2407 §4.4.3, RFC 4868). */
export enum AhTransform {
  MD5 = 2,
  SHA = 3,
  SHA2_256 = 5,
  SHA2_384 = 6,
  SHA2_512 = 7,
}

/** IPsec ESP transform IDs (RFC 2407 §4.4.4, RFC 3602, RFC 4106). */
export enum EspTransform {
  DES = 2,
  TRIPLE_DES = 3,
  NULL = 11,
  AES = 12,
  AES_GCM_8 = 18,
  AES_GCM_12 = 19,
  AES_GCM_16 = 20,
}

/** Phase 1 SA attributes (RFC 2409 Appendix A). */
export enum P1Attr {
  ENCRYPTION = 1,
  HASH = 2,
  AUTH_METHOD = 3,
  GROUP = 4,
  GROUP_TYPE = 5,
  LIFE_TYPE = 11,
  LIFE_DURATION = 12,
  PRF = 13,
  KEY_LENGTH = 14,
}

export enum P1Encryption {
  DES_CBC = 1,
  IDEA_CBC = 2,
  BLOWFISH_CBC = 3,
  RC5_CBC = 4,
  TRIPLE_DES_CBC = 5,
  CAST_CBC = 6,
  AES_CBC = 7,
}

export enum P1Hash {
  MD5 = 1,
  SHA = 2,
  TIGER = 3,
  SHA2_256 = 4,
  SHA2_384 = 5,
  SHA2_512 = 6,
}

/** Phase 1 authentication methods (RFC 2409 App. A, RFC 4754 §3). */
export enum AuthMethod {
  PSK = 1,
  DSS = 2,
  RSA_SIG = 3,
  RSA_ENC = 4,
  RSA_ENC_REV = 5,
  ECDSA_SHA256 = 9,
  ECDSA_SHA384 = 10,
  ECDSA_SHA512 = 11,
}

export const LifeType = { SECONDS: 1, KILOBYTES: 2 } as const;

/** Phase 2 (IPsec DOI) SA attributes (RFC 2407 §4.5). */
export enum P2Attr {
  LIFE_TYPE = 1,
  LIFE_DURATION = 2,
  GROUP = 3,
  ENCAPSULATION = 4,
  AUTH_ALGORITHM = 5,
  KEY_LENGTH = 6,
  KEY_ROUNDS = 7,
  COMPRESS_DICT = 8,
  COMPRESS_ALG = 9,
  ECN_TUNNEL = 10,
}

/** Encapsulation modes (RFC 2407 §4.5, RFC 3947 §5.1, draft-02's private values). */
export enum Encapsulation {
  TUNNEL = 1,
  TRANSPORT = 2,
  UDP_TUNNEL = 3,
  UDP_TRANSPORT = 4,
  UDP_TUNNEL_DRAFT = 61443,
  UDP_TRANSPORT_DRAFT = 61444,
}

/** Phase 2 authentication algorithms (RFC 2407 §4.5, RFC 4868 §2.4). */
export enum P2Auth {
  HMAC_MD5 = 1,
  HMAC_SHA = 2,
  HMAC_SHA2_256 = 5,
  HMAC_SHA2_384 = 6,
  HMAC_SHA2_512 = 7,
}

/** Identification types (RFC 2407 §4.6.2.1). */
export enum IdType {
  IPV4_ADDR = 1,
  FQDN = 2,
  USER_FQDN = 3,
  IPV4_ADDR_SUBNET = 4,
  IPV6_ADDR = 5,
  IPV6_ADDR_SUBNET = 6,
  IPV4_ADDR_RANGE = 7,
  IPV6_ADDR_RANGE = 8,
  DER_ASN1_DN = 9,
  DER_ASN1_GN = 10,
  KEY_ID = 11,
}

/** Certificate encodings (RFC 2408 §3.9). */
export enum CertEncoding {
  PKCS7 = 1,
  X509_SIG = 4,
  CRL = 7,
}

/** Notify message types: errors (RFC 2408 §3.14.1) and IPsec DOI status (RFC 2407 §4.6.3), RFC 3706. */
export enum NotifyType {
  INVALID_PAYLOAD_TYPE = 1,
  DOI_NOT_SUPPORTED = 2,
  SITUATION_NOT_SUPPORTED = 3,
  INVALID_COOKIE = 4,
  INVALID_MAJOR_VERSION = 5,
  INVALID_MINOR_VERSION = 6,
  INVALID_EXCHANGE_TYPE = 7,
  INVALID_FLAGS = 8,
  INVALID_MESSAGE_ID = 9,
  INVALID_PROTOCOL_ID = 10,
  INVALID_SPI = 11,
  INVALID_TRANSFORM_ID = 12,
  ATTRIBUTES_NOT_SUPPORTED = 13,
  NO_PROPOSAL_CHOSEN = 14,
  BAD_PROPOSAL_SYNTAX = 15,
  PAYLOAD_MALFORMED = 16,
  INVALID_KEY_INFORMATION = 17,
  INVALID_ID_INFORMATION = 18,
  INVALID_CERT_ENCODING = 19,
  INVALID_CERTIFICATE = 20,
  CERT_TYPE_UNSUPPORTED = 21,
  INVALID_CERT_AUTHORITY = 22,
  INVALID_HASH_INFORMATION = 23,
  AUTHENTICATION_FAILED = 24,
  INVALID_SIGNATURE = 25,
  ADDRESS_NOTIFICATION = 26,
  NOTIFY_SA_LIFETIME = 27,
  CERTIFICATE_UNAVAILABLE = 28,
  UNSUPPORTED_EXCHANGE_TYPE = 29,
  UNEQUAL_PAYLOAD_LENGTHS = 30,
  CONNECTED = 16384,
  RESPONDER_LIFETIME = 24576,
  REPLAY_STATUS = 24577,
  INITIAL_CONTACT = 24578,
  R_U_THERE = 36136,
  R_U_THERE_ACK = 36137,
  /** MS-IKEE §2.2.6 private types: a failure reason, the DoS-protection cookie (§3.9), exchange info (§3.7). */
  MS_NOTIFY_STATUS = 40003,
  MS_NOTIFY_DOS_COOKIE = 40004,
  MS_EXCHANGE_INFO = 40005,
}

/** Vendor IDs (MD5 of the names unless noted). */
export const VendorId = {
  /** RFC 3947 §3.1: MD5("RFC 3947"). */
  RFC3947: Buffer.from('4a131c81070358455c5728f20e95452f', 'hex'),
  /** MD5("draft-ietf-ipsec-nat-t-ike-02\n"), the value Windows sends besides RFC 3947. */
  NATT_DRAFT_02N: Buffer.from('90cb80913ebb696e086381b5ec427b1f', 'hex'),
  /** MD5("draft-ietf-ipsec-nat-t-ike-02"). */
  NATT_DRAFT_02: Buffer.from('cd60464335df21f87cfdb2fc68b6a448', 'hex'),
  /** MD5("draft-ietf-ipsec-nat-t-ike-03"). */
  NATT_DRAFT_03: Buffer.from('7d9419a65310ca6f2c179d9215529d56', 'hex'),
  /** RFC 3706 §4: DPD, version 1.0. */
  DPD: Buffer.from('afcad71368a1f1c96b8696fc77570100', 'hex'),
  /** MS NT5 ISAKMPOAKLEY (MS-IKEE §2.2.2): the MD5 prefix; a 4-octet version follows. */
  MS_NT5_PREFIX: Buffer.from('1e2b516905991c7d7c96fcbfb587e461', 'hex'),
  /** Vid-Initial-Contact (MS-IKEE §3.5–3.6): Windows' INITIAL-CONTACT, sent in Main Mode message 1. */
  MS_INITIAL_CONTACT: Buffer.from('26244d38eddb61b3172a36e3d0cfb819', 'hex'),
  /** MS-Negotiation Discovery Capable (MS-IKEE §1.3.5). */
  MS_NEGOTIATION_DISCOVERY: Buffer.from('fb1de3cdf341b7ea16b7e5be0855f120', 'hex'),
  /** IKE CGA version 1 (MS-IKEE). */
  MS_IKE_CGA_V1: Buffer.from('e3a5966a76379fe707228231e5ce8652', 'hex'),
  /** Cisco's IKE fragmentation vendor ID; Windows sends the bare 16 octets (MS-IKEE §3.3.4.1), others append 4. */
  FRAGMENTATION: Buffer.from('4048b7d56ebce88525e7de7f00d6c2d3', 'hex'),
  /**
   * MS-MamieExists (MS-AIPS §3.2.4, <13>): in the IKEv1 message 1 that a host speaking AuthIP too
   * sends alongside its AuthIP one.
   */
  MS_MAMIE_EXISTS: Buffer.from('214ca4faffa7f32d6748e5303395ae83', 'hex'),
  /** NLBS_PRESENT (MS-IKEE): a load-balanced Windows server. */
  MS_NLBS_PRESENT: Buffer.from('72872b95fcda2eb708efe322119b4971', 'hex'),
} as const;
