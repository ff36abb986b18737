#!/usr/bin/env bash
# Installs the Debian 12 packages and the Python tools that building and testing qtrain need.
# Idempotent: it does nothing when everything is already installed, so `make` can call it on
# every run.
set -euo pipefail

# Python tools of the deployment checks (tests/deploy) and the CUDA build's check: pinned, from
# PyPI.
python_packages=(
  kubernetes-validate==1.37.0            # Kubernetes schemas, offline (--strict, -k 1.30.0)
  "grafana-foundation-sdk==1769699379!11.6.0"  # the Grafana 11 dashboard model
  cloudcoil-models-prometheus-operator==0.80.1.0  # the prometheus-operator CRD types
  jsonschema PyYAML
  numpy                                  # the float64 references of tests/parity (Debian's
                                         # python3-numpy serves only Debian's own python3)
  nvidia-cuda-cuobjdump==13.5.37         # cuobjdump, which some toolkit installs lack: the
                                         # check of the CUDA kernels' machine code (kernels/cuda)
)

packages=(
  build-essential cmake ninja-build pkg-config git python3
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  prometheus-cpp-dev
  libgtest-dev libgmock-dev libbenchmark-dev openssl python3-numpy
  libsqlite3-dev libopenblas-dev libgloo-dev libutf8proc-dev
  nlohmann-json3-dev libyaml-cpp-dev libcli11-dev
  clang libclang-rt-14-dev libomp-14-dev
  prometheus
)
# Extra packages some targets want; absent ones only disable those targets.
optional=(fortunes fortunes-zh)

missing=()
for p in "${packages[@]}" "${optional[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The Python tools: installed when `pip check`-style lookup finds a pin unmet.
python_missing=()
for spec in "${python_packages[@]}"; do
  python3 - "$spec" <<'PY' 2>/dev/null || python_missing+=("$spec")
import sys
from importlib.metadata import version, PackageNotFoundError
name, _, pin = sys.argv[1].partition("==")
try:
    installed = version(name)
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if not pin or installed == pin else 1)
PY
done
if [ ${#python_missing[@]} -gt 0 ]; then
  echo "setup: pip installing ${python_missing[*]}" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    "${python_missing[@]}"
fi

# The cuDNN frontend's C++ headers (header-only; the cuDNN attention graphs of kernels/cuda) from
# PyPI's wheel, into the ignored third_party/cudnn_frontend. Only where a CUDA toolkit is.
cudnn_frontend_version=1.32.0
cudnn_frontend_dir="$(cd "$(dirname "$0")/.." && pwd)/third_party/cudnn_frontend"
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  if [ "$(cat "$cudnn_frontend_dir/VERSION" 2>/dev/null)" != "$cudnn_frontend_version" ]; then
    echo "setup: fetching the cuDNN frontend $cudnn_frontend_version headers" >&2
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" \
      "nvidia-cudnn-frontend==$cudnn_frontend_version"
    python3 - "$tmp" "$cudnn_frontend_dir" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
shutil.rmtree(dest, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("include/"):
            z.extract(name, dest)
PY
    echo "$cudnn_frontend_version" > "$cudnn_frontend_dir/VERSION"
    rm -rf "$tmp"
  fi
fi

# kubectl (with its built-in kustomize) renders the manifests in tests/deploy; Debian 12 has no
# package of it, so it must come with the machine.
command -v kubectl >/dev/null || echo "setup: kubectl is not installed; the manifest checks will fail" >&2
