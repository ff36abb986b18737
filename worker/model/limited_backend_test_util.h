// Test-only backend: the CPU backend with a cap on the memory it hands out, so that tests can
// make any allocation fail (and then succeed again) without exhausting the machine.
#ifndef QTRAIN_WORKER_MODEL_LIMITED_BACKEND_TEST_UTIL_H_
#define QTRAIN_WORKER_MODEL_LIMITED_BACKEND_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <string_view>

#include "kernels/forwarding_backend.h"
#include "kernels/ops.h"

namespace qtrain::model {

class LimitedBackend final : public kernels::ForwardingBackend {
 public:
  explicit LimitedBackend(kernels::Backend& inner = kernels::CpuBackend())
      : ForwardingBackend(inner) {}
  ~LimitedBackend() override = default;

  // Alloc fails (returns nullptr) when it would take the bytes in use above `limit`.
  void set_limit(size_t limit) { limit_ = limit; }
  void remove_limit() { limit_ = std::numeric_limits<size_t>::max(); }
  size_t bytes_in_use() const { return in_use_; }
  int64_t failed_allocations() const { return failed_; }

  void* Alloc(size_t bytes) override {
    if (bytes > limit_ || in_use_ > limit_ - bytes) {
      ++failed_;
      return nullptr;
    }
    void* p = inner().Alloc(bytes);
    if (p != nullptr) {
      sizes_[p] = bytes;
      in_use_ += bytes;
    }
    return p;
  }
  void Free(void* ptr) override {
    if (auto it = sizes_.find(ptr); it != sizes_.end()) {
      in_use_ -= it->second;
      sizes_.erase(it);
    }
    inner().Free(ptr);
  }

 private:
  size_t limit_ = std::numeric_limits<size_t>::max();
  size_t in_use_ = 0;
  int64_t failed_ = 0;
  std::map<void*, size_t> sizes_;
};

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_LIMITED_BACKEND_TEST_UTIL_H_
