// Embedding lookup and its scatter-add backward.
//   ids [rows] int32; table, dtable [vocab, dim]; out, dout [rows, dim]
#include <algorithm>
#include <cstring>
#include <string>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/validate.h"

namespace qtrain::kernels::cpu {
namespace {

OpStatus ValidateEmbedding(const char* op, const int32_t* ids, const void* table, const void* out,
                           int64_t rows, int64_t vocab, int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "rows", rows));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "vocab", vocab));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "dim", dim));
  if (rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "ids", ids));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "table", table));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "out", out));
  return CheckIdsInRange(op, "id", ids, rows, vocab);
}

// Columns per work item of the backward: each item walks all rows in order, so the sums into a
// table row are in row order whatever the thread count.
constexpr int64_t kColumnBlock = 32;

}  // namespace

OpStatus CpuBackendImpl::EmbeddingForwardF32(const int32_t* ids, const float* table, float* out,
                                             int64_t rows, int64_t vocab, int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(
      ValidateEmbedding("EmbeddingForward", ids, table, out, rows, vocab, dim));
#pragma omp parallel for schedule(static) if (WorthParallel(rows * dim))
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(out + r * dim, table + static_cast<int64_t>(ids[r]) * dim, dim * sizeof(float));
  }
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::EmbeddingBackwardF32(const int32_t* ids, const float* dout, float* dtable,
                                              int64_t rows, int64_t vocab, int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(
      ValidateEmbedding("EmbeddingBackward", ids, dtable, dout, rows, vocab, dim));
  const int64_t blocks = (dim + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (WorthParallel(rows * dim))
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t begin = blk * kColumnBlock;
    const int64_t end = std::min(dim, begin + kColumnBlock);
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = dtable + static_cast<int64_t>(ids[r]) * dim;
      const float* src = dout + r * dim;
      for (int64_t j = begin; j < end; ++j) dst[j] += src[j];
    }
  }
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels::cpu
