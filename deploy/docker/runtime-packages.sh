#!/bin/sh
# Prints the Debian/Ubuntu packages that hold the shared libraries the given binaries link
# directly (their DT_NEEDED entries, resolved by ldd), one per line, sorted: what a runtime
# image must install for them. Needs readelf (binutils), ldd and dpkg. The GPU driver's
# libraries are left out: the node provides them. --without-cuda also leaves out the CUDA
# toolkit's libraries (cudart, cuBLAS, cuDNN, NVRTC, NCCL): for an image built with
# QTRAIN_CUDA=OFF, from binaries of a CUDA build.
set -eu
without_cuda=0
if [ "${1:-}" = "--without-cuda" ]; then
  without_cuda=1
  shift
fi
[ "$#" -gt 0 ] || { echo "usage: $0 [--without-cuda] BINARY..." >&2; exit 2; }

# The path of every library the binaries need, once each.
libraries() {
  for bin in "$@"; do
    [ -f "$bin" ] || { echo "$0: $bin: no such file" >&2; exit 1; }
    needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    resolved=$(ldd "$bin")
    for lib in $needed; do
      case "$lib" in
        libcuda.so*|libnvidia-ml.so*) continue ;;
        libcudart.so*|libcublas*.so*|libcudnn*.so*|libnvrtc*.so*|libnccl.so*)
          [ "$without_cuda" = 1 ] && continue ;;
      esac
      path=$(printf '%s\n' "$resolved" | awk -v l="$lib" '$1 == l && $2 == "=>" { print $3 }')
      case "$path" in
        /*) ;;
        *)
          # The dynamic loader (listed by its path), or a library ldd cannot find.
          path=$(printf '%s\n' "$resolved" | awk -v l="$lib" '$1 ~ ("/" l "$") { print $1 }')
          [ -n "$path" ] || { echo "$0: $bin needs $lib, which is not installed" >&2; exit 1; }
          ;;
      esac
      echo "$path"
    done
  done
}

# The package that installed each library.
owners() {
  for path in "$@"; do
    real=$(readlink -f "$path")
    # dpkg knows a file by the path its package installed (/lib or /usr/lib on merged /usr).
    owner=""
    for candidate in "$path" "$real" "/usr$real" "${real#/usr}" "/usr$path" "${path#/usr}"; do
      owner=$(dpkg -S "$candidate" 2>/dev/null | grep -v '^diversion' | head -n 1 | cut -d: -f1) || true
      [ -n "$owner" ] && break
    done
    [ -n "$owner" ] || { echo "$0: no package owns $real" >&2; exit 1; }
    echo "$owner"
  done
}

# Collected first, so that an error stops the script with its status.
paths=$(libraries "$@")
# shellcheck disable=SC2046 # library paths have no spaces
packages=$(owners $(printf '%s\n' "$paths" | sort -u))
printf '%s\n' "$packages" | sort -u
