// Import and export of transformers-format Qwen2 checkpoints.
//
// A checkpoint directory holds config.json and either model.safetensors or shards listed in
// model.safetensors.index.json ({"weight_map": {tensor: file}}). Tensors may be F32, BF16 or F16;
// qtrain keeps fp32. lm_head.weight is accepted only as an exact copy of the tied embedding.
// Exports are what transformers writes for a tied fp32 Qwen2ForCausalLM: config.json and one
// model.safetensors without lm_head.weight, metadata {"format": "pt"}.
#ifndef QTRAIN_WORKER_MODEL_CHECKPOINT_IO_H_
#define QTRAIN_WORKER_MODEL_CHECKPOINT_IO_H_

#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/model/config.h"
#include "worker/model/param_layout.h"

namespace qtrain::model {

struct LoadedModel {
  ModelConfig config;
  std::vector<float> params;  // ParameterLayout(config) order
};

// Reads `dir`/config.json.
absl::StatusOr<ModelConfig> LoadConfig(const std::string& dir);

struct LoadOptions {
  // Accept tensors holding NaN or infinities (by default they are refused, naming the tensor and
  // the first bad index).
  bool allow_nonfinite = false;
};

// Loads config and weights. Errors name the offending tensor (missing, unexpected, wrong shape
// or dtype, non-finite values) and file; a model too large for memory is RESOURCE_EXHAUSTED.
absl::StatusOr<LoadedModel> LoadCheckpoint(const std::string& dir, const LoadOptions& options = {});

// Loads the weights of `dir` into `params` laid out for `config` (used when the config is
// already known).
absl::Status LoadWeights(const std::string& dir, const ModelConfig& config, std::span<float> params,
                         const LoadOptions& options = {});

// Whether `status` is LoadWeights refusing a non-finite value (LoadOptions::allow_nonfinite
// would accept it).
bool IsNonFiniteWeightError(const absl::Status& status);

// Writes config.json and model.safetensors into `dir` (created if needed; files replaced
// atomically).
absl::Status SaveCheckpoint(const std::string& dir, const ModelConfig& config,
                            std::span<const float> params);

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_CHECKPOINT_IO_H_
