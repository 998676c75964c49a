/** IKEv2 protocol numbers (RFC 7296 §3 and the IANA IKEv2 registries). */

export const IKE_VERSION = 0x20;
export const HEADER_LENGTH = 28;
/** The four zero octets that mark an IKE message on UDP 4500 (RFC 3948 §2.2). */
export const NON_ESP_MARKER_LENGTH = 4;

export enum ExchangeType {
  IKE_SA_INIT = 34,
  IKE_AUTH = 35,
  CREATE_CHILD_SA = 36,
  INFORMATIONAL = 37,
}

export const Flags = { INITIATOR: 0x08, VERSION: 0x10, RESPONSE: 0x20 } as const;

export enum PayloadType {
  NONE = 0,
  SA = 33,
  KE = 34,
  IDi = 35,
  IDr = 36,
  CERT = 37,
  CERTREQ = 38,
  AUTH = 39,
  NONCE = 40,
  NOTIFY = 41,
  DELETE = 42,
  VENDOR_ID = 43,
  TSi = 44,
  TSr = 45,
  SK = 46,
  CP = 47,
  EAP = 48,
  SKF = 53,
}

export enum TransformType {
  ENCR = 1,
  PRF = 2,
  INTEG = 3,
  KE = 4,
  ESN = 5,
}

export enum EncrId {
  DES = 2,
  TRIPLE_DES = 3,
  NULL = 11,
  AES_CBC = 12,
  AES_CTR = 13,
  AES_GCM_8 = 18,
  AES_GCM_12 = 19,
  AES_GCM_16 = 20,
  NULL_AUTH_AES_GMAC = 21,
  CHACHA20_POLY1305 = 28,
}

export enum PrfId {
  HMAC_MD5 = 1,
  HMAC_SHA1 = 2,
  AES128_XCBC = 4,
  HMAC_SHA2_256 = 5,
  HMAC_SHA2_384 = 6,
  HMAC_SHA2_512 = 7,
}

export enum IntegId {
  NONE = 0,
  HMAC_MD5_96 = 1,
  HMAC_SHA1_96 = 2,
  AES_XCBC_96 = 5,
  AES_128_GMAC = 9,
  AES_192_GMAC = 10,
  AES_256_GMAC = 11,
  HMAC_SHA2_256_128 = 12,
  HMAC_SHA2_384_192 = 13,
  HMAC_SHA2_512_256 = 14,
}

export enum KeId {
  NONE = 0,
  MODP_768 = 1,
  MODP_1024 = 2,
  MODP_1536 = 5,
  MODP_2048 = 14,
  MODP_3072 = 15,
  MODP_4096 = 16,
  MODP_6144 = 17,
  MODP_8192 = 18,
  ECP_256 = 19,
  ECP_384 = 20,
  ECP_521 = 21,
  MODP_2048_256 = 24,
  CURVE25519 = 31,
  CURVE448 = 32,
}

export enum EsnId {
  NO = 0,
  YES = 1,
}

/** Transform attribute type: Key Length, in TV format (AF bit set). */
export const ATTR_KEY_LENGTH = 14;

export enum ProtocolId {
  IKE = 1,
  AH = 2,
  ESP = 3,
}

export enum IdType {
  IPV4_ADDR = 1,
  FQDN = 2,
  RFC822_ADDR = 3,
  IPV6_ADDR = 5,
  DER_ASN1_DN = 9,
  DER_ASN1_GN = 10,
  KEY_ID = 11,
}

export enum AuthMethod {
  RSA_SIGNATURE = 1,
  SHARED_KEY_MIC = 2,
  DSS_SIGNATURE = 3,
  ECDSA_SHA256_P256 = 9,
  ECDSA_SHA384_P384 = 10,
  ECDSA_SHA512_P521 = 11,
  DIGITAL_SIGNATURE = 14,
}

export enum CertEncoding {
  X509_SIGNATURE = 4,
  HASH_AND_URL_X509 = 12,
}

export enum TsType {
  IPV4_ADDR_RANGE = 7,
  IPV6_ADDR_RANGE = 8,
}

export enum CfgType {
  REQUEST = 1,
  REPLY = 2,
  SET = 3,
  ACK = 4,
}

export enum NotifyType {
  UNSUPPORTED_CRITICAL_PAYLOAD = 1,
  INVALID_IKE_SPI = 4,
  INVALID_MAJOR_VERSION = 5,
  INVALID_SYNTAX = 7,
  INVALID_MESSAGE_ID = 9,
  INVALID_SPI = 11,
  NO_PROPOSAL_CHOSEN = 14,
  INVALID_KE_PAYLOAD = 17,
  AUTHENTICATION_FAILED = 24,
  SINGLE_PAIR_REQUIRED = 34,
  NO_ADDITIONAL_SAS = 35,
  INTERNAL_ADDRESS_FAILURE = 36,
  FAILED_CP_REQUIRED = 37,
  TS_UNACCEPTABLE = 38,
  INVALID_SELECTORS = 39,
  TEMPORARY_FAILURE = 43,
  CHILD_SA_NOT_FOUND = 44,
  INITIAL_CONTACT = 16384,
  SET_WINDOW_SIZE = 16385,
  ADDITIONAL_TS_POSSIBLE = 16386,
  IPCOMP_SUPPORTED = 16387,
  NAT_DETECTION_SOURCE_IP = 16388,
  NAT_DETECTION_DESTINATION_IP = 16389,
  COOKIE = 16390,
  USE_TRANSPORT_MODE = 16391,
  HTTP_CERT_LOOKUP_SUPPORTED = 16392,
  REKEY_SA = 16393,
  ESP_TFC_PADDING_NOT_SUPPORTED = 16394,
  NON_FIRST_FRAGMENTS_ALSO = 16395,
  MOBIKE_SUPPORTED = 16396,
  IKEV2_FRAGMENTATION_SUPPORTED = 16430,
  SIGNATURE_HASH_ALGORITHMS = 16431,
}

/** Notify types below 16384 are errors (RFC 7296 §3.10.1). */
export const isErrorNotify = (type: number): boolean => type > 0 && type < 16384;
