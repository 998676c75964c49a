/** One IKE SA: identities, nonces, negotiated suite and keys, message counters. */
import type { SpiRegistry } from './spi.ts';
import type { Endpoint } from '../sa/spec.ts';
import { randomOctets } from './crypto/random.ts';
import { kept } from '../io/kept.ts';
import { ENCRS, INTEGS, PRFS } from './crypto/algorithms.ts';
import type { KeyExchange } from './crypto/ke.ts';
import { deriveIkeKeys, type IkeKeys, type IkeSuite } from './crypto/keys.ts';
import type { SkKeys } from './crypto/sk.ts';
import type { Proposal } from './wire/codec.ts';
import { TransformType } from './wire/constants.ts';
import { transformOf } from './proposals.ts';
import { IkeError } from './errors.ts';
import { NotifyType } from './wire/constants.ts';

export type { Endpoint } from '../sa/spec.ts';

/** SPIi | SPIr as one 16-octet block of kept bytes. */
function spiPair(spiI: Uint8Array, spiR: Uint8Array): Buffer {
  if (spiI.length !== 8 || spiR.length !== 8)
    throw new IkeError('an IKE SA SPI is 8 octets (RFC 7296 §3.1)', NotifyType.INVALID_SYNTAX);
  const b = Buffer.allocUnsafe(16);
  b.set(spiI, 0);
  b.set(spiR, 8);
  return kept(b);
}

export class IkeSa {
  /**
   * The two SPIs in one block. Each assignment makes a new block, so a view read earlier (a header
   * being built, a log line) keeps the value it had.
   */
  private spiBlock: Buffer;
  nonceI?: Buffer;
  nonceR?: Buffer;
  ke?: KeyExchange;
  chosen?: Proposal;
  suite?: IkeSuite;
  keys?: IkeKeys;
  /** IKE_SA_INIT request and response as sent, for the AUTH computation. */
  initRequest?: Buffer;
  initResponse?: Buffer;
  /** The peer sent SIGNATURE_HASH_ALGORITHMS: certificate AUTH uses RFC 7427 Digital Signatures. */
  peerSignatureHashes = false;
  /** Both sides announced IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383). */
  fragmentation = false;
  /** A NAT was detected: IKE floats to UDP 4500 (RFC 7296 §2.23). */
  natLocal = false;
  natRemote = false;
  /** Pretend to be behind a NAT so ESP runs in UDP 4500 (strongSwan's encap=yes; RFC 7296 §2.23). */
  forceEncapsulation = false;
  /** Where this SA's child SAs get their inbound SPIs (the manager's, shared by all its SAs). */
  spis?: SpiRegistry;
  /** Message ID of our next request, and of the next request we expect from the peer (§2.2). */
  myMid = 0;
  peerMid = 0;

  /** `spis`: both SPIs when they are known at once (a responder's, a rekey's); else an initiator's own and zeros. */
  constructor(
    readonly role: 'initiator' | 'responder',
    readonly local: Endpoint,
    public remote: Endpoint,
    spis?: { spiI: Uint8Array; spiR: Uint8Array },
  ) {
    this.spiBlock = spis
      ? spiPair(spis.spiI, spis.spiR)
      : spiPair(role === 'initiator' ? randomOctets(8) : Buffer.alloc(8), Buffer.alloc(8));
  }

  get spiI(): Buffer {
    return this.spiBlock.subarray(0, 8);
  }
  set spiI(spi: Uint8Array) {
    this.spiBlock = spiPair(spi, this.spiR);
  }
  get spiR(): Buffer {
    return this.spiBlock.subarray(8, 16);
  }
  set spiR(spi: Uint8Array) {
    this.spiBlock = spiPair(this.spiI, spi);
  }

  /** Our SPI: what the peer's messages name us by. */
  get localSpi(): Buffer {
    return this.role === 'initiator' ? this.spiI : this.spiR;
  }

  get floated(): boolean {
    return this.natLocal || this.natRemote;
  }

  /**
   * Derives the IKE SA keys once the proposal, nonces and shared secret are known; for an IKE SA
   * rekey (§2.18) from the old SA's SK_d and PRF.
   */
  deriveKeys(sharedSecret: Buffer, rekeyOf?: IkeSa): void {
    const p = this.chosen;
    if (!p || !this.nonceI || !this.nonceR)
      throw new IkeError('keys derived before the IKE_SA_INIT exchange completed', NotifyType.INVALID_SYNTAX);
    const encrT = transformOf(p, TransformType.ENCR);
    const prf = PRFS[transformOf(p, TransformType.PRF)?.id as keyof typeof PRFS];
    const encr = ENCRS[encrT?.id as keyof typeof ENCRS];
    const integT = transformOf(p, TransformType.INTEG);
    const integ = integT ? INTEGS[integT.id as keyof typeof INTEGS] : undefined;
    if (!prf || !encr || !encrT?.keyLength || (encr.mode === 'cbc' && !integ)) {
      throw new IkeError(
        'the chosen IKE proposal has an algorithm consec does not implement',
        NotifyType.NO_PROPOSAL_CHOSEN,
      );
    }
    this.suite = { prf, encr, encrKeyBits: encrT.keyLength, integ };
    const old = rekeyOf?.keys && rekeyOf.suite ? { skD: rekeyOf.keys.skD, prf: rekeyOf.suite.prf } : undefined;
    this.keys = deriveIkeKeys(this.suite, this.nonceI, this.nonceR, sharedSecret, this.spiI, this.spiR, old);
  }

  /** Keys to protect messages we send (out) or to open messages we receive (in). */
  skKeys(direction: 'out' | 'in'): SkKeys {
    const k = this.keys;
    const s = this.suite;
    if (!k || !s) throw new IkeError('no keys yet', NotifyType.INVALID_SYNTAX);
    const ours = (direction === 'out') === (this.role === 'initiator');
    return { encr: s.encr, encrKey: ours ? k.skEi : k.skEr, integ: s.integ, integKey: ours ? k.skAi : k.skAr };
  }
}
