// The benchmark tasks of a Trainer (eval.tasks): converted and their data checked before
// training starts, run by rank 0 on the current model after each stage's last step, before that
// step's checkpoint. Before, not after: a checkpoint at a stage's end then implies that the
// stage's results are in metrics.jsonl, and a run killed while evaluating resumes from an
// earlier checkpoint, retrains the same bytes and evaluates again (metrics.jsonl drops the
// records past the checkpoint it resumes from), so every stage's results are written exactly
// once and resume stays exact (evaluation reads the weights, never writes them).
#include <atomic>
#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "common/file_util.h"
#include "common/job_spec_eval.h"
#include "common/status_macros.h"
#include "worker/eval/eval.h"
#include "worker/eval/rows.h"
#include "worker/train/trainer_state.h"

namespace qtrain::train {
namespace {

// The largest JSONL file of examples checked line by line before training.
constexpr size_t kMaxEvalDataBytes = size_t{1} << 32;
// How often rank 0 tells the others it is still evaluating: well inside a collective's timeout.
constexpr auto kEvalHeartbeat = std::chrono::milliseconds(500);
constexpr char kRunning = 0, kDone = 1, kFailed = 2;

// The task's data file exists and is readable, and its rows (a JSONL file) parse as the eval
// library parses them when the task runs, so that a bad file fails the run before its first
// step, naming the file and line, not at the end of a stage.
absl::Status CheckTaskData(const eval::TaskOptions& task, const std::string& path) {
  if (task.kind == eval::TaskKind::kNeedle) return absl::OkStatus();
  const std::string field = path + ".data";
  const bool manifest = task.kind == eval::TaskKind::kPerplexity &&
                        absl::EndsWith(task.data, ".json") && !absl::EndsWith(task.data, ".jsonl");
  if (manifest) {  // token shards, opened by the eval library with the tokenizer
    absl::StatusOr<RegularFile> file = OpenRegularFile(task.data);
    return file.ok() ? absl::OkStatus() : Annotate(file.status(), field);
  }
  absl::StatusOr<std::string> text = ReadFileToString(task.data, kMaxEvalDataBytes);
  if (!text.ok()) return Annotate(text.status(), field);
  absl::Status parsed;
  switch (task.kind) {
    case eval::TaskKind::kPerplexity:
      parsed = eval::ParseTextRows(*text, task.data).status();
      break;
    case eval::TaskKind::kMultipleChoice:
      parsed = eval::ParseChoiceRows(*text, task.data).status();
      break;
    default:
      parsed = eval::ParseGenerationRows(*text, task.data).status();
      break;
  }
  return parsed.ok() ? parsed : Annotate(parsed, field);
}

std::string FormatMetrics(const std::map<std::string, double>& metrics) {
  std::vector<std::string> parts;
  for (const auto& [name, value] : metrics) {
    if (absl::StrContains(name, '/')) continue;  // a needle cell: the total is enough here
    parts.push_back(absl::StrCat(name, " ", value));
  }
  return absl::StrJoin(parts, ", ");
}

}  // namespace

absl::Status Trainer::State::PrepareEvalTasks(const tokenizer::Tokenizer* given) {
  eval_tasks.clear();
  if (spec.eval().tasks().empty() || !lead()) return absl::OkStatus();
  for (int i = 0; i < spec.eval().tasks_size(); ++i) {
    const std::string path = absl::StrCat("eval.tasks[", i, "]");
    QTRAIN_ASSIGN_OR_RETURN(eval::TaskOptions task,
                            eval::TaskOptionsFromSpec(spec.eval().tasks(i), path));
    if (task.name.empty()) task.name = EvalTaskReportedName(spec.eval().tasks(i));
    QTRAIN_RETURN_IF_ERROR(CheckTaskData(task, path));
    eval_tasks.push_back(std::move(task));
  }
  if (given != nullptr) {
    eval_tokenizer = given;
  } else {
    absl::StatusOr<tokenizer::Tokenizer> loaded = tokenizer::Tokenizer::FromFile(spec.tokenizer());
    if (!loaded.ok()) return Annotate(loaded.status(), "tokenizer (for eval.tasks)");
    own_tokenizer = std::make_unique<tokenizer::Tokenizer>(*std::move(loaded));
    eval_tokenizer = own_tokenizer.get();
  }
  return absl::OkStatus();
}

// Rank 0 runs the tasks on a thread of their own while this thread watches for cancellation
// and, in a group, tells the other ranks every kEvalHeartbeat that it is still busy (they wait
// in a broadcast, never long enough for a collective to time out).
absl::Status Trainer::State::RunEvalTasks(int stage_index) {
  if (spec.eval().tasks().empty()) return absl::OkStatus();
  Phase(TrainerPhase::kEvaluating);
  absl::Status status = lead() ? LeadEvalTasks(stage_index) : AwaitEvalTasks();
  Phase(TrainerPhase::kTraining);
  return status;
}

absl::Status Trainer::State::AwaitEvalTasks() {
  for (;;) {
    char state = kRunning;
    QTRAIN_RETURN_IF_ERROR(comm->Broadcast(std::as_writable_bytes(std::span(&state, 1)), 0));
    if (state == kDone) return absl::OkStatus();
    if (state != kRunning) return absl::AbortedError("rank 0 could not run the eval tasks");
  }
}

absl::Status Trainer::State::LeadEvalTasks(int stage_index) {
  std::atomic<bool> cancel{false};
  absl::Mutex mu;
  bool finished = false;
  absl::StatusOr<std::vector<nlohmann::json>> results;
  std::thread worker([&] {
    absl::StatusOr<std::vector<nlohmann::json>> out = EvaluateTasks(stage_index, cancel);
    absl::MutexLock lock(&mu);
    results = std::move(out);
    finished = true;
  });
  absl::Status group = absl::OkStatus();
  for (bool done = false; !done;) {
    {
      absl::MutexLock lock(&mu);
      mu.AwaitWithTimeout(absl::Condition(&finished), absl::FromChrono(kEvalHeartbeat));
      done = finished;
    }
    if (!done && options.cancelled && options.cancelled()) cancel = true;
    if (done || options.world_size == 1 || !group.ok()) continue;
    char state = kRunning;
    group = comm->Broadcast(std::as_writable_bytes(std::span(&state, 1)), 0);
    if (!group.ok()) cancel = true;  // the group is gone: stop early
  }
  worker.join();
  // A cancel while evaluating stops the run here, before the stage's checkpoint, even when the
  // tasks were done: the results are not recorded and the stage is evaluated again on resume.
  const bool cancelled = options.cancelled && options.cancelled();
  if (group.ok() && options.world_size > 1) {
    char state = results.ok() && !cancelled ? kDone : kFailed;
    group = comm->Broadcast(std::as_writable_bytes(std::span(&state, 1)), 0);
  }
  if (cancelled) {
    return absl::CancelledError(
        absl::StrCat("training cancelled at step ", step, " (while running the eval tasks)"));
  }
  QTRAIN_RETURN_IF_ERROR(group);
  QTRAIN_RETURN_IF_ERROR(results.status());
  return RecordEvalResults(stage_index, *results);
}

// Every task in order on the current model; the first failure stops them.
absl::StatusOr<std::vector<nlohmann::json>> Trainer::State::EvaluateTasks(
    int stage_index, const std::atomic<bool>& cancel) {
  std::vector<nlohmann::json> results;
  // A model without BOS or EOS token ids scores texts after the tokenizer's end-of-text token
  // (the eval library's prefix rule), so the trainer's own model serves.
  eval::EvalContext context{.model = model.get(),
                            .tokenizer = eval_tokenizer,
                            .cancelled = &cancel};
  for (size_t i = 0; i < eval_tasks.size(); ++i) {
    eval::TaskOptions task = eval_tasks[i];
    // A perplexity window of 0 is the stage's (the spec's default), not the eval library's.
    if (task.kind == eval::TaskKind::kPerplexity && task.seq_len == 0) {
      task.seq_len = spec.curriculum(stage_index).seq_len();
    }
    absl::StatusOr<nlohmann::json> result = eval::RunTask(task, context);
    if (!result.ok()) {
      return Annotate(result.status(), absl::StrCat("eval.tasks[", i, "] '", task.name, "'"));
    }
    results.push_back(*std::move(result));
  }
  return results;
}

absl::Status Trainer::State::RecordEvalResults(int stage_index,
                                               const std::vector<nlohmann::json>& results) {
  const bool final = step == total_steps;
  std::vector<v1::EvalTaskResult> reports;
  for (size_t i = 0; i < results.size(); ++i) {
    const std::map<std::string, double> flat = eval::FlatMetrics(results[i]);
    v1::EvalTaskResult& report = reports.emplace_back();
    report.set_stage(stage_index);
    report.set_step(step);
    report.set_name(eval_tasks[i].name);
    report.set_task(std::string(eval::TaskKindName(eval_tasks[i].kind)));
    report.set_final(final);
    report.mutable_metrics()->insert(flat.begin(), flat.end());
    nlohmann::json record = {
        {"event", "eval_task"},           {"stage", stage_index},  {"step", step},
        {"name", report.name()},          {"task", report.task()}, {"final", final},
        {"metrics", nlohmann::json(flat)}};
    QTRAIN_RETURN_IF_ERROR(metrics->Append(record));
    Event(absl::StrCat("eval ", report.name(), " (", report.task(), ") at step ", step,
                       final ? ", the end" : "", ": ", FormatMetrics(flat)));
  }
  if (options.on_eval_tasks) options.on_eval_tasks(reports);
  return absl::OkStatus();
}

}  // namespace qtrain::train
