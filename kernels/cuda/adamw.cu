// AdamW on fp32 master weights and moments (element_math.h AdamWElement, the arithmetic the CPU
// backend runs), writing the bf16 working copy of the weights when asked.
//   param, grad, m, v [n] fp32; working_copy [n] bf16 (optional)
#include <cmath>

#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {
namespace {

__global__ void AdamWKernel(math::AdamWScalars s, float* param, const float* grad, float* m,
                            float* v, math::Bf16* working_copy, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    float w = param[i], mi = m[i], vi = v[i];
    math::AdamWElement(s, grad[i], w, mi, vi);
    param[i] = w;
    m[i] = mi;
    v[i] = vi;
    if (working_copy != nullptr) math::Store(w, working_copy[i]);
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
                                                     static_cast<math::Bf16*>(p.working_copy), p.n);
  return LaunchStatus("AdamWStep");
}

}  // namespace qtrain::kernels::cuda
