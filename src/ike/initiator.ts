/**
 * One-shot initiator (for `consec ike initiate`, tests and benchmarks): a keying service on the
 * local address that negotiates one IKE SA with its first child SA and hands it back. The SA
 * keeps running (rekeys, liveness, peer requests) until `delete()` or `close()`.
 */
import type { AuditSink } from '../audit/events.ts';
import type { IkeBind, IkeReceiver } from '../sa/bind.ts';
import type { NegotiationParameters } from './config.ts';
import { type ChildSaSink, NO_DATAPLANE } from '../sa/sink.ts';
import type { ChildSaSpec } from '../sa/spec.ts';
import { IkeManager } from './manager.ts';
import type { IkeSa } from './sa.ts';
import type { IkeSession, Timing } from './session.ts';
import type { ChildSa } from './tasks/child-create.ts';

export interface InitiateOptions extends NegotiationParameters {
  /** Retransmission timeouts in ms; the exchange fails after the last one. */
  retransmits?: number[];
  /** A liveness check after this much silence (0: none, the default for one-shot use). */
  dpdMs?: number;
  /** NAT keepalive interval when behind a NAT (default 20 s). */
  natKeepaliveMs?: number;
  /** Encapsulate ESP in UDP 4500 even without a NAT (needed where the kernel has no ESP). */
  forceUdpEncapsulation?: boolean;
  audit?: AuditSink;
  dataplane?: ChildSaSink;
  /** Sockets (default: UDP 500/4500 on `local`). */
  bind?: (rx: IkeReceiver) => IkeBind;
  log?: (event: string, detail?: Record<string, unknown>) => void;
}

export interface Initiated {
  sa: IkeSa;
  child: ChildSa;
  /** The first child SA as the data plane took it, keys included (for key export and probes). */
  spec: ChildSaSpec;
  session: IkeSession;
  manager: IkeManager;
  /** ESP-in-UDP datagrams that arrived on the IKE socket (non-ESP marker absent). */
  onEsp(handler: (packet: Buffer) => void): void;
  /** Sends an ESP-in-UDP datagram to the peer from our 4500 socket. */
  sendEsp(packet: Buffer): void;
  /** Deletes the IKE SA (and its child SAs) at the peer (§1.4.1); resolves when confirmed or given up. */
  delete(): Promise<void>;
  close(): void;
}

export async function initiate(o: InitiateOptions): Promise<Initiated> {
  const timing: Partial<Timing> = { dpdMs: o.dpdMs ?? 0 };
  if (o.retransmits) timing.retransmits = o.retransmits;
  if (o.natKeepaliveMs) timing.natKeepaliveMs = o.natKeepaliveMs;
  // The session hands the child's keys to the data plane and forgets them: keep the first spec.
  const sink = o.dataplane ?? NO_DATAPLANE;
  let first: ChildSaSpec | undefined;
  const dataplane: ChildSaSink = {
    install(spec) {
      first ??= spec;
      sink.install(spec);
    },
    delete: (spi) => sink.delete(spi),
    activate: sink.activate && ((spi) => sink.activate?.(spi)),
    update: sink.update && ((spi, remote) => sink.update?.(spi, remote)),
    counters: sink.counters && ((spi) => sink.counters?.(spi)),
  };
  const manager = new IkeManager({
    address: o.local,
    peerFor: () => undefined,
    audit: o.audit,
    dataplane,
    timing,
    log: o.log,
  });
  await manager.listen(o.bind);
  try {
    const { session, child } = await manager.initiate({
      remote: o.remote,
      peer: o,
      forceUdpEncapsulation: o.forceUdpEncapsulation,
    });
    const spec = first;
    if (spec?.inbound.spi !== child.spiIn.readUInt32BE(0)) throw new Error('the child SA was not installed');
    return {
      sa: session.sa,
      child,
      spec,
      session,
      manager,
      onEsp(handler) {
        manager.espHandler = handler;
      },
      sendEsp(packet) {
        manager.sendEsp(packet, session.sa.remote);
      },
      delete: () => session.delete(),
      close: () => manager.close(),
    };
  } catch (err) {
    manager.close();
    throw err;
  }
}
