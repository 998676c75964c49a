/** RFC 1071 Internet checksum over buf[offset, offset+length), folded, as the 16-bit value to store. */
export function internetChecksum(buf: Uint8Array, offset = 0, length = buf.length - offset, initial = 0): number {
  return ~foldSum(onesSum(buf, offset, length, initial)) & 0xffff;
}

/** Unfolded 32-bit ones'-complement partial sum, to chain pseudo-headers and payloads. */
export function onesSum(buf: Uint8Array, offset: number, length: number, initial = 0): number {
  let sum = initial;
  const end = offset + length;
  let i = offset;
  for (; i + 1 < end; i += 2) sum += ((buf[i] as number) << 8) | (buf[i + 1] as number);
  if (i < end) sum += (buf[i] as number) << 8;
  // Fold early enough that the sum stays a small integer.
  return (sum & 0xffff) + Math.floor(sum / 0x10000);
}

export function foldSum(sum: number): number {
  let s = sum;
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

/** Partial sum of the IPv6 pseudo-header (RFC 8200 §8.1) for an upper-layer packet in `ip6`. */
export function ipv6PseudoHeaderSum(ip6: Uint8Array, offset: number, upperLength: number, nextHeader: number): number {
  let sum = onesSum(ip6, offset + 8, 32); // source and destination addresses
  sum += (upperLength >>> 16) + (upperLength & 0xffff) + nextHeader;
  return sum;
}

/**
 * Recomputes the TCP or UDP checksum of the IPv4/IPv6 packet at buf[off, off+total) from scratch,
 * for its current addresses. Transport mode through a NAT (RFC 3948 §3.1.2): the peer computed the
 * checksum for the addresses it saw, not ours; ESP has authenticated the payload already. Other
 * protocols, and an IPv4 UDP datagram without a checksum (0), are left as they are.
 */
export function recomputeTransportChecksum(buf: Uint8Array, off: number, total: number): void {
  const v6 = (buf[off] as number) >> 4 === 6;
  const hlen = v6 ? 40 : ((buf[off] as number) & 0x0f) * 4;
  const proto = buf[off + (v6 ? 6 : 9)] as number;
  const l4 = off + hlen;
  const len = total - hlen;
  const at = proto === 6 ? l4 + 16 : proto === 17 ? l4 + 6 : -1;
  if (at < 0 || len < (proto === 6 ? 20 : 8)) return;
  if (proto === 17 && !v6 && buf[at] === 0 && buf[at + 1] === 0) return;
  buf[at] = 0;
  buf[at + 1] = 0;
  const pseudo = v6 ? ipv6PseudoHeaderSum(buf, off, len, proto) : onesSum(buf, off + 12, 8) + proto + len;
  let sum = internetChecksum(buf, l4, len, pseudo);
  if (proto === 17 && sum === 0) sum = 0xffff;
  buf[at] = sum >> 8;
  buf[at + 1] = sum & 0xff;
}
