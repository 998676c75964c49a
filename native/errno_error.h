// A failed system call as a JavaScript Error with .code (errno name), .errno and .syscall, which
// src/io/native.ts turns into NativeIoError. Shared by consec_io.cc and netlink.cc.
#pragma once

#include <napi.h>

#include <cstring>
#include <string>

inline Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall) {
  Napi::Error e = Napi::Error::New(env, std::string(syscall) + ": " + strerror(err));
  const char* name = strerrorname_np(err);
  e.Set("code", Napi::String::New(env, name ? name : "EUNKNOWN"));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}
