#!/usr/bin/env bash
# The GPU checks in one call, on a machine with an NVIDIA GPU (docs/cuda.md):
#   tests/gpu/run.sh            # builds tests/gpu for the GPU present, then runs the checks
# Writes its build to build-gpu/ and its outputs under $OUT (default build-gpu/out); prints a
# short table last; exits non-zero on any mismatch. Without a GPU it says so and exits 0.
#
# What it checks today:
# (a) every CUDA kernel of kernels/cuda, forward and backward, against the float64 reference on
#     fresh random inputs at several shapes, fp32 and bf16, outputs poisoned with NaN, plus
#     bitwise reruns of the deterministic kernels, and the cuBLASLt GEMMs against the float64
#     product with bitwise reruns of their kept plans (gpu_ops_check);
# (a') the backend conformance suite on the fp32 CUDA backend: every op of kernels/ops.h
#     against the reference, as CI runs it on the CPU backend (cuda_conformance).
# Not yet: the whole model's loss and gradients against the CPU, a training run, throughput and
# MFU, and the transformers + torch.compile peer (they need the model, whose build wants absl,
# which the GPU machine lacks, and the bf16 path).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${QTRAIN_GPU_BUILD:-$root/build-gpu}
out=${OUT:-$build/out}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "tests/gpu/run.sh: no NVIDIA GPU on this machine; nothing to check"
  exit 0
fi
mkdir -p "$out"
start=$(date +%s)
gpu=$(nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | head -1)
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')
echo "GPU: $gpu (building for sm_$arch)" | tee "$out/gpu.txt"

nvcc_bin=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
cmake -S "$root/tests/gpu" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_COMPILER="$nvcc_bin" -DCMAKE_CUDA_ARCHITECTURES="$arch" >"$out/configure.log" 2>&1 ||
  { tail -30 "$out/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" >"$out/build.log" 2>&1 || { tail -50 "$out/build.log"; exit 1; }
built=$(date +%s)

status=0
"$build/gpu_ops_check" | tee "$out/ops.txt" || status=1
"$build/cuda_conformance" --failures-only | tee "$out/conformance.txt" || status=1
end=$(date +%s)

echo
echo "| check | result |"
echo "| --- | --- |"
echo "| build (sm_$arch) | $((built - start)) s |"
echo "| (a) kernels and GEMMs vs reference | $(tail -1 "$out/ops.txt") |"
echo "| (a') fp32 CUDA backend conformance | $(tail -1 "$out/conformance.txt") |"
echo "| (b)-(e) model, training, throughput, peer | not written yet |"
echo "| total | $((end - start)) s |"
exit $status
