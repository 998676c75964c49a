{
  "targets": [
    {
      "target_name": "consec_io",
      "sources": ["native/consec_io.cc", "native/esp_gcm.cc", "native/esp_cbc.cc", "native/netlink.cc", "native/ecdsa_digest.cc", "native/tun_offload.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]
    },
    {
      "target_name": "consec_gss",
      "conditions": [
        ["'<!(test -e /usr/include/gssapi/gssapi_ext.h && echo yes || echo no)'=='no'", { "type": "none", "sources!": ["native/gss.cc"] }]
      ],
      "sources": ["native/gss.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "libraries": ["-lgssapi_krb5", "-lkrb5"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"]
    }
  ]
}
