// Argument checks and octet helpers shared by the batched ESP contexts (esp_gcm.cc, esp_cbc.cc).
#pragma once

#include <napi.h>

#include <cstdint>

namespace esp {

inline Napi::Error ArgError(Napi::Env env, const char* msg) {
  Napi::TypeError e = Napi::TypeError::New(env, msg);
  e.Set("code", Napi::String::New(env, "ERR_INVALID_ARG"));
  return e;
}

template <typename T>
T TypedArg(const Napi::CallbackInfo& info, size_t i, napi_typedarray_type type, const char* what) {
  if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != type)
    throw ArgError(info.Env(), what);
  return info[i].As<T>();
}

inline Napi::Buffer<uint8_t> BufferArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsBuffer()) throw ArgError(info.Env(), what);
  return info[i].As<Napi::Buffer<uint8_t>>();
}

inline uint32_t NumArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber()) throw ArgError(info.Env(), what);
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (v < 0 || v > 4294967295.0) throw ArgError(info.Env(), what);
  return static_cast<uint32_t>(v);
}

inline void Put32(uint8_t* p, uint32_t v) {
  p[0] = v >> 24;
  p[1] = v >> 16;
  p[2] = v >> 8;
  p[3] = v;
}

}  // namespace esp
