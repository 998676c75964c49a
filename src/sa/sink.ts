/**
 * The two directions of the contract between a keying module and a data plane: down, child SAs to
 * install, activate, move and remove (`ChildSaSink`); up, what the data plane sees that keying must
 * act on (`SaEvents`: traffic without an SA, lifetimes reached, the peer alive).
 */
import type { Flow } from '../filter/compile.ts';
import type { ChildSaSpec, Endpoint } from './spec.ts';

export interface ChildSaSink {
  /** A new child SA: install both directions (make-before-break: an SA it replaces stays until removed). */
  install(spec: ChildSaSpec): void;
  /** The child SA with this inbound SPI is gone (deleted, rekeyed, expired). */
  delete(spiIn: number): void;
  /** Outbound traffic may now use the SA installed with `outboundActive: false`. */
  activate?(spiIn: number): void;
  /** The peer moved (NAT mapping change): send to the new address. */
  update?(spiIn: number, remote: Endpoint): void;
  /** Traffic counted on the child SA with this inbound SPI, both directions (undefined: no such SA). */
  counters?(spiIn: number): { bytesIn: number; bytesOut: number; packetsIn: number; packetsOut: number } | undefined;
}

export const NO_DATAPLANE: ChildSaSink = { install() {}, delete() {} };

export interface SaEvents {
  /** Traffic a rule protects has no SA: negotiate one (the packets wait or go in clear, per the rule). */
  acquire?(flow: Flow): void;
  /** A child SA reached its byte lifetime or ran out of sequence numbers: soft → rekey, hard → delete. */
  expire?(spiIn: number, hard: boolean): void;
  /** Authenticated traffic arrived on a child SA (the peer is alive; saves liveness checks). */
  activity?(spiIn: number): void;
}
