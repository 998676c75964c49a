/**
 * What the data plane counts and reports: packets and octets carried, drops by reason (a closed
 * set, plus the errno of a send the kernel refused), and the IPsec Driver events (4960 integrity,
 * 4961 replay, 4962 older than the window, 4965 unknown SPI) rate-limited per event and SPI.
 */
import { readIp } from '../io/addr.ts';
import type { PacketBatch } from '../io/native.ts';

/** Why the data plane dropped a packet: a closed set (the data plane's own reasons, the ESP failures of esp.ts). */
export type DropReason =
  | 'not IP'
  | 'malformed'
  | 'unknown SPI'
  | 'integrity'
  | 'replay'
  | 'padding'
  | 'spi'
  | 'sequence-exhausted'
  | 'seal'
  | 'selector mismatch'
  | 'not IP in tunnel'
  | 'queue full'
  | 'negotiation failed'
  | 'SA removed'
  | 'no socket for the other family'
  | 'no local address'
  | 'send would block'
  | 'internal error'
  /** A send the kernel refused, by its errno code (ENETUNREACH, EPERM …). */
  | `send failed: ${string}`;

export interface DataPlaneStats {
  /**
   * Packets and octets carried by SAs; octets as the kernel counts them (what ESP protects: the
   * inner packet in tunnel mode, what follows the IP header in transport mode).
   */
  packetsOut: number;
  packetsIn: number;
  bytesOut: number;
  bytesIn: number;
  /** Drops by reason. */
  drops: Partial<Record<DropReason, number>>;
}

export type DriverDropId = 4960 | 4961 | 4962 | 4965;
export const DRIVER_EVENT_INTERVAL_MS = 10_000;

export interface DriverDrop {
  id: DriverDropId;
  spi: number;
  remoteAddress: string;
  /** Packets dropped for this event and SPI since the last report (this one included). */
  packets: number;
}

export class Counters {
  readonly stats: DataPlaneStats = { packetsOut: 0, packetsIn: 0, bytesOut: 0, bytesIn: 0, drops: {} };
  /** Per (event, SPI): when the last event went out, packets dropped since. */
  private readonly driverEvents = new Map<number, { at: number; packets: number }>();

  constructor(private readonly onDriverDrop?: (e: DriverDrop) => void) {}

  drop(reason: DropReason, n = 1): void {
    this.stats.drops[reason] = (this.stats.drops[reason] ?? 0) + n;
  }

  /**
   * An inbound packet refused by a driver check (packet `index` of `batch` came from the peer):
   * counted by `reason`, and reported as an IPsec Driver event at most once per interval.
   */
  driverDrop(
    reason: DropReason,
    id: DriverDropId,
    spi: number,
    batch: PacketBatch,
    index: number,
    family: 4 | 6,
  ): void {
    this.drop(reason);
    if (!this.onDriverDrop) return;
    const key = id * 2 ** 32 + spi;
    const now = Date.now();
    const last = this.driverEvents.get(key);
    if (last && now - last.at < DRIVER_EVENT_INTERVAL_MS) {
      last.packets++;
      return;
    }
    if (this.driverEvents.size > 4096) this.driverEvents.clear(); // a flood of made-up SPIs stays bounded
    this.driverEvents.set(key, { at: now, packets: 0 });
    const remoteAddress = readIp(batch.addrs, index * 16, family);
    this.onDriverDrop({ id, spi, remoteAddress, packets: (last?.packets ?? 0) + 1 });
  }
}
