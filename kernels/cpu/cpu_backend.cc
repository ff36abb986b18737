// Memory and elementwise utilities of the CPU backend, and the process-wide instance.
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/parallel.h"
#include "kernels/cpu/validate.h"

namespace qtrain::kernels {

Backend& CpuBackend() {
  static cpu::CpuBackendImpl* const backend = new cpu::CpuBackendImpl();
  return *backend;
}

namespace cpu {
namespace {
constexpr size_t kAlignment = 64;  // a cache line; also enough for AVX-512 loads
}  // namespace

void* CpuBackendImpl::Alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  // Near SIZE_MAX the rounding would wrap to a tiny size: fail as an out-of-memory instead.
  if (bytes > SIZE_MAX - kAlignment) return nullptr;
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  return std::aligned_alloc(kAlignment, rounded);
}

void CpuBackendImpl::Free(void* ptr) { std::free(ptr); }

OpStatus CpuBackendImpl::CopyHostToBackend(void* dst, const void* src, size_t bytes) {
  return CopyWithinBackend(dst, src, bytes);
}

OpStatus CpuBackendImpl::CopyBackendToHost(void* dst, const void* src, size_t bytes) {
  return CopyWithinBackend(dst, src, bytes);
}

OpStatus CpuBackendImpl::CopyWithinBackend(void* dst, const void* src, size_t bytes) {
  if (bytes == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("Copy", "dst", dst));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("Copy", "src", src));
  std::memmove(dst, src, bytes);
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::FillF32(float* x, int64_t n, float value) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative("Fill", "n", n));
  if (n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("Fill", "x", x));
  // Zeros (the common case: gradient buffers) through memset, which uses the widest stores.
  const bool zero = value == 0.0f && !std::signbit(value);
  constexpr int64_t kBlock = 1 << 16;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (WorthParallel(n))
  for (int64_t blk = 0; blk < blocks; ++blk) {
    float* begin = x + blk * kBlock;
    const int64_t len = std::min(kBlock, n - blk * kBlock);
    if (zero) {
      std::memset(begin, 0, len * sizeof(float));
    } else {
      std::fill(begin, begin + len, value);
    }
  }
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::ScaleF32(float* x, int64_t n, float alpha) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative("Scale", "n", n));
  if (n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("Scale", "x", x));
#pragma omp parallel for schedule(static) if (WorthParallel(n))
  for (int64_t i = 0; i < n; ++i) x[i] *= alpha;
  return OpStatus::Ok();
}

}  // namespace cpu
}  // namespace qtrain::kernels
