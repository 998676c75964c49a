/**
 * The child SA contract between keying and data plane (as strongSwan's kernel_ipsec.h or
 * wireguard-go's Keypair): what a data plane needs to carry one child SA, with every IKE notion
 * already resolved — keys by direction instead of by exchange role, algorithms by data-plane name
 * instead of IKE transform IDs, our selectors and the peer's instead of TSi/TSr. Every keying module
 * (IKEv2, IKEv1, AuthIP) and the manual SA file build a `ChildSaSpec`; every data plane takes one.
 */
import type { EspCipher, EspInteg } from '../esp/esp.ts';

/** An outer address and UDP port (0 for raw ESP/AH). */
export interface Endpoint {
  address: string;
  port: number;
}

/**
 * A traffic selector (RFC 4301 §4.4.1.1): an address range (`start`..`end`, both 4 or 16 octets),
 * an IP protocol (0: any) and a port range. `type` is 7 for IPv4 and 8 for IPv6 (the IKEv2 TS
 * types, RFC 7296 §3.13.1), which the keying modules' wire codecs use as they are.
 */
export interface TrafficSelector {
  type: number;
  ipProtocol: number;
  startPort: number;
  endPort: number;
  start: Buffer;
  end: Buffer;
}

export const TS_IPV4 = 7;
export const TS_IPV6 = 8;

/** The same selector: protocol, ports and addresses (the family is in the addresses' length). */
export const sameSelector = (a: TrafficSelector, b: TrafficSelector): boolean =>
  a.ipProtocol === b.ipProtocol &&
  a.startPort === b.startPort &&
  a.endPort === b.endPort &&
  a.start.equals(b.start) &&
  a.end.equals(b.end);

/** One direction of a child SA: the SPI its packets carry and the keys that protect them. */
export interface SaDirection {
  spi: number;
  /** Encryption key (for AES-GCM the 4-octet salt follows the key, RFC 4106 §8.1); empty for AH and NULL. */
  encrKey: Buffer;
  /** Integrity key; empty for AES-GCM. */
  integKey: Buffer;
}

export type SaProtocol = 'esp' | 'ah';
export type SaMode = 'tunnel' | 'transport';

export interface ChildSaSpec {
  protocol: SaProtocol;
  mode: SaMode;
  /** ESP only (AH authenticates, it does not encrypt). */
  cipher?: EspCipher;
  /** Absent for AES-GCM (its own ICV); required for AES-CBC, NULL and AH. */
  integrity?: EspInteg;
  /** Extended (64-bit) sequence numbers (RFC 4303 §2.2.1). */
  esn: boolean;
  /** What we receive: the SPI we chose, the keys the peer seals with. */
  inbound: SaDirection;
  /** What we send: the SPI the peer chose, the keys we seal with. */
  outbound: SaDirection;
  /** Our side's selectors and the peer's: outbound packets go from `localTs` to `remoteTs`. */
  localTs: TrafficSelector[];
  remoteTs: TrafficSelector[];
  /** Outer addresses (and ports when ESP runs in UDP 4500). */
  local: Endpoint;
  remote: Endpoint;
  /** ESP in UDP 4500 (RFC 3948) instead of IP protocol 50. */
  udpEncapsulation: boolean;
  /**
   * Byte lifetime (quick mode MaxKiloBytes, both directions together); the data plane reports soft
   * expiry at 90 % and hard expiry at 100 %. Time lifetimes stay with the keying module.
   */
  maxKilobytes?: number;
  /**
   * Outbound traffic may use this SA at once (true) or only once the peer has shown it has the SA
   * too: ESP arrived on it, or the SA it replaces was deleted (the rekey responder's side, RFC 7296
   * §2.8). Default true.
   */
  outboundActive?: boolean;
}
