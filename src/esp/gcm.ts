/**
 * ESP with AES-GCM-16 (RFC 4303, RFC 4106): seal and open one packet. Pure functions over
 * buffers, kept as an independent cross-check of esp.ts and the addon's batched sealer.
 */
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { ConsecError } from '../errors.ts';

export class EspError extends ConsecError {
  constructor(message: string) {
    super('ERR_ESP', message);
  }
}

export interface GcmSa {
  spi: number;
  /** AES key (16, 24 or 32 bytes). */
  key: Buffer;
  /** The 4-byte salt that follows the key in the keying material. */
  salt: Buffer;
}

/** Splits child keying material (key | salt) into a GcmSa. */
export function gcmSa(spi: Buffer, keymat: Buffer): GcmSa {
  return {
    spi: spi.readUInt32BE(0),
    key: keymat.subarray(0, keymat.length - 4),
    salt: keymat.subarray(keymat.length - 4),
  };
}

const ICV = 16;

export function sealGcm(sa: GcmSa, seq: number, payload: Buffer, nextHeader: number): Buffer {
  // Pad so that payload | padding | pad length | next header ends on a 4-byte boundary.
  const padLen = (4 - ((payload.length + 2) % 4)) % 4;
  const trailer = Buffer.alloc(padLen + 2);
  for (let i = 0; i < padLen; i++) trailer[i] = i + 1;
  trailer[padLen] = padLen;
  trailer[padLen + 1] = nextHeader;
  const head = Buffer.alloc(16);
  head.writeUInt32BE(sa.spi >>> 0, 0);
  head.writeUInt32BE(seq >>> 0, 4);
  head.writeUInt32BE(seq >>> 0, 12); // IV: the sequence number is unique per SA, as RFC 4106 §3.1 allows
  const c = createCipheriv(
    `aes-${sa.key.length * 8}-gcm` as 'aes-256-gcm',
    sa.key,
    Buffer.concat([sa.salt, head.subarray(8, 16)]),
    { authTagLength: ICV },
  );
  c.setAAD(head.subarray(0, 8));
  const ct = Buffer.concat([c.update(payload), c.update(trailer), c.final()]);
  return Buffer.concat([head, ct, c.getAuthTag()]);
}

export function openGcm(sa: GcmSa, packet: Buffer): { seq: number; payload: Buffer; nextHeader: number } {
  if (packet.length < 16 + 2 + ICV) throw new EspError('ESP packet too short');
  if (packet.readUInt32BE(0) !== sa.spi >>> 0) throw new EspError('ESP packet for another SPI');
  const d = createDecipheriv(
    `aes-${sa.key.length * 8}-gcm` as 'aes-256-gcm',
    sa.key,
    Buffer.concat([sa.salt, packet.subarray(8, 16)]),
    { authTagLength: ICV },
  );
  d.setAAD(packet.subarray(0, 8));
  d.setAuthTag(packet.subarray(packet.length - ICV));
  let plain: Buffer;
  try {
    plain = Buffer.concat([d.update(packet.subarray(16, packet.length - ICV)), d.final()]);
  } catch {
    throw new EspError('ESP packet failed its integrity check');
  }
  const padLen = plain[plain.length - 2] as number;
  if (padLen + 2 > plain.length) throw new EspError('ESP pad length exceeds the payload');
  return {
    seq: packet.readUInt32BE(4),
    payload: plain.subarray(0, plain.length - 2 - padLen),
    nextHeader: plain[plain.length - 1] as number,
  };
}
