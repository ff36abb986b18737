// A Backend that passes every op to another one: the base of backends that change one thing
// about another (tests' decorators that break an op, count memory, or move its addresses).
// Override the ops that differ; the rest reach `inner()` unchanged.
#ifndef QTRAIN_KERNELS_FORWARDING_BACKEND_H_
#define QTRAIN_KERNELS_FORWARDING_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kernels/ops.h"

namespace qtrain::kernels {

class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(Backend& inner) : inner_(inner) {}
  Backend& inner() const { return inner_; }
  std::string_view name() const override { return inner_.name(); }

  void* Alloc(size_t bytes) override { return inner_.Alloc(bytes); }
  void Free(void* ptr) override { inner_.Free(ptr); }
  OpStatus CopyHostToBackend(void* dst, const void* src, size_t bytes) override {
    return inner_.CopyHostToBackend(dst, src, bytes);
  }
  OpStatus CopyBackendToHost(void* dst, const void* src, size_t bytes) override {
    return inner_.CopyBackendToHost(dst, src, bytes);
  }
  OpStatus CopyWithinBackend(void* dst, const void* src, size_t bytes) override {
    return inner_.CopyWithinBackend(dst, src, bytes);
  }
  OpStatus Fill(Tensor x, int64_t n, float value) override { return inner_.Fill(x, n, value); }
  OpStatus Scale(Tensor x, int64_t n, float alpha) override { return inner_.Scale(x, n, alpha); }
  OpStatus Cast(ConstTensor in, Tensor out, int64_t n) override { return inner_.Cast(in, out, n); }
  OpStatus Synchronize() override { return inner_.Synchronize(); }
  OpStatus EmbeddingForward(const int32_t* ids, ConstTensor table, Tensor out, int64_t rows,
                            int64_t vocab, int64_t dim) override {
    return inner_.EmbeddingForward(ids, table, out, rows, vocab, dim);
  }
  OpStatus EmbeddingBackward(const int32_t* ids, ConstTensor dout, float* dtable, int64_t rows,
                             int64_t vocab, int64_t dim) override {
    return inner_.EmbeddingBackward(ids, dout, dtable, rows, vocab, dim);
  }
  OpStatus RmsNormForward(ConstTensor x, ConstTensor weight, float eps, Tensor out, float* rstd,
                          int64_t rows, int64_t dim) override {
    return inner_.RmsNormForward(x, weight, eps, out, rstd, rows, dim);
  }
  OpStatus RmsNormBackward(ConstTensor dout, ConstTensor x, ConstTensor weight, const float* rstd,
                           Tensor dx, float* dweight, int64_t rows, int64_t dim) override {
    return inner_.RmsNormBackward(dout, x, weight, rstd, dx, dweight, rows, dim);
  }
  OpStatus LinearForward(ConstTensor x, ConstTensor weight, ConstTensor bias, Tensor y,
                         int64_t rows, int64_t in, int64_t out) override {
    return inner_.LinearForward(x, weight, bias, y, rows, in, out);
  }
  OpStatus LinearBackward(ConstTensor dy, ConstTensor x, ConstTensor weight, Tensor dx,
                          float* dweight, float* dbias, int64_t rows, int64_t in,
                          int64_t out) override {
    return inner_.LinearBackward(dy, x, weight, dx, dweight, dbias, rows, in, out);
  }
  OpStatus LmHeadForward(ConstTensor y, ConstTensor embedding, float* logits, int64_t rows,
                         int64_t vocab, int64_t dim) override {
    return inner_.LmHeadForward(y, embedding, logits, rows, vocab, dim);
  }
  OpStatus LmHeadBackward(const float* dlogits, ConstTensor y, ConstTensor embedding, Tensor dy,
                          float* dembedding, int64_t rows, int64_t vocab, int64_t dim) override {
    return inner_.LmHeadBackward(dlogits, y, embedding, dy, dembedding, rows, vocab, dim);
  }
  OpStatus RopeForward(ConstTensor x, Tensor y, const RopeShape& shape, const float* inv_freq,
                       float attention_factor) override {
    return inner_.RopeForward(x, y, shape, inv_freq, attention_factor);
  }
  OpStatus RopeBackward(ConstTensor dy, Tensor dx, const RopeShape& shape, const float* inv_freq,
                        float attention_factor) override {
    return inner_.RopeBackward(dy, dx, shape, inv_freq, attention_factor);
  }
  OpStatus AttentionForward(ConstTensor q, ConstTensor k, ConstTensor v, Tensor o, float* lse,
                            const AttentionShape& shape) override {
    return inner_.AttentionForward(q, k, v, o, lse, shape);
  }
  OpStatus AttentionBackward(ConstTensor q, ConstTensor k, ConstTensor v, ConstTensor o,
                             const float* lse, ConstTensor dout, Tensor dq, Tensor dk, Tensor dv,
                             const AttentionShape& shape) override {
    return inner_.AttentionBackward(q, k, v, o, lse, dout, dq, dk, dv, shape);
  }
  OpStatus DcaAttentionForward(ConstTensor q_intra, ConstTensor q_succ, ConstTensor q_inter,
                               ConstTensor k, ConstTensor v, Tensor o, float* lse,
                               const DcaAttentionShape& shape) override {
    return inner_.DcaAttentionForward(q_intra, q_succ, q_inter, k, v, o, lse, shape);
  }
  OpStatus SwigluForward(ConstTensor gate, ConstTensor up, Tensor out, int64_t rows,
                         int64_t dim) override {
    return inner_.SwigluForward(gate, up, out, rows, dim);
  }
  OpStatus SwigluBackward(ConstTensor dout, ConstTensor gate, ConstTensor up, Tensor dgate,
                          Tensor dup, int64_t rows, int64_t dim) override {
    return inner_.SwigluBackward(dout, gate, up, dgate, dup, rows, dim);
  }
  OpStatus ResidualForward(ConstTensor a, ConstTensor b, Tensor out, int64_t n) override {
    return inner_.ResidualForward(a, b, out, n);
  }
  OpStatus ResidualBackward(ConstTensor dout, Tensor da, Tensor db, int64_t n) override {
    return inner_.ResidualBackward(dout, da, db, n);
  }
  OpStatus CrossEntropyForward(const float* logits, const int32_t* labels, float* losses,
                               float* lse, double* loss_sum, int64_t* num_valid, int64_t rows,
                               int64_t vocab, int32_t ignore_index) override {
    return inner_.CrossEntropyForward(logits, labels, losses, lse, loss_sum, num_valid, rows, vocab,
                                      ignore_index);
  }
  OpStatus CrossEntropyBackward(const float* logits, const int32_t* labels, const float* lse,
                                float grad_scale, float* dlogits, int64_t rows, int64_t vocab,
                                int32_t ignore_index) override {
    return inner_.CrossEntropyBackward(logits, labels, lse, grad_scale, dlogits, rows, vocab,
                                       ignore_index);
  }
  OpStatus CrossEntropyForwardBackward(const float* logits, const int32_t* labels, float grad_scale,
                                       float* losses, float* lse, double* loss_sum,
                                       int64_t* num_valid, float* dlogits, int64_t rows,
                                       int64_t vocab, int32_t ignore_index) override {
    return inner_.CrossEntropyForwardBackward(logits, labels, grad_scale, losses, lse, loss_sum,
                                              num_valid, dlogits, rows, vocab, ignore_index);
  }
  OpStatus AdamWStep(float* param, const float* grad, float* m, float* v, int64_t n,
                     const AdamWParams& params) override {
    return inner_.AdamWStep(param, grad, m, v, n, params);
  }
  OpStatus AdamWMultiStep(const AdamWTensor* tensors, int64_t count,
                          const AdamWParams& params) override {
    return inner_.AdamWMultiStep(tensors, count, params);
  }
  OpStatus SumOfSquares(const float* const* tensors, const int64_t* sizes, int64_t count,
                        double* sum_squares) override {
    return inner_.SumOfSquares(tensors, sizes, count, sum_squares);
  }
  OpStatus BlockSumsOfSquares(const float* x, int64_t n, int64_t block_elements,
                              double* sums) override {
    return inner_.BlockSumsOfSquares(x, n, block_elements, sums);
  }

 private:
  Backend& inner_;
};

}  // namespace qtrain::kernels

#endif  // QTRAIN_KERNELS_FORWARDING_BACKEND_H_
