/**
 * Anti-replay window (RFC 4303 §3.4.3) as the bitmap of RFC 6479: a ring of 32-bit blocks with one
 * spare block, so sliding the window clears whole blocks instead of shifting bits. Sequence numbers
 * are full 64-bit values (extended sequence numbers, RFC 4303 Appendix A) held as JS numbers,
 * exact up to 2^53 — 28 years at ten million packets per second.
 */
export class ReplayWindow {
  private readonly blocks: Uint32Array;
  private readonly mask: number;
  /** Highest sequence number accepted so far (0: none yet). */
  top = 0;

  /** `size`: packets the window spans (≥ 32, rounded up to a power of two blocks). */
  constructor(readonly size = 1024) {
    if (!Number.isInteger(size) || size < 32) throw new RangeError('replay window must span at least 32 packets');
    let n = 1;
    while (n * 32 < size) n *= 2;
    this.blocks = new Uint32Array(n * 2); // n blocks of window plus spare (power of two for masking)
    this.mask = this.blocks.length - 1;
  }

  /** Would `seq` be accepted (new and not too old)? Checked before the ICV, per RFC 4303 §3.4.3. */
  check(seq: number): boolean {
    if (seq === 0) return false;
    if (seq > this.top) return true;
    if (seq + this.size <= this.top) return false;
    const block = Math.floor(seq / 32) & this.mask;
    return (((this.blocks[block] as number) >>> (seq % 32)) & 1) === 0;
  }

  /** Records `seq` once its ICV verified; returns false if it was a replay after all. */
  update(seq: number): boolean {
    if (!this.check(seq)) return false;
    if (seq > this.top) {
      const from = Math.floor(this.top / 32);
      const to = Math.floor(seq / 32);
      // Clear the blocks the window slides into (all of them after a long jump).
      for (let b = from + 1, n = 0; b <= to && n < this.blocks.length; b++, n++) this.blocks[b & this.mask] = 0;
      this.top = seq;
    }
    const block = Math.floor(seq / 32) & this.mask;
    this.blocks[block] = ((this.blocks[block] as number) | (1 << (seq % 32))) >>> 0;
    return true;
  }

  /**
   * The full 64-bit sequence number of a packet whose low 32 bits are `low` (RFC 4303 Appendix
   * A2.2): the high half is the window's, or the next one after a wrap, or the previous one for a
   * late packet from before the wrap.
   */
  inferEsn(low: number): number {
    const W = this.size;
    const tl = this.top % 2 ** 32;
    const th = Math.floor(this.top / 2 ** 32);
    let hi: number;
    if (tl >= W - 1) hi = low >= tl - W + 1 ? th : th + 1;
    else hi = low >= (tl - W + 1 + 2 ** 32) % 2 ** 32 ? th - 1 : th;
    return hi < 0 ? -1 : hi * 2 ** 32 + low;
  }
}
