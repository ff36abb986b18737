// SwiGLU: out = silu(gate) * up; backward dgate += ..., dup += ... (element_math.h).
//   gate, up, out, dout, dgate, dup [n]
#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {
namespace {

template <typename T>
__global__ void SwigluForwardKernel(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    math::Store(math::SwigluForward(math::ToFloat(gate[i]), math::ToFloat(up[i])), out[i]);
  }
}

template <typename T>
__global__ void SwigluBackwardKernel(const T* dout, const T* gate, const T* up, T* dgate, T* dup,
                                     int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const math::SwigluGrads g =
        math::SwigluBackward(math::ToFloat(dout[i]), math::ToFloat(gate[i]), math::ToFloat(up[i]));
    if (dgate != nullptr) math::Store(math::ToFloat(dgate[i]) + g.dgate, dgate[i]);
    if (dup != nullptr) math::Store(math::ToFloat(dup[i]) + g.dup, dup[i]);
  }
}

}  // namespace

OpStatus CanImplement(const SwigluParams& p) {
  constexpr const char* kKernel = "SwigluForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "n", p.n));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckDType(kKernel, p.dtype));
  if (p.n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "gate", p.gate));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "up", p.up));
  return CheckNotNull(kKernel, "out", p.out);
}

OpStatus SwigluForward(const SwigluParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.n == 0) return OpStatus::Ok();
  return DispatchDType(p.dtype, "SwigluForward", [&](auto tag) {
    using T = decltype(tag);
    SwigluForwardKernel<<<GridFor(p.n), kThreads, 0, stream>>>(
        static_cast<const T*>(p.gate), static_cast<const T*>(p.up), static_cast<T*>(p.out), p.n);
    return LaunchStatus("SwigluForward");
  });
}

OpStatus CanImplement(const SwigluBackwardParams& p) {
  constexpr const char* kKernel = "SwigluBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "n", p.n));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckDType(kKernel, p.dtype));
  if (p.n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "dout", p.dout));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "gate", p.gate));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "up", p.up));
  if (p.dgate != nullptr && p.dgate == p.dup) {
    return OpStatus::Error("SwigluBackward: dgate and dup must be different buffers");
  }
  return OpStatus::Ok();
}

OpStatus SwigluBackward(const SwigluBackwardParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.n == 0 || (p.dgate == nullptr && p.dup == nullptr)) return OpStatus::Ok();
  return DispatchDType(p.dtype, "SwigluBackward", [&](auto tag) {
    using T = decltype(tag);
    SwigluBackwardKernel<<<GridFor(p.n), kThreads, 0, stream>>>(
        static_cast<const T*>(p.dout), static_cast<const T*>(p.gate), static_cast<const T*>(p.up),
        static_cast<T*>(p.dgate), static_cast<T*>(p.dup), p.n);
    return LaunchStatus("SwigluBackward");
  });
}

}  // namespace qtrain::kernels::cuda
