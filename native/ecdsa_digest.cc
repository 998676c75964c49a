// ECDSA over a hash that is already computed: IKEv1 signs HASH_I / HASH_R themselves (RFC 2409
// §5.1; RFC 4754 for ECDSA, signature r‖s), and node:crypto can only sign a message it hashes
// itself. These two calls hand the digest to the node binary's own OpenSSL (EVP_PKEY_sign /
// EVP_PKEY_verify without a message digest); keys arrive as DER (PKCS#8 private, SPKI public).
//
//   ecdsaSignDigest(pkcs8Der, digest) -> Buffer r‖s (each the curve's field width)
//   ecdsaVerifyDigest(spkiDer, digest, rs) -> boolean

#include <napi.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <vector>

namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct CtxFree {
  void operator()(EVP_PKEY_CTX* c) const { EVP_PKEY_CTX_free(c); }
};
struct SigFree {
  void operator()(ECDSA_SIG* s) const { ECDSA_SIG_free(s); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using Ctx = std::unique_ptr<EVP_PKEY_CTX, CtxFree>;
using Sig = std::unique_ptr<ECDSA_SIG, SigFree>;

Napi::Buffer<uint8_t> BufferAt(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsBuffer()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a Buffer");
  return info[i].As<Napi::Buffer<uint8_t>>();
}

int FieldBytes(const EVP_PKEY* key) { return (EVP_PKEY_get_bits(key) + 7) / 8; }

Napi::Value EcdsaSignDigest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto der = BufferAt(info, 0, "key");
  auto digest = BufferAt(info, 1, "digest");
  const unsigned char* p = der.Data();
  Pkey key(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(der.Length())));
  if (!key || EVP_PKEY_get_base_id(key.get()) != EVP_PKEY_EC) throw Napi::Error::New(env, "not an EC private key");
  Ctx ctx(EVP_PKEY_CTX_new(key.get(), nullptr));
  size_t len = 0;
  if (!ctx || EVP_PKEY_sign_init(ctx.get()) != 1 ||
      EVP_PKEY_sign(ctx.get(), nullptr, &len, digest.Data(), digest.Length()) != 1)
    throw Napi::Error::New(env, "ECDSA sign init failed");
  std::vector<unsigned char> sigDer(len);
  if (EVP_PKEY_sign(ctx.get(), sigDer.data(), &len, digest.Data(), digest.Length()) != 1)
    throw Napi::Error::New(env, "ECDSA sign failed");
  const unsigned char* q = sigDer.data();
  Sig sig(d2i_ECDSA_SIG(nullptr, &q, static_cast<long>(len)));
  if (!sig) throw Napi::Error::New(env, "ECDSA signature does not decode");
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(sig.get(), &r, &s);
  const int width = FieldBytes(key.get());
  auto out = Napi::Buffer<uint8_t>::New(env, static_cast<size_t>(width) * 2);
  if (BN_bn2binpad(r, out.Data(), width) != width || BN_bn2binpad(s, out.Data() + width, width) != width)
    throw Napi::Error::New(env, "ECDSA signature wider than the curve");
  return out;
}

Napi::Value EcdsaVerifyDigest(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto der = BufferAt(info, 0, "key");
  auto digest = BufferAt(info, 1, "digest");
  auto rs = BufferAt(info, 2, "signature");
  const unsigned char* p = der.Data();
  Pkey key(d2i_PUBKEY(nullptr, &p, static_cast<long>(der.Length())));
  if (!key || EVP_PKEY_get_base_id(key.get()) != EVP_PKEY_EC) throw Napi::Error::New(env, "not an EC public key");
  const size_t width = static_cast<size_t>(FieldBytes(key.get()));
  if (rs.Length() != width * 2) return Napi::Boolean::New(env, false);
  Sig sig(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(rs.Data(), static_cast<int>(width), nullptr);
  BIGNUM* s = BN_bin2bn(rs.Data() + width, static_cast<int>(width), nullptr);
  if (!sig || !r || !s || ECDSA_SIG_set0(sig.get(), r, s) != 1) {
    BN_free(r);
    BN_free(s);
    throw Napi::Error::New(env, "out of memory");
  }
  unsigned char* sigDer = nullptr;
  const int derLen = i2d_ECDSA_SIG(sig.get(), &sigDer);
  if (derLen <= 0) throw Napi::Error::New(env, "ECDSA signature does not encode");
  Ctx ctx(EVP_PKEY_CTX_new(key.get(), nullptr));
  const bool ok = ctx && EVP_PKEY_verify_init(ctx.get()) == 1 &&
                  EVP_PKEY_verify(ctx.get(), sigDer, static_cast<size_t>(derLen), digest.Data(), digest.Length()) == 1;
  OPENSSL_free(sigDer);
  return Napi::Boolean::New(env, ok);
}

}  // namespace

void InitEcdsaDigest(Napi::Env env, Napi::Object exports) {
  exports.Set("ecdsaSignDigest", Napi::Function::New(env, EcdsaSignDigest));
  exports.Set("ecdsaVerifyDigest", Napi::Function::New(env, EcdsaVerifyDigest));
}
