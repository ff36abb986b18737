// The fp32 CPU backend. Each op's forward and backward live side by side in their own file
// (embedding.cc, rmsnorm.cc, linear.cc, rope.cc, attention.cc, swiglu.cc, residual.cc,
// cross_entropy.cc, adamw.cc); this class only declares them. Parallel loops use OpenMP with
// static partitions of fixed-size work items and no float atomics, so results do not depend on
// the OpenMP thread count; GEMMs go to Sgemm (gemm.h), which
// splits them the same way into single-threaded OpenBLAS calls.
#ifndef QTRAIN_KERNELS_CPU_CPU_BACKEND_H_
#define QTRAIN_KERNELS_CPU_CPU_BACKEND_H_

#include "kernels/ops.h"

namespace qtrain::kernels::cpu {

class CpuBackendImpl final : public Backend {
 public:
  std::string_view name() const override { return "cpu"; }

  void* Alloc(size_t bytes) override;
  void Free(void* ptr) override;
  OpStatus CopyHostToBackend(void* dst, const void* src, size_t bytes) override;
  OpStatus CopyBackendToHost(void* dst, const void* src, size_t bytes) override;
  OpStatus CopyWithinBackend(void* dst, const void* src, size_t bytes) override;
  OpStatus Fill(float* x, int64_t n, float value) override;
  OpStatus Scale(float* x, int64_t n, float alpha) override;
  OpStatus Synchronize() override { return OpStatus::Ok(); }

  OpStatus EmbeddingForward(const int32_t* ids, const float* table, float* out, int64_t rows,
                            int64_t vocab, int64_t dim) override;
  OpStatus EmbeddingBackward(const int32_t* ids, const float* dout, float* dtable, int64_t rows,
                             int64_t vocab, int64_t dim) override;

  OpStatus RmsNormForward(const float* x, const float* weight, float eps, float* out, float* rstd,
                          int64_t rows, int64_t dim) override;
  OpStatus RmsNormBackward(const float* dout, const float* x, const float* weight,
                           const float* rstd, float* dx, float* dweight, int64_t rows,
                           int64_t dim) override;

  OpStatus LinearForward(const float* x, const float* weight, const float* bias, float* y,
                         int64_t rows, int64_t in, int64_t out) override;
  OpStatus LinearBackward(const float* dy, const float* x, const float* weight, float* dx,
                          float* dweight, float* dbias, int64_t rows, int64_t in,
                          int64_t out) override;
  OpStatus LmHeadForward(const float* y, const float* embedding, float* logits, int64_t rows,
                         int64_t vocab, int64_t dim) override;
  OpStatus LmHeadBackward(const float* dlogits, const float* y, const float* embedding, float* dy,
                          float* dembedding, int64_t rows, int64_t vocab, int64_t dim) override;

  OpStatus RopeForward(const float* x, float* y, const RopeShape& shape, const float* inv_freq,
                       float attention_factor) override;
  OpStatus RopeBackward(const float* dy, float* dx, const RopeShape& shape, const float* inv_freq,
                        float attention_factor) override;

  OpStatus AttentionForward(const float* q, const float* k, const float* v, float* o, float* lse,
                            const AttentionShape& shape) override;
  OpStatus AttentionBackward(const float* q, const float* k, const float* v, const float* o,
                             const float* lse, const float* dout, float* dq, float* dk, float* dv,
                             const AttentionShape& shape) override;
  OpStatus DcaAttentionForward(const float* q_intra, const float* q_succ, const float* q_inter,
                               const float* k, const float* v, float* o, float* lse,
                               const DcaAttentionShape& shape) override;

  OpStatus SwigluForward(const float* gate, const float* up, float* out, int64_t rows,
                         int64_t dim) override;
  OpStatus SwigluBackward(const float* dout, const float* gate, const float* up, float* dgate,
                          float* dup, int64_t rows, int64_t dim) override;

  OpStatus ResidualForward(const float* a, const float* b, float* out, int64_t n) override;
  OpStatus ResidualBackward(const float* dout, float* da, float* db, int64_t n) override;

  OpStatus CrossEntropyForward(const float* logits, const int32_t* labels, float* losses,
                               float* lse, double* loss_sum, int64_t* num_valid, int64_t rows,
                               int64_t vocab, int32_t ignore_index) override;
  OpStatus CrossEntropyBackward(const float* logits, const int32_t* labels, const float* lse,
                                float grad_scale, float* dlogits, int64_t rows, int64_t vocab,
                                int32_t ignore_index) override;
  OpStatus CrossEntropyForwardBackward(const float* logits, const int32_t* labels, float grad_scale,
                                       float* losses, float* lse, double* loss_sum,
                                       int64_t* num_valid, float* dlogits, int64_t rows,
                                       int64_t vocab, int32_t ignore_index) override;

  OpStatus AdamWStep(float* param, const float* grad, float* m, float* v, int64_t n,
                     const AdamWParams& params) override;
  OpStatus SumOfSquares(const float* const* tensors, const int64_t* sizes, int64_t count,
                        double* sum_squares) override;
};

}  // namespace qtrain::kernels::cpu

#endif  // QTRAIN_KERNELS_CPU_CPU_BACKEND_H_
