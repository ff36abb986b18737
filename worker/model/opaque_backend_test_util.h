// Test-only backend: the CPU backend behind pointers the host cannot dereference, as device
// memory is to it. Alloc hands out the CPU backend's memory with bit 52 of the address flipped
// (a non-canonical address on x86-64, outside the virtual address range and below the ignored top
// byte on arm64), and every op flips it back before calling the CPU backend. Code that reads or
// writes backend memory other than through Backend::Copy* crashes on it, as it would on a GPU;
// code that keeps to the interface gets the CPU backend's results, bit for bit.
#ifndef QTRAIN_WORKER_MODEL_OPAQUE_BACKEND_TEST_UTIL_H_
#define QTRAIN_WORKER_MODEL_OPAQUE_BACKEND_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "kernels/ops.h"

namespace qtrain::model {

class OpaqueMemoryBackend final : public kernels::Backend {
 public:
  explicit OpaqueMemoryBackend(kernels::Backend& inner = kernels::CpuBackend()) : inner_(inner) {}

  // The host address of backend memory (for tests that inspect it on purpose).
  template <typename T>
  static T* Real(T* p) {
    if (p == nullptr) return nullptr;
    return reinterpret_cast<T*>(reinterpret_cast<uintptr_t>(p) ^ kTag);
  }
  static kernels::ConstTensor Real(kernels::ConstTensor t) { return {Real(t.data()), t.dtype()}; }
  static kernels::Tensor Real(kernels::Tensor t) { return {Real(t.data()), t.dtype()}; }

  std::string_view name() const override { return "opaque-cpu"; }
  void* Alloc(size_t bytes) override { return Tagged(inner_.Alloc(bytes)); }
  void Free(void* ptr) override { inner_.Free(Real(ptr)); }
  kernels::OpStatus CopyHostToBackend(void* dst, const void* src, size_t bytes) override {
    return inner_.CopyHostToBackend(Real(dst), src, bytes);
  }
  kernels::OpStatus CopyBackendToHost(void* dst, const void* src, size_t bytes) override {
    return inner_.CopyBackendToHost(dst, Real(src), bytes);
  }
  kernels::OpStatus CopyWithinBackend(void* dst, const void* src, size_t bytes) override {
    return inner_.CopyWithinBackend(Real(dst), Real(src), bytes);
  }
  kernels::OpStatus Fill(kernels::Tensor x, int64_t n, float value) override {
    return inner_.Fill(Real(x), n, value);
  }
  kernels::OpStatus Scale(kernels::Tensor x, int64_t n, float alpha) override {
    return inner_.Scale(Real(x), n, alpha);
  }
  kernels::OpStatus Cast(kernels::ConstTensor in, kernels::Tensor out, int64_t n) override {
    return inner_.Cast(Real(in), Real(out), n);
  }
  kernels::OpStatus Synchronize() override { return inner_.Synchronize(); }
  kernels::OpStatus EmbeddingForward(const int32_t* ids, kernels::ConstTensor table,
                                     kernels::Tensor out, int64_t rows, int64_t vocab,
                                     int64_t dim) override {
    return inner_.EmbeddingForward(Real(ids), Real(table), Real(out), rows, vocab, dim);
  }
  kernels::OpStatus EmbeddingBackward(const int32_t* ids, kernels::ConstTensor dout, float* dtable,
                                      int64_t rows, int64_t vocab, int64_t dim) override {
    return inner_.EmbeddingBackward(Real(ids), Real(dout), Real(dtable), rows, vocab, dim);
  }
  kernels::OpStatus RmsNormForward(kernels::ConstTensor x, kernels::ConstTensor weight, float eps,
                                   kernels::Tensor out, float* rstd, int64_t rows,
                                   int64_t dim) override {
    return inner_.RmsNormForward(Real(x), Real(weight), eps, Real(out), Real(rstd), rows, dim);
  }
  kernels::OpStatus RmsNormBackward(kernels::ConstTensor dout, kernels::ConstTensor x,
                                    kernels::ConstTensor weight, const float* rstd,
                                    kernels::Tensor dx, float* dweight, int64_t rows,
                                    int64_t dim) override {
    return inner_.RmsNormBackward(Real(dout), Real(x), Real(weight), Real(rstd), Real(dx),
                                  Real(dweight), rows, dim);
  }
  kernels::OpStatus LinearForward(kernels::ConstTensor x, kernels::ConstTensor weight,
                                  kernels::ConstTensor bias, kernels::Tensor y, int64_t rows,
                                  int64_t in, int64_t out) override {
    return inner_.LinearForward(Real(x), Real(weight), Real(bias), Real(y), rows, in, out);
  }
  kernels::OpStatus LinearBackward(kernels::ConstTensor dy, kernels::ConstTensor x,
                                   kernels::ConstTensor weight, kernels::Tensor dx, float* dweight,
                                   float* dbias, int64_t rows, int64_t in, int64_t out) override {
    return inner_.LinearBackward(Real(dy), Real(x), Real(weight), Real(dx), Real(dweight),
                                 Real(dbias), rows, in, out);
  }
  kernels::OpStatus LmHeadForward(kernels::ConstTensor y, kernels::ConstTensor embedding,
                                  float* logits, int64_t rows, int64_t vocab,
                                  int64_t dim) override {
    return inner_.LmHeadForward(Real(y), Real(embedding), Real(logits), rows, vocab, dim);
  }
  kernels::OpStatus LmHeadBackward(const float* dlogits, kernels::ConstTensor y,
                                   kernels::ConstTensor embedding, kernels::Tensor dy,
                                   float* dembedding, int64_t rows, int64_t vocab,
                                   int64_t dim) override {
    return inner_.LmHeadBackward(Real(dlogits), Real(y), Real(embedding), Real(dy),
                                 Real(dembedding), rows, vocab, dim);
  }
  kernels::OpStatus RopeForward(kernels::ConstTensor x, kernels::Tensor y,
                                const kernels::RopeShape& shape, const float* inv_freq,
                                float attention_factor) override {
    return inner_.RopeForward(Real(x), Real(y), RealShape(shape), Real(inv_freq), attention_factor);
  }
  kernels::OpStatus RopeBackward(kernels::ConstTensor dy, kernels::Tensor dx,
                                 const kernels::RopeShape& shape, const float* inv_freq,
                                 float attention_factor) override {
    return inner_.RopeBackward(Real(dy), Real(dx), RealShape(shape), Real(inv_freq),
                               attention_factor);
  }
  kernels::OpStatus AttentionForward(kernels::ConstTensor q, kernels::ConstTensor k,
                                     kernels::ConstTensor v, kernels::Tensor o, float* lse,
                                     const kernels::AttentionShape& shape) override {
    return inner_.AttentionForward(Real(q), Real(k), Real(v), Real(o), Real(lse), shape);
  }
  kernels::OpStatus DcaAttentionForward(kernels::ConstTensor q_intra, kernels::ConstTensor q_succ,
                                        kernels::ConstTensor q_inter, kernels::ConstTensor k,
                                        kernels::ConstTensor v, kernels::Tensor o, float* lse,
                                        const kernels::DcaAttentionShape& shape) override {
    return inner_.DcaAttentionForward(Real(q_intra), Real(q_succ), Real(q_inter), Real(k), Real(v),
                                      Real(o), Real(lse), shape);
  }
  kernels::OpStatus AttentionBackward(kernels::ConstTensor q, kernels::ConstTensor k,
                                      kernels::ConstTensor v, kernels::ConstTensor o,
                                      const float* lse, kernels::ConstTensor dout,
                                      kernels::Tensor dq, kernels::Tensor dk, kernels::Tensor dv,
                                      const kernels::AttentionShape& shape) override {
    return inner_.AttentionBackward(Real(q), Real(k), Real(v), Real(o), Real(lse), Real(dout),
                                    Real(dq), Real(dk), Real(dv), shape);
  }
  kernels::OpStatus SwigluForward(kernels::ConstTensor gate, kernels::ConstTensor up,
                                  kernels::Tensor out, int64_t rows, int64_t dim) override {
    return inner_.SwigluForward(Real(gate), Real(up), Real(out), rows, dim);
  }
  kernels::OpStatus SwigluBackward(kernels::ConstTensor dout, kernels::ConstTensor gate,
                                   kernels::ConstTensor up, kernels::Tensor dgate,
                                   kernels::Tensor dup, int64_t rows, int64_t dim) override {
    return inner_.SwigluBackward(Real(dout), Real(gate), Real(up), Real(dgate), Real(dup), rows,
                                 dim);
  }
  kernels::OpStatus ResidualForward(kernels::ConstTensor a, kernels::ConstTensor b,
                                    kernels::Tensor out, int64_t n) override {
    return inner_.ResidualForward(Real(a), Real(b), Real(out), n);
  }
  kernels::OpStatus ResidualBackward(kernels::ConstTensor dout, kernels::Tensor da,
                                     kernels::Tensor db, int64_t n) override {
    return inner_.ResidualBackward(Real(dout), Real(da), Real(db), n);
  }
  // loss_sum and num_valid are backend memory too (ops.h).
  kernels::OpStatus CrossEntropyForward(const float* logits, const int32_t* labels, float* losses,
                                        float* lse, double* loss_sum, int64_t* num_valid,
                                        int64_t rows, int64_t vocab,
                                        int32_t ignore_index) override {
    return inner_.CrossEntropyForward(Real(logits), Real(labels), Real(losses), Real(lse),
                                      Real(loss_sum), Real(num_valid), rows, vocab, ignore_index);
  }
  kernels::OpStatus CrossEntropyBackward(const float* logits, const int32_t* labels,
                                         const float* lse, float grad_scale, float* dlogits,
                                         int64_t rows, int64_t vocab,
                                         int32_t ignore_index) override {
    return inner_.CrossEntropyBackward(Real(logits), Real(labels), Real(lse), grad_scale,
                                       Real(dlogits), rows, vocab, ignore_index);
  }
  kernels::OpStatus CrossEntropyForwardBackward(const float* logits, const int32_t* labels,
                                                float grad_scale, float* losses, float* lse,
                                                double* loss_sum, int64_t* num_valid,
                                                float* dlogits, int64_t rows, int64_t vocab,
                                                int32_t ignore_index) override {
    return inner_.CrossEntropyForwardBackward(Real(logits), Real(labels), grad_scale, Real(losses),
                                              Real(lse), Real(loss_sum), Real(num_valid),
                                              Real(dlogits), rows, vocab, ignore_index);
  }
  kernels::OpStatus AdamWStep(float* param, const float* grad, float* m, float* v, int64_t n,
                              const kernels::AdamWParams& params) override {
    return inner_.AdamWStep(Real(param), Real(grad), Real(m), Real(v), n, params);
  }
  kernels::OpStatus AdamWMultiStep(const kernels::AdamWTensor* tensors, int64_t count,
                                   const kernels::AdamWParams& params) override {
    std::vector<kernels::AdamWTensor> real(tensors, tensors + std::max<int64_t>(count, 0));
    for (kernels::AdamWTensor& t : real) {
      t.param = Real(t.param);
      t.grad = Real(t.grad);
      t.m = Real(t.m);
      t.v = Real(t.v);
      t.working_copy = Real(t.working_copy);
    }
    return inner_.AdamWMultiStep(count > 0 ? real.data() : tensors, count, params);
  }
  // The array of tensors is a host array of backend pointers; sum_squares is backend memory.
  kernels::OpStatus SumOfSquares(const float* const* tensors, const int64_t* sizes, int64_t count,
                                 double* sum_squares) override {
    std::vector<const float*> real;
    if (tensors != nullptr && count > 0) {
      for (int64_t i = 0; i < count; ++i) real.push_back(Real(tensors[i]));
    }
    return inner_.SumOfSquares(real.empty() ? tensors : real.data(), sizes, count,
                               Real(sum_squares));
  }
  kernels::OpStatus BlockSumsOfSquares(const float* x, int64_t n, int64_t block_elements,
                                       double* sums) override {
    return inner_.BlockSumsOfSquares(Real(x), n, block_elements, Real(sums));
  }

 private:
  static constexpr uintptr_t kTag = uintptr_t{1} << 52;

  static void* Tagged(void* p) { return Real(p); }  // the flip is its own inverse
  static kernels::RopeShape RealShape(kernels::RopeShape shape) {
    shape.positions = Real(shape.positions);
    return shape;
  }

  kernels::Backend& inner_;
};

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_OPAQUE_BACKEND_TEST_UTIL_H_
