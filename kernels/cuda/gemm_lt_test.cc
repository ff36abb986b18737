// What of the cuBLASLt GEMMs runs without a GPU: the descriptors of every GEMM the presets'
// training steps use, the row-major -> column-major mapping (checked by running cuBLASLt's
// column-major definition on the host over the descriptors' own attributes, against the
// row-major product), the checks before a launch, and the workspace size.
#include "kernels/cuda/gemm_lt.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "worker/model/config.h"

namespace qtrain::kernels::cuda {
namespace {

using ::testing::HasSubstr;

template <typename T>
T LayoutAttribute(cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attribute) {
  T value{};
  size_t written = 0;
  EXPECT_EQ(cublasLtMatrixLayoutGetAttribute(layout, attribute, &value, sizeof(value), &written),
            CUBLAS_STATUS_SUCCESS);
  return value;
}

template <typename T>
T OperationAttribute(cublasLtMatmulDesc_t op, cublasLtMatmulDescAttributes_t attribute) {
  T value{};
  size_t written = 0;
  EXPECT_EQ(cublasLtMatmulDescGetAttribute(op, attribute, &value, sizeof(value), &written),
            CUBLAS_STATUS_SUCCESS);
  return value;
}

struct ColumnMajor {
  uint64_t rows, cols;
  int64_t ld;
  cudaDataType_t type;
};

ColumnMajor Read(cublasLtMatrixLayout_t layout) {
  return {LayoutAttribute<uint64_t>(layout, CUBLASLT_MATRIX_LAYOUT_ROWS),
          LayoutAttribute<uint64_t>(layout, CUBLASLT_MATRIX_LAYOUT_COLS),
          LayoutAttribute<int64_t>(layout, CUBLASLT_MATRIX_LAYOUT_LD),
          LayoutAttribute<cudaDataType_t>(layout, CUBLASLT_MATRIX_LAYOUT_TYPE)};
}

// cuBLASLt's definition, column-major, from the descriptors alone: D = op(A') op(B') + beta C,
// then the epilogue. a_prime and b_prime are the buffers passed as cuBLASLt's A and B.
struct Emulated {
  std::vector<double> d;
  std::vector<double> bias_grad;
};
Emulated RunColumnMajor(const GemmDescriptors& desc, const std::vector<double>& a_prime,
                        const std::vector<double>& b_prime, const std::vector<double>& c_in,
                        double beta, const std::vector<double>& bias) {
  const auto trans_a =
      OperationAttribute<cublasOperation_t>(desc.operation(), CUBLASLT_MATMUL_DESC_TRANSA);
  const auto trans_b =
      OperationAttribute<cublasOperation_t>(desc.operation(), CUBLASLT_MATMUL_DESC_TRANSB);
  const auto epilogue =
      OperationAttribute<cublasLtEpilogue_t>(desc.operation(), CUBLASLT_MATMUL_DESC_EPILOGUE);
  const ColumnMajor la = Read(desc.lt_a()), lb = Read(desc.lt_b()), lc = Read(desc.lt_c());
  // op(A') is [m' x k'], op(B') [k' x n'], D [m' x n'].
  const uint64_t m = lc.rows, n = lc.cols;
  const uint64_t k = trans_a == CUBLAS_OP_N ? la.cols : la.rows;
  EXPECT_EQ(trans_a == CUBLAS_OP_N ? la.rows : la.cols, m);
  EXPECT_EQ(trans_b == CUBLAS_OP_N ? lb.rows : lb.cols, k);
  EXPECT_EQ(trans_b == CUBLAS_OP_N ? lb.cols : lb.rows, n);
  EXPECT_GE(la.ld, static_cast<int64_t>(la.rows));
  EXPECT_GE(lc.ld, static_cast<int64_t>(lc.rows));
  auto op_a = [&](uint64_t i, uint64_t p) {
    return trans_a == CUBLAS_OP_N ? a_prime[i + p * la.ld] : a_prime[p + i * la.ld];
  };
  auto op_b = [&](uint64_t p, uint64_t j) {
    return trans_b == CUBLAS_OP_N ? b_prime[p + j * lb.ld] : b_prime[j + p * lb.ld];
  };
  Emulated out{std::vector<double>(c_in.size()), {}};
  for (uint64_t j = 0; j < n; ++j) {
    for (uint64_t i = 0; i < m; ++i) {
      double sum = 0.0;
      for (uint64_t p = 0; p < k; ++p) sum += op_a(i, p) * op_b(p, j);
      double value = sum + beta * c_in[i + j * lc.ld];
      if (epilogue == CUBLASLT_EPILOGUE_BIAS) value += bias[i];  // bias per row of D
      out.d[i + j * lc.ld] = value;
    }
  }
  if (epilogue == CUBLASLT_EPILOGUE_BGRADB) {  // op(B') summed over k, per column of D
    out.bias_grad.assign(n, 0.0);
    for (uint64_t j = 0; j < n; ++j) {
      for (uint64_t p = 0; p < k; ++p) out.bias_grad[j] += op_b(p, j);
    }
  }
  return out;
}

std::vector<double> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(-8, 8);  // small integers: exact sums in any order
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

// The row-major definition of gemm_lt.h against the emulation over the descriptors.
void ExpectRowMajorSemantics(const GemmShape& s) {
  SCOPED_TRACE(GemmShapeName(s));
  std::unique_ptr<GemmDescriptors> desc;
  const OpStatus made = GemmDescriptors::Make(s, &desc);
  ASSERT_TRUE(made.ok()) << made.message();
  const auto m = static_cast<size_t>(s.m), n = static_cast<size_t>(s.n),
             k = static_cast<size_t>(s.k);
  const std::vector<double> a = Random(m * k, 1), b = Random(k * n, 2), c = Random(m * n, 3);
  const std::vector<double> bias = Random(s.epilogue == GemmEpilogue::kBias ? n : 0, 4);
  auto op_a = [&](size_t i, size_t p) { return s.transpose_a ? a[p * m + i] : a[i * k + p]; };
  auto op_b = [&](size_t p, size_t j) { return s.transpose_b ? b[j * k + p] : b[p * n + j]; };
  std::vector<double> want(m * n), want_bias_grad;
  for (size_t i = 0; i < m; ++i) {
    for (size_t j = 0; j < n; ++j) {
      double sum = 0.0;
      for (size_t p = 0; p < k; ++p) sum += op_a(i, p) * op_b(p, j);
      want[i * n + j] = sum + (s.accumulate ? c[i * n + j] : 0.0) +
                        (s.epilogue == GemmEpilogue::kBias ? bias[j] : 0.0);
    }
  }
  if (s.epilogue == GemmEpilogue::kBiasGradA) {
    want_bias_grad.assign(m, 0.0);
    for (size_t i = 0; i < m; ++i) {
      for (size_t p = 0; p < k; ++p) want_bias_grad[i] += op_a(i, p);
    }
  }
  // Our B is cuBLASLt's A, our A its B; row-major C is column-major D^T, same buffer.
  const Emulated got = RunColumnMajor(*desc, b, a, c, s.accumulate ? 1.0 : 0.0, bias);
  EXPECT_EQ(got.d, want);
  EXPECT_EQ(got.bias_grad, want_bias_grad);
  const auto cuda_type = [](DType dtype) {
    return dtype == DType::kBfloat16  ? CUDA_R_16BF
           : dtype == DType::kFloat16 ? CUDA_R_16F
                                      : CUDA_R_32F;
  };
  EXPECT_EQ(Read(desc->lt_a()).type, cuda_type(s.ab_dtype));
  EXPECT_EQ(Read(desc->lt_b()).type, cuda_type(s.ab_dtype));
  EXPECT_EQ(Read(desc->lt_c()).type, cuda_type(s.c_dtype));
}

TEST(GemmLtTest, RowMajorProductsMapOntoCublasLtsColumnMajorOnes) {
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      for (bool acc : {false, true}) {
        ExpectRowMajorSemantics(
            {.m = 5, .n = 3, .k = 7, .transpose_a = ta, .transpose_b = tb, .accumulate = acc});
      }
      ExpectRowMajorSemantics({.m = 4,
                               .n = 6,
                               .k = 3,
                               .transpose_a = ta,
                               .transpose_b = tb,
                               .epilogue = GemmEpilogue::kBias});
      ExpectRowMajorSemantics({.m = 6,
                               .n = 2,
                               .k = 5,
                               .transpose_a = ta,
                               .transpose_b = tb,
                               .c_dtype = DType::kFloat32,
                               .epilogue = GemmEpilogue::kBiasGradA});
    }
  }
  ExpectRowMajorSemantics(
      {.m = 1, .n = 1, .k = 1, .ab_dtype = DType::kFloat32, .c_dtype = DType::kFloat32});
  // fp16 operands (precision fp16): the same mapping with CUDA_R_16F.
  ExpectRowMajorSemantics({.m = 4,
                           .n = 6,
                           .k = 3,
                           .transpose_b = true,
                           .ab_dtype = DType::kFloat16,
                           .c_dtype = DType::kFloat16,
                           .epilogue = GemmEpilogue::kBias,
                           .bias_dtype = DType::kFloat16});
  ExpectRowMajorSemantics({.m = 6,
                           .n = 2,
                           .k = 5,
                           .transpose_a = true,
                           .ab_dtype = DType::kFloat16,
                           .c_dtype = DType::kFloat32,
                           .epilogue = GemmEpilogue::kBiasGradA});
}

// A linear layer's three GEMMs for `tokens` rows: Y = X W^T (+ b), dX = dY W,
// dW += dY^T X (or = with the bias gradient).
std::vector<GemmShape> LinearGemms(int64_t tokens, int64_t in, int64_t out, bool bias) {
  std::vector<GemmShape> shapes = {{.m = tokens,
                                    .n = out,
                                    .k = in,
                                    .transpose_b = true,
                                    .epilogue = bias ? GemmEpilogue::kBias : GemmEpilogue::kNone,
                                    .bias_dtype = DType::kBfloat16},
                                   {.m = tokens, .n = in, .k = out},
                                   {.m = out,
                                    .n = in,
                                    .k = tokens,
                                    .transpose_a = true,
                                    .c_dtype = DType::kFloat32,
                                    .accumulate = true}};
  if (bias) {
    shapes.push_back({.m = out,
                      .n = in,
                      .k = tokens,
                      .transpose_a = true,
                      .c_dtype = DType::kFloat32,
                      .epilogue = GemmEpilogue::kBiasGradA});
  }
  return shapes;
}

TEST(GemmLtTest, EveryGemmOfEveryPresetsTrainingStepHasDescriptors) {
  int64_t checked = 0;
  for (const std::string& name : model::PresetNames()) {
    absl::StatusOr<model::ModelConfig> config = model::PresetConfig(name);
    ASSERT_TRUE(config.ok()) << config.status();
    const int64_t h = config->hidden_size;
    // Sequences of the curriculum's stages, batch 1; the LM head in chunks of 4096 tokens
    // against the whole vocabulary (the fused cross-entropy's chunking).
    for (int64_t tokens : {int64_t{2048}, int64_t{4096}, int64_t{32768}}) {
      std::vector<GemmShape> shapes;
      for (const auto& [in, out, bias] :
           std::vector<std::tuple<int64_t, int64_t, bool>>{{h, config->q_dim(), true},
                                                           {h, config->kv_dim(), true},
                                                           {config->q_dim(), h, false},
                                                           {h, config->intermediate_size, false},
                                                           {config->intermediate_size, h, false}}) {
        for (const GemmShape& s : LinearGemms(tokens, in, out, bias)) shapes.push_back(s);
      }
      for (const GemmShape& s :
           LinearGemms(std::min<int64_t>(tokens, 4096), h, config->vocab_size, false)) {
        shapes.push_back(s);
      }
      for (const GemmShape& s : shapes) {
        std::unique_ptr<GemmDescriptors> desc;
        const OpStatus made = GemmDescriptors::Make(s, &desc);
        EXPECT_TRUE(made.ok()) << name << " " << GemmShapeName(s) << ": " << made.message();
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 0);
}

TEST(GemmLtTest, BadShapesAndOperandsAreRefusedNamingTheShape) {
  const GemmShape good{.m = 8, .n = 8, .k = 8};
  EXPECT_TRUE(CanImplement(good).ok());
  GemmShape s = good;
  s.k = 0;
  EXPECT_THAT(CanImplement(s).message(), HasSubstr("8x8x0"));
  EXPECT_THAT(CanImplement(s).message(), HasSubstr("must be in [1, 2^31)"));
  s = good;
  s.m = int64_t{1} << 31;
  EXPECT_FALSE(CanImplement(s).ok());
  s = good;
  s.ab_dtype = DType::kFloat32;
  EXPECT_THAT(CanImplement(s).message(), HasSubstr("fp32 inputs need an fp32 C"));
  s = good;
  s.epilogue = GemmEpilogue::kBiasGradA;
  s.accumulate = true;
  EXPECT_THAT(CanImplement(s).message(), HasSubstr("cannot accumulate"));
  s = good;
  s.c_dtype = static_cast<DType>(9);
  EXPECT_THAT(CanImplement(s).message(), HasSubstr("dtypes must be fp32, bf16 or fp16"));
  s = good;
  s.ab_dtype = DType::kFloat16;
  s.c_dtype = DType::kFloat16;
  EXPECT_TRUE(CanImplement(s).ok());
  s.c_dtype = DType::kFloat32;
  EXPECT_TRUE(CanImplement(s).ok());
  s.c_dtype = DType::kBfloat16;
  EXPECT_THAT(CanImplement(s).message(), HasSubstr("bf16 and fp16 do not mix"));
  s.c_dtype = DType::kFloat16;
  s.epilogue = GemmEpilogue::kBias;
  s.bias_dtype = DType::kBfloat16;
  EXPECT_THAT(CanImplement(s).message(), HasSubstr("bf16 and fp16 do not mix"));
  s = good;
  s.epilogue = static_cast<GemmEpilogue>(7);
  EXPECT_THAT(CanImplement(s).message(), HasSubstr("unknown epilogue"));
  std::unique_ptr<GemmDescriptors> desc;
  EXPECT_FALSE(GemmDescriptors::Make(s, &desc).ok());
  EXPECT_EQ(desc, nullptr);

  auto at = [](uintptr_t address) { return reinterpret_cast<void*>(address); };
  const GemmOperands operands{.a = at(0x1000), .b = at(0x2000), .c = at(0x3000)};
  EXPECT_TRUE(CanImplement(good, operands).ok());
  GemmOperands o = operands;
  o.b = at(0x2008);
  EXPECT_THAT(CanImplement(good, o).message(), HasSubstr("b is not 16-byte aligned"));
  o = operands;
  o.c = nullptr;
  EXPECT_THAT(CanImplement(good, o).message(), HasSubstr("c is null"));
  o = operands;
  o.c = at(0x1000);  // a
  EXPECT_THAT(CanImplement(good, o).message(), HasSubstr("must not alias"));
  GemmShape with_bias = good;
  with_bias.epilogue = GemmEpilogue::kBias;
  EXPECT_THAT(CanImplement(with_bias, operands).message(), HasSubstr("bias is null"));
  o = operands;
  o.bias = at(0x4000);
  EXPECT_TRUE(CanImplement(with_bias, o).ok());

  // A smaller alignment is a different plan, and the pointers are checked against it.
  GemmShape by_four = good;
  by_four.alignment = 4;
  o = operands;
  o.b = at(0x2004);
  EXPECT_TRUE(CanImplement(by_four, o).ok());
  o.b = at(0x2002);
  EXPECT_THAT(CanImplement(by_four, o).message(), HasSubstr("b is not 4-byte aligned"));
  EXPECT_FALSE(by_four == good);
  by_four.alignment = 3;
  EXPECT_THAT(CanImplement(by_four).message(), HasSubstr("alignment must be 2, 4, 8 or 16"));
}

TEST(GemmLtTest, TheAlignmentOfOperandsIsTheLargestTheyAllShare) {
  auto at = [](uintptr_t address) { return reinterpret_cast<void*>(address); };
  EXPECT_EQ(GemmAlignmentOf({.a = at(0x1000), .b = at(0x2000), .c = at(0x3000)}), 16);
  EXPECT_EQ(GemmAlignmentOf({.a = at(0x1000), .b = at(0x2008), .c = at(0x3000)}), 8);
  EXPECT_EQ(GemmAlignmentOf({.a = at(0x1004), .b = at(0x2000), .c = at(0x3000)}), 4);
  EXPECT_EQ(
      GemmAlignmentOf({.a = at(0x1000), .b = at(0x2000), .c = at(0x3000), .bias = at(0x4002)}), 2);
  EXPECT_EQ(GemmAlignmentOf({.a = at(0x1001), .b = at(0x2000), .c = at(0x3000)}), 1);
  // A missing bias does not count.
  EXPECT_EQ(GemmAlignmentOf({.a = at(0x1010), .b = at(0x2010), .c = at(0x3010)}), 16);
}

TEST(GemmLtTest, TheWorkspaceIsNvidiasRecommendedSizePerArchitecture) {
  EXPECT_EQ(GemmWorkspaceBytes(8), size_t{4} << 20);   // A100
  EXPECT_EQ(GemmWorkspaceBytes(9), size_t{32} << 20);  // H100
  EXPECT_EQ(GemmWorkspaceBytes(10), size_t{32} << 20);
}

TEST(GemmLtTest, PlansWithoutAGpuFailCleanly) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) {
    GTEST_SKIP() << "this machine has a GPU (tests/gpu/run.sh runs the GEMMs)";
  }
  std::unique_ptr<GemmPlans> plans;
  const OpStatus created = GemmPlans::Create(0, &plans);
  EXPECT_FALSE(created.ok());
  EXPECT_THAT(created.message(), HasSubstr("GemmPlans"));
  EXPECT_EQ(plans, nullptr);
}

TEST(GemmLtTest, ShapeNamesSayEverything) {
  EXPECT_EQ(GemmShapeName({.m = 4096, .n = 896, .k = 4864}), "4096x896x4864 bf16 -> bf16 =");
  EXPECT_EQ(GemmShapeName({.m = 896,
                           .n = 128,
                           .k = 4096,
                           .transpose_a = true,
                           .c_dtype = DType::kFloat32,
                           .epilogue = GemmEpilogue::kBiasGradA}),
            "896x128x4096 A^T bf16 -> fp32 = bias-grad fp32");
  EXPECT_EQ(GemmShapeName({.m = 2,
                           .n = 3,
                           .k = 4,
                           .transpose_b = true,
                           .accumulate = true,
                           .epilogue = GemmEpilogue::kBias,
                           .bias_dtype = DType::kBfloat16}),
            "2x3x4 B^T bf16 -> bf16 += bias bf16");
  EXPECT_EQ(GemmShapeName({.m = 2,
                           .n = 3,
                           .k = 4,
                           .ab_dtype = DType::kFloat32,
                           .c_dtype = DType::kFloat32,
                           .alignment = 4}),
            "2x3x4 fp32 -> fp32 = align 4");
}

}  // namespace
}  // namespace qtrain::kernels::cuda
