/**
 * IKEv1 fragmentation as Windows and strongSwan do it (MS-IKEE §2.2.3.1, §3.3; Cisco's format):
 * a large message (Main Mode 5–6 with certificates) travels as datagrams whose only payload is a
 * Fragment payload (type 132: fragment ID, number from 1, LAST_FRAGMENT flag), each at most 576
 * octets of IPv4 or 1280 of IPv6 (§3.3.6.1). The fragments carry the whole original message, its
 * ISAKMP header included (strongSwan and racoon do; the reassembled message must begin with the
 * cookies of the fragments' header, else it is dropped).
 *
 * Reassembly follows §3.3.5.3: a fragment that is not the only payload is discarded, duplicates are
 * ignored, more than one LAST or a number past the LAST discards the message, and an incomplete
 * message is forgotten after 90 s. Only ISAKMP SAs we already hold may send fragments, at most
 * 16 messages in reassembly at once and 64 KiB each: strangers cannot make us keep state.
 */
import { isIPv4 } from 'node:net';
import { decodeV1Payloads, encodeV1, type V1Message } from './codec.ts';
import { PayloadType } from './constants.ts';

/** The largest IP datagram of one fragment (MS-IKEE §3.3.6.1). */
export const fragmentDatagram = (address: string): number => (isIPv4(address) ? 576 : 1280);

const ISAKMP_HEADER = 28;
const FRAGMENT_HEADER = 8;
const MAX_MESSAGE = 65_536;
const MAX_IN_REASSEMBLY = 16;
const REASSEMBLY_MS = 90_000;

/**
 * Splits `raw` (a whole ISAKMP message) into fragment messages that fit `datagram` octets of IP
 * with UDP (and the non-ESP marker on port 4500); undefined when it fits as it is.
 */
export function fragmentMessage(
  raw: Buffer,
  id: number,
  datagram: number,
  port: number,
  ipv6: boolean,
): Buffer[] | undefined {
  const overhead = (ipv6 ? 40 : 20) + 8 + (port === 4500 ? 4 : 0);
  if (raw.length + overhead <= datagram) return undefined;
  const chunk = datagram - overhead - ISAKMP_HEADER - FRAGMENT_HEADER;
  const header = {
    cookieI: raw.subarray(0, 8),
    cookieR: raw.subarray(8, 16),
    exchange: raw[18] as number,
    flags: 0,
    messageId: raw.readUInt32BE(20),
  };
  const out: Buffer[] = [];
  for (let at = 0, n = 1; at < raw.length; at += chunk, n++) {
    const data = raw.subarray(at, Math.min(raw.length, at + chunk));
    out.push(encodeV1(header, [{ type: PayloadType.FRAGMENT, id, number: n, last: at + chunk >= raw.length, data }]));
  }
  return out;
}

interface Pending {
  parts: Map<number, Buffer>;
  last?: number;
  bytes: number;
  timer: NodeJS.Timeout;
}

/** Reassembly of fragmented messages, keyed by cookies, sender and fragment ID. */
export class Reassembly {
  private readonly pending = new Map<string, Pending>();

  /**
   * Takes a fragment message; returns the reassembled message when this was the missing piece.
   * `known` says whether the cookies name an ISAKMP SA we hold (else the fragment is dropped).
   */
  add(msg: V1Message, from: string, known: boolean): Buffer | undefined {
    if (!known) return undefined;
    let payloads;
    try {
      payloads = decodeV1Payloads(msg.header.nextPayload, msg.body);
    } catch {
      return undefined;
    }
    const f = payloads[0];
    if (payloads.length !== 1 || f?.type !== PayloadType.FRAGMENT || f.number === 0) return undefined;
    const key = `${msg.header.cookieI.toString('hex')}${msg.header.cookieR.toString('hex')}/${from}/${f.id}`;
    let p = this.pending.get(key);
    if (!p) {
      if (this.pending.size >= MAX_IN_REASSEMBLY) return undefined;
      const timer = setTimeout(() => this.pending.delete(key), REASSEMBLY_MS);
      timer.unref();
      p = { parts: new Map(), bytes: 0, timer };
      this.pending.set(key, p);
    }
    if (p.parts.has(f.number)) return undefined;
    const drop = () => {
      clearTimeout(p.timer);
      this.pending.delete(key);
      return undefined;
    };
    if (f.last) {
      if (p.last !== undefined) return drop();
      p.last = f.number;
    }
    if (p.last !== undefined && [...p.parts.keys(), f.number].some((n) => n > (p.last as number))) return drop();
    p.bytes += f.data.length;
    if (p.bytes > MAX_MESSAGE) return drop();
    p.parts.set(f.number, Buffer.from(f.data));
    if (p.last === undefined || p.parts.size !== p.last) return undefined;
    drop();
    const whole = Buffer.concat([...Array(p.last).keys()].map((i) => p.parts.get(i + 1) as Buffer));
    // The original message, header first, with the cookies of the fragments that carried it.
    if (
      whole.length < ISAKMP_HEADER ||
      !whole.subarray(0, 16).equals(Buffer.concat([msg.header.cookieI, msg.header.cookieR])) ||
      whole[16] === PayloadType.FRAGMENT
    )
      return undefined;
    return whole;
  }

  close(): void {
    for (const p of this.pending.values()) clearTimeout(p.timer);
    this.pending.clear();
  }
}
