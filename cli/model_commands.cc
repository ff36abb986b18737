// score, generate, init: local model tools on CPU (worker/model/).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cli/command.h"
#include "cli/flag_checks.h"
#include "cli/json_lines.h"
#include "cli/model_loading.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tokenizer/tokenizer.h"
#include "worker/model/checkpoint_io.h"
#include "worker/model/config.h"
#include "worker/model/init.h"
#include "worker/model/model.h"
#include "worker/model/sampler.h"

namespace qtrain::cli {
namespace {

using Json = nlohmann::json;
using model::Model;

struct ScoreFlags {
  std::string model_dir;
  std::string tokenizer_path;
  std::string dca;  // --dca CHUNK,LOCAL; empty: config.json's
  bool output_logits = false;
  bool allow_nonfinite_weights = false;
};

struct GenerateFlags {
  std::string model_dir;
  std::string tokenizer_path;
  std::string prompt;
  std::string prompt_ids;
  std::string dca;            // --dca CHUNK,LOCAL; empty: config.json's
  bool prompt_given = false;  // set after parsing: "" is given, and empty
  bool prompt_ids_given = false;
  int64_t max_new_tokens = 64;
  double temperature = 0.0;
  double top_p = 1.0;
  std::string seed = "0";  // text: CLI11 would wrap "-1" to 2^64 - 1
  bool json = false;
  bool allow_nonfinite_weights = false;
};

// The overrides are kept as text until RunInit checks them, so that a flag not given differs
// from one given as 0, and bad values are refused naming the flag instead of falling back.
struct InitFlags {
  std::string preset;
  std::string out_dir;
  std::string seed = "0";  // text: CLI11 would wrap "-1" to 2^64 - 1
  bool force = false;
  std::optional<std::string> vocab_size;
  std::optional<std::string> rope_theta;
  std::optional<std::string> yarn_factor;
  std::optional<std::string> yarn_original_max_position_embeddings;
};

// --seed as an unsigned 64-bit integer ("-1" is refused, not wrapped).
absl::StatusOr<uint64_t> SeedFlag(const std::string& text) {
  uint64_t seed = 0;
  if (!absl::SimpleAtoi(text, &seed) || absl::StrContains(text, '-')) {
    return absl::InvalidArgumentError(
        absl::StrCat("--seed: '", text, "' is not an integer in [0, ", UINT64_MAX, "]"));
  }
  return seed;
}

// Encodes and decodes text when a tokenizer was given; ids work without one.
class TextCodec {
 public:
  static absl::StatusOr<TextCodec> Load(const std::string& path) {
    TextCodec codec;
    if (path.empty()) return codec;
    QTRAIN_ASSIGN_OR_RETURN(auto tok, tokenizer::Tokenizer::FromFile(path));
    codec.tokenizer_.emplace(std::move(tok));
    return codec;
  }

  absl::StatusOr<std::vector<int32_t>> Encode(const std::string& text) const {
    if (tokenizer_) {
      QTRAIN_ASSIGN_OR_RETURN(std::vector<uint32_t> ids, tokenizer_->Encode(text));
      return std::vector<int32_t>(ids.begin(), ids.end());
    }
    return absl::InvalidArgumentError("text input needs --tokenizer");
  }

  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const {
    if (tokenizer_) {
      std::vector<uint32_t> u(ids.begin(), ids.end());
      return tokenizer_->Decode(u);
    }
    return absl::InvalidArgumentError("decoding text needs --tokenizer");
  }

  bool has_tokenizer() const { return tokenizer_.has_value(); }

 private:
  std::optional<tokenizer::Tokenizer> tokenizer_;
};

// --dca CHUNK,LOCAL overrides config.json's chunk and local sizes and keeps its
// original_max_position_embeddings.
absl::StatusOr<Model> LoadModel(const std::string& dir, bool allow_nonfinite_weights,
                                const std::string& dca_flag = "") {
  LoadModelOptions options{.allow_nonfinite_weights = allow_nonfinite_weights};
  if (!dca_flag.empty()) {
    QTRAIN_ASSIGN_OR_RETURN(options.dca, model::ParseDcaFlag(dca_flag));
  }
  return LoadInferenceModel(dir, options);
}

absl::Status CheckIds(const std::vector<int32_t>& ids, int64_t vocab_size) {
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", id, " is outside the model's vocabulary [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

// One input line: {"text": "..."} or {"ids": [...]}.
absl::StatusOr<std::vector<int32_t>> ParseScoreLine(const std::string& line, const TextCodec& codec,
                                                    int64_t line_number) {
  QTRAIN_ASSIGN_OR_RETURN(const Json j, ParseJsonObjectLine(line, line_number));
  const std::string where = absl::StrCat("stdin line ", line_number);
  if (auto it = j.find("ids"); it != j.end()) {
    std::vector<int32_t> ids;
    if (!it->is_array()) return absl::InvalidArgumentError(where + ": 'ids' must be a list");
    for (const Json& v : *it) {
      if (!v.is_number_integer()) {
        return absl::InvalidArgumentError(where + ": 'ids' must hold integers");
      }
      const int64_t id = v.get<int64_t>();
      if (id < 0 || id > INT32_MAX) return absl::InvalidArgumentError(where + ": id out of range");
      ids.push_back(static_cast<int32_t>(id));
    }
    return ids;
  }
  auto it = j.find("text");
  if (it == j.end() || !it->is_string()) {
    return absl::InvalidArgumentError(where + ": expected a string 'text' (or a list 'ids')");
  }
  auto ids = codec.Encode(it->get<std::string>());
  if (!ids.ok()) return Annotate(ids.status(), where);
  return ids;
}

absl::Status RunScore(const ScoreFlags& flags) {
  QTRAIN_ASSIGN_OR_RETURN(TextCodec codec, TextCodec::Load(flags.tokenizer_path));
  QTRAIN_ASSIGN_OR_RETURN(Model m,
                          LoadModel(flags.model_dir, flags.allow_nonfinite_weights, flags.dca));
  const auto score_line = [&](const std::string& line,
                              uint64_t line_number) -> absl::StatusOr<std::string> {
    QTRAIN_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                            ParseScoreLine(line, codec, static_cast<int64_t>(line_number)));
    QTRAIN_RETURN_IF_ERROR(CheckIds(ids, m.config().vocab_size));
    const int64_t n = static_cast<int64_t>(ids.size());
    Json out = {{"logprobs", Json::array()}, {"sum", 0.0}, {"tokens", n}};
    if (n >= 2) {
      std::vector<int32_t> targets(ids.begin() + 1, ids.end());
      targets.push_back(model::kIgnoreIndex);
      model::Batch batch{.batch_size = 1, .seq_len = n, .ids = ids, .targets = targets};
      std::vector<float> logprobs, logits;
      QTRAIN_RETURN_IF_ERROR(m.Forward(batch, {.logits = flags.output_logits ? &logits : nullptr,
                                               .target_logprobs = &logprobs})
                                 .status());
      if (flags.output_logits) {
        const int64_t vocab = m.config().vocab_size;
        // As JSON the logits take several times their binary size.
        QTRAIN_RETURN_IF_ERROR(model::CatchAllocationFailure(
            absl::StrCat("the logits of stdin line ", line_number, " as JSON"), std::nullopt, [&] {
              Json rows = Json::array();
              for (int64_t i = 0; i < n; ++i) {
                rows.push_back(std::vector<float>(logits.begin() + i * vocab,
                                                  logits.begin() + (i + 1) * vocab));
              }
              out["logits"] = std::move(rows);
              return absl::OkStatus();
            }));
      }
      double sum = 0;
      for (int64_t i = 0; i + 1 < n; ++i) {
        out["logprobs"].push_back(static_cast<double>(logprobs[i]));
        sum += logprobs[i];
      }
      out["sum"] = sum;
    }
    return out.dump();
  };
  return ForEachStdinLine(score_line, {.skip_blank_lines = false, .flush_each_line = true});
}

absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view piece : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--prompt-ids: '", std::string(piece), "' is not an integer"));
    }
    ids.push_back(id);
  }
  return ids;
}

// --max-new-tokens capped so that prompt and continuation fit in the model's context (with a
// note on stderr); a prompt longer than the context is refused.
absl::StatusOr<int64_t> NewTokensWithinContext(const model::ModelConfig& config, size_t prompt_size,
                                               int64_t max_new_tokens) {
  const int64_t context = model::ContextLength(config);
  const auto prompt_tokens = static_cast<int64_t>(prompt_size);
  std::string limit = absl::StrCat("max_position_embeddings ", config.max_position_embeddings);
  if (config.rope_type == model::RopeType::kYarn) {
    absl::StrAppend(&limit, ", YaRN factor ", config.yarn.factor);
  }
  if (prompt_tokens > context) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", prompt_tokens,
                                                   " tokens, more than the model's context of ",
                                                   context, " positions (", limit, ")"));
  }
  const int64_t room = context - prompt_tokens;
  if (max_new_tokens <= room) return max_new_tokens;
  std::cerr << "generate: --max-new-tokens " << max_new_tokens << " capped at " << room
            << ": the prompt's " << prompt_tokens << " tokens and the continuation fit in the "
            << "model's context of " << context << " positions (" << limit << ")\n";
  return room;
}

absl::Status RunGenerate(const GenerateFlags& flags) {
  QTRAIN_ASSIGN_OR_RETURN(const uint64_t seed, SeedFlag(flags.seed));
  const model::SamplerOptions sampling{flags.temperature, flags.top_p, seed};
  QTRAIN_RETURN_IF_ERROR(model::ValidateSamplerOptions(sampling));
  if (flags.max_new_tokens < 0) return absl::InvalidArgumentError("--max-new-tokens must be >= 0");
  // An option given as "" is given: say that it is empty rather than that it is missing.
  if (flags.prompt_given && flags.prompt_ids_given) {
    return absl::InvalidArgumentError("pass exactly one of --prompt and --prompt-ids, not both");
  }
  if (!flags.prompt_given && !flags.prompt_ids_given) {
    return absl::InvalidArgumentError("pass exactly one of --prompt and --prompt-ids");
  }
  if (flags.prompt_given && flags.prompt.empty()) {
    return absl::InvalidArgumentError("--prompt is empty: give the text to continue");
  }
  if (flags.prompt_ids_given && flags.prompt_ids.find_first_not_of(" \t,") == std::string::npos) {
    return absl::InvalidArgumentError("--prompt-ids is empty: give comma-separated token ids");
  }
  QTRAIN_ASSIGN_OR_RETURN(TextCodec codec, TextCodec::Load(flags.tokenizer_path));
  QTRAIN_ASSIGN_OR_RETURN(Model m,
                          LoadModel(flags.model_dir, flags.allow_nonfinite_weights, flags.dca));
  std::vector<int32_t> prompt;
  if (flags.prompt_ids_given) {
    QTRAIN_ASSIGN_OR_RETURN(prompt, ParseIdList(flags.prompt_ids));
  } else {
    QTRAIN_ASSIGN_OR_RETURN(prompt, codec.Encode(flags.prompt));
  }
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens");
  QTRAIN_RETURN_IF_ERROR(CheckIds(prompt, m.config().vocab_size));
  QTRAIN_ASSIGN_OR_RETURN(const int64_t max_new_tokens,
                          NewTokensWithinContext(m.config(), prompt.size(), flags.max_new_tokens));

  // The cache grows with the tokens, up to the prompt plus the new tokens.
  QTRAIN_ASSIGN_OR_RETURN(
      model::KvCache cache,
      model::KvCache::Create(m, static_cast<int64_t>(prompt.size()) + max_new_tokens));
  model::Sampler sampler(sampling);
  std::vector<float> logits(m.config().vocab_size);
  std::vector<int32_t> generated;
  QTRAIN_RETURN_IF_ERROR(m.Decode(prompt, cache, logits));
  const std::vector<int64_t>& eos = m.config().eos_token_ids;
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    const int32_t next = static_cast<int32_t>(sampler.Next(logits));
    generated.push_back(next);
    if (std::find(eos.begin(), eos.end(), next) != eos.end()) break;
    if (step + 1 < max_new_tokens) {
      QTRAIN_RETURN_IF_ERROR(m.Decode(std::span<const int32_t>(&next, 1), cache, logits));
    }
  }
  std::string text;
  if (codec.has_tokenizer()) {
    QTRAIN_ASSIGN_OR_RETURN(text, codec.Decode(generated));
  }
  std::string output;
  if (flags.json) {
    Json out = {{"prompt_ids", prompt}, {"ids", generated}};
    if (codec.has_tokenizer()) out["text"] = text;
    output = out.dump();
  } else if (codec.has_tokenizer()) {
    output = text;
  } else {
    output = Json(generated).dump();
  }
  QTRAIN_RETURN_IF_ERROR(WriteStdout(output + "\n"));
  return FlushStdout();
}

absl::StatusOr<int64_t> IntFlag(const char* flag, const std::string& text, int64_t lo, int64_t hi) {
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", text, "' is not an integer (or is out of int64 range)"));
  }
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": must be in [", lo, ", ", hi, "], got ", value));
  }
  return value;
}

// A finite number in (lo, hi] (lo_inclusive: [lo, hi]).
absl::StatusOr<double> NumberFlag(const char* flag, const std::string& text, double lo,
                                  bool lo_inclusive, double hi) {
  double value = 0;
  if (!absl::SimpleAtod(text, &value)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": '", text, "' is not a number"));
  }
  if (!std::isfinite(value)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": must be a finite number, got ", text));
  }
  if ((lo_inclusive ? value < lo : value <= lo) || value > hi) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": must be in ", lo_inclusive ? "[" : "(",
                                                   lo, ", ", hi, "], got ", text));
  }
  return value;
}

// The preset with the flags' overrides, checked.
absl::StatusOr<model::ModelConfig> InitConfig(const InitFlags& flags) {
  QTRAIN_ASSIGN_OR_RETURN(model::ModelConfig config, model::PresetConfig(flags.preset));
  if (flags.vocab_size) {
    QTRAIN_ASSIGN_OR_RETURN(config.vocab_size,
                            IntFlag("--vocab-size", *flags.vocab_size, 1, model::kMaxDim));
    std::vector<int64_t> ids = config.eos_token_ids;
    if (config.bos_token_id) ids.push_back(*config.bos_token_id);
    for (int64_t id : ids) {
      if (id >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("--vocab-size: ", config.vocab_size,
                                                       " is too small for the preset's ",
                                                       flags.preset, " special token id ", id));
      }
    }
  }
  if (flags.rope_theta) {
    QTRAIN_ASSIGN_OR_RETURN(config.rope_theta,
                            NumberFlag("--rope-theta", *flags.rope_theta, 1,
                                       /*lo_inclusive=*/false, model::kMaxRopeTheta));
  }
  if (flags.yarn_original_max_position_embeddings && !flags.yarn_factor) {
    return absl::InvalidArgumentError(
        "--yarn-original-max-position-embeddings: needs --yarn-factor");
  }
  if (flags.yarn_factor) {
    config.rope_type = model::RopeType::kYarn;
    QTRAIN_ASSIGN_OR_RETURN(config.yarn.factor,
                            NumberFlag("--yarn-factor", *flags.yarn_factor, 1,
                                       /*lo_inclusive=*/true, model::kMaxYarnFactor));
    config.yarn.original_max_position_embeddings = config.max_position_embeddings;
    if (flags.yarn_original_max_position_embeddings) {
      QTRAIN_ASSIGN_OR_RETURN(
          config.yarn.original_max_position_embeddings,
          IntFlag("--yarn-original-max-position-embeddings",
                  *flags.yarn_original_max_position_embeddings, 1, model::kMaxDim));
    }
  }
  QTRAIN_RETURN_IF_ERROR(model::ValidateConfig(config));
  return config;
}

// An existing model in --out is overwritten only with --force.
absl::Status CheckInitOutput(const InitFlags& flags) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(flags.out_dir, ec);
  if (!fs::exists(st)) return absl::OkStatus();
  if (!fs::is_directory(st)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--out: ", flags.out_dir, " exists and is not a directory"));
  }
  if (flags.force) return absl::OkStatus();
  for (const char* name : {"config.json", "model.safetensors", "model.safetensors.index.json"}) {
    if (fs::exists(fs::path(flags.out_dir) / name, ec)) {
      return absl::FailedPreconditionError(absl::StrCat("--out: ", flags.out_dir,
                                                        " already holds a model (", name,
                                                        "); pass --force to overwrite it"));
    }
  }
  return absl::OkStatus();
}

absl::Status RunInit(const InitFlags& flags) {
  QTRAIN_ASSIGN_OR_RETURN(const uint64_t seed, SeedFlag(flags.seed));
  QTRAIN_ASSIGN_OR_RETURN(const model::ModelConfig config, InitConfig(flags));
  QTRAIN_RETURN_IF_ERROR(CheckInitOutput(flags));
  const model::ParameterLayout layout(config);
  QTRAIN_ASSIGN_OR_RETURN(
      std::vector<float> params,
      model::MakeHostVector<float>({layout.total_size()}, "the initialized parameters"));
  model::InitializeParameters(config, layout, seed, params);
  QTRAIN_RETURN_IF_ERROR(model::SaveCheckpoint(flags.out_dir, config, params));
  std::cerr << "wrote " << flags.preset << " (" << config.NumParameters() << " parameters) to "
            << flags.out_dir << "\n";
  return absl::OkStatus();
}

}  // namespace

void AddModelCommands(CLI::App& app, CommandSelection& selection) {
  auto score_flags = std::make_shared<ScoreFlags>();
  CLI::App* score = app.add_subcommand(
      "score", "Per-token log-probabilities of JSON lines on stdin ({\"text\"} or {\"ids\"})");
  score->add_option("--model", score_flags->model_dir, "Model directory (transformers format)")
      ->required()
      ->check(NonEmptyCheck());
  score->add_option("--tokenizer", score_flags->tokenizer_path, "tokenizer.json")
      ->check(RegularFileCheck());
  score->add_option("--dca", score_flags->dca,
                    "Dual Chunk Attention CHUNK,LOCAL (overrides config.json's sizes)");
  score->add_flag("--output-logits", score_flags->output_logits,
                  "Also print every position's logits (for parity checks; large)");
  score->add_flag("--allow-nonfinite-weights", score_flags->allow_nonfinite_weights,
                  "Load weights holding NaN or infinities (scoring still fails on non-finite "
                  "logits, naming the layer)");
  score->callback([&selection, score_flags] {
    selection.action = [score_flags] { return RunScore(*score_flags); };
  });

  auto gen_flags = std::make_shared<GenerateFlags>();
  CLI::App* gen = app.add_subcommand("generate", "Continue a prompt (greedy when temperature 0)");
  gen->add_option("--model", gen_flags->model_dir, "Model directory")
      ->required()
      ->check(NonEmptyCheck());
  gen->add_option("--tokenizer", gen_flags->tokenizer_path, "tokenizer.json")
      ->check(RegularFileCheck());
  CLI::Option* prompt = gen->add_option("--prompt", gen_flags->prompt, "Prompt text");
  CLI::Option* prompt_ids =
      gen->add_option("--prompt-ids", gen_flags->prompt_ids, "Prompt token ids, comma-separated");
  gen->add_option("--max-new-tokens", gen_flags->max_new_tokens)->capture_default_str();
  gen->add_option("--temperature", gen_flags->temperature)->capture_default_str();
  gen->add_option("--top-p", gen_flags->top_p)->capture_default_str();
  gen->add_option("--seed", gen_flags->seed)->capture_default_str();
  gen->add_option("--dca", gen_flags->dca,
                  "Dual Chunk Attention CHUNK,LOCAL (overrides config.json's sizes)");
  gen->add_flag("--json", gen_flags->json, "Print {prompt_ids, ids, text} as JSON");
  gen->add_flag("--allow-nonfinite-weights", gen_flags->allow_nonfinite_weights,
                "Load weights holding NaN or infinities (generation still fails on non-finite "
                "logits, naming the layer)");
  gen->callback([&selection, gen_flags, prompt, prompt_ids] {
    gen_flags->prompt_given = prompt->count() > 0;
    gen_flags->prompt_ids_given = prompt_ids->count() > 0;
    selection.action = [gen_flags] { return RunGenerate(*gen_flags); };
  });

  auto init_flags = std::make_shared<InitFlags>();
  CLI::App* init = app.add_subcommand("init", "Write a freshly initialized model");
  init->add_option("--preset", init_flags->preset, "qwen2-0.5b, qwen2-tiny or qwen2-test")
      ->required();
  init->add_option("--out", init_flags->out_dir, "Output directory")->required();
  init->add_option("--seed", init_flags->seed, "Seed of the initialization, in [0, 2^64)")
      ->capture_default_str();
  init->add_flag("--force", init_flags->force, "Overwrite a model already in --out");
  // Text targets: RunInit checks them and names the flag (not given stays unset).
  struct Override {
    CLI::Option* option = nullptr;
    std::string text;
    std::optional<std::string>* target = nullptr;
  };
  auto overrides = std::make_shared<std::vector<Override>>(4);
  const std::tuple<const char*, std::optional<std::string>*, const char*> specs[] = {
      {"--vocab-size", &init_flags->vocab_size, "Override the preset's vocab_size, in [1, 2^24]"},
      {"--rope-theta", &init_flags->rope_theta, "Override the preset's rope_theta, in (1, 1e12]"},
      {"--yarn-factor", &init_flags->yarn_factor,
       "Use YaRN RoPE scaling with this factor, in [1, 1024]"},
      {"--yarn-original-max-position-embeddings",
       &init_flags->yarn_original_max_position_embeddings,
       "YaRN's original context (default: max_position_embeddings)"}};
  for (size_t i = 0; i < std::size(specs); ++i) {
    const auto& [name, target, help] = specs[i];
    Override& o = (*overrides)[i];
    o.option = init->add_option(name, o.text, help);
    o.target = target;
  }
  init->callback([&selection, init_flags, overrides] {
    for (Override& o : *overrides) {
      if (o.option->count() > 0) *o.target = o.text;
    }
    selection.action = [init_flags] { return RunInit(*init_flags); };
  });
}

}  // namespace qtrain::cli
