/**
 * The host's own addresses, followed live through rtnetlink: the kernel tells a NETLINK_ROUTE
 * socket joined to the address groups of every address added or removed (RTM_NEWADDR /
 * RTM_DELADDR), as `ip monitor address` shows them — no polling. Global unicast addresses of both
 * families count once usable (an IPv6 address after duplicate address detection); link-local and
 * loopback addresses do not. If the kernel had to drop notifications (ENOBUFS), the list is read
 * afresh.
 */
import { networkInterfaces } from 'node:os';
import { readIp } from '../io/addr.ts';
import { PacketBatch, RtnetlinkMonitor } from '../io/native.ts';
import { parseAddressChanges, RTMGRP_ADDRESSES } from '../io/rtnetlink.ts';

/** The host's global unicast addresses now (getifaddrs). */
export function hostAddresses(): string[] {
  const out: string[] = [];
  for (const addrs of Object.values(networkInterfaces()))
    for (const a of addrs ?? [])
      if (!a.internal && !a.address.toLowerCase().startsWith('fe80:') && !out.includes(a.address)) out.push(a.address);
  return out;
}

export class AddressWatch {
  private readonly known: Set<string>;
  private readonly batch = new PacketBatch(16, 32 * 1024);

  private constructor(
    private readonly monitor: RtnetlinkMonitor,
    private readonly onChange: (added: string[], removed: string[]) => void,
  ) {
    this.known = new Set(hostAddresses());
    monitor.onReadable(() => this.drain());
  }

  /** Starts following; `onChange` hears of each change after the addresses `current` lists. */
  static start(onChange: (added: string[], removed: string[]) => void): AddressWatch {
    // The socket first, then the list: nothing that changes in between is missed.
    return new AddressWatch(RtnetlinkMonitor.open(RTMGRP_ADDRESSES), onChange);
  }

  get current(): string[] {
    return [...this.known];
  }

  private drain(): void {
    const added: string[] = [];
    const removed: string[] = [];
    for (;;) {
      let n: number;
      try {
        n = this.monitor.recv(this.batch);
      } catch (err) {
        if ((err as { sysCode?: string }).sysCode !== 'ENOBUFS') throw err;
        this.resync(added, removed);
        continue;
      }
      if (n === 0) break;
      for (let i = 0; i < n; i++)
        for (const c of parseAddressChanges(this.batch.packet(i))) {
          const a = readIp(c.address, 0, c.family);
          if (c.op === 'add' && c.global && c.usable && !this.known.has(a)) {
            this.known.add(a);
            added.push(a);
          } else if (c.op === 'delete' && this.known.delete(a)) removed.push(a);
        }
    }
    if (added.length > 0 || removed.length > 0) this.onChange(added, removed);
  }

  /** Notifications were lost: the difference between what we knew and what the host has now. */
  private resync(added: string[], removed: string[]): void {
    const now = new Set(hostAddresses());
    for (const a of now)
      if (!this.known.has(a)) {
        this.known.add(a);
        added.push(a);
      }
    for (const a of [...this.known])
      if (!now.has(a)) {
        this.known.delete(a);
        removed.push(a);
      }
  }

  close(): void {
    this.monitor.close();
  }
}
