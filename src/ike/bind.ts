/**
 * The IKE socket pair of a keying service without a data plane sharing it (src/sa/bind.ts has the
 * interface and the RFC 3948 demultiplexing): node:dgram UDP 500 and 4500 on one address, and an
 * in-memory network so tests run two keying services without sockets.
 */
import { createSocket, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { type IkeBind, type IkePort, type IkeReceiver, NON_ESP_MARKER, udp4500Kind } from '../sa/bind.ts';
import type { Endpoint } from '../sa/spec.ts';

/** Splits a datagram that arrived on 4500 into IKE, ESP or keepalive (RFC 3948 §2). */
export function demux4500(data: Buffer, from: Endpoint, rx: IkeReceiver): void {
  const kind = udp4500Kind(data);
  if (kind === 'ike') rx.ike(data.subarray(NON_ESP_MARKER.length), from, 4500);
  else if (kind === 'esp') rx.esp?.(data, from);
}

export class UdpBind implements IkeBind {
  private constructor(
    readonly address: string,
    private readonly s500: Socket,
    private readonly s4500: Socket,
  ) {}

  /** Binds UDP 500 and 4500 on `address` (ports overridable for unprivileged tests). */
  static async open(address: string, rx: IkeReceiver, ports: [number, number] = [500, 4500]): Promise<UdpBind> {
    const type = isIPv6(address) ? 'udp6' : 'udp4';
    const bind = (port: number) =>
      new Promise<Socket>((resolve, reject) => {
        const s = createSocket({ type, reuseAddr: false });
        s.once('error', reject);
        s.bind(port, address, () => {
          s.off('error', reject);
          s.on('error', () => {}); // ICMP errors (unreachable peers) surface as retransmission failures
          resolve(s);
        });
      });
    const s500 = await bind(ports[0]);
    let s4500: Socket;
    try {
      s4500 = await bind(ports[1]);
    } catch (err) {
      s500.close();
      throw err;
    }
    s500.on('message', (m, r) => rx.ike(m, { address: r.address, port: r.port }, 500));
    s4500.on('message', (m, r) => demux4500(m, { address: r.address, port: r.port }, rx));
    return new UdpBind(address, s500, s4500);
  }

  /** Datagrams handed to node:dgram and not yet sent (its sends complete asynchronously). */
  private pending = 0;
  private closing = false;
  private readonly sent = () => {
    if (--this.pending === 0 && this.closing) this.closeNow();
  };

  sendIke(message: Buffer, port: IkePort, to: Endpoint): void {
    if (this.closing) return;
    this.pending++;
    if (port === 500) this.s500.send(message, to.port, to.address, this.sent);
    else this.s4500.send([NON_ESP_MARKER, message], to.port, to.address, this.sent);
  }

  sendUdp4500(packet: Buffer, to: Endpoint): void {
    if (this.closing) return;
    this.pending++;
    this.s4500.send(packet, to.port, to.address, this.sent);
  }

  /** Closes the sockets once what was sent has left (a last Delete is not lost to the close). */
  close(): void {
    if (this.closing) return;
    this.closing = true;
    if (this.pending === 0) this.closeNow();
  }

  private closeNow(): void {
    this.s500.close();
    this.s4500.close();
  }
}

/**
 * An in-memory network of binds: what one sends, the bind at the destination address receives
 * (asynchronously, like a socket). `drop` decides per datagram whether the network loses it.
 */
export class MemoryNetwork {
  private readonly binds = new Map<string, IkeReceiver>();
  drop: (from: string, to: string, data: Buffer) => boolean = () => false;
  /** Every datagram sent, for assertions (unless made with `record: false`, as a benchmark is). */
  readonly sent: { from: Endpoint; to: Endpoint; data: Buffer }[] = [];
  private readonly record: boolean;

  constructor(o: { record?: boolean } = {}) {
    this.record = o.record ?? true;
  }

  bind(address: string, rx: IkeReceiver): IkeBind {
    this.binds.set(address, rx);
    const deliver = (data: Buffer, port: IkePort, to: Endpoint) => {
      const from = { address, port };
      if (this.record) this.sent.push({ from, to, data });
      if (this.drop(address, to.address, data)) return;
      setImmediate(() => {
        const r = this.binds.get(to.address);
        if (!r) return;
        if (to.port === 4500) demux4500(data, from, r);
        else r.ike(data, from, 500);
      });
    };
    return {
      address,
      sendIke: (m, port, to) => deliver(port === 4500 ? Buffer.concat([NON_ESP_MARKER, m]) : m, port, to),
      sendUdp4500: (p, to) => deliver(p, 4500, to),
      close: () => {
        this.binds.delete(address);
      },
    };
  }
}
