// qtrain eval: one evaluation task (worker/eval/eval.h) on a local model, on CPU.
#include <omp.h>
#include <unistd.h>

#include <cstdint>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/command.h"
#include "cli/flag_checks.h"
#include "cli/model_loading.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "tokenizer/tokenizer.h"
#include "worker/eval/eval.h"
#include "worker/model/config.h"

namespace qtrain::cli {
namespace {

struct EvalFlags {
  std::string model_dir;
  std::string tokenizer_path;
  std::string task;
  std::string name;
  std::string data;
  int64_t seq_len = 0;
  int64_t stride = 0;
  int64_t max_new_tokens = 0;
  std::string answer_regex;
  std::string lengths;
  std::string depths;
  std::string seed = "0";
  int64_t trials = 0;
  int64_t limit = 0;
  bool per_example = false;
  int64_t threads = 0;
  std::string out;
  std::string heatmap;
  std::string dca;
  bool allow_nonfinite_weights = false;
};

// "1k,4k,1000": k = 1024 tokens.
absl::StatusOr<std::vector<int64_t>> ParseLengths(const std::string& text) {
  std::vector<int64_t> out;
  for (absl::string_view piece : absl::StrSplit(text, ',')) {
    std::string p(absl::StripAsciiWhitespace(piece));
    int64_t scale = 1;
    if (!p.empty() && (p.back() == 'k' || p.back() == 'K')) {
      scale = 1024;
      p.pop_back();
    }
    int64_t v = 0;
    if (!absl::SimpleAtoi(p, &v) || v <= 0 || v > model::kMaxDim / scale) {
      return absl::InvalidArgumentError(absl::StrCat("--lengths: '", std::string(piece),
                                                     "' is not a positive token count (k = 1024)"));
    }
    out.push_back(v * scale);
  }
  return out;
}

absl::StatusOr<std::vector<double>> ParseDepths(const std::string& text) {
  std::vector<double> out;
  for (absl::string_view piece : absl::StrSplit(text, ',')) {
    double v = 0;
    if (!absl::SimpleAtod(absl::StripAsciiWhitespace(piece), &v) || !(v >= 0 && v <= 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--depths: '", std::string(piece), "' is not a number in [0, 1]"));
    }
    out.push_back(v);
  }
  return out;
}

absl::Status NonNegative(const char* flag, int64_t v) {
  if (v < 0) return absl::InvalidArgumentError(absl::StrCat(flag, ": must be >= 0, got ", v));
  return absl::OkStatus();
}

absl::StatusOr<eval::TaskOptions> OptionsFromFlags(const EvalFlags& f) {
  eval::TaskOptions o;
  QTRAIN_ASSIGN_OR_RETURN(o.kind, eval::ParseTaskKind(f.task));
  o.name = f.name;
  o.data = f.data;
  QTRAIN_RETURN_IF_ERROR(NonNegative("--seq-len", f.seq_len));
  QTRAIN_RETURN_IF_ERROR(NonNegative("--stride", f.stride));
  QTRAIN_RETURN_IF_ERROR(NonNegative("--max-new-tokens", f.max_new_tokens));
  QTRAIN_RETURN_IF_ERROR(NonNegative("--limit", f.limit));
  QTRAIN_RETURN_IF_ERROR(NonNegative("--trials", f.trials));
  o.seq_len = f.seq_len;
  o.stride = f.stride;
  o.max_new_tokens = f.max_new_tokens;
  o.answer_regex = f.answer_regex;
  if (!f.lengths.empty()) {
    QTRAIN_ASSIGN_OR_RETURN(o.lengths, ParseLengths(f.lengths));
  }
  if (!f.depths.empty()) {
    QTRAIN_ASSIGN_OR_RETURN(o.depths, ParseDepths(f.depths));
  }
  if (!absl::SimpleAtoi(f.seed, &o.seed) || absl::StrContains(f.seed, '-')) {
    return absl::InvalidArgumentError(
        absl::StrCat("--seed: '", f.seed, "' is not an integer in [0, 2^64)"));
  }
  o.trials = f.trials;
  o.limit = f.limit;
  o.per_example = f.per_example;
  const bool uses_data = o.kind != eval::TaskKind::kNeedle;
  if (uses_data && o.data.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--data: the ", f.task, " task needs it"));
  }
  if (!uses_data && !o.data.empty()) {
    return absl::InvalidArgumentError("--data: the needle task builds its own text");
  }
  if (o.kind != eval::TaskKind::kNeedle && (!f.lengths.empty() || !f.depths.empty())) {
    return absl::InvalidArgumentError("--lengths and --depths are for the needle task");
  }
  if (o.kind != eval::TaskKind::kNeedle && !f.heatmap.empty()) {
    return absl::InvalidArgumentError("--heatmap is for the needle task");
  }
  return o;
}

// The metrics as a two-column table.
std::string MetricsTable(const nlohmann::json& result) {
  std::string out = absl::StrFormat("%-28s %s\n", "metric", "value");
  for (const auto& [key, value] : eval::FlatMetrics(result)) {
    absl::StrAppendFormat(&out, "%-28s %.6g\n", key, value);
  }
  return out;
}

std::string HeatmapPath(const EvalFlags& f) {
  if (!f.heatmap.empty()) return f.heatmap;
  if (f.out.empty()) return "";
  std::string base = f.out;
  if (absl::EndsWith(base, ".json")) base.resize(base.size() - 5);
  return base + ".svg";
}

absl::Status RunEval(const EvalFlags& f) {
  QTRAIN_ASSIGN_OR_RETURN(const eval::TaskOptions options, OptionsFromFlags(f));
  LoadModelOptions load{.allow_nonfinite_weights = f.allow_nonfinite_weights};
  if (!f.dca.empty()) {
    QTRAIN_ASSIGN_OR_RETURN(load.dca, model::ParseDcaFlag(f.dca));
  }
  if (f.threads < 0) return absl::InvalidArgumentError("--threads: must be >= 0");
  if (f.threads > 0) omp_set_num_threads(static_cast<int>(f.threads));
  QTRAIN_ASSIGN_OR_RETURN(tokenizer::Tokenizer tok,
                          tokenizer::Tokenizer::FromFile(f.tokenizer_path));
  QTRAIN_ASSIGN_OR_RETURN(model::Model m, LoadInferenceModel(f.model_dir, load));
  eval::EvalContext context{.model = &m, .tokenizer = &tok};
  const bool tty = ::isatty(STDERR_FILENO) == 1;
  int64_t last_percent = -1;
  context.progress = [&](const eval::Progress& p) {
    const int64_t percent = p.total > 0 ? p.done * 100 / p.total : 100;
    if (!tty && percent / 10 == last_percent / 10 && p.done != p.total) return;
    last_percent = percent;
    std::cerr << (tty ? "\r" : "") << "eval " << p.task << ": " << p.done << "/" << p.total << " ("
              << percent << "%)" << (tty && p.done != p.total ? "" : "\n") << std::flush;
  };
  QTRAIN_ASSIGN_OR_RETURN(const nlohmann::json result, eval::RunTask(options, context));
  std::cerr << MetricsTable(result);
  const std::string json = result.dump(2) + "\n";
  if (f.out.empty()) {
    QTRAIN_RETURN_IF_ERROR(WriteStdout(json));
  } else {
    QTRAIN_RETURN_IF_ERROR(WriteFileAtomically(f.out, json));
  }
  if (options.kind == eval::TaskKind::kNeedle) {
    if (const std::string path = HeatmapPath(f); !path.empty()) {
      QTRAIN_ASSIGN_OR_RETURN(const std::string svg, eval::NeedleHeatmapSvg(result));
      QTRAIN_RETURN_IF_ERROR(WriteFileAtomically(path, svg));
      std::cerr << "wrote the heatmap to " << path << "\n";
    }
  }
  return absl::OkStatus();
}

}  // namespace

void AddEvalCommand(CLI::App& app, CommandSelection& selection) {
  auto f = std::make_shared<EvalFlags>();
  CLI::App* cmd =
      app.add_subcommand("eval",
                         "Evaluate a model: perplexity, multiple-choice, generation or needle "
                         "(docs/eval.md)");
  cmd->add_option("--model", f->model_dir, "Model directory")->required()->check(NonEmptyCheck());
  cmd->add_option("--tokenizer", f->tokenizer_path, "tokenizer.json")
      ->required()
      ->check(RegularFileCheck());
  cmd->add_option("--task", f->task, "perplexity, multiple-choice, generation or needle")
      ->required();
  cmd->add_option("--name", f->name, "The name the result is reported under");
  cmd->add_option("--data", f->data,
                  "perplexity: a data manifest or JSONL {\"text\"}; multiple-choice and "
                  "generation: JSONL rows");
  cmd->add_option("--seq-len", f->seq_len, "perplexity window (0: the model's context, <= 2048)");
  cmd->add_option("--stride", f->stride, "perplexity stride between windows (0: --seq-len)");
  cmd->add_option("--max-new-tokens", f->max_new_tokens, "generation (0: 256) and needle (0: 16)");
  cmd->add_option("--answer-regex", f->answer_regex,
                  "generation answer pattern (default \"#### (\\S+)\", then the last number)");
  cmd->add_option("--lengths", f->lengths, "needle lengths in tokens, e.g. 1k,4k (k = 1024)");
  cmd->add_option("--depths", f->depths, "needle depths in [0, 1], e.g. 0,0.5,1");
  cmd->add_option("--seed", f->seed, "needle passkeys and filler")->capture_default_str();
  cmd->add_option("--trials", f->trials, "needle haystacks per cell (0: 1)");
  cmd->add_option("--limit", f->limit, "At most this many examples (perplexity: windows)");
  cmd->add_flag("--per-example", f->per_example, "Add each example's scores to the result");
  cmd->add_option("--threads", f->threads, "CPU threads (0: all)");
  cmd->add_option("--out", f->out, "Write the JSON result here (default: stdout)");
  cmd->add_option("--heatmap", f->heatmap,
                  "needle: the SVG heatmap (default: --out without .json, plus .svg)");
  cmd->add_option("--dca", f->dca, "Dual Chunk Attention CHUNK,LOCAL (overrides config.json)");
  cmd->add_flag("--allow-nonfinite-weights", f->allow_nonfinite_weights,
                "Load weights holding NaN or infinities");
  cmd->callback([&selection, f] { selection.action = [f] { return RunEval(*f); }; });
}

}  // namespace qtrain::cli
