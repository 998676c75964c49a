/**
 * What the keying service hands to a data plane (consec's userspace ESP, later kernel XFRM):
 * negotiated child SAs to install, replace and remove. The data plane calls back into the keying
 * service for acquires (`KeyingService.acquire(flow)`: traffic that needs an SA) and for lifetime
 * expiry in bytes or packets (`IkeManager.expire(spiIn, hard)`).
 */
import type { ChildSa } from './tasks/child-create.ts';
import type { Endpoint } from './sa.ts';

export interface InstalledChild {
  child: ChildSa;
  /** Outer addresses (and ports when ESP runs in UDP 4500). */
  local: Endpoint;
  remote: Endpoint;
  udpEncapsulation: boolean;
  /** We initiated the exchange that created the child: our outbound keys are `keys.encrI`/`integI`. */
  initiator: boolean;
  /** Byte lifetime (quick mode MaxKiloBytes); the data plane calls `expire` at 90 % and at 100 %. */
  maxKilobytes?: number;
}

export interface ChildSaSink {
  /** A new child SA: install both directions (make-before-break: the old one stays until delete). */
  install(sa: InstalledChild): void;
  /** The child SA with this inbound SPI is gone (deleted, rekeyed, expired). */
  delete(spiIn: Buffer): void;
  /** The peer moved (NAT mapping change): send to the new address. */
  update?(spiIn: Buffer, remote: Endpoint): void;
}

export const NO_DATAPLANE: ChildSaSink = { install() {}, delete() {} };
