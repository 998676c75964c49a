/**
 * The one interface every ESP packet of the data plane goes through: a sealer and an opener per SA
 * that take a whole gather of packets in one call — the addon's (AES-GCM, AES-CBC + HMAC, with the
 * node binary's OpenSSL) or, for suites the addon lacks (NULL + HMAC) and addons without a suite,
 * the TypeScript ESP behind the same calls. Open reports per packet the payload length or a
 * negated ESP_OPEN_FAILURE code, as the addon does.
 */
import { EspError, type EspInbound, type EspOutbound } from '../esp/esp.ts';
import { ESP_OPEN_FAILURE, type EspOpener, type EspOpenFailure, type EspSealer } from '../io/native.ts';

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

  seal(...[buf, offsets, lengths, nextHeaders, count, dst, dstIndex, , seq]: Parameters<EspSealer['seal']>): void {
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

  open(...[buf, offsets, lengths, seqHighs, count, dst, nextHeaders]: Parameters<EspOpener['open']>): void {
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
