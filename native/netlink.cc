// consec native policy installation: the kernel's route table and nftables without a child process.
//
//   rtnetlink(messages)   -> Int32Array   route messages (nlmsghdr …, built by src/io/rtnetlink.ts)
//                                         sent on a NETLINK_ROUTE socket in chunks; the errno of
//                                         each message's acknowledgement (0: done), in order
//   rtnetlinkMonitor(groups) -> fd        a non-blocking NETLINK_ROUTE socket joined to the multicast
//                                         groups (RTMGRP_* bits: address and link changes), read
//                                         with readBatch and polled like the other descriptors
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

Napi::Value Rtnetlink(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBuffer()) {
    Napi::TypeError::New(env, "messages must be a Buffer").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto buf = info[0].As<Napi::Buffer<uint8_t>>();
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
  Fd s{socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE)};
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
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  for (size_t first = 0; first < count; first += kChunk) {
    const size_t last = std::min(count, first + kChunk);
    const size_t from = starts[first];
    const size_t to = starts[last];
    ssize_t n;
    do n = sendto(s.fd, data + from, to - from, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      ErrnoError(env, errno, "sendto").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    // Every message asked for an acknowledgement: read until each of the chunk has one.
    size_t answered = 0;
    while (answered < last - first) {
      ssize_t got;
      do got = recv(s.fd, rx.data(), rx.size(), 0);
      while (got < 0 && errno == EINTR);
      if (got < 0) {
        ErrnoError(env, errno, "recv").ThrowAsJavaScriptException();
        return env.Undefined();
      }
      int remaining = static_cast<int>(got);
      for (auto* h = reinterpret_cast<nlmsghdr*>(rx.data()); NLMSG_OK(h, remaining); h = NLMSG_NEXT(h, remaining)) {
        if (h->nlmsg_type != NLMSG_ERROR) continue;
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
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_ROUTE);
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
    ErrnoError(env, e, "bind(NETLINK_ROUTE)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

}  // namespace

void InitNetlink(Napi::Env env, Napi::Object exports) {
  exports.Set("rtnetlink", Napi::Function::New(env, Rtnetlink));
  exports.Set("rtnetlinkMonitor", Napi::Function::New(env, RtnetlinkMonitor));
  exports.Set("nftAvailable", Napi::Function::New(env, NftAvailable));
  exports.Set("nftRun", Napi::Function::New(env, NftRun));
}
