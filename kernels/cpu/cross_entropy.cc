// Softmax cross-entropy with ignore_index over fp32 logits; labels already aligned.
//   logits, dlogits [rows, vocab]; labels [rows] int32; losses, lse [rows]
//   forward:  lse = logsumexp(logits[r]); losses[r] = lse - logits[r, label] (0 if ignored)
//   backward: dlogits[r] = (softmax(logits[r]) - onehot(label)) * grad_scale (0 if ignored)
//   forward+backward: one exp per logit; softmax = exp(z - max) / sum from the forward's pass
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"
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
  return CheckIdsInRange(op, "label", labels, rows, vocab, &ignore_index);
}

// Elements per summation chunk: chunk sums are added in double (vocab ~ 1.5e5 terms).
constexpr int64_t kChunk = 2048;

#ifdef QTRAIN_HAVE_AVX512_PATH
namespace avx512 {

QTRAIN_AVX512 float RowMax(const float* z, int64_t n) {
  __m512 max = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = simd::FirstLanes(n - j);
    max = _mm512_mask_max_ps(max, m, max, _mm512_maskz_loadu_ps(m, z + j));
  }
  return _mm512_reduce_max_ps(max);
}

QTRAIN_AVX512 float ExpShiftedSum(const float* z, float shift, float* out, int64_t n) {
  const __m512 vshift = _mm512_set1_ps(shift);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = simd::FirstLanes(n - j);
    const __m512 e =
        _mm512_maskz_mov_ps(m, simd::Exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, z + j), vshift)));
    sum = _mm512_add_ps(sum, e);
    if (out != nullptr) _mm512_mask_storeu_ps(out + j, m, e);
  }
  return _mm512_reduce_add_ps(sum);
}

QTRAIN_AVX512 void ExpShiftedScaled(const float* z, float shift, float factor, float* out,
                                    int64_t n) {
  const __m512 vshift = _mm512_set1_ps(shift), vfactor = _mm512_set1_ps(factor);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = simd::FirstLanes(n - j);
    const __m512 e = simd::Exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, z + j), vshift));
    _mm512_mask_storeu_ps(out + j, m, _mm512_mul_ps(e, vfactor));
  }
}

QTRAIN_AVX512 void ScaleRow(float* x, float factor, int64_t n) {
  const __m512 vfactor = _mm512_set1_ps(factor);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = simd::FirstLanes(n - j);
    _mm512_mask_storeu_ps(x + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + j), vfactor));
  }
}

}  // namespace avx512
#endif  // QTRAIN_HAVE_AVX512_PATH

// max of z[0 .. n); NaNs are skipped.
float RowMax(const float* z, int64_t n) {
#ifdef QTRAIN_HAVE_AVX512_PATH
  if (simd::UseAvx512()) return avx512::RowMax(z, n);
#endif
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j) max = max < z[j] ? z[j] : max;
  return max;
}

// Sum of exp(z[j] - shift) over j < n (n <= kChunk), also written to out unless it is null
// (out may alias z).
float ExpShiftedSum(const float* z, float shift, float* out, int64_t n) {
#ifdef QTRAIN_HAVE_AVX512_PATH
  if (simd::UseAvx512()) return avx512::ExpShiftedSum(z, shift, out, n);
#endif
  float sum = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    const float e = simd::Exp(z[j] - shift);
    sum += e;
    if (out != nullptr) out[j] = e;
  }
  return sum;
}

// out[j] = exp(z[j] - shift) * factor (out may alias z).
void ExpShiftedScaled(const float* z, float shift, float factor, float* out, int64_t n) {
#ifdef QTRAIN_HAVE_AVX512_PATH
  if (simd::UseAvx512()) return avx512::ExpShiftedScaled(z, shift, factor, out, n);
#endif
  for (int64_t j = 0; j < n; ++j) out[j] = simd::Exp(z[j] - shift) * factor;
}

void ScaleRow(float* x, float factor, int64_t n) {
#ifdef QTRAIN_HAVE_AVX512_PATH
  if (simd::UseAvx512()) return avx512::ScaleRow(x, factor, n);
#endif
  for (int64_t j = 0; j < n; ++j) x[j] *= factor;
}

// Sum over the row of exp(z - max), in chunks added in double; the exps are also written to out
// unless it is null.
double RowExpSum(const float* z, float max, float* out, int64_t vocab) {
  double sum = 0.0;
  for (int64_t begin = 0; begin < vocab; begin += kChunk) {
    sum += ExpShiftedSum(z + begin, max, out == nullptr ? nullptr : out + begin,
                         std::min(kChunk, vocab - begin));
  }
  return sum;
}

// logsumexp of one row.
float RowLogSumExp(const float* z, int64_t vocab) {
  const float max = RowMax(z, vocab);
  if (std::isinf(max)) return max;  // all -inf (or a +inf): nothing finite to normalise
  return max + static_cast<float>(std::log(RowExpSum(z, max, nullptr, vocab)));
}

// The backward of one non-ignored row from its lse.
void RowGradient(const float* z, int32_t label, float lse, float grad_scale, float* dz,
                 int64_t vocab) {
  ExpShiftedScaled(z, lse, grad_scale, dz, vocab);
  dz[label] -= grad_scale;
}

// Sum of the non-ignored losses, serially in row order (deterministic whatever the threads).
void SumLosses(const float* losses, const int32_t* labels, int64_t rows, int32_t ignore_index,
               double* loss_sum, int64_t* num_valid) {
  double sum = 0.0;
  int64_t valid = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (labels[r] == ignore_index) continue;
    sum += losses[r];
    ++valid;
  }
  if (loss_sum != nullptr) *loss_sum = sum;
  if (num_valid != nullptr) *num_valid = valid;
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
#pragma omp parallel for schedule(static) if (WorthParallel(rows * vocab))
  for (int64_t r = 0; r < rows; ++r) {
    const float* z = logits + r * vocab;
    lse[r] = RowLogSumExp(z, vocab);
    losses[r] = labels[r] == ignore_index ? 0.0f : lse[r] - z[labels[r]];
  }
  SumLosses(losses, labels, rows, ignore_index, loss_sum, num_valid);
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
    RowGradient(z, labels[r], lse[r], grad_scale, dz, vocab);
  }
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::CrossEntropyForwardBackward(const float* logits, const int32_t* labels,
                                                     float grad_scale, float* losses, float* lse,
                                                     double* loss_sum, int64_t* num_valid,
                                                     float* dlogits, int64_t rows, int64_t vocab,
                                                     int32_t ignore_index) {
  constexpr const char* kOp = "CrossEntropyForwardBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(
      ValidateCrossEntropy(kOp, logits, labels, rows, vocab, ignore_index));
  if (rows > 0) {
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "losses", losses));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "lse", lse));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "dlogits", dlogits));
  }
#pragma omp parallel for schedule(static) if (WorthParallel(rows * vocab))
  for (int64_t r = 0; r < rows; ++r) {
    const float* z = logits + r * vocab;
    float* dz = dlogits + r * vocab;
    const int32_t label = labels[r];
    const bool ignored = label == ignore_index;
    const float target_logit = ignored ? 0.0f : z[label];  // before dz overwrites it
    const float max = RowMax(z, vocab);
    if (std::isinf(max)) {  // nothing finite to normalise: the two-pass formulas
      lse[r] = max;
      losses[r] = ignored ? 0.0f : lse[r] - target_logit;
      if (ignored) {
        std::fill(dz, dz + vocab, 0.0f);
      } else {
        RowGradient(z, label, lse[r], grad_scale, dz, vocab);
      }
      continue;
    }
    const double sum = RowExpSum(z, max, dz, vocab);  // dz = exp(z - max)
    lse[r] = max + static_cast<float>(std::log(sum));
    losses[r] = ignored ? 0.0f : lse[r] - target_logit;
    if (ignored) {
      std::fill(dz, dz + vocab, 0.0f);
      continue;
    }
    ScaleRow(dz, static_cast<float>(grad_scale / sum), vocab);
    dz[label] -= grad_scale;
  }
  SumLosses(losses, labels, rows, ignore_index, loss_sum, num_valid);
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels::cpu
