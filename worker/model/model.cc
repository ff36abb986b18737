#include "worker/model/model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/checked_math.h"
#include "common/status_macros.h"
#include "kernels/rope_tables.h"
#include "worker/model/model_internal.h"

namespace qtrain::model {

std::vector<int32_t> ShiftLabels(std::span<const int32_t> labels, int64_t batch_size,
                                 int64_t seq_len) {
  std::vector<int32_t> targets(labels.size(), kIgnoreIndex);
  // A size mismatch yields all-ignored targets of the labels' size, which CheckBatch refuses.
  if (static_cast<int64_t>(labels.size()) != batch_size * seq_len) return targets;
  for (int64_t b = 0; b < batch_size; ++b) {
    for (int64_t t = 0; t + 1 < seq_len; ++t) {
      targets[b * seq_len + t] = labels[b * seq_len + t + 1];
    }
  }
  return targets;
}

absl::Status Activations::Resize(kernels::Backend& b, const ModelConfig& c,
                                 kernels::DType new_dtype, int64_t new_batch, int64_t new_seq_len,
                                 PassMode new_mode, int64_t chunk) {
  if (ready && new_batch == batch && new_seq_len == seq_len && new_mode == mode &&
      new_dtype == dtype) {
    return absl::OkStatus();
  }
  // The shape is recorded only once every buffer is there: after a failed allocation nothing is
  // kept, so a retry allocates again instead of finding a "matching" shape with buffers missing.
  *this = Activations();
  dtype = new_dtype;
  absl::Status status = Allocate(b, c, new_batch, new_seq_len, new_mode, chunk);
  if (!status.ok()) {
    *this = Activations();
    return status;
  }
  batch = new_batch;
  seq_len = new_seq_len;
  mode = new_mode;
  ready = true;
  return absl::OkStatus();
}

absl::Status Activations::Allocate(kernels::Backend& b, const ModelConfig& c, int64_t new_batch,
                                   int64_t new_seq_len, PassMode new_mode, int64_t chunk) {
  const int64_t d = c.hidden_size;
  const bool training = new_mode != PassMode::kInference;
  // layer_input() and layer() index by mode, so it is set before the buffers are.
  mode = new_mode;
  QTRAIN_RETURN_IF_ERROR(ids.Resize(b, {new_batch, new_seq_len}, "activations (token ids)"));
  QTRAIN_RETURN_IF_ERROR(targets.Resize(b, {new_batch, new_seq_len}, "activations (targets)"));
  residual.resize(training ? c.num_layers + 1 : 2);
  for (TensorBuffer& r : residual) {
    QTRAIN_RETURN_IF_ERROR(
        r.Resize(b, dtype, {new_batch, new_seq_len, d}, "activations (residual)"));
  }
  layers.resize(new_mode == PassMode::kTrainStored ? c.num_layers : 1);
  for (LayerActivations& l : layers) {
    QTRAIN_RETURN_IF_ERROR(l.Resize(b, c, dtype, new_batch, new_seq_len));
  }
  QTRAIN_RETURN_IF_ERROR(
      rstd_final.Resize(b, {new_batch, new_seq_len}, "activations (final norm rstd)"));
  QTRAIN_RETURN_IF_ERROR(final_normed.Resize(b, dtype, {new_batch, new_seq_len, d},
                                             "activations (final norm output)"));
  if (training) {
    QTRAIN_RETURN_IF_ERROR(d_residual.Resize(b, dtype, {new_batch, new_seq_len, d},
                                             "activations (residual gradient)"));
    QTRAIN_RETURN_IF_ERROR(scratch.Resize(b, c, dtype, new_batch, new_seq_len));
  }
  const std::optional<int64_t> rows = CheckedMul(new_batch, new_seq_len);
  if (!rows.has_value()) return AllocationError("activations", std::nullopt);
  const int64_t chunk_rows = std::min(chunk, *rows);
  QTRAIN_RETURN_IF_ERROR(
      logits.Resize(b, {chunk_rows, c.vocab_size}, "activations (LM head logits chunk)"));
  QTRAIN_RETURN_IF_ERROR(losses.Resize(b, {chunk_rows}, "activations (token losses)"));
  QTRAIN_RETURN_IF_ERROR(lse.Resize(b, {chunk_rows}, "activations (logsumexp)"));
  const int64_t chunks = chunk_rows > 0 ? (*rows + chunk_rows - 1) / chunk_rows : 0;
  QTRAIN_RETURN_IF_ERROR(chunk_loss.Resize(b, {chunks}, "activations (chunk loss sums)"));
  return absl::OkStatus();
}

absl::Status CheckFinite(kernels::Backend& b, kernels::ConstTensor x, int64_t rows, int64_t width,
                         const RowPositions& positions, absl::string_view where) {
  const int64_t n = rows * width;
  // SumOfSquares reads fp32: a bf16 tensor is checked through an fp32 copy (exact).
  Buffer<float> widened;
  if (!x.is_f32()) {
    QTRAIN_RETURN_IF_ERROR(widened.Resize(b, {n}, "an fp32 copy for the finiteness check"));
    QTRAIN_RETURN_IF_OP_ERROR(b.Cast(x, widened.get(), n));
  }
  const float* values = x.is_f32() ? x.f32() : widened.get();
  // A finite float squared is below 1.2e77, so the double sum is finite exactly when every
  // value is: one pass, on any backend.
  Buffer<double> sum;
  QTRAIN_RETURN_IF_ERROR(sum.Resize(b, {1}, "the finiteness check's sum"));
  QTRAIN_RETURN_IF_OP_ERROR(b.SumOfSquares(&values, &n, 1, sum.get()));
  double sum_squares = 0;
  QTRAIN_RETURN_IF_OP_ERROR(b.CopyBackendToHost(&sum_squares, sum.get(), sizeof(double)));
  if (std::isfinite(sum_squares)) return absl::OkStatus();
  QTRAIN_ASSIGN_OR_RETURN(std::vector<float> host,
                          MakeHostVector<float>({n}, "a host copy for the finiteness check"));
  QTRAIN_RETURN_IF_OP_ERROR(b.CopyBackendToHost(host.data(), values, n * sizeof(float)));
  const auto bad =
      std::find_if(host.begin(), host.end(), [](float v) { return !std::isfinite(v); });
  const int64_t i = bad - host.begin();
  const int64_t row = positions.first_row + i / width;
  return absl::FailedPreconditionError(absl::StrCat(
      "non-finite value (", bad == host.end() ? 0.0f : *bad, ") in ", where, " at sequence ",
      row / positions.seq_len, ", position ", positions.past + row % positions.seq_len,
      ", element ", i % width, ": the weights hold NaN or infinite values, or overflow fp32"));
}

std::string LayerOutputName(int64_t layer) {
  return absl::StrCat("the output of decoder layer ", layer, " (model.layers.", layer, ".*)");
}

Model::Model(const ModelConfig& config, ModelOptions options, kernels::Backend& backend)
    : config_(config),
      options_(options),
      backend_(&backend),
      layout_(config),
      acts_(std::make_unique<Activations>()) {}

Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

absl::StatusOr<Model> Model::Create(const ModelConfig& config, ModelOptions options,
                                    kernels::Backend& backend) {
  QTRAIN_RETURN_IF_ERROR(ValidateConfig(config));
  if (options.lm_head_chunk_tokens <= 0) {
    return absl::InvalidArgumentError("lm_head_chunk_tokens must be positive");
  }
  if (options.compute_dtype != kernels::DType::kFloat32 &&
      options.compute_dtype != kernels::DType::kBfloat16 &&
      options.compute_dtype != kernels::DType::kFloat16) {
    return absl::InvalidArgumentError("compute_dtype must be fp32, bf16 or fp16");
  }
  Model model(config, options, backend);
  const int64_t n = model.layout_.total_size();
  QTRAIN_RETURN_IF_ERROR(model.params_.Resize(backend, {n}, "the model parameters"));
  QTRAIN_RETURN_IF_OP_ERROR(backend.Fill(model.params_.get(), n, 0.0f));
  if (options.allocate_gradients) {
    QTRAIN_RETURN_IF_ERROR(model.grads_.Resize(backend, {n}, "the parameter gradients"));
    QTRAIN_RETURN_IF_OP_ERROR(backend.Fill(model.grads_.get(), n, 0.0f));
  }

  kernels::RopeConfig rope;
  rope.head_dim = config.head_dim;
  rope.theta = config.rope_theta;
  // Dual Chunk Attention replaces YaRN: plain tables (its positions stay below the chunk size).
  rope.yarn = config.rope_type == RopeType::kYarn && !config.dca.enabled();
  if (rope.yarn) {
    // The explicit factor and original_max_position_embeddings win, as in current transformers
    // (docs/model-math.md#version-trap).
    rope.factor = config.yarn.factor;
    rope.original_max_position_embeddings = config.yarn.original_max_position_embeddings;
    rope.beta_fast = config.yarn.beta_fast;
    rope.beta_slow = config.yarn.beta_slow;
    rope.attention_factor = config.yarn.attention_factor;
    rope.mscale = config.yarn.mscale;
    rope.mscale_all_dim = config.yarn.mscale_all_dim;
    rope.truncate = config.yarn.truncate;
  }
  kernels::RopeTables tables;
  QTRAIN_RETURN_IF_OP_ERROR(kernels::ComputeRopeTables(rope, &tables));
  QTRAIN_RETURN_IF_ERROR(
      model.inv_freq_.Resize(backend, {config.head_dim / 2}, "the RoPE frequencies"));
  QTRAIN_RETURN_IF_OP_ERROR(backend.CopyHostToBackend(model.inv_freq_.get(), tables.inv_freq.data(),
                                                      tables.inv_freq.size() * sizeof(float)));
  model.attention_factor_ = tables.attention_factor;
  return model;
}

absl::StatusOr<kernels::ConstTensor> Model::ComputeWeights() {
  if (options_.compute_dtype == kernels::DType::kFloat32)
    return kernels::ConstTensor(params_.get());
  const int64_t n = params_.size();
  if (working_weights_current_ && working_weights_.size() == n) {
    return kernels::ConstTensor(working_weights_.get());
  }
  working_weights_current_ = false;
  QTRAIN_RETURN_IF_ERROR(working_weights_.Resize(*backend_, options_.compute_dtype, {n},
                                                 "the working copy of the weights"));
  QTRAIN_RETURN_IF_OP_ERROR(backend_->Cast(params_.get(), working_weights_.get(), n));
  working_weights_current_ = true;
  return kernels::ConstTensor(working_weights_.get());
}

absl::Status Model::ZeroGrads() {
  if (grads_.size() == 0) return absl::OkStatus();
  return OpToStatus(backend_->Fill(grads_.get(), grads_.size(), 0.0f));
}

absl::Status Model::CheckBatch(const Batch& batch, bool need_targets) const {
  if (batch.batch_size <= 0 || batch.seq_len <= 0) {
    return absl::InvalidArgumentError("batch: batch_size and seq_len must be positive");
  }
  const std::optional<int64_t> checked_rows = CheckedMul(batch.batch_size, batch.seq_len);
  if (!checked_rows.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "batch: batch_size ", batch.batch_size, " x seq_len ", batch.seq_len, " overflows int64"));
  }
  const int64_t rows = *checked_rows;
  if (static_cast<int64_t>(batch.ids.size()) != rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch: ", batch.ids.size(), " ids for batch_size*seq_len = ", rows));
  }
  if (!batch.targets.empty() && static_cast<int64_t>(batch.targets.size()) != rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch: ", batch.targets.size(), " targets for batch_size*seq_len = ", rows));
  }
  if (need_targets && batch.targets.empty()) {
    return absl::InvalidArgumentError("batch: targets are needed for the loss");
  }
  if (batch.loss_normalizer < 0) {
    return absl::InvalidArgumentError("batch: loss_normalizer must be >= 0");
  }
  if (!(std::isfinite(batch.loss_scale) && batch.loss_scale > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch: loss_scale ", batch.loss_scale, " must be finite and > 0"));
  }
  for (int64_t i = 0; i < rows; ++i) {
    if (batch.ids[i] < 0 || batch.ids[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("batch: token id ", batch.ids[i], " at ", i,
                                                     " is outside [0, ", config_.vocab_size, ")"));
    }
  }
  for (size_t i = 0; i < batch.targets.size(); ++i) {
    const int32_t t = batch.targets[i];
    if (t != kIgnoreIndex && (t < 0 || t >= config_.vocab_size)) {
      return absl::InvalidArgumentError(absl::StrCat("batch: target ", t, " at ", i,
                                                     " is outside [0, ", config_.vocab_size,
                                                     ") and is not ", kIgnoreIndex));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ForwardResult> Model::Forward(const Batch& batch, ForwardOutputs outputs) {
  QTRAIN_RETURN_IF_ERROR(CheckBatch(batch, outputs.target_logprobs != nullptr));
  return Run(batch, outputs, /*backward=*/false);
}

absl::StatusOr<ForwardResult> Model::ForwardBackward(const Batch& batch, ForwardOutputs outputs) {
  QTRAIN_RETURN_IF_ERROR(CheckBatch(batch, /*need_targets=*/true));
  if (config_.dca.enabled()) {
    return absl::FailedPreconditionError("ForwardBackward: dual chunk attention is inference-only");
  }
  if (grads_.size() == 0) {
    return absl::FailedPreconditionError("ForwardBackward: the model has no gradient buffer");
  }
  return Run(batch, outputs, /*backward=*/true);
}

absl::StatusOr<ForwardResult> Model::Run(const Batch& batch, ForwardOutputs outputs,
                                         bool backward) {
  kernels::Backend& b = *backend_;
  const ModelConfig& c = config_;
  const int64_t batch_size = batch.batch_size, seq_len = batch.seq_len;
  const int64_t rows = batch_size * seq_len;
  const int64_t d = c.hidden_size, vocab = c.vocab_size;
  Activations& acts = *acts_;
  const PassMode mode = !backward                        ? PassMode::kInference
                        : options_.recompute_activations ? PassMode::kTrainRecompute
                                                         : PassMode::kTrainStored;
  QTRAIN_RETURN_IF_ERROR(acts.Resize(b, c, options_.compute_dtype, batch_size, seq_len, mode,
                                     options_.lm_head_chunk_tokens));
  QTRAIN_RETURN_IF_OP_ERROR(
      b.CopyHostToBackend(acts.ids.get(), batch.ids.data(), rows * sizeof(int32_t)));
  const bool has_targets = !batch.targets.empty();
  if (has_targets) {
    QTRAIN_RETURN_IF_OP_ERROR(
        b.CopyHostToBackend(acts.targets.get(), batch.targets.data(), rows * sizeof(int32_t)));
  }
  QTRAIN_ASSIGN_OR_RETURN(const kernels::ConstTensor params, ComputeWeights());
  const RopeParams rope{inv_freq_.get(), attention_factor_};

  // Embedding and decoder layers.
  const bool check = options_.check_finite;
  auto check_finite = [&](kernels::ConstTensor x, int64_t r, int64_t width,
                          absl::string_view where) {
    return check ? CheckFinite(b, x, r, width, {0, seq_len, 0}, where) : absl::OkStatus();
  };
  QTRAIN_RETURN_IF_OP_ERROR(b.EmbeddingForward(acts.ids.get(), params + layout_.embed(),
                                               acts.layer_input(0), rows, vocab, d));
  QTRAIN_RETURN_IF_ERROR(check_finite(acts.layer_input(0), rows, d, kEmbeddingOutput));
  DcaPass dca;
  const bool use_dca = c.dca.enabled() && !backward;
  if (use_dca) QTRAIN_RETURN_IF_ERROR(dca.Prepare(b, c, batch_size, seq_len, 0, seq_len));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    QTRAIN_RETURN_IF_ERROR(LayerForward(b, c, WeightView(params, layout_.layer(l)), rope,
                                        batch_size, seq_len, acts.layer_input(l), acts.layer(l),
                                        acts.layer_input(l + 1), use_dca ? &dca : nullptr));
    QTRAIN_RETURN_IF_ERROR(check_finite(acts.layer_input(l + 1), rows, d, LayerOutputName(l)));
  }
  const kernels::ConstTensor final_norm = params + layout_.final_norm();
  QTRAIN_RETURN_IF_OP_ERROR(b.RmsNormForward(
      acts.layer_input(c.num_layers), final_norm, static_cast<float>(c.rms_norm_eps),
      acts.final_normed.get(), acts.rstd_final.get(), rows, d));
  QTRAIN_RETURN_IF_ERROR(check_finite(acts.final_normed.get(), rows, d, kFinalNormOutput));

  // LM head and loss, chunk by chunk; with backward, the loss gradient is taken right away so
  // that no chunk's logits outlive it.
  ForwardResult result;
  if (has_targets) {
    result.num_targets = std::count_if(batch.targets.begin(), batch.targets.end(),
                                       [](int32_t t) { return t != kIgnoreIndex; });
  }
  const int64_t normalizer = batch.loss_normalizer > 0 ? batch.loss_normalizer : result.num_targets;
  const bool run_backward = backward && normalizer > 0;
  float* grads = grads_.get();
  if (run_backward) {
    QTRAIN_RETURN_IF_OP_ERROR(b.Fill(acts.d_residual.get(), rows * d, 0.0f));
  }
  if (outputs.logits != nullptr) {
    QTRAIN_RETURN_IF_ERROR(
        ResizeHostVector(*outputs.logits, {rows, vocab}, "the requested logits (host)"));
  }
  if (outputs.target_logprobs != nullptr) {
    QTRAIN_RETURN_IF_ERROR(
        ResizeHostVector(*outputs.target_logprobs, {rows}, "the token log-probabilities (host)"));
  }
  const int64_t chunk = std::min(options_.lm_head_chunk_tokens, rows);
  const bool need_head = has_targets || outputs.logits != nullptr;
  for (int64_t r0 = 0; need_head && r0 < rows; r0 += chunk) {
    const int64_t n = std::min(chunk, rows - r0);
    const kernels::ConstTensor y = acts.final_normed.get() + r0 * d;
    QTRAIN_RETURN_IF_OP_ERROR(
        b.LmHeadForward(y, params + layout_.embed(), acts.logits.get(), n, vocab, d));
    if (check) {
      QTRAIN_RETURN_IF_ERROR(
          CheckFinite(b, acts.logits.get(), n, vocab, {r0, seq_len, 0}, kLogits));
    }
    if (outputs.logits != nullptr) {
      QTRAIN_RETURN_IF_OP_ERROR(b.CopyBackendToHost(outputs.logits->data() + r0 * vocab,
                                                    acts.logits.get(), n * vocab * sizeof(float)));
    }
    if (!has_targets) continue;
    const int32_t* targets = acts.targets.get() + r0;
    double* chunk_sum = acts.chunk_loss.get() + r0 / chunk;  // read back after the last chunk
    if (run_backward) {  // the loss and its gradient (over the logits, in place) in one pass
      QTRAIN_RETURN_IF_OP_ERROR(b.CrossEntropyForwardBackward(
          acts.logits.get(), targets, batch.loss_scale / static_cast<float>(normalizer),
          acts.losses.get(), acts.lse.get(), chunk_sum, nullptr, acts.logits.get(), n, vocab,
          kIgnoreIndex));
    } else {
      QTRAIN_RETURN_IF_OP_ERROR(b.CrossEntropyForward(acts.logits.get(), targets, acts.losses.get(),
                                                      acts.lse.get(), chunk_sum, nullptr, n, vocab,
                                                      kIgnoreIndex));
    }
    if (outputs.target_logprobs != nullptr) {
      float* out = outputs.target_logprobs->data() + r0;
      QTRAIN_RETURN_IF_OP_ERROR(b.CopyBackendToHost(out, acts.losses.get(), n * sizeof(float)));
      for (int64_t i = 0; i < n; ++i) out[i] = out[i] == 0.0f ? 0.0f : -out[i];
    }
    if (run_backward) {
      QTRAIN_RETURN_IF_OP_ERROR(b.LmHeadBackward(acts.logits.get(), y, params + layout_.embed(),
                                                 acts.d_residual.get() + r0 * d,
                                                 grads + layout_.embed(), n, vocab, d));
    }
  }
  if (need_head && has_targets) {
    // The chunks' sums in chunk order, as one pass over the rows would add them.
    const int64_t chunks = (rows + chunk - 1) / chunk;
    std::vector<double> chunk_sums(static_cast<size_t>(chunks));
    QTRAIN_RETURN_IF_OP_ERROR(b.CopyBackendToHost(chunk_sums.data(), acts.chunk_loss.get(),
                                                  chunk_sums.size() * sizeof(double)));
    for (double chunk_sum : chunk_sums) result.loss_sum += chunk_sum;
  }
  result.loss = normalizer > 0 ? result.loss_sum / static_cast<double>(normalizer)
                               : std::numeric_limits<double>::quiet_NaN();
  if (!run_backward) return result;

  // Backward through the final norm, the layers and the embedding.
  BackwardScratch& s = acts.scratch;
  QTRAIN_RETURN_IF_OP_ERROR(b.Fill(s.d_mid.get(), rows * d, 0.0f));
  QTRAIN_RETURN_IF_OP_ERROR(b.RmsNormBackward(acts.d_residual.get(), acts.layer_input(c.num_layers),
                                              final_norm, acts.rstd_final.get(), s.d_mid.get(),
                                              grads + layout_.final_norm(), rows, d));
  QTRAIN_RETURN_IF_ERROR(CopyTensor(b, acts.d_residual.get(), s.d_mid.get(), rows * d));
  for (int64_t l = c.num_layers - 1; l >= 0; --l) {
    const WeightView w(params, layout_.layer(l));
    LayerActivations& la = acts.layer(l);
    if (mode == PassMode::kTrainRecompute) {
      // Recomputing rewrites the input of layer l + 1 with the same values; nothing reads it
      // any more.
      QTRAIN_RETURN_IF_ERROR(LayerForward(b, c, w, rope, batch_size, seq_len, acts.layer_input(l),
                                          la, acts.layer_input(l + 1)));
    }
    QTRAIN_RETURN_IF_ERROR(LayerBackward(b, c, w, GradientView(grads, layout_.layer(l)), rope,
                                         batch_size, seq_len, acts.layer_input(l), la, s,
                                         acts.d_residual.get()));
  }
  QTRAIN_RETURN_IF_OP_ERROR(b.EmbeddingBackward(acts.ids.get(), acts.d_residual.get(),
                                                grads + layout_.embed(), rows, vocab, d));
  return result;
}

}  // namespace qtrain::model
