// Batched ESP AES-CBC with HMAC-SHA1-96 / HMAC-SHA2-256-128 / -384-192 / -512-256 (RFC 4303,
// RFC 3602, RFC 2404, RFC 4868), with the OpenSSL EVP and EVP_MAC functions the node binary itself
// exports (resolved at dlopen, as in esp_gcm.cc). One EspCbc object per SA and direction keeps the
// AES key schedule and the HMAC context with its key; each packet sets a fresh IV and resets the
// MAC. Encrypt-then-MAC: open checks the ICV before it decrypts.
//
//   new EspCbc(encKey, integKey, digest, icvLength, esn, encrypt)
//   seal(src, srcOffs, srcLens, nextHeaders, count, dst, dstOffs, dstLens, dstIndex, spi, seqLo, seqHi) -> count
//   open(src, srcOffs, srcLens, seqHis, count, dst, dstOffs, dstLens, nextHeaders) -> count
//       dstLens[i] = payload length, or -1 integrity, -2 malformed, -3 padding
//
// The IVs are random (RFC 3602 §3: unpredictable), one RAND_bytes call per batch.

#include <napi.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "esp_args.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

using esp::BufferArg;
using esp::NumArg;
using esp::Put32;
const auto CbcArgError = esp::ArgError;

constexpr int kIv = 16;
constexpr int kBlock = 16;

class EspCbc : public Napi::ObjectWrap<EspCbc> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "EspCbc",
                       {InstanceMethod("seal", &EspCbc::Seal), InstanceMethod("open", &EspCbc::Open),
                        InstanceMethod("close", &EspCbc::Close)});
  }

  explicit EspCbc(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EspCbc>(info) {
    Napi::Env env = info.Env();
    auto key = BufferArg(info, 0, "encryption key must be a Buffer");
    auto integ = BufferArg(info, 1, "integrity key must be a Buffer");
    if (info.Length() <= 2 || !info[2].IsString()) throw CbcArgError(env, "digest must be a string");
    std::string digest = info[2].As<Napi::String>().Utf8Value();
    if (digest != "sha1" && digest != "sha256" && digest != "sha384" && digest != "sha512")
      throw CbcArgError(env, "digest must be sha1, sha256, sha384 or sha512");
    icv_ = NumArg(info, 3, "icvLength must be a number");
    if (icv_ < 12 || icv_ > 32) throw CbcArgError(env, "icvLength must be 12 to 32");
    esn_ = info.Length() > 4 && info[4].ToBoolean().Value();
    encrypt_ = info.Length() > 5 && info[5].ToBoolean().Value();
    const EVP_CIPHER* cipher = key.Length() == 16   ? EVP_aes_128_cbc()
                               : key.Length() == 24 ? EVP_aes_192_cbc()
                               : key.Length() == 32 ? EVP_aes_256_cbc()
                                                    : nullptr;
    if (!cipher) throw CbcArgError(env, "AES-CBC key must be 16, 24 or 32 bytes");
    ctx_ = EVP_CIPHER_CTX_new();
    if (!ctx_) throw Napi::Error::New(env, "EVP_CIPHER_CTX_new failed");
    int ok = encrypt_ ? EVP_EncryptInit_ex(ctx_, cipher, nullptr, key.Data(), nullptr)
                      : EVP_DecryptInit_ex(ctx_, cipher, nullptr, key.Data(), nullptr);
    if (ok != 1 || EVP_CIPHER_CTX_set_padding(ctx_, 0) != 1) throw Napi::Error::New(env, "EVP cipher init failed");
    mac_ = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    if (mac_) macCtx_ = EVP_MAC_CTX_new(mac_);
    if (!macCtx_) throw Napi::Error::New(env, "HMAC is not available");
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest.data(), 0),
                           OSSL_PARAM_construct_end()};
    if (EVP_MAC_init(macCtx_, integ.Data(), integ.Length(), params) != 1) throw Napi::Error::New(env, "HMAC init failed");
  }

  ~EspCbc() override { Free(); }

 private:
  void Free() {
    if (ctx_) EVP_CIPHER_CTX_free(ctx_);
    if (macCtx_) EVP_MAC_CTX_free(macCtx_);
    if (mac_) EVP_MAC_free(mac_);
    ctx_ = nullptr;
    macCtx_ = nullptr;
    mac_ = nullptr;
  }

  // HMAC over SPI | seq | IV | ciphertext [| seq high] (RFC 4303 §2.2.1), truncated to the ICV.
  bool Icv(const uint8_t* packet, size_t len, uint32_t seqHi, uint8_t* icv) {
    uint8_t full[EVP_MAX_MD_SIZE];
    size_t n = 0;
    if (EVP_MAC_init(macCtx_, nullptr, 0, nullptr) != 1 || EVP_MAC_update(macCtx_, packet, len) != 1) return false;
    if (esn_) {
      uint8_t hi[4];
      Put32(hi, seqHi);
      if (EVP_MAC_update(macCtx_, hi, 4) != 1) return false;
    }
    if (EVP_MAC_final(macCtx_, full, &n, sizeof full) != 1 || n < icv_) return false;
    memcpy(icv, full, icv_);
    return true;
  }

  Napi::Value Seal(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!ctx_ || !encrypt_) throw CbcArgError(env, "not an encrypting context");
    auto [src, srcOffs, srcLens, nhs, count, dst, dstOffs, dstLens, dstIndex, spi, seq, dstSlot] = esp::ParseSeal(info);
    ivs_.resize(size_t(count) * kIv);
    if (count > 0 && RAND_bytes(ivs_.data(), int(ivs_.size())) != 1) throw Napi::Error::New(env, "RAND_bytes failed");
    for (uint32_t i = 0; i < count; i++, seq++) {
      int32_t off = srcOffs[i], len = srcLens[i];
      if (off < 0 || len < 0 || size_t(off) + size_t(len) > src.Length()) throw CbcArgError(env, "packet outside src");
      uint32_t pad = (kBlock - ((uint32_t(len) + 2) % kBlock)) % kBlock;
      uint32_t plain = uint32_t(len) + pad + 2;
      uint32_t total = 8 + kIv + plain + icv_;
      int32_t doff = dstOffs[dstIndex + i];
      if (doff < 0 || total > dstSlot || size_t(doff) + total > dst.Length())
        throw CbcArgError(env, "ESP packet exceeds its dst slot");
      uint8_t* out = dst.Data() + doff;
      Put32(out, spi);
      Put32(out + 4, uint32_t(seq));
      uint8_t* iv = out + 8;
      memcpy(iv, ivs_.data() + size_t(i) * kIv, kIv);
      uint8_t* body = iv + kIv;
      memmove(body, src.Data() + off, size_t(len));
      esp::WriteTrailer(body, uint32_t(len), pad, nhs[i]);
      int n = 0;
      if (EVP_EncryptInit_ex(ctx_, nullptr, nullptr, nullptr, iv) != 1 ||
          EVP_EncryptUpdate(ctx_, body, &n, body, int(plain)) != 1 || uint32_t(n) != plain ||
          !Icv(out, 8 + kIv + plain, uint32_t(seq >> 32), body + plain))
        throw Napi::Error::New(env, "AES-CBC seal failed");
      dstLens[dstIndex + i] = int32_t(total);
    }
    return Napi::Number::New(env, count);
  }

  Napi::Value Open(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!ctx_ || encrypt_) throw CbcArgError(env, "not a decrypting context");
    auto [src, srcOffs, srcLens, seqHis, count, dst, dstOffs, dstLens, nhs, dstSlot] = esp::ParseOpen(info);
    for (uint32_t i = 0; i < count; i++) {
      int32_t off = srcOffs[i], len = srcLens[i];
      if (off < 0 || len < 0 || size_t(off) + size_t(len) > src.Length()) throw CbcArgError(env, "packet outside src");
      const uint8_t* in = src.Data() + off;
      int32_t ct = len - 8 - kIv - int32_t(icv_);
      int32_t doff = dstOffs[i];
      if (ct < kBlock || ct % kBlock != 0 || uint32_t(ct) > dstSlot || doff < 0 ||
          size_t(doff) + size_t(ct) > dst.Length()) {
        dstLens[i] = esp::kOpenMalformed;
        continue;
      }
      uint8_t icv[EVP_MAX_MD_SIZE];
      if (!Icv(in, size_t(len) - icv_, seqHis[i], icv) || CRYPTO_memcmp(icv, in + len - icv_, icv_) != 0) {
        dstLens[i] = esp::kOpenIntegrity;
        continue;
      }
      uint8_t* out = dst.Data() + doff;
      int n = 0;
      if (EVP_DecryptInit_ex(ctx_, nullptr, nullptr, nullptr, in + 8) != 1 ||
          EVP_DecryptUpdate(ctx_, out, &n, in + 8 + kIv, ct) != 1 || n != ct) {
        dstLens[i] = esp::kOpenMalformed;
        continue;
      }
      uint8_t nh = 0;
      dstLens[i] = esp::ReadTrailer(out, ct, nh);
      if (dstLens[i] >= 0) nhs[i] = nh;
    }
    return Napi::Number::New(env, count);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Free();
    return info.Env().Undefined();
  }

  EVP_CIPHER_CTX* ctx_ = nullptr;
  EVP_MAC* mac_ = nullptr;
  EVP_MAC_CTX* macCtx_ = nullptr;
  std::vector<uint8_t> ivs_;
  uint32_t icv_ = 16;
  bool esn_ = false;
  bool encrypt_ = false;
};

}  // namespace

Napi::Function InitEspCbc(Napi::Env env) { return EspCbc::Init(env); }
