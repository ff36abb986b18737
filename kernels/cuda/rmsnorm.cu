// RMSNorm with fp32 statistics, forward and backward.
//   x, out, dout, dx [rows, dim]; weight [dim]; rstd [rows] fp32; dweight [dim] fp32
//   forward:  one block per row (blocks loop when rows exceed the grid): rstd = 1/sqrt(mean(x^2) +
//   eps) (fixed-tree sum);
//             out = weight * (x * rstd)
//   backward: one block per row: dx += rstd * (dout*w - n * mean(dout*w*n)), n = x*rstd;
//             dweight: one thread per column adds dout*n over the rows in order
#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {
namespace {

template <typename T>
__global__ void RmsNormForwardKernel(const T* x, const T* weight, T* out, float* rstd, float eps,
                                     int64_t rows, int64_t dim) {
  __shared__ float scratch[kThreads];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // uniform across the block
    const T* xr = x + row * dim;
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < dim; j += kThreads) {
      const float v = math::ToFloat(xr[j]);
      sum += v * v;
    }
    const float s = math::RmsNormRstd(BlockSum(sum, scratch), static_cast<int>(dim), eps);
    if (threadIdx.x == 0) rstd[row] = s;
    T* yr = out + row * dim;
    for (int64_t j = threadIdx.x; j < dim; j += kThreads) {
      math::Store(math::RmsNormOut(math::ToFloat(xr[j]), math::ToFloat(weight[j]), s), yr[j]);
    }
  }
}

template <typename T>
__global__ void RmsNormDxKernel(const T* dout, const T* x, const T* weight, const float* rstd,
                                T* dx, int64_t rows, int64_t dim) {
  __shared__ float scratch[kThreads];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {  // uniform across the block
    const T* xr = x + row * dim;
    const T* gr = dout + row * dim;
    const float s = rstd[row];
    float dot = 0.0f;
    for (int64_t j = threadIdx.x; j < dim; j += kThreads) {
      dot += math::ToFloat(gr[j]) * math::ToFloat(weight[j]) * (math::ToFloat(xr[j]) * s);
    }
    const float mean_dot = BlockSum(dot, scratch) / static_cast<float>(dim);
    T* dxr = dx + row * dim;
    for (int64_t j = threadIdx.x; j < dim; j += kThreads) {
      const float d = math::RmsNormDx(math::ToFloat(gr[j]), math::ToFloat(xr[j]),
                                      math::ToFloat(weight[j]), s, mean_dot);
      math::Store(math::ToFloat(dxr[j]) + d, dxr[j]);
    }
  }
}

template <typename T>
__global__ void RmsNormDweightKernel(const T* dout, const T* x, const float* rstd, float* dweight,
                                     int64_t rows, int64_t dim) {
  const int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (j >= dim) return;
  float acc = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    acc += math::ToFloat(dout[r * dim + j]) * (math::ToFloat(x[r * dim + j]) * rstd[r]);
  }
  dweight[j] += acc;
}

// One block per row, up to the grid's limit; the kernels loop over the rest.
unsigned RowGrid(int64_t rows) {
  return static_cast<unsigned>(rows < 0x7fffffff ? rows : 0x7fffffff);
}

OpStatus CheckShape(const char* kernel, DType dtype, int64_t rows, int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckDType(kernel, dtype));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kernel, "rows", rows));
  if (dim <= 0 || dim > (int64_t{1} << 30)) {
    return OpStatus::Error(std::string(kernel) + ": dim must be in [1, 2^30], got " +
                           std::to_string(dim));
  }
  return OpStatus::Ok();
}

}  // namespace

OpStatus CanImplement(const RmsNormParams& p) {
  constexpr const char* kKernel = "RmsNormForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckShape(kKernel, p.dtype, p.rows, p.dim));
  if (!(p.eps >= 0.0f)) return OpStatus::Error("RmsNormForward: eps must be >= 0");
  if (p.rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "x", p.x));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "weight", p.weight));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "out", p.out));
  return CheckNotNull(kKernel, "rstd", p.rstd);
}

OpStatus RmsNormForward(const RmsNormParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.rows == 0) return OpStatus::Ok();
  return DispatchDType(p.dtype, "RmsNormForward", [&](auto tag) {
    using T = decltype(tag);
    RmsNormForwardKernel<<<RowGrid(p.rows), kThreads, 0, stream>>>(
        static_cast<const T*>(p.x), static_cast<const T*>(p.weight), static_cast<T*>(p.out), p.rstd,
        p.eps, p.rows, p.dim);
    return LaunchStatus("RmsNormForward");
  });
}

OpStatus CanImplement(const RmsNormBackwardParams& p) {
  constexpr const char* kKernel = "RmsNormBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckShape(kKernel, p.dtype, p.rows, p.dim));
  if (p.rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "dout", p.dout));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "x", p.x));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "weight", p.weight));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "rstd", p.rstd));
  if (p.dx != nullptr && (p.dx == p.dout || p.dx == p.x)) {
    return OpStatus::Error("RmsNormBackward: dx must not alias dout or x (it accumulates)");
  }
  return OpStatus::Ok();
}

OpStatus RmsNormBackward(const RmsNormBackwardParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.rows == 0) return OpStatus::Ok();
  return DispatchDType(p.dtype, "RmsNormBackward", [&](auto tag) {
    using T = decltype(tag);
    const T* dout = static_cast<const T*>(p.dout);
    const T* x = static_cast<const T*>(p.x);
    if (p.dx != nullptr) {
      RmsNormDxKernel<<<RowGrid(p.rows), kThreads, 0, stream>>>(
          dout, x, static_cast<const T*>(p.weight), p.rstd, static_cast<T*>(p.dx), p.rows, p.dim);
      QTRAIN_KERNEL_RETURN_IF_ERROR(LaunchStatus("RmsNormBackward (dx)"));
    }
    if (p.dweight != nullptr) {
      const unsigned blocks = static_cast<unsigned>((p.dim + kThreads - 1) / kThreads);
      RmsNormDweightKernel<<<blocks, kThreads, 0, stream>>>(dout, x, p.rstd, p.dweight, p.rows,
                                                            p.dim);
      QTRAIN_KERNEL_RETURN_IF_ERROR(LaunchStatus("RmsNormBackward (dweight)"));
    }
    return OpStatus::Ok();
  });
}

}  // namespace qtrain::kernels::cuda
