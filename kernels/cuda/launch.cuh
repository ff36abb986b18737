// Shared by the .cu files: dtype dispatch, launch sizes, a deterministic block sum, and the
// common checks of the launchers' params (the null check is the CPU ops').
#ifndef QTRAIN_KERNELS_CUDA_LAUNCH_CUH_
#define QTRAIN_KERNELS_CUDA_LAUNCH_CUH_

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "kernels/cpu/validate.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/element_math.h"

namespace qtrain::kernels::cuda {

inline constexpr int kThreads = 256;  // threads per block of the elementwise and row kernels
inline constexpr int64_t kMaxGrid = 65535LL * 32;

// Blocks for a grid-stride loop over n elements.
inline unsigned GridFor(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxGrid ? kMaxGrid : blocks));
}

// Calls f(T{}) with T = float, math::Bf16 or math::F16 for `dtype`.
template <typename F>
OpStatus DispatchDType(DType dtype, const char* kernel, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      return f(float{});
    case DType::kBfloat16:
      return f(math::Bf16{});
    case DType::kFloat16:
      return f(math::F16{});
  }
  return OpStatus::Error(std::string(kernel) + ": unknown dtype");
}

inline OpStatus CheckN(const char* kernel, const char* name, int64_t n) {
  if (n < 0) {
    return OpStatus::Error(std::string(kernel) + ": " + name + " must be >= 0, got " +
                           std::to_string(n));
  }
  return OpStatus::Ok();
}

// The CPU ops' null check ("<kernel>: <name> is null").
using cpu::CheckNotNull;

inline OpStatus CheckDType(const char* kernel, DType dtype) {
  if (dtype != DType::kFloat32 && dtype != DType::kBfloat16 && dtype != DType::kFloat16) {
    return OpStatus::Error(std::string(kernel) + ": dtype must be fp32, bf16 or fp16");
  }
  return OpStatus::Ok();
}

// The launch error of the kernel just launched.
inline OpStatus LaunchStatus(const char* kernel) { return CudaStatus(cudaGetLastError(), kernel); }

// Sum of one float per thread over a block of kThreads threads, in a fixed tree (the same
// grouping on every run). Every thread must call it; thread 0 gets the sum. `scratch` is
// kThreads floats of shared memory.
template <typename Acc>
__device__ Acc BlockSum(Acc value, Acc* scratch) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.x) < stride)
      scratch[threadIdx.x] += scratch[threadIdx.x + stride];
    __syncthreads();
  }
  const Acc sum = scratch[0];
  __syncthreads();  // scratch may be reused at once
  return sum;
}

// BlockSum with any associative `op` (e.g. merging online-softmax states): the same fixed tree.
template <typename V, typename Op>
__device__ V BlockReduce(V value, V* scratch, Op op) {
  scratch[threadIdx.x] = value;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (static_cast<int>(threadIdx.x) < stride) {
      scratch[threadIdx.x] = op(scratch[threadIdx.x], scratch[threadIdx.x + stride]);
    }
    __syncthreads();
  }
  const V result = scratch[0];
  __syncthreads();
  return result;
}

}  // namespace qtrain::kernels::cuda

#endif  // QTRAIN_KERNELS_CUDA_LAUNCH_CUH_
