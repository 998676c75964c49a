import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { payloadsText } from '../src/ike/trace.ts';
import { decodeMessage, encodeMessage, IkeDecodeError, type Payload, type Proposal } from '../src/ike/wire/codec.ts';
import {
  EncrId,
  ExchangeType,
  Flags,
  IntegId,
  KeId,
  NotifyType,
  PayloadType,
  PrfId,
  ProtocolId,
  TransformType,
} from '../src/ike/wire/constants.ts';
import { Capture } from '../src/lab/capture.ts';
import { Lab } from '../src/lab/lab.ts';
import { Charon, pskHostTunnel } from '../src/lab/strongswan.ts';
import { hostToHost } from '../src/lab/topology.ts';

const header = {
  spiI: Buffer.alloc(8, 1),
  spiR: Buffer.alloc(8),
  exchange: ExchangeType.IKE_SA_INIT,
  flags: Flags.INITIATOR,
  messageId: 0,
};

const ikeProposal: Proposal = {
  number: 1,
  protocol: ProtocolId.IKE,
  spi: Buffer.alloc(0),
  transforms: [
    { type: TransformType.ENCR, id: EncrId.AES_CBC, keyLength: 256 },
    { type: TransformType.PRF, id: PrfId.HMAC_SHA2_256 },
    { type: TransformType.INTEG, id: IntegId.HMAC_SHA2_256_128 },
    { type: TransformType.KE, id: KeId.MODP_2048 },
  ],
};

function initPayloads(): Payload[] {
  return [
    {
      type: PayloadType.SA,
      proposals: [
        ikeProposal,
        {
          ...ikeProposal,
          number: 2,
          transforms: [
            { type: TransformType.ENCR, id: EncrId.AES_GCM_16, keyLength: 128 },
            { type: TransformType.PRF, id: PrfId.HMAC_SHA2_384 },
            { type: TransformType.KE, id: KeId.ECP_256 },
          ],
        },
      ],
    },
    { type: PayloadType.KE, group: KeId.MODP_2048, data: Buffer.alloc(256, 7) },
    { type: PayloadType.NONCE, data: Buffer.alloc(32, 9) },
    {
      type: PayloadType.NOTIFY,
      protocol: 0,
      spi: Buffer.alloc(0),
      notify: NotifyType.NAT_DETECTION_SOURCE_IP,
      data: Buffer.alloc(20, 1),
    },
    {
      type: PayloadType.NOTIFY,
      protocol: ProtocolId.ESP,
      spi: Buffer.from([1, 2, 3, 4]),
      notify: NotifyType.REKEY_SA,
      data: Buffer.alloc(0),
    },
    { type: PayloadType.VENDOR_ID, data: Buffer.from('consec') },
    {
      type: PayloadType.TSi,
      selectors: [
        {
          type: 7,
          ipProtocol: 6,
          startPort: 0,
          endPort: 65535,
          start: Buffer.from([192, 0, 2, 1]),
          end: Buffer.from([192, 0, 2, 1]),
        },
      ],
    },
    {
      type: PayloadType.DELETE,
      protocol: ProtocolId.ESP,
      spiSize: 4,
      spis: [Buffer.from([0, 0, 0, 1]), Buffer.from([0, 0, 0, 2])],
    },
    { type: PayloadType.CP, cfgType: 1, attributes: [{ type: 1, value: Buffer.alloc(0) }] },
    { type: PayloadType.IDi, idType: 2, data: Buffer.from('alice.example') },
    { type: PayloadType.AUTH, method: 2, data: Buffer.alloc(32, 3) },
    { type: PayloadType.CERTREQ, encoding: 4, data: Buffer.alloc(20, 5) },
  ];
}

const normal = (ps: Payload[]) => ps.map((p) => ({ critical: false, ...p }));

describe('IKEv2 codec', () => {
  it('round-trips every payload kind', () => {
    const wire = encodeMessage(header, initPayloads());
    const msg = decodeMessage(wire);
    assert.equal(msg.header.exchange, ExchangeType.IKE_SA_INIT);
    assert.equal(msg.header.length, wire.length);
    assert.deepEqual(msg.payloads, normal(initPayloads()));
    assert.deepEqual(encodeMessage(header, msg.payloads), wire);
  });

  it('round-trips random messages (property)', () => {
    const bytes = (min: number, max: number) =>
      fc.uint8Array({ minLength: min, maxLength: max }).map((a) => Buffer.from(a));
    const payload: fc.Arbitrary<Payload> = fc.oneof(
      fc.record({ type: fc.constant(PayloadType.NONCE), data: bytes(16, 64) }),
      fc.record({ type: fc.constant(PayloadType.KE), group: fc.integer({ min: 0, max: 65535 }), data: bytes(0, 64) }),
      fc.record({ type: fc.constant(PayloadType.VENDOR_ID), data: bytes(0, 40) }),
      fc.record({
        type: fc.constant(PayloadType.NOTIFY),
        protocol: fc.constantFrom(0, 1, 3),
        spi: bytes(0, 8),
        notify: fc.integer({ min: 0, max: 65535 }),
        data: bytes(0, 40),
      }),
      fc.record({
        type: fc.constant(PayloadType.SA),
        proposals: fc.array(
          fc.record({
            number: fc.integer({ min: 1, max: 255 }),
            protocol: fc.constantFrom(1, 2, 3),
            spi: bytes(0, 8),
            transforms: fc.array(
              fc
                .record({
                  type: fc.constantFrom(1, 2, 3, 4, 5),
                  id: fc.integer({ min: 0, max: 65535 }),
                  keyLength: fc.option(fc.constantFrom(128, 192, 256), { nil: undefined }),
                })
                .map((t) =>
                  t.keyLength === undefined
                    ? { type: t.type, id: t.id }
                    : { type: t.type, id: t.id, keyLength: t.keyLength },
                ),
              { minLength: 1, maxLength: 6 },
            ),
          }),
          { minLength: 1, maxLength: 4 },
        ),
      }),
    ) as fc.Arbitrary<Payload>;
    fc.assert(
      fc.property(fc.array(payload, { maxLength: 8 }), (payloads) => {
        const wire = encodeMessage(header, payloads);
        // fast-check records have a null prototype: compare plain data on both sides.
        const plain = (x: unknown) => JSON.parse(JSON.stringify(x)) as unknown;
        const decoded = decodeMessage(wire);
        assert.deepEqual(plain(decoded.payloads), plain(normal(payloads)));
        // The debug trace describes any decodable message, and never prints payload data.
        const line = payloadsText(decoded.payloads);
        for (const p of decoded.payloads)
          if ('data' in p && p.data.length >= 8) assert.ok(!line.includes(p.data.toString('hex')), line);
      }),
      { numRuns: 500 },
    );
  });

  it('rejects malformed messages with the notify the RFC asks for', () => {
    const good = encodeMessage(header, initPayloads());
    const cases: [Buffer, RegExp, NotifyType][] = [
      [good.subarray(0, 20), /shorter than the IKE header/, NotifyType.INVALID_SYNTAX],
      [Buffer.concat([good, Buffer.alloc(1)]), /does not match the datagram length/, NotifyType.INVALID_SYNTAX],
      [
        (() => {
          const b = Buffer.from(good);
          b[17] = 0x30;
          return b;
        })(),
        /major version 3/,
        NotifyType.INVALID_MAJOR_VERSION,
      ],
      [
        (() => {
          const b = Buffer.from(good);
          b.writeUInt16BE(3, 30);
          return b;
        })(),
        /has length 3/,
        NotifyType.INVALID_SYNTAX,
      ],
      [
        encodeMessage(header, [{ type: PayloadType.NONCE, data: Buffer.alloc(8) }]),
        /nonce of 8 bytes/,
        NotifyType.INVALID_SYNTAX,
      ],
      [
        encodeMessage(header, [{ type: 99 as never, critical: true, unknown: true, data: Buffer.alloc(3) } as never]),
        /unsupported critical payload type 99/,
        NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
      ],
      [
        encodeMessage(header, [{ type: PayloadType.DELETE, protocol: 3, spiSize: 2, spis: [Buffer.alloc(2)] }]),
        /SPI size 2/,
        NotifyType.INVALID_SYNTAX,
      ],
    ];
    for (const [wire, message, notify] of cases) {
      assert.throws(
        () => decodeMessage(wire),
        (e: unknown) => e instanceof IkeDecodeError && message.test(e.message) && e.notify === notify,
        String(message),
      );
    }
    const unknown = decodeMessage(
      encodeMessage(header, [{ type: 99 as never, unknown: true, data: Buffer.alloc(3) } as never]),
    );
    assert.deepEqual(unknown.payloads, [{ type: 99, critical: false, unknown: true, data: Buffer.alloc(3) }]);
  });

  it('mutated and random input never throws anything but IkeDecodeError (fuzzed, 50k messages)', () => {
    const good = encodeMessage(header, initPayloads());
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }),
        fc.nat(good.length),
        (edits, cut) => {
          const b = Buffer.from(good.subarray(0, Math.max(28, cut)));
          for (const [i, v] of edits) if (i < b.length) b[i] = v;
          if (b.length >= 28) b.writeUInt32BE(b.length, 24);
          try {
            decodeMessage(b);
          } catch (e) {
            if (!(e instanceof IkeDecodeError)) throw e;
          }
        },
      ),
      { numRuns: 40_000 },
    );
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 300 }), (a) => {
        try {
          decodeMessage(Buffer.from(a));
        } catch (e) {
          if (!(e instanceof IkeDecodeError)) throw e;
        }
      }),
      { numRuns: 10_000 },
    );
  });
});

describe('IKEv2 codec against strongSwan', () => {
  it("decodes charon's IKE_SA_INIT and IKE_AUTH messages captured in the lab", async () => {
    const lab = await Lab.create(hostToHost());
    const charons: Charon[] = [];
    try {
      const a = lab.address('alice');
      const b = lab.address('bob');
      const cfg = (l: string, r: string) =>
        pskHostTunnel(l, r, {
          name: 'c',
          secret: 'lab-only-psk-0123456789abcdef',
          proposals: ['aes256-sha256-modp2048', 'aes128gcm16-prfsha384-ecp256'],
        });
      const cap = await Capture.start(lab, 'bob', 'eth0', { filter: 'udp port 500 or udp port 4500' });
      charons.push(
        ...(await Promise.all([Charon.start(lab, 'alice', cfg(a, b)), Charon.start(lab, 'bob', cfg(b, a))])),
      );
      await (charons[0] as Charon).initiate('c');
      const rows = await cap.fields(['udp.dstport', 'udp.payload']);
      await cap.dispose();
      const messages = rows.map(([port, payload]) => {
        let raw = Buffer.from(payload ?? '', 'hex');
        if (port === '4500' || raw.readUInt32BE(0) === 0) raw = raw.subarray(4); // non-ESP marker
        return decodeMessage(raw);
      });
      const init = messages[0];
      assert.ok(init);
      assert.equal(init.header.exchange, ExchangeType.IKE_SA_INIT);
      assert.ok(init.header.flags & Flags.INITIATOR);
      const sa = init.payloads.find((p) => p.type === PayloadType.SA);
      assert.ok(sa && 'proposals' in sa);
      assert.deepEqual(
        sa.proposals.map((p) => p.transforms.map((t) => [t.type, t.id, t.keyLength])),
        [
          [
            [1, EncrId.AES_CBC, 256],
            [3, IntegId.HMAC_SHA2_256_128, undefined],
            [2, PrfId.HMAC_SHA2_256, undefined],
            [4, KeId.MODP_2048, undefined],
          ],
          [
            [1, EncrId.AES_GCM_16, 128],
            [2, PrfId.HMAC_SHA2_384, undefined],
            [4, KeId.ECP_256, undefined],
          ],
        ],
      );
      const ke = init.payloads.find((p) => p.type === PayloadType.KE);
      assert.ok(ke && 'group' in ke);
      assert.deepEqual([ke.group, ke.data.length], [KeId.MODP_2048, 256]);
      const notifies = init.payloads
        .filter((p) => p.type === PayloadType.NOTIFY)
        .map((p) => ('notify' in p ? p.notify : 0));
      assert.ok(
        notifies.includes(NotifyType.NAT_DETECTION_SOURCE_IP) &&
          notifies.includes(NotifyType.NAT_DETECTION_DESTINATION_IP),
      );
      const reply = messages[1];
      assert.ok(reply && reply.header.flags & Flags.RESPONSE);
      assert.deepEqual(reply.header.spiI, init.header.spiI);
      // IKE_AUTH travels encrypted: one SK payload, last in the message.
      const auth = messages.find((m) => m.header.exchange === ExchangeType.IKE_AUTH);
      assert.deepEqual(
        auth?.payloads.map((p) => p.type),
        [PayloadType.SK],
      );
    } finally {
      await Promise.all(charons.map((c) => c.stop()));
      await lab.destroy();
    }
  });
});
