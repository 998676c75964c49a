// Batched ESP AES-GCM-16 (RFC 4303, RFC 4106) with the OpenSSL EVP functions the node binary itself
// exports (no -lcrypto; resolved at dlopen). One EspGcm object per SA and direction keeps its key
// schedule: each packet only sets a new nonce, so the per-packet cost is the cipher work, not
// JavaScript object setup. Whole batches (a recvmmsg or TUN read) are processed in one call.
//
//   new EspGcm(key, salt, esn, encrypt)
//   seal(src, srcOffs, srcLens, nextHeaders, count, dst, dstOffs, dstLens, dstIndex, spi, seqLo, seqHi) -> count
//       packet i (seq = seqHi:seqLo + i) from src[srcOffs[i], +srcLens[i]) into dst slot dstIndex+i
//   open(src, srcOffs, srcLens, seqHis, count, dst, dstOffs, dstLens, nextHeaders) -> count
//       dstLens[i] = payload length, or -1 integrity, -2 malformed, -3 padding
//
// Replay checks, SA lookup and selectors stay in TypeScript; this file only does the cipher.

#include <napi.h>
#include <openssl/evp.h>

#include "esp_args.h"

#include <cstdint>
#include <cstring>

namespace {

using esp::BufferArg;
using esp::NumArg;
using esp::Put32;
const auto GcmArgError = esp::ArgError;

constexpr int kIcv = 16;
constexpr int kIv = 8;

class EspGcm : public Napi::ObjectWrap<EspGcm> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "EspGcm",
                       {InstanceMethod("seal", &EspGcm::Seal), InstanceMethod("open", &EspGcm::Open),
                        InstanceMethod("close", &EspGcm::Close)});
  }

  explicit EspGcm(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EspGcm>(info) {
    Napi::Env env = info.Env();
    auto key = BufferArg(info, 0, "key must be a Buffer");
    auto salt = BufferArg(info, 1, "salt must be a 4-byte Buffer");
    if (salt.Length() != 4) throw GcmArgError(env, "salt must be a 4-byte Buffer");
    esn_ = info.Length() > 2 && info[2].ToBoolean().Value();
    encrypt_ = info.Length() > 3 && info[3].ToBoolean().Value();
    const EVP_CIPHER* cipher = key.Length() == 16   ? EVP_aes_128_gcm()
                               : key.Length() == 24 ? EVP_aes_192_gcm()
                               : key.Length() == 32 ? EVP_aes_256_gcm()
                                                    : nullptr;
    if (!cipher) throw GcmArgError(env, "AES-GCM key must be 16, 24 or 32 bytes");
    memcpy(salt_, salt.Data(), 4);
    ctx_ = EVP_CIPHER_CTX_new();
    if (!ctx_) throw Napi::Error::New(env, "EVP_CIPHER_CTX_new failed");
    int ok = encrypt_ ? EVP_EncryptInit_ex(ctx_, cipher, nullptr, key.Data(), nullptr)
                      : EVP_DecryptInit_ex(ctx_, cipher, nullptr, key.Data(), nullptr);
    if (ok != 1) throw Napi::Error::New(env, "EVP cipher init failed");
  }

  ~EspGcm() override {
    if (ctx_) EVP_CIPHER_CTX_free(ctx_);
  }

 private:
  void Nonce(uint8_t* nonce, const uint8_t* iv) {
    memcpy(nonce, salt_, 4);
    memcpy(nonce + 4, iv, kIv);
  }

  Napi::Value Seal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!ctx_ || !encrypt_) throw GcmArgError(env, "not an encrypting context");
    auto [src, srcOffs, srcLens, nhs, count, dst, dstOffs, dstLens, dstIndex, spi, seq, dstSlot] = esp::ParseSeal(info);
    for (uint32_t i = 0; i < count; i++, seq++) {
      int32_t off = srcOffs[i], len = srcLens[i];
      if (off < 0 || len < 0 || size_t(off) + size_t(len) > src.Length()) throw GcmArgError(env, "packet outside src");
      uint32_t pad = (4 - ((uint32_t(len) + 2) % 4)) % 4;
      uint32_t plain = uint32_t(len) + pad + 2;
      uint32_t total = 8 + kIv + plain + kIcv;
      int32_t doff = dstOffs[dstIndex + i];
      if (doff < 0 || total > dstSlot || size_t(doff) + total > dst.Length()) throw GcmArgError(env, "ESP packet exceeds its dst slot");
      uint8_t* out = dst.Data() + doff;
      uint32_t lo = uint32_t(seq), hi = uint32_t(seq >> 32);
      Put32(out, spi);
      Put32(out + 4, lo);
      Put32(out + 8, hi);  // explicit IV = the 64-bit sequence number (unique per key, RFC 4106 §3.1)
      Put32(out + 12, lo);
      uint8_t nonce[12];
      Nonce(nonce, out + 8);
      uint8_t aad[12];
      int aadLen;
      if (esn_) {
        Put32(aad, spi);
        Put32(aad + 4, hi);
        Put32(aad + 8, lo);
        aadLen = 12;
      } else {
        memcpy(aad, out, 8);
        aadLen = 8;
      }
      uint8_t* body = out + 8 + kIv;
      memmove(body, src.Data() + off, size_t(len));
      esp::WriteTrailer(body, uint32_t(len), pad, nhs[i]);
      int n = 0, f = 0;
      if (EVP_EncryptInit_ex(ctx_, nullptr, nullptr, nullptr, nonce) != 1 ||
          EVP_EncryptUpdate(ctx_, nullptr, &n, aad, aadLen) != 1 || EVP_EncryptUpdate(ctx_, body, &n, body, int(plain)) != 1 ||
          EVP_EncryptFinal_ex(ctx_, body + n, &f) != 1 ||
          EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_GCM_GET_TAG, kIcv, body + plain) != 1)
        throw Napi::Error::New(env, "AES-GCM seal failed");
      dstLens[dstIndex + i] = int32_t(total);
    }
    return Napi::Number::New(env, count);
  }

  Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!ctx_ || encrypt_) throw GcmArgError(env, "not a decrypting context");
    auto [src, srcOffs, srcLens, seqHis, count, dst, dstOffs, dstLens, nhs, dstSlot] = esp::ParseOpen(info);
    for (uint32_t i = 0; i < count; i++) {
      int32_t off = srcOffs[i], len = srcLens[i];
      if (off < 0 || len < 0 || size_t(off) + size_t(len) > src.Length()) throw GcmArgError(env, "packet outside src");
      const uint8_t* in = src.Data() + off;
      int32_t ct = len - 8 - kIv - kIcv;
      int32_t doff = dstOffs[i];
      if (ct < 4 || ct % 4 != 0 || uint32_t(ct) > dstSlot || doff < 0 || size_t(doff) + size_t(ct) > dst.Length()) {
        dstLens[i] = esp::kOpenMalformed;
        continue;
      }
      uint8_t nonce[12];
      Nonce(nonce, in + 8);
      uint8_t aad[12];
      int aadLen;
      if (esn_) {
        memcpy(aad, in, 4);
        Put32(aad + 4, seqHis[i]);
        memcpy(aad + 8, in + 4, 4);
        aadLen = 12;
      } else {
        memcpy(aad, in, 8);
        aadLen = 8;
      }
      uint8_t* out = dst.Data() + doff;
      uint8_t tag[kIcv];
      memcpy(tag, in + len - kIcv, kIcv);
      int n = 0, f = 0;
      if (EVP_DecryptInit_ex(ctx_, nullptr, nullptr, nullptr, nonce) != 1 ||
          EVP_DecryptUpdate(ctx_, nullptr, &n, aad, aadLen) != 1 ||
          EVP_DecryptUpdate(ctx_, out, &n, in + 8 + kIv, ct) != 1 ||
          EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_GCM_SET_TAG, kIcv, tag) != 1 || EVP_DecryptFinal_ex(ctx_, out + n, &f) != 1) {
        dstLens[i] = esp::kOpenIntegrity;
        continue;
      }
      uint8_t nh = 0;
      dstLens[i] = esp::ReadTrailer(out, ct, nh);
      if (dstLens[i] >= 0) nhs[i] = nh;
    }
    return Napi::Number::New(env, count);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    if (ctx_) EVP_CIPHER_CTX_free(ctx_);
    ctx_ = nullptr;
    return info.Env().Undefined();
  }

  EVP_CIPHER_CTX* ctx_ = nullptr;
  uint8_t salt_[4];
  bool esn_ = false;
  bool encrypt_ = false;
};

}  // namespace

Napi::Function InitEspGcm(Napi::Env env) { return EspGcm::Init(env); }
