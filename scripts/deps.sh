#!/usr/bin/env bash
# Installs what multisnap needs to build, test and demo, from Debian's
# packages. Idempotent: does nothing when everything is present.
set -euo pipefail
packages=(
  cmake ninja-build g++ pkg-config make
  libgtest-dev libgmock-dev libbenchmark-dev
  liburing-dev nlohmann-json3-dev libcli11-dev libfmt-dev libxxhash-dev libzstd-dev
  libnbd-dev libnbd-bin python3-libnbd nbdkit qemu-utils fio
  libgnutls28-dev gnutls-bin
  fuse3 e2fsprogs util-linux clang socat iproute2 openssh-server openssh-client
  scdoc dpkg-dev lintian man-db bash-completion curl
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
SUDO=
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${missing[@]}"
