/**
 * ESP for one SA (RFC 4303/4106/4868): every cipher and integrity combination round trips with and
 * without extended sequence numbers; output matches the AES-GCM sealer strongSwan already verified
 * on the wire; any tampering, replay or bad padding is refused without changing state; the replay
 * window agrees with a naive model; ESN inference survives the 2^32 wrap and late packets.
 */
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { type EspCipher, EspError, EspInbound, type EspInteg, EspOutbound, type EspSaParams } from '../src/esp/esp.ts';
import { gcmSa, openGcm, sealGcm } from '../src/esp/gcm.ts';
import { ReplayWindow } from '../src/esp/replay.ts';

const suites: [string, Omit<EspSaParams, 'spi'>][] = [];
for (const bits of [128, 256])
  suites.push([`AES-GCM-16-${bits}`, { cipher: 'aes-gcm-16', encrKey: randomBytes(bits / 8 + 4) }]);
for (const bits of [128, 256])
  for (const [integ, keyLen] of [
    ['sha1-96', 20],
    ['sha256-128', 32],
    ['sha384-192', 48],
    ['sha512-256', 64],
  ] as [EspInteg, number][])
    suites.push([
      `AES-CBC-${bits} + HMAC-${integ}`,
      { cipher: 'aes-cbc', encrKey: randomBytes(bits / 8), integ, integKey: randomBytes(keyLen) },
    ]);
suites.push([
  'NULL + HMAC-sha256-128 (integrity only)',
  { cipher: 'null' as EspCipher, encrKey: Buffer.alloc(0), integ: 'sha256-128', integKey: randomBytes(32) },
]);

const pair = (p: Omit<EspSaParams, 'spi'>, esn: boolean, extra: Partial<EspSaParams> = {}) => ({
  out: new EspOutbound({ spi: 0xc0de0001, ...p, esn, ...extra }),
  inb: new EspInbound({ spi: 0xc0de0001, ...p, esn, ...extra }),
});

describe('ESP SA', () => {
  for (const [name, p] of suites)
    for (const esn of [false, true])
      it(`${name}${esn ? ', ESN' : ''}: round trip for any payload; aligned; encrypted unless NULL`, () => {
        const { out, inb } = pair(p, esn);
        fc.assert(
          fc.property(
            fc.uint8Array({ minLength: 0, maxLength: 1500 }),
            fc.integer({ min: 0, max: 255 }),
            (data, nh) => {
              const payload = Buffer.from(data);
              const packet = out.seal(payload, nh);
              assert.equal(packet.readUInt32BE(0), 0xc0de0001);
              assert.equal(packet.length, payload.length + out.overhead(payload.length));
              assert.equal((packet.length - 8 - out.ivLen - out.icvLen) % out.block, 0);
              if (p.cipher !== 'null' && payload.length >= 16) assert.ok(!packet.includes(payload.subarray(0, 16)));
              const opened = inb.open(packet);
              assert.deepEqual(opened.payload, payload);
              assert.equal(opened.nextHeader, nh);
            },
          ),
          { numRuns: 150 },
        );
        assert.equal(inb.packets, out.packets);
      });

  it('AES-GCM output is what the sealer strongSwan accepted on the wire produces, and vice versa', () => {
    const keymat = randomBytes(36);
    const spi = Buffer.from('c0de0002', 'hex');
    const out = new EspOutbound({ spi: 0xc0de0002, cipher: 'aes-gcm-16', encrKey: keymat });
    const inb = new EspInbound({ spi: 0xc0de0002, cipher: 'aes-gcm-16', encrKey: keymat });
    for (let i = 1; i <= 5; i++) {
      const payload = randomBytes(20 + i * 37);
      const ours = out.seal(payload, 4);
      assert.deepEqual(ours, sealGcm(gcmSa(spi, keymat), i, payload, 4));
      assert.deepEqual(openGcm(gcmSa(spi, keymat), ours).payload, payload);
      const back = inb.open(sealGcm(gcmSa(spi, keymat), i, payload, 41));
      assert.deepEqual([back.payload, back.nextHeader, back.seq], [payload, 41, i]);
    }
  });

  for (const [name, p] of suites.filter((_, i) => i % 3 === 0))
    it(`${name}: every flipped bit is refused and leaves the SA as it was`, () => {
      const { out, inb } = pair(p, true);
      const packet = out.seal(randomBytes(100), 4);
      fc.assert(
        fc.property(fc.integer({ min: 0, max: packet.length * 8 - 1 }), (bit) => {
          const bad = Buffer.from(packet);
          bad[bit >> 3] = (bad[bit >> 3] as number) ^ (1 << (bit & 7));
          assert.throws(() => inb.open(bad), EspError);
          assert.equal(inb.replay.top, 0);
          assert.equal(inb.packets, 0);
        }),
        { numRuns: 300 },
      );
      assert.equal(inb.open(packet).seq, 1, 'the genuine packet still opens');
    });

  it('refuses replays and packets older than the window; accepts reordering inside it', () => {
    const [, p] = suites[0] as [string, Omit<EspSaParams, 'spi'>];
    const { out, inb } = pair(p, false, { replayWindow: 64 });
    const packets = Array.from({ length: 200 }, () => out.seal(Buffer.from('x'), 4));
    inb.open(packets[150] as Buffer);
    assert.throws(
      () => inb.open(packets[150] as Buffer),
      (e: EspError) => e.reason === 'replay',
    );
    assert.equal(inb.open(packets[120] as Buffer).seq, 121, 'inside the window, late');
    assert.throws(
      () => inb.open(packets[50] as Buffer),
      (e: EspError) => e.reason === 'replay',
    );
    assert.equal(inb.open(packets[199] as Buffer).seq, 200);
  });

  it('pads with the default sequence and refuses other padding', () => {
    const p = suites.find(([n]) => n.startsWith('NULL'))?.[1] as Omit<EspSaParams, 'spi'>;
    const { out, inb } = pair(p, false);
    const packet = out.seal(Buffer.from('abc'), 17); // 3 + 2 → 3 octets of padding for 4-octet alignment
    const body = packet.subarray(8, packet.length - out.icvLen);
    assert.deepEqual([...body.subarray(3)], [1, 2, 3, 3, 17]);
    // A wrong pad octet, with a valid ICV (a sender bug, not an attacker), is still refused.
    const forged = new EspOutbound({ spi: 0xc0de0001, ...p });
    const evil = forged.seal(Buffer.from('abc'), 17);
    evil[8 + 4] = 9;
    const h = (forged as unknown as { mac(b: Buffer, e: number, s: number): Buffer }).mac(
      evil,
      evil.length - out.icvLen,
      0,
    );
    h.copy(evil, evil.length - out.icvLen);
    assert.throws(
      () => inb.open(evil),
      (e: EspError) => e.reason === 'padding',
    );
  });

  it('without ESN the sender stops at 2^32 - 1 (the SA must be rekeyed); with ESN it wraps and the receiver follows', () => {
    const [, p] = suites[0] as [string, Omit<EspSaParams, 'spi'>];
    const plain = new EspOutbound({ spi: 1, ...p, lastSeq: 2 ** 32 - 2 });
    plain.seal(Buffer.from('a'), 4);
    assert.equal(plain.remaining, 0);
    assert.throws(
      () => plain.seal(Buffer.from('a'), 4),
      (e: EspError) => e.reason === 'sequence-exhausted',
    );
    const out = new EspOutbound({ spi: 2, ...p, esn: true, lastSeq: 2 ** 32 - 5 });
    const inb = new EspInbound({ spi: 2, ...p, esn: true });
    const packets = Array.from({ length: 10 }, () => out.seal(Buffer.from('b'), 4));
    // The receiver's window top must be near the sender's: start it from the first packets.
    inb.replay.top = 2 ** 32 - 10;
    const seqs = [0, 1, 2, 3, 5, 6, 4, 9, 8].map((i) => inb.open(packets[i] as Buffer).seq);
    assert.deepEqual(
      seqs,
      [0, 1, 2, 3, 5, 6, 4, 9, 8].map((i) => 2 ** 32 - 4 + i),
    );
    assert.equal(packets[5]?.readUInt32BE(4), 1, 'the low half on the wire wrapped');
  });
});

describe('replay window', () => {
  it('agrees with a naive model of "accept each new number once, within the window"', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 5000 }), { maxLength: 400 }),
        fc.constantFrom(32, 64, 1024),
        (seqs, size) => {
          const w = new ReplayWindow(size);
          const seen = new Set<number>();
          let top = 0;
          for (const s of seqs) {
            const expected = !seen.has(s) && s + size > top;
            assert.equal(w.check(s), expected, `seq ${s} top ${top}`);
            if (expected) {
              assert.ok(w.update(s));
              seen.add(s);
              top = Math.max(top, s);
            }
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('batched AES-GCM in the addon (OpenSSL of the node binary)', () => {
  it('seals byte-identically to the TypeScript ESP and opens its packets, with and without ESN; refuses tampering', async () => {
    const { EspGcmBatch, PacketBatch } = await import('../src/io/native.ts');
    for (const esn of [false, true])
      for (const keyLen of [16, 32]) {
        const keymat = randomBytes(keyLen + 4);
        const key = keymat.subarray(0, keyLen);
        const salt = keymat.subarray(keyLen);
        const first = esn ? 2 ** 32 - 3 : 7;
        const js = new EspOutbound({ spi: 0xabc, cipher: 'aes-gcm-16', encrKey: keymat, esn, lastSeq: first - 1 });
        const sealer = new EspGcmBatch(key, salt, esn, true);
        const opener = new EspGcmBatch(key, salt, esn, false);
        const n = 20;
        const src = new PacketBatch(n, 2048);
        const nh = new Uint8Array(n);
        const payloads = Array.from({ length: n }, (_, i) => randomBytes(1 + ((i * 97) % 1400)));
        payloads.forEach((p, i) => {
          src.set(i, p);
          nh[i] = i % 2 ? 4 : 41;
        });
        const sealed = new PacketBatch(n, 2048);
        sealer.seal(src.buf, src.offsets, src.lengths, nh, n, sealed, 0, 0xabc, first);
        for (let i = 0; i < n; i++)
          assert.deepEqual(sealed.packet(i), js.seal(payloads[i] as Buffer, nh[i] as number), `packet ${i}`);
        const tampered = Buffer.from(sealed.packet(3));
        tampered[30] = (tampered[30] as number) ^ 1;
        sealed.set(3, tampered);
        const highs = new Uint32Array(n).map((_, i) => Math.floor((first + i) / 2 ** 32));
        const opened = new PacketBatch(n, 2048);
        const nhOut = new Uint8Array(n);
        opener.open(sealed.buf, sealed.offsets, sealed.lengths, highs, n, opened, nhOut);
        for (let i = 0; i < n; i++) {
          if (i === 3) {
            assert.equal(opened.lengths[3], -1, 'integrity failure reported');
            continue;
          }
          assert.deepEqual(opened.packet(i), payloads[i]);
          assert.equal(nhOut[i], nh[i]);
        }
        sealer.close();
        opener.close();
      }
  });
});

describe('AH (RFC 4302) over IPv4', () => {
  it('round trips; mutable header fields may change in transit, everything else is authenticated; replays refused', async () => {
    const { AhInbound, AhOutbound } = await import('../src/esp/ah.ts');
    const { internetChecksum } = await import('../src/packet/checksum.ts');
    for (const [integ, len] of [
      ['sha256-128', 32],
      ['sha512-256', 64],
    ] as const)
      for (const esn of [false, true]) {
        const key = randomBytes(len);
        const out = new AhOutbound({ spi: 0x4242, integ, key, esn });
        const inb = new AhInbound({ spi: 0x4242, integ, key, esn });
        const src = Buffer.from([192, 0, 2, 1]);
        const dst = Buffer.from([192, 0, 2, 2]);
        const payload = randomBytes(200);
        const pkt = out.seal(payload, 6, src, dst);
        assert.equal(pkt[9], 51);
        assert.equal(internetChecksum(pkt, 0, 20), 0, 'a valid IPv4 header checksum');
        // A router lowers the TTL and rewrites TOS and the checksum: still authentic.
        const routed = Buffer.from(pkt);
        routed[8] = 63;
        routed[1] = 0x10;
        routed.writeUInt16BE(0, 10);
        routed.writeUInt16BE(internetChecksum(routed, 0, 20), 10);
        const opened = inb.open(routed);
        assert.deepEqual([opened.payload, opened.nextHeader], [payload, 6]);
        assert.throws(
          () => inb.open(routed),
          (e: EspError) => e.reason === 'replay',
        );
        assert.equal(
          pkt.length,
          20 + (integ === 'sha256-128' ? 32 : 48) + 200,
          'AH padded to 64 bits (as Linux expects)',
        );
        for (const at of [4, 12, 16, 24, 40, pkt.length - 1]) {
          const bad = out.seal(payload, 6, src, dst);
          bad[at] = (bad[at] as number) ^ 1;
          assert.throws(() => inb.open(bad), EspError, `octet ${at} is authenticated`);
        }
      }
  });

  it('accepts an AH with only 32-bit alignment (RFC 4302 minimum): HMAC-SHA-256-128 over the zeroed header, computed here independently', async () => {
    const { AhInbound } = await import('../src/esp/ah.ts');
    const { internetChecksum } = await import('../src/packet/checksum.ts');
    const key = randomBytes(32);
    const payload = randomBytes(64);
    const pkt = Buffer.alloc(20 + 28 + payload.length);
    pkt[0] = 0x45;
    pkt.writeUInt16BE(pkt.length, 2);
    pkt.writeUInt16BE(0x1234, 4);
    pkt[9] = 51;
    Buffer.from([198, 51, 100, 7]).copy(pkt, 12);
    Buffer.from([198, 51, 100, 8]).copy(pkt, 16);
    pkt[20] = 17; // next header UDP
    pkt[21] = 28 / 4 - 2;
    pkt.writeUInt32BE(0x777, 24);
    pkt.writeUInt32BE(1, 28);
    payload.copy(pkt, 48);
    // TOS, flags, TTL, checksum and the ICV are zero at this point: exactly what is authenticated.
    createHmac('sha256', key).update(pkt).digest().subarray(0, 16).copy(pkt, 32);
    pkt[8] = 64;
    pkt.writeUInt16BE(0x4000, 6);
    pkt.writeUInt16BE(internetChecksum(pkt, 0, 20), 10);
    const opened = new AhInbound({ spi: 0x777, integ: 'sha256-128', key }).open(pkt);
    assert.deepEqual([opened.payload, opened.nextHeader, opened.seq], [payload, 17, 1]);
  });
});

describe('transport mode through a NAT: TCP/UDP checksum recomputed for our addresses (RFC 3948 §3.1.2)', () => {
  it('a segment checksummed for the NAT address verifies for ours after the fix-up; UDP without checksum stays 0', async () => {
    const { recomputeTransportChecksum, onesSum, internetChecksum } = await import('../src/packet/checksum.ts');
    const verify = (pkt: Buffer) =>
      internetChecksum(pkt, 20, pkt.length - 20, onesSum(pkt, 12, 8) + (pkt[9] as number) + pkt.length - 20);
    for (const proto of [6, 17]) {
      const pkt = Buffer.alloc(20 + 200);
      pkt[0] = 0x45;
      pkt[9] = proto;
      randomBytes(180).copy(pkt, 40);
      Buffer.from([203, 0, 113, 2]).copy(pkt, 12);
      Buffer.from([203, 0, 113, 1]).copy(pkt, 16); // the NAT's public address, as the peer saw us
      if (proto === 17) pkt.writeUInt16BE(200, 24);
      const at = proto === 6 ? 36 : 26;
      pkt.writeUInt16BE(0, at);
      pkt.writeUInt16BE(verify(pkt), at);
      assert.equal(verify(pkt), 0, 'valid for the translated address');
      Buffer.from([198, 51, 100, 10]).copy(pkt, 16); // our own address, written by the data plane
      assert.notEqual(verify(pkt), 0, 'no longer valid');
      recomputeTransportChecksum(pkt, 0, pkt.length);
      assert.equal(verify(pkt), 0, 'valid again');
    }
    const udp = Buffer.alloc(20 + 16);
    udp[0] = 0x45;
    udp[9] = 17;
    udp.writeUInt16BE(16, 24);
    recomputeTransportChecksum(udp, 0, udp.length);
    assert.equal(udp.readUInt16BE(26), 0);
  });
});
