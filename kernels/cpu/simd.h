// Vector helpers for the CPU kernels. The project builds for the baseline x86-64 ISA; kernels
// whose inner loops the compiler does not vectorise well (exp, masks) have a hand-written
// AVX-512 path in functions marked QTRAIN_AVX512, taken when UseAvx512() says the CPU (and OS)
// support it, beside a plain loop that is the reference for other CPUs.
#ifndef QTRAIN_KERNELS_CPU_SIMD_H_
#define QTRAIN_KERNELS_CPU_SIMD_H_

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define QTRAIN_HAVE_AVX512_PATH 1
#define QTRAIN_AVX512 __attribute__((target("avx512f")))
// GCC 12's AVX-512 headers start some intrinsics from _mm512_undefined_*(), which its
// (maybe-)uninitialized warnings report wrongly in every file that inlines them.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#endif

namespace qtrain::kernels::cpu::simd {

// Inputs are clamped to [kExpMin, kExpMax]: exp(-104) is below the smallest denormal, so the
// result is 0 there (and for -inf); exp(88) is finite, so large inputs saturate instead of
// overflowing.
inline constexpr float kExpMin = -104.0f, kExpMax = 88.0f;
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kLn2Hi = 0.693359375f;  // ln 2 split in two for precision
inline constexpr float kLn2Lo = -2.12194440e-4f;
inline constexpr float kExpPoly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                      4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

// exp(x) = 2^n exp(f) with n = round(x log2 e) and f = x - n ln 2; exp(f) by the Cephes expf
// polynomial. About 2 ulp (denormal results lose precision gradually); NaN stays NaN.
[[gnu::always_inline]] inline float Exp(float in) {
  if (std::isnan(in)) return in;
  if (in < kExpMin) return 0.0f;  // -inf included (an online softmax's first rescale)
  const float v = in > kExpMax ? kExpMax : in;
  const float fn = std::nearbyint(v * kLog2e);
  const float f = (v - fn * kLn2Hi) - fn * kLn2Lo;
  float p = kExpPoly[0];
  for (int i = 1; i < 6; ++i) p = p * f + kExpPoly[i];
  const float e = p * (f * f) + f + 1.0f;
  const int n = static_cast<int>(fn);
  if (n < -126) return std::ldexp(e, n);  // a denormal result (rare: ldexp is slow)
  const int32_t bits = (n + 127) << 23;   // 2^n, a normal float
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}

// Whether the AVX-512 paths may run here: the CPU (and OS) support them, and
// QTRAIN_CPU_NO_AVX512 is not set to 1 (tests set it to run the portable loops on any CPU).
inline bool UseAvx512() {
#ifdef QTRAIN_HAVE_AVX512_PATH
  static const bool use = [] {
    const char* off = std::getenv("QTRAIN_CPU_NO_AVX512");
    if (off != nullptr && off[0] == '1' && off[1] == '\0') return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return use;
#else
  return false;
#endif
}

#ifdef QTRAIN_HAVE_AVX512_PATH

// Exp on 16 lanes: the rounding by roundscale and the 2^n by scalef (which also produces the
// denormals and the zeros below them).
QTRAIN_AVX512 inline __m512 Exp16(__m512 in) {
  // max/min return their second operand when either is NaN: NaN goes through.
  const __m512 v =
      _mm512_min_ps(_mm512_set1_ps(kExpMax), _mm512_max_ps(_mm512_set1_ps(kExpMin), in));
  const __m512 fn = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(kLog2e)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_fnmadd_ps(fn, _mm512_set1_ps(kLn2Hi), v);
  f = _mm512_fnmadd_ps(fn, _mm512_set1_ps(kLn2Lo), f);
  __m512 p = _mm512_set1_ps(kExpPoly[0]);
  for (int i = 1; i < 6; ++i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExpPoly[i]));
  const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(f, f), f), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(e, fn);
}

// The lanes l < count of a 16-lane block (none for count <= 0, all for count >= 16).
inline __mmask16 FirstLanes(int64_t count) {
  if (count >= 16) return 0xFFFF;
  if (count <= 0) return 0;
  return static_cast<__mmask16>((1u << count) - 1);
}

#endif  // QTRAIN_HAVE_AVX512_PATH

}  // namespace qtrain::kernels::cpu::simd

#endif  // QTRAIN_KERNELS_CPU_SIMD_H_
