// Google Benchmark of the CPU kernels at Qwen2-0.5B layer shapes (hidden 896, 14 heads over 2
// KV heads of 64, MLP 4864) and a few token counts. Reports FLOP/s where the FLOPs are clear.
//
//   kernels_bench --benchmark_filter=Attention
//
// Like qtrain, it sets OPENBLAS_CORETYPE (and OPENBLAS_NUM_THREADS=1) and restarts itself
// (common/runtime_env.h); the "blas_core" label shows which OpenBLAS kernels run. Threads:
// OMP_NUM_THREADS.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/runtime_env.h"
#include "kernels/cpu/gemm.h"
#include "kernels/ops.h"

namespace qtrain::kernels {
namespace {

constexpr int64_t kHidden = 896, kHeads = 14, kKvHeads = 2, kHeadDim = 64, kMlp = 4864;

std::vector<float> Random(int64_t n, float scale = 1.0f) {
  std::mt19937 rng(static_cast<uint32_t>(n));
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

void Check(const OpStatus& st, benchmark::State& state) {
  if (!st.ok()) state.SkipWithError(st.message().c_str());
}

void SetLabels(benchmark::State& state, double flops_per_iter) {
  state.counters["FLOP/s"] = benchmark::Counter(
      flops_per_iter, benchmark::Counter::kIsRate | benchmark::Counter::kIsIterationInvariant);
  state.SetLabel(std::string("blas_core=") + openblas_get_corename());
}

// Linear forward, out x in at the MLP up projection; arg: rows.
void BM_LinearForward(benchmark::State& state) {
  const int64_t rows = state.range(0);
  const auto x = Random(rows * kHidden), w = Random(kMlp * kHidden);
  std::vector<float> y(rows * kMlp);
  for (auto _ : state) {
    Check(CpuBackend().LinearForward(x.data(), w.data(), nullptr, y.data(), rows, kHidden, kMlp),
          state);
  }
  SetLabels(state, 2.0 * rows * kHidden * kMlp);
}
BENCHMARK(BM_LinearForward)->Arg(512)->Arg(2048)->UseRealTime();

void BM_LinearBackward(benchmark::State& state) {
  const int64_t rows = state.range(0);
  const auto x = Random(rows * kHidden), w = Random(kMlp * kHidden), dy = Random(rows * kMlp);
  std::vector<float> dx(rows * kHidden), dw(kMlp * kHidden);
  for (auto _ : state) {
    Check(CpuBackend().LinearBackward(dy.data(), x.data(), w.data(), dx.data(), dw.data(), nullptr,
                                      rows, kHidden, kMlp),
          state);
  }
  SetLabels(state, 4.0 * rows * kHidden * kMlp);
}
BENCHMARK(BM_LinearBackward)->Arg(512)->Arg(2048)->UseRealTime();

// The qwen2-tiny layer GEMMs (2048 rows): Sgemm (which picks the tile GEMM or OpenBLAS per
// shape, kernels/cpu/gemm.h) beside plain single-threaded OpenBLAS calls on the same blocks.
// Args: op (0 = x W^T, 1 = dy W, 2 = dy^T x), m, n, k, and 1 to force OpenBLAS.
void BM_Gemm(benchmark::State& state) {
  const int64_t op = state.range(0), m = state.range(1), n = state.range(2), k = state.range(3);
  const bool openblas = state.range(4) == 1;
  const bool trans_a = op == 2, trans_b = op == 0;
  const auto a = Random(m * k), b = Random(k * n);
  std::vector<float> c(m * n);
  const int64_t lda = trans_a ? m : k, ldb = trans_b ? k : n;
  openblas_set_num_threads(1);
  for (auto _ : state) {
    if (openblas) {
      for (int64_t m0 = 0; m0 < m; m0 += cpu::kGemmBlock) {
        const int64_t rows = std::min(cpu::kGemmBlock, m - m0);
        cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, rows, n, k, 1.0f,
                    trans_a ? a.data() + m0 : a.data() + m0 * lda, lda, b.data(), ldb, 1.0f,
                    c.data() + m0 * n, n);
      }
    } else {
      cpu::Sgemm({.trans_a = trans_a,
                  .trans_b = trans_b,
                  .m = m,
                  .n = n,
                  .k = k,
                  .a = a.data(),
                  .lda = lda,
                  .b = b.data(),
                  .ldb = ldb,
                  .beta = 1.0f,
                  .c = c.data(),
                  .ldc = n});
    }
  }
  SetLabels(state, 2.0 * m * n * k);
}
BENCHMARK(BM_Gemm)
    ->ArgsProduct({{0}, {2048}, {32, 64, 176}, {64}, {0, 1}})
    ->ArgsProduct({{1}, {2048}, {64}, {64, 176}, {0, 1}})
    ->ArgsProduct({{2}, {32, 64, 176}, {64}, {2048}, {0, 1}})
    ->UseRealTime();

// Attention benchmarks take (T, head_dim): 64 is Qwen2-0.5B's, 16 the qwen2-tiny preset's.
// The tied LM head forward and backward over one chunk of rows; args: rows, vocab, dim
// (256 x 4096 x 64 is a qwen2-tiny chunk, 256 x 151936 x 896 a Qwen2-0.5B one).
void BM_LmHead(benchmark::State& state) {
  const int64_t rows = state.range(0), vocab = state.range(1), dim = state.range(2);
  const auto y = Random(rows * dim), e = Random(vocab * dim), dz = Random(rows * vocab);
  std::vector<float> logits(rows * vocab), dy(rows * dim), de(vocab * dim);
  for (auto _ : state) {
    Check(CpuBackend().LmHeadForward(y.data(), e.data(), logits.data(), rows, vocab, dim), state);
    Check(CpuBackend().LmHeadBackward(dz.data(), y.data(), e.data(), dy.data(), de.data(), rows,
                                      vocab, dim),
          state);
  }
  SetLabels(state, 6.0 * rows * vocab * dim);
}
BENCHMARK(BM_LmHead)->Args({256, 4096, 64})->Args({256, 151936, 896})->UseRealTime();

AttentionShape Shape(int64_t seq_len, int64_t head_dim) {
  return AttentionShape{.batch = 1,
                        .seq_len = seq_len,
                        .num_heads = kHeads,
                        .num_kv_heads = kKvHeads,
                        .head_dim = head_dim};
}

// Causal attention FLOPs: two products of T x T/2 x D per head.
double AttentionFlops(int64_t t, int64_t d) { return 2.0 * 2.0 * kHeads * t * t / 2.0 * d; }

void BM_AttentionForward(benchmark::State& state) {
  const int64_t t = state.range(0), d = state.range(1);
  const auto q = Random(t * kHeads * d), k = Random(t * kKvHeads * d), v = Random(t * kKvHeads * d);
  std::vector<float> o(q.size()), lse(kHeads * t);
  for (auto _ : state) {
    Check(CpuBackend().AttentionForward(q.data(), k.data(), v.data(), o.data(), lse.data(),
                                        Shape(t, d)),
          state);
  }
  SetLabels(state, AttentionFlops(t, d));
}
BENCHMARK(BM_AttentionForward)
    ->Args({512, 64})
    ->Args({2048, 64})
    ->Args({512, 16})
    ->Args({2048, 16})
    ->UseRealTime();

void BM_AttentionBackward(benchmark::State& state) {
  const int64_t t = state.range(0), d = state.range(1);
  const auto q = Random(t * kHeads * d), k = Random(t * kKvHeads * d), v = Random(t * kKvHeads * d),
             dout = Random(q.size());
  std::vector<float> o(q.size()), lse(kHeads * t), dq(q.size()), dk(k.size()), dv(v.size());
  Check(CpuBackend().AttentionForward(q.data(), k.data(), v.data(), o.data(), lse.data(),
                                      Shape(t, d)),
        state);
  for (auto _ : state) {
    Check(CpuBackend().AttentionBackward(q.data(), k.data(), v.data(), o.data(), lse.data(),
                                         dout.data(), dq.data(), dk.data(), dv.data(), Shape(t, d)),
          state);
  }
  SetLabels(state, 2.5 * AttentionFlops(t, d));  // the 5 products of FlashAttention-2's backward
}
BENCHMARK(BM_AttentionBackward)
    ->Args({512, 64})
    ->Args({2048, 64})
    ->Args({512, 16})
    ->Args({2048, 16})
    ->UseRealTime();

void BM_RmsNormForwardBackward(benchmark::State& state) {
  const int64_t rows = state.range(0);
  const auto x = Random(rows * kHidden), w = Random(kHidden), dy = Random(rows * kHidden);
  std::vector<float> y(x.size()), rstd(rows), dx(x.size()), dw(kHidden);
  for (auto _ : state) {
    Check(CpuBackend().RmsNormForward(x.data(), w.data(), 1e-6f, y.data(), rstd.data(), rows,
                                      kHidden),
          state);
    Check(CpuBackend().RmsNormBackward(dy.data(), x.data(), w.data(), rstd.data(), dx.data(),
                                       dw.data(), rows, kHidden),
          state);
  }
  state.SetBytesProcessed(state.iterations() * rows * kHidden * 6 * sizeof(float));
}
BENCHMARK(BM_RmsNormForwardBackward)->Arg(2048)->UseRealTime();

void BM_CrossEntropy(benchmark::State& state) {
  const int64_t rows = state.range(0), vocab = 151936;
  const auto logits = Random(rows * vocab, 5.0f);
  std::vector<int32_t> labels(rows);
  for (int64_t r = 0; r < rows; ++r) labels[r] = static_cast<int32_t>(r * 7919 % vocab);
  std::vector<float> losses(rows), lse(rows), dlogits(logits.size());
  for (auto _ : state) {
    Check(CpuBackend().CrossEntropyForward(logits.data(), labels.data(), losses.data(), lse.data(),
                                           nullptr, nullptr, rows, vocab, kIgnoreIndex),
          state);
    Check(CpuBackend().CrossEntropyBackward(logits.data(), labels.data(), lse.data(), 1.0f / rows,
                                            dlogits.data(), rows, vocab, kIgnoreIndex),
          state);
  }
  state.SetBytesProcessed(state.iterations() * rows * vocab * 3 * sizeof(float));
}
BENCHMARK(BM_CrossEntropy)->Arg(64)->UseRealTime();

void BM_AdamW(benchmark::State& state) {
  const int64_t n = state.range(0);
  auto p = Random(n), m = Random(n), v = Random(n, 0.0f);
  const auto g = Random(n);
  AdamWParams params;
  for (auto _ : state) {
    Check(CpuBackend().AdamWStep(p.data(), g.data(), m.data(), v.data(), n, params), state);
  }
  state.SetBytesProcessed(state.iterations() * n * 7 * sizeof(float));
}
BENCHMARK(BM_AdamW)->Arg(1 << 22)->UseRealTime();

}  // namespace
}  // namespace qtrain::kernels

int main(int argc, char** argv) {
  qtrain::ConfigureRuntimeEnvironment(argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
