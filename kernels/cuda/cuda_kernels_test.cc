// What of the CUDA kernels runs without a GPU: every launcher refuses bad params before it
// launches (naming the kernel and the problem), the RoPE tables are the CPU backend's numbers,
// and the scratch of the sum of squares is sized by the sizes alone.
#include "kernels/cuda/cuda_kernels.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/test_util.h"
#include "kernels/ops.h"

namespace qtrain::kernels::cuda {
namespace {

using ::testing::HasSubstr;

// The error of a launcher called with `p` (nullptr stream: nothing may be launched).
template <typename Params, typename Launch>
std::string ErrorOf(const Params& p, Launch launch) {
  const OpStatus can = CanImplement(p);
  const OpStatus launched = launch(p, nullptr);
  EXPECT_EQ(can.message(), launched.message());
  EXPECT_FALSE(launched.ok());
  return launched.message();
}

// A pointer that is never dereferenced on the host (the checks only compare it with null).
void* Fake(uintptr_t n = 1) { return reinterpret_cast<void*>(uintptr_t{0x1000} * n); }

TEST(CudaKernelsTest, LaunchersRefuseBadParamsBeforeLaunching) {
  auto cast = [](const CastParams& p, cudaStream_t s) { return Cast(p, s); };
  EXPECT_THAT(ErrorOf(CastParams{.in = Fake(), .out = Fake(2), .n = -1}, cast),
              HasSubstr("Cast: n must be >= 0"));
  EXPECT_THAT(ErrorOf(CastParams{.in = nullptr, .out = Fake(2), .n = 4}, cast),
              HasSubstr("Cast: in is null"));
  EXPECT_THAT(ErrorOf(CastParams{.in = Fake(),
                                 .in_dtype = DType::kFloat32,
                                 .out = Fake(),
                                 .out_dtype = DType::kBfloat16,
                                 .n = 4},
                      cast),
              HasSubstr("in place"));
  EXPECT_THAT(
      ErrorOf(CastParams{.in = Fake(), .in_dtype = static_cast<DType>(7), .out = Fake(2), .n = 4},
              cast),
      HasSubstr("dtype"));

  auto residual_backward = [](const ResidualBackwardParams& p, cudaStream_t s) {
    return ResidualBackward(p, s);
  };
  EXPECT_THAT(
      ErrorOf(ResidualBackwardParams{.dout = Fake(), .da = Fake(), .n = 8}, residual_backward),
      HasSubstr("must not alias dout"));

  auto swiglu_backward = [](const SwigluBackwardParams& p, cudaStream_t s) {
    return SwigluBackward(p, s);
  };
  EXPECT_THAT(ErrorOf(SwigluBackwardParams{.dout = Fake(),
                                           .gate = Fake(2),
                                           .up = Fake(3),
                                           .dgate = Fake(4),
                                           .dup = Fake(4),
                                           .n = 8},
                      swiglu_backward),
              HasSubstr("different buffers"));

  auto rmsnorm = [](const RmsNormParams& p, cudaStream_t s) { return RmsNormForward(p, s); };
  EXPECT_THAT(ErrorOf(RmsNormParams{.x = Fake(),
                                    .weight = Fake(2),
                                    .out = Fake(3),
                                    .rstd = static_cast<float*>(Fake(4)),
                                    .rows = 2,
                                    .dim = 0},
                      rmsnorm),
              HasSubstr("RmsNormForward: dim must be in [1, 2^30]"));
  EXPECT_THAT(ErrorOf(RmsNormParams{.x = Fake(),
                                    .weight = Fake(2),
                                    .out = Fake(3),
                                    .rstd = static_cast<float*>(Fake(4)),
                                    .eps = NAN,
                                    .rows = 2,
                                    .dim = 8},
                      rmsnorm),
              HasSubstr("eps"));
  auto rmsnorm_backward = [](const RmsNormBackwardParams& p, cudaStream_t s) {
    return RmsNormBackward(p, s);
  };
  EXPECT_THAT(ErrorOf(RmsNormBackwardParams{.dout = Fake(),
                                            .x = Fake(2),
                                            .weight = Fake(3),
                                            .rstd = static_cast<float*>(Fake(4)),
                                            .dx = Fake(),
                                            .rows = 2,
                                            .dim = 8},
                      rmsnorm_backward),
              HasSubstr("must not alias"));

  auto rope = [](const RopeParams& p, cudaStream_t s) { return Rope(p, s); };
  const RopeParams good{.in = Fake(),
                        .out = Fake(2),
                        .cos_table = static_cast<float*>(Fake(3)),
                        .sin_table = static_cast<float*>(Fake(4)),
                        .table_rows = 16,
                        .seq_len = 8,
                        .num_heads = 2,
                        .head_dim = 64,
                        .past_len = 8};
  EXPECT_TRUE(CanImplement(good).ok()) << CanImplement(good).message();
  RopeParams odd = good;
  odd.head_dim = 63;
  EXPECT_THAT(ErrorOf(odd, rope), HasSubstr("head_dim must be even"));
  RopeParams past_table = good;
  past_table.past_len = 9;
  EXPECT_THAT(ErrorOf(past_table, rope), HasSubstr("positions up to 16 need tables"));
  RopeParams aliased = good;
  aliased.transposed = true;
  aliased.out = Fake();  // good.in
  EXPECT_THAT(ErrorOf(aliased, rope), HasSubstr("out != in"));

  auto adamw = [](const AdamWParams& p, cudaStream_t s) { return AdamWStep(p, s); };
  AdamWParams a{.param = static_cast<float*>(Fake()),
                .grad = static_cast<float*>(Fake(2)),
                .m = static_cast<float*>(Fake(3)),
                .v = static_cast<float*>(Fake(4)),
                .n = 10};
  a.beta2 = 1.0;
  EXPECT_THAT(ErrorOf(a, adamw), HasSubstr("betas"));
  a.beta2 = 0.95;
  a.step = 0;
  EXPECT_THAT(ErrorOf(a, adamw), HasSubstr("step must be > 0"));
}

TEST(CudaKernelsTest, AdamWMultiStepRefusesBadTensors) {
  auto multi = [](const AdamWMultiParams& p, cudaStream_t s) { return AdamWMultiStep(p, s); };
  AdamWTensorRef tensors[2] = {{.param = static_cast<float*>(Fake()),
                                .grad = static_cast<float*>(Fake(2)),
                                .m = static_cast<float*>(Fake(3)),
                                .v = static_cast<float*>(Fake(4)),
                                .n = 10},
                               {.n = 0}};  // empty: its null pointers are fine
  AdamWMultiParams p{.tensors = tensors, .count = 2};
  EXPECT_TRUE(CanImplement(p).ok()) << CanImplement(p).message();
  tensors[1].n = 5;
  EXPECT_THAT(ErrorOf(p, multi), HasSubstr("AdamWMultiStep: param is null"));
  tensors[1].n = -1;
  EXPECT_THAT(ErrorOf(p, multi), HasSubstr("AdamWMultiStep: n must be >= 0"));
  tensors[1].n = 0;
  p.step = 0;
  EXPECT_THAT(ErrorOf(p, multi), HasSubstr("step must be > 0"));
  p.step = 1;
  p.count = -2;
  EXPECT_THAT(ErrorOf(p, multi), HasSubstr("count must be >= 0"));
  // Only empty tensors: nothing to launch (there is no GPU here).
  tensors[0].n = 0;
  p.count = 2;
  EXPECT_TRUE(AdamWMultiStep(p, nullptr).ok());
  EXPECT_TRUE(AdamWMultiStep(AdamWMultiParams{}, nullptr).ok());
}

TEST(CudaKernelsTest, FillScaleAndCrossEntropyBackwardRefuseBadParams) {
  auto fill = [](const FillParams& p, cudaStream_t s) { return Fill(p, s); };
  EXPECT_THAT(ErrorOf(FillParams{.x = static_cast<float*>(Fake()), .n = -1}, fill),
              HasSubstr("Fill: n must be >= 0"));
  EXPECT_THAT(ErrorOf(FillParams{.x = nullptr, .n = 3}, fill), HasSubstr("Fill: x is null"));
  auto scale = [](const ScaleParams& p, cudaStream_t s) { return Scale(p, s); };
  EXPECT_THAT(ErrorOf(ScaleParams{.x = nullptr, .n = 3}, scale), HasSubstr("Scale: x is null"));

  auto backward = [](const CrossEntropyBackwardParams& p, cudaStream_t s) {
    return CrossEntropyBackward(p, s);
  };
  const CrossEntropyBackwardParams good{.logits = Fake(),
                                        .labels = static_cast<const int32_t*>(Fake(2)),
                                        .lse = static_cast<const float*>(Fake(3)),
                                        .dlogits = Fake(),
                                        .rows = 4,
                                        .vocab = 151936};
  EXPECT_TRUE(CanImplement(good).ok()) << CanImplement(good).message();
  CrossEntropyBackwardParams p = good;
  p.lse = nullptr;
  EXPECT_THAT(ErrorOf(p, backward), HasSubstr("CrossEntropyBackward: lse is null"));
  p = good;
  p.vocab = 0;
  EXPECT_THAT(ErrorOf(p, backward), HasSubstr("vocab must be in [1, 2^31)"));
  p = good;
  p.grad_scale = INFINITY;
  EXPECT_THAT(ErrorOf(p, backward), HasSubstr("grad_scale is not finite"));
}

TEST(CudaKernelsTest, AttentionRefusesBadShapesBeforeLaunching) {
  // The model's shapes: 14 query heads over 2 KV heads, head_dim 64, with a KV cache.
  const AttentionKernelShape qwen{.seq_len = 7,
                                  .past_len = 5,
                                  .kv_rows = 16,
                                  .num_heads = 14,
                                  .num_kv_heads = 2,
                                  .head_dim = 64};
  const AttentionParams good{.q = Fake(),
                             .k = Fake(2),
                             .v = Fake(3),
                             .o = Fake(4),
                             .lse = static_cast<float*>(Fake(5)),
                             .shape = qwen};
  EXPECT_TRUE(CanImplement(good).ok()) << CanImplement(good).message();
  auto forward = [](const AttentionParams& p, cudaStream_t s) { return AttentionForward(p, s); };
  AttentionParams p = good;
  p.shape.num_kv_heads = 3;
  EXPECT_THAT(ErrorOf(p, forward), HasSubstr("num_heads 14 is not a multiple of num_kv_heads 3"));
  p = good;
  p.shape.head_dim = 256;
  EXPECT_THAT(ErrorOf(p, forward), HasSubstr("head_dim must be in [1, 128]"));
  p = good;
  p.shape.kv_rows = 11;
  EXPECT_THAT(ErrorOf(p, forward), HasSubstr("kv_rows 11 < past_len + seq_len 12"));
  p = good;
  p.shape.softmax_scale = NAN;
  EXPECT_THAT(ErrorOf(p, forward), HasSubstr("softmax_scale"));
  p = good;
  p.lse = nullptr;
  EXPECT_THAT(ErrorOf(p, forward), HasSubstr("AttentionForward: lse is null"));
  p = good;
  p.shape.batch = 0;
  EXPECT_THAT(ErrorOf(p, forward), HasSubstr("batch must be positive"));

  auto backward = [](const AttentionBackwardParams& p, cudaStream_t s) {
    return AttentionBackward(p, s);
  };
  const AttentionBackwardParams good_backward{.q = Fake(),
                                              .k = Fake(2),
                                              .v = Fake(3),
                                              .o = Fake(4),
                                              .lse = static_cast<float*>(Fake(5)),
                                              .dout = Fake(6),
                                              .dq = Fake(7),
                                              .dk = Fake(8),
                                              .dv = Fake(9),
                                              .row_dot = static_cast<float*>(Fake(10)),
                                              .shape = qwen};
  EXPECT_TRUE(CanImplement(good_backward).ok()) << CanImplement(good_backward).message();
  AttentionBackwardParams b = good_backward;
  b.row_dot = nullptr;
  EXPECT_THAT(ErrorOf(b, backward), HasSubstr("row_dot is null"));
  b = good_backward;
  b.dk = Fake(6);  // dout
  EXPECT_THAT(ErrorOf(b, backward), HasSubstr("must not alias the inputs"));
  // Nothing to do is ok without a GPU.
  b = good_backward;
  b.shape.seq_len = 0;
  EXPECT_TRUE(AttentionBackward(b, nullptr).ok());
}

TEST(CudaKernelsTest, EmptyWorkIsOkAndLaunchesNothing) {
  // n = 0 with null pointers: ok without touching CUDA (there is no GPU here).
  EXPECT_TRUE(Cast(CastParams{}, nullptr).ok());
  EXPECT_TRUE(SwigluForward(SwigluParams{}, nullptr).ok());
  EXPECT_TRUE(ResidualForward(ResidualParams{}, nullptr).ok());
  EXPECT_TRUE(AdamWStep(AdamWParams{}, nullptr).ok());
  EXPECT_TRUE(Rope(RopeParams{.num_heads = 1, .head_dim = 2}, nullptr).ok());
  EXPECT_TRUE(RmsNormForward(RmsNormParams{.dim = 4}, nullptr).ok());
}

TEST(CudaKernelsTest, RopeTablesRotateAsTheCpuBackend) {
  const int64_t heads = 2, dim = 64, half = dim / 2, rows = 40;
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i)
    inv_freq[i] = static_cast<float>(std::pow(1e6, -2.0 * i / dim));
  const float factor = 1.25f;
  std::vector<float> cos_table(rows * half), sin_table(rows * half);
  MakeRopeTables(inv_freq.data(), half, factor, rows, cos_table.data(), sin_table.data());
  // The CPU backend rotating a unit pair (1, 0) at position p gives (c, s) exactly.
  std::vector<float> x(rows * heads * dim, 0.0f), y(x.size());
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < half; ++i) x[(t * heads + h) * dim + i] = 1.0f;
    }
  }
  ASSERT_TRUE(
      CpuBackend()
          .RopeForward(x.data(), y.data(),
                       RopeShape{.batch = 1, .seq_len = rows, .num_heads = heads, .head_dim = dim},
                       inv_freq.data(), factor)
          .ok());
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        ASSERT_EQ(y[(t * heads + h) * dim + i], cos_table[t * half + i]) << t << " " << i;
        ASSERT_EQ(y[(t * heads + h) * dim + i + half], sin_table[t * half + i]) << t << " " << i;
      }
    }
  }
}

TEST(CudaKernelsTest, EmbeddingBucketsGiveTheCpuBackendsSumsBitForBit) {
  const int64_t rows = 300, vocab = 50, dim = 17;
  std::vector<int32_t> ids(rows);
  for (int64_t r = 0; r < rows; ++r) ids[r] = static_cast<int32_t>((r * r * 7 + 3) % 23);
  EmbeddingBuckets b;
  ASSERT_TRUE(MakeEmbeddingBuckets(ids.data(), rows, vocab, &b).ok());
  ASSERT_EQ(b.starts.size(), b.ids.size() + 1);
  ASSERT_EQ(b.order.size(), static_cast<size_t>(rows));
  for (size_t k = 0; k < b.ids.size(); ++k) {
    if (k > 0) {
      EXPECT_LT(b.ids[k - 1], b.ids[k]);
    }
    for (int32_t i = b.starts[k]; i < b.starts[k + 1]; ++i) {
      EXPECT_EQ(ids[b.order[i]], b.ids[k]);
      if (i > b.starts[k]) {
        EXPECT_LT(b.order[i - 1], b.order[i]);  // rows ascending
      }
    }
  }
  // The kernel's loop, run here: per bucket and column, from the value already in dtable.
  const std::vector<float> dout = testing::RandomFloats(rows * dim, 21);
  std::vector<float> cpu = testing::RandomFloats(vocab * dim, 22), gpu_loop = cpu;
  ASSERT_TRUE(
      CpuBackend().EmbeddingBackward(ids.data(), dout.data(), cpu.data(), rows, vocab, dim).ok());
  for (size_t k = 0; k < b.ids.size(); ++k) {
    for (int64_t j = 0; j < dim; ++j) {
      float acc = gpu_loop[b.ids[k] * dim + j];
      for (int32_t i = b.starts[k]; i < b.starts[k + 1]; ++i) acc += dout[b.order[i] * dim + j];
      gpu_loop[b.ids[k] * dim + j] = acc;
    }
  }
  EXPECT_EQ(cpu, gpu_loop);

  ids[7] = static_cast<int32_t>(vocab);
  EXPECT_THAT(MakeEmbeddingBuckets(ids.data(), rows, vocab, &b).message(),
              HasSubstr("id 50 at row 7 is outside [0, 50)"));
  ids[7] = -1;
  EXPECT_THAT(MakeEmbeddingBuckets(ids.data(), rows, vocab, &b).message(), HasSubstr("row 7"));
  ASSERT_TRUE(MakeEmbeddingBuckets(nullptr, 0, vocab, &b).ok());
  EXPECT_TRUE(b.order.empty());
  EXPECT_EQ(b.starts, std::vector<int32_t>{0});
}

TEST(CudaKernelsTest, EmbeddingAndCrossEntropyRefuseBadParams) {
  auto embedding_backward = [](const EmbeddingBackwardParams& p, cudaStream_t s) {
    return EmbeddingBackward(p, s);
  };
  EXPECT_THAT(ErrorOf(EmbeddingBackwardParams{.dout = Fake(),
                                              .dtable = static_cast<float*>(Fake(2)),
                                              .order = static_cast<int32_t*>(Fake(3)),
                                              .starts = static_cast<int32_t*>(Fake(4)),
                                              .bucket_ids = static_cast<int32_t*>(Fake(5)),
                                              .buckets = 0,
                                              .rows = 4,
                                              .vocab = 10,
                                              .dim = 8},
                      embedding_backward),
              HasSubstr("buckets must be in [1, rows]"));
  auto embedding = [](const EmbeddingParams& p, cudaStream_t s) { return EmbeddingForward(p, s); };
  EXPECT_THAT(ErrorOf(EmbeddingParams{.ids = static_cast<int32_t*>(Fake()),
                                      .table = Fake(2),
                                      .out = Fake(3),
                                      .rows = 4,
                                      .vocab = 0,
                                      .dim = 8},
                      embedding),
              HasSubstr("vocab and dim must be > 0"));
  auto cross_entropy = [](const CrossEntropyParams& p, cudaStream_t s) {
    return CrossEntropy(p, s);
  };
  const CrossEntropyParams good{.logits = Fake(),
                                .labels = static_cast<int32_t*>(Fake(2)),
                                .losses = static_cast<float*>(Fake(3)),
                                .lse = static_cast<float*>(Fake(4)),
                                .rows = 3,
                                .vocab = 151936};
  EXPECT_TRUE(CanImplement(good).ok());
  CrossEntropyParams bad = good;
  bad.grad_scale = INFINITY;
  EXPECT_THAT(ErrorOf(bad, cross_entropy), HasSubstr("grad_scale"));
  bad = good;
  bad.lse = nullptr;
  EXPECT_THAT(ErrorOf(bad, cross_entropy), HasSubstr("CrossEntropy: lse is null"));
}

TEST(CudaKernelsTest, SumSquaresScratchAndItsCheck) {
  const int64_t sizes[] = {0, 1, kSumSquaresBlock, kSumSquaresBlock + 1, 3 * kSumSquaresBlock};
  EXPECT_EQ(SumSquaresScratch(sizes, 5), 0 + 1 + 1 + 2 + 3);
  const float* tensors[] = {nullptr, static_cast<float*>(Fake()), static_cast<float*>(Fake(2)),
                            static_cast<float*>(Fake(3)), static_cast<float*>(Fake(4))};
  SumSquaresParams p{.tensors = tensors,
                     .sizes = sizes,
                     .count = 5,
                     .partials = static_cast<double*>(Fake(5)),
                     .partials_capacity = 6,
                     .sum_squares = static_cast<double*>(Fake(6))};
  EXPECT_THAT(CanImplement(p).message(), HasSubstr("partials holds 6 doubles, 7 needed"));
  p.partials_capacity = 7;
  EXPECT_TRUE(CanImplement(p).ok()) << CanImplement(p).message();
  const float* with_null[] = {nullptr, nullptr, nullptr, nullptr, nullptr};
  p.tensors = with_null;
  EXPECT_THAT(CanImplement(p).message(), HasSubstr("tensor 1 has a negative size or is null"));
}

TEST(CudaKernelsTest, BlockSumsOfSquaresChecksItsArguments) {
  BlockSumSquaresParams p{.x = static_cast<float*>(Fake()),
                          .n = 100003,
                          .block_elements = 16384,
                          .sums = static_cast<double*>(Fake(2))};
  EXPECT_TRUE(CanImplement(p).ok()) << CanImplement(p).message();
  BlockSumSquaresParams bad = p;
  bad.block_elements = 0;
  EXPECT_THAT(CanImplement(bad).message(), HasSubstr("block_elements must be > 0, not 0"));
  bad = p;
  bad.n = -1;
  EXPECT_FALSE(CanImplement(bad).ok());
  bad = p;
  bad.sums = nullptr;
  EXPECT_THAT(CanImplement(bad).message(), HasSubstr("sums"));
  bad = p;
  bad.block_elements = 1;
  bad.n = int64_t{1} << 32;  // 2^32 blocks: more than one grid holds
  EXPECT_THAT(CanImplement(bad).message(), HasSubstr("too many blocks"));
  // Nothing to sum: no pointer needed.
  EXPECT_TRUE(CanImplement(BlockSumSquaresParams{.n = 0, .block_elements = 8}).ok());
}

TEST(CudaKernelsTest, CudaErrorsAreNamed) {
  EXPECT_TRUE(CudaStatus(cudaSuccess, "x").ok());
  EXPECT_THAT(CudaStatus(cudaErrorInvalidValue, "Cast").message(), HasSubstr("Cast: "));
  EXPECT_STREQ(DTypeName(DType::kBfloat16), "bf16");
  EXPECT_EQ(DTypeBytes(DType::kBfloat16), 2u);
  EXPECT_EQ(DTypeBytes(DType::kFloat32), 4u);
}

TEST(CudaKernelsTest, TreeSumRowsRefusesBadRowsAndOverlaps) {
  auto sum = [](const TreeSumRowsParams& p, cudaStream_t s) { return TreeSumRows(p, s); };
  const TreeSumRowsParams good{
      .rows = Fake(1), .row_stride = 16, .count = 4, .out = Fake(1000), .n = 16};
  EXPECT_TRUE(CanImplement(good).ok()) << CanImplement(good).message();
  TreeSumRowsParams p = good;
  p.count = 0;
  EXPECT_THAT(ErrorOf(p, sum), HasSubstr("TreeSumRows: count must be in [1, "));
  p = good;
  p.row_stride = 15;
  EXPECT_THAT(ErrorOf(p, sum), HasSubstr("row_stride 15 is less than n 16"));
  p = good;
  p.n = -1;
  EXPECT_THAT(ErrorOf(p, sum), HasSubstr("n must be >= 0"));
  p = good;
  p.dtype = static_cast<SumDType>(5);
  EXPECT_THAT(ErrorOf(p, sum), HasSubstr("dtype must be fp32 or fp64"));
  p = good;
  p.out = nullptr;
  EXPECT_THAT(ErrorOf(p, sum), HasSubstr("TreeSumRows: out is null"));
  // Out at row 0 is allowed; inside a later row, or straddling row 0's end, it is not.
  p = good;
  p.out = Fake(1);
  EXPECT_TRUE(CanImplement(p).ok());
  p.out = static_cast<char*>(Fake(1)) + 16 * sizeof(float);
  EXPECT_THAT(ErrorOf(p, sum), HasSubstr("out overlaps rows"));
  p.out = static_cast<char*>(Fake(1)) + 4;
  EXPECT_THAT(ErrorOf(p, sum), HasSubstr("out overlaps rows"));
  // fp64 rows are twice as long: an out just past the fp32 rows' end overlaps the fp64 ones.
  p = good;
  p.out = static_cast<char*>(Fake(1)) + 4 * 16 * sizeof(float);
  EXPECT_TRUE(CanImplement(p).ok());
  p.dtype = SumDType::kFloat64;
  EXPECT_THAT(ErrorOf(p, sum), HasSubstr("out overlaps rows"));
  // Nothing to sum: no pointers needed.
  EXPECT_TRUE(sum(TreeSumRowsParams{.count = 3, .n = 0}, nullptr).ok());
}

}  // namespace
}  // namespace qtrain::kernels::cuda
