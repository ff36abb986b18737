#include "worker/model/config.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/checked_math.h"
#include "common/status_macros.h"
#include "common/text_position.h"
#include "nlohmann/json.hpp"

namespace qtrain::model {
namespace {

using Json = nlohmann::json;

absl::Status KeyError(const std::string& source, std::string_view key, std::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": key '", std::string(key), "': ", std::string(why)));
}

// A JSON number as int64: nullopt with the reason when it is not an integer or out of range
// (a large unsigned value would otherwise wrap to a negative one).
std::optional<int64_t> JsonInt64(const Json& v, std::string* why) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      *why = absl::StrCat("value ", u, " is out of range (at most ",
                          std::numeric_limits<int64_t>::max(), ")");
      return std::nullopt;
    }
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && std::floor(d) == d) {
      if (std::abs(d) < 9e15) return static_cast<int64_t>(d);
      *why = absl::StrCat("value ", d, " is out of range for an integer written as a float");
      return std::nullopt;
    }
  }
  *why = absl::StrCat("expected an integer, got ", v.dump());
  return std::nullopt;
}

// Reads an integer key; `fallback` when absent (or null) unless required.
absl::StatusOr<int64_t> GetInt(const Json& obj, const std::string& source, const std::string& key,
                               std::optional<int64_t> fallback, const std::string& prefix = "") {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    if (fallback) return *fallback;
    return KeyError(source, prefix + key, "missing");
  }
  std::string why;
  if (const std::optional<int64_t> v = JsonInt64(*it, &why)) return *v;
  return KeyError(source, prefix + key, why);
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
  // JSON has no infinities: an infinite value is a number too large for a double.
  if (!std::isfinite(v)) {
    return KeyError(source, prefix + key,
                    absl::StrCat("out of range: larger than the largest double, ",
                                 std::numeric_limits<double>::max()));
  }
  if (std::fpclassify(v) == FP_SUBNORMAL) {
    return KeyError(
        source, prefix + key,
        absl::StrCat("value ", v, " is subnormal (nonzero but below ",
                     std::numeric_limits<double>::min(), ", the smallest normal double)"));
  }
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

// dual_chunk_attention_config {chunk_size, local_size, original_max_position_embeddings}.
absl::Status ParseDca(const Json& root, const std::string& source, ModelConfig& config) {
  constexpr const char* kKey = "dual_chunk_attention_config";
  auto it = root.find(kKey);
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_object()) return KeyError(source, kKey, "expected an object");
  const std::string prefix = std::string(kKey) + ".";
  DcaParams& dca = config.dca;
  QTRAIN_ASSIGN_OR_RETURN(dca.chunk_size, GetInt(*it, source, "chunk_size", std::nullopt, prefix));
  if (dca.chunk_size <= 0) {
    return KeyError(source, prefix + "chunk_size",
                    absl::StrCat("must be in [1, ", kMaxDim, "], got ", dca.chunk_size));
  }
  QTRAIN_ASSIGN_OR_RETURN(dca.local_size, GetInt(*it, source, "local_size", 0, prefix));
  QTRAIN_ASSIGN_OR_RETURN(dca.original_max_position_embeddings,
                          GetInt(*it, source, "original_max_position_embeddings", 0, prefix));
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
      std::string why;
      const std::optional<int64_t> id = JsonInt64(v, &why);
      if (!id) return KeyError(source, "eos_token_id", why);
      config.eos_token_ids.push_back(*id);
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

// The key whose value starts before `offset`, for messages ("" when none is found).
std::string KeyBefore(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  const size_t colon = text.rfind(':', offset == 0 ? 0 : offset - 1);
  if (colon == std::string_view::npos) return "";
  const size_t close = text.rfind('"', colon);
  if (close == std::string_view::npos || close == 0) return "";
  const size_t open = text.rfind('"', close - 1);
  if (open == std::string_view::npos) return "";
  return std::string(text.substr(open + 1, close - open - 1));
}

// Parses config.json text; errors name the line, column and key, and nesting deeper than
// kMaxJsonDepth is refused (a deep tree would also be destroyed recursively).
absl::StatusOr<Json> ParseJsonText(std::string_view text, const std::string& source) {
  constexpr int kMaxJsonDepth = 64;
  bool too_deep = false;
  const Json::parser_callback_t limit_depth = [&](int depth, Json::parse_event_t, Json&) {
    if (depth > kMaxJsonDepth) too_deep = true;
    return !too_deep;
  };
  Json root;
  try {
    root = Json::parse(text.begin(), text.end(), limit_depth);
  } catch (const Json::parse_error& e) {
    const size_t at = e.byte > 0 ? e.byte - 1 : 0;
    std::string what = e.what();
    if (const size_t colon = what.find(": "); colon != std::string::npos) {
      what = what.substr(colon + 2);  // drop "[json.exception...] parse error at line 1, ..."
    }
    const std::string key = KeyBefore(text, at);
    std::string hint;
    const std::string_view rest = text.substr(std::min(at, text.size()));
    for (std::string_view word : {"NaN", "Infinity", "-Infinity", "inf", "nan"}) {
      if (rest.substr(0, word.size()) == word ||
          (at > 0 && text.substr(at - 1, word.size()) == word)) {
        hint = " (NaN and Infinity are not JSON numbers)";
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat(source, ":", LineColumn(text, at), ": not JSON",
                     key.empty() ? "" : " in the value of '" + key + "'", hint, ": ", what));
  } catch (const Json::out_of_range& e) {
    // "number overflow parsing '1e999'": a number too large for a double.
    std::string what = e.what();
    std::string where = source;
    const size_t open = what.find('\'');
    const size_t close = what.rfind('\'');
    if (open != std::string::npos && close > open) {
      const size_t at = text.find(what.substr(open + 1, close - open - 1));
      if (at != std::string_view::npos) {
        absl::StrAppend(&where, ":", LineColumn(text, at));
        if (const std::string key = KeyBefore(text, at); !key.empty()) {
          absl::StrAppend(&where, ": key '", key, "'");
        }
      }
    }
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": out of range: ", what.substr(what.find(']') + 2),
        " (larger than the largest double, ", std::numeric_limits<double>::max(), ")"));
  }
  if (too_deep) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": nested deeper than ", kMaxJsonDepth, " levels"));
  }
  return root;
}

}  // namespace

std::optional<int64_t> ModelConfig::CheckedNumParameters() const {
  const int64_t d = hidden_size;
  const std::optional<int64_t> q = CheckedMul(num_heads, head_dim);
  const std::optional<int64_t> kv = CheckedMul(num_kv_heads, head_dim);
  if (!q || !kv) return std::nullopt;
  const std::optional<int64_t> q_proj = CheckedProduct({*q, d});
  const std::optional<int64_t> kv_proj = CheckedProduct({2, *kv, d});
  const std::optional<int64_t> o_proj = CheckedProduct({d, *q});
  const std::optional<int64_t> mlp = CheckedProduct({3, d, intermediate_size});
  const std::optional<int64_t> norms = CheckedMul(2, d);
  const std::optional<int64_t> kv_bias = CheckedMul(2, *kv);
  if (!q_proj || !kv_proj || !o_proj || !mlp || !norms || !kv_bias) return std::nullopt;
  const std::optional<int64_t> per_layer =
      CheckedSum({*norms, *q_proj, *q, *kv_proj, *kv_bias, *o_proj, *mlp});
  if (!per_layer) return std::nullopt;
  const std::optional<int64_t> layers = CheckedMul(num_layers, *per_layer);
  const std::optional<int64_t> embed = CheckedMul(vocab_size, d);
  if (!layers || !embed) return std::nullopt;
  return CheckedSum({*embed, *layers, d});
}

std::vector<ConfigProblem> FindConfigProblems(const ModelConfig& c) {
  std::vector<ConfigProblem> problems;
  auto add = [&](std::string key, std::string why) {
    problems.push_back({std::move(key), std::move(why)});
  };
  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_layers},
      {"num_attention_heads", c.num_heads},
      {"num_key_value_heads", c.num_kv_heads},
      {"head_dim", c.head_dim},
      {"max_position_embeddings", c.max_position_embeddings}};
  bool sizes_ok = true;
  for (const auto& [name, value] : sizes) {
    if (value <= 0 || value > kMaxDim) {
      add(name, absl::StrCat("must be in [1, ", kMaxDim, "], got ", value));
      sizes_ok = false;
    }
  }
  if (sizes_ok) {
    if (c.num_heads % c.num_kv_heads != 0) {
      add("num_key_value_heads", "must divide num_attention_heads");
    }
    if (c.head_dim % 2 != 0) add("head_dim", "must be even (RoPE rotates pairs)");
    if (c.num_heads * c.head_dim > kMaxDim) {
      add("num_attention_heads",
          absl::StrCat("num_attention_heads x head_dim = ", c.num_heads * c.head_dim,
                       " is larger than the limit of ", kMaxDim));
    }
  }
  if (!(c.rms_norm_eps > 0 && c.rms_norm_eps < 1)) {
    add("rms_norm_eps", absl::StrCat("must be in (0, 1), got ", c.rms_norm_eps));
  }
  if (!(c.rope_theta > 1 && c.rope_theta <= kMaxRopeTheta)) {
    add("rope_theta", absl::StrCat("must be in (1, ", kMaxRopeTheta, "], got ", c.rope_theta));
  }
  if (!std::isfinite(c.initializer_range) || c.initializer_range < 0) {
    add("initializer_range", "must be finite and >= 0");
  }
  if (c.rope_type == RopeType::kYarn) {
    if (!(c.yarn.factor >= 1 && c.yarn.factor <= kMaxYarnFactor)) {
      add("rope_scaling.factor",
          absl::StrCat("must be in [1, ", kMaxYarnFactor, "], got ", c.yarn.factor));
    }
    if (c.yarn.original_max_position_embeddings <= 0 ||
        c.yarn.original_max_position_embeddings > kMaxDim) {
      add("rope_scaling.original_max_position_embeddings",
          absl::StrCat("must be in [1, ", kMaxDim, "], got ",
                       c.yarn.original_max_position_embeddings));
    }
  }
  const DcaParams& dca = c.dca;
  if (dca.chunk_size != 0 || dca.local_size != 0 || dca.original_max_position_embeddings != 0) {
    if (dca.chunk_size <= 0 || dca.chunk_size > kMaxDim) {
      add("dual_chunk_attention_config.chunk_size",
          absl::StrCat("must be in [1, ", kMaxDim, "], got ", dca.chunk_size));
    } else if (dca.local_size < 0 || dca.local_size >= dca.chunk_size) {
      add("dual_chunk_attention_config.local_size",
          absl::StrCat("must be in [0, chunk_size ", dca.chunk_size, "), got ", dca.local_size));
    }
    if (dca.original_max_position_embeddings < 0 ||
        dca.original_max_position_embeddings > kMaxDim) {
      add("dual_chunk_attention_config.original_max_position_embeddings",
          absl::StrCat("must be in [0, ", kMaxDim, "] (0: no scaling), got ",
                       dca.original_max_position_embeddings));
    }
  }
  if (sizes_ok) {
    const std::optional<int64_t> count = c.CheckedNumParameters();
    if (!count || *count > kMaxParameters) {
      add("",
          absl::StrCat("the parameter count ", count ? absl::StrCat(*count) : "(overflows int64)",
                       " is larger than the limit of ", kMaxParameters));
    }
  }
  return problems;
}

absl::Status ValidateConfig(const ModelConfig& c) {
  const std::vector<ConfigProblem> problems = FindConfigProblems(c);
  if (problems.empty()) return absl::OkStatus();
  std::vector<std::string> lines;
  for (const ConfigProblem& p : problems) {
    lines.push_back(p.key.empty() ? absl::StrCat("model config: ", p.message)
                                  : absl::StrCat("model config: ", p.key, ": ", p.message));
  }
  return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
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
  QTRAIN_ASSIGN_OR_RETURN(const Json root, ParseJsonText(text, source));
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
  QTRAIN_RETURN_IF_ERROR(ParseDca(root, source, c));
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
  if (c.dca.enabled()) {
    root["dual_chunk_attention_config"] = {
        {"chunk_size", c.dca.chunk_size},
        {"local_size", c.dca.local_size},
        {"original_max_position_embeddings", c.dca.original_max_position_embeddings}};
  }
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

absl::StatusOr<DcaParams> ParseDcaFlag(std::string_view text_view) {
  const std::string text(text_view);
  const auto invalid = [&text](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat("--dca \"", text, "\": ", why));
  };
  const std::vector<std::string> parts = absl::StrSplit(text, ',');
  if (parts.size() != 2) return invalid("expected CHUNK,LOCAL (e.g. 8192,1024)");
  int64_t values[2];
  for (int i = 0; i < 2; ++i) {
    const std::string& part = parts[i];
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(),
                                                     [](char c) { return c >= '0' && c <= '9'; });
    if (!digits || !absl::SimpleAtoi(part, &values[i])) {
      return invalid(absl::StrCat(i == 0 ? "CHUNK" : "LOCAL", " \"", part,
                                  "\" is not a non-negative decimal integer"));
    }
  }
  DcaParams dca{.chunk_size = values[0], .local_size = values[1]};
  if (dca.chunk_size < 1 || dca.chunk_size > kMaxDim) {
    return invalid(absl::StrCat("CHUNK must be in [1, ", kMaxDim, "]"));
  }
  if (dca.local_size >= dca.chunk_size) return invalid("LOCAL must be smaller than CHUNK");
  return dca;
}

}  // namespace qtrain::model
