// Incremental decoding with a KV cache: each call runs the new tokens of one sequence through
// the layers, attending to the cached keys and values, and returns the last token's logits.
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/model/model.h"
#include "worker/model/model_internal.h"

namespace qtrain::model {

absl::StatusOr<KvCache> KvCache::Create(const Model& model, int64_t max_tokens) {
  if (max_tokens <= 0) return absl::InvalidArgumentError("KV cache: max_tokens must be positive");
  const ModelConfig& c = model.config();
  KvCache cache;
  cache.capacity_ = max_tokens;
  cache.keys_.resize(c.num_layers);
  cache.values_.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    QTRAIN_RETURN_IF_ERROR(cache.keys_[l].Resize(model.backend(), max_tokens * c.kv_dim()));
    QTRAIN_RETURN_IF_ERROR(cache.values_[l].Resize(model.backend(), max_tokens * c.kv_dim()));
  }
  return cache;
}

absl::Status Model::Decode(std::span<const int32_t> ids, KvCache& cache,
                           std::span<float> last_logits) {
  const ModelConfig& c = config_;
  kernels::Backend& b = *backend_;
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t past = cache.length_;
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  if (n == 0) return absl::InvalidArgumentError("Decode: no tokens");
  if (past + n > cache.capacity_) {
    return absl::OutOfRangeError(absl::StrCat("Decode: ", past, " cached + ", n,
                                              " new tokens exceed the cache capacity ",
                                              cache.capacity_));
  }
  if (static_cast<int64_t>(last_logits.size()) != c.vocab_size) {
    return absl::InvalidArgumentError("Decode: last_logits must hold vocab_size floats");
  }
  if (static_cast<int64_t>(cache.keys_.size()) != c.num_layers) {
    return absl::InvalidArgumentError("Decode: the KV cache was made for another model");
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("Decode: token id ", id, " is outside [0, ", c.vocab_size, ")"));
    }
  }
  // Scratch for this call's tokens (one sequence).
  Buffer<int32_t> dev_ids;
  Buffer<float> x, normed, q, attn, lse, mid, gate, up, act, rstd, logits;
  QTRAIN_RETURN_IF_ERROR(dev_ids.Resize(b, n));
  for (Buffer<float>* buf : {&x, &normed, &mid}) QTRAIN_RETURN_IF_ERROR(buf->Resize(b, n * d));
  for (Buffer<float>* buf : {&q, &attn}) QTRAIN_RETURN_IF_ERROR(buf->Resize(b, n * c.q_dim()));
  for (Buffer<float>* buf : {&gate, &up, &act}) QTRAIN_RETURN_IF_ERROR(buf->Resize(b, n * f));
  QTRAIN_RETURN_IF_ERROR(lse.Resize(b, n * c.num_heads));
  QTRAIN_RETURN_IF_ERROR(rstd.Resize(b, n));
  QTRAIN_RETURN_IF_ERROR(logits.Resize(b, c.vocab_size));

  const float* params = params_.get();
  QTRAIN_RETURN_IF_OP_ERROR(b.CopyHostToBackend(dev_ids.get(), ids.data(), n * sizeof(int32_t)));
  QTRAIN_RETURN_IF_OP_ERROR(
      b.EmbeddingForward(dev_ids.get(), params + layout_.embed(), x.get(), n, c.vocab_size, d));

  kernels::RopeShape q_rope{
      .batch = 1, .seq_len = n, .num_heads = c.num_heads, .head_dim = c.head_dim, .past_len = past};
  kernels::RopeShape k_rope = q_rope;
  k_rope.num_heads = c.num_kv_heads;
  kernels::AttentionShape attention{.batch = 1,
                                    .seq_len = n,
                                    .past_len = past,
                                    .kv_capacity = cache.capacity_,
                                    .num_heads = c.num_heads,
                                    .num_kv_heads = c.num_kv_heads,
                                    .head_dim = c.head_dim};
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerView<const float> w(params, layout_.layer(l));
    float* k = cache.keys_[l].get();
    float* v = cache.values_[l].get();
    float* k_new = k + past * c.kv_dim();
    float* v_new = v + past * c.kv_dim();
    QTRAIN_RETURN_IF_OP_ERROR(
        b.RmsNormForward(x.get(), w.input_norm, eps, normed.get(), rstd.get(), n, d));
    QTRAIN_RETURN_IF_OP_ERROR(
        b.LinearForward(normed.get(), w.q_weight, w.q_bias, q.get(), n, d, c.q_dim()));
    QTRAIN_RETURN_IF_OP_ERROR(
        b.LinearForward(normed.get(), w.k_weight, w.k_bias, k_new, n, d, c.kv_dim()));
    QTRAIN_RETURN_IF_OP_ERROR(
        b.LinearForward(normed.get(), w.v_weight, w.v_bias, v_new, n, d, c.kv_dim()));
    QTRAIN_RETURN_IF_OP_ERROR(
        b.RopeForward(q.get(), q.get(), q_rope, inv_freq_.get(), attention_factor_));
    QTRAIN_RETURN_IF_OP_ERROR(
        b.RopeForward(k_new, k_new, k_rope, inv_freq_.get(), attention_factor_));
    QTRAIN_RETURN_IF_OP_ERROR(b.AttentionForward(q.get(), k, v, attn.get(), lse.get(), attention));
    QTRAIN_RETURN_IF_OP_ERROR(
        b.LinearForward(attn.get(), w.o_weight, nullptr, mid.get(), n, c.q_dim(), d));
    QTRAIN_RETURN_IF_OP_ERROR(b.ResidualForward(x.get(), mid.get(), mid.get(), n * d));
    QTRAIN_RETURN_IF_OP_ERROR(
        b.RmsNormForward(mid.get(), w.post_norm, eps, normed.get(), rstd.get(), n, d));
    QTRAIN_RETURN_IF_OP_ERROR(
        b.LinearForward(normed.get(), w.gate_weight, nullptr, gate.get(), n, d, f));
    QTRAIN_RETURN_IF_OP_ERROR(
        b.LinearForward(normed.get(), w.up_weight, nullptr, up.get(), n, d, f));
    QTRAIN_RETURN_IF_OP_ERROR(b.SwigluForward(gate.get(), up.get(), act.get(), n, f));
    QTRAIN_RETURN_IF_OP_ERROR(b.LinearForward(act.get(), w.down_weight, nullptr, x.get(), n, f, d));
    QTRAIN_RETURN_IF_OP_ERROR(b.ResidualForward(mid.get(), x.get(), x.get(), n * d));
  }
  // Only the last token's logits are needed.
  const float* last = x.get() + (n - 1) * d;
  QTRAIN_RETURN_IF_OP_ERROR(
      b.RmsNormForward(last, params + layout_.final_norm(), eps, normed.get(), rstd.get(), 1, d));
  QTRAIN_RETURN_IF_OP_ERROR(
      b.LmHeadForward(normed.get(), params + layout_.embed(), logits.get(), 1, c.vocab_size, d));
  QTRAIN_RETURN_IF_OP_ERROR(
      b.CopyBackendToHost(last_logits.data(), logits.get(), c.vocab_size * sizeof(float)));
  cache.length_ = past + n;
  return absl::OkStatus();
}

}  // namespace qtrain::model
