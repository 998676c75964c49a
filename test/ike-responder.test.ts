import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { AuditCollector } from '../src/audit/events.ts';
import { openMessage, protectMessage } from '../src/ike/crypto/sk.ts';
import { IkeManager, type ManagerOptions } from '../src/ike/manager.ts';
import { espProposals, ikeProposals } from '../src/ike/proposals.ts';
import { IkeSa } from '../src/ike/sa.ts';
import type { PeerConfig } from '../src/ike/session.ts';
import { ChildCreateInitiator } from '../src/ike/tasks/child-create.ts';
import { authPayloads, verifyPeerAuth } from '../src/ike/tasks/ike-auth.ts';
import { buildInitRequest, IkeInitInitiator } from '../src/ike/tasks/ike-init.ts';
import { IkeNatd } from '../src/ike/tasks/ike-natd.ts';
import { decodeMessage, type Payload } from '../src/ike/wire/codec.ts';
import { ExchangeType, Flags, IdType, NotifyType, PayloadType } from '../src/ike/wire/constants.ts';
import { mmProposal, qmProposal } from '../src/policy/model.ts';
import { waitUntil } from './helpers.ts';

const I = '192.0.2.1';
const R = '192.0.2.2';
const ip = (a: string) => Buffer.from(a.split('.').map(Number));
const host = (a: string) => ({ type: 7, ipProtocol: 0, startPort: 0, endPort: 65535, start: ip(a), end: ip(a) });
const mm = [mmProposal({ Encryption: 'AES256', Hash: 'SHA256', KeyExchange: 'DH19' })];
const qm = [qmProposal({ Encapsulation: ['ESP'], Encryption: 'AESGCM256', ESPHash: 'AESGMAC256' })];

const peerConfig = (psk = 'k'): PeerConfig => ({
  name: 'test',
  ikeProposals: ikeProposals(mm).proposals,
  espProposals: (spi) => espProposals(qm, spi).proposals,
  credentials: { method: 'psk', psk: Buffer.from(psk) },
  localId: { type: IdType.IPV4_ADDR, data: ip(R) },
  tsi: [host(I)],
  tsr: [host(R)],
  mode: 'tunnel',
});

interface Responder {
  m: IkeManager;
  sent: Buffer[];
  audit: AuditCollector;
  counts: { halfOpen: number; total: number };
  close(): void;
}

/** A responder whose sockets are an array of what it sent (synchronous, no network). */
function responder(extra: Partial<ManagerOptions> = {}): Responder {
  const audit = new AuditCollector();
  const m = new IkeManager({ address: R, peerFor: (a) => (a === I ? peerConfig() : undefined), audit, ...extra });
  const sent: Buffer[] = [];
  void m.listen(() => ({ address: R, sendIke: (b) => sent.push(b), sendUdp4500: () => {}, close() {} }));
  return {
    m,
    sent,
    audit,
    get counts() {
      return m.counts;
    },
    close: () => m.close(),
  };
}

/** One datagram in, the replies out. */
function exchange(r: Responder, bytes: Buffer): Buffer[] {
  r.sent.length = 0;
  r.m.ike(bytes, { address: I, port: 500 }, 500);
  return [...r.sent];
}

function initRequest(sa: IkeSa, init: IkeInitInitiator, cookie?: Buffer): Buffer {
  return buildInitRequest(sa, init, new IkeNatd(), cookie);
}

/** Runs consec's initiator tasks against the responder, in memory. */
function handshake(r: Responder, psk = 'k') {
  const sa = new IkeSa('initiator', { address: I, port: 500 }, { address: R, port: 500 });
  const init = new IkeInitInitiator(ikeProposals(mm).proposals);
  let request = initRequest(sa, init);
  let [reply] = exchange(r, request);
  assert.ok(reply);
  let msg = decodeMessage(reply);
  const cookie = msg.payloads.find((p) => 'notify' in p && p.notify === NotifyType.COOKIE);
  if (cookie && 'data' in cookie) {
    request = initRequest(sa, init, cookie.data);
    [reply] = exchange(r, request);
    assert.ok(reply);
    msg = decodeMessage(reply);
  }
  sa.spiR = Buffer.from(msg.header.spiR);
  sa.initRequest = request;
  sa.initResponse = msg.raw;
  init.process(sa, msg.payloads);
  const cred = { method: 'psk' as const, psk: Buffer.from(psk) };
  const child = new ChildCreateInitiator((spi) => espProposals(qm, spi).proposals, [host(I)], [host(R)], 'tunnel');
  const inner: Payload[] = authPayloads(sa, 'i', { type: IdType.IPV4_ADDR, data: ip(I) }, cred);
  child.build(sa, inner);
  const authRequest = protectMessage(
    { spiI: sa.spiI, spiR: sa.spiR, exchange: ExchangeType.IKE_AUTH, flags: Flags.INITIATOR, messageId: 1 },
    inner,
    sa.skKeys('out'),
  );
  const [authReply] = exchange(r, authRequest);
  assert.ok(authReply);
  const payloads = openMessage(decodeMessage(authReply), sa.skKeys('in'));
  const auth = { process: () => verifyPeerAuth(sa, 'r', payloads, cred) };
  return { sa, auth, child, payloads, initRequest: request, authRequest, authReply };
}

describe('IKEv2 responder', () => {
  it('an address no rule covers gets NO_PROPOSAL_CHOSEN every time, but one audit event per ten seconds (no log flood)', () => {
    const r = responder({ peerFor: () => undefined });
    for (let i = 0; i < 50; i++) {
      const sa = new IkeSa('initiator', { address: I, port: 500 }, { address: R, port: 500 });
      const [reply] = exchange(r, initRequest(sa, new IkeInitInitiator(ikeProposals(mm).proposals)));
      assert.ok(reply, `request ${i} answered`);
      const n = decodeMessage(reply).payloads[0];
      assert.ok(n && 'notify' in n && n.notify === NotifyType.NO_PROPOSAL_CHOSEN);
    }
    assert.equal(r.audit.events.filter((e) => e.id === 4653).length, 1);
    assert.equal(r.counts.halfOpen, 0, 'no state for it');
    r.close();
  });

  it("completes IKE_SA_INIT and IKE_AUTH with consec's initiator tasks and answers retransmissions from its cache", () => {
    const r = responder();
    const h = handshake(r);
    h.auth.process();
    h.child.process(h.sa, h.payloads);
    assert.equal(h.child.result?.mode, 'tunnel');
    assert.deepEqual(r.counts, { halfOpen: 0, total: 1 });
    // A retransmitted IKE_AUTH gets the identical response; nothing new is created.
    assert.deepEqual(exchange(r, h.authRequest), [h.authReply]);
    assert.deepEqual(r.counts, { halfOpen: 0, total: 1 });
    r.close();
  });

  it('an INFORMATIONAL Delete of the IKE SA removes it; the retransmission gets the same answer', () => {
    const deleted: string[] = [];
    const r = responder({ onEnded: (s) => deleted.push(s.sa.spiR.toString('hex')) });
    const h = handshake(r);
    h.auth.process();
    const del = protectMessage(
      { spiI: h.sa.spiI, spiR: h.sa.spiR, exchange: ExchangeType.INFORMATIONAL, flags: Flags.INITIATOR, messageId: 2 },
      [{ type: PayloadType.DELETE, protocol: 1, spiSize: 0, spis: [] }],
      h.sa.skKeys('out'),
    );
    const [answer] = exchange(r, del);
    assert.ok(answer);
    const msg = decodeMessage(answer);
    assert.equal(msg.header.exchange, ExchangeType.INFORMATIONAL);
    assert.deepEqual(openMessage(msg, h.sa.skKeys('in')), []);
    assert.deepEqual(r.counts, { halfOpen: 0, total: 0 });
    assert.deepEqual(deleted, [h.sa.spiR.toString('hex')]);
    r.close();
  });

  it('invalid IKE messages are audited as 4976 (main mode) / 4977 (quick mode), at most once per peer per 10 s', () => {
    const r = responder();
    const h = handshake(r);
    h.auth.process();
    // A CREATE_CHILD_SA request whose ICV does not verify (one flipped octet inside SK).
    const child = protectMessage(
      {
        spiI: h.sa.spiI,
        spiR: h.sa.spiR,
        exchange: ExchangeType.CREATE_CHILD_SA,
        flags: Flags.INITIATOR,
        messageId: 2,
      },
      [{ type: PayloadType.NONCE, data: Buffer.alloc(32, 7) }],
      h.sa.skKeys('out'),
    );
    child[child.length - 20] = (child[child.length - 20] as number) ^ 1;
    assert.deepEqual(exchange(r, child), [], 'no answer to an unauthentic request');
    const bad = r.audit.events.filter((e) => e.id === 4976 || e.id === 4977);
    assert.equal(bad.length, 1);
    assert.deepEqual(
      { ...bad[0], reason: undefined },
      {
        id: 4977,
        subcategory: 'IPsec Quick Mode',
        success: false,
        localAddress: R,
        remoteAddress: I,
        keyingModule: 'IKEv2',
        reason: undefined,
      },
    );
    // Junk from the same peer within 10 s: no second event; the count of SAs is unchanged.
    exchange(r, Buffer.from('not an IKE message at all, just text'));
    assert.equal(r.audit.events.filter((e) => e.id === 4976 || e.id === 4977).length, 1);
    assert.deepEqual(r.counts, { halfOpen: 0, total: 1 });
    r.close();
  });

  it('a wrong pre-shared key gets AUTHENTICATION_FAILED and no child SA', () => {
    const r = responder();
    const h = handshake(r, 'wrong');
    assert.deepEqual(
      h.payloads.map((p) => ('notify' in p ? p.notify : p.type)),
      [NotifyType.AUTHENTICATION_FAILED],
    );
    r.close();
  });

  it('demands a cookie above the threshold, and accepts the request that returns it', () => {
    const r = responder({ cookieThreshold: 0 });
    const sa = new IkeSa('initiator', { address: I, port: 500 }, { address: R, port: 500 });
    const [reply] = exchange(r, initRequest(sa, new IkeInitInitiator(ikeProposals(mm).proposals)));
    const msg = decodeMessage(reply as Buffer);
    assert.deepEqual(
      msg.payloads.map((p) => ('notify' in p ? p.notify : p.type)),
      [NotifyType.COOKIE],
    );
    assert.deepEqual(r.counts, { halfOpen: 0, total: 0 }, 'no state before the cookie comes back');
    const h = handshake(r);
    h.auth.process();
    assert.equal(r.counts.total, 1);
    r.close();
  });

  it('half-open SAs expire, and their number is capped', async () => {
    const r = responder({ halfOpenTimeoutMs: 50, maxHalfOpen: 3, cookieThreshold: 1000 });
    for (let i = 0; i < 5; i++) {
      const sa = new IkeSa('initiator', { address: I, port: 500 }, { address: R, port: 500 });
      exchange(r, initRequest(sa, new IkeInitInitiator(ikeProposals(mm).proposals)));
    }
    assert.deepEqual(r.counts, { halfOpen: 3, total: 3 });
    await waitUntil(() => r.counts.total === 0, 'the half-open SAs to expire', 2000);
    assert.deepEqual(r.counts, { halfOpen: 0, total: 0 });
    r.close();
  });

  it('mutated datagrams never throw, never exceed the half-open cap, and leave no state behind (fuzzed, 100k)', async () => {
    const r = responder({ maxHalfOpen: 50, cookieThreshold: 1000, halfOpenTimeoutMs: 300 });
    const h = handshake(responder());
    const seeds = [h.initRequest, h.authRequest];
    fc.assert(
      fc.property(
        fc.constantFrom(0, 1),
        fc.array(fc.tuple(fc.nat(4000), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }),
        fc.boolean(),
        (which, edits, floated) => {
          const b = Buffer.from(seeds[which] as Buffer);
          for (const [i, v] of edits) b[i % b.length] = v;
          const datagram = floated ? Buffer.concat([Buffer.alloc(4), b]) : b;
          if (floated) r.m.ike(datagram.subarray(4), { address: I, port: 4500 }, 4500);
          else r.m.ike(datagram, { address: I, port: 500 }, 500);
        },
      ),
      { numRuns: 100_000 },
    );
    assert.ok(r.counts.halfOpen <= 50, JSON.stringify(r.counts));
    // Whatever the mutations started, nothing outlives the half-open timeout.
    await waitUntil(() => r.counts.total === 0, 'every half-open SA to expire', 3000);
    assert.deepEqual(r.counts, { halfOpen: 0, total: 0 });
    r.close();
  });
});
