/**
 * Long-lived small byte strings (SPIs, traffic selectors, identities, cached responses, digests):
 * copied into slabs of their own. A Buffer sliced from a received datagram, or made by
 * `Buffer.from`/`Buffer.concat` (Node's shared 8 KiB pool), keeps its whole backing store alive as
 * long as it lives — an SA that holds a 4-octet SPI that way holds 8 KiB. Here the slabs hold only
 * what SAs keep, densely, so a slab is freed once the SAs whose bytes it holds are gone.
 *
 * Not for secrets (keys live in blocks of their own, see ike/crypto/keys.ts).
 */
/** The size of a slab of kept bytes. */
export const KEPT_SLAB_BYTES = 16 * 1024;
const EMPTY = Buffer.alloc(0);

let slab = Buffer.allocUnsafeSlow(KEPT_SLAB_BYTES);
let used = 0;

/** A copy of `b` that pins no buffer but a slab of kept bytes. */
export function kept(b: Uint8Array): Buffer {
  const n = b.length;
  if (n === 0) return EMPTY;
  if (n > KEPT_SLAB_BYTES / 16) {
    const own = Buffer.allocUnsafeSlow(n);
    own.set(b);
    return own;
  }
  if (used + n > KEPT_SLAB_BYTES) {
    slab = Buffer.allocUnsafeSlow(KEPT_SLAB_BYTES);
    used = 0;
  }
  const out = slab.subarray(used, used + n);
  out.set(b);
  used += (n + 7) & ~7;
  return out;
}
