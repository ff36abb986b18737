// AdamW on fp32 master weights and moments (element_math.h AdamWElement, the arithmetic the CPU
// backend runs), writing the 16-bit working copy of the weights when asked.
//   param, grad, m, v [n] fp32; working_copy [n] bf16 or fp16 (optional)
#include <cmath>

#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {
namespace {

// Element i of one tensor, and of its working copy when there is one (fp16 when `half`, else
// bf16: both are 16-bit, so one pointer serves).
__device__ __forceinline__ void UpdateElement(const math::AdamWScalars& s, int64_t i, float* param,
                                              const float* grad, float* m, float* v,
                                              void* working_copy, bool half) {
  float w = param[i], mi = m[i], vi = v[i];
  math::AdamWElement(s, grad[i], w, mi, vi);
  param[i] = w;
  m[i] = mi;
  v[i] = vi;
  if (working_copy == nullptr) return;
  if (half) {
    math::Store(w, static_cast<math::F16*>(working_copy)[i]);
  } else {
    math::Store(w, static_cast<math::Bf16*>(working_copy)[i]);
  }
}

__global__ void AdamWKernel(math::AdamWScalars s, float* param, const float* grad, float* m,
                            float* v, void* working_copy, bool half, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    UpdateElement(s, i, param, grad, m, v, working_copy, half);
  }
}

// One launch's tensors, passed by value (kernel parameters). Tensor t owns the blocks
// [first_block[t], first_block[t + 1]).
struct AdamWGroup {
  float* param[kAdamWGroupTensors];
  const float* grad[kAdamWGroupTensors];
  float* m[kAdamWGroupTensors];
  float* v[kAdamWGroupTensors];
  void* working_copy[kAdamWGroupTensors];
  int64_t n[kAdamWGroupTensors];
  int64_t first_block[kAdamWGroupTensors + 1];
  uint32_t decays;  // bit t: tensor t applies weight decay
  uint32_t halves;  // bit t: tensor t's working copy is fp16 (else bf16)
  int count;
};

__global__ void AdamWMultiKernel(math::AdamWScalars decay, math::AdamWScalars no_decay,
                                 AdamWGroup group) {
  const int64_t block = blockIdx.x;
  // The tensor of this block, and its pointers, by constant indices only (a dynamically indexed
  // kernel parameter array would be copied to local memory).
  float* param = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  void* copy = nullptr;
  int64_t n = 0, first = 0;
  bool decays = false;
  bool half = false;
#pragma unroll
  for (int t = 0; t < kAdamWGroupTensors; ++t) {
    if (t < group.count && block >= group.first_block[t] && block < group.first_block[t + 1]) {
      param = group.param[t];
      grad = group.grad[t];
      m = group.m[t];
      v = group.v[t];
      copy = group.working_copy[t];
      n = group.n[t];
      first = group.first_block[t];
      decays = (group.decays >> t) & 1u;
      half = (group.halves >> t) & 1u;
    }
  }
  const math::AdamWScalars s = decays ? decay : no_decay;
  const int64_t begin = (block - first) * kAdamWChunk;
  const int64_t end = begin + kAdamWChunk < n ? begin + kAdamWChunk : n;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
    UpdateElement(s, i, param, grad, m, v, copy, half);
  }
}

}  // namespace

OpStatus CanImplement(const AdamWParams& p) {
  constexpr const char* kKernel = "AdamWStep";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "n", p.n));
  if (p.step <= 0) return OpStatus::Error("AdamWStep: step must be > 0");
  if (!(p.beta1 >= 0.0 && p.beta1 < 1.0) || !(p.beta2 >= 0.0 && p.beta2 < 1.0)) {
    return OpStatus::Error("AdamWStep: betas must be in [0, 1)");
  }
  if (!(p.lr >= 0.0) || !(p.eps >= 0.0) || !(p.weight_decay >= 0.0)) {
    return OpStatus::Error("AdamWStep: lr, eps and weight_decay must be >= 0");
  }
  if (p.n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "param", p.param));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "grad", p.grad));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "m", p.m));
  return CheckNotNull(kKernel, "v", p.v);
}

OpStatus AdamWStep(const AdamWParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.n == 0) return OpStatus::Ok();
  const math::AdamWScalars scalars = math::MakeAdamWScalars(
      p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.apply_weight_decay, p.step, p.grad_scale);
  AdamWKernel<<<GridFor(p.n), kThreads, 0, stream>>>(scalars, p.param, p.grad, p.m, p.v,
                                                     p.working_copy, p.working_copy_f16, p.n);
  return LaunchStatus("AdamWStep");
}

OpStatus CanImplement(const AdamWMultiParams& p) {
  constexpr const char* kKernel = "AdamWMultiStep";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "count", p.count));
  // The hyperparameters' checks are AdamWStep's.
  AdamWParams hyper;
  hyper.lr = p.lr;
  hyper.beta1 = p.beta1;
  hyper.beta2 = p.beta2;
  hyper.eps = p.eps;
  hyper.weight_decay = p.weight_decay;
  hyper.step = p.step;
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(hyper));
  if (p.count > 0) QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "tensors", p.tensors));
  for (int64_t t = 0; t < p.count; ++t) {
    const AdamWTensorRef& x = p.tensors[t];
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "n", x.n));
    if (x.n == 0) continue;
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "param", x.param));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "grad", x.grad));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "m", x.m));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "v", x.v));
  }
  return OpStatus::Ok();
}

OpStatus AdamWMultiStep(const AdamWMultiParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  const math::AdamWScalars decay = math::MakeAdamWScalars(
      p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, true, p.step, p.grad_scale);
  const math::AdamWScalars no_decay = math::MakeAdamWScalars(
      p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, false, p.step, p.grad_scale);
  int64_t next = 0;
  while (next < p.count) {
    AdamWGroup group{};
    int64_t blocks = 0;
    // Up to kAdamWGroupTensors non-empty tensors, and at most kMaxGrid blocks, per launch.
    while (next < p.count && group.count < kAdamWGroupTensors) {
      const AdamWTensorRef& x = p.tensors[next];
      const int64_t chunks = (x.n + kAdamWChunk - 1) / kAdamWChunk;
      if (chunks == 0) {
        ++next;
        continue;
      }
      if (group.count > 0 && blocks + chunks > kMaxGrid) break;
      const int t = group.count++;
      group.param[t] = x.param;
      group.grad[t] = x.grad;
      group.m[t] = x.m;
      group.v[t] = x.v;
      group.working_copy[t] = x.working_copy;
      if (x.working_copy_f16) group.halves |= 1u << t;
      group.n[t] = x.n;
      group.first_block[t] = blocks;
      if (x.apply_weight_decay) group.decays |= 1u << t;
      blocks += chunks;
      ++next;
    }
    if (group.count == 0) break;
    group.first_block[group.count] = blocks;
    if (blocks > kMaxGrid) return OpStatus::Error("AdamWMultiStep: a tensor too large for a grid");
    AdamWMultiKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(decay, no_decay,
                                                                             group);
    QTRAIN_KERNEL_RETURN_IF_ERROR(LaunchStatus("AdamWMultiStep"));
  }
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels::cuda
