// TUN offloads (IFF_VNET_HDR): every read and write carries a virtio-net header in front of the
// packet, which lets the kernel hand the data plane one TCP or UDP super-packet of up to 64 KiB
// (TSO/USO, split here into MTU-sized packets before ESP) and take one back (GRO: TCP segments of
// one flow coalesced here into one super-packet, one write instead of dozens). The same idea as
// wireguard-go's tun/offload_linux.go; the code is our own.
//
//   tunSetOffloads(fd)                                   -> mask of TUN_F_* the kernel accepted
//   tunReadV(fd, scratch, state, buf, slot, lens, max)   -> n   read super-packets, split into slots
//   tunSegment(src, state, buf, slot, lens, max)         -> n   the split alone (one header+packet)
//   tunWriteV(fd, buf, offs, lens, n, scratch)           -> packets written (TCP segments coalesced)
//   tunCoalesce(buf, offs, lens, n, out, outOffs, outLens) -> items, each header+packet
//
// state (Int32Array(4)): [0] octets of the super-packet being split (0: none), [1] its next payload
// offset, [2] segments made of it so far, [3] super-packets dropped as malformed (a counter).
// A super-packet whose segments do not fit in the batch stays in `scratch` and goes on in the next
// call, so a batch never loses data and never needs more than one slot per segment.

#include <napi.h>

#include "errno_error.h"
#include "esp_args.h"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

namespace {

using esp::ArgError;
using esp::BufferArg;
using esp::NumArg;
using esp::TypedArg;

// Kernel 6.2+ (not in every libc's headers).
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#define TUN_F_USO6 0x40
#endif

// <linux/virtio_net.h> as C++ cannot include it (a member named `class`): the legacy header.
struct virtio_net_hdr {
  uint8_t flags;
  uint8_t gso_type;
  uint16_t hdr_len;
  uint16_t gso_size;
  uint16_t csum_start;
  uint16_t csum_offset;
};
static_assert(sizeof(virtio_net_hdr) == 10, "legacy virtio-net header");
constexpr uint8_t VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
constexpr uint8_t VIRTIO_NET_HDR_GSO_NONE = 0, VIRTIO_NET_HDR_GSO_TCPV4 = 1, VIRTIO_NET_HDR_GSO_TCPV6 = 4,
                  VIRTIO_NET_HDR_GSO_UDP_L4 = 5, VIRTIO_NET_HDR_GSO_ECN = 0x80;

// The TUN's default vnet header (10 octets). Its fields are in the host's order: a legacy virtio
// header is little-endian on little-endian hosts, which is all this addon is built for.
constexpr size_t kHdr = sizeof(virtio_net_hdr);
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "vnet header fields are read in host order");
constexpr int kMaxItems = 256;
constexpr uint32_t kMaxSuper = 65535;
constexpr uint8_t kTcpFin = 0x01, kTcpSyn = 0x02, kTcpRst = 0x04, kTcpPsh = 0x08, kTcpAck = 0x10,
                  kTcpCwr = 0x80;

inline uint16_t Get16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
inline void Put16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline uint32_t Get32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 | static_cast<uint32_t>(p[2]) << 8 |
         p[3];
}

// One's complement sum, accumulated in host order (the result is byte-order independent: stored
// back with memcpy it is right on the wire). `sum` carries across calls.
// Adds one T-sized word at p to the 64-bit one's complement accumulator (end-around carry).
template <typename T>
inline uint64_t AddWord(const uint8_t* p, uint64_t sum) {
  T v;
  memcpy(&v, p, sizeof v);
  sum += v;
  return sum + (sum < v);
}

uint64_t SumAdd(const uint8_t* p, size_t len, uint64_t sum) {
  for (; len >= 8; p += 8, len -= 8) sum = AddWord<uint64_t>(p, sum);
  if (len >= 4) {
    sum = AddWord<uint32_t>(p, sum);
    p += 4;
    len -= 4;
  }
  if (len >= 2) {
    sum = AddWord<uint16_t>(p, sum);
    p += 2;
    len -= 2;
  }
  if (len) sum = AddWord<uint8_t>(p, sum);  // the odd octet: the high one of its word on the wire
  return sum;
}

uint16_t Fold(uint64_t sum) {
  sum = (sum & 0xffffffff) + (sum >> 32);
  sum = (sum & 0xffffffff) + (sum >> 32);
  sum = (sum & 0xffff) + (sum >> 16);
  sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

// The pseudo-header's sum (RFC 793 / RFC 8200 §8.1) for `l4len` octets of protocol `proto`.
uint64_t PseudoSum(const uint8_t* ip, bool v4, uint8_t proto, uint32_t l4len) {
  if (v4) {
    const uint8_t tail[4] = {0, proto, static_cast<uint8_t>(l4len >> 8), static_cast<uint8_t>(l4len)};
    return SumAdd(tail, 4, SumAdd(ip + 12, 8, 0));
  }
  const uint8_t tail[8] = {static_cast<uint8_t>(l4len >> 24), static_cast<uint8_t>(l4len >> 16),
                           static_cast<uint8_t>(l4len >> 8), static_cast<uint8_t>(l4len), 0, 0, 0, proto};
  return SumAdd(tail, 8, SumAdd(ip + 8, 32, 0));
}

void StoreSum(uint8_t* at, uint16_t folded) { memcpy(at, &folded, 2); }

void Ipv4HeaderChecksum(uint8_t* ip, size_t ihl) {
  ip[10] = ip[11] = 0;
  StoreSum(ip + 10, static_cast<uint16_t>(~Fold(SumAdd(ip, ihl, 0))));
}

// The full TCP/UDP checksum of the L4 part at ip[l4off .. total) (checksum field at ip[l4off+csumAt]).
void L4Checksum(uint8_t* ip, bool v4, uint8_t proto, size_t l4off, size_t total, size_t csumAt) {
  uint8_t* l4 = ip + l4off;
  l4[csumAt] = l4[csumAt + 1] = 0;
  uint16_t c = static_cast<uint16_t>(
      ~Fold(SumAdd(l4, total - l4off, PseudoSum(ip, v4, proto, static_cast<uint32_t>(total - l4off)))));
  if (proto == 17 && c == 0) c = 0xffff;  // UDP: zero means "no checksum"
  StoreSum(l4 + csumAt, c);
}

struct ReadState {
  int32_t* s;
  int32_t& pendLen() { return s[0]; }
  int32_t& pendOff() { return s[1]; }
  int32_t& seg() { return s[2]; }
  int32_t& drops() { return s[3]; }
};

// Splits (or passes on) the header+packet at src[0, state.pendLen) into slots n.. of `out`; returns
// the new n. Finishes the packet (pendLen 0) or stops with the batch full, to go on next call.
uint32_t Segment(const uint8_t* src, ReadState st, uint8_t* out, size_t outLen, uint32_t slot, int32_t* lens,
                 uint32_t n, uint32_t max) {
  const size_t len = static_cast<size_t>(st.pendLen());
  auto drop = [&]() {
    st.drops()++;
    st.pendLen() = 0;
    return n;
  };
  if (len < kHdr + 1) return drop();
  virtio_net_hdr h;
  memcpy(&h, src, kHdr);
  const uint8_t* pkt = src + kHdr;
  const size_t plen = len - kHdr;
  const uint8_t gso = h.gso_type & ~VIRTIO_NET_HDR_GSO_ECN;
  const bool v4 = (pkt[0] >> 4) == 4;
  if (!v4 && (pkt[0] >> 4) != 6) return drop();
  if (gso == VIRTIO_NET_HDR_GSO_NONE) {
    if (plen > slot || n >= max || static_cast<size_t>(n + 1) * slot > outLen) {
      if (plen > slot) return drop();
      return n;  // no room: the next call
    }
    uint8_t* dst = out + static_cast<size_t>(n) * slot;
    memcpy(dst, pkt, plen);
    if (h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
      // The kernel left the checksum to us: the field holds the pseudo-header's sum.
      size_t start = h.csum_start, at = start + h.csum_offset;
      if (start >= plen || at + 2 > plen) return drop();
      StoreSum(dst + at, 0);
      uint16_t partial;
      memcpy(&partial, pkt + at, 2);
      uint64_t sum = SumAdd(dst + start, plen - start, partial);
      // As the kernel's skb_checksum_help: a sum of zero goes out as 0xffff (for UDP, 0 is "none").
      uint16_t c = static_cast<uint16_t>(~Fold(sum));
      StoreSum(dst + at, c == 0 ? 0xffff : c);
    }
    lens[n++] = static_cast<int32_t>(plen);
    st.pendLen() = 0;
    return n;
  }
  const bool tcp = gso == VIRTIO_NET_HDR_GSO_TCPV4 || gso == VIRTIO_NET_HDR_GSO_TCPV6;
  const bool udp = gso == VIRTIO_NET_HDR_GSO_UDP_L4;
  if (!tcp && !udp) return drop();
  if (tcp && (gso == VIRTIO_NET_HDR_GSO_TCPV4) != v4) return drop();
  // The L4 header starts where the kernel's checksum starts (IPv4 options, IPv6 extension headers).
  const size_t l4off = h.csum_start;
  const size_t minIp = v4 ? static_cast<size_t>(pkt[0] & 0x0f) * 4 : 40;
  if (minIp < 20 || l4off < minIp || l4off + (tcp ? 20 : 8) > plen) return drop();
  if (v4 && (pkt[9] != (tcp ? 6 : 17) || l4off != minIp)) return drop();
  // IPv4 options and IPv6 extension headers may name another final destination (source routing),
  // which the segments' pseudo-header would need: such super-packets are refused, counted.
  if (l4off != 20 && l4off != 40) return drop();
  if (!v4 && pkt[6] != (tcp ? 6 : 17)) return drop();
  const size_t l4hdr = tcp ? static_cast<size_t>(pkt[l4off + 12] >> 4) * 4 : 8;
  const size_t hdrLen = l4off + l4hdr;
  const size_t mss = h.gso_size;
  if (l4hdr < (tcp ? 20u : 8u) || hdrLen >= plen || mss == 0 || hdrLen + mss > slot) return drop();
  if (st.pendOff() <= 0) {
    st.pendOff() = static_cast<int32_t>(hdrLen);
    st.seg() = 0;
  }
  const uint32_t seq0 = tcp ? Get32(pkt + l4off + 4) : 0;
  const uint16_t id0 = v4 ? Get16(pkt + 4) : 0;
  while (static_cast<size_t>(st.pendOff()) < plen) {
    if (n >= max || static_cast<size_t>(n + 1) * slot > outLen) return n;  // batch full: next call
    const size_t off = static_cast<size_t>(st.pendOff());
    const size_t chunk = plen - off < mss ? plen - off : mss;
    const bool first = st.seg() == 0, last = off + chunk >= plen;
    uint8_t* dst = out + static_cast<size_t>(n) * slot;
    const size_t total = hdrLen + chunk;
    memcpy(dst, pkt, hdrLen);
    memcpy(dst + hdrLen, pkt + off, chunk);
    if (v4) {
      Put16(dst + 2, static_cast<uint16_t>(total));
      Put16(dst + 4, static_cast<uint16_t>(id0 + st.seg()));
      Ipv4HeaderChecksum(dst, minIp);
    } else {
      Put16(dst + 4, static_cast<uint16_t>(total - 40));
    }
    uint8_t* l4 = dst + l4off;
    if (tcp) {
      uint32_t seq = seq0 + static_cast<uint32_t>(off - hdrLen);
      esp::Put32(l4 + 4, seq);
      if (!last) l4[13] &= static_cast<uint8_t>(~(kTcpFin | kTcpPsh));
      if (!first) l4[13] &= static_cast<uint8_t>(~kTcpCwr);
      L4Checksum(dst, v4, 6, l4off, total, 16);
    } else {
      Put16(l4 + 4, static_cast<uint16_t>(total - l4off));
      L4Checksum(dst, v4, 17, l4off, total, 6);
    }
    lens[n++] = static_cast<int32_t>(total);
    st.pendOff() = static_cast<int32_t>(off + chunk);
    st.seg()++;
  }
  st.pendLen() = 0;
  st.pendOff() = 0;
  return n;
}

ReadState StateArg(const Napi::CallbackInfo& info, size_t i) {
  auto a = TypedArg<Napi::Int32Array>(info, i, napi_int32_array, "state must be an Int32Array(4)");
  if (a.ElementLength() < 4) throw ArgError(info.Env(), "state must be an Int32Array(4)");
  return ReadState{a.Data()};
}

// The split's arguments from info[i]: src (or the read's scratch), state, buf, slot, lens, max.
struct SplitArgs {
  Napi::Buffer<uint8_t> src;
  ReadState st;
  Napi::Buffer<uint8_t> buf;
  Napi::Int32Array lens;
  uint32_t slot, max;
};

SplitArgs SplitArgsAt(const Napi::CallbackInfo& info, size_t i) {
  SplitArgs a{BufferArg(info, i, "src must be a Buffer"), StateArg(info, i + 1),
              BufferArg(info, i + 2, "buffer must be a Buffer"),
              TypedArg<Napi::Int32Array>(info, i + 4, napi_int32_array, "lengths must be an Int32Array"),
              NumArg(info, i + 3, "slotSize must be a positive integer"),
              NumArg(info, i + 5, "max must be a positive integer")};
  if (a.slot == 0) throw ArgError(info.Env(), "slotSize must be a positive integer");
  if (a.max > a.lens.ElementLength()) a.max = static_cast<uint32_t>(a.lens.ElementLength());
  if (a.max > a.buf.Length() / a.slot) a.max = static_cast<uint32_t>(a.buf.Length() / a.slot);
  if (a.st.pendLen() < 0 || static_cast<size_t>(a.st.pendLen()) > a.src.Length())
    throw ArgError(info.Env(), "state[0] exceeds src");
  return a;
}

// tunSegment(src, state, buf, slot, lens, max): the split of one header+packet (state[0] = its length).
Napi::Value TunSegment(const Napi::CallbackInfo& info) {
  SplitArgs a = SplitArgsAt(info, 0);
  if (a.st.pendLen() == 0) return Napi::Number::New(info.Env(), 0);
  uint32_t n = Segment(a.src.Data(), a.st, a.buf.Data(), a.buf.Length(), a.slot, a.lens.Data(), 0, a.max);
  return Napi::Number::New(info.Env(), n);
}

// tunReadV(fd, scratch, state, buf, slot, lens, max): reads until EAGAIN or the batch is full.
Napi::Value TunReadV(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw ArgError(env, "fd must be a number");
  int fd = info[0].As<Napi::Number>().Int32Value();
  SplitArgs a = SplitArgsAt(info, 1);
  if (a.src.Length() < kHdr + kMaxSuper) throw ArgError(env, "scratch must hold 65545 octets");
  auto& scratch = a.src;
  ReadState st = a.st;
  const uint32_t max = a.max;
  uint32_t n = 0;
  while (n < max) {
    if (st.pendLen() == 0) {
      ssize_t r = read(fd, scratch.Data(), scratch.Length());
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (n > 0) break;
        throw ErrnoError(env, errno, "read");
      }
      if (static_cast<size_t>(r) > scratch.Length()) {  // truncated: never split what is not there
        st.drops()++;
        continue;
      }
      st.pendLen() = static_cast<int32_t>(r);
      st.pendOff() = 0;
    }
    uint32_t before = n;
    n = Segment(scratch.Data(), st, a.buf.Data(), a.buf.Length(), a.slot, a.lens.Data(), n, max);
    if (st.pendLen() != 0 && n == before) break;  // no room left for the next segment
  }
  return Napi::Number::New(env, n);
}

// ---- GRO: coalescing TCP segments of one flow for the write --------------------------------------

struct Segm {
  const uint8_t* p;
  uint32_t len;
  bool v4;
  uint16_t l4off, thl;
  uint32_t seq;
  uint32_t payload;
};

// A packet that may join a super-packet: TCP, no IPv4 options or fragments, no IPv6 extension
// headers, only ACK (and PSH) set, some payload, lengths that agree, and a checksum that is right
// (the super-packet's is the kernel's to check no more, so a wrong one must not be hidden in it).
bool Candidate(const uint8_t* p, uint32_t len, Segm* s) {
  if (len < 40) return false;
  uint8_t ver = p[0] >> 4;
  if (ver == 4) {
    if (p[0] != 0x45 || p[9] != 6 || Get16(p + 2) != len || (Get16(p + 6) & 0x3fff) != 0) return false;
    s->v4 = true;
    s->l4off = 20;
  } else if (ver == 6) {
    if (len < 60 || p[6] != 6 || Get16(p + 4) + 40u != len) return false;
    s->v4 = false;
    s->l4off = 40;
  } else {
    return false;
  }
  const uint8_t* t = p + s->l4off;
  s->thl = static_cast<uint16_t>((t[12] >> 4) * 4);
  if (s->thl < 20 || s->l4off + s->thl >= len) return false;
  uint8_t flags = t[13];
  if ((flags & ~kTcpPsh) != kTcpAck) return false;
  s->p = p;
  s->len = len;
  s->seq = Get32(t + 4);
  s->payload = len - s->l4off - s->thl;
  if (s->v4 && Fold(SumAdd(p, 20, 0)) != 0xffff) return false;
  return Fold(SumAdd(t, len - s->l4off, PseudoSum(p, s->v4, 6, len - s->l4off))) == 0xffff;
}

// Same flow and same everything a super-packet's one header stands for.
bool SameFlow(const Segm& a, const Segm& b) {
  if (a.v4 != b.v4 || a.thl != b.thl) return false;
  const uint8_t *x = a.p, *y = b.p;
  if (a.v4) {
    // TOS, DF, TTL, addresses; then ports, ack, options
    if (x[1] != y[1] || (x[6] & 0x40) != (y[6] & 0x40) || x[8] != y[8] || memcmp(x + 12, y + 12, 8) != 0)
      return false;
  } else {
    if (memcmp(x, y, 4) != 0 || x[7] != y[7] || memcmp(x + 8, y + 8, 32) != 0) return false;
  }
  const uint8_t *s = x + a.l4off, *t = y + b.l4off;
  // Ports, ack, the data offset and window (the flag word but PSH, as the kernel's GRO), options.
  return memcmp(s, t, 4) == 0 && memcmp(s + 8, t + 8, 4) == 0 && s[12] == t[12] && s[14] == t[14] &&
         s[15] == t[15] && memcmp(s + 20, t + 20, a.thl - 20u) == 0;
}

struct Item {
  int first;        // packet index of the head
  int last;         // packet index of the tail (chained through next[])
  uint32_t total;   // octets of the super-packet
  uint32_t mss;     // the head's payload: every segment but the last carries exactly this
  uint32_t nextSeq;
  bool open;        // may take more
  bool psh;
  bool tcp;         // a candidate (else: a packet written as it is)
  int count;
};

struct Coalesced {
  int items = 0;
  Item item[kMaxItems];
  int next[kMaxItems];
  Segm seg[kMaxItems];
};

void CloseFlow(const uint8_t* p, uint32_t len, Coalesced* c) {
  if (len < 40) return;
  const bool v4 = (p[0] >> 4) == 4;
  if (!v4 && (p[0] >> 4) != 6) return;
  const uint8_t proto = v4 ? p[9] : p[6];
  const size_t l4 = v4 ? static_cast<size_t>(p[0] & 0x0f) * 4 : 40;
  if (v4 && proto != 6) return;  // not TCP: no TCP flow's order to keep
  const bool ports = proto == 6 && l4 + 4 <= len && (!v4 || (Get16(p + 6) & 0x1fff) == 0);
  if (!v4 && proto != 6 && proto != 0 && proto != 43 && proto != 44 && proto != 60) return;
  for (int k = c->items - 1; k >= 0; k--) {
    Item& it = c->item[k];
    if (!it.tcp || !it.open) continue;
    const Segm& h = c->seg[it.first];
    if (h.v4 != v4) continue;
    bool same = v4 ? memcmp(p + 12, h.p + 12, 8) == 0 : memcmp(p + 8, h.p + 8, 32) == 0;
    if (same && ports) same = memcmp(p + l4, h.p + h.l4off, 4) == 0;
    if (same) it.open = false;
  }
}

void CoalesceBatch(const uint8_t* buf, const int32_t* offs, const int32_t* lens, int n, Coalesced* c) {
  c->items = 0;
  for (int i = 0; i < n; i++) {
    c->next[i] = -1;
    Segm& s = c->seg[i];
    bool tcp = Candidate(buf + offs[i], static_cast<uint32_t>(lens[i]), &s);
    if (tcp) {
      // The newest item of this flow: join it or close it (a flow's order is kept).
      for (int k = c->items - 1; k >= 0; k--) {
        Item& it = c->item[k];
        if (!it.tcp || !SameFlow(c->seg[it.first], s)) continue;
        if (it.open && s.seq == it.nextSeq && s.payload <= it.mss && it.total + s.payload <= kMaxSuper) {
          c->next[it.last] = i;
          it.last = i;
          it.total += s.payload;
          it.nextSeq += s.payload;
          it.count++;
          if (s.p[s.l4off + 13] & kTcpPsh) it.psh = true;
          if (s.payload < it.mss || it.psh) it.open = false;
          goto joined;
        }
        it.open = false;
        break;
      }
    } else {
      // Anything else of a TCP flow (FIN, RST, a bad checksum) ends its open item: nothing
      // overtakes it. Where the ports cannot be found (IPv6 extension headers), the address pair's.
      CloseFlow(buf + offs[i], static_cast<uint32_t>(lens[i]), c);
    }
    {
      Item& it = c->item[c->items++];
      it.first = it.last = i;
      it.count = 1;
      it.tcp = tcp;
      it.total = static_cast<uint32_t>(lens[i]);
      it.mss = tcp ? s.payload : 0;
      it.nextSeq = tcp ? s.seq + s.payload : 0;
      it.psh = tcp && (s.p[s.l4off + 13] & kTcpPsh);
      it.open = tcp && !it.psh;
    }
  joined:;
  }
}

// Builds item k's super-packet at dst (header and packet); returns its length.
uint32_t BuildItem(const Coalesced& c, int k, uint8_t* dst) {
  const Item& it = c.item[k];
  const Segm& h = c.seg[it.first];
  virtio_net_hdr vh;
  memset(&vh, 0, sizeof vh);
  uint8_t* pkt = dst + kHdr;
  size_t hl = h.l4off + h.thl;
  memcpy(pkt, h.p, hl);
  size_t at = hl;
  for (int i = it.first; i >= 0; i = c.next[i]) {
    const Segm& s = c.seg[i];
    memcpy(pkt + at, s.p + s.l4off + s.thl, s.payload);
    at += s.payload;
  }
  if (h.v4) {
    Put16(pkt + 2, static_cast<uint16_t>(at));
    Ipv4HeaderChecksum(pkt, 20);
  } else {
    Put16(pkt + 4, static_cast<uint16_t>(at - 40));
  }
  uint8_t* t = pkt + h.l4off;
  if (it.psh) t[13] |= kTcpPsh;
  // The checksum is the kernel's to finish: the field holds the pseudo-header's sum.
  StoreSum(t + 16, Fold(PseudoSum(pkt, h.v4, 6, static_cast<uint32_t>(at - h.l4off))));
  vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
  vh.gso_type = h.v4 ? VIRTIO_NET_HDR_GSO_TCPV4 : VIRTIO_NET_HDR_GSO_TCPV6;
  vh.hdr_len = static_cast<uint16_t>(hl);
  vh.gso_size = static_cast<uint16_t>(it.mss);
  vh.csum_start = h.l4off;
  vh.csum_offset = 16;
  memcpy(dst, &vh, kHdr);
  return static_cast<uint32_t>(kHdr + at);
}

struct Packets {
  Napi::Buffer<uint8_t> buf;
  Napi::Int32Array offs, lens;
  uint32_t n;
};

Packets PacketArgs(const Napi::CallbackInfo& info, size_t i) {
  Packets a{BufferArg(info, i, "buffer must be a Buffer"),
            TypedArg<Napi::Int32Array>(info, i + 1, napi_int32_array, "offsets must be an Int32Array"),
            TypedArg<Napi::Int32Array>(info, i + 2, napi_int32_array, "lengths must be an Int32Array"),
            NumArg(info, i + 3, "count must be a non-negative integer")};
  if (a.n > a.offs.ElementLength() || a.n > a.lens.ElementLength() || a.n > static_cast<uint32_t>(kMaxItems))
    throw ArgError(info.Env(), "count exceeds offsets/lengths or 256");
  for (uint32_t k = 0; k < a.n; k++) {
    int32_t off = a.offs[k], len = a.lens[k];
    if (off < 0 || len <= 0 || len > static_cast<int32_t>(kMaxSuper) ||
        static_cast<size_t>(off) + static_cast<size_t>(len) > a.buf.Length())
      throw ArgError(info.Env(), "packet outside buffer");
  }
  return a;
}

// tunCoalesce(buf, offs, lens, n, out, outOffs, outLens) -> items: what tunWriteV writes,
// each item's header and packet copied to out at outOffs[k] (for tests and the fuzz).
Napi::Value TunCoalesce(const Napi::CallbackInfo& info) {
  Packets a = PacketArgs(info, 0);
  auto out = BufferArg(info, 4, "out must be a Buffer");
  auto outOffs = TypedArg<Napi::Int32Array>(info, 5, napi_int32_array, "outOffsets must be an Int32Array");
  auto outLens = TypedArg<Napi::Int32Array>(info, 6, napi_int32_array, "outLengths must be an Int32Array");
  thread_local Coalesced c;
  CoalesceBatch(a.buf.Data(), a.offs.Data(), a.lens.Data(), static_cast<int>(a.n), &c);
  size_t at = 0;
  for (int k = 0; k < c.items; k++) {
    const Item& it = c.item[k];
    if (static_cast<size_t>(k) >= outOffs.ElementLength() || static_cast<size_t>(k) >= outLens.ElementLength() ||
        at + kHdr + it.total > out.Length())
      throw ArgError(info.Env(), "out too small");
    uint32_t len;
    if (it.count > 1) {
      len = BuildItem(c, k, out.Data() + at);
    } else {
      memset(out.Data() + at, 0, kHdr);
      memcpy(out.Data() + at + kHdr, a.buf.Data() + a.offs[it.first], it.total);
      len = static_cast<uint32_t>(kHdr + it.total);
    }
    outOffs[k] = static_cast<int32_t>(at);
    outLens[k] = static_cast<int32_t>(len);
    at += len;
  }
  return Napi::Number::New(info.Env(), c.items);
}

// tunWriteV(fd, buf, offs, lens, n, scratch) -> packets written (a super-packet counts as
// the packets it holds); stops on EAGAIN like writeBatch.
Napi::Value TunWriteV(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw ArgError(env, "fd must be a number");
  int fd = info[0].As<Napi::Number>().Int32Value();
  Packets a = PacketArgs(info, 1);
  auto scratch = BufferArg(info, 5, "scratch must be a Buffer");
  if (scratch.Length() < kHdr + kMaxSuper) throw ArgError(env, "scratch must hold 65545 octets");
  thread_local Coalesced c;
  static const virtio_net_hdr zero{};
  CoalesceBatch(a.buf.Data(), a.offs.Data(), a.lens.Data(), static_cast<int>(a.n), &c);
  uint32_t written = 0;
  int failed = 0;
  for (int k = 0; k < c.items; k++) {
    const Item& it = c.item[k];
    ssize_t w;
    if (it.count > 1) {
      uint32_t len = BuildItem(c, k, scratch.Data());
      do w = write(fd, scratch.Data(), len);
      while (w < 0 && errno == EINTR);
    } else {
      iovec iov[2] = {{const_cast<virtio_net_hdr*>(&zero), kHdr},
                      {a.buf.Data() + a.offs[it.first], static_cast<size_t>(it.total)}};
      do w = writev(fd, iov, 2);
      while (w < 0 && errno == EINTR);
    }
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (!failed) failed = errno;
      continue;  // this item is lost; the others still go
    }
    written += static_cast<uint32_t>(it.count);
  }
  if (written == 0 && failed) throw ErrnoError(env, failed, "write");
  return Napi::Number::New(env, written);
}

}  // namespace

// TUNSETOFFLOAD with as much as the kernel takes: TSO (with ECN) and checksum, USO where it has it.
// Returns the accepted mask (0: no offloads, the vnet header still there).
int TunSetOffloads(int fd) {
  const unsigned tries[] = {TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN | TUN_F_USO4 | TUN_F_USO6,
                            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN, TUN_F_CSUM};
  for (unsigned f : tries)
    if (ioctl(fd, TUNSETOFFLOAD, f) == 0) return static_cast<int>(f);
  return 0;
}

void InitTunOffload(Napi::Env env, Napi::Object exports) {
  exports.Set("tunReadV", Napi::Function::New(env, TunReadV));
  exports.Set("tunSegment", Napi::Function::New(env, TunSegment));
  exports.Set("tunWriteV", Napi::Function::New(env, TunWriteV));
  exports.Set("tunCoalesce", Napi::Function::New(env, TunCoalesce));
}
