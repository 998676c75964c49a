/**
 * AH (RFC 4302) over IPv4 and IPv6 for one SA and direction, with HMAC-SHA-1/SHA-2 (RFC 2404,
 * RFC 4868) and extended sequence numbers. AH authenticates the outer IP header too, so the sender
 * builds it (the data plane sends with IP_HDRINCL): the ICV covers the header with its mutable
 * fields zeroed (IPv4: TOS, flags/fragment offset, TTL, checksum; IPv6: traffic class, flow label,
 * hop limit — RFC 4302 §3.3.3.1), the AH header with a zero ICV, the payload, and the high half of
 * an extended sequence number. Packets carry no IP options or extension headers before AH.
 * Pure: buffers in, buffers out.
 */
import { createHmac, createSecretKey, type KeyObject, timingSafeEqual } from 'node:crypto';
import { internetChecksum } from '../packet/checksum.ts';
import { EspError, type EspInteg } from './esp.ts';
import { ReplayWindow } from './replay.ts';

export const IPPROTO_AH = 51;

const INTEG: Record<EspInteg, { hash: string; icv: number }> = {
  'sha1-96': { hash: 'sha1', icv: 12 },
  'sha256-128': { hash: 'sha256', icv: 16 },
  'sha384-192': { hash: 'sha384', icv: 24 },
  'sha512-256': { hash: 'sha512', icv: 32 },
};

export interface AhSaParams {
  spi: number;
  integ: EspInteg;
  key: Buffer;
  esn?: boolean;
  replayWindow?: number;
  lastSeq?: number;
}

class AhSa {
  readonly spi: number;
  readonly esn: boolean;
  protected readonly hash: string;
  protected readonly key: KeyObject;
  readonly icvLen: number;
  bytes = 0;
  packets = 0;

  constructor(p: AhSaParams) {
    this.spi = p.spi >>> 0;
    this.esn = p.esn ?? false;
    const i = INTEG[p.integ];
    this.hash = i.hash;
    this.icvLen = i.icv;
    this.key = createSecretKey(p.key);
  }

  /**
   * Octets AH adds to a packet: header and ICV padded to 64 bits. RFC 4302 §3.3.3.2.1 asks for that
   * over IPv6 and only for 32-bit alignment over IPv4, but Linux accepts an IPv4 AH only at 64-bit
   * alignment unless the SA has the align4 flag, and padding is always allowed: HMAC-SHA-256-128
   * gives 12 + 16 + 4 octets.
   */
  get overhead(): number {
    return (12 + this.icvLen + 7) & ~7;
  }

  /**
   * The ICV of a packet carrying AH right after its fixed IP header (`ipLen` 20 or 40 octets):
   * mutable fields and the ICV as zeros; any padding after the ICV is authenticated as sent
   * (RFC 4302 §3.3.3.1, as Linux computes it).
   */
  protected icv(packet: Buffer, ipLen: number, seqHigh: number): Buffer {
    const h = createHmac(this.hash, this.key);
    const head = Buffer.from(packet.subarray(0, ipLen + 12));
    if (ipLen === 20) {
      head[1] = 0; // TOS
      head.writeUInt16BE(0, 6); // flags, fragment offset
      head[8] = 0; // TTL
      head.writeUInt16BE(0, 10); // checksum
    } else {
      head.writeUInt32BE(0x60000000, 0); // version stays; traffic class and flow label zeroed
      head[7] = 0; // hop limit
    }
    h.update(head);
    h.update(Buffer.alloc(this.icvLen));
    h.update(packet.subarray(ipLen + 12 + this.icvLen));
    if (this.esn) {
      const hi = Buffer.alloc(4);
      hi.writeUInt32BE(seqHigh >>> 0);
      h.update(hi);
    }
    return h.digest().subarray(0, this.icvLen);
  }
}

export class AhOutbound extends AhSa {
  private seq: number;
  private readonly limit: number;

  constructor(p: AhSaParams) {
    super(p);
    this.limit = this.esn ? 2 ** 53 - 1 : 2 ** 32 - 1;
    this.seq = p.lastSeq ?? 0;
  }

  get remaining(): number {
    return this.limit - this.seq;
  }

  /**
   * A whole IP packet src → dst (4 or 16 octets each): IPv4 or IPv6 header (next protocol 51) | AH |
   * payload (next header `nextHeader`).
   */
  seal(payload: Buffer, nextHeader: number, src: Buffer, dst: Buffer): Buffer {
    if (this.seq >= this.limit)
      throw new EspError('sequence-exhausted', `AH SPI ${this.spi.toString(16)}: sequence numbers exhausted`);
    const seq = ++this.seq;
    const ahLen = this.overhead;
    const ipLen = src.length === 4 ? 20 : 40;
    const out = Buffer.alloc(ipLen + ahLen + payload.length);
    if (ipLen === 20) {
      out[0] = 0x45;
      out.writeUInt16BE(out.length, 2);
      // The identification is covered by the ICV; never 0, or the kernel would choose one (IP_HDRINCL).
      out.writeUInt16BE((seq % 0xffff) + 1, 4);
      out.writeUInt16BE(0x4000, 6); // DF
      out[8] = 64;
      out[9] = IPPROTO_AH;
      src.copy(out, 12, 0, 4);
      dst.copy(out, 16, 0, 4);
    } else {
      out[0] = 0x60;
      out.writeUInt16BE(out.length - 40, 4);
      out[6] = IPPROTO_AH;
      out[7] = 64;
      src.copy(out, 8, 0, 16);
      dst.copy(out, 24, 0, 16);
    }
    const ah = ipLen;
    out[ah] = nextHeader;
    out[ah + 1] = ahLen / 4 - 2;
    out.writeUInt32BE(this.spi, ah + 4);
    out.writeUInt32BE(seq % 2 ** 32, ah + 8);
    payload.copy(out, ah + ahLen);
    this.icv(out, ipLen, Math.floor(seq / 2 ** 32)).copy(out, ah + 12);
    if (ipLen === 20) out.writeUInt16BE(internetChecksum(out, 0, 20), 10);
    this.bytes += payload.length;
    this.packets++;
    return out;
  }
}

export class AhInbound extends AhSa {
  readonly replay: ReplayWindow;

  constructor(p: AhSaParams) {
    super(p);
    this.replay = new ReplayWindow(p.replayWindow ?? 1024);
  }

  /**
   * Verifies an IP packet with AH right after its fixed header (IPv4 with IHL 5, or IPv6 whose next
   * header is AH): the payload after AH and its next header.
   */
  open(packet: Buffer): { payload: Buffer; nextHeader: number; seq: number } {
    const v6 = packet.length >= 40 && (packet[0] as number) >> 4 === 6;
    const ipLen = v6 ? 40 : 20;
    if (
      packet.length < ipLen + 12 + this.icvLen ||
      (v6 ? packet[6] !== IPPROTO_AH : packet[0] !== 0x45 || packet[9] !== IPPROTO_AH)
    )
      throw new EspError('malformed', 'not an IP packet with AH after its header (and no IP options)');
    // Any 32-bit aligned length that holds the ICV: IPv4 peers pad to 32 (RFC 4302) or 64 bits (Linux).
    const ahLen = ((packet[ipLen + 1] as number) + 2) * 4;
    if (ahLen < 12 + this.icvLen || ahLen > this.overhead || packet.length < ipLen + ahLen || (v6 && ahLen % 8))
      throw new EspError('malformed', 'AH length does not fit the SA');
    if (packet.readUInt32BE(ipLen + 4) !== this.spi) throw new EspError('spi', 'AH packet for another SPI');
    const low = packet.readUInt32BE(ipLen + 8);
    const seq = this.esn ? this.replay.inferEsn(low) : low;
    if (seq <= 0 || !this.replay.check(seq))
      throw new EspError('replay', `replayed or too old AH packet (sequence ${seq})`);
    const expected = this.icv(packet, ipLen, Math.floor(seq / 2 ** 32));
    if (!timingSafeEqual(expected, packet.subarray(ipLen + 12, ipLen + 12 + this.icvLen)))
      throw new EspError('integrity', `AH packet failed its integrity check (SPI ${this.spi.toString(16)})`);
    if (!this.replay.update(seq)) throw new EspError('replay', `replayed AH packet (sequence ${seq})`);
    const payload = packet.subarray(ipLen + ahLen);
    this.bytes += payload.length;
    this.packets++;
    return { payload, nextHeader: packet[ipLen] as number, seq };
  }
}
