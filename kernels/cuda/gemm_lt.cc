// cuBLASLt GEMMs: see gemm_lt.h. Compiled by the host compiler (no device code here).
#include "kernels/cuda/gemm_lt.h"

#include <climits>
#include <cstdint>
#include <string>

namespace qtrain::kernels::cuda {
namespace {

OpStatus CublasStatus(cublasStatus_t status, const std::string& what) {
  if (status == CUBLAS_STATUS_SUCCESS) return OpStatus::Ok();
  return OpStatus::Error(what + ": " + cublasLtGetStatusString(status));
}

cudaDataType_t CudaType(DType dtype) {
  switch (dtype) {
    case DType::kBfloat16:
      return CUDA_R_16BF;
    case DType::kFloat16:
      return CUDA_R_16F;
    case DType::kFloat32:
      break;
  }
  return CUDA_R_32F;
}

#define QTRAIN_CUBLAS_RETURN_IF_ERROR(expr, what)                \
  do {                                                           \
    const OpStatus cublas_status = CublasStatus((expr), (what)); \
    if (!cublas_status.ok()) return cublas_status;               \
  } while (0)

}  // namespace

std::string GemmShapeName(const GemmShape& s) {
  std::string name = std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k);
  if (s.transpose_a) name += " A^T";
  if (s.transpose_b) name += " B^T";
  name += std::string(" ") + DTypeName(s.ab_dtype) + " -> " + DTypeName(s.c_dtype);
  name += s.accumulate ? " +=" : " =";
  if (s.epilogue == GemmEpilogue::kBias) name += std::string(" bias ") + DTypeName(s.bias_dtype);
  if (s.alignment != 16) name += " align " + std::to_string(s.alignment);
  if (s.epilogue == GemmEpilogue::kBiasGradA) {
    name += std::string(" bias-grad ") + DTypeName(s.bias_dtype);
  }
  return name;
}

OpStatus CanImplement(const GemmShape& s) {
  const std::string what = "Gemm " + GemmShapeName(s);
  for (int64_t dim : {s.m, s.n, s.k}) {
    if (dim < 1 || dim > INT32_MAX) {
      return OpStatus::Error(what + ": m, n and k must be in [1, 2^31)");
    }
  }
  for (DType dtype : {s.ab_dtype, s.c_dtype, s.bias_dtype}) {
    if (dtype != DType::kFloat32 && dtype != DType::kBfloat16 && dtype != DType::kFloat16) {
      return OpStatus::Error(what + ": dtypes must be fp32, bf16 or fp16");
    }
    // One 16-bit type per product: bf16 with fp32, or fp16 with fp32, never bf16 with fp16.
    if (dtype != DType::kFloat32 && s.ab_dtype != DType::kFloat32 && dtype != s.ab_dtype) {
      return OpStatus::Error(what + ": bf16 and fp16 do not mix in one product");
    }
  }
  if (s.ab_dtype == DType::kFloat32 && s.c_dtype != DType::kFloat32) {
    return OpStatus::Error(what + ": fp32 inputs need an fp32 C");
  }
  if (s.epilogue != GemmEpilogue::kNone && s.epilogue != GemmEpilogue::kBias &&
      s.epilogue != GemmEpilogue::kBiasGradA) {
    return OpStatus::Error(what + ": unknown epilogue");
  }
  if (s.alignment != 2 && s.alignment != 4 && s.alignment != 8 && s.alignment != 16) {
    return OpStatus::Error(what + ": alignment must be 2, 4, 8 or 16 bytes");
  }
  if (s.epilogue == GemmEpilogue::kBiasGradA && s.accumulate) {
    return OpStatus::Error(what +
                           ": the bias-gradient epilogue writes C and the bias gradient of one "
                           "product; it cannot accumulate into C");
  }
  return OpStatus::Ok();
}

OpStatus CanImplement(const GemmShape& s, const GemmOperands& o) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(s));
  const std::string what = "Gemm " + GemmShapeName(s);
  struct Named {
    const char* name;
    const void* pointer;
  };
  const bool has_bias = s.epilogue != GemmEpilogue::kNone;
  for (const Named& p : {Named{"a", o.a}, Named{"b", o.b}, Named{"c", o.c},
                         Named{"bias", has_bias ? o.bias : nullptr}}) {
    if (p.pointer == nullptr && (has_bias || std::string(p.name) != "bias")) {
      return OpStatus::Error(what + ": " + p.name + " is null");
    }
    if (reinterpret_cast<uintptr_t>(p.pointer) % static_cast<uintptr_t>(s.alignment) != 0) {
      return OpStatus::Error(what + ": " + p.name + " is not " + std::to_string(s.alignment) +
                             "-byte aligned");
    }
  }
  if (o.c == o.a || o.c == o.b) return OpStatus::Error(what + ": c must not alias a or b");
  return OpStatus::Ok();
}

OpStatus GemmDescriptors::Make(const GemmShape& s, std::unique_ptr<GemmDescriptors>* out) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(s));
  const std::string what = "Gemm " + GemmShapeName(s);
  std::unique_ptr<GemmDescriptors> d(new GemmDescriptors());
  QTRAIN_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescCreate(&d->operation_, CUBLAS_COMPUTE_32F, CUDA_R_32F),
      what + ": cublasLtMatmulDescCreate");
  // C^T = op(B)^T op(A)^T in column-major terms: cuBLASLt's A is our B, its B our A.
  const cublasOperation_t lt_trans_a = s.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t lt_trans_b = s.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  QTRAIN_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(d->operation_, CUBLASLT_MATMUL_DESC_TRANSA, &lt_trans_a,
                                     sizeof(lt_trans_a)),
      what + ": TRANSA");
  QTRAIN_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescSetAttribute(d->operation_, CUBLASLT_MATMUL_DESC_TRANSB, &lt_trans_b,
                                     sizeof(lt_trans_b)),
      what + ": TRANSB");
  if (s.epilogue != GemmEpilogue::kNone) {
    // kBias adds bias[j] to column j of row-major C: a row of the column-major D, which
    // EPILOGUE_BIAS indexes by. kBiasGradA reduces op(A) over k, which is cuBLASLt's B.
    const cublasLtEpilogue_t epilogue =
        s.epilogue == GemmEpilogue::kBias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_BGRADB;
    QTRAIN_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(d->operation_, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                       sizeof(epilogue)),
        what + ": EPILOGUE");
    const cudaDataType_t bias_type = CudaType(s.bias_dtype);
    QTRAIN_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(d->operation_, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                       &bias_type, sizeof(bias_type)),
        what + ": BIAS_DATA_TYPE");
  }
  // Row-major X[r][c] is column-major [c rows, r columns] with leading dimension c.
  const uint64_t b_rows = s.transpose_b ? s.k : s.n, b_cols = s.transpose_b ? s.n : s.k;
  const uint64_t a_rows = s.transpose_a ? s.m : s.k, a_cols = s.transpose_a ? s.k : s.m;
  QTRAIN_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&d->lt_a_, CudaType(s.ab_dtype), b_rows,
                                                           b_cols, static_cast<int64_t>(b_rows)),
                                what + ": layout of B");
  QTRAIN_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&d->lt_b_, CudaType(s.ab_dtype), a_rows,
                                                           a_cols, static_cast<int64_t>(a_rows)),
                                what + ": layout of A");
  QTRAIN_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatrixLayoutCreate(&d->lt_c_, CudaType(s.c_dtype), s.n, s.m, s.n),
      what + ": layout of C");
  *out = std::move(d);
  return OpStatus::Ok();
}

GemmDescriptors::~GemmDescriptors() {
  if (lt_c_ != nullptr) cublasLtMatrixLayoutDestroy(lt_c_);
  if (lt_b_ != nullptr) cublasLtMatrixLayoutDestroy(lt_b_);
  if (lt_a_ != nullptr) cublasLtMatrixLayoutDestroy(lt_a_);
  if (operation_ != nullptr) cublasLtMatmulDescDestroy(operation_);
}

int GemmAlignmentOf(const GemmOperands& o) {
  uintptr_t bits = 0;
  for (const void* p :
       {o.a, o.b, static_cast<const void*>(o.c), static_cast<const void*>(o.bias)}) {
    bits |= reinterpret_cast<uintptr_t>(p);
  }
  for (int alignment : {16, 8, 4, 2}) {
    if (bits % static_cast<uintptr_t>(alignment) == 0) return alignment;
  }
  return 1;
}

size_t GemmWorkspaceBytes(int sm_major) {
  return sm_major >= 9 ? size_t{32} << 20 : size_t{4} << 20;
}

OpStatus GemmPlans::Create(int device, std::unique_ptr<GemmPlans>* out) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "GemmPlans: cudaSetDevice"));
  cudaDeviceProp prop{};
  QTRAIN_KERNEL_RETURN_IF_ERROR(
      CudaStatus(cudaGetDeviceProperties(&prop, device), "GemmPlans: cudaGetDeviceProperties"));
  std::unique_ptr<GemmPlans> plans(new GemmPlans());
  QTRAIN_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&plans->handle_), "GemmPlans: cublasLtCreate");
  plans->workspace_bytes_ = GemmWorkspaceBytes(prop.major);
  QTRAIN_KERNEL_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&plans->workspace_, plans->workspace_bytes_),
                                           "GemmPlans: cudaMalloc of the workspace"));
  *out = std::move(plans);
  return OpStatus::Ok();
}

GemmPlans::~GemmPlans() {
  plans_.clear();
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

OpStatus GemmPlans::PlanFor(const GemmShape& shape, const Plan** plan) {
  if (auto it = plans_.find(shape); it != plans_.end()) {
    *plan = &it->second;
    return OpStatus::Ok();
  }
  const std::string what = "Gemm " + GemmShapeName(shape);
  Plan fresh;
  QTRAIN_KERNEL_RETURN_IF_ERROR(GemmDescriptors::Make(shape, &fresh.descriptors));
  cublasLtMatmulPreference_t preference = nullptr;
  QTRAIN_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&preference),
                                what + ": cublasLtMatmulPreferenceCreate");
  struct PreferenceGuard {
    cublasLtMatmulPreference_t p;
    ~PreferenceGuard() { cublasLtMatmulPreferenceDestroy(p); }
  } guard{preference};
  const uint64_t workspace = workspace_bytes_;
  QTRAIN_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                           &workspace, sizeof(workspace)),
      what + ": MAX_WORKSPACE_BYTES");
  // The heuristics' default assumes 256-byte operands; an algorithm chosen under that would
  // fault on less.
  const uint32_t alignment = static_cast<uint32_t>(shape.alignment);
  for (cublasLtMatmulPreferenceAttributes_t attribute :
       {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    QTRAIN_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulPreferenceSetAttribute(preference, attribute, &alignment, sizeof(alignment)),
        what + ": MIN_ALIGNMENT");
  }
  cublasLtMatmulHeuristicResult_t results[8] = {};
  int returned = 0;
  const GemmDescriptors& d = *fresh.descriptors;
  QTRAIN_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulAlgoGetHeuristic(handle_, d.operation(), d.lt_a(), d.lt_b(), d.lt_c(), d.lt_c(),
                                     preference, 8, results, &returned),
      what + ": cublasLtMatmulAlgoGetHeuristic");
  for (int i = 0; i < returned; ++i) {
    if (results[i].state == CUBLAS_STATUS_SUCCESS && results[i].workspaceSize <= workspace_bytes_) {
      fresh.algo = results[i].algo;
      *plan = &plans_.emplace(shape, std::move(fresh)).first->second;
      return OpStatus::Ok();
    }
  }
  return OpStatus::Error(what + ": cuBLASLt has no algorithm for it within a " +
                         std::to_string(workspace_bytes_ >> 20) + " MiB workspace");
}

OpStatus GemmPlans::Run(const GemmShape& shape, const GemmOperands& operands, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(shape, operands));
  const Plan* plan = nullptr;
  QTRAIN_KERNEL_RETURN_IF_ERROR(PlanFor(shape, &plan));
  const std::string what = "Gemm " + GemmShapeName(shape);
  const GemmDescriptors& d = *plan->descriptors;
  if (shape.epilogue != GemmEpilogue::kNone) {
    QTRAIN_CUBLAS_RETURN_IF_ERROR(
        cublasLtMatmulDescSetAttribute(d.operation(), CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                       &operands.bias, sizeof(operands.bias)),
        what + ": BIAS_POINTER");
  }
  const float alpha = 1.0f;
  const float beta = shape.accumulate ? 1.0f : 0.0f;
  QTRAIN_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmul(handle_, d.operation(), &alpha, operands.b, d.lt_a(), operands.a, d.lt_b(),
                     &beta, operands.c, d.lt_c(), operands.c, d.lt_c(), &plan->algo, workspace_,
                     workspace_bytes_, stream),
      what + ": cublasLtMatmul");
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels::cuda
