// Typed pointers for the op interface (kernels/ops.h): a pointer to backend memory plus the
// dtype of its elements. The shapes stay in the ops' arguments, as before; what a Tensor adds is
// what the elements are, so that one op serves fp32 and bf16 storage and the model code stays
// one path for every precision.
//
// A `float*` converts to an fp32 Tensor, a `Bf16*` to a bf16 one and an `F16*` to an fp16 one,
// implicitly, so call sites
// that pass plain fp32 buffers read as before. Plain C++17 without CUDA headers: the CUDA
// kernels' headers share DType with it.
#ifndef QTRAIN_KERNELS_TENSOR_H_
#define QTRAIN_KERNELS_TENSOR_H_

#include <cstddef>
#include <cstdint>

namespace qtrain::kernels {

// Storage types of activations and weights. The arithmetic is fp32 for all: bf16 and fp16
// elements are widened on load and rounded to nearest even on store.
enum class DType : uint8_t { kFloat32, kBfloat16, kFloat16 };

inline constexpr const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "fp32";
    case DType::kBfloat16:
      return "bf16";
    case DType::kFloat16:
      return "fp16";
  }
  return "unknown";
}
inline constexpr size_t DTypeBytes(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kBfloat16:
    case DType::kFloat16:
      return 2;
  }
  return 0;
}

// One bf16 element: the upper 16 bits of an fp32 (kernels/cuda/element_math.h converts).
struct Bf16 {
  uint16_t bits;
};

// One IEEE binary16 element (fp16: 5 exponent bits, 10 mantissa bits, largest finite 65504).
struct F16 {
  uint16_t bits;
};

class ConstTensor {
 public:
  constexpr ConstTensor() = default;
  constexpr ConstTensor(std::nullptr_t) {}  // NOLINT: a null (absent) tensor
  constexpr ConstTensor(const float* data) : data_(data), dtype_(DType::kFloat32) {}  // NOLINT
  constexpr ConstTensor(const Bf16* data) : data_(data), dtype_(DType::kBfloat16) {}  // NOLINT
  constexpr ConstTensor(const F16* data) : data_(data), dtype_(DType::kFloat16) {}    // NOLINT
  constexpr ConstTensor(const void* data, DType dtype) : data_(data), dtype_(dtype) {}

  const void* data() const { return data_; }
  DType dtype() const { return dtype_; }
  bool is_null() const { return data_ == nullptr; }
  bool is_f32() const { return dtype_ == DType::kFloat32; }
  // The element pointer of an fp32 (bf16) tensor; the caller has checked the dtype.
  const float* f32() const { return static_cast<const float*>(data_); }
  const Bf16* bf16() const { return static_cast<const Bf16*>(data_); }
  const F16* f16() const { return static_cast<const F16*>(data_); }
  // The tensor starting `elements` elements further on (a row, a chunk). Null stays null.
  ConstTensor operator+(int64_t elements) const {
    if (data_ == nullptr) return *this;
    return {static_cast<const std::byte*>(data_) + elements * static_cast<int64_t>(bytes()),
            dtype_};
  }
  size_t bytes() const { return DTypeBytes(dtype_); }

 private:
  const void* data_ = nullptr;
  DType dtype_ = DType::kFloat32;
};

class Tensor {
 public:
  constexpr Tensor() = default;
  constexpr Tensor(std::nullptr_t) {}                                      // NOLINT
  constexpr Tensor(float* data) : data_(data), dtype_(DType::kFloat32) {}  // NOLINT
  constexpr Tensor(Bf16* data) : data_(data), dtype_(DType::kBfloat16) {}  // NOLINT
  constexpr Tensor(F16* data) : data_(data), dtype_(DType::kFloat16) {}    // NOLINT
  constexpr Tensor(void* data, DType dtype) : data_(data), dtype_(dtype) {}

  void* data() const { return data_; }
  DType dtype() const { return dtype_; }
  bool is_null() const { return data_ == nullptr; }
  bool is_f32() const { return dtype_ == DType::kFloat32; }
  float* f32() const { return static_cast<float*>(data_); }
  Bf16* bf16() const { return static_cast<Bf16*>(data_); }
  F16* f16() const { return static_cast<F16*>(data_); }
  Tensor operator+(int64_t elements) const {
    if (data_ == nullptr) return *this;
    return {static_cast<std::byte*>(data_) + elements * static_cast<int64_t>(bytes()), dtype_};
  }
  size_t bytes() const { return DTypeBytes(dtype_); }
  operator ConstTensor() const { return {data_, dtype_}; }  // NOLINT

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::kFloat32;
};

}  // namespace qtrain::kernels

#endif  // QTRAIN_KERNELS_TENSOR_H_
