// Linear (nn.Linear, y = x W^T + b) and the tied LM head (logits = y E^T), on Sgemm (gemm.h).
//   x, dx [rows, in]; weight, dweight [out, in]; bias, dbias [out]; y, dy [rows, out]
//   backward: dx += dy W; dweight += dy^T x; dbias += column sums of dy
#include <algorithm>
#include <climits>
#include <string>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/validate.h"

namespace qtrain::kernels::cpu {
namespace {

OpStatus ValidateLinear(const char* op, int64_t rows, int64_t in, int64_t out) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "rows", rows));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "in", in));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "out", out));
  if (rows > INT_MAX || in > INT_MAX || out > INT_MAX) {
    return OpStatus::Error(std::string(op) + ": a dimension exceeds the BLAS int range");
  }
  return OpStatus::Ok();
}

constexpr int64_t kColumnBlock = 64;  // dbias: each item sums all rows in order

}  // namespace

OpStatus CpuBackendImpl::LinearForwardF32(const float* x, const float* weight, const float* bias,
                                          float* y, int64_t rows, int64_t in, int64_t out) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateLinear("LinearForward", rows, in, out));
  if (rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("LinearForward", "x", x));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("LinearForward", "weight", weight));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("LinearForward", "y", y));
  float beta = 0.0f;
  if (bias != nullptr) {
#pragma omp parallel for schedule(static) if (WorthParallel(rows * out))
    for (int64_t r = 0; r < rows; ++r) std::copy(bias, bias + out, y + r * out);
    beta = 1.0f;
  }
  Sgemm({.trans_b = true,
         .m = rows,
         .n = out,
         .k = in,
         .a = x,
         .lda = in,
         .b = weight,
         .ldb = in,
         .beta = beta,
         .c = y,
         .ldc = out});
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::LinearBackwardF32(const float* dy, const float* x, const float* weight,
                                           float* dx, float* dweight, float* dbias, int64_t rows,
                                           int64_t in, int64_t out) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateLinear("LinearBackward", rows, in, out));
  if (rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("LinearBackward", "dy", dy));
  if (dx != nullptr) {
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("LinearBackward", "weight", weight));
    Sgemm({.m = rows,
           .n = in,
           .k = out,
           .a = dy,
           .lda = out,
           .b = weight,
           .ldb = in,
           .beta = 1.0f,
           .c = dx,
           .ldc = in});
  }
  if (dweight != nullptr) {
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("LinearBackward", "x", x));
    Sgemm({.trans_a = true,
           .m = out,
           .n = in,
           .k = rows,
           .a = dy,
           .lda = out,
           .b = x,
           .ldb = in,
           .beta = 1.0f,
           .c = dweight,
           .ldc = in});
  }
  if (dbias != nullptr) {
    const int64_t blocks = (out + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (WorthParallel(rows * out))
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t begin = blk * kColumnBlock;
      const int64_t end = std::min(out, begin + kColumnBlock);
      float acc[kColumnBlock] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const float* row = dy + r * out;
        for (int64_t j = begin; j < end; ++j) acc[j - begin] += row[j];
      }
      for (int64_t j = begin; j < end; ++j) dbias[j] += acc[j - begin];
    }
  }
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::LmHeadForwardF32(const float* y, const float* embedding, float* logits,
                                          int64_t rows, int64_t vocab, int64_t dim) {
  return LinearForwardF32(y, embedding, /*bias=*/nullptr, logits, rows, /*in=*/dim, /*out=*/vocab);
}

OpStatus CpuBackendImpl::LmHeadBackwardF32(const float* dlogits, const float* y,
                                           const float* embedding, float* dy, float* dembedding,
                                           int64_t rows, int64_t vocab, int64_t dim) {
  return LinearBackwardF32(dlogits, y, embedding, dy, dembedding, /*dbias=*/nullptr, rows,
                           /*in=*/dim, /*out=*/vocab);
}

}  // namespace qtrain::kernels::cpu
