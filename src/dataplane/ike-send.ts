/**
 * IKE's sends on a data plane's own UDP 500 and 4500 sockets (the userspace plane's marked ones, the
 * kernel plane's bypassed ones): one datagram at a time, gathered into a scratch batch; on 4500 the
 * non-ESP marker goes in front of a keying message (RFC 3948).
 */
import { writeIp } from '../io/addr.ts';
import type { PacketBatch, UdpSocket } from '../io/native.ts';
import { type IkeBind, NON_ESP_MARKER } from '../sa/bind.ts';
import type { Endpoint } from '../sa/spec.ts';

export function ikeSends(
  udp500: UdpSocket,
  udp4500: UdpSocket,
  o: { scratch: PacketBatch; closed: () => boolean; log: (event: string, detail: Record<string, unknown>) => void },
): Pick<IkeBind, 'sendIke' | 'sendUdp4500'> {
  const send = (sock: UdpSocket, parts: Buffer[], to: Endpoint): void => {
    if (o.closed()) return;
    const b = o.scratch;
    let off = 0;
    for (const p of parts) off += p.copy(b.buf, off);
    b.lengths[0] = off;
    writeIp(to.address, b.addrs, 0);
    b.ports[0] = to.port;
    try {
      sock.send(b, 1);
    } catch (err) {
      // An unreachable peer shows up as IKE retransmissions running out, not as a crash.
      o.log('IKE send failed', { to: to.address, reason: (err as Error).message });
    }
  };
  return {
    sendIke: (message, port, to) =>
      port === 500 ? send(udp500, [message], to) : send(udp4500, [NON_ESP_MARKER, message], to),
    sendUdp4500: (packet, to) => send(udp4500, [packet], to),
  };
}
