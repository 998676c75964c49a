/** NAT detection (RFC 7296 §2.23): NAT_DETECTION_SOURCE_IP / _DESTINATION_IP hashes. */
import { createHash } from 'node:crypto';
import { randomOctets } from '../crypto/random.ts';
import { isIPv4 } from 'node:net';
import { writeIp } from '../../io/addr.ts';
import type { Endpoint, IkeSa } from '../sa.ts';
import type { Payload } from '../wire/codec.ts';
import { NotifyType, PayloadType } from '../wire/constants.ts';
import { findNotifies, type Task } from './task.ts';

export function natdHash(spiI: Buffer, spiR: Buffer, ep: Endpoint): Buffer {
  const addr = Buffer.alloc(isIPv4(ep.address) ? 4 : 16);
  writeIp(ep.address, addr);
  const port = Buffer.alloc(2);
  port.writeUInt16BE(ep.port);
  return createHash('sha1').update(spiI).update(spiR).update(addr).update(port).digest();
}

export class IkeNatd implements Task {
  readonly name = 'ike-natd';

  build(sa: IkeSa, out: Payload[]): void {
    // A source hash that matches no address makes the peer see a NAT and encapsulate ESP in UDP.
    const source = sa.forceEncapsulation ? randomOctets(20) : natdHash(sa.spiI, sa.spiR, sa.local);
    out.push(
      {
        type: PayloadType.NOTIFY,
        protocol: 0,
        spi: Buffer.alloc(0),
        notify: NotifyType.NAT_DETECTION_SOURCE_IP,
        data: source,
      },
      {
        type: PayloadType.NOTIFY,
        protocol: 0,
        spi: Buffer.alloc(0),
        notify: NotifyType.NAT_DETECTION_DESTINATION_IP,
        data: natdHash(sa.spiI, sa.spiR, sa.remote),
      },
    );
  }

  process(sa: IkeSa, payloads: readonly Payload[]): void {
    const src = findNotifies(payloads, NotifyType.NAT_DETECTION_SOURCE_IP);
    const dst = findNotifies(payloads, NotifyType.NAT_DETECTION_DESTINATION_IP);
    if (src.length === 0 || dst.length === 0) return; // peer does not do NAT-T
    // The peer's view of our address: its DESTINATION hash must match our local endpoint.
    sa.natLocal = sa.forceEncapsulation || !dst.some((n) => n.data.equals(natdHash(sa.spiI, sa.spiR, sa.local)));
    sa.natRemote = !src.some((n) => n.data.equals(natdHash(sa.spiI, sa.spiR, sa.remote)));
  }
}
