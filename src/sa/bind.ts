/**
 * The keying datagram transport behind a small interface (as wireguard-go's `conn.Bind`): UDP 500
 * and 4500 on one address. The data plane owns the sockets where it shares UDP 4500 with IKE (ESP
 * in UDP, RFC 3948), the keying modules own them otherwise; both demultiplex port 4500 here.
 */
import type { Endpoint } from './spec.ts';

export type IkePort = 500 | 4500;

export interface IkeReceiver {
  /** A keying message (non-ESP marker removed) that arrived on `port` from `from`. */
  ike(message: Buffer, from: Endpoint, port: IkePort): void;
  /** An ESP-in-UDP packet that arrived on 4500. */
  esp?(packet: Buffer, from: Endpoint): void;
}

export interface IkeBind {
  readonly address: string;
  /** Sends a keying message from our `port`; on 4500 the non-ESP marker is added here. */
  sendIke(message: Buffer, port: IkePort, to: Endpoint): void;
  /** Sends an ESP-in-UDP packet (or a NAT keepalive: one 0xff octet) from 4500. */
  sendUdp4500(packet: Buffer, to: Endpoint): void;
  close(): void;
}

/** The four zero octets in front of a keying message on port 4500 (RFC 3948 §2.2). */
export const NON_ESP_MARKER = Buffer.alloc(4);

/** What a datagram on UDP 4500 is (RFC 3948 §2): a NAT keepalive, a keying message, ESP, or too short for ESP. */
export type Udp4500Kind = 'keepalive' | 'ike' | 'esp' | 'runt';

/** Classifies the `len` octets at `buf[off]` that arrived on UDP 4500 (no allocation). */
export function udp4500Kind(buf: Buffer, off = 0, len = buf.length - off): Udp4500Kind {
  if (len === 1 && buf[off] === 0xff) return 'keepalive';
  if (len >= 4 && buf.readUInt32BE(off) === 0) return 'ike';
  return len >= 8 ? 'esp' : 'runt';
}
