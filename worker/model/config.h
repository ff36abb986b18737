// Qwen2 model configuration: presets and transformers' config.json.
//
// qtrain supports the Qwen2 structure exactly (docs/model-math.md): GQA, q/k/v biases, tied
// embeddings, SiLU MLP, RMSNorm, RoPE with optional static YaRN. Configurations outside it
// (untied embeddings, sliding windows, other RoPE types, other activations) are refused with an
// error that names the config.json key.
#ifndef QTRAIN_WORKER_MODEL_CONFIG_H_
#define QTRAIN_WORKER_MODEL_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace qtrain::model {

enum class RopeType { kDefault, kYarn };

// transformers' rope_scaling / rope_parameters for YaRN (modeling_rope_utils.py).
struct YarnParams {
  double factor = 1.0;
  int64_t original_max_position_embeddings = 0;  // 0: use max_position_embeddings
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  std::optional<double> attention_factor;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  bool truncate = true;
};

// Dual Chunk Attention (docs/model-math.md, "Dual Chunk Attention"): config.json's
// `dual_chunk_attention_config`, as Qwen2.5-1M models ship it, or `--dca CHUNK,LOCAL`.
// Inference only (score, generate, eval); it replaces YaRN when both are configured.
struct DcaParams {
  int64_t chunk_size = 0;  // C; 0: DCA is off
  int64_t local_size = 0;  // w, 0 <= w < C; chunk length s = C - w
  // > 0: logits are scaled by lambda^2, lambda = max(1, 0.1 ln(L / this) + 1), L the length.
  int64_t original_max_position_embeddings = 0;

  bool enabled() const { return chunk_size > 0; }
  int64_t chunk_len() const { return chunk_size - local_size; }
};

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // hidden_size / num_heads unless config.json says otherwise
  double rms_norm_eps = 1e-6;
  double rope_theta = 1e6;
  int64_t max_position_embeddings = 32768;
  RopeType rope_type = RopeType::kDefault;
  YarnParams yarn;
  double initializer_range = 0.02;
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // empty: none
  DcaParams dca;                       // off unless configured

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  int64_t group_size() const { return num_heads / num_kv_heads; }
  // Number of fp32 parameters (tied embedding counted once); nullopt when it does not fit in
  // int64.
  std::optional<int64_t> CheckedNumParameters() const;
  // The same for a config that passed ValidateConfig (-1 when the count overflows).
  int64_t NumParameters() const { return CheckedNumParameters().value_or(-1); }
};

// The largest sizes a config may have: each of vocab_size, hidden_size, intermediate_size,
// num_hidden_layers, the head counts, head_dim, heads x head_dim and max_position_embeddings is
// at most kMaxDim; the parameter count at most kMaxParameters. They keep every size the model
// derives from them (activations, buffers, positions x YaRN factor) inside int64.
inline constexpr int64_t kMaxDim = int64_t{1} << 24;
inline constexpr int64_t kMaxParameters = int64_t{1} << 40;
inline constexpr double kMaxRopeTheta = 1e12;
inline constexpr double kMaxYarnFactor = 1024;

// One problem of a config, under its config.json key ("vocab_size",
// "rope_scaling.factor"; empty for the parameter count as a whole).
struct ConfigProblem {
  std::string key;
  std::string message;
};
std::vector<ConfigProblem> FindConfigProblems(const ModelConfig& config);

// Checks sizes, bounds and divisibility; INVALID_ARGUMENT naming each field
// ("model config: vocab_size: ..."), one problem per line.
absl::Status ValidateConfig(const ModelConfig& config);

// Presets: "qwen2-0.5b" (docs/model-math.md#configuration), "qwen2-tiny" (hidden 64, 2 layers,
// 4 heads over 2 KV heads, vocab 4096), "qwen2-test" (smaller still, for gradient checks).
absl::StatusOr<ModelConfig> PresetConfig(std::string_view name);
std::vector<std::string> PresetNames();

// Parses transformers' config.json text (rope_scaling with `type` or `rope_type`, or the newer
// rope_parameters). `source` names the file in errors.
absl::StatusOr<ModelConfig> ParseConfigJson(std::string_view text,
                                            std::string_view source = "config.json");
// Parses `--dca CHUNK,LOCAL` ("8192,1024"): two decimal integers, 0 <= LOCAL < CHUNK, CHUNK <=
// kMaxDim. original_max_position_embeddings is left 0. INVALID_ARGUMENT names the flag.
absl::StatusOr<DcaParams> ParseDcaFlag(std::string_view text);

// Serializes as transformers writes a Qwen2ForCausalLM config (torch_dtype float32, tied).
std::string ConfigToJson(const ModelConfig& config);

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_CONFIG_H_
