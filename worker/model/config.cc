#include "worker/model/config.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace qtrain::model {
namespace {

using Json = nlohmann::json;

absl::Status KeyError(const std::string& source, std::string_view key, std::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": key '", std::string(key), "': ", std::string(why)));
}

// Reads an integer key; `fallback` when absent (or null) unless required.
absl::StatusOr<int64_t> GetInt(const Json& obj, const std::string& source, const std::string& key,
                               std::optional<int64_t> fallback, const std::string& prefix = "") {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    if (fallback) return *fallback;
    return KeyError(source, prefix + key, "missing");
  }
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_number_float()) {
    const double v = it->get<double>();
    if (std::floor(v) == v && std::abs(v) < 9e15) return static_cast<int64_t>(v);
  }
  return KeyError(source, prefix + key, "expected an integer");
}

absl::StatusOr<double> GetNumber(const Json& obj, const std::string& source, const std::string& key,
                                 std::optional<double> fallback, const std::string& prefix = "") {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    if (fallback) return *fallback;
    return KeyError(source, prefix + key, "missing");
  }
  if (!it->is_number()) return KeyError(source, prefix + key, "expected a number");
  const double v = it->get<double>();
  if (!std::isfinite(v)) return KeyError(source, prefix + key, "not finite");
  return v;
}

absl::StatusOr<std::optional<double>> GetOptionalNumber(const Json& obj, const std::string& source,
                                                        const std::string& key,
                                                        const std::string& prefix) {
  if (!obj.contains(key) || obj[key].is_null()) return std::optional<double>();
  QTRAIN_ASSIGN_OR_RETURN(double v, GetNumber(obj, source, key, std::nullopt, prefix));
  return std::optional<double>(v);
}

absl::StatusOr<bool> GetBool(const Json& obj, const std::string& source, const std::string& key,
                             bool fallback, const std::string& prefix = "") {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) return KeyError(source, prefix + key, "expected true or false");
  return it->get<bool>();
}

// rope_scaling (older layout) or rope_parameters (newer layout, may carry rope_theta).
absl::Status ParseRope(const Json& root, const std::string& source, ModelConfig& config) {
  QTRAIN_ASSIGN_OR_RETURN(config.rope_theta, GetNumber(root, source, "rope_theta", 10000.0));
  const Json* rope = nullptr;
  std::string rope_key;
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    auto it = root.find(key);
    if (it == root.end() || it->is_null()) continue;
    if (!it->is_object()) return KeyError(source, key, "expected an object");
    rope = &*it;
    rope_key = key;
    break;
  }
  if (rope == nullptr) return absl::OkStatus();
  const std::string prefix = rope_key + ".";
  if (rope->contains("rope_theta")) {
    QTRAIN_ASSIGN_OR_RETURN(config.rope_theta,
                            GetNumber(*rope, source, "rope_theta", std::nullopt, prefix));
  }
  std::string type = "default";
  std::string type_key = "rope_type";
  for (const char* key : {"rope_type", "type"}) {
    auto it = rope->find(key);
    if (it == rope->end() || it->is_null()) continue;
    if (!it->is_string()) return KeyError(source, prefix + key, "expected a string");
    type = it->get<std::string>();
    type_key = key;
    break;
  }
  if (rope->contains("partial_rotary_factor")) {
    QTRAIN_ASSIGN_OR_RETURN(
        double f, GetNumber(*rope, source, "partial_rotary_factor", std::nullopt, prefix));
    if (f != 1.0) {
      return KeyError(source, prefix + "partial_rotary_factor", "only 1.0 is supported");
    }
  }
  if (type == "default") {
    config.rope_type = RopeType::kDefault;
    return absl::OkStatus();
  }
  if (type != "yarn") {
    return KeyError(source, prefix + type_key,
                    absl::StrCat("unsupported RoPE type '", type, "' (supported: default, yarn)"));
  }
  config.rope_type = RopeType::kYarn;
  YarnParams& y = config.yarn;
  QTRAIN_ASSIGN_OR_RETURN(y.factor, GetNumber(*rope, source, "factor", std::nullopt, prefix));
  if (!(y.factor > 0)) return KeyError(source, prefix + "factor", "must be positive");
  QTRAIN_ASSIGN_OR_RETURN(y.original_max_position_embeddings,
                          GetInt(*rope, source, "original_max_position_embeddings",
                                 config.max_position_embeddings, prefix));
  if (y.original_max_position_embeddings <= 0) {
    return KeyError(source, prefix + "original_max_position_embeddings", "must be positive");
  }
  // transformers treats 0 / null as "use the default" for the betas (`or 32`, `or 1`).
  QTRAIN_ASSIGN_OR_RETURN(y.beta_fast, GetNumber(*rope, source, "beta_fast", 32.0, prefix));
  QTRAIN_ASSIGN_OR_RETURN(y.beta_slow, GetNumber(*rope, source, "beta_slow", 1.0, prefix));
  if (y.beta_fast == 0) y.beta_fast = 32.0;
  if (y.beta_slow == 0) y.beta_slow = 1.0;
  QTRAIN_ASSIGN_OR_RETURN(y.attention_factor,
                          GetOptionalNumber(*rope, source, "attention_factor", prefix));
  QTRAIN_ASSIGN_OR_RETURN(y.mscale, GetOptionalNumber(*rope, source, "mscale", prefix));
  QTRAIN_ASSIGN_OR_RETURN(y.mscale_all_dim,
                          GetOptionalNumber(*rope, source, "mscale_all_dim", prefix));
  QTRAIN_ASSIGN_OR_RETURN(y.truncate, GetBool(*rope, source, "truncate", true, prefix));
  return absl::OkStatus();
}

absl::Status ParseTokenIds(const Json& root, const std::string& source, ModelConfig& config) {
  if (root.contains("bos_token_id") && !root["bos_token_id"].is_null()) {
    QTRAIN_ASSIGN_OR_RETURN(int64_t bos, GetInt(root, source, "bos_token_id", std::nullopt));
    config.bos_token_id = bos;
  }
  auto it = root.find("eos_token_id");
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  if (it->is_array()) {
    for (const Json& v : *it) {
      if (!v.is_number_integer()) return KeyError(source, "eos_token_id", "expected integers");
      config.eos_token_ids.push_back(v.get<int64_t>());
    }
    return absl::OkStatus();
  }
  QTRAIN_ASSIGN_OR_RETURN(int64_t eos, GetInt(root, source, "eos_token_id", std::nullopt));
  config.eos_token_ids.push_back(eos);
  return absl::OkStatus();
}

// Refuses features qtrain does not implement, naming the key.
absl::Status RefuseUnsupported(const Json& root, const std::string& source,
                               const ModelConfig& config) {
  if (root.contains("model_type") && root["model_type"] != "qwen2") {
    return KeyError(source, "model_type", "only 'qwen2' is supported");
  }
  if (root.contains("hidden_act") && root["hidden_act"] != "silu") {
    return KeyError(source, "hidden_act", "only 'silu' is supported");
  }
  // transformers' Qwen2Config defaults tie_word_embeddings to false when the key is absent.
  QTRAIN_ASSIGN_OR_RETURN(bool tied, GetBool(root, source, "tie_word_embeddings", false));
  if (!tied) {
    return KeyError(source, "tie_word_embeddings",
                    "untied embeddings are not supported (must be true; absent means false)");
  }
  QTRAIN_ASSIGN_OR_RETURN(bool sliding, GetBool(root, source, "use_sliding_window", false));
  if (sliding) {
    return KeyError(source, "use_sliding_window", "sliding-window attention is not supported");
  }
  if (auto it = root.find("layer_types"); it != root.end() && !it->is_null()) {
    if (!it->is_array()) return KeyError(source, "layer_types", "expected a list");
    for (const Json& t : *it) {
      if (t != "full_attention") {
        return KeyError(source, "layer_types", "only 'full_attention' layers are supported");
      }
    }
  }
  QTRAIN_ASSIGN_OR_RETURN(double dropout, GetNumber(root, source, "attention_dropout", 0.0));
  if (dropout != 0.0) return KeyError(source, "attention_dropout", "only 0.0 is supported");
  if (root.contains("dual_chunk_attention_config") &&
      !root["dual_chunk_attention_config"].is_null()) {
    return KeyError(source, "dual_chunk_attention_config", "not supported");
  }
  (void)config;
  return absl::OkStatus();
}

Json RopeJson(const ModelConfig& config) {
  const YarnParams& y = config.yarn;
  Json rope = {{"rope_type", "yarn"},
               {"factor", y.factor},
               {"original_max_position_embeddings", y.original_max_position_embeddings},
               {"beta_fast", y.beta_fast},
               {"beta_slow", y.beta_slow},
               {"truncate", y.truncate}};
  if (y.attention_factor) rope["attention_factor"] = *y.attention_factor;
  if (y.mscale) rope["mscale"] = *y.mscale;
  if (y.mscale_all_dim) rope["mscale_all_dim"] = *y.mscale_all_dim;
  return rope;
}

}  // namespace

int64_t ModelConfig::NumParameters() const {
  const int64_t d = hidden_size;
  const int64_t norms = 2 * d;
  const int64_t attention = (q_dim() * d + q_dim()) + 2 * (kv_dim() * d + kv_dim()) + d * q_dim();
  const int64_t mlp = 3 * d * intermediate_size;
  const int64_t per_layer = norms + attention + mlp;
  return vocab_size * d + num_layers * per_layer + d;
}

absl::Status ValidateConfig(const ModelConfig& c) {
  auto bad = [](const std::string& field, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("model config: ", field, ": ", why));
  };
  constexpr int64_t kMaxDim = int64_t{1} << 24;
  const std::pair<const char*, int64_t> sizes[] = {{"vocab_size", c.vocab_size},
                                                   {"hidden_size", c.hidden_size},
                                                   {"intermediate_size", c.intermediate_size},
                                                   {"num_hidden_layers", c.num_layers},
                                                   {"num_attention_heads", c.num_heads},
                                                   {"num_key_value_heads", c.num_kv_heads},
                                                   {"head_dim", c.head_dim}};
  for (const auto& [name, value] : sizes) {
    if (value <= 0 || value > kMaxDim) {
      return bad(name, absl::StrCat("must be in [1, ", kMaxDim, "], got ", value));
    }
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return bad("num_key_value_heads", "must divide num_attention_heads");
  }
  if (c.head_dim % 2 != 0) return bad("head_dim", "must be even (RoPE rotates pairs)");
  if (!(c.rms_norm_eps > 0)) return bad("rms_norm_eps", "must be positive");
  if (!(c.rope_theta > 1)) return bad("rope_theta", "must be greater than 1");
  if (c.max_position_embeddings <= 0) return bad("max_position_embeddings", "must be positive");
  if (c.rope_type == RopeType::kYarn) {
    if (!(c.yarn.factor > 0)) return bad("rope_scaling.factor", "must be positive");
    if (c.yarn.original_max_position_embeddings <= 0) {
      return bad("rope_scaling.original_max_position_embeddings", "must be positive");
    }
  }
  // The parameter count must fit comfortably in int64 and in memory-sized indexing.
  if (c.NumParameters() <= 0 || c.NumParameters() > (int64_t{1} << 40)) {
    return bad("sizes", "parameter count out of range");
  }
  return absl::OkStatus();
}

std::vector<std::string> PresetNames() { return {"qwen2-0.5b", "qwen2-tiny", "qwen2-test"}; }

absl::StatusOr<ModelConfig> PresetConfig(std::string_view name) {
  ModelConfig c;
  if (name == "qwen2-0.5b") {
    c.vocab_size = 151936;
    c.hidden_size = 896;
    c.intermediate_size = 4864;
    c.num_layers = 24;
    c.num_heads = 14;
    c.num_kv_heads = 2;
    c.rope_theta = 1000000.0;
    c.max_position_embeddings = 32768;
    c.bos_token_id = 151643;
    c.eos_token_ids = {151643};
  } else if (name == "qwen2-tiny") {
    c.vocab_size = 4096;
    c.hidden_size = 64;
    c.intermediate_size = 176;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.rope_theta = 1000000.0;
    c.max_position_embeddings = 32768;
  } else if (name == "qwen2-test") {
    c.vocab_size = 32;
    c.hidden_size = 16;
    c.intermediate_size = 24;
    c.num_layers = 2;
    c.num_heads = 4;
    c.num_kv_heads = 2;
    c.rope_theta = 10000.0;
    c.max_position_embeddings = 256;
  } else {
    return absl::NotFoundError(absl::StrCat("unknown model preset '", std::string(name),
                                            "' (known: ", absl::StrJoin(PresetNames(), ", "), ")"));
  }
  c.head_dim = c.hidden_size / c.num_heads;
  c.rms_norm_eps = 1e-6;
  QTRAIN_RETURN_IF_ERROR(ValidateConfig(c));
  return c;
}

absl::StatusOr<ModelConfig> ParseConfigJson(std::string_view text, std::string_view source_view) {
  const std::string source(source_view);
  const Json root = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return absl::InvalidArgumentError(absl::StrCat(source, ": not JSON"));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": expected a JSON object"));
  }
  ModelConfig c;
  QTRAIN_ASSIGN_OR_RETURN(c.vocab_size, GetInt(root, source, "vocab_size", std::nullopt));
  QTRAIN_ASSIGN_OR_RETURN(c.hidden_size, GetInt(root, source, "hidden_size", std::nullopt));
  QTRAIN_ASSIGN_OR_RETURN(c.intermediate_size,
                          GetInt(root, source, "intermediate_size", std::nullopt));
  QTRAIN_ASSIGN_OR_RETURN(c.num_layers, GetInt(root, source, "num_hidden_layers", std::nullopt));
  QTRAIN_ASSIGN_OR_RETURN(c.num_heads, GetInt(root, source, "num_attention_heads", std::nullopt));
  QTRAIN_ASSIGN_OR_RETURN(c.num_kv_heads, GetInt(root, source, "num_key_value_heads", c.num_heads));
  if (c.num_heads <= 0) return KeyError(source, "num_attention_heads", "must be positive");
  QTRAIN_ASSIGN_OR_RETURN(c.head_dim,
                          GetInt(root, source, "head_dim", c.hidden_size / c.num_heads));
  QTRAIN_ASSIGN_OR_RETURN(c.rms_norm_eps, GetNumber(root, source, "rms_norm_eps", 1e-6));
  QTRAIN_ASSIGN_OR_RETURN(c.max_position_embeddings,
                          GetInt(root, source, "max_position_embeddings", 32768));
  QTRAIN_ASSIGN_OR_RETURN(c.initializer_range, GetNumber(root, source, "initializer_range", 0.02));
  QTRAIN_RETURN_IF_ERROR(ParseRope(root, source, c));
  QTRAIN_RETURN_IF_ERROR(ParseTokenIds(root, source, c));
  QTRAIN_RETURN_IF_ERROR(RefuseUnsupported(root, source, c));
  QTRAIN_RETURN_IF_ERROR(Annotate(ValidateConfig(c), source));
  return c;
}

std::string ConfigToJson(const ModelConfig& c) {
  Json root = {{"architectures", Json::array({"Qwen2ForCausalLM"})},
               {"model_type", "qwen2"},
               {"attention_dropout", 0.0},
               {"hidden_act", "silu"},
               {"hidden_size", c.hidden_size},
               {"initializer_range", c.initializer_range},
               {"intermediate_size", c.intermediate_size},
               {"max_position_embeddings", c.max_position_embeddings},
               {"max_window_layers", c.num_layers},
               {"num_attention_heads", c.num_heads},
               {"num_hidden_layers", c.num_layers},
               {"num_key_value_heads", c.num_kv_heads},
               {"rms_norm_eps", c.rms_norm_eps},
               {"rope_theta", c.rope_theta},
               {"sliding_window", nullptr},
               {"tie_word_embeddings", true},
               {"torch_dtype", "float32"},
               {"use_cache", true},
               {"use_sliding_window", false},
               {"vocab_size", c.vocab_size}};
  if (c.head_dim * c.num_heads != c.hidden_size) root["head_dim"] = c.head_dim;
  root["rope_scaling"] = c.rope_type == RopeType::kYarn ? RopeJson(c) : Json(nullptr);
  root["bos_token_id"] = c.bos_token_id ? Json(*c.bos_token_id) : Json(nullptr);
  if (c.eos_token_ids.empty()) {
    root["eos_token_id"] = nullptr;
  } else if (c.eos_token_ids.size() == 1) {
    root["eos_token_id"] = c.eos_token_ids[0];
  } else {
    root["eos_token_id"] = c.eos_token_ids;
  }
  return root.dump(2) + "\n";
}

}  // namespace qtrain::model
