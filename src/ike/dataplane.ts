/**
 * What the keying service hands to a data plane (consec's userspace ESP, later kernel XFRM):
 * negotiated child SAs to install, replace and remove. The data plane calls back into the keying
 * service for acquires (traffic that needs an SA) and for lifetime expiry in bytes or packets.
 */
import type { ChildSa } from './tasks/child-create.ts';
import type { Endpoint } from './sa.ts';

export interface InstalledChild {
  child: ChildSa;
  /** Outer addresses (and ports when ESP runs in UDP 4500). */
  local: Endpoint;
  remote: Endpoint;
  udpEncapsulation: boolean;
  /** We are the IKE initiator: our outbound keys are the initiator-to-responder ones. */
  initiator: boolean;
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
