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

/**
 * Why `open` refused a packet, written negated into its length slot (src/io/native.ts reads them
 * with ESP_OPEN_FAILURE: keep the two in step).
 */
enum OpenFailure : int32_t { kOpenIntegrity = -1, kOpenMalformed = -2, kOpenPadding = -3 };

/** Writes the ESP trailer after `len` payload octets: padding 1, 2, …, its length, next header (RFC 4303 §2.4). */
inline void WriteTrailer(uint8_t* body, uint32_t len, uint32_t pad, uint8_t nextHeader) {
  for (uint32_t k = 0; k < pad; k++) body[len + k] = uint8_t(k + 1);
  body[len + pad] = uint8_t(pad);
  body[len + pad + 1] = nextHeader;
}

/**
 * Checks the trailer of `ct` decrypted octets: the payload length (next header in `nextHeader`),
 * or kOpenPadding when the padding is not 1, 2, … or longer than what precedes it.
 */
inline int32_t ReadTrailer(const uint8_t* out, int32_t ct, uint8_t& nextHeader) {
  uint32_t padLen = out[ct - 2];
  int32_t payload = ct - 2 - int32_t(padLen);
  if (payload < 0) return kOpenPadding;
  for (uint32_t k = 0; k < padLen; k++)
    if (out[payload + k] != uint8_t(k + 1)) return kOpenPadding;
  nextHeader = out[ct - 1];
  return payload;
}

/** seal(src, srcOffs, srcLens, nextHeaders, count, dst, dstOffs, dstLens, dstIndex, spi, seqLo, seqHi), checked. */
struct SealArgs {
  Napi::Buffer<uint8_t> src;
  Napi::Int32Array srcOffs, srcLens;
  Napi::Uint8Array nhs;
  uint32_t count;
  Napi::Buffer<uint8_t> dst;
  Napi::Int32Array dstOffs, dstLens;
  uint32_t dstIndex, spi;
  uint64_t seq;
  /** Octets per destination slot. */
  uint32_t dstSlot;
};

inline uint32_t SlotOf(const Napi::Int32Array& offs, const Napi::Buffer<uint8_t>& dst) {
  return offs.ElementLength() > 1 ? uint32_t(offs[1] - offs[0]) : uint32_t(dst.Length());
}

inline SealArgs ParseSeal(const Napi::CallbackInfo& info) {
  SealArgs a{
      BufferArg(info, 0, "src must be a Buffer"),
      TypedArg<Napi::Int32Array>(info, 1, napi_int32_array, "srcOffsets must be an Int32Array"),
      TypedArg<Napi::Int32Array>(info, 2, napi_int32_array, "srcLengths must be an Int32Array"),
      TypedArg<Napi::Uint8Array>(info, 3, napi_uint8_array, "nextHeaders must be a Uint8Array"),
      NumArg(info, 4, "count must be a number"),
      BufferArg(info, 5, "dst must be a Buffer"),
      TypedArg<Napi::Int32Array>(info, 6, napi_int32_array, "dstOffsets must be an Int32Array"),
      TypedArg<Napi::Int32Array>(info, 7, napi_int32_array, "dstLengths must be an Int32Array"),
      NumArg(info, 8, "dstIndex must be a number"),
      NumArg(info, 9, "spi must be a number"),
      (uint64_t(NumArg(info, 11, "seqHigh must be a number")) << 32) | NumArg(info, 10, "seqLow"),
      0,
  };
  if (a.count > a.srcOffs.ElementLength() || a.count > a.srcLens.ElementLength() || a.count > a.nhs.ElementLength() ||
      a.dstIndex + a.count > a.dstOffs.ElementLength() || a.dstIndex + a.count > a.dstLens.ElementLength())
    throw ArgError(info.Env(), "count exceeds the arrays");
  a.dstSlot = SlotOf(a.dstOffs, a.dst);
  return a;
}

/** open(src, srcOffs, srcLens, seqHighs, count, dst, dstOffs, dstLens, nextHeaders), checked. */
struct OpenArgs {
  Napi::Buffer<uint8_t> src;
  Napi::Int32Array srcOffs, srcLens;
  Napi::Uint32Array seqHis;
  uint32_t count;
  Napi::Buffer<uint8_t> dst;
  Napi::Int32Array dstOffs, dstLens;
  Napi::Uint8Array nhs;
  uint32_t dstSlot;
};

inline OpenArgs ParseOpen(const Napi::CallbackInfo& info) {
  OpenArgs a{
      BufferArg(info, 0, "src must be a Buffer"),
      TypedArg<Napi::Int32Array>(info, 1, napi_int32_array, "srcOffsets must be an Int32Array"),
      TypedArg<Napi::Int32Array>(info, 2, napi_int32_array, "srcLengths must be an Int32Array"),
      TypedArg<Napi::Uint32Array>(info, 3, napi_uint32_array, "seqHighs must be a Uint32Array"),
      NumArg(info, 4, "count must be a number"),
      BufferArg(info, 5, "dst must be a Buffer"),
      TypedArg<Napi::Int32Array>(info, 6, napi_int32_array, "dstOffsets must be an Int32Array"),
      TypedArg<Napi::Int32Array>(info, 7, napi_int32_array, "dstLengths must be an Int32Array"),
      TypedArg<Napi::Uint8Array>(info, 8, napi_uint8_array, "nextHeaders must be a Uint8Array"),
      0,
  };
  if (a.count > a.srcOffs.ElementLength() || a.count > a.srcLens.ElementLength() || a.count > a.seqHis.ElementLength() ||
      a.count > a.dstOffs.ElementLength() || a.count > a.dstLens.ElementLength() || a.count > a.nhs.ElementLength())
    throw ArgError(info.Env(), "count exceeds the arrays");
  a.dstSlot = SlotOf(a.dstOffs, a.dst);
  return a;
}

}  // namespace esp
