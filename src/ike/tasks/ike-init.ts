/**
 * IKE_SA_INIT (RFC 7296 §1.2): proposals, key exchange, nonces, NAT detection, the announcements
 * (signature hashes, fragmentation) — the initiator as a session task (with the COOKIE and
 * INVALID_KE_PAYLOAD retries), the responder as a function the manager calls once it has let the
 * request past its half-open and cookie checks.
 */
import { randomOctets } from '../crypto/random.ts';
import { kept } from '../../io/kept.ts';
import { KeyExchange } from '../crypto/ke.ts';
import { IkeError, notifyName } from '../errors.ts';
import { acceptChosen, selectProposal, transformOf } from '../proposals.ts';
import { IkeSa } from '../sa.ts';
import type { Endpoint } from '../../sa/spec.ts';
import { encodeMessage, type IkeMessage, type Payload, type Proposal } from '../wire/codec.ts';
import { ExchangeType, Flags, isErrorNotify, NotifyType, PayloadType, TransformType } from '../wire/constants.ts';
import type { PeerConfig, SessionTask, TaskSession } from './context.ts';
import { certRequest, SIGNATURE_HASHES } from './ike-cert.ts';
import { IkeNatd, natdHash } from './ike-natd.ts';
import { findNotifies, findPayload, notify, type Task } from './task.ts';

const ZERO_SPI = Buffer.alloc(8);

export class IkeInitInitiator implements Task {
  readonly name = 'ike-init';
  private retryGroup?: number;

  constructor(private readonly proposals: Proposal[]) {}

  build(sa: IkeSa, out: Payload[]): void {
    // The first proposal's group, unless the responder asked for another (INVALID_KE_PAYLOAD).
    const group = this.retryGroup ?? transformOf(this.proposals[0] as Proposal, TransformType.KE)?.id;
    if (group === undefined)
      throw new IkeError('no key exchange group in the IKE proposals', NotifyType.NO_PROPOSAL_CHOSEN);
    sa.ke = KeyExchange.create(group);
    sa.nonceI ??= randomOctets(32);
    out.push(
      { type: PayloadType.SA, proposals: this.proposals },
      { type: PayloadType.KE, group, data: sa.ke.publicValue },
      { type: PayloadType.NONCE, data: sa.nonceI },
    );
  }

  process(sa: IkeSa, payloads: readonly Payload[]): void {
    for (const p of payloads) {
      if (p.type === PayloadType.NOTIFY && 'notify' in p && isErrorNotify(p.notify)) {
        if (p.notify === NotifyType.INVALID_KE_PAYLOAD && p.data.length === 2) {
          this.retryGroup = p.data.readUInt16BE(0);
          throw new IkeError(
            `responder asks for key exchange group ${this.retryGroup}`,
            NotifyType.INVALID_KE_PAYLOAD,
            true,
          );
        }
        throw new IkeError(`responder refused IKE_SA_INIT: ${notifyName(p.notify)}`, p.notify, true);
      }
    }
    const saPayload = findPayload(payloads, PayloadType.SA);
    const ke = findPayload(payloads, PayloadType.KE);
    const nonce = findPayload(payloads, PayloadType.NONCE);
    if (!saPayload || !ke || !nonce)
      throw new IkeError('IKE_SA_INIT response lacks SA, KE or Nonce', NotifyType.INVALID_SYNTAX);
    if (saPayload.proposals.length !== 1)
      throw new IkeError('responder chose more than one proposal', NotifyType.INVALID_SYNTAX);
    const chosen = acceptChosen(this.proposals, saPayload.proposals[0] as Proposal);
    if (!chosen) throw new IkeError('responder chose a proposal that was not offered', NotifyType.NO_PROPOSAL_CHOSEN);
    if (ke.group !== transformOf(chosen, TransformType.KE)?.id || ke.group !== sa.ke?.group) {
      throw new IkeError(`KE payload group ${ke.group} does not match the chosen proposal`, NotifyType.INVALID_SYNTAX);
    }
    sa.chosen = { ...chosen, spi: kept(chosen.spi) };
    sa.nonceR = nonce.data;
    sa.deriveKeys((sa.ke as KeyExchange).sharedSecret(ke.data));
  }
}

/** The IKE_SA_INIT request: [N(COOKIE)], SA, KE, Ni, N(NAT_DETECTION_*), N(SIGNATURE_HASH_ALGORITHMS). */
export function buildInitRequest(
  sa: IkeSa,
  init: IkeInitInitiator,
  natd: IkeNatd,
  cookie?: Buffer,
  fragmentation = true,
): Buffer {
  const payloads: Payload[] = [];
  if (cookie) payloads.push(notify(NotifyType.COOKIE, cookie));
  init.build(sa, payloads);
  natd.build(sa, payloads);
  payloads.push(notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, SIGNATURE_HASHES));
  if (fragmentation) payloads.push(notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED));
  return encodeMessage(
    { spiI: sa.spiI, spiR: ZERO_SPI, exchange: ExchangeType.IKE_SA_INIT, flags: Flags.INITIATOR, messageId: 0 },
    payloads,
  );
}

/** The initiator's IKE_SA_INIT as the first task of a new IKE SA: keys derived, NAT known, ports floated. */
export class IkeInitTask implements SessionTask {
  readonly name = 'ike-init';
  readonly kind = 'establish';
  readonly migrates = false;

  constructor(private readonly fragmentation: boolean) {}

  async run(s: TaskSession): Promise<void> {
    const sa = s.sa;
    const init = new IkeInitInitiator(s.peer.ikeProposals);
    const natd = new IkeNatd();
    let cookie: Buffer | undefined;
    for (let attempt = 0; ; attempt++) {
      const request = buildInitRequest(sa, init, natd, cookie, this.fragmentation);
      s.log('send IKE_SA_INIT', { attempt, bytes: request.length });
      const m = await s.exchangeInit(request);
      const c = findNotifies(m.payloads, NotifyType.COOKIE)[0];
      if (c && attempt < 3) {
        cookie = c.data;
        continue;
      }
      try {
        sa.spiR = m.header.spiR;
        sa.initRequest = request;
        sa.initResponse = m.raw;
        init.process(sa, m.payloads);
      } catch (err) {
        if (err instanceof IkeError && err.notify === NotifyType.INVALID_KE_PAYLOAD && attempt < 3) {
          sa.spiR = Buffer.alloc(8);
          continue;
        }
        throw err;
      }
      natd.process(sa, m.payloads);
      sa.peerSignatureHashes = findNotifies(m.payloads, NotifyType.SIGNATURE_HASH_ALGORITHMS).length > 0;
      sa.fragmentation =
        this.fragmentation && findNotifies(m.payloads, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED).length > 0;
      break;
    }
    sa.myMid = 1;
    if (sa.floated) {
      sa.local.port = 4500;
      sa.remote.port = 4500;
    }
    s.log('IKE_SA_INIT done', { nat: sa.floated, spiR: sa.spiR.toString('hex') });
  }
}

/** What the responder half needs besides the request: where it came in, our policy for the peer. */
export interface InitResponder {
  /** Our address and the port the request arrived on. */
  local: Endpoint;
  from: Endpoint;
  peer: PeerConfig;
  /** Fragmentation (RFC 7383) is on here. */
  fragmentation: boolean;
}

/**
 * The responder's IKE_SA_INIT: the IKE SA (keys derived, NAT detected) and the response payloads, or
 * the refusal to send (`refused`: NO_PROPOSAL_CHOSEN or INVALID_KE_PAYLOAD) and why.
 */
export function respondInit(
  msg: IkeMessage,
  o: InitResponder,
): { sa: IkeSa; payloads: Payload[] } | { refused: Payload[]; reason?: string } {
  const h = msg.header;
  const saP = findPayload(msg.payloads, PayloadType.SA);
  const ke = findPayload(msg.payloads, PayloadType.KE);
  const nonce = findPayload(msg.payloads, PayloadType.NONCE);
  if (!saP || !ke || !nonce) throw new IkeError('IKE_SA_INIT request lacks SA, KE or Nonce', NotifyType.INVALID_SYNTAX);
  const chosen = selectProposal(saP.proposals, o.peer.ikeProposals);
  if (!chosen) return { refused: [notify(NotifyType.NO_PROPOSAL_CHOSEN)], reason: 'no main mode proposal in common' };
  const group = transformOf(chosen, TransformType.KE)?.id as number;
  if (ke.group !== group) {
    const data = Buffer.alloc(2);
    data.writeUInt16BE(group);
    return { refused: [notify(NotifyType.INVALID_KE_PAYLOAD, data)] };
  }
  const { from } = o;
  const local = { address: o.local.address, port: 500 };
  const sa = new IkeSa(
    'responder',
    local,
    { address: from.address, port: from.port },
    {
      spiI: h.spiI,
      spiR: randomOctets(8),
    },
  );
  sa.chosen = { ...chosen, spi: kept(chosen.spi) };
  sa.nonceI = Buffer.from(nonce.data);
  sa.nonceR = randomOctets(32);
  sa.ke = KeyExchange.create(group);
  sa.deriveKeys(sa.ke.sharedSecret(ke.data));
  sa.peerSignatureHashes = findNotifies(msg.payloads, NotifyType.SIGNATURE_HASH_ALGORITHMS).length > 0;
  sa.fragmentation = o.fragmentation && findNotifies(msg.payloads, NotifyType.IKEV2_FRAGMENTATION_SUPPORTED).length > 0;
  // NAT detection from the request's hashes (computed with SPIr = 0).
  const src = findNotifies(msg.payloads, NotifyType.NAT_DETECTION_SOURCE_IP);
  const dst = findNotifies(msg.payloads, NotifyType.NAT_DETECTION_DESTINATION_IP);
  if (src.length && dst.length) {
    sa.natRemote = !src.some((n) => n.data.equals(natdHash(sa.spiI, ZERO_SPI, from)));
    sa.natLocal = !dst.some((n) => n.data.equals(natdHash(sa.spiI, ZERO_SPI, o.local)));
  }
  const payloads: Payload[] = [
    { type: PayloadType.SA, proposals: [chosen] },
    { type: PayloadType.KE, group, data: sa.ke.publicValue },
    { type: PayloadType.NONCE, data: sa.nonceR },
    notify(NotifyType.NAT_DETECTION_SOURCE_IP, natdHash(sa.spiI, sa.spiR, o.local)),
    notify(NotifyType.NAT_DETECTION_DESTINATION_IP, natdHash(sa.spiI, sa.spiR, from)),
    notify(NotifyType.SIGNATURE_HASH_ALGORITHMS, SIGNATURE_HASHES),
  ];
  if (sa.fragmentation) payloads.push(notify(NotifyType.IKEV2_FRAGMENTATION_SUPPORTED));
  if (o.peer.credentials.method === 'cert') payloads.push(certRequest(o.peer.credentials));
  sa.initRequest = Buffer.from(msg.raw);
  sa.myMid = 0;
  sa.peerMid = 1;
  return { sa, payloads };
}
