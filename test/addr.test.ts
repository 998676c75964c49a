import assert from 'node:assert/strict';
import { isIPv6 } from 'node:net';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { AddressError, parsePrefix, readIp, writeIp } from '../src/io/addr.ts';
import { kept } from '../src/io/kept.ts';
import { internetChecksum } from '../src/packet/checksum.ts';
import { type AddressChange, parseAddressChanges } from '../src/io/rtnetlink.ts';
import { addressEvent } from '../src/daemon/addresses.ts';

describe('IP address codec', () => {
  it('round-trips IPv4 and IPv6 text through bytes', () => {
    fc.assert(
      fc.property(fc.ipV4(), (a) => {
        const b = Buffer.alloc(16);
        assert.equal(writeIp(a, b), 4);
        assert.equal(readIp(b, 0, 4), a.split('.').map(Number).join('.'));
      }),
    );
    fc.assert(
      fc.property(fc.ipV6(), (a) => {
        const b = Buffer.alloc(16);
        assert.equal(writeIp(a, b), 6);
        const text = readIp(b, 0, 6);
        assert.ok(isIPv6(text));
        const again = Buffer.alloc(16);
        writeIp(text, again);
        assert.deepEqual(again, b);
      }),
    );
  });

  it('prints RFC 5952 canonical IPv6', () => {
    const b = Buffer.alloc(16);
    for (const [input, canonical] of [
      ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'],
      ['2001:db8:0:1:0:0:0:1', '2001:db8:0:1::1'],
      ['2001:db8::1:0:0:1', '2001:db8::1:0:0:1'],
      ['::', '::'],
      ['::ffff:192.0.2.1', '::ffff:c000:201'],
      ['fe80::', 'fe80::'],
    ] as const) {
      writeIp(input, b);
      assert.equal(readIp(b, 0, 6), canonical);
    }
  });

  it('rejects what is not an address or prefix', () => {
    assert.throws(() => writeIp('192.0.2.256', Buffer.alloc(16)), AddressError);
    assert.throws(() => parsePrefix('192.0.2.1'), /missing prefix length/);
    assert.throws(() => parsePrefix('192.0.2.1/33'), /bad prefix length/);
    assert.throws(() => parsePrefix('2001:db8::/129'), /bad prefix length/);
    assert.deepEqual(parsePrefix('2001:db8::/32'), { address: '2001:db8::', prefixLength: 32, family: 6 });
  });
});

describe('Internet checksum', () => {
  it('matches the RFC 1071 §3 example', () => {
    // Bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2; the checksum is its complement.
    assert.equal(internetChecksum(Buffer.from('0001f203f4f5f6f7', 'hex')), 0x220d);
  });

  it('validates a known-good IPv4 header', () => {
    // IPv4 header whose checksum field (0xb861) is correct: summing it with the field gives 0.
    const ipv4 = Buffer.from('450000730000400040110000c0a80001c0a800c7', 'hex');
    ipv4.writeUInt16BE(0xb861, 10);
    assert.equal(internetChecksum(ipv4), 0);
    // The ICMPv6 pseudo-header sum is exercised for real by test/native.test.ts: the kernel's ping
    // accepts the echo replies the TUN fixture builds with it.
  });

  it('odd lengths pad with a zero byte', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 300 }), (data) => {
        const padded = new Uint8Array(data.length + (data.length % 2));
        padded.set(data);
        assert.equal(internetChecksum(data), internetChecksum(padded));
      }),
    );
  });
});

describe('kept(): long-lived bytes outside Node’s shared pool', () => {
  it('copies the octets into a slab of kept bytes, never the input’s backing store', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 3000 }), (bytes) => {
        const pooled = Buffer.from(bytes);
        const k = kept(pooled);
        assert.ok(k.equals(pooled));
        if (k.length > 0) assert.notEqual(k.buffer, pooled.buffer);
        pooled.fill(0x5a);
        assert.ok(k.equals(Buffer.from(bytes)), 'a copy, not a view');
        assert.notEqual(k.buffer.byteLength, Buffer.poolSize);
      }),
    );
  });

  it('packs small strings densely and keeps them apart', () => {
    const a = kept(Buffer.from([1, 2, 3]));
    const b = kept(Buffer.from([4, 5, 6, 7, 8, 9, 10, 11, 12]));
    if (a.buffer === b.buffer) assert.ok(b.byteOffset >= a.byteOffset + 8, 'aligned, not overlapping');
    assert.deepEqual([...a], [1, 2, 3]);
    assert.deepEqual([...b], [4, 5, 6, 7, 8, 9, 10, 11, 12]);
  });
});

describe('rtnetlink address changes (RTM_NEWADDR / RTM_DELADDR)', () => {
  /** One netlink message as the kernel sends it: nlmsghdr, ifaddrmsg, then attributes. */
  const message = (
    type: number,
    family: number,
    prefix: number,
    scope: number,
    ifindex: number,
    attrs: [number, Buffer][],
  ): Buffer => {
    const body = Buffer.concat(
      attrs.map(([t, v]) => {
        const a = Buffer.alloc((4 + v.length + 3) & ~3);
        a.writeUInt16LE(4 + v.length, 0);
        a.writeUInt16LE(t, 2);
        v.copy(a, 4);
        return a;
      }),
    );
    const h = Buffer.alloc(24);
    h.writeUInt32LE(24 + body.length, 0);
    h.writeUInt16LE(type, 4);
    h[16] = family;
    h[17] = prefix;
    h[19] = scope;
    h.writeUInt32LE(ifindex, 20);
    return Buffer.concat([h, body]);
  };
  const flags = (f: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(f);
    return b;
  };

  it('reads the own address of each change: IFA_LOCAL where there is one (IFA_ADDRESS is then the peer), IFA_ADDRESS otherwise; scope and DAD state', () => {
    const v4 = message(20, 2, 24, 0, 2, [
      [1, Buffer.from([198, 51, 100, 9])],
      [2, Buffer.from([192, 0, 2, 7])],
    ]);
    const v6 = Buffer.from('20010db8000000000000000000000001', 'hex');
    const tentative = message(20, 10, 64, 0, 3, [
      [1, v6],
      [8, flags(0x40)],
    ]);
    const link = message(20, 10, 64, 253, 3, [[1, Buffer.from('fe800000000000000000000000000001', 'hex')]]);
    // An IPv6 address with a peer: IFA_LOCAL is ours, IFA_ADDRESS the peer's.
    const peered = message(20, 10, 128, 0, 4, [
      [1, Buffer.from('20010db8000000000000000000000009', 'hex')],
      [2, Buffer.from('20010db8000000000000000000000002', 'hex')],
    ]);
    const gone = message(21, 2, 24, 0, 2, [[2, Buffer.from([192, 0, 2, 7])]]);
    const other = message(16, 0, 0, 0, 1, []); // RTM_NEWLINK: skipped
    // A second IPv4 address in a subnet: IFA_F_SECONDARY, the bit IPv6 uses for temporary addresses.
    const secondary = message(20, 2, 24, 0, 2, [
      [2, Buffer.from([192, 0, 2, 8])],
      [8, flags(0x01)],
    ]);
    const changes = parseAddressChanges(Buffer.concat([v4, tentative, link, peered, other, secondary, gone]));
    assert.ok(!changes.some((c) => c.family === 4 && c.temporary), 'IPv4 secondary is not temporary');
    assert.deepEqual(
      changes.map((c) => [c.op, c.family, readIp(c.address, 0, c.family), c.prefixLength, c.global, c.usable]),
      [
        ['add', 4, '192.0.2.7', 24, true, true],
        ['add', 6, '2001:db8::1', 64, true, false],
        ['add', 6, 'fe80::1', 64, false, true],
        ['add', 6, '2001:db8::2', 128, true, true],
        ['add', 4, '192.0.2.8', 24, true, true],
        ['delete', 4, '192.0.2.7', 24, true, true],
      ],
    );
  });

  it('what a change means for consec: a usable global address is added; tentative, DAD-failed or removed ones go; link-local and temporary ones never count', () => {
    const c = (o: Partial<AddressChange>): AddressChange => ({
      op: 'add',
      family: 4,
      ifindex: 2,
      address: Buffer.from([192, 0, 2, 7]),
      prefixLength: 24,
      global: true,
      usable: true,
      temporary: false,
      ...o,
    });
    assert.deepEqual(addressEvent(c({})), { op: 'add', address: '192.0.2.7' });
    assert.deepEqual(addressEvent(c({ usable: false })), { op: 'remove', address: '192.0.2.7' });
    assert.deepEqual(addressEvent(c({ op: 'delete' })), { op: 'remove', address: '192.0.2.7' });
    assert.equal(addressEvent(c({ global: false })), undefined);
    assert.equal(addressEvent(c({ temporary: true })), undefined);
  });

  it('fuzz: any datagram parses to changes or to nothing, never an exception, never an address of the wrong size', () => {
    const seed = message(20, 2, 24, 0, 2, [[2, Buffer.from([192, 0, 2, 7])]]);
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 200 }),
        fc.array(fc.tuple(fc.nat(seed.length - 1), fc.integer({ min: 0, max: 255 })), { maxLength: 8 }),
        (random, flips) => {
          const mutated = Buffer.from(seed);
          for (const [i, v] of flips) mutated[i] = v;
          for (const d of [random, mutated])
            for (const c of parseAddressChanges(d)) assert.equal(c.address.length, c.family === 4 ? 4 : 16);
        },
      ),
      { numRuns: 20_000 },
    );
  });
});
