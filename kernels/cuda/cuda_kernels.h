// Launchers of the CUDA kernels (kernels/cuda/*.cu), one params struct per kernel.
//
// Status: compiled for sm_80 and sm_90 and checked without a GPU (their per-element math is
// element_math.h, tested on the CPU); not yet run on a GPU. The CUDA backend
// (cuda_backend.h) puts them behind the Backend interface of kernels/ops.h.
//
// Every launcher first checks its params (CanImplement: sizes, pointers, dtypes), returning an
// OpStatus that names the kernel and the problem without launching anything, then launches on
// `stream` (asynchronous) and returns the launch error, if any. Pointers are device memory.
// Activations are fp32 or bf16 (DType); statistics, gradients of parameters, master weights and
// optimizer moments are fp32. As in kernels/ops.h, backward kernels ACCUMULATE (+=) into their
// gradients, and every kernel is deterministic (fixed reduction trees, no float atomics).
#ifndef QTRAIN_KERNELS_CUDA_CUDA_KERNELS_H_
#define QTRAIN_KERNELS_CUDA_CUDA_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/status.h"
#include "kernels/tensor.h"

namespace qtrain::kernels::cuda {

// The dtypes of kernels/tensor.h, shared with the op interface.
using ::qtrain::kernels::DType;
using ::qtrain::kernels::DTypeBytes;
using ::qtrain::kernels::DTypeName;

// An OpStatus from a CUDA error ("<what>: <cudaGetErrorString>"); ok for cudaSuccess.
OpStatus CudaStatus(cudaError_t error, const char* what);

// out[i] = in[i] converted (fp32 <-> bf16, round to nearest even; same dtype: a copy).
//   in, out [n]; out must not overlap in unless they are the same pointer and dtype.
struct CastParams {
  const void* in = nullptr;
  DType in_dtype = DType::kFloat32;
  void* out = nullptr;
  DType out_dtype = DType::kBfloat16;
  int64_t n = 0;
};
OpStatus CanImplement(const CastParams& p);
OpStatus Cast(const CastParams& p, cudaStream_t stream);

// x[i] = value; x[i] *= alpha (fp32 buffers: zeroing and scaling gradients).   x [n]
struct FillParams {
  float* x = nullptr;
  int64_t n = 0;
  float value = 0.0f;
};
struct ScaleParams {
  float* x = nullptr;
  int64_t n = 0;
  float alpha = 1.0f;
};
OpStatus CanImplement(const FillParams& p);
OpStatus Fill(const FillParams& p, cudaStream_t stream);
OpStatus CanImplement(const ScaleParams& p);
OpStatus Scale(const ScaleParams& p, cudaStream_t stream);

// out = a + b; backward: da += dout, db += dout (each optional).
//   a, b, out, dout, da, db [n], all of `dtype`; out may alias a or b.
struct ResidualParams {
  const void* a = nullptr;
  const void* b = nullptr;
  void* out = nullptr;
  DType dtype = DType::kFloat32;
  int64_t n = 0;
};
struct ResidualBackwardParams {
  const void* dout = nullptr;
  void* da = nullptr;  // optional
  void* db = nullptr;  // optional
  DType dtype = DType::kFloat32;
  int64_t n = 0;
};
OpStatus CanImplement(const ResidualParams& p);
OpStatus ResidualForward(const ResidualParams& p, cudaStream_t stream);
OpStatus CanImplement(const ResidualBackwardParams& p);
OpStatus ResidualBackward(const ResidualBackwardParams& p, cudaStream_t stream);

// SwiGLU: out = silu(gate) * up; backward: dgate += ..., dup += ... (element_math.h).
//   gate, up, out, dout, dgate, dup [n], all of `dtype`.
struct SwigluParams {
  const void* gate = nullptr;
  const void* up = nullptr;
  void* out = nullptr;
  DType dtype = DType::kFloat32;
  int64_t n = 0;
};
struct SwigluBackwardParams {
  const void* dout = nullptr;
  const void* gate = nullptr;
  const void* up = nullptr;
  void* dgate = nullptr;  // optional
  void* dup = nullptr;    // optional
  DType dtype = DType::kFloat32;
  int64_t n = 0;
};
OpStatus CanImplement(const SwigluParams& p);
OpStatus SwigluForward(const SwigluParams& p, cudaStream_t stream);
OpStatus CanImplement(const SwigluBackwardParams& p);
OpStatus SwigluBackward(const SwigluBackwardParams& p, cudaStream_t stream);

// RMSNorm with fp32 statistics: one block per row.
//   x, out, dout, dx [rows, dim] of `dtype`; weight [dim] of `dtype`; rstd [rows] fp32;
//   dweight [dim] fp32 (optional), summed over rows in row order by one thread per column.
//   out may alias x.
struct RmsNormParams {
  const void* x = nullptr;
  const void* weight = nullptr;
  void* out = nullptr;
  float* rstd = nullptr;
  float eps = 1e-6f;
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t dim = 0;
};
struct RmsNormBackwardParams {
  const void* dout = nullptr;
  const void* x = nullptr;
  const void* weight = nullptr;
  const float* rstd = nullptr;
  void* dx = nullptr;        // optional
  float* dweight = nullptr;  // optional
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t dim = 0;
};
OpStatus CanImplement(const RmsNormParams& p);
OpStatus RmsNormForward(const RmsNormParams& p, cudaStream_t stream);
OpStatus CanImplement(const RmsNormBackwardParams& p);
OpStatus RmsNormBackward(const RmsNormBackwardParams& p, cudaStream_t stream);

// RoPE (NeoX half split) with YaRN-scaled tables, as kernels/ops.h RopeForward/RopeBackward.
// The cos and sin come from tables made once on the host (MakeRopeTables: the CPU backend's fp32
// angle and std::cos/std::sin), so both backends rotate by the same numbers, and the kernel has
// no sin/cos slow path (whose stack frame the no-local-memory check would refuse).
//   in, out [tokens = batch*seq_len, num_heads, head_dim] of `dtype`;
//   cos_table, sin_table [table_rows, head_dim/2] fp32 (row p: position p);
//   positions [tokens] int32 (optional: past_len + t otherwise). A position outside
//   [0, table_rows) writes NaN to its token's outputs (it cannot be checked before the launch).
//   Forward: out = rotate(in), out may alias in. Backward (transposed = true): out += rotate^T
//   (in); out must not alias in.
struct RopeParams {
  const void* in = nullptr;
  void* out = nullptr;
  const float* cos_table = nullptr;
  const float* sin_table = nullptr;
  int64_t table_rows = 0;
  const int32_t* positions = nullptr;
  bool transposed = false;
  DType dtype = DType::kFloat32;
  int64_t batch = 1;
  int64_t seq_len = 0;
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  int64_t past_len = 0;
};
// Host tables of positions 0 ... rows-1: cos/sin(p * inv_freq[i]) * attention_factor.
//   inv_freq [half] (host); cos_table, sin_table [rows * half] (host, written).
void MakeRopeTables(const float* inv_freq, int64_t half, float attention_factor, int64_t rows,
                    float* cos_table, float* sin_table);
OpStatus CanImplement(const RopeParams& p);
OpStatus Rope(const RopeParams& p, cudaStream_t stream);

// Embedding. Forward: out[r, :] = table[ids[r], :]; an id outside [0, vocab) (device memory:
// not checkable before the launch) writes NaN to its row.
//   ids [rows] int32; table [vocab, dim] and out [rows, dim] of `dtype`.
struct EmbeddingParams {
  const int32_t* ids = nullptr;
  const void* table = nullptr;
  void* out = nullptr;
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t vocab = 0;
  int64_t dim = 0;
};
OpStatus CanImplement(const EmbeddingParams& p);
OpStatus EmbeddingForward(const EmbeddingParams& p, cudaStream_t stream);

// Backward without atomics: the tokens grouped by id on the host (the ids of a batch are host
// data before they are uploaded), then one thread per (id, column) adds its rows' gradients in
// row order: dtable[id, j] += dout[r, j] for r ascending, the CPU backend's order, so both give
// the same bits for fp32 gradients.
struct EmbeddingBuckets {
  std::vector<int32_t> order;   // row indices, stably sorted by id
  std::vector<int32_t> starts;  // bucket b is order[starts[b] ... starts[b+1]); size buckets + 1
  std::vector<int32_t> ids;     // the id of each bucket, ascending
};
// Errors on an id outside [0, vocab) or rows past int32.
OpStatus MakeEmbeddingBuckets(const int32_t* ids, int64_t rows, int64_t vocab,
                              EmbeddingBuckets* buckets);
//   dout [rows, dim] of `dtype`; dtable [vocab, dim] fp32; order [rows], starts [buckets + 1],
//   bucket_ids [buckets]: an EmbeddingBuckets' arrays, copied to the device.
struct EmbeddingBackwardParams {
  const void* dout = nullptr;
  float* dtable = nullptr;
  const int32_t* order = nullptr;
  const int32_t* starts = nullptr;
  const int32_t* bucket_ids = nullptr;
  int64_t buckets = 0;
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t vocab = 0;
  int64_t dim = 0;
};
OpStatus CanImplement(const EmbeddingBackwardParams& p);
OpStatus EmbeddingBackward(const EmbeddingBackwardParams& p, cudaStream_t stream);

// Fused softmax cross-entropy forward and backward over a chunk of rows (the model cuts the LM
// head into row chunks, so no full [tokens, vocab] buffer exists), one block per row:
//   lse[r] = logsumexp(logits[r]) from online-softmax states merged in a fixed tree;
//   losses[r] = lse[r] - logits[r, labels[r]], 0 for ignore_index rows;
//   dlogits[r] = (softmax(logits[r]) - onehot) * grad_scale, 0 for ignored rows (OVERWRITES;
//     may alias logits: in place, so no second copy of the logits is ever held);
//   loss_sum (device double, optional) = sum of losses in row order, num_valid (device int64,
//     optional) = rows not ignored.
// A label outside [0, vocab) that is not ignore_index gives NaN loss and gradients (device
// memory: not checkable before the launch).
//   logits, dlogits [rows, vocab] of `dtype`; labels [rows] int32; losses, lse [rows] fp32.
struct CrossEntropyParams {
  const void* logits = nullptr;
  const int32_t* labels = nullptr;
  float* losses = nullptr;
  float* lse = nullptr;
  void* dlogits = nullptr;  // optional
  double* loss_sum = nullptr;
  int64_t* num_valid = nullptr;
  float grad_scale = 1.0f;
  int32_t ignore_index = -100;
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t vocab = 0;
};
OpStatus CanImplement(const CrossEntropyParams& p);
OpStatus CrossEntropy(const CrossEntropyParams& p, cudaStream_t stream);

// CrossEntropy's dlogits alone, from a saved lse (kernels/ops.h CrossEntropyBackward): the
// same arithmetic as CrossEntropy's second pass. OVERWRITES dlogits, which may alias logits.
struct CrossEntropyBackwardParams {
  const void* logits = nullptr;
  const int32_t* labels = nullptr;
  const float* lse = nullptr;
  void* dlogits = nullptr;
  float grad_scale = 1.0f;
  int32_t ignore_index = -100;
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t vocab = 0;
};
OpStatus CanImplement(const CrossEntropyBackwardParams& p);
OpStatus CrossEntropyBackward(const CrossEntropyBackwardParams& p, cudaStream_t stream);

// Causal GQA attention with a KV cache (kernels/ops.h AttentionShape), one warp per row:
// the CUDA backend's fp32 attention (bf16 storage works too; the math is fp32). Memory linear in
// T, no T x T buffer; work O(T^2 D) per head without tiling, so it is the exact path, not the
// fast one (cuDNN's SDPA is, for bf16).
//   q, o, dout, dq [B, T, H, D]; k, v, dk, dv [B, kv_rows, Hkv, D] (rows 0 ... past+T-1 used);
//   lse [B, H, T] fp32; row_dot [B, H, T] fp32 workspace of the backward (rowsum(do * o)).
// Backward accumulates into dq, dk, dv (each optional); dk and dv are summed over each group's
// query heads in a fixed order, without atomics.
inline constexpr int64_t kAttentionMaxHeadDim = 128;
struct AttentionKernelShape {
  int64_t batch = 1;
  int64_t seq_len = 0;
  int64_t past_len = 0;
  int64_t kv_rows = 0;  // rows per sequence in k/v; 0 means past_len + seq_len
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  float softmax_scale = 0.0f;  // 0 means 1/sqrt(head_dim)
};
struct AttentionParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  float* lse = nullptr;
  DType dtype = DType::kFloat32;
  AttentionKernelShape shape;
};
struct AttentionBackwardParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* o = nullptr;
  const float* lse = nullptr;
  const void* dout = nullptr;
  void* dq = nullptr;  // optional
  void* dk = nullptr;  // optional
  void* dv = nullptr;  // optional
  float* row_dot = nullptr;
  DType dtype = DType::kFloat32;
  AttentionKernelShape shape;
};
// The checks of the shape alone (sizes, GQA grouping, head_dim <= 128, the grid's limits).
OpStatus CheckAttentionShape(const char* kernel, DType dtype, const AttentionKernelShape& shape);
OpStatus CanImplement(const AttentionParams& p);
OpStatus AttentionForward(const AttentionParams& p, cudaStream_t stream);
OpStatus CanImplement(const AttentionBackwardParams& p);
OpStatus AttentionBackward(const AttentionBackwardParams& p, cudaStream_t stream);

// AdamW on fp32 master weights and moments (torch.optim.AdamW's arithmetic, element_math.h),
// optionally writing the 16-bit working copy of the updated weights.
//   param, grad, m, v [n] fp32; working_copy [n] bf16, or fp16 with working_copy_f16 (optional).
struct AdamWParams {
  float* param = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  void* working_copy = nullptr;  // bf16 (fp16 when working_copy_f16), optional
  bool working_copy_f16 = false;
  int64_t n = 0;
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
  bool apply_weight_decay = true;
  int64_t step = 1;
  float grad_scale = 1.0f;
};
OpStatus CanImplement(const AdamWParams& p);
OpStatus AdamWStep(const AdamWParams& p, cudaStream_t stream);

// Multi-tensor AdamW: the same update over many tensors, up to kAdamWGroupTensors per launch,
// each launch's blocks cut every tensor of its group into kAdamWChunk-element chunks (one block
// per chunk), so the per-element arithmetic and its results are AdamWStep's.
inline constexpr int kAdamWGroupTensors = 16;
inline constexpr int64_t kAdamWChunk = 8192;
struct AdamWTensorRef {
  float* param = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  void* working_copy = nullptr;  // bf16 (fp16 when working_copy_f16), optional
  bool working_copy_f16 = false;
  int64_t n = 0;
  bool apply_weight_decay = true;
};
struct AdamWMultiParams {
  const AdamWTensorRef* tensors = nullptr;  // host array
  int64_t count = 0;
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
  int64_t step = 1;
  float grad_scale = 1.0f;
};
OpStatus CanImplement(const AdamWMultiParams& p);
OpStatus AdamWMultiStep(const AdamWMultiParams& p, cudaStream_t stream);

// Sum of squares of many fp32 tensors into a device double: each tensor cut into fixed blocks
// of kSumSquaresBlock elements, each block summed by one thread block in a fixed tree, then the
// partial sums added in order by one block; the same bits on every run and every GPU size.
//   tensors, sizes: HOST arrays of `count` device pointers and sizes; partials: device scratch
//   of SumSquaresScratch(sizes, count) doubles; sum_squares: one device double (overwritten).
inline constexpr int64_t kSumSquaresBlock = 8192;
int64_t SumSquaresScratch(const int64_t* sizes, int64_t count);
struct SumSquaresParams {
  const float* const* tensors = nullptr;
  const int64_t* sizes = nullptr;
  int64_t count = 0;
  double* partials = nullptr;
  int64_t partials_capacity = 0;
  double* sum_squares = nullptr;
};
OpStatus CanImplement(const SumSquaresParams& p);
OpStatus SumOfSquares(const SumSquaresParams& p, cudaStream_t stream);

// The sums of squares of consecutive blocks of one fp32 tensor (Backend::BlockSumsOfSquares):
// one thread block per block of x, summing in double in the fixed tree of SumOfSquares's first
// pass, so the bits depend only on n and block_elements.
//   x [n] fp32; sums: ceil(n / block_elements) device doubles (overwritten).
struct BlockSumSquaresParams {
  const float* x = nullptr;
  int64_t n = 0;
  int64_t block_elements = 0;
  double* sums = nullptr;
};
OpStatus CanImplement(const BlockSumSquaresParams& p);
OpStatus BlockSumsOfSquares(const BlockSumSquaresParams& p, cudaStream_t stream);

// The deterministic sum of a data-parallel group's contributions (the NCCL communicator's
// reduce-scatter): out[i] = TreeSumStrided(rows + i, row_stride, count) (element_math.h), the
// TreeSum order of worker/comm/tree_sum.h over the rows in order, so every W that splits a step
// evenly gives the same bits as the CPU collectives.
//   rows [count][row_stride] (the first n of each row are read), out [n]; out may be row 0's
//   first n elements or outside rows, not another part of rows.
enum class SumDType { kFloat32, kFloat64 };
struct TreeSumRowsParams {
  const void* rows = nullptr;
  int64_t row_stride = 0;
  int count = 0;
  void* out = nullptr;
  int64_t n = 0;
  SumDType dtype = SumDType::kFloat32;
};
OpStatus CanImplement(const TreeSumRowsParams& p);
OpStatus TreeSumRows(const TreeSumRowsParams& p, cudaStream_t stream);

}  // namespace qtrain::kernels::cuda

#endif  // QTRAIN_KERNELS_CUDA_CUDA_KERNELS_H_
