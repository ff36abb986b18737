#include "worker/model/model_source.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "worker/model/checkpoint_io.h"

namespace qtrain::model {
namespace {

// The job spec and the model share their size bounds.
static_assert(kMaxModelDim == kMaxDim);
static_assert(qtrain::kMaxRopeTheta == model::kMaxRopeTheta);
static_assert(qtrain::kMaxYarnFactor == model::kMaxYarnFactor);

// Puts `path: ` before every line of the status's message.
absl::Status UnderPath(const absl::Status& status, const std::string& path) {
  std::vector<std::string> lines;
  for (absl::string_view line : absl::StrSplit(status.message(), '\n')) {
    lines.push_back(absl::StrCat(path, ": ", line));
  }
  return absl::Status(status.code(), absl::StrJoin(lines, "\n"));
}

// The spec path of a config.json key, for an explicit model.config.
std::string SpecPath(const std::string& key) {
  if (key.empty()) return "model.config";
  // The head size is hidden_size / num_attention_heads, not a field of its own.
  if (key == "head_dim") return "model.config.num_attention_heads";
  return absl::StrCat("model.config.", key);
}

absl::StatusOr<ModelConfig> FromExplicitConfig(const v1::ModelConfig& c) {
  ModelConfig config;
  config.vocab_size = c.vocab_size();
  config.hidden_size = c.hidden_size();
  config.intermediate_size = c.intermediate_size();
  config.num_layers = c.num_hidden_layers();
  config.num_heads = c.num_attention_heads();
  config.num_kv_heads = c.num_key_value_heads();
  config.max_position_embeddings = c.max_position_embeddings();
  config.head_dim = c.num_attention_heads() > 0 ? c.hidden_size() / c.num_attention_heads() : 0;
  // 0 keeps the documented defaults (1e6, 1e-6); anything else is checked as given.
  if (c.rope_theta() != 0) config.rope_theta = c.rope_theta();
  if (c.rms_norm_eps() != 0) config.rms_norm_eps = c.rms_norm_eps();
  const std::vector<ConfigProblem> problems = FindConfigProblems(config);
  if (problems.empty()) return config;
  std::vector<std::string> lines;
  for (const ConfigProblem& p : problems) {
    lines.push_back(absl::StrCat(SpecPath(p.key), ": ", p.message));
  }
  return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
}

}  // namespace

absl::StatusOr<ModelConfig> ResolveModelConfig(const v1::ModelSpec& spec) {
  switch (spec.source_case()) {
    case v1::ModelSpec::kPreset: {
      absl::StatusOr<ModelConfig> config = PresetConfig(spec.preset());
      if (!config.ok()) return UnderPath(config.status(), "model.preset");
      return config;
    }
    case v1::ModelSpec::kInitFrom: {
      absl::StatusOr<ModelConfig> config = LoadConfig(spec.init_from());
      if (!config.ok()) return UnderPath(config.status(), "model.init_from");
      return config;
    }
    case v1::ModelSpec::kConfig:
      return FromExplicitConfig(spec.config());
    case v1::ModelSpec::SOURCE_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("model: required: set one of preset, config, init_from");
}

ModelLimits LimitsOf(const ModelConfig& config) {
  return ModelLimits{.max_position_embeddings = config.max_position_embeddings,
                     .vocab_size = config.vocab_size,
                     .hidden_size = config.hidden_size,
                     .intermediate_size = config.intermediate_size,
                     .num_layers = config.num_layers,
                     .num_heads = config.num_heads};
}

JobSpecOptions ModelAwareJobSpecOptions() {
  JobSpecOptions options;
  options.resolve_model = [](const v1::ModelSpec& spec) -> absl::StatusOr<ModelLimits> {
    absl::StatusOr<ModelConfig> config = ResolveModelConfig(spec);
    if (!config.ok()) return config.status();
    return LimitsOf(*config);
  };
  return options;
}

}  // namespace qtrain::model
