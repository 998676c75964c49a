/**
 * The one interface every ESP packet of the data plane goes through: a sealer and an opener per SA
 * that take a whole gather of packets in one call — the addon's (AES-GCM, AES-CBC + HMAC, with the
 * node binary's OpenSSL) or, for suites the addon lacks (NULL + HMAC) and addons without a suite,
 * the TypeScript ESP behind the same calls. Open reports per packet the payload length or a
 * negated ESP_OPEN_FAILURE code, as the addon does.
 */
import { EspError, type EspInbound, type EspOutbound } from '../esp/esp.ts';
import { ESP_OPEN_FAILURE, type EspOpenFailure, type PacketBatch } from '../io/native.ts';

export interface EspSealer {
  /**
   * Seals `count` packets — packet i is buf[offsets[i], +lengths[i]) with next header nextHeaders[i]
   * — into `dst` slots dstIndex… (their lengths set); `seq` is the first packet's sequence number.
   */
  seal(
    buf: Buffer,
    offsets: Int32Array,
    lengths: Int32Array,
    nextHeaders: Uint8Array,
    count: number,
    dst: PacketBatch,
    dstIndex: number,
    spi: number,
    seq: number,
  ): void;
  close(): void;
}

export interface EspOpener {
  /**
   * Opens `count` ESP packets (buf[offsets[i], +lengths[i]), high sequence halves in `seqHighs`)
   * into `dst` slots: dst.lengths[i] is the payload length or a negative failure code.
   */
  open(
    buf: Buffer,
    offsets: Int32Array,
    lengths: Int32Array,
    seqHighs: Uint32Array,
    count: number,
    dst: { buf: Buffer; offsets: Int32Array; lengths: Int32Array },
    nextHeaders: Uint8Array,
  ): void;
  close(): void;
}

const CODE = Object.fromEntries(Object.entries(ESP_OPEN_FAILURE).map(([code, why]) => [why, -Number(code)])) as Record<
  EspOpenFailure,
  number
>;

/** The negated ESP_OPEN_FAILURE code of an EspError, as the addon writes it. */
const failureCode = (err: unknown): number =>
  err instanceof EspError && (err.reason === 'integrity' || err.reason === 'padding')
    ? CODE[err.reason]
    : CODE.malformed;

/** The TypeScript ESP as a batch sealer (sequence numbers reserved by the caller, as for the addon). */
export class TsEspSealer implements EspSealer {
  constructor(private readonly sa: EspOutbound) {}

  seal(
    buf: Buffer,
    offsets: Int32Array,
    lengths: Int32Array,
    nextHeaders: Uint8Array,
    count: number,
    dst: PacketBatch,
    dstIndex: number,
    _spi: number,
    seq: number,
  ): void {
    for (let k = 0; k < count; k++) {
      const off = offsets[k] as number;
      const payload = buf.subarray(off, off + (lengths[k] as number));
      dst.set(dstIndex + k, this.sa.sealWith(seq + k, payload, nextHeaders[k] as number));
    }
  }

  close(): void {}
}

/** The TypeScript ESP as a batch opener (replay handled by the caller, as for the addon). */
export class TsEspOpener implements EspOpener {
  constructor(private readonly sa: EspInbound) {}

  open(
    buf: Buffer,
    offsets: Int32Array,
    lengths: Int32Array,
    seqHighs: Uint32Array,
    count: number,
    dst: { buf: Buffer; offsets: Int32Array; lengths: Int32Array },
    nextHeaders: Uint8Array,
  ): void {
    for (let k = 0; k < count; k++) {
      const off = offsets[k] as number;
      const packet = buf.subarray(off, off + (lengths[k] as number));
      try {
        const seq = (seqHighs[k] as number) * 2 ** 32 + packet.readUInt32BE(4);
        const opened = this.sa.decrypt(packet, seq);
        opened.payload.copy(dst.buf, dst.offsets[k] as number);
        dst.lengths[k] = opened.payload.length;
        nextHeaders[k] = opened.nextHeader;
      } catch (err) {
        dst.lengths[k] = failureCode(err);
      }
    }
  }

  close(): void {}
}
