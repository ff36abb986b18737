// The CPU backend: fp32 kernels, and bf16 storage through them. Each op's forward and backward
// live side by side in their own file (embedding.cc, rmsnorm.cc, linear.cc, rope.cc,
// attention.cc, swiglu.cc, residual.cc, cross_entropy.cc, adamw.cc); bf16.cc puts the typed
// interface over them; this class only declares them. Parallel loops use OpenMP with
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
  OpStatus Fill(Tensor x, int64_t n, float value) override;
  OpStatus Scale(Tensor x, int64_t n, float alpha) override;
  OpStatus Cast(ConstTensor in, Tensor out, int64_t n) override;
  OpStatus Synchronize() override { return OpStatus::Ok(); }

  // The ops over typed tensors (bf16.cc): all-fp32 calls go straight to the fp32 kernels below;
  // bf16 tensors are widened to fp32 copies first and the outputs rounded back afterwards.
  OpStatus EmbeddingForward(const int32_t* ids, ConstTensor table, Tensor out, int64_t rows,
                            int64_t vocab, int64_t dim) override;
  OpStatus EmbeddingBackward(const int32_t* ids, ConstTensor dout, float* dtable, int64_t rows,
                             int64_t vocab, int64_t dim) override;
  OpStatus RmsNormForward(ConstTensor x, ConstTensor weight, float eps, Tensor out, float* rstd,
                          int64_t rows, int64_t dim) override;
  OpStatus RmsNormBackward(ConstTensor dout, ConstTensor x, ConstTensor weight, const float* rstd,
                           Tensor dx, float* dweight, int64_t rows, int64_t dim) override;
  OpStatus LinearForward(ConstTensor x, ConstTensor weight, ConstTensor bias, Tensor y,
                         int64_t rows, int64_t in, int64_t out) override;
  OpStatus LinearBackward(ConstTensor dy, ConstTensor x, ConstTensor weight, Tensor dx,
                          float* dweight, float* dbias, int64_t rows, int64_t in,
                          int64_t out) override;
  OpStatus LmHeadForward(ConstTensor y, ConstTensor embedding, float* logits, int64_t rows,
                         int64_t vocab, int64_t dim) override;
  OpStatus LmHeadBackward(const float* dlogits, ConstTensor y, ConstTensor embedding, Tensor dy,
                          float* dembedding, int64_t rows, int64_t vocab, int64_t dim) override;
  OpStatus RopeForward(ConstTensor x, Tensor y, const RopeShape& shape, const float* inv_freq,
                       float attention_factor) override;
  OpStatus RopeBackward(ConstTensor dy, Tensor dx, const RopeShape& shape, const float* inv_freq,
                        float attention_factor) override;
  OpStatus AttentionForward(ConstTensor q, ConstTensor k, ConstTensor v, Tensor o, float* lse,
                            const AttentionShape& shape) override;
  OpStatus AttentionBackward(ConstTensor q, ConstTensor k, ConstTensor v, ConstTensor o,
                             const float* lse, ConstTensor dout, Tensor dq, Tensor dk, Tensor dv,
                             const AttentionShape& shape) override;
  OpStatus DcaAttentionForward(ConstTensor q_intra, ConstTensor q_succ, ConstTensor q_inter,
                               ConstTensor k, ConstTensor v, Tensor o, float* lse,
                               const DcaAttentionShape& shape) override;
  OpStatus SwigluForward(ConstTensor gate, ConstTensor up, Tensor out, int64_t rows,
                         int64_t dim) override;
  OpStatus SwigluBackward(ConstTensor dout, ConstTensor gate, ConstTensor up, Tensor dgate,
                          Tensor dup, int64_t rows, int64_t dim) override;
  OpStatus ResidualForward(ConstTensor a, ConstTensor b, Tensor out, int64_t n) override;
  OpStatus ResidualBackward(ConstTensor dout, Tensor da, Tensor db, int64_t n) override;

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
  OpStatus AdamWMultiStep(const AdamWTensor* tensors, int64_t count,
                          const AdamWParams& params) override;
  OpStatus SumOfSquares(const float* const* tensors, const int64_t* sizes, int64_t count,
                        double* sum_squares) override;
  OpStatus BlockSumsOfSquares(const float* x, int64_t n, int64_t block_elements,
                              double* sums) override;

 private:
  // The fp32 kernels, one file per op (embedding.cc, rmsnorm.cc, ...).
  OpStatus FillF32(float* x, int64_t n, float value);
  OpStatus ScaleF32(float* x, int64_t n, float alpha);
  OpStatus EmbeddingForwardF32(const int32_t* ids, const float* table, float* out, int64_t rows,
                               int64_t vocab, int64_t dim);
  OpStatus EmbeddingBackwardF32(const int32_t* ids, const float* dout, float* dtable, int64_t rows,
                                int64_t vocab, int64_t dim);
  OpStatus RmsNormForwardF32(const float* x, const float* weight, float eps, float* out,
                             float* rstd, int64_t rows, int64_t dim);
  OpStatus RmsNormBackwardF32(const float* dout, const float* x, const float* weight,
                              const float* rstd, float* dx, float* dweight, int64_t rows,
                              int64_t dim);
  OpStatus LinearForwardF32(const float* x, const float* weight, const float* bias, float* y,
                            int64_t rows, int64_t in, int64_t out);
  OpStatus LinearBackwardF32(const float* dy, const float* x, const float* weight, float* dx,
                             float* dweight, float* dbias, int64_t rows, int64_t in, int64_t out);
  OpStatus LmHeadForwardF32(const float* y, const float* embedding, float* logits, int64_t rows,
                            int64_t vocab, int64_t dim);
  OpStatus LmHeadBackwardF32(const float* dlogits, const float* y, const float* embedding,
                             float* dy, float* dembedding, int64_t rows, int64_t vocab,
                             int64_t dim);
  OpStatus RopeForwardF32(const float* x, float* y, const RopeShape& shape, const float* inv_freq,
                          float attention_factor);
  OpStatus RopeBackwardF32(const float* dy, float* dx, const RopeShape& shape,
                           const float* inv_freq, float attention_factor);
  OpStatus AttentionForwardF32(const float* q, const float* k, const float* v, float* o, float* lse,
                               const AttentionShape& shape);
  OpStatus AttentionBackwardF32(const float* q, const float* k, const float* v, const float* o,
                                const float* lse, const float* dout, float* dq, float* dk,
                                float* dv, const AttentionShape& shape);
  OpStatus DcaAttentionForwardF32(const float* q_intra, const float* q_succ, const float* q_inter,
                                  const float* k, const float* v, float* o, float* lse,
                                  const DcaAttentionShape& shape);
  OpStatus SwigluForwardF32(const float* gate, const float* up, float* out, int64_t rows,
                            int64_t dim);
  OpStatus SwigluBackwardF32(const float* dout, const float* gate, const float* up, float* dgate,
                             float* dup, int64_t rows, int64_t dim);
  OpStatus ResidualForwardF32(const float* a, const float* b, float* out, int64_t n);
  OpStatus ResidualBackwardF32(const float* dout, float* da, float* db, int64_t n);
};

}  // namespace qtrain::kernels::cpu

#endif  // QTRAIN_KERNELS_CPU_CPU_BACKEND_H_
