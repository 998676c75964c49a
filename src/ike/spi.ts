/**
 * Inbound SPIs of child SAs, unique per local address (RFC 4301 §4.1: the receiver's SPI names the
 * SA). Random 32-bit values, never 0–255 (reserved, RFC 4303 §2.1), never one still in use: with
 * 10k SAs a birthday collision of unchecked random SPIs is ≈ 1 % likely, and the SAD keys by SPI.
 */
import { randomOctets } from './crypto/random.ts';
import { kept } from '../io/kept.ts';

export class SpiRegistry {
  private readonly used = new Set<number>();

  /** A fresh SPI, reserved until `release`. */
  allocate(): Buffer {
    for (;;) {
      const spi = randomOctets(4);
      const n = spi.readUInt32BE(0);
      if (n < 256 || this.used.has(n)) continue;
      this.used.add(n);
      return kept(spi);
    }
  }

  release(spi: Buffer): void {
    if (spi.length === 4) this.used.delete(spi.readUInt32BE(0));
  }

  has(spi: Buffer): boolean {
    return spi.length === 4 && this.used.has(spi.readUInt32BE(0));
  }

  get size(): number {
    return this.used.size;
  }
}
