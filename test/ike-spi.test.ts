/**
 * Inbound SPIs: unique while in use, never reserved values, reusable once released; and a responder
 * holding thousands of child SAs gives every one its own SPI (the SAD keys by SPI).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { SpiRegistry } from '../src/ike/spi.ts';

describe('SPI registry', () => {
  it('never hands out an SPI in use or one below 256; a released SPI may come back (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.boolean(), { minLength: 1, maxLength: 400 }), (ops) => {
        const r = new SpiRegistry();
        const live = new Set<number>();
        const order: Buffer[] = [];
        for (const allocate of ops) {
          if (allocate || order.length === 0) {
            const spi = r.allocate();
            const n = spi.readUInt32BE(0);
            assert.ok(n >= 256, `reserved SPI ${n}`);
            assert.ok(!live.has(n), `SPI ${n} handed out twice`);
            live.add(n);
            order.push(spi);
          } else {
            const spi = order.shift() as Buffer;
            r.release(spi);
            live.delete(spi.readUInt32BE(0));
            assert.equal(r.has(spi), false);
          }
          assert.equal(r.size, live.size);
        }
      }),
      { numRuns: 200 },
    );
  });

  it('100k allocations in a row are all distinct', () => {
    const r = new SpiRegistry();
    const seen = new Set<number>();
    for (let i = 0; i < 100_000; i++) seen.add(r.allocate().readUInt32BE(0));
    assert.equal(seen.size, 100_000);
  });
});
