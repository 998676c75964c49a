// GSS-API (MIT krb5's libgssapi_krb5) for Kerberos authentication in IKE: the security context
// exchange (AP-REQ / AP-REP tokens), per-message integrity (MIC) that binds the context to the IKE
// exchange, and the authenticated names. Node has no Kerberos API; the `kerberos` npm package has no
// MIC and picks credentials only from process-wide environment variables, so this small target.
//
//   new GssContext({ initiate: true, target: "host@bob.corp.example", ccache?, clientKeytab? })
//   new GssContext({ initiate: false, keytab? })
//   ctx.step(tokenOrNull, callback(err, { token, complete }))   on the libuv pool: it may ask the KDC
//   ctx.getMic(message) -> Buffer             ctx.verifyMic(message, mic) -> boolean
//   ctx.names() -> { source, target }          ctx.close()
//
// Credentials come from a credential store (gss_acquire_cred_from): an explicit ccache and client
// keytab for the initiator, a keytab for the acceptor; absent keys fall back to krb5.conf and the
// KRB5_* environment, as every Linux Kerberos tool does. Errors carry GSS major/minor status and
// the library's own text (e.g. "Clock skew too great").

#include <napi.h>
#include <gssapi/gssapi.h>
#include <gssapi/gssapi_ext.h>
#include <gssapi/gssapi_krb5.h>
#include <krb5/krb5.h>

#include <mutex>
#include <string>
#include <vector>

namespace {

gss_OID_desc kKrb5Mech = {9, const_cast<char*>("\x2a\x86\x48\x86\xf7\x12\x01\x02\x02")};

std::string StatusText(OM_uint32 code, int type, gss_OID mech) {
  std::string out;
  OM_uint32 ctx = 0;
  do {
    OM_uint32 minor = 0;
    gss_buffer_desc msg = GSS_C_EMPTY_BUFFER;
    if (gss_display_status(&minor, code, type, mech, &ctx, &msg) != GSS_S_COMPLETE) break;
    if (!out.empty()) out += "; ";
    out.append(static_cast<const char*>(msg.value), msg.length);
    gss_release_buffer(&minor, &msg);
  } while (ctx != 0);
  return out;
}

struct GssFailure {
  OM_uint32 major = 0;
  OM_uint32 minor = 0;
  std::string where;
  std::string text;
};

GssFailure Failure(const char* where, OM_uint32 major, OM_uint32 minor) {
  GssFailure f;
  f.major = major;
  f.minor = minor;
  f.where = where;
  std::string m = StatusText(minor, GSS_C_MECH_CODE, &kKrb5Mech);
  std::string g = StatusText(major, GSS_C_GSS_CODE, GSS_C_NO_OID);
  f.text = m.empty() || m == "Unknown error" ? g : m;
  return f;
}

Napi::Error ToError(Napi::Env env, const GssFailure& f) {
  Napi::Error e = Napi::Error::New(env, f.where + ": " + f.text);
  e.Set("code", Napi::String::New(env, "ERR_GSSAPI"));
  e.Set("major", Napi::Number::New(env, f.major));
  // krb5 error codes are negative int32 (com_err tables); keep the sign as krb5 prints them.
  e.Set("minor", Napi::Number::New(env, static_cast<int32_t>(f.minor)));
  e.Set("gssText", Napi::String::New(env, f.text));
  return e;
}

std::string NameText(gss_name_t name) {
  if (name == GSS_C_NO_NAME) return "";
  OM_uint32 minor = 0;
  gss_buffer_desc buf = GSS_C_EMPTY_BUFFER;
  if (gss_display_name(&minor, name, &buf, nullptr) != GSS_S_COMPLETE) return "";
  std::string s(static_cast<const char*>(buf.value), buf.length);
  gss_release_buffer(&minor, &buf);
  return s;
}

class GssContext : public Napi::ObjectWrap<GssContext> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "GssContext",
                       {InstanceMethod("step", &GssContext::Step), InstanceMethod("getMic", &GssContext::GetMic),
                        InstanceMethod("verifyMic", &GssContext::VerifyMic), InstanceMethod("names", &GssContext::Names),
                        InstanceMethod("sessionKey", &GssContext::SessionKey),
                        InstanceMethod("close", &GssContext::Close)});
  }

  explicit GssContext(const Napi::CallbackInfo& info) : Napi::ObjectWrap<GssContext>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "options must be an object");
    Napi::Object o = info[0].As<Napi::Object>();
    initiate_ = o.Get("initiate").ToBoolean().Value();
    auto str = [&](const char* key) -> std::string {
      Napi::Value v = o.Get(key);
      if (v.IsUndefined() || v.IsNull()) return "";
      if (!v.IsString()) throw Napi::TypeError::New(env, std::string(key) + " must be a string");
      return v.As<Napi::String>().Utf8Value();
    };
    target_ = str("target");
    ccache_ = str("ccache");
    clientKeytab_ = str("clientKeytab");
    keytab_ = str("keytab");
    principal_ = str("principal");
    if (initiate_ && target_.empty()) throw Napi::TypeError::New(env, "an initiator needs a target (service@host)");
  }

  ~GssContext() override { Release(); }

  // Runs on the pool: acquires credentials on first use, then one context step.
  bool DoStep(const std::vector<uint8_t>& in, bool hasIn, std::vector<uint8_t>* out, bool* complete, GssFailure* f) {
    std::lock_guard<std::mutex> lock(mu_);
    OM_uint32 minor = 0;
    OM_uint32 major;
    if (closed_) {
      *f = GssFailure{0, 0, "step", "the security context is closed"};
      return false;
    }
    if (cred_ == GSS_C_NO_CREDENTIAL && !AcquireCred(f)) return false;
    gss_buffer_desc inBuf = {in.size(), const_cast<uint8_t*>(in.data())};
    gss_buffer_desc outBuf = GSS_C_EMPTY_BUFFER;
    if (initiate_) {
      if (targetName_ == GSS_C_NO_NAME) {
        gss_buffer_desc t = {target_.size(), const_cast<char*>(target_.data())};
        gss_OID type = target_.find('@') != std::string::npos && target_.find('/') != std::string::npos
                           ? GSS_KRB5_NT_PRINCIPAL_NAME
                           : GSS_C_NT_HOSTBASED_SERVICE;
        major = gss_import_name(&minor, &t, type, &targetName_);
        if (GSS_ERROR(major)) {
          *f = Failure("gss_import_name", major, minor);
          return false;
        }
      }
      major = gss_init_sec_context(&minor, cred_, &ctx_, targetName_, &kKrb5Mech,
                                   GSS_C_MUTUAL_FLAG | GSS_C_INTEG_FLAG, 0, GSS_C_NO_CHANNEL_BINDINGS,
                                   hasIn ? &inBuf : GSS_C_NO_BUFFER, nullptr, &outBuf, nullptr, nullptr);
      if (GSS_ERROR(major)) {
        *f = Failure("gss_init_sec_context", major, minor);
        return false;
      }
    } else {
      major = gss_accept_sec_context(&minor, &ctx_, cred_, &inBuf, GSS_C_NO_CHANNEL_BINDINGS, &sourceName_, nullptr,
                                     &outBuf, nullptr, nullptr, nullptr);
      if (GSS_ERROR(major)) {
        *f = Failure("gss_accept_sec_context", major, minor);
        return false;
      }
    }
    const uint8_t* p = static_cast<const uint8_t*>(outBuf.value);
    out->assign(p, p + outBuf.length);
    gss_release_buffer(&minor, &outBuf);
    *complete = !(major & GSS_S_CONTINUE_NEEDED);
    return true;
  }

 private:
  bool AcquireCred(GssFailure* f) {
    std::vector<gss_key_value_element_desc> els;
    if (initiate_) {
      if (!ccache_.empty()) els.push_back({"ccache", ccache_.c_str()});
      if (!clientKeytab_.empty()) els.push_back({"client_keytab", clientKeytab_.c_str()});
    } else if (!keytab_.empty()) {
      els.push_back({"keytab", keytab_.c_str()});
    }
    gss_key_value_set_desc store = {static_cast<OM_uint32>(els.size()), els.data()};
    OM_uint32 minor = 0;
    gss_name_t desired = GSS_C_NO_NAME;
    if (!principal_.empty()) {
      gss_buffer_desc n = {principal_.size(), const_cast<char*>(principal_.data())};
      OM_uint32 major = gss_import_name(&minor, &n, GSS_KRB5_NT_PRINCIPAL_NAME, &desired);
      if (GSS_ERROR(major)) {
        *f = Failure("gss_import_name", major, minor);
        return false;
      }
    }
    gss_OID_set_desc mechs = {1, &kKrb5Mech};
    OM_uint32 major = gss_acquire_cred_from(&minor, desired, GSS_C_INDEFINITE, &mechs,
                                            initiate_ ? GSS_C_INITIATE : GSS_C_ACCEPT, &store, &cred_, nullptr,
                                            nullptr);
    if (desired != GSS_C_NO_NAME) gss_release_name(&minor, &desired);
    if (GSS_ERROR(major)) {
      *f = Failure("gss_acquire_cred", major, minor);
      // With a client keytab MIT asks the KDC for a TGT here and keeps no minor status when that
      // fails; the same AS exchange once more says why (KDC unreachable, key out of date, …).
      if (initiate_ && !clientKeytab_.empty() && minor == 0) DiagnoseInitialCreds(f);
      return false;
    }
    return true;
  }

  void DiagnoseInitialCreds(GssFailure* f) {
    krb5_context k = nullptr;
    if (krb5_init_context(&k) != 0) return;
    krb5_keytab kt = nullptr;
    krb5_principal p = nullptr;
    krb5_error_code code = krb5_kt_resolve(k, clientKeytab_.c_str(), &kt);
    if (code == 0) {
      if (!principal_.empty()) {
        code = krb5_parse_name(k, principal_.c_str(), &p);
      } else {
        krb5_kt_cursor cur;
        krb5_keytab_entry e;
        code = krb5_kt_start_seq_get(k, kt, &cur);
        if (code == 0) {
          code = krb5_kt_next_entry(k, kt, &e, &cur);
          if (code == 0) {
            code = krb5_copy_principal(k, e.principal, &p);
            krb5_free_keytab_entry_contents(k, &e);
          }
          krb5_kt_end_seq_get(k, kt, &cur);
        }
      }
    }
    if (code == 0) {
      krb5_creds creds;
      code = krb5_get_init_creds_keytab(k, &creds, p, kt, 0, nullptr, nullptr);
      if (code == 0) krb5_free_cred_contents(k, &creds);
    }
    if (code != 0) {
      const char* msg = krb5_get_error_message(k, code);
      f->minor = static_cast<OM_uint32>(code);
      f->text = msg;
      krb5_free_error_message(k, msg);
    }
    if (p) krb5_free_principal(k, p);
    if (kt) krb5_kt_close(k, kt);
    krb5_free_context(k);
  }

  Napi::Value Step(const Napi::CallbackInfo& info);

  Napi::Value GetMic(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsBuffer()) throw Napi::TypeError::New(env, "message must be a Buffer");
    auto msg = info[0].As<Napi::Buffer<uint8_t>>();
    std::lock_guard<std::mutex> lock(mu_);
    if (ctx_ == GSS_C_NO_CONTEXT) throw Napi::Error::New(env, "no established security context");
    gss_buffer_desc in = {msg.Length(), msg.Data()};
    gss_buffer_desc mic = GSS_C_EMPTY_BUFFER;
    OM_uint32 minor = 0;
    OM_uint32 major = gss_get_mic(&minor, ctx_, GSS_C_QOP_DEFAULT, &in, &mic);
    if (GSS_ERROR(major)) throw ToError(env, Failure("gss_get_mic", major, minor));
    auto out = Napi::Buffer<uint8_t>::Copy(env, static_cast<const uint8_t*>(mic.value), mic.length);
    gss_release_buffer(&minor, &mic);
    return out;
  }

  Napi::Value VerifyMic(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsBuffer() || !info[1].IsBuffer())
      throw Napi::TypeError::New(env, "message and MIC must be Buffers");
    auto msg = info[0].As<Napi::Buffer<uint8_t>>();
    auto mic = info[1].As<Napi::Buffer<uint8_t>>();
    std::lock_guard<std::mutex> lock(mu_);
    if (ctx_ == GSS_C_NO_CONTEXT) throw Napi::Error::New(env, "no established security context");
    gss_buffer_desc m = {msg.Length(), msg.Data()};
    gss_buffer_desc t = {mic.Length(), mic.Data()};
    OM_uint32 minor = 0;
    OM_uint32 major = gss_verify_mic(&minor, ctx_, &m, &t, nullptr);
    return Napi::Boolean::New(env, major == GSS_S_COMPLETE);
  }

  Napi::Value Names(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::lock_guard<std::mutex> lock(mu_);
    Napi::Object o = Napi::Object::New(env);
    if (ctx_ == GSS_C_NO_CONTEXT) return o;
    gss_name_t src = GSS_C_NO_NAME, dst = GSS_C_NO_NAME;
    OM_uint32 minor = 0;
    if (gss_inquire_context(&minor, ctx_, &src, &dst, nullptr, nullptr, nullptr, nullptr, nullptr) == GSS_S_COMPLETE) {
      o.Set("source", NameText(src));
      o.Set("target", NameText(dst));
    }
    if (src != GSS_C_NO_NAME) gss_release_name(&minor, &src);
    if (dst != GSS_C_NO_NAME) gss_release_name(&minor, &dst);
    return o;
  }

  // The context's session key as SSPI exposes it (MIT: GSS_C_INQ_SSPI_SESSION_KEY): the acceptor
  // subkey when one was negotiated, else the ticket's session key. AuthIP keys its SA from it.
  Napi::Value SessionKey(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    std::lock_guard<std::mutex> lock(mu_);
    if (ctx_ == GSS_C_NO_CONTEXT) throw Napi::Error::New(env, "no established security context");
    gss_buffer_set_t set = GSS_C_NO_BUFFER_SET;
    OM_uint32 minor = 0;
    OM_uint32 major = gss_inquire_sec_context_by_oid(&minor, ctx_, GSS_C_INQ_SSPI_SESSION_KEY, &set);
    if (GSS_ERROR(major)) throw ToError(env, Failure("gss_inquire_sec_context_by_oid", major, minor));
    if (set == GSS_C_NO_BUFFER_SET || set->count < 1) {
      gss_release_buffer_set(&minor, &set);
      throw Napi::Error::New(env, "the mechanism gave no session key");
    }
    auto out = Napi::Buffer<uint8_t>::Copy(env, static_cast<const uint8_t*>(set->elements[0].value),
                                           set->elements[0].length);
    gss_release_buffer_set(&minor, &set);
    return out;
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    std::lock_guard<std::mutex> lock(mu_);
    Release();
    closed_ = true;
    return info.Env().Undefined();
  }

  void Release() {
    OM_uint32 minor = 0;
    if (ctx_ != GSS_C_NO_CONTEXT) gss_delete_sec_context(&minor, &ctx_, GSS_C_NO_BUFFER);
    if (cred_ != GSS_C_NO_CREDENTIAL) gss_release_cred(&minor, &cred_);
    if (targetName_ != GSS_C_NO_NAME) gss_release_name(&minor, &targetName_);
    if (sourceName_ != GSS_C_NO_NAME) gss_release_name(&minor, &sourceName_);
  }

  bool initiate_ = false;
  bool closed_ = false;
  std::string target_, ccache_, clientKeytab_, keytab_, principal_;
  gss_cred_id_t cred_ = GSS_C_NO_CREDENTIAL;
  gss_ctx_id_t ctx_ = GSS_C_NO_CONTEXT;
  gss_name_t targetName_ = GSS_C_NO_NAME;
  gss_name_t sourceName_ = GSS_C_NO_NAME;
  std::mutex mu_;
};

class StepWorker : public Napi::AsyncWorker {
 public:
  StepWorker(Napi::Function cb, GssContext* ctx, Napi::Object self, std::vector<uint8_t> in, bool hasIn)
      : Napi::AsyncWorker(cb), ctx_(ctx), in_(std::move(in)), hasIn_(hasIn) {
    self_.Reset(self, 1);  // keeps the context alive while the step runs
  }
  void Execute() override {
    if (!ctx_->DoStep(in_, hasIn_, &out_, &complete_, &failure_)) SetError(failure_.text);
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object r = Napi::Object::New(env);
    r.Set("token", Napi::Buffer<uint8_t>::Copy(env, out_.data(), out_.size()));
    r.Set("complete", Napi::Boolean::New(env, complete_));
    Callback().Call({env.Null(), r});
  }
  void OnError(const Napi::Error&) override {
    Napi::Env env = Env();
    Callback().Call({ToError(env, failure_).Value()});
  }

 private:
  GssContext* ctx_;
  Napi::ObjectReference self_;
  std::vector<uint8_t> in_, out_;
  bool hasIn_;
  bool complete_ = false;
  GssFailure failure_;
};

Napi::Value GssContext::Step(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[1].IsFunction()) throw Napi::TypeError::New(env, "step(token, callback)");
  std::vector<uint8_t> in;
  bool hasIn = false;
  if (info[0].IsBuffer()) {
    auto b = info[0].As<Napi::Buffer<uint8_t>>();
    in.assign(b.Data(), b.Data() + b.Length());
    hasIn = true;
  } else if (!info[0].IsNull() && !info[0].IsUndefined()) {
    throw Napi::TypeError::New(env, "token must be a Buffer or null");
  }
  if (!initiate_ && !hasIn) throw Napi::TypeError::New(env, "an acceptor steps with the initiator's token");
  (new StepWorker(info[1].As<Napi::Function>(), this, info.This().As<Napi::Object>(), std::move(in), hasIn))->Queue();
  return env.Undefined();
}

}  // namespace

// The principals of a keytab (default: the one krb5.conf / KRB5_KTNAME names), in keytab order:
// an acceptor announces the first one as its SPN (AuthIP's GSS_ID payload).
Napi::Value KeytabPrincipals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  if (info.Length() > 0 && info[0].IsString()) name = info[0].As<Napi::String>().Utf8Value();
  krb5_context k = nullptr;
  if (krb5_init_context(&k) != 0) throw Napi::Error::New(env, "krb5_init_context failed");
  krb5_keytab kt = nullptr;
  krb5_error_code code = name.empty() ? krb5_kt_default(k, &kt) : krb5_kt_resolve(k, name.c_str(), &kt);
  std::vector<std::string> out;
  krb5_kt_cursor cur;
  if (code == 0) code = krb5_kt_start_seq_get(k, kt, &cur);
  if (code == 0) {
    krb5_keytab_entry e;
    while (krb5_kt_next_entry(k, kt, &e, &cur) == 0) {
      char* text = nullptr;
      if (krb5_unparse_name(k, e.principal, &text) == 0) {
        std::string p(text);
        krb5_free_unparsed_name(k, text);
        bool seen = false;
        for (const auto& x : out) seen = seen || x == p;
        if (!seen) out.push_back(p);
      }
      krb5_free_keytab_entry_contents(k, &e);
    }
    krb5_kt_end_seq_get(k, kt, &cur);
  }
  std::string err;
  if (code != 0) {
    const char* msg = krb5_get_error_message(k, code);
    err = msg;
    krb5_free_error_message(k, msg);
  }
  if (kt) krb5_kt_close(k, kt);
  krb5_free_context(k);
  if (code != 0) {
    GssFailure f{0, static_cast<OM_uint32>(code), "keytab", err};
    throw ToError(env, f);
  }
  Napi::Array arr = Napi::Array::New(env, out.size());
  for (size_t i = 0; i < out.size(); i++) arr.Set(i, out[i]);
  return arr;
}

Napi::Object InitGss(Napi::Env env, Napi::Object exports) {
  exports.Set("GssContext", GssContext::Init(env));
  exports.Set("keytabPrincipals", Napi::Function::New(env, KeytabPrincipals));
  return exports;
}

NODE_API_MODULE(consec_gss, InitGss)
