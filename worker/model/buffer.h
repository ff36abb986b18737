// Backend memory owned by the model: a typed array allocated with kernels::Backend::Alloc
// (host memory on the CPU backend, device memory on CUDA) and freed on destruction.
#ifndef QTRAIN_WORKER_MODEL_BUFFER_H_
#define QTRAIN_WORKER_MODEL_BUFFER_H_

#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/ops.h"

namespace qtrain::model {

// Converts a kernel error into a Status (the kernels name the op and the parameter).
inline absl::Status OpToStatus(const kernels::OpStatus& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::InvalidArgumentError(status.message());
}

#define QTRAIN_RETURN_IF_OP_ERROR(expr) QTRAIN_RETURN_IF_ERROR(::qtrain::model::OpToStatus(expr))

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

  // (Re)allocates `size` elements (contents undefined); a no-op when the size is unchanged.
  absl::Status Resize(kernels::Backend& backend, int64_t size) {
    if (size == size_ && backend_ == &backend) return absl::OkStatus();
    Reset();
    if (size == 0) return absl::OkStatus();
    void* p = backend.Alloc(static_cast<size_t>(size) * sizeof(T));
    if (p == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ",
                                                       size * static_cast<int64_t>(sizeof(T)),
                                                       " bytes on ", std::string(backend.name())));
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

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_BUFFER_H_
