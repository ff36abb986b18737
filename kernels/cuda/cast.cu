// Cast: fp32 <-> bf16 (round to nearest even), elementwise.
//   in [n] of in_dtype -> out [n] of out_dtype
#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {
namespace {

template <typename In, typename Out>
__global__ void CastKernel(const In* in, Out* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    math::Store(math::ToFloat(in[i]), out[i]);
  }
}

}  // namespace

OpStatus CanImplement(const CastParams& p) {
  constexpr const char* kKernel = "Cast";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "n", p.n));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckDType(kKernel, p.in_dtype));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckDType(kKernel, p.out_dtype));
  if (p.n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "in", p.in));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "out", p.out));
  if (p.in == p.out && p.in_dtype != p.out_dtype) {
    return OpStatus::Error("Cast: in place only without a dtype change");
  }
  return OpStatus::Ok();
}

OpStatus Cast(const CastParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.n == 0 || p.in == p.out) return OpStatus::Ok();
  return DispatchDType(p.in_dtype, "Cast", [&](auto in_tag) {
    using In = decltype(in_tag);
    return DispatchDType(p.out_dtype, "Cast", [&](auto out_tag) {
      using Out = decltype(out_tag);
      CastKernel<<<GridFor(p.n), kThreads, 0, stream>>>(static_cast<const In*>(p.in),
                                                        static_cast<Out*>(p.out), p.n);
      return LaunchStatus("Cast");
    });
  });
}

}  // namespace qtrain::kernels::cuda
