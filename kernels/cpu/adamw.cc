// AdamW step (torch.optim.AdamW arithmetic) and the deterministic sums of squares behind the
// global gradient norm (one total, or one per block).
//   param, grad, m, v [n]
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/validate.h"
#include "kernels/cuda/element_math.h"

namespace qtrain::kernels::cpu {
namespace {

// Elements per partial sum. Fixed (not per thread) so the result is thread-count independent.
constexpr int64_t kSumBlock = 4096;

}  // namespace

OpStatus CpuBackendImpl::AdamWStep(float* param, const float* grad, float* m, float* v, int64_t n,
                                   const AdamWParams& p) {
  constexpr const char* kOp = "AdamWStep";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(kOp, "n", n));
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateAdamWParams(kOp, p));
  if (n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "param", param));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "grad", grad));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "m", m));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "v", v));

  // The per-element arithmetic is the CUDA kernel's (kernels/cuda/element_math.h).
  const math::AdamWScalars scalars = math::MakeAdamWScalars(
      p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.apply_weight_decay, p.step, p.grad_scale);
#pragma omp parallel for schedule(static) if (WorthParallel(n))
  for (int64_t i = 0; i < n; ++i) math::AdamWElement(scalars, grad[i], param[i], m[i], v[i]);
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::AdamWMultiStep(const AdamWTensor* tensors, int64_t count,
                                        const AdamWParams& p) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateAdamWParams("AdamWMultiStep", p));
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateAdamWTensors(tensors, count));
  for (int64_t t = 0; t < count; ++t) {
    const AdamWTensor& x = tensors[t];
    const math::AdamWScalars scalars = math::MakeAdamWScalars(
        p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, x.apply_weight_decay, p.step, p.grad_scale);
    const auto update = [&](auto* copy) {
#pragma omp parallel for schedule(static) if (WorthParallel(x.n))
      for (int64_t i = 0; i < x.n; ++i) {
        math::AdamWElement(scalars, x.grad[i], x.param[i], x.m[i], x.v[i]);
        if (copy != nullptr) math::Store(x.param[i], copy[i]);
      }
    };
    if (x.working_copy.is_null()) {
      update(static_cast<Bf16*>(nullptr));
    } else if (x.working_copy.dtype() == DType::kFloat16) {
      update(x.working_copy.f16());
    } else {
      update(x.working_copy.bf16());
    }
  }
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::SumOfSquares(const float* const* tensors, const int64_t* sizes,
                                      int64_t count, double* sum_squares) {
  constexpr const char* kOp = "SumOfSquares";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(kOp, "count", count));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "sum_squares", sum_squares));
  if (count > 0) {
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "tensors", tensors));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "sizes", sizes));
  }
  for (int64_t t = 0; t < count; ++t) {
    if (sizes[t] < 0 || (sizes[t] > 0 && tensors[t] == nullptr)) {
      return OpStatus::Error("SumOfSquares: tensor " + std::to_string(t) +
                             " has a negative size or is null");
    }
  }
  double total = 0.0;
  std::vector<double> partial;
  for (int64_t t = 0; t < count; ++t) {
    const float* x = tensors[t];
    const int64_t n = sizes[t];
    const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
    partial.assign(blocks, 0.0);
#pragma omp parallel for schedule(static) if (WorthParallel(n))
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t end = std::min(n, (b + 1) * kSumBlock);
      double acc = 0.0;
      for (int64_t i = b * kSumBlock; i < end; ++i) acc += static_cast<double>(x[i]) * x[i];
      partial[b] = acc;
    }
    for (double s : partial) total += s;
  }
  *sum_squares = total;
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::BlockSumsOfSquares(const float* x, int64_t n, int64_t block_elements,
                                            double* sums) {
  constexpr const char* kOp = "BlockSumsOfSquares";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(kOp, "n", n));
  if (block_elements <= 0) {
    return OpStatus::Error("BlockSumsOfSquares: block_elements must be > 0, not " +
                           std::to_string(block_elements));
  }
  if (n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "x", x));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "sums", sums));
  const int64_t blocks = (n + block_elements - 1) / block_elements;
  // Each block in element order (the host's rule, optimizer.h BlockSumsOfSquares).
#pragma omp parallel for schedule(static) if (WorthParallel(n))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t end = std::min(n, (b + 1) * block_elements);
    double acc = 0.0;
    for (int64_t i = b * block_elements; i < end; ++i) acc += static_cast<double>(x[i]) * x[i];
    sums[b] = acc;
  }
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels::cpu
