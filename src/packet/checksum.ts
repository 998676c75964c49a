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
