// Softmax cross-entropy with ignore_index over fp32 logits; labels already aligned.
//   logits, dlogits [rows, vocab]; labels [rows] int32; losses, lse [rows]
//   forward:  lse = logsumexp(logits[r]); losses[r] = lse - logits[r, label] (0 if ignored)
//   backward: dlogits[r] = (softmax(logits[r]) - onehot(label)) * grad_scale (0 if ignored)
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/tile_math.h"
#include "kernels/cpu/validate.h"

namespace qtrain::kernels::cpu {
namespace {

OpStatus ValidateCrossEntropy(const char* op, const float* logits, const int32_t* labels,
                              int64_t rows, int64_t vocab, int32_t ignore_index) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "rows", rows));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "vocab", vocab));
  if (rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "logits", logits));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "labels", labels));
  for (int64_t r = 0; r < rows; ++r) {
    if (labels[r] != ignore_index && (labels[r] < 0 || labels[r] >= vocab)) {
      return OpStatus::Error(std::string(op) + ": label " + std::to_string(labels[r]) + " at row " +
                             std::to_string(r) + " is outside [0, " + std::to_string(vocab) +
                             ") and is not ignore_index " + std::to_string(ignore_index));
    }
  }
  return OpStatus::Ok();
}

// Elements per exp chunk: small enough for L1, large enough to amortise the call.
constexpr int64_t kChunk = 2048;

// logsumexp of one row: vectorised exp over chunks of z - max into `buf` [kChunk], chunk sums
// added in double (vocab ~ 1.5e5 terms).
float RowLogSumExp(const float* z, int64_t vocab, float* buf) {
  const float max = LaneMax(z, vocab);
  if (std::isinf(max)) return max;  // all -inf (or a +inf): nothing finite to normalise
  double sum = 0.0;
  for (int64_t begin = 0; begin < vocab; begin += kChunk) {
    const int64_t n = std::min(kChunk, vocab - begin);
    for (int64_t j = 0; j < n; ++j) buf[j] = z[begin + j] - max;
    ExpInPlace(buf, n);
    sum += LaneSum(buf, n);
  }
  return max + static_cast<float>(std::log(sum));
}

}  // namespace

OpStatus CpuBackendImpl::CrossEntropyForward(const float* logits, const int32_t* labels,
                                             float* losses, float* lse, double* loss_sum,
                                             int64_t* num_valid, int64_t rows, int64_t vocab,
                                             int32_t ignore_index) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(
      ValidateCrossEntropy("CrossEntropyForward", logits, labels, rows, vocab, ignore_index));
  if (rows > 0) {
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("CrossEntropyForward", "losses", losses));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("CrossEntropyForward", "lse", lse));
  }
#pragma omp parallel if (WorthParallel(rows * vocab))
  {
    std::vector<float> buf(kChunk);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* z = logits + r * vocab;
      lse[r] = RowLogSumExp(z, vocab, buf.data());
      losses[r] = labels[r] == ignore_index ? 0.0f : lse[r] - z[labels[r]];
    }
  }
  // Serial, in row order: deterministic whatever the thread count.
  double sum = 0.0;
  int64_t valid = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (labels[r] == ignore_index) continue;
    sum += losses[r];
    ++valid;
  }
  if (loss_sum != nullptr) *loss_sum = sum;
  if (num_valid != nullptr) *num_valid = valid;
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::CrossEntropyBackward(const float* logits, const int32_t* labels,
                                              const float* lse, float grad_scale, float* dlogits,
                                              int64_t rows, int64_t vocab, int32_t ignore_index) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(
      ValidateCrossEntropy("CrossEntropyBackward", logits, labels, rows, vocab, ignore_index));
  if (rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("CrossEntropyBackward", "lse", lse));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("CrossEntropyBackward", "dlogits", dlogits));
#pragma omp parallel for schedule(static) if (WorthParallel(rows * vocab))
  for (int64_t r = 0; r < rows; ++r) {
    const float* z = logits + r * vocab;
    float* dz = dlogits + r * vocab;
    if (labels[r] == ignore_index) {
      for (int64_t j = 0; j < vocab; ++j) dz[j] = 0.0f;
      continue;
    }
    const float row_lse = lse[r];
    for (int64_t j = 0; j < vocab; ++j) dz[j] = z[j] - row_lse;
    ExpInPlace(dz, vocab);
    for (int64_t j = 0; j < vocab; ++j) dz[j] *= grad_scale;
    dz[labels[r]] -= grad_scale;
  }
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels::cpu
