/**
 * Traffic a Require rule protects that has no SA yet: held in a bounded queue per destination while
 * the keying service negotiates (acquire, at most once a second per destination), sent once an SA
 * is installed, dropped — with the Filtering Platform drop event — when the negotiation fails.
 */
import { readIp } from '../io/addr.ts';
import type { Flow } from '../filter/compile.ts';
import type { IpInfo } from './ip.ts';
import { parseIp } from './ip.ts';
import type { Counters } from './stats.ts';

const QUEUE_PER_DESTINATION = 32;
const QUEUE_TOTAL = 1024;

/** Packets a Require rule held for an SA that could not be negotiated (event 5152). */
export interface PolicyDrop {
  sourceAddress: string;
  sourcePort: number;
  destinationAddress: string;
  destinationPort: number;
  protocol: number;
  packets: number;
}

export class AcquireQueue {
  private readonly held = new Map<string, Buffer[]>();
  private total = 0;
  private readonly asked = new Map<string, number>();

  constructor(
    private readonly counters: Counters,
    private readonly o: {
      acquire(flow: Flow): void;
      onPolicyDrop?(e: PolicyDrop): void;
      log(event: string, detail?: Record<string, unknown>): void;
    },
  ) {}

  /** Packets waiting for an SA. */
  get size(): number {
    return this.total;
  }

  /** Holds a copy of a packet that has no SA yet (bounded) and asks for one. */
  hold(packet: Buffer, ip: IpInfo): void {
    const dst = readIp(packet, ip.dst, ip.family);
    const q = this.held.get(dst) ?? [];
    if (q.length >= QUEUE_PER_DESTINATION || this.total >= QUEUE_TOTAL) this.counters.drop('queue full');
    else {
      q.push(Buffer.from(packet));
      this.held.set(dst, q);
      this.total++;
    }
    this.acquire(packet, ip);
  }

  /** Asks the keying service for an SA for this packet's flow (at most once a second per destination). */
  acquire(packet: Buffer, ip: IpInfo): void {
    const fam = ip.family;
    const dst = readIp(packet, ip.dst, fam);
    const now = Date.now();
    if (now - (this.asked.get(dst) ?? 0) < 1000) return;
    this.asked.set(dst, now);
    const src = readIp(packet, ip.src, fam);
    this.o.log('acquire', { src, dst, protocol: ip.protocol });
    this.o.acquire({
      direction: 'Outbound',
      local: src,
      remote: dst,
      protocol: ip.protocol,
      localPort: ip.srcPort >= 0 ? ip.srcPort : undefined,
      remotePort: ip.dstPort >= 0 ? ip.dstPort : undefined,
    });
  }

  /** Takes out the held packets `ready` accepts (an SA covers them now); the rest keep waiting. */
  release(ready: (packet: Buffer, ip: IpInfo) => boolean): Buffer[] {
    const out: Buffer[] = [];
    for (const [dst, q] of this.held) {
      const left = q.filter((p) => {
        const ip = parseIp(p);
        if (!ip || !ready(p, ip)) return true;
        out.push(p);
        return false;
      });
      this.total -= q.length - left.length;
      if (left.length) this.held.set(dst, left);
      else this.held.delete(dst);
    }
    return out;
  }

  /** The negotiation for `dst` failed: what waited is dropped (Require; Request falls back in the filter). */
  failed(dst: string): void {
    const q = this.held.get(dst);
    if (!q) return;
    this.held.delete(dst);
    this.total -= q.length;
    this.counters.drop('negotiation failed', q.length);
    this.asked.delete(dst);
    const first = q[0];
    const ip = first && parseIp(first);
    if (first && ip)
      this.o.onPolicyDrop?.({
        sourceAddress: readIp(first, ip.src, ip.family),
        sourcePort: Math.max(ip.srcPort, 0),
        destinationAddress: dst,
        destinationPort: Math.max(ip.dstPort, 0),
        protocol: ip.protocol,
        packets: q.length,
      });
  }
}
