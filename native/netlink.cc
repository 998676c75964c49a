// consec native policy installation: the kernel's route table and nftables without a child process.
//
//   rtnetlink(messages[, protocol]) -> Int32Array   netlink requests (nlmsghdr …, built by
//                                         src/io/rtnetlink.ts or src/io/xfrm.ts) sent on a NETLINK_ROUTE
//                                         (or `protocol`: NETLINK_XFRM) socket in chunks; the errno of
//                                         each message's acknowledgement (0: done), in order
//   netlinkQuery(protocol, message) -> Buffer   one request (a get or a dump); the kernel's answers
//                                         as they came (nlmsghdr …), up to NLMSG_DONE for a dump;
//                                         an error answer throws with its errno
//   rtnetlinkMonitor(groups[, protocol]) -> fd   a non-blocking netlink socket joined to the multicast
//                                         groups (RTMGRP_* bits: address and link changes; XFRMGRP_*:
//                                         acquires and expiries), read with readBatch and polled
//   udpEncap(fd)                          UDP_ENCAP_ESPINUDP on a UDP socket (the kernel takes the ESP
//                                         in it; keying messages still reach the socket)
//   xfrmSocketBypass(fd, family)          per-socket IPsec policy "allow" both ways (IKE's own
//                                         datagrams never match an SPD entry), as IKE daemons do
//   nftAvailable()        -> boolean      libnftables.so.1 could be loaded
//   nftRun(script, json)  -> { ok, output, error }   one nft script (as `nft -f`, or `nft -j` for
//                                         JSON output) through libnftables, one transaction;
//                                         error: nft's own message text
//
// Both run on the calling (main) thread: the kernel reports the thread that changed the ruleset
// (`nft monitor`: "by process PID"), and the daemon recognises its own changes by its PID. A daemon
// of thousands of rules forks no process per change (a fork of a large process costs milliseconds).

#include <napi.h>

#include "errno_error.h"

#include <cerrno>
#include <cstring>
#include <dlfcn.h>
#include <linux/netlink.h>
#include <linux/udp.h>
#include <linux/xfrm.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <algorithm>
#include <vector>

namespace {


// Messages per send: their acknowledgements must fit the socket's receive buffer.
constexpr size_t kChunk = 128;

struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// One send to the kernel (netlink is datagram-whole), retried on EINTR.
ssize_t SendToKernel(int fd, const uint8_t* data, size_t len) {
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  ssize_t n;
  do n = sendto(fd, data, len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel);
  while (n < 0 && errno == EINTR);
  return n;
}

// One datagram of answers, retried on EINTR.
ssize_t ReceiveAnswers(int fd, std::vector<uint8_t>& rx) {
  ssize_t got;
  do got = recv(fd, rx.data(), rx.size(), 0);
  while (got < 0 && errno == EINTR);
  return got;
}

Napi::Value Rtnetlink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBuffer()) {
    Napi::TypeError::New(env, "messages must be a Buffer").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto buf = info[0].As<Napi::Buffer<uint8_t>>();
  const int protocol = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : NETLINK_ROUTE;
  if (protocol != NETLINK_ROUTE && protocol != NETLINK_XFRM) {
    Napi::TypeError::New(env, "protocol must be NETLINK_ROUTE or NETLINK_XFRM").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const uint8_t* data = buf.Data();
  const size_t len = buf.Length();
  // Message boundaries and sequence numbers, checked before anything is sent.
  std::vector<size_t> starts;
  std::vector<uint32_t> seqs;
  bool wellFormed = len > 0;
  for (size_t off = 0; off < len && wellFormed;) {
    nlmsghdr h;
    if (len - off < sizeof h) {
      wellFormed = false;
      break;
    }
    memcpy(&h, data + off, sizeof h);
    if (h.nlmsg_len < sizeof h || h.nlmsg_len > len - off || !(h.nlmsg_flags & NLM_F_ACK)) {
      wellFormed = false;
      break;
    }
    starts.push_back(off);
    seqs.push_back(h.nlmsg_seq);
    off = std::min(len, off + NLMSG_ALIGN(h.nlmsg_len));
  }
  if (!wellFormed) {
    Napi::TypeError::New(env, "not a sequence of netlink requests asking for acknowledgement").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  starts.push_back(len);
  const size_t count = seqs.size();
  Fd s{socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol)};
  if (s.fd < 0) {
    ErrnoError(env, errno, "socket").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  sockaddr_nl local{};
  local.nl_family = AF_NETLINK;
  if (bind(s.fd, reinterpret_cast<sockaddr*>(&local), sizeof local) < 0) {
    ErrnoError(env, errno, "bind").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  Napi::Int32Array result = Napi::Int32Array::New(env, count);
  for (size_t i = 0; i < count; i++) result[i] = -1;  // no answer (yet)
  std::vector<uint8_t> rx(64 * 1024);
  for (size_t first = 0; first < count; first += kChunk) {
    const size_t last = std::min(count, first + kChunk);
    const size_t from = starts[first];
    const size_t to = starts[last];
    if (SendToKernel(s.fd, data + from, to - from) < 0) {
      ErrnoError(env, errno, "sendto").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    // Every message asked for an acknowledgement: read until each of the chunk has one.
    size_t answered = 0;
    while (answered < last - first) {
      const ssize_t got = ReceiveAnswers(s.fd, rx);
      if (got < 0) {
        ErrnoError(env, errno, "recv").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      int remaining = static_cast<int>(got);
      for (auto* h = reinterpret_cast<nlmsghdr*>(rx.data()); NLMSG_OK(h, remaining); h = NLMSG_NEXT(h, remaining)) {
        if (h->nlmsg_type != NLMSG_ERROR || h->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) continue;
        auto* e = static_cast<nlmsgerr*>(NLMSG_DATA(h));
        for (size_t i = first; i < last; i++) {
          if (seqs[i] != h->nlmsg_seq || result[i] != -1) continue;
          result[i] = -e->error;
          answered++;
          break;
        }
      }
    }
  }
  return result;
}

// libnftables, loaded at run time (the nftables package ships it; no headers needed to build).
struct Nft {
  void* lib = nullptr;
  void* ctx[2] = {nullptr, nullptr};  // text output, JSON output
  void* (*ctx_new)(uint32_t) = nullptr;
  int (*buffer_output)(void*) = nullptr;
  int (*buffer_error)(void*) = nullptr;
  const char* (*get_error)(void*) = nullptr;
  const char* (*get_output)(void*) = nullptr;
  void (*set_output_flags)(void*, unsigned int) = nullptr;
  int (*run)(void*, const char*) = nullptr;
  bool tried = false;
  bool loaded = false;

  template <typename F>
  F Sym(const char* name) {
    return reinterpret_cast<F>(dlsym(lib, name));
  }

  bool Load() {
    if (tried) return loaded;
    tried = true;
    lib = dlopen("libnftables.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return false;
    ctx_new = Sym<void* (*)(uint32_t)>("nft_ctx_new");
    buffer_output = Sym<int (*)(void*)>("nft_ctx_buffer_output");
    buffer_error = Sym<int (*)(void*)>("nft_ctx_buffer_error");
    get_error = Sym<const char* (*)(void*)>("nft_ctx_get_error_buffer");
    get_output = Sym<const char* (*)(void*)>("nft_ctx_get_output_buffer");
    set_output_flags = Sym<void (*)(void*, unsigned int)>("nft_ctx_output_set_flags");
    run = Sym<int (*)(void*, const char*)>("nft_run_cmd_from_buffer");
    loaded = ctx_new && buffer_output && buffer_error && get_error && get_output && set_output_flags && run;
    return loaded;
  }

  void* Context(bool json) {
    void*& c = ctx[json ? 1 : 0];
    if (c) return c;
    c = ctx_new(0);  // NFT_CTX_DEFAULT
    if (!c) return nullptr;
    buffer_output(c);
    buffer_error(c);
    if (json) set_output_flags(c, 1u << 4);  // NFT_CTX_OUTPUT_JSON
    return c;
  }
};

Nft nft;

Napi::Value NftAvailable(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), nft.Load());
}

Napi::Value NftRun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    Napi::TypeError::New(env, "script must be a string").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const bool json = info.Length() > 1 && info[1].ToBoolean().Value();
  void* ctx = nft.Load() ? nft.Context(json) : nullptr;
  if (!ctx) {
    Napi::Error::New(env, "libnftables.so.1 is not available").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::string script = info[0].As<Napi::String>().Utf8Value();
  const int rc = nft.run(ctx, script.c_str());
  // Both buffers read (and so emptied) each time, never left to grow.
  const char* output = nft.get_output(ctx);
  const char* err = nft.get_error(ctx);
  Napi::Object out = Napi::Object::New(env);
  out.Set("ok", Napi::Boolean::New(env, rc == 0));
  out.Set("output", Napi::String::New(env, output ? output : ""));
  out.Set("error", Napi::String::New(env, err ? err : ""));
  return out;
}

Napi::Value RtnetlinkMonitor(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "groups must be a number").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const uint32_t groups = info[0].As<Napi::Number>().Uint32Value();
  const int protocol = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : NETLINK_ROUTE;
  if (protocol != NETLINK_ROUTE && protocol != NETLINK_XFRM) {
    Napi::TypeError::New(env, "protocol must be NETLINK_ROUTE or NETLINK_XFRM").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
  if (fd < 0) {
    ErrnoError(env, errno, "socket").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  // Room for a burst of changes (an interface with many addresses going down at once).
  int size = 1 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  sockaddr_nl local{};
  local.nl_family = AF_NETLINK;
  local.nl_groups = groups;
  if (bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) < 0) {
    const int e = errno;
    ::close(fd);
    ErrnoError(env, e, "bind(netlink monitor)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

Napi::Value NetlinkQuery(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsBuffer()) {
    Napi::TypeError::New(env, "netlinkQuery(protocol, message)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const int protocol = info[0].As<Napi::Number>().Int32Value();
  if (protocol != NETLINK_ROUTE && protocol != NETLINK_XFRM) {
    Napi::TypeError::New(env, "protocol must be NETLINK_ROUTE or NETLINK_XFRM").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto msg = info[1].As<Napi::Buffer<uint8_t>>();
  nlmsghdr h;
  if (msg.Length() < sizeof h) {
    Napi::TypeError::New(env, "not a netlink message").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  memcpy(&h, msg.Data(), sizeof h);
  if (h.nlmsg_len != msg.Length()) {
    Napi::TypeError::New(env, "not one netlink message").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const bool dump = (h.nlmsg_flags & NLM_F_DUMP) == NLM_F_DUMP;
  Fd s{socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol)};
  if (s.fd < 0) {
    ErrnoError(env, errno, "socket").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  if (SendToKernel(s.fd, msg.Data(), msg.Length()) < 0) {
    ErrnoError(env, errno, "sendto").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<uint8_t> out;
  std::vector<uint8_t> rx(256 * 1024);
  for (bool done = false; !done;) {
    const ssize_t got = ReceiveAnswers(s.fd, rx);
    if (got < 0) {
      ErrnoError(env, errno, "recv").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    int remaining = static_cast<int>(got);
    for (auto* m = reinterpret_cast<nlmsghdr*>(rx.data()); NLMSG_OK(m, remaining); m = NLMSG_NEXT(m, remaining)) {
      if (m->nlmsg_seq != h.nlmsg_seq) continue;
      if (m->nlmsg_type == NLMSG_DONE) {
        done = true;
        break;
      }
      if (m->nlmsg_type == NLMSG_ERROR) {
        if (m->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) {
          Napi::Error::New(env, "netlink: a truncated error message").ThrowAsJavaScriptException();
          return env.Undefined();
        }
        const int e = -static_cast<nlmsgerr*>(NLMSG_DATA(m))->error;
        if (e != 0) {
          ErrnoError(env, e, "netlink").ThrowAsJavaScriptException();
          return env.Undefined();
        }
        done = true;
        break;
      }
      const auto* p = reinterpret_cast<const uint8_t*>(m);
      // The message itself, padded to its alignment here (the kernel's padding may not be in the datagram).
      out.insert(out.end(), p, p + m->nlmsg_len);
      out.resize(out.size() + (NLMSG_ALIGN(m->nlmsg_len) - m->nlmsg_len), 0);
      if (!dump) {
        done = true;
        break;
      }
    }
  }
  return Napi::Buffer<uint8_t>::Copy(env, out.data(), out.size());
}

int FdArgument(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "fd must be a number");
  return info[0].As<Napi::Number>().Int32Value();
}

Napi::Value UdpEncap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = FdArgument(info);
  int type = UDP_ENCAP_ESPINUDP;
  if (setsockopt(fd, IPPROTO_UDP, UDP_ENCAP, &type, sizeof type) < 0) throw ErrnoError(env, errno, "setsockopt(UDP_ENCAP)");
  return env.Undefined();
}

Napi::Value XfrmSocketBypass(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int fd = FdArgument(info);
  if (info.Length() < 2 || !info[1].IsNumber()) throw Napi::TypeError::New(env, "family must be 4 or 6");
  const int family = info[1].As<Napi::Number>().Int32Value();
  if (family != 4 && family != 6) throw Napi::TypeError::New(env, "family must be 4 or 6");
  for (uint8_t dir : {XFRM_POLICY_IN, XFRM_POLICY_OUT}) {
    xfrm_userpolicy_info p{};
    p.action = XFRM_POLICY_ALLOW;
    p.sel.family = family == 4 ? AF_INET : AF_INET6;
    p.dir = dir;
    const int rc = family == 4 ? setsockopt(fd, IPPROTO_IP, IP_XFRM_POLICY, &p, sizeof p)
                               : setsockopt(fd, IPPROTO_IPV6, IPV6_XFRM_POLICY, &p, sizeof p);
    if (rc < 0) throw ErrnoError(env, errno, "setsockopt(XFRM_POLICY)");
  }
  return env.Undefined();
}

}  // namespace

void InitNetlink(Napi::Env env, Napi::Object exports) {
  exports.Set("rtnetlink", Napi::Function::New(env, Rtnetlink));
  exports.Set("rtnetlinkMonitor", Napi::Function::New(env, RtnetlinkMonitor));
  exports.Set("netlinkQuery", Napi::Function::New(env, NetlinkQuery));
  exports.Set("udpEncap", Napi::Function::New(env, UdpEncap));
  exports.Set("xfrmSocketBypass", Napi::Function::New(env, XfrmSocketBypass));
  exports.Set("nftAvailable", Napi::Function::New(env, NftAvailable));
  exports.Set("nftRun", Napi::Function::New(env, NftRun));
}
