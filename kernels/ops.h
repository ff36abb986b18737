// The one op interface of qtrain: forward and backward of every op of the Qwen2 model, the
// optimizer step and the gradient norm, behind an abstract Backend. The CPU backend
// (kernels/cpu/, fp32 kernels that bf16 tensors go through, OpenMP + OpenBLAS) is CpuBackend(); a
// CUDA backend implements the same class. Callers hold a Backend& and never switch on the backend
// kind.
//
// Conventions (every op):
// - Pointers are backend memory (host memory for the CPU backend; device memory for CUDA),
//   allocated with Backend::Alloc. Tensors are dense and row-major; token ids and labels are
//   int32. Shapes are in the comments, outermost first.
// - Dtypes (kernels/tensor.h): a Tensor/ConstTensor argument is fp32 or bf16 storage (a float*
//   converts to an fp32 one), a float* argument is fp32 only. Activations and weights are
//   Tensors, so a model can keep them in bf16; what must stay fp32 is plain float*: statistics
//   (rstd, lse), logits and losses, parameter gradients, master weights and optimizer moments.
//   The arithmetic is fp32 whatever the storage (bf16 is widened on load and rounded to nearest
//   even on store), and an op whose Tensors are all fp32 computes exactly what the fp32-only
//   interface did. The tensors of one op may mix dtypes unless the op says otherwise.
// - Streams: a backend instance is one ordered stream of work and owns its scratch memory
//   (workspaces, GEMM plans); ops may run asynchronously on it. A thread of work uses its own
//   instance (the CPU backend's ops keep no state and may be shared). Host-visible results
//   (copies to the host, Synchronize) wait for the work queued before them. Scalars an op
//   produces (loss sums, sums of squares) are written to backend memory, so a pass need not
//   wait for each one.
// - Token-wise ops take `rows` = B*T tokens of B sequences of T tokens each, laid out
//   [B, T, ...] (sequence-major). Per-head activations are [B, T, H, D]: a row of a linear
//   output [rows, H*D] holds head h at columns h*D ... h*D+D-1 (head-major), as transformers
//   views q/k/v.
// - Backward ops ACCUMULATE (+=) into every gradient they produce, parameter and activation
//   gradients alike (as llm.c does): zero the buffers first (Backend::Fill), and residual
//   branches need no extra add. A gradient pointer documented as optional may be nullptr to
//   skip that gradient. The one exception is CrossEntropyBackward, which overwrites and may
//   work in place over the logits (documented there).
// - Outputs must not alias inputs unless the op says so.
// - Every op validates its sizes and parameters first and returns an OpStatus error (naming the
//   op and the parameter) without touching memory when they are invalid; it never aborts.
// - Deterministic: the same inputs give bitwise identical outputs on every run. The CPU
//   backend's are also independent of the OpenMP thread count (fixed work items and reduction
//   order, no float atomics, GEMMs cut into fixed blocks), so a run may resume with another.
#ifndef QTRAIN_KERNELS_OPS_H_
#define QTRAIN_KERNELS_OPS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "kernels/rope_tables.h"
#include "kernels/status.h"
#include "kernels/tensor.h"

namespace qtrain::kernels {

// transformers' CrossEntropyLoss default.
inline constexpr int32_t kIgnoreIndex = -100;

// Shape of a causal multi-head attention with grouped KV heads (GQA) and an optional KV cache.
// Queries of sequence b are at positions past_len ... past_len+T-1 and attend causally to keys
// 0 ... past_len+T-1 (query at position p sees keys j <= p). past_len = 0 is plain training.
//   q, o, dq, dout: [B, T, num_heads, head_dim]
//   k, v, dk, dv: [B, kv_capacity, num_kv_heads, head_dim]; rows 0 ... past_len+T-1 of each
//                 sequence are used (the cache holds the past keys, then this step's keys)
//   lse:          [B, num_heads, T] fp32 row logsumexp of the scaled scores (saved for backward)
// Query head h uses KV head h / (num_heads / num_kv_heads) (transformers' repeat_kv).
struct AttentionShape {
  int64_t batch = 1;           // B
  int64_t seq_len = 0;         // T: queries per sequence
  int64_t past_len = 0;        // keys already in the cache before this step's T
  int64_t kv_capacity = 0;     // rows per sequence in k/v; 0 means past_len + seq_len
  int64_t num_heads = 0;       // H, multiple of num_kv_heads
  int64_t num_kv_heads = 0;    // Hkv
  int64_t head_dim = 0;        // D
  float softmax_scale = 0.0f;  // 0 means 1/sqrt(head_dim) (transformers' scaling)

  int64_t kv_len() const { return past_len + seq_len; }
  int64_t kv_rows() const { return kv_capacity > 0 ? kv_capacity : past_len + seq_len; }
};

// Shape of a causal Dual Chunk Attention (DCA, docs/model-math.md "Dual Chunk Attention"): the
// layouts, the KV cache and GQA of AttentionShape, with positions folded into chunks of
// chunk_len = s keys. Query t of sequence b sits at i = past_len + t, in chunk i / s; key j <= i
// is in chunk j / s. Each query comes in three rotations and the key's chunk picks which one
// scores it:
//   key chunk == query chunk       (j <= i): q_intra
//   key chunk == query chunk - 1:            q_succ
//   key chunk <= query chunk - 2:            q_inter
// All keys share one softmax: S[t, j] = scale q_variant(t, j)[t] . k[j] for j <= i, -inf beyond;
// lse[t] = logsumexp_j S[t, j]; o = softmax(S) v.
//   q_intra, q_succ, q_inter, o: [B, T, num_heads, head_dim]
//   k, v: [B, kv_capacity, num_kv_heads, head_dim] (rows 0 ... past_len+T-1 used)
//   lse:  [B, num_heads, T]
struct DcaAttentionShape {
  int64_t batch = 1;
  int64_t seq_len = 0;
  int64_t past_len = 0;
  int64_t kv_capacity = 0;  // 0 means past_len + seq_len
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t chunk_len = 0;       // s = chunk_size - local_size, > 0
  float softmax_scale = 0.0f;  // 0 means 1/sqrt(head_dim)

  int64_t kv_len() const { return past_len + seq_len; }
  int64_t kv_rows() const { return kv_capacity > 0 ? kv_capacity : past_len + seq_len; }
};

// Shape of a RoPE application to [B, T, num_heads, head_dim] (q or k).
// Token (b, t) has position positions[b*T + t] when `positions` is given (backend memory,
// int32 [B*T], e.g. packed documents), otherwise past_len + t.
struct RopeShape {
  int64_t batch = 1;
  int64_t seq_len = 0;
  int64_t num_heads = 0;
  int64_t head_dim = 0;  // even; rotary dim == head_dim (pairs i and i + head_dim/2)
  int64_t past_len = 0;
  const int32_t* positions = nullptr;  // optional
};

// torch.optim.AdamW (decoupled weight decay, bias correction, amsgrad off, maximize off).
// Hyperparameters are doubles, as torch's Python floats: scalars such as 1 - beta2 are formed in
// double and only then rounded to fp32, as torch does.
struct AdamWParams {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
  bool apply_weight_decay = true;  // per tensor: false for norms and biases, typically
  int64_t step = 1;                // 1-based step count after this update (bias correction)
  float grad_scale = 1.0f;         // multiplies the gradient first (clipping, averaging)
};

// One tensor of a multi-tensor AdamW step (Backend::AdamWMultiStep): its fp32 master weights,
// gradient and moments (backend memory), whether it decays, and optionally the 16-bit working
// copy of its weights (bf16 or fp16) that the step rewrites from the updated fp32 values (round
// to nearest even).
struct AdamWTensor {
  float* param = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  int64_t n = 0;
  bool apply_weight_decay = true;
  Tensor working_copy;  // null, or bf16/fp16 [n]
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;  // "cpu", "cuda"

  // ---------------------------------------------------------------------------------------
  // Memory. Alloc returns 64-byte aligned backend memory (nullptr when bytes == 0 or on
  // failure); Free(nullptr) is a no-op. Copies between the host and the backend wait for the
  // queued work and are synchronous; everything else may run asynchronously, in order, on the
  // backend's one stream (see "Streams" above).
  virtual void* Alloc(size_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
  virtual OpStatus CopyHostToBackend(void* dst, const void* src, size_t bytes) = 0;
  virtual OpStatus CopyBackendToHost(void* dst, const void* src, size_t bytes) = 0;
  virtual OpStatus CopyWithinBackend(void* dst, const void* src, size_t bytes) = 0;
  // x[0 .. n) = value (zeroing gradients), rounded to x's dtype.
  virtual OpStatus Fill(Tensor x, int64_t n, float value) = 0;
  // x[0 .. n) *= alpha.
  virtual OpStatus Scale(Tensor x, int64_t n, float alpha) = 0;
  // out[0 .. n) = in[0 .. n) converted to out's dtype (fp32 -> bf16 rounds to nearest even, a
  // NaN stays NaN; bf16 -> fp32 is exact; the same dtype copies). out must not overlap in.
  virtual OpStatus Cast(ConstTensor in, Tensor out, int64_t n) = 0;
  // Waits for queued work (no-op on the CPU).
  virtual OpStatus Synchronize() = 0;

  // ---------------------------------------------------------------------------------------
  // Embedding: out[r, :] = table[ids[r], :].
  //   ids [rows] int32 in [0, vocab); table [vocab, dim]; out [rows, dim]
  // Errors on an id out of range.
  virtual OpStatus EmbeddingForward(const int32_t* ids, ConstTensor table, Tensor out, int64_t rows,
                                    int64_t vocab, int64_t dim) = 0;
  // dtable[ids[r], :] += dout[r, :] (scatter-add in a fixed order; deterministic).
  //   dout [rows, dim]; dtable [vocab, dim] fp32
  virtual OpStatus EmbeddingBackward(const int32_t* ids, ConstTensor dout, float* dtable,
                                     int64_t rows, int64_t vocab, int64_t dim) = 0;

  // ---------------------------------------------------------------------------------------
  // RMSNorm (Qwen2RMSNorm): rstd[r] = 1/sqrt(mean_j x[r,j]^2 + eps); out = weight * x * rstd,
  // with fp32 statistics whatever the dtypes.
  //   x, out [rows, dim]; weight [dim]; rstd [rows] fp32 (saved for backward). out may alias x.
  virtual OpStatus RmsNormForward(ConstTensor x, ConstTensor weight, float eps, Tensor out,
                                  float* rstd, int64_t rows, int64_t dim) = 0;
  // With n = x*rstd, u = dout*weight: dx += rstd*(u - n*mean_j(u*n)); dweight += sum_r dout*n.
  //   dx [rows, dim] (optional); dweight [dim] fp32 (optional)
  virtual OpStatus RmsNormBackward(ConstTensor dout, ConstTensor x, ConstTensor weight,
                                   const float* rstd, Tensor dx, float* dweight, int64_t rows,
                                   int64_t dim) = 0;

  // ---------------------------------------------------------------------------------------
  // Linear (nn.Linear): y = x W^T + b, accumulated in fp32.
  //   x [rows, in]; weight [out, in] (transformers' layout); bias [out] (optional); y [rows, out]
  virtual OpStatus LinearForward(ConstTensor x, ConstTensor weight, ConstTensor bias, Tensor y,
                                 int64_t rows, int64_t in, int64_t out) = 0;
  // dx += dy W; dweight += dy^T x; dbias += sum_r dy.
  //   dy [rows, out]; dx [rows, in] (optional); dweight [out, in] fp32 (optional);
  //   dbias [out] fp32 (optional)
  virtual OpStatus LinearBackward(ConstTensor dy, ConstTensor x, ConstTensor weight, Tensor dx,
                                  float* dweight, float* dbias, int64_t rows, int64_t in,
                                  int64_t out) = 0;

  // ---------------------------------------------------------------------------------------
  // Tied LM head: logits = y E^T (a linear without bias against the embedding table), fp32
  // logits for the fp32 softmax of the loss.
  //   y [rows, dim]; embedding [vocab, dim]; logits [rows, vocab] fp32
  // Row-chunk it (e.g. a few hundred tokens at a time) to bound the [rows, vocab] buffer.
  virtual OpStatus LmHeadForward(ConstTensor y, ConstTensor embedding, float* logits, int64_t rows,
                                 int64_t vocab, int64_t dim) = 0;
  // dy += dlogits E; dembedding += dlogits^T y (the same buffer EmbeddingBackward adds into).
  //   dlogits [rows, vocab] fp32; dy [rows, dim] (optional); dembedding [vocab, dim] fp32
  //   (optional)
  virtual OpStatus LmHeadBackward(const float* dlogits, ConstTensor y, ConstTensor embedding,
                                  Tensor dy, float* dembedding, int64_t rows, int64_t vocab,
                                  int64_t dim) = 0;

  // ---------------------------------------------------------------------------------------
  // RoPE, NeoX half-split (rotate_half), with scaled tables c = cos(p*inv_freq_i)*factor and
  // s = sin(p*inv_freq_i)*factor; the angle p*inv_freq_i is an fp32 product. For i < D/2:
  //   y_i = x_i c - x_{i+D/2} s;  y_{i+D/2} = x_{i+D/2} c + x_i s.
  //   x, y [B, T, num_heads, head_dim] (y may alias x: in place);
  //   inv_freq [head_dim/2] fp32 (backend memory; RopeTables::inv_freq);
  //   attention_factor: RopeTables::attention_factor (1 without YaRN).
  virtual OpStatus RopeForward(ConstTensor x, Tensor y, const RopeShape& shape,
                               const float* inv_freq, float attention_factor) = 0;
  // The transpose (rotation by -angle): dx_i += dy_i c + dy_{i+D/2} s;
  // dx_{i+D/2} += dy_{i+D/2} c - dy_i s.   dy, dx [B, T, num_heads, head_dim]; dx != dy.
  virtual OpStatus RopeBackward(ConstTensor dy, Tensor dx, const RopeShape& shape,
                                const float* inv_freq, float attention_factor) = 0;

  // ---------------------------------------------------------------------------------------
  // Causal GQA attention (see AttentionShape for layouts), computed tile by tile with an online
  // softmax in fp32 (memory linear in T; no T x T buffer). Per query head h, KV head g:
  //   S = scale * q_h k_g^T with S[t, j] = -inf for j > past_len + t;
  //   lse[t] = logsumexp_j S[t, j];  o_h = softmax(S) v_g.
  // q, k, v and o share one dtype; lse is fp32.
  virtual OpStatus AttentionForward(ConstTensor q, ConstTensor k, ConstTensor v, Tensor o,
                                    float* lse, const AttentionShape& shape) = 0;
  // FlashAttention-2 backward from the saved lse (P recomputed): D = rowsum(do * o);
  // dS = P * (do v^T - D); dq += scale dS k; dk += scale dS^T q; dv += P^T do, with dk/dv summed
  // over the query heads of each group. Only rows 0 ... past_len+T-1 of dk/dv are touched.
  //   dout, o, dq: [B, T, H, D]; dk, dv: [B, kv_capacity, Hkv, D]; any of dq/dk/dv optional.
  virtual OpStatus AttentionBackward(ConstTensor q, ConstTensor k, ConstTensor v, ConstTensor o,
                                     const float* lse, ConstTensor dout, Tensor dq, Tensor dk,
                                     Tensor dv, const AttentionShape& shape) = 0;

  // Dual Chunk Attention forward (inference only; see DcaAttentionShape), tiled with one online
  // softmax over all key tiles: memory linear in T, no T x T buffer. Backends without it return
  // an error.
  virtual OpStatus DcaAttentionForward(ConstTensor q_intra, ConstTensor q_succ, ConstTensor q_inter,
                                       ConstTensor k, ConstTensor v, Tensor o, float* lse,
                                       const DcaAttentionShape& shape) {
    (void)q_intra, (void)q_succ, (void)q_inter, (void)k, (void)v, (void)o, (void)lse, (void)shape;
    return OpStatus::Error(std::string(name()) +
                           " backend: DcaAttentionForward is not implemented");
  }

  // ---------------------------------------------------------------------------------------
  // SwiGLU: out = silu(gate) * up, silu(a) = a * sigmoid(a).
  //   gate, up, out [rows, dim]
  virtual OpStatus SwigluForward(ConstTensor gate, ConstTensor up, Tensor out, int64_t rows,
                                 int64_t dim) = 0;
  // dup += dout * silu(gate); dgate += dout * up * sigmoid(gate) * (1 + gate*(1-sigmoid(gate))).
  //   dgate, dup [rows, dim] (each optional)
  virtual OpStatus SwigluBackward(ConstTensor dout, ConstTensor gate, ConstTensor up, Tensor dgate,
                                  Tensor dup, int64_t rows, int64_t dim) = 0;

  // ---------------------------------------------------------------------------------------
  // Residual add: out = a + b, all [n]. out may alias a or b.
  virtual OpStatus ResidualForward(ConstTensor a, ConstTensor b, Tensor out, int64_t n) = 0;
  // da += dout; db += dout (each optional; da/db may be the same buffer as each other, not dout).
  virtual OpStatus ResidualBackward(ConstTensor dout, Tensor da, Tensor db, int64_t n) = 0;

  // ---------------------------------------------------------------------------------------
  // Softmax cross-entropy over fp32 logits with already aligned labels (the caller shifts:
  // labels[r] is the target of logits row r).
  //   logits [rows, vocab] fp32; labels [rows] int32 in [0, vocab) or ignore_index (pass
  //     kIgnoreIndex for transformers' -100);
  //   losses [rows] fp32: -log softmax(logits[r])[labels[r]], 0 for ignored rows (so the
  //     per-token logprob for scoring is -losses[r]);
  //   lse [rows] fp32: logsumexp of each row (saved for backward; defined for ignored rows too);
  //   loss_sum (optional, one double of BACKEND memory): sum of losses over non-ignored rows, in
  //     double, in a fixed order; num_valid (optional, one int64 of BACKEND memory): number of
  //     non-ignored rows. In backend memory so that a pass over many chunks synchronizes once,
  //     when the caller copies them back (on the CPU backend these are host pointers).
  // The mean loss is loss_sum / num_valid (NaN-free: the caller decides when num_valid == 0).
  // Errors on a label out of range that is not ignore_index.
  virtual OpStatus CrossEntropyForward(const float* logits, const int32_t* labels, float* losses,
                                       float* lse, double* loss_sum, int64_t* num_valid,
                                       int64_t rows, int64_t vocab, int32_t ignore_index) = 0;
  // dlogits[r] = (softmax(logits[r]) - onehot(labels[r])) * grad_scale for non-ignored rows,
  // 0 for ignored rows. grad_scale is d(loss)/d(sum of token losses), e.g. 1/N for the mean over
  // N non-ignored tokens of the whole (global) batch. OVERWRITES dlogits (no accumulation), and
  // dlogits may alias logits (in place, saving a [rows, vocab] buffer).
  virtual OpStatus CrossEntropyBackward(const float* logits, const int32_t* labels,
                                        const float* lse, float grad_scale, float* dlogits,
                                        int64_t rows, int64_t vocab, int32_t ignore_index) = 0;
  // Both in one pass for training: the outputs of CrossEntropyForward, and dlogits as
  // CrossEntropyBackward writes them with this lse (equal up to rounding: the softmax comes from
  // the exps of the forward pass instead of a second exp). dlogits may alias logits.
  virtual OpStatus CrossEntropyForwardBackward(const float* logits, const int32_t* labels,
                                               float grad_scale, float* losses, float* lse,
                                               double* loss_sum, int64_t* num_valid, float* dlogits,
                                               int64_t rows, int64_t vocab,
                                               int32_t ignore_index) = 0;

  // ---------------------------------------------------------------------------------------
  // One AdamW step on one tensor of n elements (torch.optim.AdamW, single-tensor path):
  //   g' = grad*grad_scale; param *= 1 - lr*wd (if apply_weight_decay);
  //   m = b1 m + (1-b1) g'; v = b2 v + (1-b2) g'^2;
  //   param -= (lr / (1-b1^step)) * m / (sqrt(v)/sqrt(1-b2^step) + eps).
  //   param, m, v [n] fp32 (the master weights and moments) updated in place; grad [n] fp32
  //   read only.
  virtual OpStatus AdamWStep(float* param, const float* grad, float* m, float* v, int64_t n,
                             const AdamWParams& params) = 0;
  // AdamWStep over `count` tensors in one call (on a GPU one launch per group of tensors instead
  // of one per tensor), each element updated exactly as AdamWStep would, with each tensor's
  // apply_weight_decay in place of params.apply_weight_decay; a tensor's working_copy, if any,
  // receives its updated weights in its dtype (bf16 or fp16), so no separate Cast pass is needed.
  //   tensors: a HOST array of `count` descriptors of backend memory. Tensors must not overlap.
  virtual OpStatus AdamWMultiStep(const AdamWTensor* tensors, int64_t count,
                                  const AdamWParams& params) = 0;

  // Sum of squares over many fp32 tensors (global gradient norm = sqrt of it), accumulated in
  // double in a fixed order (tensor by tensor, fixed-size blocks), so it is deterministic.
  //   tensors[i] has sizes[i] elements (backend memory; the arrays themselves are host arrays);
  //   sum_squares: one double of BACKEND memory (host memory on the CPU backend).
  virtual OpStatus SumOfSquares(const float* const* tensors, const int64_t* sizes, int64_t count,
                                double* sum_squares) = 0;
  // The sums of squares of consecutive blocks of one fp32 tensor (the data-parallel gradient
  // norm's per-block sums, which do not depend on how the buffer is sharded): sums[b] is the sum
  // of x[i]^2 over i in [b*block_elements, min(n, (b+1)*block_elements)), accumulated in double
  // in a fixed order (the CPU backend's: element order), for b < ceil(n / block_elements).
  //   x [n] fp32; block_elements > 0; sums: ceil(n / block_elements) doubles of BACKEND memory.
  virtual OpStatus BlockSumsOfSquares(const float* x, int64_t n, int64_t block_elements,
                                      double* sums) = 0;
};

// The CPU backend (fp32 kernels, bf16 through them; OpenMP + OpenBLAS). A process-wide instance;
// thread-safe to share (ops keep no state between calls). OpenBLAS chooses its GEMM kernels from
// the CPU when it loads and falls back to slow generic ones on CPUs it does not know (check
// openblas_get_corename(); set OPENBLAS_CORETYPE, e.g. SkylakeX or Haswell, in the process
// environment).
Backend& CpuBackend();

}  // namespace qtrain::kernels

#endif  // QTRAIN_KERNELS_OPS_H_
