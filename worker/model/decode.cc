// Incremental decoding with a KV cache: each call runs the new tokens of one sequence through
// the layers, attending to the cached keys and values, and returns the last token's logits.
#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/checked_math.h"
#include "common/status_macros.h"
#include "worker/model/model.h"
#include "worker/model/model_internal.h"

namespace qtrain::model {

int64_t ContextLength(const ModelConfig& config) {
  // Dual Chunk Attention folds every position below the chunk size.
  if (config.dca.enabled()) return kMaxDim;
  if (config.rope_type != RopeType::kYarn) return config.max_position_embeddings;
  const int64_t original = config.yarn.original_max_position_embeddings > 0
                               ? config.yarn.original_max_position_embeddings
                               : config.max_position_embeddings;
  // YaRN stretches the original context by its factor; an absurd factor saturates (the cache
  // still grows only as far as the tokens need).
  const std::optional<int64_t> scaled =
      CheckedDoubleToInt64(static_cast<double>(original) * config.yarn.factor);
  return std::max(config.max_position_embeddings,
                  scaled.value_or(std::numeric_limits<int64_t>::max()));
}

absl::StatusOr<KvCache> KvCache::Create(const Model& model, int64_t max_tokens) {
  if (max_tokens <= 0) return absl::InvalidArgumentError("KV cache: max_tokens must be positive");
  const int64_t context = ContextLength(model.config());
  if (max_tokens > context) {
    return absl::OutOfRangeError(absl::StrCat("KV cache: ", max_tokens,
                                              " positions exceed the model's context of ", context,
                                              " positions"));
  }
  KvCache cache;
  cache.capacity_ = max_tokens;
  cache.dtype_ = model.options().compute_dtype;
  cache.keys_.resize(model.config().num_layers);
  cache.values_.resize(model.config().num_layers);
  QTRAIN_RETURN_IF_ERROR(cache.Reserve(model, std::min(max_tokens, kInitialTokens)));
  return cache;
}

absl::Status KvCache::Reserve(const Model& model, int64_t tokens) {
  if (tokens <= allocated_) return absl::OkStatus();
  if (tokens > capacity_) {
    return absl::OutOfRangeError(absl::StrCat("KV cache: ", tokens,
                                              " positions exceed the cache's capacity of ",
                                              capacity_, " positions"));
  }
  // Doubling keeps the copies amortized O(1) per token; never past the capacity.
  const int64_t doubled = allocated_ > capacity_ / 2 ? capacity_ : 2 * allocated_;
  const int64_t grown = std::max(tokens, doubled);
  const ModelConfig& c = model.config();
  kernels::Backend& b = model.backend();
  const std::string what = absl::StrCat("the KV cache (", grown, " positions x ", c.num_layers,
                                        " layers x keys and values)");
  for (std::vector<TensorBuffer>* per_layer : {&keys_, &values_}) {
    for (TensorBuffer& old : *per_layer) {
      TensorBuffer next;
      QTRAIN_RETURN_IF_ERROR(next.Resize(b, dtype_, {grown, c.kv_dim()}, what));
      if (length_ > 0)
        QTRAIN_RETURN_IF_ERROR(CopyTensor(b, next.get(), old.get(), length_ * c.kv_dim()));
      old = std::move(next);
    }
  }
  allocated_ = grown;
  return absl::OkStatus();
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
  if (n > cache.capacity_ - past) {
    return absl::OutOfRangeError(absl::StrCat(
        "Decode: ", past, " cached + ", n, " new tokens exceed the KV cache's capacity of ",
        cache.capacity_, " positions (the model's context is ", ContextLength(c), ")"));
  }
  if (static_cast<int64_t>(last_logits.size()) != c.vocab_size) {
    return absl::InvalidArgumentError("Decode: last_logits must hold vocab_size floats");
  }
  if (static_cast<int64_t>(cache.keys_.size()) != c.num_layers ||
      cache.dtype_ != options_.compute_dtype) {
    return absl::InvalidArgumentError("Decode: the KV cache was made for another model");
  }
  for (int32_t id : ids) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("Decode: token id ", id, " is outside [0, ", c.vocab_size, ")"));
    }
  }
  QTRAIN_RETURN_IF_ERROR(cache.Reserve(*this, past + n));
  // Scratch for this call's tokens (one sequence).
  Buffer<int32_t> dev_ids;
  const kernels::DType dtype = options_.compute_dtype;
  TensorBuffer x, normed, q, attn, mid, gate, up, act;
  Buffer<float> lse, rstd, logits;
  const std::string what = "decode scratch";
  QTRAIN_RETURN_IF_ERROR(dev_ids.Resize(b, {n}, what));
  for (TensorBuffer* buf : {&x, &normed, &mid}) {
    QTRAIN_RETURN_IF_ERROR(buf->Resize(b, dtype, {n, d}, what));
  }
  for (TensorBuffer* buf : {&q, &attn}) {
    QTRAIN_RETURN_IF_ERROR(buf->Resize(b, dtype, {n, c.q_dim()}, what));
  }
  for (TensorBuffer* buf : {&gate, &up, &act}) {
    QTRAIN_RETURN_IF_ERROR(buf->Resize(b, dtype, {n, f}, what));
  }
  QTRAIN_RETURN_IF_ERROR(lse.Resize(b, {n, c.num_heads}, what));
  TensorBuffer q_succ, q_inter;
  DcaPass dca;
  if (c.dca.enabled()) {
    QTRAIN_RETURN_IF_ERROR(q_succ.Resize(b, dtype, {n, c.q_dim()}, what));
    QTRAIN_RETURN_IF_ERROR(q_inter.Resize(b, dtype, {n, c.q_dim()}, what));
    QTRAIN_RETURN_IF_ERROR(dca.Prepare(b, c, 1, n, past, past + n));
  }
  QTRAIN_RETURN_IF_ERROR(rstd.Resize(b, {n}, what));
  QTRAIN_RETURN_IF_ERROR(logits.Resize(b, {c.vocab_size}, what));

  QTRAIN_ASSIGN_OR_RETURN(const kernels::ConstTensor params, ComputeWeights());
  QTRAIN_RETURN_IF_OP_ERROR(b.CopyHostToBackend(dev_ids.get(), ids.data(), n * sizeof(int32_t)));
  QTRAIN_RETURN_IF_OP_ERROR(
      b.EmbeddingForward(dev_ids.get(), params + layout_.embed(), x.get(), n, c.vocab_size, d));
  const bool check = options_.check_finite;
  const RowPositions positions{.first_row = 0, .seq_len = n, .past = past};
  if (check) QTRAIN_RETURN_IF_ERROR(CheckFinite(b, x.get(), n, d, positions, kEmbeddingOutput));

  kernels::RopeShape q_rope{
      .batch = 1, .seq_len = n, .num_heads = c.num_heads, .head_dim = c.head_dim, .past_len = past};
  kernels::RopeShape k_rope = q_rope;
  k_rope.num_heads = c.num_kv_heads;
  kernels::AttentionShape attention{.batch = 1,
                                    .seq_len = n,
                                    .past_len = past,
                                    .kv_capacity = cache.allocated_,
                                    .num_heads = c.num_heads,
                                    .num_kv_heads = c.num_kv_heads,
                                    .head_dim = c.head_dim};
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const WeightView w(params, layout_.layer(l));
    const kernels::Tensor k = cache.keys_[l].get();
    const kernels::Tensor v = cache.values_[l].get();
    const kernels::Tensor k_new = k + past * c.kv_dim();
    const kernels::Tensor v_new = v + past * c.kv_dim();
    QTRAIN_RETURN_IF_OP_ERROR(
        b.RmsNormForward(x.get(), w.input_norm, eps, normed.get(), rstd.get(), n, d));
    QTRAIN_RETURN_IF_OP_ERROR(
        b.LinearForward(normed.get(), w.q_weight, w.q_bias, q.get(), n, d, c.q_dim()));
    QTRAIN_RETURN_IF_OP_ERROR(
        b.LinearForward(normed.get(), w.k_weight, w.k_bias, k_new, n, d, c.kv_dim()));
    QTRAIN_RETURN_IF_OP_ERROR(
        b.LinearForward(normed.get(), w.v_weight, w.v_bias, v_new, n, d, c.kv_dim()));
    if (c.dca.enabled()) {
      QTRAIN_RETURN_IF_ERROR(DcaRotateAndAttend(b, c, {inv_freq_.get(), attention_factor_}, dca,
                                                {.batch = 1,
                                                 .seq_len = n,
                                                 .past = past,
                                                 .kv_capacity = cache.allocated_,
                                                 .q = q.get(),
                                                 .q_succ = q_succ.get(),
                                                 .q_inter = q_inter.get(),
                                                 .k_new = k_new,
                                                 .k = k,
                                                 .v = v,
                                                 .out = attn.get(),
                                                 .lse = lse.get()}));
    } else {
      QTRAIN_RETURN_IF_OP_ERROR(
          b.RopeForward(q.get(), q.get(), q_rope, inv_freq_.get(), attention_factor_));
      QTRAIN_RETURN_IF_OP_ERROR(
          b.RopeForward(k_new, k_new, k_rope, inv_freq_.get(), attention_factor_));
      QTRAIN_RETURN_IF_OP_ERROR(
          b.AttentionForward(q.get(), k, v, attn.get(), lse.get(), attention));
    }
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
    if (check) QTRAIN_RETURN_IF_ERROR(CheckFinite(b, x.get(), n, d, positions, LayerOutputName(l)));
  }
  // Only the last token's logits are needed.
  const kernels::ConstTensor last = x.get() + (n - 1) * d;
  QTRAIN_RETURN_IF_OP_ERROR(
      b.RmsNormForward(last, params + layout_.final_norm(), eps, normed.get(), rstd.get(), 1, d));
  const RowPositions last_position{.first_row = n - 1, .seq_len = n, .past = past};
  if (check) {
    QTRAIN_RETURN_IF_ERROR(CheckFinite(b, normed.get(), 1, d, last_position, kFinalNormOutput));
  }
  QTRAIN_RETURN_IF_OP_ERROR(
      b.LmHeadForward(normed.get(), params + layout_.embed(), logits.get(), 1, c.vocab_size, d));
  if (check) {
    QTRAIN_RETURN_IF_ERROR(CheckFinite(b, logits.get(), 1, c.vocab_size, last_position, kLogits));
  }
  QTRAIN_RETURN_IF_OP_ERROR(
      b.CopyBackendToHost(last_logits.data(), logits.get(), c.vocab_size * sizeof(float)));
  cache.length_ = past + n;
  return absl::OkStatus();
}

}  // namespace qtrain::model
