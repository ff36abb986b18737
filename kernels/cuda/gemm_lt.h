// The model's matrix multiplications on the GPU, through cuBLASLt: bf16 (or fp32) inputs, fp32
// accumulation, an optional bias epilogue (forward) or bias-gradient epilogue (backward).
//
// Row-major, as every op of kernels/ops.h:
//   C[m, n] (= or +=) op(A) op(B)        op(A) [m, k]: A is [m, k], or [k, m] when transpose_a
//                                         op(B) [k, n]: B is [k, n], or [n, k] when transpose_b
//   kBias:      C[i, j] += bias[j]        (the linear layers' forward: Y = X W^T + b)
//   kBiasGradA: bias_grad[i] = sum_p op(A)[i, p]   (dW = dY^T X with db = column sums of dY)
// cuBLASLt is column-major, so a row-major product is computed as its transpose,
// C^T = op(B)^T op(A)^T (MakeGemmDescriptors says how; gemm_lt_test checks it on the host).
//
// Reproducible: GemmPlans chooses one algorithm per shape on its first use (cuBLASLt's first
// heuristic that fits the workspace) and keeps it, and the workspace is allocated once, so every
// step runs the same kernels in the same order and gives the same bits.
//
// Status: the descriptors and the checks run in CI (no GPU needed); GemmPlans needs a GPU and
// has never run on one (docs/cuda.md).
#ifndef QTRAIN_KERNELS_CUDA_GEMM_LT_H_
#define QTRAIN_KERNELS_CUDA_GEMM_LT_H_

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/status.h"

namespace qtrain::kernels::cuda {

enum class GemmEpilogue { kNone, kBias, kBiasGradA };

// What a GEMM is, without its pointers: the key a plan is chosen for.
struct GemmShape {
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  bool transpose_a = false;
  bool transpose_b = false;
  DType ab_dtype = DType::kBfloat16;  // A and B
  DType c_dtype = DType::kBfloat16;   // C (fp32 for gradients accumulated across micro-batches)
  bool accumulate = false;            // C += (beta = 1) instead of C = (beta = 0)
  GemmEpilogue epilogue = GemmEpilogue::kNone;
  DType bias_dtype = DType::kFloat32;  // bias (kBias) or bias_grad (kBiasGradA)
  // What every operand's address is a multiple of (16, 8, 4 or 2 bytes), which the algorithm is
  // chosen for: the model's buffers are 16-byte aligned; a row chunk of an odd-sized tensor may
  // not be.
  int alignment = 16;

  auto Tie() const {
    return std::tie(m, n, k, transpose_a, transpose_b, ab_dtype, c_dtype, accumulate, epilogue,
                    bias_dtype, alignment);
  }
  bool operator<(const GemmShape& other) const { return Tie() < other.Tie(); }
  bool operator==(const GemmShape& other) const { return Tie() == other.Tie(); }
};

// "m x n x k, A^T, bf16 -> fp32 +=, bias" and the like, for errors and logs.
std::string GemmShapeName(const GemmShape& shape);

// The device pointers of one GEMM.
struct GemmOperands {
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
  void* bias = nullptr;  // kBias: read; kBiasGradA: written
};

// Sizes positive and below cuBLASLt's 32-bit dimensions, a supported dtype combination (A and B
// alike; bf16 inputs with bf16 or fp32 C; fp32 everything), the epilogue's constraints
// (kBiasGradA writes C, it does not accumulate: cuBLASLt's bias gradient is of one product), an
// alignment of 2, 4, 8 or 16 bytes, and (with operands) every pointer a multiple of it.
OpStatus CanImplement(const GemmShape& shape);
OpStatus CanImplement(const GemmShape& shape, const GemmOperands& operands);

// cuBLASLt's descriptors of a shape: the operation (fp32 compute, transposes, epilogue, bias
// type) and the three column-major layouts. Needs no GPU.
class GemmDescriptors {
 public:
  static OpStatus Make(const GemmShape& shape, std::unique_ptr<GemmDescriptors>* out);
  ~GemmDescriptors();
  GemmDescriptors(const GemmDescriptors&) = delete;
  GemmDescriptors& operator=(const GemmDescriptors&) = delete;

  // cuBLASLt's operands: its "A" is our B, its "B" our A (C^T = op(B)^T op(A)^T).
  cublasLtMatmulDesc_t operation() const { return operation_; }
  cublasLtMatrixLayout_t lt_a() const { return lt_a_; }
  cublasLtMatrixLayout_t lt_b() const { return lt_b_; }
  cublasLtMatrixLayout_t lt_c() const { return lt_c_; }

 private:
  GemmDescriptors() = default;
  cublasLtMatmulDesc_t operation_ = nullptr;
  cublasLtMatrixLayout_t lt_a_ = nullptr;
  cublasLtMatrixLayout_t lt_b_ = nullptr;
  cublasLtMatrixLayout_t lt_c_ = nullptr;
};

// The largest of 16, 8, 4, 2 that every non-null pointer's address is a multiple of (1 if none).
int GemmAlignmentOf(const GemmOperands& operands);

// The workspace GemmPlans allocates once: NVIDIA's recommended size, 32 MiB on Hopper (sm_90)
// and newer, 4 MiB before.
size_t GemmWorkspaceBytes(int sm_major);

// One cuBLASLt handle, one workspace, one algorithm per shape (chosen on the shape's first
// Run and kept). Not thread-safe: one per stream of work.
class GemmPlans {
 public:
  // Needs a GPU: cublasLtCreate fails without one (the error says so).
  static OpStatus Create(int device, std::unique_ptr<GemmPlans>* out);
  ~GemmPlans();
  GemmPlans(const GemmPlans&) = delete;
  GemmPlans& operator=(const GemmPlans&) = delete;

  // Enqueues C (op)= op(A) op(B) on stream. The first call for a shape queries the heuristics
  // (host work only); an error names the shape.
  OpStatus Run(const GemmShape& shape, const GemmOperands& operands, cudaStream_t stream);

  size_t workspace_bytes() const { return workspace_bytes_; }
  int64_t plans() const { return static_cast<int64_t>(plans_.size()); }

 private:
  struct Plan {
    std::unique_ptr<GemmDescriptors> descriptors;
    cublasLtMatmulAlgo_t algo;
  };
  GemmPlans() = default;
  OpStatus PlanFor(const GemmShape& shape, const Plan** plan);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<GemmShape, Plan> plans_;
};

}  // namespace qtrain::kernels::cuda

#endif  // QTRAIN_KERNELS_CUDA_GEMM_LT_H_
