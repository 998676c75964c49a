/**
 * The data plane's SAD: the outbound lookup, indexed by the remote host, must choose exactly what
 * a scan of every SA newest-first chooses (make-before-break), whatever mix of host and range
 * selectors is installed and removed.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { parseIp, packetMatches } from '../src/dataplane/ip.ts';
import { Sad } from '../src/dataplane/sad.ts';
import type { TrafficSelector } from '../src/ike/wire/codec.ts';
import { gcmChildSa } from './helpers.ts';

const v4 = (n: number) => Buffer.from([192, 0, 2, n]);
const ts = (lo: number, hi: number, proto = 0): TrafficSelector => ({
  type: 7,
  ipProtocol: proto,
  startPort: 0,
  endPort: 65535,
  start: v4(lo),
  end: v4(hi),
});

function packet(dst: number, proto: number): Buffer {
  const p = Buffer.alloc(28);
  p[0] = 0x45;
  p.writeUInt16BE(28, 2);
  p[8] = 64;
  p[9] = proto;
  v4(1).copy(p, 12);
  v4(dst).copy(p, 16);
  return p;
}

describe('SAD outbound lookup', () => {
  it('the host index chooses what a newest-first scan of every SA chooses, through installs and removals', () => {
    const selector = fc.oneof(
      fc.integer({ min: 1, max: 12 }).map((h) => ts(h, h)),
      fc.tuple(fc.integer({ min: 1, max: 12 }), fc.integer({ min: 0, max: 6 })).map(([a, w]) => ts(a, a + w)),
      fc.integer({ min: 1, max: 12 }).map((h) => ts(h, h, 17)),
    );
    const op = fc.oneof(
      fc.record({ install: fc.array(selector, { minLength: 1, maxLength: 2 }) }),
      fc.record({ remove: fc.nat() }),
    );
    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 30 }), (ops) => {
        const sad = new Sad();
        const live: number[] = [];
        let spi = 0x1000;
        for (const o of ops) {
          if ('install' in o) live.push(sad.install(gcmChildSa(++spi, [ts(0, 255)], o.install)).in.spi);
          else if (live.length > 0) sad.remove(live.splice(o.remove % live.length, 1)[0] as number);
          for (let dst = 1; dst <= 14; dst++)
            for (const proto of [6, 17]) {
              const p = packet(dst, proto);
              const ip = parseIp(p);
              assert.ok(ip);
              const expected = sad.entries().find((e) => packetMatches(p, ip, e.localTs, e.remoteTs));
              assert.equal(sad.outboundFor(p, ip), expected, `192.0.2.${dst} proto ${proto}`);
            }
        }
      }),
      { numRuns: 200 },
    );
  });
});
