#include "kernels/cpu/gemm.h"

#include <cblas.h>
#include <omp.h>

#include <mutex>

#include "kernels/cpu/parallel.h"

namespace qtrain::kernels::cpu {
namespace {

// OpenBLAS's own thread pool stays unused: every call below is single-threaded.
void UseSingleThreadedBlas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

void BlockGemm(const GemmParams& p, int64_t row0, int64_t rows, int64_t col0, int64_t cols) {
  const float* a = p.trans_a ? p.a + row0 : p.a + row0 * p.lda;
  const float* b = p.trans_b ? p.b + col0 * p.ldb : p.b + col0;
  cblas_sgemm(CblasRowMajor, p.trans_a ? CblasTrans : CblasNoTrans,
              p.trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(rows),
              static_cast<int>(cols), static_cast<int>(p.k), 1.0f, a, static_cast<int>(p.lda), b,
              static_cast<int>(p.ldb), p.beta, p.c + row0 * p.ldc + col0, static_cast<int>(p.ldc));
}

}  // namespace

void Sgemm(const GemmParams& p) {
  if (p.m == 0 || p.n == 0) return;
  UseSingleThreadedBlas();
  const bool split_rows = p.m >= 2 * kGemmBlock || p.m >= p.n;
  const int64_t extent = split_rows ? p.m : p.n;
  const int64_t blocks = (extent + kGemmBlock - 1) / kGemmBlock;
  const bool parallel = blocks > 1 && !omp_in_parallel() && WorthParallel(p.m * p.n * p.k);
#pragma omp parallel for schedule(dynamic, 1) if (parallel)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t begin = blk * kGemmBlock;
    const int64_t size = extent - begin < kGemmBlock ? extent - begin : kGemmBlock;
    if (split_rows) {
      BlockGemm(p, begin, size, 0, p.n);
    } else {
      BlockGemm(p, 0, p.m, begin, size);
    }
  }
}

}  // namespace qtrain::kernels::cpu
