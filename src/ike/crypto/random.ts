/**
 * Random octets for what the keying modules make per exchange — nonces, SPIs, cookies, IVs — from
 * node:crypto's CSPRNG, a block at a time: each call of the CSPRNG costs about as much for 4 KiB as
 * for 32 octets (measured: ≈ 15 µs either way under load), and an IKE setup takes a dozen values.
 * Every octet is handed out once; a block is dropped when used up (the views handed out keep it
 * only as long as they live). Not for long-term secrets: OpenSSL makes the key exchanges' private
 * keys itself.
 */
import { randomFillSync } from 'node:crypto';

const BLOCK = 4096;

let block = Buffer.alloc(0);
let used = 0;

/** `n` fresh random octets (a view of the current block; copy what an SA keeps, see io/kept.ts). */
export function randomOctets(n: number): Buffer {
  if (n > BLOCK / 4) return randomFillSync(Buffer.allocUnsafeSlow(n));
  if (used + n > block.length) {
    block = randomFillSync(Buffer.allocUnsafeSlow(BLOCK));
    used = 0;
  }
  const out = block.subarray(used, used + n);
  used += n;
  return out;
}
