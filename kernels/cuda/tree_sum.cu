// TreeSumRows: out[i] = the TreeSum of rows[0][i], rows[1][i], ..., rows[count - 1][i].
//   rows [count][row_stride], out [n]
// One thread per element: each sums its column in the fixed order of TreeSumStrided, so the
// result does not depend on the launch shape.
#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {
namespace {

// A group's ranks; TreeSumStrided's stack holds 32 partials, far above this.
constexpr int kMaxRows = 1 << 20;

template <typename T>
__global__ void TreeSumRowsKernel(const T* rows, int64_t row_stride, int count, T* out,
                                  int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = math::TreeSumStrided(rows + i, row_stride, count);
  }
}

}  // namespace

OpStatus CanImplement(const TreeSumRowsParams& p) {
  constexpr const char* kKernel = "TreeSumRows";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "n", p.n));
  if (p.count < 1 || p.count > kMaxRows) {
    return OpStatus::Error(std::string(kKernel) + ": count must be in [1, " +
                           std::to_string(kMaxRows) + "], got " + std::to_string(p.count));
  }
  if (p.row_stride < p.n) {
    return OpStatus::Error(std::string(kKernel) + ": row_stride " + std::to_string(p.row_stride) +
                           " is less than n " + std::to_string(p.n));
  }
  if (p.dtype != SumDType::kFloat32 && p.dtype != SumDType::kFloat64) {
    return OpStatus::Error(std::string(kKernel) + ": dtype must be fp32 or fp64");
  }
  if (p.n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "rows", p.rows));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "out", p.out));
  // out may be the start of row 0 (each thread reads its column before writing it), but not
  // inside rows 1.. (another thread would read an element already overwritten).
  const size_t bytes = p.dtype == SumDType::kFloat64 ? sizeof(double) : sizeof(float);
  const auto* rows_begin = static_cast<const char*>(p.rows);
  const auto* rows_end = rows_begin + static_cast<size_t>(p.count) * p.row_stride * bytes;
  const auto* out_begin = static_cast<const char*>(p.out);
  const auto* out_end = out_begin + static_cast<size_t>(p.n) * bytes;
  if (out_begin != rows_begin && out_begin < rows_end && rows_begin < out_end) {
    return OpStatus::Error(std::string(kKernel) + ": out overlaps rows other than at row 0");
  }
  return OpStatus::Ok();
}

OpStatus TreeSumRows(const TreeSumRowsParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.n == 0) return OpStatus::Ok();
  if (p.dtype == SumDType::kFloat64) {
    TreeSumRowsKernel<<<GridFor(p.n), kThreads, 0, stream>>>(
        static_cast<const double*>(p.rows), p.row_stride, p.count, static_cast<double*>(p.out),
        p.n);
  } else {
    TreeSumRowsKernel<<<GridFor(p.n), kThreads, 0, stream>>>(
        static_cast<const float*>(p.rows), p.row_stride, p.count, static_cast<float*>(p.out),
        p.n);
  }
  return LaunchStatus("TreeSumRows");
}

}  // namespace qtrain::kernels::cuda
