// The Qwen2 model: forward (loss, logits, per-token log-probabilities), backward (gradients of
// every parameter) and KV-cache decoding, built on the ops of kernels/ops.h. The math is
// described in docs/model-math.md, checked against transformers by parity_test.cc.
//
//   QTRAIN_ASSIGN_OR_RETURN(Model model, Model::Create(config));
//   InitializeParameters(config, model.layout(), seed, model.params());
//   model.ZeroGrads();
//   QTRAIN_ASSIGN_OR_RETURN(ForwardResult r, model.ForwardBackward(batch));
//
// Parameters and gradients are each one contiguous fp32 buffer laid out by ParameterLayout, in
// the backend's memory (host memory with the CPU backend, the only one params()/grads() may be
// read from directly).
#ifndef QTRAIN_WORKER_MODEL_MODEL_H_
#define QTRAIN_WORKER_MODEL_MODEL_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "worker/model/buffer.h"
#include "worker/model/config.h"
#include "worker/model/param_layout.h"

namespace qtrain::model {

inline constexpr int32_t kIgnoreIndex = kernels::kIgnoreIndex;

// B sequences of T tokens each, row-major, in host memory. targets[b*T + t] is the token that
// position t must predict (already shifted, unlike transformers' labels), or kIgnoreIndex.
struct Batch {
  int64_t batch_size = 0;
  int64_t seq_len = 0;
  std::span<const int32_t> ids;
  std::span<const int32_t> targets;  // empty: no loss
  // Divides the summed token losses; 0 means the number of non-ignored targets in this batch
  // (transformers' mean). Data-parallel training passes the global count (num_items_in_batch).
  int64_t loss_normalizer = 0;
  // ForwardBackward adds loss_scale x d(loss)/d(params) to grads() (the returned loss is not
  // scaled): fp16's dynamic loss scaling (worker/train/loss_scale.h) keeps small gradients above
  // fp16's underflow with a power of two, which the caller divides out. Finite and > 0.
  float loss_scale = 1.0f;
};

// transformers' labels (unshifted; the loss shifts them) -> targets as Batch wants them.
// labels.size() must be batch_size * seq_len.
std::vector<int32_t> ShiftLabels(std::span<const int32_t> labels, int64_t batch_size,
                                 int64_t seq_len);

struct ModelOptions {
  // Keep only each layer's input in the forward pass and recompute the layer in backward.
  bool recompute_activations = false;
  // The LM head and the loss run over this many tokens at a time, so that the [tokens, vocab]
  // logits are never materialized whole (unless the caller asks for them).
  int64_t lm_head_chunk_tokens = 256;
  // Inference-only models (score, generate) skip the gradient buffer; grads() is then empty and
  // ForwardBackward fails.
  bool allocate_gradients = true;
  // Fail a pass (Forward, ForwardBackward, Decode) whose activations or logits turn NaN or
  // infinite, naming where they first appear (the embedding, a decoder layer, the final norm or
  // the LM head). Training leaves it off and skips steps with a non-finite loss instead.
  bool check_finite = false;
  // The storage of the weights the passes read and of the activations: fp32, or bf16 or fp16
  // for mixed precision (fp16 wants Batch::loss_scale in training). With bf16 or fp16 the
  // parameters stay fp32 (the master weights the optimizer updates,
  // params()), each pass reads a 16-bit copy of them made at its start, and the activations
  // and their gradients are 16-bit; the matmuls accumulate in fp32, and the norms' statistics, the
  // logits, the loss and the parameter gradients (grads()) are fp32.
  kernels::DType compute_dtype = kernels::DType::kFloat32;
};

// Optional host outputs of a forward pass.
struct ForwardOutputs {
  std::vector<float>* logits = nullptr;  // receives [B*T, vocab]
  // Receives [B*T]: log p(targets[i] | ids up to i), 0 where the target is ignored. Computed
  // chunk by chunk, without the whole logits matrix.
  std::vector<float>* target_logprobs = nullptr;
};

struct ForwardResult {
  // Summed token losses / normalizer. NaN when nothing is normalized over (no targets, or all
  // ignored), as in transformers; the gradients are then left unchanged.
  double loss = 0;
  double loss_sum = 0;      // summed token losses
  int64_t num_targets = 0;  // non-ignored targets in the batch
};

class KvCache;
struct Activations;

class Model {
 public:
  // Parameters start at zero (see InitializeParameters and LoadWeights).
  static absl::StatusOr<Model> Create(const ModelConfig& config, ModelOptions options = {},
                                      kernels::Backend& backend = kernels::CpuBackend());
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  ~Model();

  const ModelConfig& config() const { return config_; }
  const ParameterLayout& layout() const { return layout_; }
  const ModelOptions& options() const { return options_; }
  kernels::Backend& backend() const { return *backend_; }
  // The fp32 master weights. Taking them writable marks the bf16 working copy stale, so the next
  // pass casts them again; a pass that follows passes without such an access (a decode loop, an
  // evaluation) reuses the copy. Write through a span taken after the last pass, not one kept
  // from before it.
  std::span<float> params() {
    working_weights_current_ = false;
    return {params_.get(), static_cast<size_t>(params_.size())};
  }
  std::span<const float> params() const {
    return {params_.get(), static_cast<size_t>(params_.size())};
  }
  // For an optimizer that updates the master weights in place and rewrites the working copy in
  // the same pass (Optimizer::Step's working_copy): params() writable WITHOUT marking the copy
  // stale, and the copy itself, of params().size() elements in the compute dtype. The copy is
  // null for fp32 and when it is stale already (the next pass casts it anyway). The caller keeps
  // the two equal: every element it changes in params it writes, rounded, into the copy, or it
  // takes params() (writable) afterwards.
  struct UpdatableWeights {
    std::span<float> params;
    kernels::Tensor working_copy;
  };
  UpdatableWeights weights_for_update() {
    kernels::Tensor copy;
    if (working_weights_current_ && options_.compute_dtype != kernels::DType::kFloat32 &&
        working_weights_.size() == params_.size()) {
      copy = working_weights_.get();
    }
    return {{params_.get(), static_cast<size_t>(params_.size())}, copy};
  }
  std::span<float> grads() { return {grads_.get(), static_cast<size_t>(grads_.size())}; }
  std::span<const float> grads() const {
    return {grads_.get(), static_cast<size_t>(grads_.size())};
  }
  absl::Status ZeroGrads();

  // Forward pass; the loss when the batch has targets.
  absl::StatusOr<ForwardResult> Forward(const Batch& batch, ForwardOutputs outputs = {});
  // Forward and backward: adds d(loss)/d(params) to grads(). Needs targets.
  absl::StatusOr<ForwardResult> ForwardBackward(const Batch& batch, ForwardOutputs outputs = {});

  // Appends `ids` to the cache (positions continue from cache.length()) and writes the logits of
  // the last new token into `last_logits` (vocab floats, host).
  absl::Status Decode(std::span<const int32_t> ids, KvCache& cache, std::span<float> last_logits);

 private:
  Model(const ModelConfig& config, ModelOptions options, kernels::Backend& backend);
  absl::Status CheckBatch(const Batch& batch, bool need_targets) const;
  absl::StatusOr<ForwardResult> Run(const Batch& batch, ForwardOutputs outputs, bool backward);
  // The weights in the compute dtype: params() itself for fp32, else the working copy, cast again
  // when params() was taken writable since the last cast.
  absl::StatusOr<kernels::ConstTensor> ComputeWeights();

  ModelConfig config_;
  ModelOptions options_;
  kernels::Backend* backend_;
  ParameterLayout layout_;
  Buffer<float> params_;
  Buffer<float> grads_;
  TensorBuffer working_weights_;          // bf16 compute: the passes' copy of params_
  bool working_weights_current_ = false;  // it equals params_ cast (no writable access since)
  Buffer<float> inv_freq_;
  float attention_factor_ = 1.0f;
  std::unique_ptr<Activations> acts_;
};

// The positions the model computes: max_position_embeddings, or with YaRN the original context
// times the factor when that is larger.
int64_t ContextLength(const ModelConfig& config);

// Keys (after RoPE) and values of every layer for one sequence, for up to capacity() positions.
// Memory follows the tokens: a few hundred positions at first, doubled by Decode as needed.
class KvCache {
 public:
  // max_tokens: at most ContextLength(model.config()).
  static absl::StatusOr<KvCache> Create(const Model& model, int64_t max_tokens);
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  int64_t allocated() const { return allocated_; }  // positions that have memory now
  void Clear() { length_ = 0; }

 private:
  friend class Model;
  static constexpr int64_t kInitialTokens = 256;
  KvCache() = default;
  // Makes room for `tokens` positions (<= capacity), keeping the cached ones.
  absl::Status Reserve(const Model& model, int64_t tokens);
  int64_t capacity_ = 0;
  int64_t allocated_ = 0;
  int64_t length_ = 0;
  kernels::DType dtype_ = kernels::DType::kFloat32;  // the model's compute dtype
  std::vector<TensorBuffer> keys_;                   // per layer [allocated, kv_dim]
  std::vector<TensorBuffer> values_;                 // per layer [allocated, kv_dim]
};

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_MODEL_H_
