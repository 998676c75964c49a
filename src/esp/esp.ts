/**
 * ESP (RFC 4303) for one SA and direction: AES-GCM-16 (RFC 4106), AES-CBC with HMAC-SHA-1/SHA-2
 * (RFC 3602, RFC 4868) and integrity-only NULL encryption with HMAC (RFC 2410), with or without
 * extended sequence numbers. Pure: buffers in, buffers out; cipher keys are imported once per SA.
 * Inbound order is RFC 4303 §3.4: replay pre-check → ICV → decrypt → padding → replay update.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHmac,
  createSecretKey,
  type KeyObject,
  randomFillSync,
  timingSafeEqual,
} from 'node:crypto';
import { ConsecError } from '../errors.ts';
import { ReplayWindow } from './replay.ts';

export type EspFailure = 'malformed' | 'spi' | 'replay' | 'integrity' | 'padding' | 'sequence-exhausted';

/** A packet refused by ESP; `reason` maps to the Windows IPsec driver events (4960 integrity, 4961/4962 replay, 4965 SPI). */
export class EspError extends ConsecError {
  constructor(
    readonly reason: EspFailure,
    message: string,
  ) {
    super('ERR_ESP', message);
  }
}

export type EspCipher = 'aes-gcm-16' | 'aes-cbc' | 'null';
export type EspInteg = 'sha1-96' | 'sha256-128' | 'sha384-192' | 'sha512-256';

export interface EspSaParams {
  spi: number;
  cipher: EspCipher;
  /** Encryption key; for AES-GCM the 4-octet salt follows the key (RFC 4106 §8.1). */
  encrKey: Buffer;
  /** Integrity for AES-CBC and NULL (absent for AES-GCM). */
  integ?: EspInteg;
  integKey?: Buffer;
  /** Extended (64-bit) sequence numbers (RFC 4303 §2.2.1). */
  esn?: boolean;
  /** Anti-replay window in packets (inbound). Default 1024. */
  replayWindow?: number;
  /** Outbound: the last sequence number already used (an SA handed over from another process). */
  lastSeq?: number;
  /**
   * Sequence numbers, replay window and counters only: the addon's batch contexts seal and open
   * the SA's packets, so no key is imported here (`seal`/`open` then refuse).
   */
  countersOnly?: boolean;
}

/** An SA's keys as node:crypto takes them. */
interface EspKeys {
  /** AES key (absent for NULL encryption). */
  cipher?: KeyObject;
  /** AES-GCM's 4-octet salt, in the SA's key block. */
  salt?: Buffer;
  /** HMAC key and digest (absent for AES-GCM). */
  hmac?: KeyObject;
  hash?: string;
}

/** HMAC digest (node:crypto and OpenSSL name) and ICV length per ESP integrity algorithm. */
export const ESP_INTEG: Record<EspInteg, { hash: 'sha1' | 'sha256' | 'sha384' | 'sha512'; icv: number }> = {
  'sha1-96': { hash: 'sha1', icv: 12 },
  'sha256-128': { hash: 'sha256', icv: 16 },
  'sha384-192': { hash: 'sha384', icv: 24 },
  'sha512-256': { hash: 'sha512', icv: 32 },
};

const GCM_ICV = 16;

class EspSa {
  readonly spi: number;
  readonly cipher: EspCipher;
  readonly esn: boolean;
  /** Absent when the addon seals and opens this SA's packets (countersOnly). */
  private readonly keyObjects?: EspKeys;
  protected readonly algo: string;
  readonly ivLen: number;
  readonly icvLen: number;
  readonly block: number;
  /** Traffic through the SA, for lifetimes and statistics. */
  bytes = 0;
  packets = 0;

  constructor(p: EspSaParams) {
    this.spi = p.spi >>> 0;
    this.cipher = p.cipher;
    this.esn = p.esn ?? false;
    const keys: EspKeys = {};
    if (p.cipher === 'aes-gcm-16') {
      const k = p.encrKey.length - 4;
      if (k !== 16 && k !== 24 && k !== 32)
        throw new RangeError('AES-GCM key must be 16, 24 or 32 octets plus a 4-octet salt');
      if (!p.countersOnly) {
        keys.cipher = createSecretKey(p.encrKey.subarray(0, k));
        keys.salt = p.encrKey.subarray(k); // in the SA's key block
      }
      this.algo = `aes-${k * 8}-gcm`;
      this.ivLen = 8;
      this.icvLen = GCM_ICV;
      this.block = 4;
    } else {
      if (!p.integ || !p.integKey) throw new RangeError(`${p.cipher} needs an integrity algorithm`);
      const i = ESP_INTEG[p.integ];
      if (!p.countersOnly) {
        keys.hmac = createSecretKey(p.integKey);
        keys.hash = i.hash;
      }
      this.icvLen = i.icv;
      if (p.cipher === 'aes-cbc') {
        const k = p.encrKey.length;
        if (k !== 16 && k !== 24 && k !== 32) throw new RangeError('AES-CBC key must be 16, 24 or 32 octets');
        if (!p.countersOnly) keys.cipher = createSecretKey(p.encrKey);
        this.algo = `aes-${k * 8}-cbc`;
        this.ivLen = 16;
        this.block = 16;
      } else {
        this.algo = 'null';
        this.ivLen = 0;
        this.block = 4;
      }
    }
    if (!p.countersOnly) this.keyObjects = keys;
  }

  /** The keys, for sealing and opening here (never for an SA the addon carries). */
  protected get keys(): EspKeys {
    if (!this.keyObjects)
      throw new Error(`SPI ${this.spi.toString(16)}: the addon seals and opens this SA, it holds no keys here`);
    return this.keyObjects;
  }

  /** Octets ESP adds around a payload of `len` octets (header, IV, padding, trailer, ICV). */
  overhead(len: number): number {
    return 8 + this.ivLen + this.padLength(len) + 2 + this.icvLen;
  }

  protected padLength(len: number): number {
    return (this.block - ((len + 2) % this.block)) % this.block;
  }

  /** HMAC over SPI | seq | IV | ciphertext [| seq high] (RFC 4303 §2.2.1 for ESN). */
  protected mac(packet: Buffer, end: number, seqHigh: number): Buffer {
    const k = this.keys;
    const h = createHmac(k.hash as string, k.hmac as KeyObject).update(packet.subarray(0, end));
    if (this.esn) {
      const hi = Buffer.allocUnsafe(4);
      hi.writeUInt32BE(seqHigh >>> 0);
      h.update(hi);
    }
    return h.digest().subarray(0, this.icvLen);
  }

  /** The GCM nonce (salt | IV) and AAD (SPI | [seq high |] seq low) of a packet. */
  protected gcmParams(packet: Buffer, seqHigh: number): { nonce: Buffer; aad: Buffer } {
    const nonce = Buffer.allocUnsafe(12);
    (this.keys.salt as Buffer).copy(nonce, 0);
    packet.copy(nonce, 4, 8, 16);
    let aad: Buffer;
    if (this.esn) {
      aad = Buffer.allocUnsafe(12);
      packet.copy(aad, 0, 0, 4);
      aad.writeUInt32BE(seqHigh >>> 0, 4);
      packet.copy(aad, 8, 4, 8);
    } else aad = packet.subarray(0, 8);
    return { nonce, aad };
  }
}

export class EspOutbound extends EspSa {
  /** Sequence number of the next packet (64-bit with ESN; the first packet carries 1). */
  private seq = 0;
  private readonly limit: number;

  constructor(p: EspSaParams) {
    super(p);
    this.limit = this.esn ? 2 ** 53 - 1 : 2 ** 32 - 1;
    this.seq = p.lastSeq ?? 0;
  }

  /** Packets left before the counter runs out (the keying service rekeys well before). */
  get remaining(): number {
    return this.limit - this.seq;
  }

  /**
   * Takes `n` sequence numbers for packets sealed elsewhere (the batched sealer of the addon);
   * returns the first. Counts them and their payload octets.
   */
  reserve(n: number, bytes: number): number {
    if (this.seq + n > this.limit)
      throw new EspError(
        'sequence-exhausted',
        `SPI ${this.spi.toString(16)}: sequence numbers exhausted, the SA must be rekeyed`,
      );
    const first = this.seq + 1;
    this.seq += n;
    this.packets += n;
    this.bytes += bytes;
    return first;
  }

  /** The ESP packet (SPI … ICV) carrying `payload` with next header `nextHeader`. */
  seal(payload: Buffer, nextHeader: number): Buffer {
    return this.sealWith(this.reserve(1, payload.length), payload, nextHeader);
  }

  /**
   * The ESP packet carrying `payload` with sequence number `seq` (taken with `reserve`): neither
   * counted nor checked here.
   */
  sealWith(seq: number, payload: Buffer, nextHeader: number): Buffer {
    const seqLow = seq % 2 ** 32;
    const seqHigh = Math.floor(seq / 2 ** 32);
    const pad = this.padLength(payload.length);
    const plainLen = payload.length + pad + 2;
    const out = Buffer.allocUnsafe(8 + this.ivLen + plainLen + this.icvLen);
    out.writeUInt32BE(this.spi, 0);
    out.writeUInt32BE(seqLow, 4);
    const body = 8 + this.ivLen;
    // Plaintext in place: payload | padding 1, 2, 3 … | pad length | next header.
    payload.copy(out, body);
    for (let i = 0; i < pad; i++) out[body + payload.length + i] = i + 1;
    out[body + payload.length + pad] = pad;
    out[body + payload.length + pad + 1] = nextHeader;
    const plain = out.subarray(body, body + plainLen);
    if (this.cipher === 'aes-gcm-16') {
      // The explicit IV is the 64-bit sequence number: unique per key, as RFC 4106 §3.1 requires.
      out.writeUInt32BE(seqHigh, 8);
      out.writeUInt32BE(seqLow, 12);
      const { nonce, aad } = this.gcmParams(out, seqHigh);
      const c = createCipheriv(this.algo as 'aes-256-gcm', this.keys.cipher as KeyObject, nonce, {
        authTagLength: GCM_ICV,
      });
      c.setAAD(aad);
      const ct = c.update(plain);
      ct.copy(out, body);
      c.final();
      c.getAuthTag().copy(out, body + plainLen);
    } else {
      if (this.cipher === 'aes-cbc') {
        const iv = out.subarray(8, 8 + this.ivLen);
        randomFillSync(iv);
        const c = createCipheriv(this.algo, this.keys.cipher as KeyObject, iv);
        c.setAutoPadding(false);
        const ct = c.update(plain);
        ct.copy(out, body);
        c.final();
      }
      this.mac(out, body + plainLen, seqHigh).copy(out, body + plainLen);
    }
    return out;
  }
}

export interface Opened {
  /** The inner packet (tunnel mode) or transport payload. */
  payload: Buffer;
  nextHeader: number;
  /** Full (64-bit with ESN) sequence number. */
  seq: number;
}

export class EspInbound extends EspSa {
  readonly replay: ReplayWindow;

  constructor(p: EspSaParams) {
    super(p);
    this.replay = new ReplayWindow(p.replayWindow ?? 1024);
  }

  /**
   * For packets opened elsewhere (the addon's batched opener): the full sequence number of a packet
   * whose low half is `low`, or -1 when the replay window already refuses it (RFC 4303 §3.4.3).
   */
  precheck(low: number): number {
    const seq = this.esn ? this.replay.inferEsn(low) : low;
    return seq > 0 && this.replay.check(seq) ? seq : -1;
  }

  /** Records a packet opened elsewhere once its ICV verified; false if it was a replay after all. */
  accept(seq: number, bytes: number): boolean {
    if (!this.replay.update(seq)) return false;
    this.packets++;
    this.bytes += bytes;
    return true;
  }

  /** Verifies, decrypts and replay-checks one ESP packet (SPI … ICV). Throws EspError; never changes state on failure. */
  open(packet: Buffer): Opened {
    if (packet.length >= 8 && packet.readUInt32BE(0) !== this.spi)
      throw new EspError('spi', 'ESP packet for another SPI');
    const low = packet.length >= 8 ? packet.readUInt32BE(4) : 0;
    const seq = this.precheck(low);
    if (seq < 0)
      throw new EspError('replay', `replayed or too old ESP packet (sequence ${low}, window top ${this.replay.top})`);
    const opened = this.decrypt(packet, seq);
    if (!this.accept(seq, opened.payload.length)) throw new EspError('replay', `replayed ESP packet (sequence ${seq})`);
    return opened;
  }

  /**
   * Verifies and decrypts one ESP packet whose full sequence number is `seq` (from `precheck`);
   * the replay window is neither checked nor moved here. Throws EspError; changes no state.
   */
  decrypt(packet: Buffer, seq: number): Opened {
    const min = 8 + this.ivLen + this.block + this.icvLen;
    if (packet.length < min || (packet.length - 8 - this.ivLen - this.icvLen) % this.block !== 0)
      throw new EspError(
        'malformed',
        `ESP packet of ${packet.length} octets does not fit SPI ${this.spi.toString(16)}`,
      );
    if (packet.readUInt32BE(0) !== this.spi) throw new EspError('spi', 'ESP packet for another SPI');
    const seqHigh = Math.floor(seq / 2 ** 32);
    const body = 8 + this.ivLen;
    const end = packet.length - this.icvLen;
    let plain: Buffer;
    if (this.cipher === 'aes-gcm-16') {
      const { nonce, aad } = this.gcmParams(packet, seqHigh);
      const d = createDecipheriv(this.algo as 'aes-256-gcm', this.keys.cipher as KeyObject, nonce, {
        authTagLength: GCM_ICV,
      });
      d.setAAD(aad);
      d.setAuthTag(packet.subarray(end));
      try {
        const first = d.update(packet.subarray(body, end));
        const last = d.final();
        plain = last.length ? Buffer.concat([first, last]) : first;
      } catch {
        throw new EspError('integrity', `ESP packet failed its integrity check (SPI ${this.spi.toString(16)})`);
      }
    } else {
      const icv = this.mac(packet, end, seqHigh);
      if (!timingSafeEqual(icv, packet.subarray(end)))
        throw new EspError('integrity', `ESP packet failed its integrity check (SPI ${this.spi.toString(16)})`);
      if (this.cipher === 'aes-cbc') {
        const d = createDecipheriv(this.algo, this.keys.cipher as KeyObject, packet.subarray(8, body));
        d.setAutoPadding(false);
        const first = d.update(packet.subarray(body, end));
        const last = d.final();
        plain = last.length ? Buffer.concat([first, last]) : first;
      } else plain = packet.subarray(body, end);
    }
    const padLen = plain[plain.length - 2] as number;
    const nextHeader = plain[plain.length - 1] as number;
    const payloadLen = plain.length - 2 - padLen;
    if (payloadLen < 0) throw new EspError('padding', 'ESP pad length exceeds the payload');
    // Default padding is 1, 2, 3 …; anything else is refused (RFC 4303 §2.4).
    for (let i = 0; i < padLen; i++)
      if (plain[payloadLen + i] !== i + 1) throw new EspError('padding', 'ESP padding is not the default sequence');
    return { payload: plain.subarray(0, payloadLen), nextHeader, seq };
  }
}

/** Next header 59: a dummy packet (RFC 4303 §2.6) that receivers must drop silently. */
export const NEXT_HEADER_NONE = 59;
