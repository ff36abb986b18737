// Residual add: out = a + b; backward da += dout, db += dout.
//   a, b, out, dout, da, db [n]
#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {
namespace {

template <typename T>
__global__ void ResidualForwardKernel(const T* a, const T* b, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    math::Store(math::ToFloat(a[i]) + math::ToFloat(b[i]), out[i]);
  }
}

template <typename T>
__global__ void ResidualBackwardKernel(const T* dout, T* da, T* db, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float d = math::ToFloat(dout[i]);
    if (da != nullptr) math::Store(math::ToFloat(da[i]) + d, da[i]);
    // da == db: both adds land (sequentially, in this thread).
    if (db != nullptr) math::Store(math::ToFloat(db[i]) + d, db[i]);
  }
}

}  // namespace

OpStatus CanImplement(const ResidualParams& p) {
  constexpr const char* kKernel = "ResidualForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "n", p.n));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckDType(kKernel, p.dtype));
  if (p.n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "a", p.a));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "b", p.b));
  return CheckNotNull(kKernel, "out", p.out);
}

OpStatus ResidualForward(const ResidualParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.n == 0) return OpStatus::Ok();
  return DispatchDType(p.dtype, "ResidualForward", [&](auto tag) {
    using T = decltype(tag);
    ResidualForwardKernel<<<GridFor(p.n), kThreads, 0, stream>>>(
        static_cast<const T*>(p.a), static_cast<const T*>(p.b), static_cast<T*>(p.out), p.n);
    return LaunchStatus("ResidualForward");
  });
}

OpStatus CanImplement(const ResidualBackwardParams& p) {
  constexpr const char* kKernel = "ResidualBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "n", p.n));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckDType(kKernel, p.dtype));
  if (p.n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "dout", p.dout));
  if (p.da == p.dout || p.db == p.dout) {
    return OpStatus::Error("ResidualBackward: da and db must not alias dout");
  }
  return OpStatus::Ok();
}

OpStatus ResidualBackward(const ResidualBackwardParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.n == 0 || (p.da == nullptr && p.db == nullptr)) return OpStatus::Ok();
  return DispatchDType(p.dtype, "ResidualBackward", [&](auto tag) {
    using T = decltype(tag);
    ResidualBackwardKernel<<<GridFor(p.n), kThreads, 0, stream>>>(
        static_cast<const T*>(p.dout), static_cast<T*>(p.da), static_cast<T*>(p.db), p.n);
    return LaunchStatus("ResidualBackward");
  });
}

}  // namespace qtrain::kernels::cuda
