#!/usr/bin/env bash
# Copies what the GPU checks' build (tests/gpu) needs besides the CUDA toolkit, CMake and a C++
# compiler into third_party/gpu_kit/ (ignored by git), so that it can travel with the working
# tree to a GPU machine that has nothing else installed (docs/cuda.md, "On a GPU"):
#   include/absl, lib/libabsl_*.a   Abseil's headers and static libraries (the model's statuses
#                                   and strings), from this machine's libabsl-dev
#   include/nlohmann                nlohmann/json (header-only; checkpoint configs, reports)
# The cuDNN frontend's headers are already under third_party/cudnn_frontend (scripts/setup.sh).
#   scripts/gpu_kit.sh [destination]     (default: third_party/gpu_kit)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/third_party/gpu_kit}

multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
absl_include=/usr/include/absl
nlohmann_include=/usr/include/nlohmann
absl_lib=/usr/lib/$multiarch
for need in "$absl_include/status/status.h" "$nlohmann_include/json.hpp" \
  "$absl_lib/libabsl_status.a"; do
  if [ ! -e "$need" ]; then
    echo "scripts/gpu_kit.sh: $need is missing (scripts/setup.sh installs libabsl-dev and" \
      "nlohmann-json3-dev)" >&2
    exit 1
  fi
done

rm -rf "$dest.tmp"
mkdir -p "$dest.tmp/include" "$dest.tmp/lib"
cp -r "$absl_include" "$nlohmann_include" "$dest.tmp/include/"
cp "$absl_lib"/libabsl_*.a "$dest.tmp/lib/"
absl_version=$(dpkg-query -W -f='${Version}' libabsl-dev 2>/dev/null || echo unknown)
echo "abseil $absl_version from $(. /etc/os-release && echo "$PRETTY_NAME")" >"$dest.tmp/VERSION"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "scripts/gpu_kit.sh: $(du -sh "$dest" | cut -f1) in $dest ($(ls "$dest/lib" | wc -l) libraries)"
