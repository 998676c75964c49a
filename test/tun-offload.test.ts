/**
 * TUN offloads in the addon (native/tun_offload.cc): the split of the kernel's TSO/USO
 * super-packets into MTU-sized packets, and the coalescing of TCP segments into one super-packet
 * for the write (GRO) — checked packet by packet against checksums computed here, round-tripped,
 * and fuzzed. The lab tests carry real TCP over both (test/dataplane.test.ts).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { coalesceForTun, PacketBatch, segmentSuperPacket } from '../src/io/native.ts';
import { internetChecksum, ipv6PseudoHeaderSum, onesSum } from '../src/packet/checksum.ts';

const TCP = 6;
const UDP = 17;
const GSO = { none: 0, tcp4: 1, tcp6: 4, udp: 5, ecn: 0x80 } as const;

interface Flow {
  v6: boolean;
  proto: number;
  src: Buffer;
  dst: Buffer;
  sport: number;
  dport: number;
  /** TCP options (a multiple of 4 octets). */
  options?: Buffer;
}

const flow4 = (over: Partial<Flow> = {}): Flow => ({
  v6: false,
  proto: TCP,
  src: Buffer.from([192, 0, 2, 1]),
  dst: Buffer.from([192, 0, 2, 2]),
  sport: 40_000,
  dport: 5201,
  ...over,
});
const flow6 = (over: Partial<Flow> = {}): Flow => ({
  v6: true,
  proto: TCP,
  src: Buffer.from('20010db8000000000000000000000001', 'hex'),
  dst: Buffer.from('20010db8000000000000000000000002', 'hex'),
  sport: 40_000,
  dport: 5201,
  ...over,
});

/** The L4 pseudo-header's partial sum. */
function pseudo(pkt: Buffer, f: Flow, l4len: number): number {
  if (f.v6) return ipv6PseudoHeaderSum(pkt, 0, l4len, f.proto);
  return onesSum(pkt, 12, 8) + f.proto + l4len;
}

/** The L4 checksum is right when the sum over pseudo-header and segment folds to 0xffff. */
function l4Valid(pkt: Buffer, f: Flow): boolean {
  const l4 = f.v6 ? 40 : 20;
  return internetChecksum(pkt, l4, pkt.length - l4, pseudo(pkt, f, pkt.length - l4)) === 0;
}

/** One IP packet of `f`: TCP (seq, flags) or UDP, with a right checksum unless `partial`. */
function packet(
  f: Flow,
  payload: Buffer,
  o: { seq?: number; ack?: number; flags?: number; id?: number; partial?: boolean } = {},
): Buffer {
  const ipLen = f.v6 ? 40 : 20;
  const opts = f.options ?? Buffer.alloc(0);
  const l4h = f.proto === TCP ? 20 + opts.length : 8;
  const pkt = Buffer.alloc(ipLen + l4h + payload.length);
  if (f.v6) {
    pkt.writeUInt32BE(0x60000000, 0);
    pkt.writeUInt16BE(l4h + payload.length, 4);
    pkt[6] = f.proto;
    pkt[7] = 64;
    f.src.copy(pkt, 8);
    f.dst.copy(pkt, 24);
  } else {
    pkt[0] = 0x45;
    pkt.writeUInt16BE(pkt.length, 2);
    pkt.writeUInt16BE(o.id ?? 7, 4);
    pkt.writeUInt16BE(0x4000, 6);
    pkt[8] = 64;
    pkt[9] = f.proto;
    f.src.copy(pkt, 12);
    f.dst.copy(pkt, 16);
    pkt.writeUInt16BE(internetChecksum(pkt, 0, 20), 10);
  }
  const l4 = ipLen;
  pkt.writeUInt16BE(f.sport, l4);
  pkt.writeUInt16BE(f.dport, l4 + 2);
  if (f.proto === TCP) {
    pkt.writeUInt32BE((o.seq ?? 1000) >>> 0, l4 + 4);
    pkt.writeUInt32BE(o.ack ?? 555, l4 + 8);
    pkt[l4 + 12] = (l4h / 4) << 4;
    pkt[l4 + 13] = o.flags ?? 0x10;
    pkt.writeUInt16BE(65_000, l4 + 14);
    opts.copy(pkt, l4 + 20);
  } else {
    pkt.writeUInt16BE(8 + payload.length, l4 + 4);
  }
  payload.copy(pkt, l4 + l4h);
  const at = l4 + (f.proto === TCP ? 16 : 6);
  const l4len = pkt.length - l4;
  if (o.partial) {
    // What the kernel hands over with NEEDS_CSUM: the pseudo-header's folded sum, not complemented.
    let s = pseudo(pkt, f, l4len);
    while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
    pkt.writeUInt16BE(s, at);
  } else {
    pkt.writeUInt16BE(internetChecksum(pkt, l4, l4len, pseudo(pkt, f, l4len)), at);
  }
  return pkt;
}

/** A vnet header and packet, as a read with offloads gets them. */
function withHeader(
  pkt: Buffer,
  h: { flags?: number; gso?: number; hdrLen?: number; gsoSize?: number; csumStart?: number; csumOffset?: number },
): Buffer {
  const v = Buffer.alloc(10);
  v[0] = h.flags ?? 0;
  v[1] = h.gso ?? 0;
  v.writeUInt16LE(h.hdrLen ?? 0, 2);
  v.writeUInt16LE(h.gsoSize ?? 0, 4);
  v.writeUInt16LE(h.csumStart ?? 0, 6);
  v.writeUInt16LE(h.csumOffset ?? 0, 8);
  return Buffer.concat([v, pkt]);
}

function superPacket(f: Flow, payload: Buffer, mss: number, o: { flags?: number; seq?: number; ecn?: boolean } = {}) {
  const pkt = packet(f, payload, { ...o, partial: true, id: 100 });
  const l4 = f.v6 ? 40 : 20;
  const tcp = f.proto === TCP;
  const gso = (tcp ? (f.v6 ? GSO.tcp6 : GSO.tcp4) : GSO.udp) | (o.ecn ? GSO.ecn : 0);
  const hdrLen = l4 + (tcp ? 20 + (f.options?.length ?? 0) : 8);
  return withHeader(pkt, { flags: 1, gso, hdrLen, gsoSize: mss, csumStart: l4, csumOffset: tcp ? 16 : 6 });
}

/** Splits `src` in batches of `capacity` until done; every packet of every call. */
function splitAll(src: Buffer, capacity: number, slot = 2048): { packets: Buffer[]; drops: number; calls: number } {
  const state = new Int32Array([src.length, 0, 0, 0]);
  const batch = new PacketBatch(capacity, slot);
  const packets: Buffer[] = [];
  let calls = 0;
  do {
    const n = segmentSuperPacket(src, state, batch);
    calls++;
    for (let i = 0; i < n; i++) packets.push(Buffer.from(batch.packet(i)));
    if (calls > 10_000) throw new Error('no progress');
  } while (state[0] !== 0);
  return { packets, drops: state[3] as number, calls };
}

function payloadOf(pkt: Buffer, f: Flow): Buffer {
  const l4 = f.v6 ? 40 : 20;
  return pkt.subarray(l4 + (f.proto === TCP ? ((pkt[l4 + 12] as number) >> 4) * 4 : 8));
}

/** A batch of packets in one buffer, for coalescing. */
function batchOf(packets: Buffer[]): { buf: Buffer; offs: Int32Array; lens: Int32Array } {
  const buf = Buffer.concat(packets);
  const offs = new Int32Array(packets.length);
  const lens = new Int32Array(packets.length);
  let at = 0;
  packets.forEach((p, i) => {
    offs[i] = at;
    lens[i] = p.length;
    at += p.length;
  });
  return { buf, offs, lens };
}

describe('TUN offloads: the split of super-packets (TSO/USO)', () => {
  for (const [name, f] of [
    ['TCP over IPv4', flow4()],
    ['TCP over IPv6', flow6()],
    ['TCP over IPv4 with timestamps', flow4({ options: Buffer.from('0101080a0000000100000002', 'hex') })],
    ['UDP over IPv4 (USO)', flow4({ proto: UDP })],
    ['UDP over IPv6 (USO)', flow6({ proto: UDP })],
  ] as const) {
    it(`${name}: MSS-sized packets, each a valid packet, in order, resumed across full batches`, () => {
      const data = randomBytes(10_001);
      const mss = 1348;
      const tcp = f.proto === TCP;
      const { packets, drops, calls } = splitAll(superPacket(f, data, mss, { flags: 0x19 | 0x80, seq: 0xfffff000 }), 3);
      assert.equal(drops, 0);
      assert.equal(packets.length, Math.ceil(data.length / mss));
      assert.ok(calls >= 3, 'the batch of 3 filled and the split went on in the next calls');
      let at = 0;
      packets.forEach((p, i) => {
        const last = i === packets.length - 1;
        const pl = payloadOf(p, f);
        assert.equal(pl.length, last ? data.length - mss * i : mss);
        assert.deepEqual(pl, data.subarray(at, at + pl.length));
        assert.ok(l4Valid(p, f), `segment ${i}: L4 checksum`);
        if (f.v6) assert.equal(p.readUInt16BE(4), p.length - 40);
        else {
          assert.equal(p.readUInt16BE(2), p.length);
          assert.equal(p.readUInt16BE(4), 100 + i, 'IPv4 IDs go up by one');
          assert.equal(internetChecksum(p, 0, 20), 0, 'IPv4 header checksum');
        }
        const l4 = f.v6 ? 40 : 20;
        if (tcp) {
          assert.equal(p.readUInt32BE(l4 + 4), (0xfffff000 + at) >>> 0, 'sequence numbers (wrapping)');
          const flags = p[l4 + 13] as number;
          assert.equal(Boolean(flags & 0x01), last, 'FIN on the last only');
          assert.equal(Boolean(flags & 0x08), last, 'PSH on the last only');
          assert.equal(Boolean(flags & 0x80), i === 0, 'CWR on the first only');
        } else {
          assert.equal(p.readUInt16BE(l4 + 4), 8 + pl.length, 'UDP length');
        }
        at += pl.length;
      });
    });
  }

  it('a packet that is no super-packet passes as it is; a partial checksum is finished', () => {
    const f = flow4();
    const right = packet(f, randomBytes(333));
    const partial = packet(f, randomBytes(333), { partial: true });
    for (const [p, h] of [
      [right, {}],
      [partial, { flags: 1, csumStart: 20, csumOffset: 16 }],
    ] as const) {
      const { packets, drops } = splitAll(withHeader(p, h), 4);
      assert.equal(drops, 0);
      assert.equal(packets.length, 1);
      assert.ok(l4Valid(packets[0] as Buffer, f));
      assert.deepEqual((packets[0] as Buffer).subarray(40), p.subarray(40), 'payload untouched');
    }
  });

  it('a finished checksum that comes to zero goes out as 0xffff (for UDP, zero means none; IPv6 forbids it)', () => {
    const f = flow6({ proto: UDP });
    const pkt = packet(f, randomBytes(101), { partial: true });
    // Make the sum over pseudo-header and datagram (its checksum field zero) fold to 0xffff, so the
    // checksum computes to 0: the last two octets (at an even offset of the datagram) adjust it.
    const l4len = pkt.length - 40;
    // Odd length: the datagram's last octet pairs with a zero; the pair before it is adjusted.
    const at = 40 + ((l4len - 1) & ~1) - 2;
    pkt.writeUInt16BE(0, 46);
    pkt.writeUInt16BE(0, at);
    let sum = onesSum(pkt, 40, l4len, ipv6PseudoHeaderSum(pkt, 0, l4len, UDP));
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
    pkt.writeUInt16BE((0xffff - sum) & 0xffff, at);
    let pseudoOnly = ipv6PseudoHeaderSum(pkt, 0, l4len, UDP);
    while (pseudoOnly > 0xffff) pseudoOnly = (pseudoOnly & 0xffff) + (pseudoOnly >>> 16);
    pkt.writeUInt16BE(pseudoOnly, 46);
    const { packets } = splitAll(withHeader(pkt, { flags: 1, csumStart: 40, csumOffset: 6 }), 2);
    assert.equal(packets.length, 1);
    const out = packets[0] as Buffer;
    assert.equal(out.readUInt16BE(46), 0xffff);
    assert.ok(l4Valid(out, f));
  });

  it('refuses what cannot be split, counted, with no packet made', () => {
    const f = flow4();
    const good = superPacket(f, randomBytes(4000), 1000);
    const bad: Buffer[] = [
      Buffer.alloc(5), // shorter than the header
      withHeader(Buffer.from([0x10, 0, 0, 0]), {}), // not IP
      withHeader(packet(f, randomBytes(10)), { gso: 3 }), // UFO (never enabled)
      Buffer.from(good).fill(0, 4, 6), // gso_size 0
      (() => {
        const b = Buffer.from(good);
        b.writeUInt16LE(4000, 4); // segments larger than a slot of 2048
        return b;
      })(),
      (() => {
        const b = Buffer.from(good);
        b[1] = GSO.tcp6; // TCPv6 on an IPv4 packet
        return b;
      })(),
      (() => {
        const b = Buffer.from(good);
        b.writeUInt16LE(4090, 6); // checksum start past the packet
        return b;
      })(),
      withHeader(packet(f, randomBytes(2100)), {}), // a packet larger than a slot
      superPacket(f, Buffer.alloc(0), 1000), // headers and no payload
      (() => {
        // IPv4 options (source routing would change the pseudo-header's destination)
        const p = packet(f, randomBytes(3000), { partial: true });
        const withOpt = Buffer.concat([p.subarray(0, 20), Buffer.from([1, 1, 1, 0]), p.subarray(20)]);
        withOpt[0] = 0x46;
        withOpt.writeUInt16BE(withOpt.length, 2);
        return withHeader(withOpt, { flags: 1, gso: GSO.tcp4, gsoSize: 1000, csumStart: 24, csumOffset: 16 });
      })(),
      (() => {
        // an IPv6 extension header (a routing header's final destination would be needed)
        const g = flow6();
        const p = packet(g, randomBytes(3000), { partial: true });
        const ext = Buffer.from([6, 0, 0, 0, 0, 0, 0, 0]); // next header TCP, 8 octets
        const withExt = Buffer.concat([p.subarray(0, 40), ext, p.subarray(40)]);
        withExt[6] = 43;
        withExt.writeUInt16BE(withExt.length - 40, 4);
        return withHeader(withExt, { flags: 1, gso: GSO.tcp6, gsoSize: 1000, csumStart: 48, csumOffset: 16 });
      })(),
    ];
    for (const b of bad) {
      const { packets, drops } = splitAll(b, 8);
      assert.equal(packets.length, 0, b.subarray(0, 12).toString('hex'));
      assert.equal(drops, 1);
    }
  });

  it('fuzz: any header and packet give valid lengths or a counted drop, never an exception', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 0, maxLength: 3000 }),
        fc.record({
          flags: fc.nat(3),
          gso: fc.constantFrom(0, 1, 3, 4, 5, 0x81, 0x84, 0xff),
          hdrLen: fc.nat(200),
          gsoSize: fc.nat(3000),
          csumStart: fc.nat(100),
          csumOffset: fc.nat(40),
        }),
        fc.boolean(),
        (bytes, h, ip4) => {
          const pkt = Buffer.from(bytes);
          if (pkt.length > 0) pkt[0] = ip4 ? 0x45 : 0x60;
          const src = withHeader(pkt, h);
          const { packets, drops } = splitAll(src, 5, 1500);
          assert.ok(drops <= 1);
          for (const p of packets) assert.ok(p.length > 0 && p.length <= 1500);
        },
      ),
      { numRuns: 3000 },
    );
  });
});

describe('TUN offloads: coalescing TCP segments for the write (GRO)', () => {
  const mss = 1000;
  const segments = (f: Flow, data: Buffer, seq: number, flagsLast = 0x10) => {
    const out: Buffer[] = [];
    for (let at = 0; at < data.length; at += mss) {
      const last = at + mss >= data.length;
      out.push(
        packet(f, data.subarray(at, at + mss), { seq: seq + at, flags: last ? flagsLast : 0x10, id: 1 + at / mss }),
      );
    }
    return out;
  };
  const vnet = (b: Buffer) => ({
    flags: b[0] as number,
    gso: b[1] as number,
    hdrLen: b.readUInt16LE(2),
    gsoSize: b.readUInt16LE(4),
    csumStart: b.readUInt16LE(6),
    csumOffset: b.readUInt16LE(8),
  });

  for (const [name, f] of [
    ['IPv4', flow4()],
    ['IPv6', flow6()],
  ] as const) {
    it(`${name}: one flow's segments become one super-packet the kernel can take, and split back byte for byte`, () => {
      const data = randomBytes(7_500);
      const segs = segments(f, data, 5000, 0x18);
      const { buf, offs, lens } = batchOf(segs);
      const items = coalesceForTun(buf, offs, lens, segs.length);
      assert.equal(items.length, 1);
      const item = items[0] as Buffer;
      const h = vnet(item);
      assert.equal(h.flags, 1, 'NEEDS_CSUM');
      assert.equal(h.gso, f.v6 ? GSO.tcp6 : GSO.tcp4);
      assert.equal(h.gsoSize, mss);
      assert.equal(h.csumStart, f.v6 ? 40 : 20);
      assert.equal(h.csumOffset, 16);
      const pkt = item.subarray(10);
      assert.deepEqual(payloadOf(pkt, f), data);
      assert.equal(pkt[(f.v6 ? 40 : 20) + 13], 0x18, 'PSH of the last segment kept');
      if (!f.v6) assert.equal(internetChecksum(pkt, 0, 20), 0);
      // What the kernel would do with it when forwarding: split it again. The segments are the
      // originals (IPv4 IDs run on from the first; the last keeps its PSH).
      const { packets } = splitAll(item, 16);
      assert.equal(packets.length, segs.length);
      packets.forEach((p, i) => assert.deepEqual(p, segs[i]));
    });
  }

  it('interleaved flows each coalesce in order; what may not join stays in its place in its flow', () => {
    const a = flow4();
    const b = flow4({ sport: 40_001 });
    const c = flow6();
    const da = randomBytes(4000);
    const db = randomBytes(3000);
    const [a0, a1, a2, a3] = segments(a, da, 1);
    const [b0, b1, b2] = segments(b, db, 1);
    const badSum = packet(c, randomBytes(mss), { seq: 9 });
    badSum[70] = (badSum[70] as number) ^ 0xff;
    const fin = packet(a, Buffer.alloc(0), { seq: 1 + 4000, flags: 0x11 });
    const gap = packet(b, randomBytes(mss), { seq: 1 + 5000 }); // a hole before it
    const order = [a0, b0, a1, b1, badSum, a2, a3, fin, b2, gap] as Buffer[];
    const { buf, offs, lens } = batchOf(order);
    const items = coalesceForTun(buf, offs, lens, order.length);
    assert.equal(items.length, 5);
    const [sa, sb, sc, sfin, sgap] = items.map((it) => it.subarray(10)) as [Buffer, Buffer, Buffer, Buffer, Buffer];
    assert.deepEqual(payloadOf(sa, a), da, 'flow a: one super-packet, in order');
    assert.deepEqual(payloadOf(sb, b), db, 'flow b, b2 joined across the others');
    assert.deepEqual(sc, badSum, 'a wrong checksum is written as it is (the kernel drops it)');
    assert.equal(items[2]?.[1], 0);
    assert.deepEqual(sfin, fin, 'the FIN after flow a');
    assert.deepEqual(sgap, gap, 'a sequence gap starts over');
  });

  it('segments whose windows differ are not joined (the kernel GRO compares the whole flag word but PSH)', () => {
    const f = flow4();
    const one = packet(f, randomBytes(mss), { seq: 1 });
    const two = packet(f, randomBytes(mss), { seq: 1 + mss });
    two.writeUInt16BE(1234, 20 + 14);
    two.writeUInt16BE(0, 20 + 16);
    two.writeUInt16BE(internetChecksum(two, 20, two.length - 20, pseudo(two, f, two.length - 20)), 20 + 16);
    const { buf, offs, lens } = batchOf([one, two]);
    assert.equal(coalesceForTun(buf, offs, lens, 2).length, 2);
  });

  it('never more than 64 KiB in one super-packet; a smaller segment ends it', () => {
    const f = flow4();
    const data = randomBytes(mss * 70);
    const segs = segments(f, data, 1);
    const { buf, offs, lens } = batchOf(segs);
    const items = coalesceForTun(buf, offs, lens, segs.length);
    assert.ok(items.length >= 2);
    for (const it of items) assert.ok(it.length - 10 <= 65_535);
    assert.deepEqual(Buffer.concat(items.map((it) => payloadOf(it.subarray(10), f))), data);
    const short = [
      packet(f, randomBytes(1000), { seq: 1 }),
      packet(f, randomBytes(500), { seq: 1001 }),
      packet(f, randomBytes(500), { seq: 1501 }),
    ];
    const s = batchOf(short);
    assert.equal(coalesceForTun(s.buf, s.offs, s.lens, 3).length, 2, 'a segment after a short one is not joined');
  });

  it("fuzz: random batches of segments of a few flows split back to exactly the segments, in each flow's order", () => {
    const flows = [flow4(), flow4({ sport: 1 }), flow6(), flow6({ dport: 2 })];
    fc.assert(
      fc.property(
        fc.array(
          fc.record({ flow: fc.nat(3), len: fc.integer({ min: 0, max: 1400 }), fin: fc.boolean(), skip: fc.nat(3) }),
          { minLength: 1, maxLength: 64 },
        ),
        (spec) => {
          const seq = [1, 1, 1, 1];
          const packets = spec.map((s) => {
            const f = flows[s.flow] as Flow;
            if (s.skip === 0) seq[s.flow] = (seq[s.flow] as number) + 7; // now and then a hole
            const p = packet(f, randomBytes(s.len), { seq: seq[s.flow], flags: s.fin && s.len === 0 ? 0x11 : 0x10 });
            seq[s.flow] = (seq[s.flow] as number) + s.len;
            return { f, p };
          });
          const { buf, offs, lens } = batchOf(packets.map((x) => x.p));
          const items = coalesceForTun(buf, offs, lens, packets.length);
          const back = items.flatMap((it) => (it[1] === 0 ? [it.subarray(10)] : splitAll(it, 64).packets));
          // Per flow, the packets come back the same and in the same order.
          for (const f of flows) {
            const key = (p: Buffer) =>
              f.v6 === ((p[0] as number) >> 4 === 6) &&
              p.readUInt16BE(f.v6 ? 40 : 20) === f.sport &&
              p.readUInt16BE((f.v6 ? 40 : 20) + 2) === f.dport;
            const sent = packets.filter((x) => x.f === f).map((x) => x.p);
            const got = back.filter(key);
            assert.equal(got.length, sent.length);
            got.forEach((g, i) => {
              const s = sent[i] as Buffer;
              // IPv4 IDs of a split run on from the first segment's; the rest is the original.
              if (!f.v6) {
                assert.deepEqual(g.subarray(0, 4), s.subarray(0, 4));
                assert.deepEqual(g.subarray(6, 10), s.subarray(6, 10));
                assert.deepEqual(g.subarray(12), s.subarray(12));
              } else assert.deepEqual(g, s);
            });
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  it('fuzz: any bytes as packets are written as they are or coalesced, never an exception', () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ minLength: 1, maxLength: 1600 }), { minLength: 1, maxLength: 64 }),
        (raw) => {
          const packets = raw.map((r, i) => {
            const p = Buffer.from(r);
            // Mostly IP-looking, so the parsers get past the first byte.
            if (i % 3 !== 0) p[0] = i % 2 ? 0x45 : 0x60;
            return p;
          });
          const { buf, offs, lens } = batchOf(packets);
          const items = coalesceForTun(buf, offs, lens, packets.length);
          assert.ok(items.length >= 1 && items.length <= packets.length);
          for (const it of items) assert.ok(it.length > 10 && it.length <= 65_545);
        },
      ),
      { numRuns: 2000 },
    );
  });
});
