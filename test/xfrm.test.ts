import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import {
  deletePolicyRequest,
  parseAcquire,
  parseExpire,
  parsePolicyInfo,
  parseSaInfo,
  policyRequest,
  portRangeToMasks,
  rangeToPrefixes,
  saRequest,
  splitMessages,
  XfrmCodecError,
  type XfrmSelector,
} from '../src/io/xfrm.ts';
import { Lab } from '../src/lab/lab.ts';
import { hostToHost } from '../src/lab/topology.ts';
import { events, fixture } from './helpers.ts';

const v4 = (a: string): Buffer => Buffer.from(a.split('.').map(Number));
const big = (b: Uint8Array): bigint => BigInt(`0x${Buffer.from(b).toString('hex')}`);

const host = (src: string, dst: string): XfrmSelector => ({
  family: 4,
  src: v4(src),
  srcPrefix: 32,
  dst: v4(dst),
  dstPrefix: 32,
  proto: 6,
  sport: 0,
  sportMask: 0,
  dport: 445,
  dportMask: 0xffff,
});

describe('netlink XFRM codec', () => {
  it('lays out a policy as linux/xfrm.h does (selector, priority, direction, template) and reads it back', () => {
    const m = policyRequest(
      {
        dir: 'out',
        sel: host('192.0.2.1', '192.0.2.2'),
        priority: 0x0c8f_0001,
        action: 'allow',
        tmpls: [{ proto: 'esp', mode: 'transport', family: 4, reqid: 7, optional: true }],
      },
      42,
    );
    // nlmsghdr 16 + xfrm_userpolicy_info 168 + XFRMA_TMPL (4 + 64)
    assert.equal(m.length, 16 + 168 + 68);
    assert.equal(m.readUInt16LE(4), 25); // XFRM_MSG_UPDPOLICY
    assert.equal(m.readUInt32LE(8), 42);
    const body = m.subarray(16);
    assert.equal(body.readUInt16BE(32), 445); // dport, network order
    assert.equal(body.readUInt16LE(40), 2); // AF_INET
    assert.equal(body[160], 1); // XFRM_POLICY_OUT
    const tmpl = body.subarray(168 + 4);
    assert.equal(tmpl[20], 50); // ESP
    assert.equal(tmpl.readUInt32LE(44), 7); // reqid
    assert.equal(tmpl[50], 1); // optional ("level use")
    const back = parsePolicyInfo(body);
    assert.equal(back.dir, 'out');
    assert.equal(back.priority, 0x0c8f_0001);
    assert.deepEqual(back.sel, { ...host('192.0.2.1', '192.0.2.2') });
    assert.equal(deletePolicyRequest({ dir: 'in', sel: host('192.0.2.2', '192.0.2.1') }, 1).length, 16 + 64);
  });

  it('lays out an SA (xfrm_usersa_info 224) with its algorithm, encapsulation and replay attributes', () => {
    const m = saRequest(
      {
        family: 4,
        src: v4('192.0.2.1'),
        dst: v4('192.0.2.2'),
        spi: 0xc0ffee01,
        proto: 'esp',
        mode: 'tunnel',
        reqid: 9,
        aead: { name: 'rfc4106(gcm(aes))', key: Buffer.alloc(36, 1), bits: 128 },
        encap: { sport: 4500, dport: 4501 },
        esn: true,
        replayWindow: 128,
        softBytes: 900n,
        hardBytes: 1000n,
      },
      1,
    );
    const body = m.subarray(16);
    const info = parseSaInfo(body);
    assert.equal(info.spi, 0xc0ffee01);
    assert.equal(info.reqid, 9);
    assert.equal(info.mode, 1);
    assert.equal(info.src.toString('hex'), 'c0000201');
    assert.equal(body.readBigUInt64LE(96), 900n);
    assert.equal(body.readBigUInt64LE(104), 1000n);
    assert.equal(body[216], 128); // XFRM_STATE_ESN
    // Attributes: AEAD (64 name + 4 key bits + 4 ICV bits + 36 key), ENCAP (24), REPLAY_ESN (24 + 16).
    let off = 224;
    const seen: number[] = [];
    while (off < body.length) {
      seen.push(body.readUInt16LE(off + 2));
      if (body.readUInt16LE(off + 2) === 18) {
        assert.equal(body.toString('ascii', off + 4, off + 4 + 17), 'rfc4106(gcm(aes))');
        assert.equal(body.readUInt32LE(off + 4 + 64), 288);
        assert.equal(body.readUInt32LE(off + 4 + 68), 128);
      }
      if (body.readUInt16LE(off + 2) === 4) assert.equal(body.readUInt16BE(off + 4 + 4), 4501);
      off += (body.readUInt16LE(off) + 3) & ~3;
    }
    assert.deepEqual(seen, [18, 4, 23]);
    // The mark the kernel puts on what it sends (XFRMA_SET_MARK + mask), and a tunnel of the other
    // family inside: selector family 0, XFRM_STATE_AF_UNSPEC.
    const marked = saRequest({ ...parseBack(), mode: 'tunnel', anyInnerFamily: true, outputMark: 0xc5ec }, 2).subarray(
      16,
    );
    assert.equal(marked.readUInt16LE(40), 0, 'selector family left to the packets');
    assert.equal(marked[216], 32);
    const types: number[] = [];
    for (let off = 224; off < marked.length; off += (marked.readUInt16LE(off) + 3) & ~3) {
      types.push(marked.readUInt16LE(off + 2));
      if (marked.readUInt16LE(off + 2) === 29) assert.equal(marked.readUInt32LE(off + 4), 0xc5ec);
      if (marked.readUInt16LE(off + 2) === 30) assert.equal(marked.readUInt32LE(off + 4), 0xffffffff);
    }
    assert.deepEqual(types, [23, 29, 30]);
    assert.throws(() => saRequest({ ...parseBack(), replayWindow: 100 }, 1), XfrmCodecError);
  });

  it('covers an address range with exactly its prefixes, and a port range with exactly its masks', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 5000 }), (lo, span) => {
        const hi = Math.min(0xffffffff, lo + span);
        const b = (n: number) => Buffer.from([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
        const ps = rangeToPrefixes(b(lo), b(hi));
        let next = BigInt(lo);
        for (const p of ps) {
          assert.equal(big(p.address), next, 'contiguous, in order');
          const size = 1n << BigInt(32 - p.prefix);
          assert.equal(big(p.address) % size, 0n, 'aligned');
          next += size;
        }
        assert.equal(next, BigInt(hi) + 1n);
      }),
    );
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 65535 }), fc.integer({ min: 0, max: 65535 }), (a, b) => {
        const [lo, hi] = a <= b ? [a, b] : [b, a];
        if (lo === 0 && hi === 65535) return;
        const masks = portRangeToMasks(lo, hi, 64);
        const covered = new Set<number>();
        for (const m of masks) for (let p = m.port; p <= (m.port | (~m.mask & 0xffff)); p++) covered.add(p);
        assert.equal(covered.size, hi - lo + 1);
        assert.ok([...covered].every((p) => p >= lo && p <= hi));
      }),
    );
    assert.deepEqual(portRangeToMasks(0, 65535), [{ port: 0, mask: 0 }]);
    assert.equal(rangeToPrefixes(Buffer.alloc(16), Buffer.alloc(16, 0xff))[0]?.prefix, 0);
  });

  it('parses what the kernel sends strictly: random and truncated messages throw XfrmCodecError only', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 600 }), fc.constantFrom(23, 24, 16, 19), (bytes, type) => {
        const buf = Buffer.from(bytes);
        for (const parse of [
          () => splitMessages(buf),
          () =>
            type === 23
              ? parseAcquire(buf)
              : type === 24
                ? parseExpire(buf)
                : type === 16
                  ? parseSaInfo(buf)
                  : parsePolicyInfo(buf),
        ]) {
          try {
            parse();
          } catch (err) {
            assert.ok(err instanceof XfrmCodecError, String(err));
          }
        }
      }),
      { numRuns: 20_000 },
    );
  });
});

function parseBack() {
  return {
    family: 4 as const,
    src: v4('192.0.2.1'),
    dst: v4('192.0.2.2'),
    spi: 1,
    proto: 'esp' as const,
    mode: 'transport' as const,
    reqid: 1,
    esn: false,
    replayWindow: 32,
  };
}

describe('kernel data plane on a kernel without ESP (lab namespace)', () => {
  let lab: Lab;
  before(async () => {
    lab = await Lab.create(hostToHost());
  });
  after(async () => {
    await lab?.destroy();
  });

  const policies = async (): Promise<string> => (await lab.exec('alice', ['ip', 'xfrm', 'policy'])).stdout;

  it('says why it cannot carry SAs, puts the policy into the SPD (Require, Request, exemptions), hears acquires, puts its entries back after a foreign flush, and keeps Require blocking after it stops', async () => {
    const bob = lab.address('bob');
    const rules = [
      {
        RemoteAddress: [bob],
        Protocol: 'TCP',
        RemotePort: ['445'],
        InboundSecurity: 'Require',
        OutboundSecurity: 'Require',
      },
      { RemoteAddress: [bob], Protocol: 'UDP', RemotePort: ['53'], InboundSecurity: 'None', OutboundSecurity: 'None' },
      {
        RemoteAddress: [bob],
        Protocol: 'UDP',
        RemotePort: ['7000'],
        InboundSecurity: 'Request',
        OutboundSecurity: 'Request',
      },
    ];
    const p = fixture(lab, 'alice', 'xfrm-plane', [JSON.stringify(rules)]);
    try {
      await p.waitFor(/"event":"filters"/, 30_000);
      const probe = events<{ ok: boolean; reason?: string }>(p, 'probe')[0];
      assert.equal(probe?.ok, false, 'this host kernel has no ESP');
      assert.match(probe?.reason ?? '', /refused an ESP SA|no netlink XFRM/);
      const spd = await policies();
      // Require: a required template both ways; Request: "level use"; the exemption: no template, before both.
      const out445 =
        /src \S+ dst (\S+)\s+proto tcp dport 445\s+dir out priority (\d+)[^\n]*\n\s+tmpl src 0\.0\.0\.0 dst 0\.0\.0\.0\n\s+proto esp reqid 0 mode transport\n/.exec(
          spd,
        );
      assert.ok(out445, spd);
      assert.equal(out445[1], `${bob}/32`);
      assert.match(
        spd,
        /proto udp dport 7000\s+dir out[^\n]*\n\s+tmpl [^\n]*\n\s+proto esp reqid 0 mode transport\n\s+level use/,
      );
      assert.match(spd, /proto tcp sport 445\s+dir in[^\n]*\n\s+tmpl /);
      const exempt = /proto udp dport 53\s+dir out priority (\d+)/.exec(spd);
      assert.ok(exempt && Number(exempt[1]) < Number(out445[2]), 'the exemption comes first');
      // A packet to the Require port: the kernel asks for an SA (and sends nothing in clear).
      await lab
        .exec('alice', ['bash', '-c', `exec 3<>/dev/tcp/${bob}/445`], { allowFailure: true, timeoutMs: 5000 })
        .catch(() => {});
      await p.waitFor(/"event":"acquire"/, 10_000);
      const flow = events<{ remote: string; protocol: number; remotePort: number }>(p, 'acquire')[0];
      assert.equal(flow?.remote, bob);
      assert.equal(flow?.protocol, 6);
      assert.equal(flow?.remotePort, 445);
      // Someone flushes the SPD: the daemon's entries are back at once.
      await lab.exec('alice', ['ip', 'xfrm', 'policy', 'flush']);
      await p.waitFor(/policies removed by someone else: restored/, 10_000);
      assert.match(await policies(), /proto tcp dport 445\s+dir out/);
    } finally {
      await p.stop('SIGTERM', 5000);
    }
    // Stopped: the Require entries stay in the kernel (fail-closed with no daemon).
    assert.match(await policies(), /dport 445/);
    const q = fixture(lab, 'alice', 'xfrm-plane', ['[]', 'remove-all']);
    await q.waitFor(/"event":"filters"/, 30_000);
    await q.stop('SIGTERM', 5000);
    const left = await policies();
    assert.equal(left.trim(), '', `remove-all leaves no entry of consec: ${left}\n${q.output()}`);
  });
});
