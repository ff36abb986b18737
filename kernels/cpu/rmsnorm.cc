// RMSNorm (Qwen2RMSNorm), forward and backward, fp32 throughout.
//   x, out, dout, dx [rows, dim]; weight, dweight [dim]; rstd [rows]
//   forward:  rstd = 1/sqrt(mean(x^2) + eps); out = weight * (x * rstd)
//   backward: n = x*rstd, u = dout*weight; dx += rstd*(u - n*mean(u*n)); dweight += sum dout*n
#include <algorithm>
#include <cmath>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/validate.h"

namespace qtrain::kernels::cpu {
namespace {

OpStatus ValidateRmsNorm(const char* op, int64_t rows, int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "rows", rows));
  return CheckPositive(op, "dim", dim);
}

constexpr int64_t kColumnBlock = 32;  // dweight: each item sums all rows in order

}  // namespace

OpStatus CpuBackendImpl::RmsNormForwardF32(const float* x, const float* weight, float eps,
                                           float* out, float* rstd, int64_t rows, int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateRmsNorm("RmsNormForward", rows, dim));
  if (!(eps >= 0.0f)) return OpStatus::Error("RmsNormForward: eps must be >= 0");
  if (rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("RmsNormForward", "x", x));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("RmsNormForward", "weight", weight));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("RmsNormForward", "out", out));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("RmsNormForward", "rstd", rstd));
#pragma omp parallel for schedule(static) if (WorthParallel(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < dim; ++j) sum += xr[j] * xr[j];
    const float s = 1.0f / std::sqrt(sum / static_cast<float>(dim) + eps);
    rstd[r] = s;
    float* yr = out + r * dim;
    for (int64_t j = 0; j < dim; ++j) yr[j] = weight[j] * (xr[j] * s);
  }
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::RmsNormBackwardF32(const float* dout, const float* x, const float* weight,
                                            const float* rstd, float* dx, float* dweight,
                                            int64_t rows, int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateRmsNorm("RmsNormBackward", rows, dim));
  if (rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("RmsNormBackward", "dout", dout));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("RmsNormBackward", "x", x));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("RmsNormBackward", "weight", weight));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("RmsNormBackward", "rstd", rstd));
  if (dx != nullptr) {
#pragma omp parallel for schedule(static) if (WorthParallel(rows * dim))
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x + r * dim;
      const float* gr = dout + r * dim;
      const float s = rstd[r];
      float dot = 0.0f;  // sum_j u_j * n_j
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < dim; ++j) dot += gr[j] * weight[j] * (xr[j] * s);
      const float mean_dot = dot / static_cast<float>(dim);
      float* dxr = dx + r * dim;
      for (int64_t j = 0; j < dim; ++j) {
        const float n = xr[j] * s;
        dxr[j] += s * (gr[j] * weight[j] - n * mean_dot);
      }
    }
  }
  if (dweight != nullptr) {
    const int64_t blocks = (dim + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (WorthParallel(rows * dim))
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t begin = blk * kColumnBlock;
      const int64_t end = std::min(dim, begin + kColumnBlock);
      float acc[kColumnBlock] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * dim;
        const float* gr = dout + r * dim;
        const float s = rstd[r];
        for (int64_t j = begin; j < end; ++j) acc[j - begin] += gr[j] * (xr[j] * s);
      }
      for (int64_t j = begin; j < end; ++j) dweight[j] += acc[j - begin];
    }
  }
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels::cpu
