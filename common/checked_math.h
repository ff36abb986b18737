// Checked arithmetic for sizes that come from user input (job specs, model configs, file
// headers, flags). Sizes are combined only through these helpers, so a product or sum that does
// not fit in int64 is reported instead of wrapping into a negative count or a division by zero.
//
//   std::optional<int64_t> tokens = CheckedMul(seq_len, micro_batch);
//   if (!tokens) return absl::InvalidArgumentError("seq_len x micro_batch overflows int64");
//
// `CheckedProduct({a, b, c})` multiplies several factors; `CheckedSum` adds several terms.
// `CheckedDoubleToInt64` floors a finite double into int64 range (for positions x YaRN factor).
#ifndef QTRAIN_COMMON_CHECKED_MATH_H_
#define QTRAIN_COMMON_CHECKED_MATH_H_

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <optional>

namespace qtrain {

inline std::optional<int64_t> CheckedMul(int64_t a, int64_t b) {
  int64_t out;
  if (__builtin_mul_overflow(a, b, &out)) return std::nullopt;
  return out;
}

inline std::optional<int64_t> CheckedAdd(int64_t a, int64_t b) {
  int64_t out;
  if (__builtin_add_overflow(a, b, &out)) return std::nullopt;
  return out;
}

inline std::optional<int64_t> CheckedSub(int64_t a, int64_t b) {
  int64_t out;
  if (__builtin_sub_overflow(a, b, &out)) return std::nullopt;
  return out;
}

inline std::optional<int64_t> CheckedProduct(std::initializer_list<int64_t> factors) {
  int64_t out = 1;
  for (int64_t f : factors) {
    if (__builtin_mul_overflow(out, f, &out)) return std::nullopt;
  }
  return out;
}

inline std::optional<int64_t> CheckedSum(std::initializer_list<int64_t> terms) {
  int64_t out = 0;
  for (int64_t t : terms) {
    if (__builtin_add_overflow(out, t, &out)) return std::nullopt;
  }
  return out;
}

// Size in bytes of `count` elements of `element_size` bytes, as size_t; nullopt when negative
// or too large for this machine's address space.
inline std::optional<size_t> CheckedBytes(int64_t count, size_t element_size) {
  if (count < 0) return std::nullopt;
  size_t out;
  if (__builtin_mul_overflow(static_cast<size_t>(count), element_size, &out)) return std::nullopt;
  return out;
}

// floor(v) as int64 when v is finite and floor(v) fits; nullopt otherwise. (A plain cast of an
// out-of-range double is undefined behaviour.)
inline std::optional<int64_t> CheckedDoubleToInt64(double v) {
  if (!std::isfinite(v)) return std::nullopt;
  const double f = std::floor(v);
  // 2^63 is exactly representable; every double below it converts without overflow.
  if (f < -9223372036854775808.0 || f >= 9223372036854775808.0) return std::nullopt;
  return static_cast<int64_t>(f);
}

}  // namespace qtrain

#endif  // QTRAIN_COMMON_CHECKED_MATH_H_
