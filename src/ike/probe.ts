/**
 * A liveness probe through a freshly negotiated tunnel-mode child SA (AES-GCM): ICMP echo
 * requests sealed as ESP-in-UDP, replies opened with the inbound keys. Used by
 * `consec ike initiate --ping` and the interop tests that run without the data plane.
 */
import { isIPv4 } from 'node:net';
import { gcmSa, openGcm, sealGcm } from '../esp/gcm.ts';
import { writeIp } from '../io/addr.ts';
import { internetChecksum } from '../packet/checksum.ts';
import { IkeError } from './errors.ts';
import type { Initiated } from './initiator.ts';
import { EncrId, NotifyType, TransformType } from './wire/constants.ts';

function echoRequest(local: string, remote: string, seq: number): Buffer {
  const icmp = Buffer.alloc(8 + 32, 0x61);
  icmp[0] = 8;
  icmp[1] = 0;
  icmp.writeUInt16BE(0, 2);
  icmp.writeUInt16BE(0x4353, 4);
  icmp.writeUInt16BE(seq, 6);
  icmp.writeUInt16BE(internetChecksum(icmp), 2);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + icmp.length, 2);
  ip[8] = 64;
  ip[9] = 1;
  writeIp(local, ip, 12);
  writeIp(remote, ip, 16);
  ip.writeUInt16BE(internetChecksum(ip), 10);
  return Buffer.concat([ip, icmp]);
}

/** Sends `count` pings through the child SA; resolves with the sequence numbers answered. */
export async function pingThroughTunnel(
  r: Pick<Initiated, 'child' | 'spec' | 'onEsp' | 'sendEsp'> & { sa: { floated: boolean } },
  local: string,
  remote: string,
  count = 3,
  timeoutMs = 3000,
  /** The first ESP sequence number (a second probe on the same SA continues after the first). */
  firstSeq = 1,
): Promise<number[]> {
  const encr = r.child.proposal.transforms.find((t) => t.type === TransformType.ENCR);
  if (encr?.id !== EncrId.AES_GCM_16 || r.child.mode !== 'tunnel' || !isIPv4(remote) || !r.sa.floated) {
    throw new IkeError(
      'the ping probe needs an IPv4 tunnel-mode AES-GCM child SA over UDP 4500',
      NotifyType.NO_PROPOSAL_CHOSEN,
    );
  }
  const out = gcmSa(r.child.spiOut, r.spec.outbound.encrKey);
  const inb = gcmSa(r.child.spiIn, r.spec.inbound.encrKey);
  const replies = new Set<number>();
  r.onEsp((packet) => {
    try {
      const { payload, nextHeader } = openGcm(inb, packet);
      if (nextHeader === 4 && payload[9] === 1 && payload[20] === 0) replies.add(payload.readUInt16BE(26));
    } catch {
      /* not ours or damaged: dropped */
    }
  });
  for (let seq = 1; seq <= count; seq++) {
    r.sendEsp(sealGcm(out, firstSeq + seq - 1, echoRequest(local, remote, seq), 4));
    await new Promise((res) => setTimeout(res, 50));
  }
  const deadline = Date.now() + timeoutMs;
  while (replies.size < count && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
  return [...replies].sort((a, b) => a - b);
}
