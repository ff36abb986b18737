// Deterministic sum of squares over many fp32 tensors (the global gradient norm's square).
//   Pass 1: block b of tensor t sums x^2 over its kSumSquaresBlock elements in double, in a
//           fixed tree, into partials[offset_t + b].
//   Pass 2: one block adds the partials in index order into *sum_squares.
// The grouping depends only on the sizes, never on the GPU, so the bits are the same everywhere.
// BlockSumsOfSquares is pass 1 alone, with the caller's block size, one sum per block.
#include <string>

#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {
namespace {

int64_t BlocksOf(int64_t n) { return (n + kSumSquaresBlock - 1) / kSumSquaresBlock; }

// partials[b] = sum of x[i]^2 over block b of `block` elements.
__global__ void PartialSumSquaresKernel(const float* x, int64_t n, int64_t block,
                                        double* partials) {
  __shared__ double scratch[kThreads];
  const int64_t begin = blockIdx.x * block;
  const int64_t end = begin + block < n ? begin + block : n;
  double acc = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    const double v = x[i];
    acc += v * v;
  }
  const double sum = BlockSum(acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// One block: thread k adds partials k, k + kThreads, ... in order; then the fixed tree.
__global__ void FinalSumKernel(const double* partials, int64_t count, double* out) {
  __shared__ double scratch[kThreads];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kThreads) acc += partials[i];
  const double sum = BlockSum(acc, scratch);
  if (threadIdx.x == 0) *out = sum;
}

}  // namespace

int64_t SumSquaresScratch(const int64_t* sizes, int64_t count) {
  int64_t total = 0;
  for (int64_t t = 0; t < count; ++t) total += sizes[t] > 0 ? BlocksOf(sizes[t]) : 0;
  return total;
}

OpStatus CanImplement(const SumSquaresParams& p) {
  constexpr const char* kKernel = "SumOfSquares";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "count", p.count));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "sum_squares", p.sum_squares));
  if (p.count == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "tensors", p.tensors));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "sizes", p.sizes));
  for (int64_t t = 0; t < p.count; ++t) {
    if (p.sizes[t] < 0 || (p.sizes[t] > 0 && p.tensors[t] == nullptr)) {
      return OpStatus::Error("SumOfSquares: tensor " + std::to_string(t) +
                             " has a negative size or is null");
    }
    if (BlocksOf(p.sizes[t]) > 0x7fffffff) {
      return OpStatus::Error("SumOfSquares: tensor " + std::to_string(t) + " is too large");
    }
  }
  const int64_t needed = SumSquaresScratch(p.sizes, p.count);
  if (needed > 0) QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "partials", p.partials));
  if (p.partials_capacity < needed) {
    return OpStatus::Error("SumOfSquares: partials holds " + std::to_string(p.partials_capacity) +
                           " doubles, " + std::to_string(needed) + " needed");
  }
  return OpStatus::Ok();
}

OpStatus SumOfSquares(const SumSquaresParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  int64_t offset = 0;
  for (int64_t t = 0; t < p.count; ++t) {
    const int64_t blocks = BlocksOf(p.sizes[t]);
    if (blocks == 0) continue;
    PartialSumSquaresKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        p.tensors[t], p.sizes[t], kSumSquaresBlock, p.partials + offset);
    QTRAIN_KERNEL_RETURN_IF_ERROR(LaunchStatus("SumOfSquares (partials)"));
    offset += blocks;
  }
  FinalSumKernel<<<1, kThreads, 0, stream>>>(p.partials, offset, p.sum_squares);
  return LaunchStatus("SumOfSquares (final)");
}

OpStatus CanImplement(const BlockSumSquaresParams& p) {
  constexpr const char* kKernel = "BlockSumsOfSquares";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "n", p.n));
  if (p.block_elements <= 0) {
    return OpStatus::Error("BlockSumsOfSquares: block_elements must be > 0, not " +
                           std::to_string(p.block_elements));
  }
  if (p.n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "x", p.x));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "sums", p.sums));
  if ((p.n + p.block_elements - 1) / p.block_elements > 0x7fffffff) {
    return OpStatus::Error("BlockSumsOfSquares: too many blocks for one grid");
  }
  return OpStatus::Ok();
}

OpStatus BlockSumsOfSquares(const BlockSumSquaresParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.n == 0) return OpStatus::Ok();
  const int64_t blocks = (p.n + p.block_elements - 1) / p.block_elements;
  PartialSumSquaresKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      p.x, p.n, p.block_elements, p.sums);
  return LaunchStatus("BlockSumsOfSquares");
}

}  // namespace qtrain::kernels::cuda
