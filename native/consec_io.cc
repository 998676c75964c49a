// consec native I/O: the few Linux facilities Node has no API for.
//
//   tunOpen(name, multiQueue[, vnetHdr]) -> { fd, name, offloads }  TUN, IFF_TUN|IFF_NO_PI, O_NONBLOCK;
//                                        with vnetHdr IFF_VNET_HDR and TUNSETOFFLOAD (tun_offload.cc)
//   rawOpen(family, protocol)            -> fd              SOCK_RAW (ESP 50, AH 51), non-blocking
//   udpOpen(family)                      -> fd              SOCK_DGRAM (IKE and ESP-in-UDP on 4500)
//   bindAddress(fd, family, addr16[, port]) -> undefined    bind to a local address (and UDP port)
//   setMark(fd, mark)                    -> undefined       SO_MARK (keeps our ESP out of the TUN route)
//   setBuffers(fd, rcv, snd)             -> undefined       socket buffer sizes (FORCE when permitted)
//   close(fd)                            -> undefined
//   readBatch(fd, buf, slot, lens, max)  -> n               read() until EAGAIN or max packets
//   writeBatch(fd, buf, offs, lens, n)   -> written         write() each packet; stops on EAGAIN
//   recvBatch(fd, buf, slot, lens, addrs, max[, ports]) -> n   recvmmsg; addrs: 16 bytes per packet,
//                                                            ports (Uint16Array) for UDP
//   sendBatch(fd, family, buf, offs, lens, addrs, n[, ports]) -> sent   sendmmsg to per-packet peers
//   Poller(fd, onReadable)                                   uv_poll_t on Node's own loop
//
// Errors are thrown as Error objects with .code (errno name), .errno and .syscall, which the
// TypeScript wrapper (src/io/native.ts) turns into typed errors. No packet is ever allocated here:
// the caller owns every buffer, so the data plane can reuse them batch after batch.

#include <napi.h>

#include "errno_error.h"
#include <uv.h>

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

namespace {

constexpr int kMaxBatch = 256;


Napi::Error ArgError(Napi::Env env, const char* msg) {
  Napi::TypeError e = Napi::TypeError::New(env, msg);
  e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG"));
  return e;
}

int FdArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw ArgError(info.Env(), "fd must be a number");
  int fd = info[i].As<Napi::Number>().Int32Value();
  if (fd < 0) throw ArgError(info.Env(), "fd must be >= 0");
  return fd;
}

Napi::Buffer<uint8_t> BufArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsBuffer()) throw ArgError(info.Env(), what);
  return info[i].As<Napi::Buffer<uint8_t>>();
}

Napi::Int32Array I32Arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    throw ArgError(info.Env(), what);
  return info[i].As<Napi::Int32Array>();
}

uint32_t U32Arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber()) throw ArgError(info.Env(), what);
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (v < 0 || v > 4294967295.0 || v != static_cast<double>(static_cast<uint32_t>(v)))
    throw ArgError(info.Env(), what);
  return static_cast<uint32_t>(v);
}

int FamilyArg(const Napi::CallbackInfo& info, size_t i) {
  uint32_t f = U32Arg(info, i, "family must be 4 or 6");
  if (f != 4 && f != 6) throw ArgError(info.Env(), "family must be 4 or 6");
  return f == 4 ? AF_INET : AF_INET6;
}

// Fills a sockaddr from a 16-byte address slot (IPv4 uses the first 4 bytes) and a port (UDP).
socklen_t ToSockaddr(int af, const uint8_t* addr16, sockaddr_storage* ss, uint16_t port = 0) {
  memset(ss, 0, sizeof(*ss));
  if (af == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    memcpy(&sin->sin_addr, addr16, 4);
    return sizeof(sockaddr_in);
  }
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(ss);
  sin6->sin6_family = AF_INET6;
  sin6->sin6_port = htons(port);
  memcpy(&sin6->sin6_addr, addr16, 16);
  return sizeof(sockaddr_in6);
}

uint16_t PortOf(const sockaddr_storage* ss) {
  if (ss->ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(ss)->sin_port);
  if (ss->ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(ss)->sin6_port);
  return 0;
}

// An optional Uint16Array argument (ports), or an empty one.
Napi::Uint16Array U16OptArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || info[i].IsUndefined()) return Napi::Uint16Array();
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint16_array)
    throw ArgError(info.Env(), what);
  return info[i].As<Napi::Uint16Array>();
}

void FromSockaddr(const sockaddr_storage* ss, uint8_t* addr16) {
  memset(addr16, 0, 16);
  if (ss->ss_family == AF_INET) {
    memcpy(addr16, &reinterpret_cast<const sockaddr_in*>(ss)->sin_addr, 4);
  } else if (ss->ss_family == AF_INET6) {
    memcpy(addr16, &reinterpret_cast<const sockaddr_in6*>(ss)->sin6_addr, 16);
  }
}

}  // namespace

int TunSetOffloads(int fd);  // native/tun_offload.cc

namespace {

Napi::Value TunOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw ArgError(env, "name must be a string");
  std::string name = info[0].As<Napi::String>().Utf8Value();
  if (name.size() >= IFNAMSIZ) throw ArgError(env, "interface name longer than 15 bytes");
  bool multiQueue = info.Length() > 1 && info[1].ToBoolean().Value();
  bool vnetHdr = info.Length() > 2 && info[2].ToBoolean().Value();

  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw ErrnoError(env, errno, "open(/dev/net/tun)");
  ifreq ifr{};
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (multiQueue ? IFF_MULTI_QUEUE : 0) | (vnetHdr ? IFF_VNET_HDR : 0);
  strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    ::close(fd);
    throw ErrnoError(env, err, "ioctl(TUNSETIFF)");
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("fd", Napi::Number::New(env, fd));
  out.Set("name", Napi::String::New(env, ifr.ifr_name));
  out.Set("offloads", Napi::Number::New(env, vnetHdr ? TunSetOffloads(fd) : 0));
  return out;
}

Napi::Value RawOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int af = FamilyArg(info, 0);
  uint32_t proto = U32Arg(info, 1, "protocol must be 0..255");
  if (proto > 255) throw ArgError(env, "protocol must be 0..255");
  int fd = socket(af, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, static_cast<int>(proto));
  if (fd < 0) throw ErrnoError(env, errno, "socket(SOCK_RAW)");
  return Napi::Number::New(env, fd);
}

Napi::Value UdpOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int af = FamilyArg(info, 0);
  int fd = socket(af, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw ErrnoError(env, errno, "socket(SOCK_DGRAM)");
  return Napi::Number::New(env, fd);
}

Napi::Value BindAddress(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  int af = FamilyArg(info, 1);
  auto addr = BufArg(info, 2, "address must be a 16-byte Buffer");
  if (addr.Length() < 16) throw ArgError(env, "address must be a 16-byte Buffer");
  uint32_t port = info.Length() > 3 && !info[3].IsUndefined() ? U32Arg(info, 3, "port must be 0..65535") : 0;
  if (port > 65535) throw ArgError(env, "port must be 0..65535");
  sockaddr_storage ss;
  socklen_t len = ToSockaddr(af, addr.Data(), &ss, static_cast<uint16_t>(port));
  if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) < 0) throw ErrnoError(env, errno, "bind");
  return env.Undefined();
}

Napi::Value SetMark(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  uint32_t mark = U32Arg(info, 1, "mark must be a 32-bit unsigned integer");
  if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0)
    throw ErrnoError(env, errno, "setsockopt(SO_MARK)");
  return env.Undefined();
}

// flockExclusive(fd): an exclusive advisory lock without waiting (flock(2) LOCK_EX | LOCK_NB); false
// when another open file description holds it. The kernel drops it when the holder exits, however.
Napi::Value FlockExclusive(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  if (flock(fd, LOCK_EX | LOCK_NB) == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  throw ErrnoError(env, errno, "flock");
}

// setBuffers(fd, rcv, snd): socket buffer sizes; the FORCE variants (CAP_NET_ADMIN) pass the
// sysctl caps, so a bulk transfer's bursts are not lost in a 200 KB default buffer.
Napi::Value SetBuffers(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  int rcv = static_cast<int>(U32Arg(info, 1, "rcv must be a non-negative integer"));
  int snd = static_cast<int>(U32Arg(info, 2, "snd must be a non-negative integer"));
  if (rcv > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof(rcv)) < 0 &&
      setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv)) < 0)
    throw ErrnoError(env, errno, "setsockopt(SO_RCVBUF)");
  if (snd > 0 && setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &snd, sizeof(snd)) < 0 &&
      setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &snd, sizeof(snd)) < 0)
    throw ErrnoError(env, errno, "setsockopt(SO_SNDBUF)");
  return env.Undefined();
}

// unixDgramOpen([bindPath]): an AF_UNIX datagram socket (the systemd journal's native protocol),
// bound to bindPath when given (tests read from it with readBatch).
Napi::Value UnixDgramOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw ErrnoError(env, errno, "socket(AF_UNIX)");
  if (info.Length() > 0 && info[0].IsString()) {
    std::string path = info[0].As<Napi::String>().Utf8Value();
    sockaddr_un sun{};
    if (path.size() >= sizeof(sun.sun_path)) {
      ::close(fd);
      throw ArgError(env, "socket path too long");
    }
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path.c_str(), path.size());
    if (bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) < 0) {
      int err = errno;
      ::close(fd);
      throw ErrnoError(env, err, "bind(AF_UNIX)");
    }
  }
  return Napi::Number::New(env, fd);
}

// unixDgramSend(fd, path, buf): one datagram to the socket at path; returns octets sent.
Napi::Value UnixDgramSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  if (info.Length() < 2 || !info[1].IsString()) throw ArgError(env, "path must be a string");
  std::string path = info[1].As<Napi::String>().Utf8Value();
  auto data = BufArg(info, 2, "data must be a Buffer");
  sockaddr_un sun{};
  if (path.size() >= sizeof(sun.sun_path)) throw ArgError(env, "socket path too long");
  sun.sun_family = AF_UNIX;
  memcpy(sun.sun_path, path.data(), path.size());
  // An abstract address (leading NUL, as systemd's NOTIFY_SOCKET "@…" may be) is exactly its octets:
  // trailing NULs would name another socket.
  socklen_t len = path.size() > 0 && path[0] == '\0'
                      ? static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size())
                      : static_cast<socklen_t>(sizeof(sun));
  ssize_t n = sendto(fd, data.Data(), data.Length(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&sun), len);
  if (n < 0) throw ErrnoError(env, errno, "sendto(AF_UNIX)");
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  if (::close(fd) < 0 && errno != EINTR) throw ErrnoError(env, errno, "close");
  return env.Undefined();
}

// readBatch(fd, buf, slotSize, lengths, max): packet i lands at buf[i*slotSize], length in lengths[i].
Napi::Value ReadBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  auto buf = BufArg(info, 1, "buffer must be a Buffer");
  uint32_t slot = U32Arg(info, 2, "slotSize must be a positive integer");
  auto lens = I32Arg(info, 3, "lengths must be an Int32Array");
  uint32_t max = U32Arg(info, 4, "max must be a positive integer");
  if (slot == 0) throw ArgError(env, "slotSize must be a positive integer");
  if (max > lens.ElementLength()) max = lens.ElementLength();
  if (max > buf.Length() / slot) max = buf.Length() / slot;
  uint32_t n = 0;
  while (n < max) {
    ssize_t r = read(fd, buf.Data() + static_cast<size_t>(n) * slot, slot);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (n > 0) break;  // report what we have; the error recurs on the next call
      throw ErrnoError(env, errno, "read");
    }
    lens[n++] = static_cast<int32_t>(r);
  }
  return Napi::Number::New(env, n);
}

// writeBatch(fd, buf, offsets, lengths, count): returns how many packets were written.
Napi::Value WriteBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  auto buf = BufArg(info, 1, "buffer must be a Buffer");
  auto offs = I32Arg(info, 2, "offsets must be an Int32Array");
  auto lens = I32Arg(info, 3, "lengths must be an Int32Array");
  uint32_t count = U32Arg(info, 4, "count must be a non-negative integer");
  if (count > offs.ElementLength() || count > lens.ElementLength())
    throw ArgError(env, "count exceeds offsets/lengths");
  uint32_t n = 0;
  while (n < count) {
    int32_t off = offs[n], len = lens[n];
    if (off < 0 || len < 0 || static_cast<size_t>(off) + static_cast<size_t>(len) > buf.Length())
      throw ArgError(env, "packet outside buffer");
    ssize_t w = write(fd, buf.Data() + off, static_cast<size_t>(len));
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (n > 0) break;
      throw ErrnoError(env, errno, "write");
    }
    n++;
  }
  return Napi::Number::New(env, n);
}

// recvBatch(fd, buf, slotSize, lengths, addrs, max): recvmmsg; source address i at addrs[i*16].
Napi::Value RecvBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  auto buf = BufArg(info, 1, "buffer must be a Buffer");
  uint32_t slot = U32Arg(info, 2, "slotSize must be a positive integer");
  auto lens = I32Arg(info, 3, "lengths must be an Int32Array");
  auto addrs = BufArg(info, 4, "addrs must be a Buffer");
  uint32_t max = U32Arg(info, 5, "max must be a positive integer");
  auto ports = U16OptArg(info, 6, "ports must be a Uint16Array");
  if (slot == 0) throw ArgError(env, "slotSize must be a positive integer");
  if (!ports.IsEmpty() && max > ports.ElementLength()) max = ports.ElementLength();
  if (max > lens.ElementLength()) max = lens.ElementLength();
  if (max > buf.Length() / slot) max = buf.Length() / slot;
  if (max > addrs.Length() / 16) max = addrs.Length() / 16;
  if (max > kMaxBatch) max = kMaxBatch;
  if (max == 0) return Napi::Number::New(env, 0);

  mmsghdr msgs[kMaxBatch];
  iovec iovs[kMaxBatch];
  sockaddr_storage from[kMaxBatch];
  memset(msgs, 0, sizeof(mmsghdr) * max);
  for (uint32_t i = 0; i < max; i++) {
    iovs[i].iov_base = buf.Data() + static_cast<size_t>(i) * slot;
    iovs[i].iov_len = slot;
    msgs[i].msg_hdr.msg_iov = &iovs[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    msgs[i].msg_hdr.msg_name = &from[i];
    msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage);
  }
  int r;
  do {
    r = recvmmsg(fd, msgs, max, MSG_DONTWAIT, nullptr);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, 0);
    throw ErrnoError(env, errno, "recvmmsg");
  }
  for (int i = 0; i < r; i++) {
    // A datagram larger than the slot is truncated: report it as -1 so the caller drops it.
    lens[i] = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) ? -1 : static_cast<int32_t>(msgs[i].msg_len);
    FromSockaddr(&from[i], addrs.Data() + static_cast<size_t>(i) * 16);
    if (!ports.IsEmpty()) ports[i] = PortOf(&from[i]);
  }
  return Napi::Number::New(env, r);
}

// sendBatch(fd, family, buf, offsets, lengths, addrs, count): sendmmsg; returns packets sent.
Napi::Value SendBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = FdArg(info, 0);
  int af = FamilyArg(info, 1);
  auto buf = BufArg(info, 2, "buffer must be a Buffer");
  auto offs = I32Arg(info, 3, "offsets must be an Int32Array");
  auto lens = I32Arg(info, 4, "lengths must be an Int32Array");
  auto addrs = BufArg(info, 5, "addrs must be a Buffer");
  uint32_t count = U32Arg(info, 6, "count must be a non-negative integer");
  auto ports = U16OptArg(info, 7, "ports must be a Uint16Array");
  if (count > offs.ElementLength() || count > lens.ElementLength() || count > addrs.Length() / 16)
    throw ArgError(env, "count exceeds offsets/lengths/addrs");
  if (!ports.IsEmpty() && count > ports.ElementLength()) throw ArgError(env, "count exceeds ports");
  uint32_t sent = 0;
  while (sent < count) {
    uint32_t n = count - sent;
    if (n > kMaxBatch) n = kMaxBatch;
    mmsghdr msgs[kMaxBatch];
    iovec iovs[kMaxBatch];
    sockaddr_storage to[kMaxBatch];
    memset(msgs, 0, sizeof(mmsghdr) * n);
    for (uint32_t i = 0; i < n; i++) {
      uint32_t k = sent + i;
      int32_t off = offs[k], len = lens[k];
      if (off < 0 || len < 0 || static_cast<size_t>(off) + static_cast<size_t>(len) > buf.Length())
        throw ArgError(env, "packet outside buffer");
      iovs[i].iov_base = buf.Data() + off;
      iovs[i].iov_len = static_cast<size_t>(len);
      msgs[i].msg_hdr.msg_iov = &iovs[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_hdr.msg_name = &to[i];
      msgs[i].msg_hdr.msg_namelen = ToSockaddr(af, addrs.Data() + static_cast<size_t>(k) * 16, &to[i],
                                               ports.IsEmpty() ? 0 : ports[k]);
    }
    int r;
    do {
      r = sendmmsg(fd, msgs, n, MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (sent > 0) break;
      throw ErrnoError(env, errno, "sendmmsg");
    }
    sent += static_cast<uint32_t>(r);
    if (static_cast<uint32_t>(r) < n) break;
  }
  return Napi::Number::New(env, sent);
}

// Poller: calls onReadable() on Node's loop whenever fd becomes readable. The callback is expected
// to drain the fd (readBatch/recvBatch until 0) — level-triggered, so a partial drain fires again.
class Poller : public Napi::ObjectWrap<Poller> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Poller",
                       {InstanceMethod("start", &Poller::Start), InstanceMethod("stop", &Poller::Stop),
                        InstanceMethod("close", &Poller::Close)});
  }

  explicit Poller(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Poller>(info) {
    Napi::Env env = info.Env();
    fd_ = FdArg(info, 0);
    if (info.Length() < 2 || !info[1].IsFunction()) throw ArgError(env, "onReadable must be a function");
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    context_ = std::make_unique<Napi::AsyncContext>(env, "consec:poller");
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr)
      throw Napi::Error::New(env, "no libuv loop");
    handle_ = new uv_poll_t;
    int rc = uv_poll_init(loop, handle_, fd_);
    if (rc != 0) {
      delete handle_;
      handle_ = nullptr;
      throw ErrnoError(env, -rc, "uv_poll_init");
    }
    handle_->data = this;
  }

  ~Poller() override { CloseHandle(); }

 private:
  static void OnPoll(uv_poll_t* h, int status, int events) {
    auto* self = static_cast<Poller*>(h->data);
    if (self == nullptr || !self->active_) return;
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    Napi::Value err = env.Null();
    if (status < 0) {
      const char* name = uv_err_name(status);
      Napi::Error e = Napi::Error::New(env, std::string("poll: ") + uv_strerror(status));
      e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
      err = e.Value();
    }
    (void)events;
    try {
      self->callback_.MakeCallback(self->Value(), {err}, *self->context_);
    } catch (const Napi::Error& e) {
      // A throwing JavaScript handler must not abort the process from inside libuv: hand the error
      // to Node as an uncaught exception, where the process decides what to do with it.
      napi_fatal_exception(env, e.Value());
    }
  }

  static void OnClosed(uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); }

  void CloseHandle() {
    if (handle_ != nullptr) {
      handle_->data = nullptr;
      uv_close(reinterpret_cast<uv_handle_t*>(handle_), OnClosed);
      handle_ = nullptr;
    }
    active_ = false;
  }

  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (handle_ == nullptr) throw Napi::Error::New(env, "poller is closed");
    if (!active_) {
      int rc = uv_poll_start(handle_, UV_READABLE, OnPoll);
      if (rc != 0) throw ErrnoError(env, -rc, "uv_poll_start");
      active_ = true;
      Ref();  // keep the JS object alive while the loop may call it
    }
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (handle_ != nullptr && active_) {
      uv_poll_stop(handle_);
      active_ = false;
      Unref();
    }
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (active_) Unref();
    CloseHandle();
    return info.Env().Undefined();
  }

  int fd_ = -1;
  bool active_ = false;
  uv_poll_t* handle_ = nullptr;
  Napi::FunctionReference callback_;
  std::unique_ptr<Napi::AsyncContext> context_;
};

}  // namespace

Napi::Function InitEspGcm(Napi::Env env);  // native/esp_gcm.cc
Napi::Function InitEspCbc(Napi::Env env);  // native/esp_cbc.cc
void InitNetlink(Napi::Env env, Napi::Object exports);  // native/netlink.cc
void InitEcdsaDigest(Napi::Env env, Napi::Object exports);  // native/ecdsa_digest.cc
void InitTunOffload(Napi::Env env, Napi::Object exports);   // native/tun_offload.cc

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("EspGcm", InitEspGcm(env));
  exports.Set("EspCbc", InitEspCbc(env));
  exports.Set("tunOpen", Napi::Function::New(env, TunOpen));
  exports.Set("rawOpen", Napi::Function::New(env, RawOpen));
  exports.Set("udpOpen", Napi::Function::New(env, UdpOpen));
  exports.Set("bindAddress", Napi::Function::New(env, BindAddress));
  exports.Set("setMark", Napi::Function::New(env, SetMark));
  exports.Set("setBuffers", Napi::Function::New(env, SetBuffers));
  exports.Set("flockExclusive", Napi::Function::New(env, FlockExclusive));
  exports.Set("close", Napi::Function::New(env, Close));
  exports.Set("unixDgramOpen", Napi::Function::New(env, UnixDgramOpen));
  exports.Set("unixDgramSend", Napi::Function::New(env, UnixDgramSend));
  exports.Set("readBatch", Napi::Function::New(env, ReadBatch));
  exports.Set("writeBatch", Napi::Function::New(env, WriteBatch));
  exports.Set("recvBatch", Napi::Function::New(env, RecvBatch));
  exports.Set("sendBatch", Napi::Function::New(env, SendBatch));
  exports.Set("Poller", Poller::Init(env));
  exports.Set("maxBatch", Napi::Number::New(env, kMaxBatch));
  InitNetlink(env, exports);
  InitEcdsaDigest(env, exports);
  InitTunOffload(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(consec_io, Init)
