// SwiGLU: out = silu(gate) * up, with silu(a) = a * sigmoid(a); elementwise, in blocks.
//   gate, up, out, dout, dgate, dup [rows, dim]
//   backward: dup += dout * silu(gate);
//             dgate += dout * up * sigmoid(gate) * (1 + gate * (1 - sigmoid(gate)))
#include <algorithm>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/validate.h"

namespace qtrain::kernels::cpu {
namespace {

inline float Sigmoid(float a) { return 1.0f / (1.0f + simd::Exp(-a)); }

// Elements per parallel work item (a multiple of 16).
constexpr int64_t kBlock = 4096;

#ifdef QTRAIN_HAVE_AVX512_PATH
namespace avx512 {

QTRAIN_AVX512 inline __m512 Sigmoid16(__m512 a) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_div_ps(one, _mm512_add_ps(one, simd::Exp16(_mm512_sub_ps(_mm512_setzero_ps(), a))));
}

QTRAIN_AVX512 void Forward(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = simd::FirstLanes(n - i);
    const __m512 a = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 u = _mm512_maskz_loadu_ps(m, up + i);
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_mul_ps(a, Sigmoid16(a)), u));
  }
}

QTRAIN_AVX512 void Backward(const float* dout, const float* gate, const float* up, float* dgate,
                            float* dup, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = simd::FirstLanes(n - i);
    const __m512 a = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 d = _mm512_maskz_loadu_ps(m, dout + i);
    const __m512 sig = Sigmoid16(a);
    if (dup != nullptr) {
      const __m512 acc = _mm512_maskz_loadu_ps(m, dup + i);
      _mm512_mask_storeu_ps(dup + i, m,
                            _mm512_add_ps(acc, _mm512_mul_ps(_mm512_mul_ps(d, a), sig)));
    }
    if (dgate != nullptr) {
      const __m512 u = _mm512_maskz_loadu_ps(m, up + i);
      const __m512 slope = _mm512_add_ps(one, _mm512_mul_ps(a, _mm512_sub_ps(one, sig)));
      const __m512 g = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(d, u), sig), slope);
      _mm512_mask_storeu_ps(dgate + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dgate + i), g));
    }
  }
}

}  // namespace avx512
#endif  // QTRAIN_HAVE_AVX512_PATH

void Forward(const float* gate, const float* up, float* out, int64_t n) {
#ifdef QTRAIN_HAVE_AVX512_PATH
  if (simd::UseAvx512()) return avx512::Forward(gate, up, out, n);
#endif
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] * Sigmoid(gate[i]) * up[i];
}

void Backward(const float* dout, const float* gate, const float* up, float* dgate, float* dup,
              int64_t n) {
#ifdef QTRAIN_HAVE_AVX512_PATH
  if (simd::UseAvx512()) return avx512::Backward(dout, gate, up, dgate, dup, n);
#endif
  for (int64_t i = 0; i < n; ++i) {
    const float a = gate[i];
    const float sig = Sigmoid(a);
    if (dup != nullptr) dup[i] += dout[i] * a * sig;
    if (dgate != nullptr) dgate[i] += dout[i] * up[i] * sig * (1.0f + a * (1.0f - sig));
  }
}

OpStatus ValidateSwiglu(const char* op, const float* gate, const float* up, int64_t rows,
                        int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "rows", rows));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "dim", dim));
  if (rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "gate", gate));
  return CheckNotNull(op, "up", up);
}

}  // namespace

OpStatus CpuBackendImpl::SwigluForwardF32(const float* gate, const float* up, float* out,
                                          int64_t rows, int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateSwiglu("SwigluForward", gate, up, rows, dim));
  if (rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("SwigluForward", "out", out));
  const int64_t n = rows * dim;
#pragma omp parallel for schedule(static) if (WorthParallel(n))
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    Forward(gate + begin, up + begin, out + begin, std::min(kBlock, n - begin));
  }
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::SwigluBackwardF32(const float* dout, const float* gate, const float* up,
                                           float* dgate, float* dup, int64_t rows, int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateSwiglu("SwigluBackward", gate, up, rows, dim));
  if (rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("SwigluBackward", "dout", dout));
  const int64_t n = rows * dim;
#pragma omp parallel for schedule(static) if (WorthParallel(n))
  for (int64_t begin = 0; begin < n; begin += kBlock) {
    const int64_t len = std::min(kBlock, n - begin);
    Backward(dout + begin, gate + begin, up + begin, dgate == nullptr ? nullptr : dgate + begin,
             dup == nullptr ? nullptr : dup + begin, len);
  }
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels::cpu
