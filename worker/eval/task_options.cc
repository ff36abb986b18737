// Task names, options from job specs, RunTask's dispatch and the flat metrics.
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/eval/common.h"
#include "worker/eval/eval.h"
#include "worker/eval/tasks.h"

namespace qtrain::eval {
namespace {

// Options every task needs checked before it starts.
absl::Status CheckOptions(const TaskOptions& o, std::string_view path) {
  const auto bad = [&](std::string_view field, auto value, std::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(path), path.empty() ? "" : ".",
                                                   std::string(field), ": ", std::string(why),
                                                   ", got ", value));
  };
  if (o.seq_len < 0) return bad("seq_len", o.seq_len, "must be >= 0");
  if (o.stride < 0) return bad("stride", o.stride, "must be >= 0");
  if (o.max_new_tokens < 0) return bad("max_new_tokens", o.max_new_tokens, "must be >= 0");
  if (o.limit < 0) return bad("limit", o.limit, "must be >= 0");
  if (o.trials < 0) return bad("trials", o.trials, "must be >= 0");
  for (int64_t length : o.lengths) {
    if (length <= 0) return bad("lengths", length, "every length must be > 0");
  }
  for (double depth : o.depths) {
    if (!(depth >= 0 && depth <= 1)) return bad("depths", depth, "every depth must be in [0, 1]");
  }
  const bool needs_data = o.kind == TaskKind::kPerplexity || o.kind == TaskKind::kMultipleChoice ||
                          o.kind == TaskKind::kGeneration;
  if (needs_data && o.data.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(std::string(path), path.empty() ? "" : ".",
                                                   "data: the ", std::string(TaskKindName(o.kind)),
                                                   " task needs a data file"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TaskKind> ParseTaskKind(std::string_view name) {
  for (TaskKind kind : {TaskKind::kPerplexity, TaskKind::kMultipleChoice, TaskKind::kGeneration,
                        TaskKind::kNeedle}) {
    if (name == TaskKindName(kind)) return kind;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown eval task '", std::string(name),
                   "' (known: perplexity, multiple-choice, generation, needle)"));
}

std::string_view TaskKindName(TaskKind kind) {
  switch (kind) {
    case TaskKind::kPerplexity:
      return "perplexity";
    case TaskKind::kMultipleChoice:
      return "multiple-choice";
    case TaskKind::kGeneration:
      return "generation";
    case TaskKind::kNeedle:
      return "needle";
  }
  return "unknown";
}

absl::StatusOr<TaskOptions> TaskOptionsFromSpec(const v1::EvalTaskSpec& spec,
                                                std::string_view path) {
  TaskOptions o;
  absl::StatusOr<TaskKind> kind = ParseTaskKind(spec.task());
  if (!kind.ok()) return Annotate(kind.status(), absl::StrCat(std::string(path), ".task"));
  o.kind = *kind;
  o.name = spec.name();
  o.data = spec.data();
  o.seq_len = spec.seq_len();
  o.stride = spec.stride();
  o.max_new_tokens = spec.max_new_tokens();
  o.answer_regex = spec.answer_regex();
  o.lengths.assign(spec.lengths().begin(), spec.lengths().end());
  o.depths.assign(spec.depths().begin(), spec.depths().end());
  o.limit = spec.limit();
  QTRAIN_RETURN_IF_ERROR(CheckOptions(o, path));
  return o;
}

absl::StatusOr<nlohmann::json> RunTask(const TaskOptions& options, EvalContext& context) {
  if (context.model == nullptr || context.tokenizer == nullptr) {
    return absl::InvalidArgumentError("evaluation needs a model and a tokenizer");
  }
  QTRAIN_RETURN_IF_ERROR(CheckOptions(options, ""));
  QTRAIN_RETURN_IF_ERROR(CheckCancelled(context));
  switch (options.kind) {
    case TaskKind::kPerplexity:
      return RunPerplexity(options, context);
    case TaskKind::kMultipleChoice:
      return RunMultipleChoice(options, context);
    case TaskKind::kGeneration:
      return RunGeneration(options, context);
    case TaskKind::kNeedle:
      return RunNeedle(options, context);
  }
  return absl::InvalidArgumentError("unknown eval task");
}

std::map<std::string, double> FlatMetrics(const nlohmann::json& result) {
  std::map<std::string, double> out;
  if (auto it = result.find("metrics"); it != result.end() && it->is_object()) {
    for (const auto& [key, value] : it->items()) {
      if (value.is_number()) out[key] = value.get<double>();
    }
  }
  // Needle: one metric per grid cell.
  if (auto grid = result.find("grid"); grid != result.end() && grid->is_object()) {
    const auto& lengths = grid->value("lengths", nlohmann::json::array());
    const auto& depths = grid->value("depths", nlohmann::json::array());
    const auto& acc = grid->value("accuracy", nlohmann::json::array());
    for (size_t d = 0; d < depths.size() && d < acc.size(); ++d) {
      for (size_t l = 0; l < lengths.size() && l < acc[d].size(); ++l) {
        if (!acc[d][l].is_number() || !lengths[l].is_number() || !depths[d].is_number()) continue;
        out[absl::StrCat("accuracy/L", lengths[l].get<int64_t>(), "/D", depths[d].get<double>())] =
            acc[d][l].get<double>();
      }
    }
  }
  return out;
}

}  // namespace qtrain::eval
