#!/usr/bin/env bash
# Installs the Debian 12 packages that building and testing qtrain need. Idempotent: it does
# nothing when every package is already installed, so `make` can call it on every run.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git python3
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  prometheus-cpp-dev
  libgtest-dev libgmock-dev libbenchmark-dev openssl
  libsqlite3-dev libopenblas-dev libgloo-dev libutf8proc-dev
  nlohmann-json3-dev libyaml-cpp-dev libcli11-dev
  clang libclang-rt-14-dev libomp-14-dev
)
# Extra packages some targets want; absent ones only disable those targets.
optional=(fortunes fortunes-zh)

missing=()
for p in "${packages[@]}" "${optional[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
