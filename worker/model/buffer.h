// Backend memory owned by the model: a typed array allocated with kernels::Backend::Alloc
// (host memory on the CPU backend, device memory on CUDA) and freed on destruction; and the
// allocation helpers every model, trainer and optimizer buffer goes through, so that a size that
// overflows or does not fit in memory is RESOURCE_EXHAUSTED naming the buffer and its bytes,
// never a std::bad_alloc escaping or a wrapped size.
#ifndef QTRAIN_WORKER_MODEL_BUFFER_H_
#define QTRAIN_WORKER_MODEL_BUFFER_H_

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/checked_math.h"
#include "common/status_macros.h"
#include "kernels/ops.h"

namespace qtrain::model {

// Converts a kernel error into a Status (the kernels name the op and the parameter).
inline absl::Status OpToStatus(const kernels::OpStatus& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::InvalidArgumentError(status.message());
}

#define QTRAIN_RETURN_IF_OP_ERROR(expr) QTRAIN_RETURN_IF_ERROR(::qtrain::model::OpToStatus(expr))

// "1234 bytes (1.2 KiB)".
inline std::string DescribeBytes(size_t bytes) {
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  std::string out = absl::StrCat(bytes, " bytes");
  if (bytes < 1024) return out;
  double value = static_cast<double>(bytes);
  int unit = -1;
  while (value >= 1024 && unit + 1 < 6) {
    value /= 1024;
    ++unit;
  }
  return absl::StrCat(out, absl::StrFormat(" (%.1f %s)", value, kUnits[unit]));
}

// RESOURCE_EXHAUSTED for `what` (e.g. "model parameters"): `bytes` that could not be allocated
// in `where`, or, without `bytes`, a size too large to represent.
inline absl::Status AllocationError(absl::string_view what, std::optional<size_t> bytes,
                                    absl::string_view where = "host memory") {
  if (!bytes.has_value()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate ", what, ": its size overflows this machine's address space"));
  }
  return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", what, ": ",
                                                   DescribeBytes(*bytes), " in ", where,
                                                   " (out of memory or over the memory limit)"));
}

// Bytes of an array of T with the product of `dims` elements; RESOURCE_EXHAUSTED naming `what`
// when a dimension is negative or the product overflows.
template <typename T>
absl::StatusOr<size_t> ArrayBytes(std::initializer_list<int64_t> dims, absl::string_view what) {
  for (int64_t d : dims) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot allocate ", what, ": negative dimension ", d));
    }
  }
  const std::optional<int64_t> count = CheckedProduct(dims);
  std::optional<size_t> bytes;
  if (count.has_value()) bytes = CheckedBytes(*count, sizeof(T));
  // No object may be larger than PTRDIFF_MAX; sizes close to SIZE_MAX would also wrap when an
  // allocator rounds them up to its alignment.
  if (!bytes.has_value() || *bytes > static_cast<size_t>(PTRDIFF_MAX)) {
    return AllocationError(what, std::nullopt);
  }
  return *bytes;
}

// Runs `fn` (returning a Status or StatusOr) that allocates through the standard library, and
// turns std::bad_alloc and std::length_error into RESOURCE_EXHAUSTED naming `what`. For
// allocations in code that reports failure by throwing (containers, file readers).
template <typename Fn>
auto CatchAllocationFailure(absl::string_view what, std::optional<size_t> bytes, Fn&& fn)
    -> decltype(fn()) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return AllocationError(what, bytes);
  } catch (const std::length_error&) {
    return AllocationError(what, std::nullopt);
  }
}

// Resizes a host vector to the product of `dims` elements, new ones set to `value`.
template <typename T>
absl::Status ResizeHostVector(std::vector<T>& v, std::initializer_list<int64_t> dims,
                              absl::string_view what, const T& value = T()) {
  auto bytes = ArrayBytes<T>(dims, what);
  if (!bytes.ok()) return bytes.status();
  const size_t count = *bytes / sizeof(T);
  return CatchAllocationFailure(what, *bytes, [&] {
    v.resize(count, value);
    return absl::OkStatus();
  });
}

// A host vector of the product of `dims` elements set to `value`.
template <typename T>
absl::StatusOr<std::vector<T>> MakeHostVector(std::initializer_list<int64_t> dims,
                                              absl::string_view what, const T& value = T()) {
  std::vector<T> v;
  absl::Status status = ResizeHostVector(v, dims, what, value);
  if (!status.ok()) return status;
  return v;
}

// A copy of `src` (host memory).
template <typename T>
absl::StatusOr<std::vector<T>> CopyHostVector(const std::vector<T>& src, absl::string_view what) {
  return CatchAllocationFailure(what, src.size() * sizeof(T),
                                [&]() -> absl::StatusOr<std::vector<T>> { return src; });
}

template <typename T>
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      Reset();
      backend_ = std::exchange(other.backend_, nullptr);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  ~Buffer() { Reset(); }

  // (Re)allocates the product of `dims` elements (contents undefined); a no-op when the size is
  // unchanged. `what` names the buffer in errors. On failure the buffer is empty.
  absl::Status Resize(kernels::Backend& backend, std::initializer_list<int64_t> dims,
                      absl::string_view what) {
    auto bytes = ArrayBytes<T>(dims, what);
    if (!bytes.ok()) {
      Reset();
      return bytes.status();
    }
    const auto size = static_cast<int64_t>(*bytes / sizeof(T));
    if (size == size_ && backend_ == &backend) return absl::OkStatus();
    Reset();
    if (size == 0) return absl::OkStatus();
    void* p = nullptr;
    try {
      p = backend.Alloc(*bytes);
    } catch (const std::bad_alloc&) {
      p = nullptr;
    }
    if (p == nullptr) {
      return AllocationError(what, *bytes,
                             absl::StrCat(std::string(backend.name()), " backend memory"));
    }
    backend_ = &backend;
    data_ = static_cast<T*>(p);
    size_ = size;
    return absl::OkStatus();
  }
  void Reset() {
    if (backend_ != nullptr) backend_->Free(data_);
    backend_ = nullptr;
    data_ = nullptr;
    size_ = 0;
  }

  T* get() { return data_; }
  const T* get() const { return data_; }
  int64_t size() const { return size_; }

 private:
  kernels::Backend* backend_ = nullptr;
  T* data_ = nullptr;
  int64_t size_ = 0;
};

// Backend memory of one dtype chosen at run time (fp32 or bf16 activations and weights): a
// Buffer of bytes that hands out typed tensors (kernels/tensor.h).
class TensorBuffer {
 public:
  // (Re)allocates the product of `dims` elements of `dtype` (contents undefined); a no-op when
  // the size and dtype are unchanged. On failure the buffer is empty.
  absl::Status Resize(kernels::Backend& backend, kernels::DType dtype,
                      std::initializer_list<int64_t> dims, absl::string_view what) {
    // The element size decides the bytes; Buffer's own checks (negative or overflowing sizes).
    absl::StatusOr<size_t> bytes = dtype == kernels::DType::kFloat32
                                       ? ArrayBytes<float>(dims, what)
                                       : ArrayBytes<kernels::Bf16>(dims, what);
    absl::Status status = bytes.status();
    if (status.ok()) status = raw_.Resize(backend, {static_cast<int64_t>(*bytes)}, what);
    if (!status.ok()) {
      Reset();
      return status;
    }
    dtype_ = dtype;
    size_ = static_cast<int64_t>(*bytes / kernels::DTypeBytes(dtype));
    return absl::OkStatus();
  }
  void Reset() {
    raw_.Reset();
    size_ = 0;
  }

  kernels::Tensor get() { return {raw_.get(), dtype_}; }
  kernels::ConstTensor get() const { return {raw_.get(), dtype_}; }
  void* data() { return raw_.get(); }
  const void* data() const { return raw_.get(); }
  int64_t size() const { return size_; }  // elements
  size_t bytes() const { return static_cast<size_t>(raw_.size()); }
  kernels::DType dtype() const { return dtype_; }

 private:
  Buffer<std::byte> raw_;
  kernels::DType dtype_ = kernels::DType::kFloat32;
  int64_t size_ = 0;
};

// dst[0 .. n) = src[0 .. n), two tensors of one dtype in backend memory.
inline absl::Status CopyTensor(kernels::Backend& backend, kernels::Tensor dst,
                               kernels::ConstTensor src, int64_t n) {
  if (dst.dtype() != src.dtype()) {
    return absl::InternalError(absl::StrCat("CopyTensor: ", kernels::DTypeName(src.dtype()),
                                            " into ", kernels::DTypeName(dst.dtype())));
  }
  return OpToStatus(
      backend.CopyWithinBackend(dst.data(), src.data(), static_cast<size_t>(n) * src.bytes()));
}

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_BUFFER_H_
