/**
 * rtnetlink route requests (RFC 3549; linux/rtnetlink.h), built here and sent by the addon
 * (`rtnetlink` in native/netlink.cc): thousands of routes into the TUN in one call, no `ip` process.
 * What `ip route replace PREFIX dev DEV table T [src A]` and `ip route del PREFIX table T` send.
 */
import { constants } from 'node:os';

const NLMSG_HDRLEN = 16;
const RTMSG_LEN = 12;
const RTM_NEWROUTE = 24;
const RTM_DELROUTE = 25;
const NLM_F_REQUEST = 0x1;
const NLM_F_ACK = 0x4;
const NLM_F_REPLACE = 0x100;
const NLM_F_CREATE = 0x400;
const RTA_DST = 1;
const RTA_OIF = 4;
const RTA_PREFSRC = 7;
const RTA_TABLE = 15;
const AF_INET = 2;
const AF_INET6 = 10;
const RTPROT_BOOT = 3;
const RT_SCOPE_UNIVERSE = 0;
const RT_SCOPE_LINK = 253;
const RT_SCOPE_NOWHERE = 255;
const RTN_UNICAST = 1;

export interface RouteRequest {
  op: 'replace' | 'delete';
  /** The destination prefix: its first address (4 or 16 octets) and length. */
  destination: Uint8Array;
  prefixLength: number;
  table: number;
  /** Output interface (replace). */
  ifindex?: number;
  /** Preferred source address (replace), of the destination's family. */
  source?: Uint8Array;
}

const align4 = (n: number): number => (n + 3) & ~3;

/** The requests as one buffer of netlink messages, sequence numbers `firstSeq`, `firstSeq + 1` …. */
export function routeRequests(requests: readonly RouteRequest[], firstSeq = 1): Buffer {
  const sizes = requests.map((r) => {
    let n = NLMSG_HDRLEN + RTMSG_LEN + align4(4 + r.destination.length) + 8; // dst, table
    if (r.op === 'replace') {
      if (r.ifindex !== undefined) n += 8;
      if (r.source) n += align4(4 + r.source.length);
    }
    return n;
  });
  const out = Buffer.alloc(sizes.reduce((a, b) => a + b, 0));
  let off = 0;
  requests.forEach((r, i) => {
    const size = sizes[i] as number;
    const family = r.destination.length === 4 ? AF_INET : AF_INET6;
    if (r.destination.length !== 4 && r.destination.length !== 16)
      throw new RangeError('a route destination is 4 or 16 octets');
    if (r.prefixLength < 0 || r.prefixLength > r.destination.length * 8)
      throw new RangeError('prefix length out of range');
    const replace = r.op === 'replace';
    out.writeUInt32LE(size, off);
    out.writeUInt16LE(replace ? RTM_NEWROUTE : RTM_DELROUTE, off + 4);
    out.writeUInt16LE(NLM_F_REQUEST | NLM_F_ACK | (replace ? NLM_F_CREATE | NLM_F_REPLACE : 0), off + 6);
    out.writeUInt32LE((firstSeq + i) >>> 0, off + 8);
    out.writeUInt32LE(0, off + 12); // to the kernel
    let p = off + NLMSG_HDRLEN;
    out[p] = family;
    out[p + 1] = r.prefixLength;
    out[p + 2] = 0; // source length
    out[p + 3] = 0; // TOS
    out[p + 4] = r.table < 256 ? r.table : 0; // the table as an attribute when it does not fit
    out[p + 5] = replace ? RTPROT_BOOT : 0;
    // As ip route chooses: a route without gateway has link scope in IPv4; deletion matches any scope.
    out[p + 6] = replace ? (family === AF_INET ? RT_SCOPE_LINK : RT_SCOPE_UNIVERSE) : RT_SCOPE_NOWHERE;
    out[p + 7] = replace ? RTN_UNICAST : 0;
    out.writeUInt32LE(0, p + 8); // flags
    p += RTMSG_LEN;
    const attr = (type: number, value: Uint8Array): void => {
      out.writeUInt16LE(4 + value.length, p);
      out.writeUInt16LE(type, p + 2);
      out.set(value, p + 4);
      p += align4(4 + value.length);
    };
    const u32 = (v: number): Uint8Array => {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(v >>> 0);
      return b;
    };
    attr(RTA_DST, r.destination);
    attr(RTA_TABLE, u32(r.table));
    if (replace && r.ifindex !== undefined) attr(RTA_OIF, u32(r.ifindex));
    if (replace && r.source) attr(RTA_PREFSRC, r.source);
    off += size;
  });
  return out;
}

const ERRNO_NAMES = new Map(Object.entries(constants.errno).map(([name, n]) => [n, name]));

/** An acknowledgement's errno by name (ESRCH: no such route, EEXIST …). */
export const errnoName = (errno: number): string =>
  errno < 0 ? 'no answer' : (ERRNO_NAMES.get(errno) ?? `errno ${errno}`);

// ---- address changes (RTM_NEWADDR / RTM_DELADDR), as `ip monitor address` sees them --------------

const RTM_NEWADDR = 20;
const RTM_DELADDR = 21;
const NLMSG_DONE = 3;
const IFADDRMSG_LEN = 8;
const IFA_ADDRESS = 1;
const IFA_LOCAL = 2;
const IFA_FLAGS = 8;
/** Multicast groups of address changes (linux/rtnetlink.h RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR). */
export const RTMGRP_ADDRESSES = 0x10 | 0x100;
/** IPv6 privacy address; for IPv4 the same bit means IFA_F_SECONDARY (linux/if_addr.h). */
const IFA_F_TEMPORARY = 0x01;
const IFA_F_DADFAILED = 0x08;
const IFA_F_TENTATIVE = 0x40;

export interface AddressChange {
  op: 'add' | 'delete';
  family: 4 | 6;
  /** The interface's index. */
  ifindex: number;
  /** The local address (4 or 16 octets). */
  address: Buffer;
  prefixLength: number;
  /** Global scope (a host's own routable address; not link-local, not loopback). */
  global: boolean;
  /** Usable as a source: not tentative (IPv6 duplicate address detection still running) nor failed. */
  usable: boolean;
  /** An IPv6 temporary (privacy) address, rotated by the kernel. */
  temporary: boolean;
}

/**
 * The address changes in one datagram of a NETLINK_ROUTE socket; other messages are skipped, and a
 * message that does not fit its datagram ends the parse (what came before it stands). Pure.
 */
export function parseAddressChanges(data: Uint8Array): AddressChange[] {
  const out: AddressChange[] = [];
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  for (let off = 0; off + NLMSG_HDRLEN <= buf.length;) {
    const len = buf.readUInt32LE(off);
    const type = buf.readUInt16LE(off + 4);
    if (len < NLMSG_HDRLEN || off + len > buf.length || type === NLMSG_DONE) break;
    if ((type === RTM_NEWADDR || type === RTM_DELADDR) && len >= NLMSG_HDRLEN + IFADDRMSG_LEN) {
      const m = off + NLMSG_HDRLEN;
      const family = buf[m] === AF_INET ? 4 : buf[m] === AF_INET6 ? 6 : 0;
      const prefixLength = buf[m + 1] as number;
      let flags = buf[m + 2] as number;
      const scope = buf[m + 3] as number;
      const ifindex = buf.readUInt32LE(m + 4);
      let address: Buffer | undefined;
      let local: Buffer | undefined;
      for (let a = m + IFADDRMSG_LEN; a + 4 <= off + len;) {
        const alen = buf.readUInt16LE(a);
        const atype = buf.readUInt16LE(a + 2) & 0x3fff;
        if (alen < 4 || a + alen > off + len) break;
        const value = buf.subarray(a + 4, a + alen);
        if (atype === IFA_ADDRESS) address = value;
        else if (atype === IFA_LOCAL) local = value;
        else if (atype === IFA_FLAGS && value.length >= 4) flags = value.readUInt32LE(0);
        a += align4(alen);
      }
      // The host's own address is IFA_LOCAL where there is one (IFA_ADDRESS is then the peer's, on a
      // point-to-point link or an IPv6 address with a peer); IFA_ADDRESS otherwise.
      const own = local ?? address;
      if (family !== 0 && own && own.length === (family === 4 ? 4 : 16))
        out.push({
          op: type === RTM_NEWADDR ? 'add' : 'delete',
          family,
          ifindex,
          address: Buffer.from(own),
          prefixLength,
          global: scope === RT_SCOPE_UNIVERSE,
          usable: (flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)) === 0,
          // The same bit is IFA_F_SECONDARY for IPv4 (a second address in a subnet): only IPv6 has temporary ones.
          temporary: family === 6 && (flags & IFA_F_TEMPORARY) !== 0,
        });
    }
    off += align4(len);
  }
  return out;
}
