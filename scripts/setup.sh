#!/usr/bin/env bash
# Installs what consec's demo and tests need, only what is missing; safe to run again.
# Sourced by scripts/demo.sh and scripts/test.sh. Debian 12, as root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: the lab creates network namespaces and TUN devices (try: sudo $0)"
command -v node >/dev/null || die "Node.js 20 or later is needed (Debian: apt-get install nodejs npm)"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js $(node --version) is too old: 20 or later is needed"
[ -e /dev/net/tun ] || die "/dev/net/tun is missing: the kernel needs CONFIG_TUN"

# Debian packages: lab tooling, strongSwan peer with its userspace data plane, capture, the lab PKI
# (openssl), the data plane benchmark (iperf3; wireguard-go and wireguard-tools to compare with), kernel-IPsec peers as User-Mode Linux guests
# (user-mode-linux, debootstrap, e2fsprogs; images are built on first use and cached), the lab's
# domain controller and Kerberos for the addon's GSS-API target (MIT krb5), its DNS server (dnsmasq),
# the fleet's policy cluster (etcd), addon build.
APT_PACKAGES=(
  iproute2 nftables iputils-ping procps tshark openssl iperf3 wireguard-go wireguard-tools
  strongswan-charon strongswan-swanctl libstrongswan-standard-plugins
  libstrongswan-extra-plugins libcharon-extra-plugins
  user-mode-linux debootstrap e2fsprogs
  krb5-kdc krb5-admin-server krb5-user libkrb5-dev dnsmasq-base etcd-server etcd-client
  python3 make g++
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
  echo 'iperf3 iperf3/start_daemon boolean false' | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Node dependencies (npm ci also builds the native addon: the root package's node-gyp rebuild).
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ ! -f build/Release/consec_io.node ] || [ ! -f build/Release/consec_gss.node ] ||
  [ -n "$(find native binding.gyp -newer build/Release/consec_io.node -print -quit)" ]; then
  log "building the native addon"
  npx --no-install node-gyp rebuild --loglevel=error >/dev/null
fi
if [ ! -f dist/cli/main.js ] || [ -n "$(find src tsconfig.json tsconfig.build.json -newer dist/cli/main.js -print -quit)" ]; then
  log "compiling TypeScript to dist/"
  npx --no-install tsc -p tsconfig.build.json
  chmod +x dist/cli/main.js
fi
log "ready"
