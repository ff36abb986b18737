// Embedding, forward (gather) and backward (deterministic scatter-add through host buckets).
//   ids [rows]; table [vocab, dim]; out, dout [rows, dim]; dtable [vocab, dim] fp32
//   forward:  out[r, :] = table[ids[r], :] (NaN for an id outside [0, vocab))
//   backward: bucket b (tokens of id bucket_ids[b], ascending rows): one thread per column adds
//             dout[r, j] into dtable[id, j] in row order, from the value already there
#include <algorithm>
#include <numeric>
#include <string>

#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {
namespace {

template <typename T>
__global__ void EmbeddingForwardKernel(const int32_t* ids, const T* table, T* out, int64_t rows,
                                       int64_t vocab, int64_t dim) {
  const int64_t n = rows * dim;
  for (int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; k < n;
       k += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = k / dim;
    const int64_t j = k % dim;
    const int64_t id = ids[r];
    math::Store(id >= 0 && id < vocab ? math::ToFloat(table[id * dim + j]) : NAN, out[k]);
  }
}

// grid.x: buckets (looped past the grid's limit); grid.y * blockDim.x: columns.
template <typename T>
__global__ void EmbeddingBackwardKernel(const T* dout, float* dtable, const int32_t* order,
                                        const int32_t* starts, const int32_t* bucket_ids,
                                        int64_t buckets, int64_t dim) {
  const int64_t j = blockIdx.y * int64_t{blockDim.x} + threadIdx.x;
  if (j >= dim) return;
  for (int64_t b = blockIdx.x; b < buckets; b += gridDim.x) {
    float* dst = dtable + int64_t{bucket_ids[b]} * dim + j;
    float acc = *dst;
    for (int32_t k = starts[b]; k < starts[b + 1]; ++k) {
      acc += math::ToFloat(dout[int64_t{order[k]} * dim + j]);
    }
    *dst = acc;
  }
}

OpStatus CheckSizes(const char* kernel, DType dtype, int64_t rows, int64_t vocab, int64_t dim) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckDType(kernel, dtype));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kernel, "rows", rows));
  if (vocab <= 0 || dim <= 0) {
    return OpStatus::Error(std::string(kernel) + ": vocab and dim must be > 0");
  }
  if (rows > 0x7fffffff || vocab > 0x7fffffff) {
    return OpStatus::Error(std::string(kernel) + ": rows and vocab must fit in int32");
  }
  return OpStatus::Ok();
}

}  // namespace

OpStatus MakeEmbeddingBuckets(const int32_t* ids, int64_t rows, int64_t vocab,
                              EmbeddingBuckets* buckets) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(
      CheckSizes("MakeEmbeddingBuckets", DType::kFloat32, rows, vocab, 1));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("MakeEmbeddingBuckets", "buckets", buckets));
  if (rows > 0) QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("MakeEmbeddingBuckets", "ids", ids));
  for (int64_t r = 0; r < rows; ++r) {
    if (ids[r] < 0 || ids[r] >= vocab) {
      return OpStatus::Error("MakeEmbeddingBuckets: id " + std::to_string(ids[r]) + " at row " +
                             std::to_string(r) + " is outside [0, " + std::to_string(vocab) + ")");
    }
  }
  buckets->order.resize(rows);
  std::iota(buckets->order.begin(), buckets->order.end(), 0);
  std::stable_sort(buckets->order.begin(), buckets->order.end(),
                   [ids](int32_t a, int32_t b) { return ids[a] < ids[b]; });
  buckets->starts.clear();
  buckets->ids.clear();
  for (int64_t k = 0; k < rows; ++k) {
    const int32_t id = ids[buckets->order[k]];
    if (buckets->ids.empty() || buckets->ids.back() != id) {
      buckets->ids.push_back(id);
      buckets->starts.push_back(static_cast<int32_t>(k));
    }
  }
  buckets->starts.push_back(static_cast<int32_t>(rows));
  return OpStatus::Ok();
}

OpStatus CanImplement(const EmbeddingParams& p) {
  constexpr const char* kKernel = "EmbeddingForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckSizes(kKernel, p.dtype, p.rows, p.vocab, p.dim));
  if (p.rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "ids", p.ids));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "table", p.table));
  return CheckNotNull(kKernel, "out", p.out);
}

OpStatus EmbeddingForward(const EmbeddingParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.rows == 0) return OpStatus::Ok();
  return DispatchDType(p.dtype, "EmbeddingForward", [&](auto tag) {
    using T = decltype(tag);
    EmbeddingForwardKernel<<<GridFor(p.rows * p.dim), kThreads, 0, stream>>>(
        p.ids, static_cast<const T*>(p.table), static_cast<T*>(p.out), p.rows, p.vocab, p.dim);
    return LaunchStatus("EmbeddingForward");
  });
}

OpStatus CanImplement(const EmbeddingBackwardParams& p) {
  constexpr const char* kKernel = "EmbeddingBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckSizes(kKernel, p.dtype, p.rows, p.vocab, p.dim));
  if (p.buckets < 0 || p.buckets > p.rows || (p.rows > 0 && p.buckets == 0)) {
    return OpStatus::Error("EmbeddingBackward: buckets must be in [1, rows] (got " +
                           std::to_string(p.buckets) + " for " + std::to_string(p.rows) + " rows)");
  }
  if (p.rows == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "dout", p.dout));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "dtable", p.dtable));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "order", p.order));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "starts", p.starts));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "bucket_ids", p.bucket_ids));
  const int64_t column_blocks = (p.dim + kThreads - 1) / kThreads;
  if (column_blocks > 65535) return OpStatus::Error("EmbeddingBackward: dim is too large");
  return OpStatus::Ok();
}

OpStatus EmbeddingBackward(const EmbeddingBackwardParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.rows == 0) return OpStatus::Ok();
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(p.buckets, 0x7fffffff)),
                  static_cast<unsigned>((p.dim + kThreads - 1) / kThreads));
  return DispatchDType(p.dtype, "EmbeddingBackward", [&](auto tag) {
    using T = decltype(tag);
    EmbeddingBackwardKernel<<<grid, kThreads, 0, stream>>>(
        static_cast<const T*>(p.dout), p.dtable, p.order, p.starts, p.bucket_ids, p.buckets, p.dim);
    return LaunchStatus("EmbeddingBackward");
  });
}

}  // namespace qtrain::kernels::cuda
