// Fill and Scale of fp32 buffers (zeroing gradients, averaging them).
//   x [n]: x[i] = value; x[i] *= alpha
#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {
namespace {

__global__ void FillKernel(float* x, int64_t n, float value) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] = value;
  }
}

__global__ void ScaleKernel(float* x, int64_t n, float alpha) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    x[i] *= alpha;
  }
}

}  // namespace

OpStatus CanImplement(const FillParams& p) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN("Fill", "n", p.n));
  if (p.n == 0) return OpStatus::Ok();
  return CheckNotNull("Fill", "x", p.x);
}

OpStatus Fill(const FillParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.n == 0) return OpStatus::Ok();
  FillKernel<<<GridFor(p.n), kThreads, 0, stream>>>(p.x, p.n, p.value);
  return LaunchStatus("Fill");
}

OpStatus CanImplement(const ScaleParams& p) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN("Scale", "n", p.n));
  if (p.n == 0) return OpStatus::Ok();
  return CheckNotNull("Scale", "x", p.x);
}

OpStatus Scale(const ScaleParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.n == 0) return OpStatus::Ok();
  ScaleKernel<<<GridFor(p.n), kThreads, 0, stream>>>(p.x, p.n, p.alpha);
  return LaunchStatus("Scale");
}

}  // namespace qtrain::kernels::cuda
