/**
 * The IP facts the data plane needs from a packet, read in place (no allocation): family, header
 * length, protocol, ports, and whether addresses fall inside traffic selectors.
 */
import type { TrafficSelector } from '../sa/spec.ts';

export interface IpInfo {
  family: 4 | 6;
  /** Octets before the transport header (IPv6 extension headers are not walked: next header as found). */
  headerLength: number;
  protocol: number;
  /** Offsets of the source and destination addresses. */
  src: number;
  dst: number;
  /** Transport ports (-1 when not TCP/UDP/SCTP or the packet is too short). */
  srcPort: number;
  dstPort: number;
}

const info: IpInfo = { family: 4, headerLength: 0, protocol: 0, src: 0, dst: 0, srcPort: -1, dstPort: -1 };

/** Reads `packet`'s IP header into a shared record (valid until the next call), or undefined if it is not IP. */
export function parseIp(packet: Buffer): IpInfo | undefined {
  if (packet.length < 20) return undefined;
  const v = (packet[0] as number) >> 4;
  if (v === 4) {
    const ihl = ((packet[0] as number) & 0x0f) * 4;
    if (ihl < 20 || packet.length < ihl) return undefined;
    info.family = 4;
    info.headerLength = ihl;
    info.protocol = packet[9] as number;
    info.src = 12;
    info.dst = 16;
  } else if (v === 6) {
    if (packet.length < 40) return undefined;
    info.family = 6;
    info.headerLength = 40;
    info.protocol = packet[6] as number;
    info.src = 8;
    info.dst = 24;
  } else return undefined;
  const p = info.protocol;
  if ((p === 6 || p === 17 || p === 132) && packet.length >= info.headerLength + 4) {
    info.srcPort = packet.readUInt16BE(info.headerLength);
    info.dstPort = packet.readUInt16BE(info.headerLength + 2);
  } else {
    info.srcPort = -1;
    info.dstPort = -1;
  }
  return info;
}

function addressIn(packet: Buffer, off: number, len: number, t: TrafficSelector): boolean {
  if (t.start.length !== len) return false;
  // Compare in place against the selector's range, octet by octet (no subarray allocation).
  let lo = 0;
  let hi = 0;
  for (let i = 0; i < len; i++) {
    const b = packet[off + i] as number;
    if (lo === 0) lo = b < (t.start[i] as number) ? -1 : b > (t.start[i] as number) ? 1 : 0;
    if (hi === 0) hi = b < (t.end[i] as number) ? -1 : b > (t.end[i] as number) ? 1 : 0;
  }
  return lo >= 0 && hi <= 0;
}

/** Does the packet's (src, dst, protocol, ports) fall inside the selectors for `local` → `remote`? */
export function packetMatches(
  packet: Buffer,
  ip: IpInfo,
  srcTs: readonly TrafficSelector[],
  dstTs: readonly TrafficSelector[],
): boolean {
  return anyCovers(packet, ip, ip.src, ip.srcPort, srcTs) && anyCovers(packet, ip, ip.dst, ip.dstPort, dstTs);
}

/** One side of packetMatches: a plain loop (per packet on the hot path: no closure, no allocation). */
function anyCovers(packet: Buffer, ip: IpInfo, off: number, port: number, ts: readonly TrafficSelector[]): boolean {
  const len = ip.family === 4 ? 4 : 16;
  for (let i = 0; i < ts.length; i++) {
    const t = ts[i] as TrafficSelector;
    if (t.ipProtocol !== 0 && t.ipProtocol !== ip.protocol) continue;
    if (port < 0 ? t.startPort !== 0 || t.endPort !== 65535 : port < t.startPort || port > t.endPort) continue;
    if (addressIn(packet, off, len, t)) return true;
  }
  return false;
}
