/**
 * The TypeScript ESP behind the batch interface (src/dataplane/batch.ts): the same packets as the
 * addon's contexts (AES-GCM, where both seal the same octets), opened by either, the same failure
 * codes; and the suites only TypeScript carries (NULL + HMAC) through the same calls.
 */
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { TsEspOpener, TsEspSealer } from '../src/dataplane/batch.ts';
import { EspInbound, EspOutbound } from '../src/esp/esp.ts';
import { EspGcmBatch, openFailure, PacketBatch } from '../src/io/native.ts';

const N = 12;

function gather(payloads: Buffer[]) {
  const src = new PacketBatch(N, 2048);
  const nh = new Uint8Array(N);
  payloads.forEach((p, i) => {
    src.set(i, p);
    nh[i] = i % 2 ? 4 : 41;
  });
  return { src, nh };
}

describe('ESP batch interface: the TypeScript ESP behind the addon’s calls', () => {
  it('AES-GCM: the TypeScript sealer writes the addon’s octets, and each opens the other’s', () => {
    for (const esn of [false, true]) {
      const keymat = randomBytes(36);
      const first = esn ? 2 ** 32 - 4 : 1;
      const params = { spi: 0x2001, cipher: 'aes-gcm-16', encrKey: keymat, esn } as const;
      const ts = new TsEspSealer(new EspOutbound(params));
      const addon = new EspGcmBatch(keymat.subarray(0, 32), keymat.subarray(32), { esn, direction: 'seal' });
      const payloads = Array.from({ length: N }, (_, i) => randomBytes(1 + ((i * 113) % 1300)));
      const { src, nh } = gather(payloads);
      const a = new PacketBatch(N, 2048);
      const b = new PacketBatch(N, 2048);
      ts.seal(src.buf, src.offsets, src.lengths, nh, N, a, 0, 0x2001, first);
      addon.seal(src.buf, src.offsets, src.lengths, nh, N, b, 0, 0x2001, first);
      for (let i = 0; i < N; i++) assert.deepEqual(a.packet(i), b.packet(i), `packet ${i}`);
      const highs = new Uint32Array(N).map((_, i) => Math.floor((first + i) / 2 ** 32));
      const opened = new PacketBatch(N, 2048);
      const nhOut = new Uint8Array(N);
      new TsEspOpener(new EspInbound(params)).open(b.buf, b.offsets, b.lengths, highs, N, opened, nhOut);
      for (let i = 0; i < N; i++) {
        assert.deepEqual(opened.packet(i), payloads[i]);
        assert.equal(nhOut[i], nh[i]);
      }
      addon.close();
    }
  });

  it('NULL + HMAC-SHA-512 through the same calls; failures as the addon reports them (integrity, malformed, padding)', () => {
    const params = {
      spi: 0x3001,
      cipher: 'null',
      integ: 'sha512-256',
      encrKey: Buffer.alloc(0),
      integKey: randomBytes(64),
    } as const;
    const payloads = Array.from({ length: N }, (_, i) => randomBytes(20 + i * 50));
    const { src, nh } = gather(payloads);
    const sealed = new PacketBatch(N, 2048);
    new TsEspSealer(new EspOutbound(params)).seal(src.buf, src.offsets, src.lengths, nh, N, sealed, 0, 0x3001, 1);
    const tamper = (i: number, at: number) => {
      const p = Buffer.from(sealed.packet(i));
      p[at] = (p[at] as number) ^ 0x80;
      sealed.set(i, p);
    };
    tamper(2, 20); // the payload: the ICV no longer verifies
    sealed.lengths[5] = 10; // too short for any ESP packet of this SA
    // Packet 7 with padding that is not 1, 2, 3 … under a valid ICV (NULL: the plaintext is on the wire).
    const body = Buffer.concat([
      Buffer.from([0, 0, 0x30, 0x01, 0, 0, 0, 8]),
      Buffer.from('abcd'),
      Buffer.from([9, 9, 2, 4]),
    ]);
    const icv = createHmac('sha512', params.integKey).update(body).digest().subarray(0, 32);
    sealed.set(7, Buffer.concat([body, icv]));
    const opened = new PacketBatch(N, 2048);
    const nhOut = new Uint8Array(N);
    const highs = new Uint32Array(N);
    new TsEspOpener(new EspInbound(params)).open(sealed.buf, sealed.offsets, sealed.lengths, highs, N, opened, nhOut);
    assert.equal(openFailure(opened.lengths[2] as number), 'integrity');
    assert.equal(openFailure(opened.lengths[5] as number), 'malformed');
    assert.equal(openFailure(opened.lengths[7] as number), 'padding');
    for (const i of [0, 1, 3, 4, 6, 8, 9, 10, 11]) assert.deepEqual(opened.packet(i), payloads[i], `packet ${i}`);
  });
});
