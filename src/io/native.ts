/**
 * Typed wrapper over the native addon (native/consec_io.cc): TUN devices, raw IP sockets for ESP
 * and AH, SO_MARK, and batched non-blocking I/O driven by readiness events on Node's own loop.
 *
 * Buffers are owned by the caller and reused: a PacketBatch is allocated once and filled by every
 * read, so the data plane allocates nothing per packet.
 */
import type { KeyObject } from 'node:crypto';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NativeAddonMissingError, NativeIoError } from '../errors.ts';
import { type IpFamily, readIp, writeIp } from './addr.ts';

interface NativePoller {
  start(): void;
  stop(): void;
  close(): void;
}

/** A batched ESP context of the addon (esp_gcm.cc, esp_cbc.cc): one SA, one direction. */
interface NativeEsp {
  seal(
    src: Buffer,
    srcOffsets: Int32Array,
    srcLengths: Int32Array,
    nextHeaders: Uint8Array,
    count: number,
    dst: Buffer,
    dstOffsets: Int32Array,
    dstLengths: Int32Array,
    dstIndex: number,
    spi: number,
    seqLow: number,
    seqHigh: number,
  ): number;
  open(
    src: Buffer,
    srcOffsets: Int32Array,
    srcLengths: Int32Array,
    seqHighs: Uint32Array,
    count: number,
    dst: Buffer,
    dstOffsets: Int32Array,
    dstLengths: Int32Array,
    nextHeaders: Uint8Array,
  ): number;
  close(): void;
}

interface NativeAddon {
  ecdsaSignDigest(pkcs8Der: Buffer, digest: Buffer): Buffer;
  ecdsaVerifyDigest(spkiDer: Buffer, digest: Buffer, rs: Buffer): boolean;
  tunOpen(name: string, multiQueue: boolean, vnetHdr?: boolean): { fd: number; name: string; offloads: number };
  tunReadV(
    fd: number,
    scratch: Buffer,
    state: Int32Array,
    buf: Buffer,
    slot: number,
    lengths: Int32Array,
    max: number,
  ): number;
  tunSegment(src: Buffer, state: Int32Array, buf: Buffer, slot: number, lengths: Int32Array, max: number): number;
  tunWriteV(fd: number, buf: Buffer, offsets: Int32Array, lengths: Int32Array, count: number, scratch: Buffer): number;
  tunCoalesce(
    buf: Buffer,
    offsets: Int32Array,
    lengths: Int32Array,
    count: number,
    out: Buffer,
    outOffsets: Int32Array,
    outLengths: Int32Array,
  ): number;
  rawOpen(family: IpFamily, protocol: number): number;
  udpOpen(family: IpFamily): number;
  bindAddress(fd: number, family: IpFamily, addr16: Buffer, port?: number): void;
  setMark(fd: number, mark: number): void;
  setBuffers(fd: number, rcv: number, snd: number): void;
  flockExclusive(fd: number): boolean;
  close(fd: number): void;
  unixDgramOpen(bindPath?: string): number;
  unixDgramSend(fd: number, path: string, data: Buffer): number;
  readBatch(fd: number, buf: Buffer, slot: number, lengths: Int32Array, max: number): number;
  writeBatch(fd: number, buf: Buffer, offsets: Int32Array, lengths: Int32Array, count: number): number;
  recvBatch(
    fd: number,
    buf: Buffer,
    slot: number,
    lengths: Int32Array,
    addrs: Buffer,
    max: number,
    ports?: Uint16Array,
  ): number;
  sendBatch(
    fd: number,
    family: IpFamily,
    buf: Buffer,
    offsets: Int32Array,
    lengths: Int32Array,
    addrs: Buffer,
    count: number,
    ports?: Uint16Array,
  ): number;
  Poller: new (fd: number, onReadable: (err: Error | null) => void) => NativePoller;
  EspGcm: new (key: Buffer, salt: Buffer, esn: boolean, encrypt: boolean) => NativeEsp;
  EspCbc: new (
    encKey: Buffer,
    integKey: Buffer,
    digest: 'sha1' | 'sha256' | 'sha384' | 'sha512',
    icvLength: number,
    esn: boolean,
    encrypt: boolean,
  ) => NativeEsp;
  maxBatch: number;
  rtnetlink(messages: Buffer, protocol?: number): Int32Array;
  rtnetlinkMonitor(groups: number, protocol?: number): number;
  netlinkQuery(protocol: number, message: Buffer): Buffer;
  udpEncap(fd: number): void;
  xfrmSocketBypass(fd: number, family: IpFamily): void;
  nftAvailable(): boolean;
  nftRun(script: string, json?: boolean): { ok: boolean; output: string; error: string };
}

export const ADDON_PATH = join(
  dirname(fileURLToPath(import.meta.url)),
  '..',
  '..',
  'build',
  'Release',
  'consec_io.node',
);

let addon: NativeAddon | undefined;

function native(): NativeAddon {
  if (addon) return addon;
  if (!existsSync(ADDON_PATH)) {
    throw new NativeAddonMissingError(
      `native addon not built (${ADDON_PATH} missing): run "npm rebuild" or "npx node-gyp rebuild" in the consec directory`,
    );
  }
  try {
    addon = createRequire(import.meta.url)(ADDON_PATH) as NativeAddon;
  } catch (cause) {
    throw new NativeAddonMissingError(`native addon failed to load: ${(cause as Error).message}`, { cause });
  }
  return addon;
}

/** Runs a native call, turning errno-style failures into NativeIoError. */
function sys<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    const e = err as Error & { code?: string; syscall?: string };
    if (e.syscall !== undefined && e.code !== undefined) {
      throw new NativeIoError(e.syscall, e.code, e.message, { cause: err });
    }
    throw err;
  }
}

/**
 * ECDSA over an already computed hash (IKEv1 signs HASH_I/HASH_R itself, RFC 2409 §5.1 and
 * RFC 4754), which node:crypto cannot do: it always hashes the message. The node binary's OpenSSL
 * signs (native/ecdsa_digest.cc); the signature is r‖s.
 */
export function ecdsaSignDigest(key: KeyObject, digest: Buffer): Buffer {
  return native().ecdsaSignDigest(key.export({ format: 'der', type: 'pkcs8' }), digest);
}

/** Verifies an r‖s ECDSA signature over an already computed hash. */
export function ecdsaVerifyDigest(key: KeyObject, digest: Buffer, rs: Buffer): boolean {
  return native().ecdsaVerifyDigest(key.export({ format: 'der', type: 'spki' }), digest, rs);
}

/** A reusable set of packet slots: packet i is buf[i*slot .. i*slot+lengths[i]). */
export class PacketBatch {
  readonly buf: Buffer;
  readonly lengths: Int32Array;
  /** Peer address of each packet (16 bytes each), for socket batches. */
  readonly addrs: Buffer;
  /** Peer UDP port of each packet, for UDP socket batches. */
  readonly ports: Uint16Array;
  /** Offsets of each slot, for writing the batch back out unchanged. */
  readonly offsets: Int32Array;
  count = 0;

  constructor(
    readonly capacity: number,
    readonly slot: number,
  ) {
    this.buf = Buffer.alloc(capacity * slot);
    this.lengths = new Int32Array(capacity);
    this.offsets = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) this.offsets[i] = i * slot;
    this.addrs = Buffer.alloc(capacity * 16);
    this.ports = new Uint16Array(capacity);
  }

  /** A view (no copy) of packet i. */
  packet(i: number): Buffer {
    const off = i * this.slot;
    return this.buf.subarray(off, off + (this.lengths[i] ?? 0));
  }

  /** Copies `data` into slot i with `addr` (and UDP `port`) as its peer; returns i. */
  set(i: number, data: Uint8Array, addr?: string, port?: number): number {
    if (data.length > this.slot) throw new RangeError(`packet of ${data.length} bytes exceeds slot of ${this.slot}`);
    this.buf.set(data, i * this.slot);
    this.lengths[i] = data.length;
    if (addr !== undefined) writeIp(addr, this.addrs, i * 16);
    if (port !== undefined) this.ports[i] = port;
    return i;
  }

  address(i: number, family: IpFamily): string {
    return readIp(this.addrs, i * 16, family);
  }
}

abstract class PolledFd {
  private poller: NativePoller | undefined;
  protected closed = false;

  protected constructor(readonly fd: number) {}

  /**
   * Calls `onReadable` whenever the descriptor has data; the callback should drain it with a batch
   * read until it returns 0. Level-triggered: a partial drain fires again.
   */
  onReadable(onReadable: (err: NativeIoError | null) => void): void {
    this.assertOpen();
    this.poller?.close();
    const a = native();
    this.poller = new a.Poller(this.fd, (err) => {
      const e = err as (Error & { code?: string }) | null;
      onReadable(e ? new NativeIoError('poll', e.code ?? 'EUNKNOWN', e.message, { cause: e }) : null);
    });
    this.poller.start();
  }

  /** Stops readiness callbacks (the descriptor stays open). */
  pause(): void {
    this.poller?.stop();
  }

  resume(): void {
    this.poller?.start();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller?.close();
    this.poller = undefined;
    sys(() => native().close(this.fd));
  }

  protected assertOpen(): void {
    if (this.closed) throw new NativeIoError('use', 'EBADF', 'descriptor already closed');
  }
}

/** A socket on Node's loop: PolledFd plus the firewall mark and a bind to a local address. */
abstract class PolledSocket extends PolledFd {
  /** Sets SO_MARK so routing rules can tell our own packets apart (needs CAP_NET_ADMIN). */
  setMark(mark: number): void {
    this.assertOpen();
    setSocketMark(this.fd, mark);
  }

  /** The kernel's IPsec SPD never applies to this socket's own datagrams (IKE), either way. */
  bypassIpsecPolicy(family: IpFamily): void {
    this.assertOpen();
    sys(() => native().xfrmSocketBypass(this.fd, family));
  }

  /** Receive and send buffer sizes in octets (beyond the sysctl caps when the process may). */
  setBuffers(rcv: number, snd: number): void {
    this.assertOpen();
    sys(() => native().setBuffers(this.fd, rcv, snd));
  }

  /** Binds the socket to a local address of its family (and a port, for UDP). */
  protected bindTo(socketFamily: IpFamily, address: string, port?: number): void {
    this.assertOpen();
    const addr = Buffer.alloc(16);
    const family = writeIp(address, addr);
    if (family !== socketFamily)
      throw new NativeIoError('bind', 'EAFNOSUPPORT', `IPv${family} address on an IPv${socketFamily} socket`);
    sys(() => native().bindAddress(this.fd, socketFamily, addr, port));
  }
}

export interface TunOptions {
  /** Open with IFF_MULTI_QUEUE so several queues (one per worker) can share the device. */
  multiQueue?: boolean;
  /**
   * Offloads (IFF_VNET_HDR): the kernel hands over TCP/UDP super-packets of up to 64 KiB, which
   * reads split into MTU-sized packets, and writes coalesce TCP segments of a flow into one (GRO).
   * Whatever the kernel refuses is left off; reads and writes are plain packets either way.
   */
  offload?: boolean;
}

/** TUNSETOFFLOAD flags (linux/if_tun.h). */
export const TUN_OFFLOAD = { csum: 0x01, tso4: 0x02, tso6: 0x04, tsoEcn: 0x08, uso4: 0x20, uso6: 0x40 } as const;

/** The names of the TUN_OFFLOAD flags in `mask`, for logs. */
export function offloadNames(mask: number): string[] {
  return Object.entries(TUN_OFFLOAD)
    .filter(([, bit]) => (mask & bit) !== 0)
    .map(([name]) => name);
}

/**
 * Room for one read with offloads: the vnet header and a super-packet, which the kernel bounds by
 * its GSO limit (64 KiB of skb; an IPv6 UDP super-packet may pass the IP total length's 65,535).
 */
const SUPER_PACKET = 10 + 65_536 + 64;

/** A TUN device (IFF_TUN | IFF_NO_PI): reads and writes bare IPv4/IPv6 packets. */
export class TunDevice extends PolledFd {
  /** With offloads: the super-packet being split, and its progress (see native/tun_offload.cc). */
  private readonly readState = new Int32Array(4);
  private readonly readScratch: Buffer | undefined;
  private readonly writeScratch: Buffer | undefined;

  private constructor(
    fd: number,
    readonly name: string,
    /** TUN_OFFLOAD flags the kernel took; undefined when opened without offloads. */
    readonly offloads: number | undefined,
  ) {
    super(fd);
    if (offloads !== undefined) {
      this.readScratch = Buffer.alloc(SUPER_PACKET);
      this.writeScratch = Buffer.alloc(SUPER_PACKET);
    }
  }

  /** Opens (creating if needed) the TUN device `name` in the caller's network namespace. */
  static open(name: string, options: TunOptions = {}): TunDevice {
    const vnet = options.offload ?? false;
    const { fd, name: actual, offloads } = sys(() => native().tunOpen(name, options.multiQueue ?? false, vnet));
    return new TunDevice(fd, actual, vnet ? offloads : undefined);
  }

  /** Super-packets from the kernel that could not be split (malformed), since the device opened. */
  get offloadDrops(): number {
    return this.readState[3] as number;
  }

  /** Reads up to batch.capacity packets; returns how many (0 when none are waiting). */
  read(batch: PacketBatch): number {
    this.assertOpen();
    const s = this.readScratch;
    batch.count = s
      ? sys(() => native().tunReadV(this.fd, s, this.readState, batch.buf, batch.slot, batch.lengths, batch.capacity))
      : sys(() => native().readBatch(this.fd, batch.buf, batch.slot, batch.lengths, batch.capacity));
    return batch.count;
  }

  /** Writes packets [0, count) of `batch`; returns how many went. */
  write(batch: PacketBatch, count = batch.count): number {
    return this.writeRaw(batch.buf, batch.offsets, batch.lengths, count);
  }

  /**
   * Writes `count` packets buf[offsets[i], +lengths[i]) (gathered from anywhere in `buf`); with
   * offloads, TCP segments of one flow go as one super-packet. Returns how many packets went.
   */
  writeRaw(buf: Buffer, offsets: Int32Array, lengths: Int32Array, count: number): number {
    this.assertOpen();
    const s = this.writeScratch;
    return s
      ? sys(() => native().tunWriteV(this.fd, buf, offsets, lengths, count, s))
      : sys(() => native().writeBatch(this.fd, buf, offsets, lengths, count));
  }
}

/**
 * The offload read's split on its own (for tests): `src` is a vnet header and packet as a read with
 * offloads gets it; the packets it makes land in `batch` (as many as fit). `state` carries a
 * super-packet that did not fit to the next call: state[0] = src's length to start.
 */
export function segmentSuperPacket(src: Buffer, state: Int32Array, batch: PacketBatch): number {
  batch.count = sys(() => native().tunSegment(src, state, batch.buf, batch.slot, batch.lengths, batch.capacity));
  return batch.count;
}

/**
 * The offload write's coalescing on its own (for tests): what a write of packets [0, count) would
 * hand the kernel, each a vnet header and a packet, as views into one buffer.
 */
export function coalesceForTun(buf: Buffer, offsets: Int32Array, lengths: Int32Array, count: number): Buffer[] {
  let total = 0;
  for (let i = 0; i < count; i++) total += (lengths[i] as number) + 10;
  const out = Buffer.alloc(total);
  const offs = new Int32Array(count);
  const lens = new Int32Array(count);
  const n = sys(() => native().tunCoalesce(buf, offsets, lengths, count, out, offs, lens));
  return Array.from({ length: n }, (_, k) => out.subarray(offs[k], (offs[k] as number) + (lens[k] as number)));
}

export const IPPROTO_ESP = 50;
export const IPPROTO_AH = 51;

/**
 * A raw IP socket for one protocol (ESP or AH). IPv4 receives include the 20+ byte IP header;
 * IPv6 receives start at the protocol header (the kernel strips the IPv6 header). Sends carry the
 * protocol payload only; the kernel adds the IP header.
 */
export class RawIpSocket extends PolledSocket {
  private constructor(
    fd: number,
    readonly family: IpFamily,
    readonly protocol: number,
  ) {
    super(fd);
  }

  static open(family: IpFamily, protocol: number): RawIpSocket {
    return new RawIpSocket(
      sys(() => native().rawOpen(family, protocol)),
      family,
      protocol,
    );
  }

  bind(address: string): void {
    this.bindTo(this.family, address);
  }

  /** recvmmsg into the batch; lengths[i] is -1 for a truncated datagram. Returns the count. */
  recv(batch: PacketBatch): number {
    this.assertOpen();
    batch.count = sys(() =>
      native().recvBatch(this.fd, batch.buf, batch.slot, batch.lengths, batch.addrs, batch.capacity),
    );
    return batch.count;
  }

  /** sendmmsg packets [0, count) of `batch` to their addresses; returns how many were sent. */
  send(batch: PacketBatch, count = batch.count): number {
    this.assertOpen();
    return sys(() =>
      native().sendBatch(this.fd, this.family, batch.buf, batch.offsets, batch.lengths, batch.addrs, count),
    );
  }
}

/**
 * A UDP socket with batched, allocation-free I/O (recvmmsg/sendmmsg with per-packet peers and
 * ports): IKE and ESP-in-UDP share the one on port 4500, marked so it bypasses the TUN route.
 */
export class UdpSocket extends PolledSocket {
  private constructor(
    fd: number,
    readonly family: IpFamily,
  ) {
    super(fd);
  }

  static open(family: IpFamily): UdpSocket {
    return new UdpSocket(
      sys(() => native().udpOpen(family)),
      family,
    );
  }

  bind(address: string, port: number): void {
    this.bindTo(this.family, address, port);
  }

  /** RFC 3948 in the kernel: ESP arriving in UDP on this socket goes to the kernel's SAD, keying messages stay here. */
  espInUdp(): void {
    this.assertOpen();
    sys(() => native().udpEncap(this.fd));
  }

  /** recvmmsg into the batch (peer address and port per packet); returns the count. */
  recv(batch: PacketBatch): number {
    this.assertOpen();
    batch.count = sys(() =>
      native().recvBatch(this.fd, batch.buf, batch.slot, batch.lengths, batch.addrs, batch.capacity, batch.ports),
    );
    return batch.count;
  }

  /** sendmmsg packets [0, count) to their addresses and ports; returns how many were sent. */
  send(batch: PacketBatch, count = batch.count): number {
    this.assertOpen();
    return sys(() =>
      native().sendBatch(
        this.fd,
        this.family,
        batch.buf,
        batch.offsets,
        batch.lengths,
        batch.addrs,
        count,
        batch.ports,
      ),
    );
  }
}

/** Seals a gather of ESP packets in one call (the addon's contexts, or the TypeScript ESP behind the same call). */
export interface EspSealer {
  seal(...args: Parameters<EspBatch['seal']>): void;
  close(): void;
}

/** Opens a gather of ESP packets in one call: per packet the payload length or a negated ESP_OPEN_FAILURE code. */
export interface EspOpener {
  open(...args: Parameters<EspBatch['open']>): void;
  close(): void;
}

/**
 * Batched ESP in the addon, with the OpenSSL the node binary carries: one context per SA and
 * direction keeps its key schedule; whole batches go through in one call. Open reports per packet:
 * payload length, or -1 integrity, -2 malformed, -3 padding.
 */
export class EspBatch implements EspSealer, EspOpener {
  protected constructor(private readonly ctx: NativeEsp) {}

  /**
   * Seals `count` packets — packet i is buf[offsets[i], +lengths[i]) with next header nextHeaders[i]
   * — into `dst` slots dstIndex… (their lengths set); `seq` is the first packet's sequence number.
   */
  seal(
    buf: Buffer,
    offsets: Int32Array,
    lengths: Int32Array,
    nextHeaders: Uint8Array,
    count: number,
    dst: PacketBatch,
    dstIndex: number,
    spi: number,
    seq: number,
  ): void {
    this.ctx.seal(
      buf,
      offsets,
      lengths,
      nextHeaders,
      count,
      dst.buf,
      dst.offsets,
      dst.lengths,
      dstIndex,
      spi >>> 0,
      seq % 2 ** 32,
      Math.floor(seq / 2 ** 32),
    );
  }

  /**
   * Opens `count` ESP packets (buf[offsets[i], +lengths[i]), high sequence halves in `seqHighs`)
   * into `dst` slots 0… (any buffer with slot offsets and lengths); dst.lengths[i] is the payload
   * length or a negative failure code.
   */
  open(
    buf: Buffer,
    offsets: Int32Array,
    lengths: Int32Array,
    seqHighs: Uint32Array,
    count: number,
    dst: { buf: Buffer; offsets: Int32Array; lengths: Int32Array },
    nextHeaders: Uint8Array,
  ): void {
    this.ctx.open(buf, offsets, lengths, seqHighs, count, dst.buf, dst.offsets, dst.lengths, nextHeaders);
  }

  close(): void {
    this.ctx.close();
  }
}

/** What a batched ESP context does: seal outbound packets or open inbound ones. */
export interface EspBatchOptions {
  direction: 'seal' | 'open';
  /** Extended (64-bit) sequence numbers (RFC 4303 §2.2.1). */
  esn: boolean;
}

/**
 * Why the addon refused a packet: `open` puts the negated code in the packet's length slot (the
 * values of native/esp_args.h's OpenFailure).
 */
export const ESP_OPEN_FAILURE = { 1: 'integrity', 2: 'malformed', 3: 'padding' } as const;
export type EspOpenFailure = (typeof ESP_OPEN_FAILURE)[keyof typeof ESP_OPEN_FAILURE];

/** The reason behind a negative `open` length (anything unknown is 'malformed'). */
export const openFailure = (length: number): EspOpenFailure =>
  ESP_OPEN_FAILURE[-length as keyof typeof ESP_OPEN_FAILURE] ?? 'malformed';

/** ESP AES-GCM-16 (RFC 4106), byte-identical to `src/esp/esp.ts`'s (IV = sequence number). */
export class EspGcmBatch extends EspBatch {
  constructor(key: Buffer, salt: Buffer, o: EspBatchOptions) {
    const A = native().EspGcm;
    super(new A(key, salt, o.esn, o.direction === 'seal'));
  }
}

/** ESP AES-CBC (RFC 3602) with HMAC-SHA1-96 or HMAC-SHA2 (RFC 4868), random IVs, encrypt-then-MAC. */
export class EspCbcBatch extends EspBatch {
  constructor(
    encKey: Buffer,
    integKey: Buffer,
    o: EspBatchOptions & { digest: 'sha1' | 'sha256' | 'sha384' | 'sha512'; icv: number },
  ) {
    const A = native().EspCbc;
    super(new A(encKey, integKey, o.digest, o.icv, o.esn, o.direction === 'seal'));
  }
}

/** Sets SO_MARK on any socket descriptor (for example a node:dgram socket's). */
export function setSocketMark(fd: number, mark: number): void {
  sys(() => native().setMark(fd, mark));
}

/**
 * Takes an exclusive flock(2) on an open file without waiting: false when another process holds it.
 * The kernel releases it when the holder exits, also on kill -9.
 */
export function flockExclusive(fd: number): boolean {
  return sys(() => native().flockExclusive(fd));
}

/**
 * Sends rtnetlink requests (each asking for an acknowledgement; see rtnetlink.ts) to the kernel in
 * this process's network namespace; the errno of each answer, in order (0: done).
 */
export function rtnetlink(messages: Buffer): Int32Array {
  return sys(() => native().rtnetlink(messages));
}

/** Netlink protocols the addon talks: routes and addresses, and the kernel's IPsec SAD and SPD. */
export const NETLINK_ROUTE = 0;
export const NETLINK_XFRM = 6;

/** Sends XFRM requests (each asking for an acknowledgement; see xfrm.ts); the errno of each answer, in order. */
export function xfrmRequests(messages: Buffer): Int32Array {
  return sys(() => native().rtnetlink(messages, NETLINK_XFRM));
}

/** One XFRM get or dump request; the kernel's answers (netlink messages). An error answer throws (NativeIoError). */
export function xfrmQuery(message: Buffer): Buffer {
  return sys(() => native().netlinkQuery(NETLINK_XFRM, message));
}

/**
 * Runs an nft script (as `nft -f` does, one transaction) through libnftables in this process;
 * undefined when libnftables is not there (the caller runs nft). `json`: output as `nft -j` gives it.
 */
export function nftRun(script: string, json = false): { ok: boolean; output: string; error: string } | undefined {
  const n = native();
  if (!n.nftAvailable()) return undefined;
  const r = n.nftRun(script, json);
  return { ok: r.ok, output: r.output, error: r.ok ? '' : r.error.trim() || 'nft failed' };
}

/** The largest batch a single recvBatch/sendmmsg call handles. */
export function maxBatch(): number {
  return native().maxBatch;
}

/**
 * A NETLINK_ROUTE socket joined to multicast groups (address or link changes): the kernel tells
 * it each change as it happens; read its datagrams with a batch whose slots hold a whole one
 * (32 KiB). ENOBUFS from `recv` means changes were lost: read the state afresh.
 */
export class RtnetlinkMonitor extends PolledFd {
  static open(groups: number): RtnetlinkMonitor {
    return new RtnetlinkMonitor(sys(() => native().rtnetlinkMonitor(groups)));
  }

  /** The same for the kernel's IPsec events (XFRMGRP_ACQUIRE, XFRMGRP_EXPIRE …: see xfrm.ts). */
  static openXfrm(groups: number): RtnetlinkMonitor {
    return new RtnetlinkMonitor(sys(() => native().rtnetlinkMonitor(groups, NETLINK_XFRM)));
  }

  recv(batch: PacketBatch): number {
    this.assertOpen();
    batch.count = sys(() => native().readBatch(this.fd, batch.buf, batch.slot, batch.lengths, batch.capacity));
    return batch.count;
  }
}

/**
 * An AF_UNIX datagram socket: sends to a socket path (the systemd journal's), or, bound to a path,
 * receives datagrams (tests). Not polled: sends are one-off and never block (non-blocking socket).
 */
export class UnixDatagramSocket {
  private fd: number;

  private constructor(fd: number) {
    this.fd = fd;
  }

  static open(bindPath?: string): UnixDatagramSocket {
    return new UnixDatagramSocket(sys(() => native().unixDgramOpen(bindPath)));
  }

  send(path: string, data: Buffer): number {
    if (this.fd < 0) throw new NativeIoError('sendto', 'EBADF', 'socket is closed');
    return sys(() => native().unixDgramSend(this.fd, path, data));
  }

  /** Reads waiting datagrams into the batch (0 when none). */
  recv(batch: PacketBatch): number {
    if (this.fd < 0) throw new NativeIoError('read', 'EBADF', 'socket is closed');
    batch.count = sys(() => native().readBatch(this.fd, batch.buf, batch.slot, batch.lengths, batch.capacity));
    return batch.count;
  }

  close(): void {
    if (this.fd >= 0) native().close(this.fd);
    this.fd = -1;
  }
}
