#!/usr/bin/env bash
# The GPU checks in one call, on a machine with an NVIDIA GPU (docs/cuda.md):
#   tests/gpu/run.sh            # builds tests/gpu for the GPU present, then runs the checks
# Writes its build to build-gpu/ and its outputs under $OUT (default build-gpu/out); prints a
# short table last; exits non-zero on any mismatch. Without a GPU it says so and exits 0.
#
# What it checks:
# (a) every CUDA kernel of kernels/cuda, forward and backward, against the float64 reference on
#     fresh random inputs at several shapes, fp32 and bf16, outputs poisoned with NaN, plus
#     bitwise reruns of the deterministic kernels, and the cuBLASLt GEMMs against the float64
#     product with bitwise reruns of their kept plans (gpu_ops_check);
# (a') the backend conformance suite on the CUDA backend: every op of kernels/ops.h against the
#     reference, in fp32, bf16 and fp16 passes, as CI runs it on the CPU backend (cuda_conformance);
# (b) qwen2-tiny's loss and gradients on the CUDA backend, fp32, bf16 and fp16, against the CPU
#     backend in fp32; (c) a 30-step bf16 training run whose loss curve follows the CPU's;
# (d) qwen2-0.5b bf16 training-step throughput at 2048 and 4096 tokens (MFU) and one
#     32,768-token step with recomputation (gpu_model_check);
# (e) transformers' Qwen2 with torch.compile, SDPA, bf16 autocast and fused AdamW on the same
#     card, config and batch (bench/torch_train_peer.py), for the ratio.
# (b)-(d) build the model and its CPU reference, which need Abseil and nlohmann/json: carry
# third_party/ (scripts/setup.sh and scripts/gpu_kit.sh fill it) where the machine lacks them.
# QTRAIN_GPU_SKIP_LONG=1 leaves out the 32K step.
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
# cuDNN from PyTorch's wheel, where the toolkit has none (tests/gpu/CMakeLists.txt finds it).
pip_cudnn=$(python3 -c "import nvidia.cudnn as m; print(list(m.__path__)[0])" 2>/dev/null || true)
if [ -n "$pip_cudnn" ] && [ -d "$pip_cudnn/lib" ]; then
  export LD_LIBRARY_PATH="$pip_cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
cmake -S "$root/tests/gpu" -B "$build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CUDA_COMPILER="$nvcc_bin" -DCMAKE_CUDA_ARCHITECTURES="$arch" >"$out/configure.log" 2>&1 ||
  { tail -30 "$out/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" --target gpu_ops_check cuda_conformance >"$out/build.log" 2>&1 ||
  { tail -50 "$out/build.log"; exit 1; }
model_built=1
cmake --build "$build" -j "$(nproc)" --target gpu_model_check >>"$out/build.log" 2>&1 || {
  model_built=0
  tail -30 "$out/build.log"
  echo "gpu_model_check did not build (see build.log)" >"$out/model.txt"
}
built=$(date +%s)

status=0
"$build/gpu_ops_check" | tee "$out/ops.txt" || status=1
"$build/cuda_conformance" --failures-only | tee "$out/conformance.txt" || status=1
# The attention ops again with attention.cu for every call, where the first run used cuDNN's
# graphs (the bf16 and fp16 passes' training shapes).
if grep -q "through cuDNN" "$out/conformance.txt"; then
  "$build/cuda_conformance" --attention=kernel --filter=attention --dtype=all --failures-only |
    tee "$out/conformance_kernel.txt" || status=1
fi
if [ "$model_built" = 1 ]; then
  long=()
  [ "${QTRAIN_GPU_SKIP_LONG:-0}" = 1 ] && long=(--skip-long)
  "$build/gpu_model_check" --json="$out/model.json" --config-out="$out/qwen2-0.5b.json" \
    "${long[@]}" | tee "$out/model.txt" || status=1
else
  status=1
fi
# The peer: a comparison, not a check of ours, so its failure is reported but not fatal.
if [ -f "$out/qwen2-0.5b.json" ] && python3 -c "import torch, transformers" 2>/dev/null; then
  python3 "$root/bench/torch_train_peer.py" --config "$out/qwen2-0.5b.json" --seq-len 2048 4096 \
    --json "$out/peer.json" 2>&1 | tee "$out/peer.txt" || echo "torch_train_peer failed" >>"$out/peer.txt"
else
  echo "no PyTorch with transformers here, or no model config" >"$out/peer.txt"
fi
end=$(date +%s)

echo
python3 "$root/tests/gpu/report.py" --out "$out" --build-seconds $((built - start)) \
  --total-seconds $((end - start)) || status=1
exit $status
