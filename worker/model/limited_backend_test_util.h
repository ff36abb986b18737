// Test-only backend: the CPU backend with a cap on the memory it hands out, so that tests can
// make any allocation fail (and then succeed again) without exhausting the machine.
#ifndef QTRAIN_WORKER_MODEL_LIMITED_BACKEND_TEST_UTIL_H_
#define QTRAIN_WORKER_MODEL_LIMITED_BACKEND_TEST_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <string_view>

#include "kernels/ops.h"

namespace qtrain::model {

class LimitedBackend final : public kernels::Backend {
 public:
  explicit LimitedBackend(kernels::Backend& inner = kernels::CpuBackend()) : inner_(inner) {}
  ~LimitedBackend() override = default;

  // Alloc fails (returns nullptr) when it would take the bytes in use above `limit`.
  void set_limit(size_t limit) { limit_ = limit; }
  void remove_limit() { limit_ = std::numeric_limits<size_t>::max(); }
  size_t bytes_in_use() const { return in_use_; }
  int64_t failed_allocations() const { return failed_; }

  std::string_view name() const override { return inner_.name(); }
  void* Alloc(size_t bytes) override {
    if (bytes > limit_ || in_use_ > limit_ - bytes) {
      ++failed_;
      return nullptr;
    }
    void* p = inner_.Alloc(bytes);
    if (p != nullptr) {
      sizes_[p] = bytes;
      in_use_ += bytes;
    }
    return p;
  }
  void Free(void* ptr) override {
    if (auto it = sizes_.find(ptr); it != sizes_.end()) {
      in_use_ -= it->second;
      sizes_.erase(it);
    }
    inner_.Free(ptr);
  }
  kernels::OpStatus CopyHostToBackend(void* dst, const void* src, size_t bytes) override {
    return inner_.CopyHostToBackend(dst, src, bytes);
  }
  kernels::OpStatus CopyBackendToHost(void* dst, const void* src, size_t bytes) override {
    return inner_.CopyBackendToHost(dst, src, bytes);
  }
  kernels::OpStatus CopyWithinBackend(void* dst, const void* src, size_t bytes) override {
    return inner_.CopyWithinBackend(dst, src, bytes);
  }
  kernels::OpStatus Fill(float* x, int64_t n, float value) override {
    return inner_.Fill(x, n, value);
  }
  kernels::OpStatus Scale(float* x, int64_t n, float alpha) override {
    return inner_.Scale(x, n, alpha);
  }
  kernels::OpStatus Synchronize() override { return inner_.Synchronize(); }
  kernels::OpStatus EmbeddingForward(const int32_t* ids, const float* table, float* out,
                                     int64_t rows, int64_t vocab, int64_t dim) override {
    return inner_.EmbeddingForward(ids, table, out, rows, vocab, dim);
  }
  kernels::OpStatus EmbeddingBackward(const int32_t* ids, const float* dout, float* dtable,
                                      int64_t rows, int64_t vocab, int64_t dim) override {
    return inner_.EmbeddingBackward(ids, dout, dtable, rows, vocab, dim);
  }
  kernels::OpStatus RmsNormForward(const float* x, const float* weight, float eps, float* out,
                                   float* rstd, int64_t rows, int64_t dim) override {
    return inner_.RmsNormForward(x, weight, eps, out, rstd, rows, dim);
  }
  kernels::OpStatus RmsNormBackward(const float* dout, const float* x, const float* weight,
                                    const float* rstd, float* dx, float* dweight, int64_t rows,
                                    int64_t dim) override {
    return inner_.RmsNormBackward(dout, x, weight, rstd, dx, dweight, rows, dim);
  }
  kernels::OpStatus LinearForward(const float* x, const float* weight, const float* bias, float* y,
                                  int64_t rows, int64_t in, int64_t out) override {
    return inner_.LinearForward(x, weight, bias, y, rows, in, out);
  }
  kernels::OpStatus LinearBackward(const float* dy, const float* x, const float* weight, float* dx,
                                   float* dweight, float* dbias, int64_t rows, int64_t in,
                                   int64_t out) override {
    return inner_.LinearBackward(dy, x, weight, dx, dweight, dbias, rows, in, out);
  }
  kernels::OpStatus LmHeadForward(const float* y, const float* embedding, float* logits,
                                  int64_t rows, int64_t vocab, int64_t dim) override {
    return inner_.LmHeadForward(y, embedding, logits, rows, vocab, dim);
  }
  kernels::OpStatus LmHeadBackward(const float* dlogits, const float* y, const float* embedding,
                                   float* dy, float* dembedding, int64_t rows, int64_t vocab,
                                   int64_t dim) override {
    return inner_.LmHeadBackward(dlogits, y, embedding, dy, dembedding, rows, vocab, dim);
  }
  kernels::OpStatus RopeForward(const float* x, float* y, const kernels::RopeShape& shape,
                                const float* inv_freq, float attention_factor) override {
    return inner_.RopeForward(x, y, shape, inv_freq, attention_factor);
  }
  kernels::OpStatus RopeBackward(const float* dy, float* dx, const kernels::RopeShape& shape,
                                 const float* inv_freq, float attention_factor) override {
    return inner_.RopeBackward(dy, dx, shape, inv_freq, attention_factor);
  }
  kernels::OpStatus AttentionForward(const float* q, const float* k, const float* v, float* o,
                                     float* lse, const kernels::AttentionShape& shape) override {
    return inner_.AttentionForward(q, k, v, o, lse, shape);
  }
  kernels::OpStatus DcaAttentionForward(const float* q_intra, const float* q_succ,
                                        const float* q_inter, const float* k, const float* v,
                                        float* o, float* lse,
                                        const kernels::DcaAttentionShape& shape) override {
    return inner_.DcaAttentionForward(q_intra, q_succ, q_inter, k, v, o, lse, shape);
  }
  kernels::OpStatus AttentionBackward(const float* q, const float* k, const float* v,
                                      const float* o, const float* lse, const float* dout,
                                      float* dq, float* dk, float* dv,
                                      const kernels::AttentionShape& shape) override {
    return inner_.AttentionBackward(q, k, v, o, lse, dout, dq, dk, dv, shape);
  }
  kernels::OpStatus SwigluForward(const float* gate, const float* up, float* out, int64_t rows,
                                  int64_t dim) override {
    return inner_.SwigluForward(gate, up, out, rows, dim);
  }
  kernels::OpStatus SwigluBackward(const float* dout, const float* gate, const float* up,
                                   float* dgate, float* dup, int64_t rows, int64_t dim) override {
    return inner_.SwigluBackward(dout, gate, up, dgate, dup, rows, dim);
  }
  kernels::OpStatus ResidualForward(const float* a, const float* b, float* out,
                                    int64_t n) override {
    return inner_.ResidualForward(a, b, out, n);
  }
  kernels::OpStatus ResidualBackward(const float* dout, float* da, float* db, int64_t n) override {
    return inner_.ResidualBackward(dout, da, db, n);
  }
  kernels::OpStatus CrossEntropyForward(const float* logits, const int32_t* labels, float* losses,
                                        float* lse, double* loss_sum, int64_t* num_valid,
                                        int64_t rows, int64_t vocab,
                                        int32_t ignore_index) override {
    return inner_.CrossEntropyForward(logits, labels, losses, lse, loss_sum, num_valid, rows, vocab,
                                      ignore_index);
  }
  kernels::OpStatus CrossEntropyBackward(const float* logits, const int32_t* labels,
                                         const float* lse, float grad_scale, float* dlogits,
                                         int64_t rows, int64_t vocab,
                                         int32_t ignore_index) override {
    return inner_.CrossEntropyBackward(logits, labels, lse, grad_scale, dlogits, rows, vocab,
                                       ignore_index);
  }
  kernels::OpStatus CrossEntropyForwardBackward(const float* logits, const int32_t* labels,
                                                float grad_scale, float* losses, float* lse,
                                                double* loss_sum, int64_t* num_valid,
                                                float* dlogits, int64_t rows, int64_t vocab,
                                                int32_t ignore_index) override {
    return inner_.CrossEntropyForwardBackward(logits, labels, grad_scale, losses, lse, loss_sum,
                                              num_valid, dlogits, rows, vocab, ignore_index);
  }
  kernels::OpStatus AdamWStep(float* param, const float* grad, float* m, float* v, int64_t n,
                              const kernels::AdamWParams& params) override {
    return inner_.AdamWStep(param, grad, m, v, n, params);
  }
  kernels::OpStatus SumOfSquares(const float* const* tensors, const int64_t* sizes, int64_t count,
                                 double* sum_squares) override {
    return inner_.SumOfSquares(tensors, sizes, count, sum_squares);
  }

 private:
  kernels::Backend& inner_;
  size_t limit_ = std::numeric_limits<size_t>::max();
  size_t in_use_ = 0;
  int64_t failed_ = 0;
  std::map<void*, size_t> sizes_;
};

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_LIMITED_BACKEND_TEST_UTIL_H_
