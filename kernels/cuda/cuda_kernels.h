// Launchers of the CUDA kernels (kernels/cuda/*.cu), one params struct per kernel.
//
// Status: compiled for sm_80 and sm_90 and checked without a GPU (their per-element math is
// element_math.h, tested on the CPU); not yet run on a GPU, and not yet behind the Backend
// interface of kernels/ops.h (docs/cuda.md says what is missing).
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

#include "kernels/status.h"

namespace qtrain::kernels::cuda {

enum class DType { kFloat32, kBfloat16 };

const char* DTypeName(DType dtype);
size_t DTypeBytes(DType dtype);

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

// AdamW on fp32 master weights and moments (torch.optim.AdamW's arithmetic, element_math.h),
// optionally writing the bf16 working copy of the updated weights.
//   param, grad, m, v [n] fp32; working_copy [n] bf16 (optional).
struct AdamWParams {
  float* param = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  void* working_copy = nullptr;  // bf16, optional
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

}  // namespace qtrain::kernels::cuda

#endif  // QTRAIN_KERNELS_CUDA_CUDA_KERNELS_H_
