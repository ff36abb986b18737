// Evaluation tasks of `qtrain eval` and of training jobs' `eval.tasks`: perplexity,
// multiple-choice (scored as lm-evaluation-harness scores loglikelihood requests), generation
// (greedy, exact match of an extracted answer) and needle in a haystack (passkey retrieval at
// each length x depth). docs/eval.md describes each task, its data and its metrics.
//
//   EvalContext context{.model = &model, .tokenizer = &tokenizer};
//   QTRAIN_ASSIGN_OR_RETURN(nlohmann::json result, RunTask(options, context));
//   // {"task": "multiple-choice", "metrics": {"acc": 0.5, "acc_norm": 0.75, ...}, ...}
#ifndef QTRAIN_WORKER_EVAL_EVAL_H_
#define QTRAIN_WORKER_EVAL_EVAL_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "qtrain/v1/jobs.pb.h"
#include "tokenizer/tokenizer.h"
#include "worker/model/model.h"

namespace qtrain::eval {

enum class TaskKind { kPerplexity, kMultipleChoice, kGeneration, kNeedle };

// "perplexity", "multiple-choice", "generation", "needle".
absl::StatusOr<TaskKind> ParseTaskKind(std::string_view name);
std::string_view TaskKindName(TaskKind kind);

struct TaskOptions {
  TaskKind kind = TaskKind::kPerplexity;
  std::string name;  // reported name; empty: the task's name
  // perplexity: a data manifest (tokenized shards) or a JSONL file of {"text": ...};
  // multiple-choice: {"context", "choices", "label"} rows; generation: {"prompt", "answer",
  // "stop"} rows. Unused by needle.
  std::string data;
  int64_t seq_len = 0;           // perplexity window (0: the model's context, at most 2048)
  int64_t stride = 0;            // perplexity stride between windows (0: seq_len)
  int64_t max_new_tokens = 0;    // generation (0: 256), needle (0: 16)
  std::string answer_regex;      // generation (empty: "#### (\S+)", then the last number)
  std::vector<int64_t> lengths;  // needle haystack lengths in tokens
  std::vector<double> depths;    // needle depths in [0, 1]
  int64_t limit = 0;             // at most this many examples / windows (0: all)
  bool per_example = false;      // add "examples" to the result
  uint64_t seed = 0;             // needle passkeys and filler order
  int64_t trials = 0;            // needle haystacks per grid cell (0: 1)
};

// Checks and converts a job spec's task (field paths under `path`, e.g. "eval.tasks[0]").
absl::StatusOr<TaskOptions> TaskOptionsFromSpec(const v1::EvalTaskSpec& spec,
                                                std::string_view path);

// Progress of a running task, for a progress line on stderr.
struct Progress {
  std::string_view task;
  int64_t done = 0;
  int64_t total = 0;
};

struct EvalContext {
  model::Model* model = nullptr;  // inference model (gradients not needed)
  const tokenizer::Tokenizer* tokenizer = nullptr;
  std::function<void(const Progress&)> progress;  // optional
  const std::atomic<bool>* cancelled = nullptr;   // optional: CANCELLED when set
};

// Runs one task. The result: {"task": <kind name>, "name": ..., "metrics": {<name>: number},
// plus task-specific members ("buckets", "grid", "examples", ...)}.
absl::StatusOr<nlohmann::json> RunTask(const TaskOptions& options, EvalContext& context);

// The numeric members of result["metrics"], flattened ("acc"; needle also
// "accuracy/L1024/D0.5" per cell), for metrics.jsonl, job events and Prometheus.
std::map<std::string, double> FlatMetrics(const nlohmann::json& result);

// The needle grid as an SVG heatmap (lengths across, depths down, accuracy as colour).
absl::StatusOr<std::string> NeedleHeatmapSvg(const nlohmann::json& result);

}  // namespace qtrain::eval

#endif  // QTRAIN_WORKER_EVAL_EVAL_H_
