/**
 * The host's own addresses, followed live through rtnetlink: the kernel tells a NETLINK_ROUTE
 * socket joined to the address groups of every address added, changed or removed (RTM_NEWADDR /
 * RTM_DELADDR), as `ip monitor address` shows them — no polling. Global unicast addresses of both
 * families count once usable (an IPv6 address after duplicate address detection: the kernel sends
 * RTM_NEWADDR again when it completes); link-local, loopback and temporary (privacy) addresses do
 * not. Each change goes to the listener in the order the kernel reported it; the listener's adds
 * and removes are idempotent, so a change seen twice does no harm. If the kernel had to drop
 * notifications (ENOBUFS), what was queued is discarded and the host's list is read afresh.
 */
import { hostAddresses } from '../filter/host-context.ts';
import { readIp } from '../io/addr.ts';
import { PacketBatch, RtnetlinkMonitor } from '../io/native.ts';
import { type AddressChange, parseAddressChanges, RTMGRP_ADDRESSES } from '../io/rtnetlink.ts';

/** A change for the listener: add an address usable now, or remove one (gone, or no longer usable). */
export type AddressEvent = { op: 'add' | 'remove'; address: string };

/** What a kernel change means for the addresses consec runs on (undefined: nothing). Pure. */
export function addressEvent(c: AddressChange): AddressEvent | undefined {
  const address = readIp(c.address, 0, c.family);
  if (c.op === 'delete') return { op: 'remove', address };
  if (!c.global || c.temporary) return undefined;
  // An address that became tentative or failed duplicate address detection is not usable.
  return { op: c.usable ? 'add' : 'remove', address };
}

export class AddressWatch {
  /** One datagram per read: an ENOBUFS is then never hidden behind datagrams read in the same call. */
  private readonly batch = new PacketBatch(1, 64 * 1024);
  private closed = false;

  private constructor(
    private readonly monitor: RtnetlinkMonitor,
    private readonly onChange: (e: AddressEvent) => void,
    private readonly onError: (err: Error) => void,
  ) {
    monitor.onReadable(() => this.drain());
  }

  /**
   * Starts following. The socket is open before this returns, so a caller that reads the host's
   * addresses afterwards (and adds them, idempotently) misses no change.
   */
  static start(onChange: (e: AddressEvent) => void, onError: (err: Error) => void): AddressWatch {
    return new AddressWatch(RtnetlinkMonitor.open(RTMGRP_ADDRESSES), onChange, onError);
  }

  private drain(): void {
    try {
      for (;;) {
        if (this.closed) return;
        let n: number;
        try {
          n = this.monitor.recv(this.batch);
        } catch (err) {
          if ((err as { sysCode?: string }).sysCode !== 'ENOBUFS') throw err;
          this.resync();
          continue;
        }
        if (n === 0) return;
        for (const c of parseAddressChanges(this.batch.packet(0))) {
          const e = addressEvent(c);
          if (e) this.onChange(e);
        }
      }
    } catch (err) {
      this.onError(err as Error);
    }
  }

  /**
   * Notifications were lost: the queue (older than the loss) is discarded, then every address the
   * host has now is added; the listener removes what it runs on and the host no longer has.
   */
  private resync(): void {
    for (;;) {
      try {
        if (this.monitor.recv(this.batch) === 0) break;
      } catch (err) {
        if ((err as { sysCode?: string }).sysCode !== 'ENOBUFS') throw err;
      }
    }
    this.onResync?.(hostAddresses());
  }

  /** Called after a resync with the host's addresses (the listener drops the ones not listed). */
  onResync?: (addresses: string[]) => void;

  close(): void {
    this.closed = true;
    this.monitor.close();
  }
}
