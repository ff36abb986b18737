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

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/file_util.h"
#include "common/job_spec_eval.h"
#include "common/status_macros.h"
#include "worker/eval/eval.h"
#include "worker/train/trainer_state.h"

namespace qtrain::train {
namespace {

// The largest JSONL file of examples checked line by line before training.
constexpr size_t kMaxEvalDataBytes = size_t{1} << 32;
// How often rank 0 tells the others it is still evaluating: well inside a collective's timeout.
constexpr auto kEvalHeartbeat = std::chrono::milliseconds(500);
constexpr char kRunning = 0, kDone = 1, kFailed = 2;

// The members every row of a task's JSONL file must have.
std::vector<std::string> RequiredMembers(eval::TaskKind kind) {
  switch (kind) {
    case eval::TaskKind::kMultipleChoice:
      return {"context", "choices", "label"};
    case eval::TaskKind::kGeneration:
      return {"prompt", "answer"};
    default:
      return {};
  }
}

// A multiple-choice row's choices (a non-empty array) and label (an index into them).
absl::Status CheckChoices(const nlohmann::json& row) {
  const nlohmann::json& choices = row["choices"];
  if (!choices.is_array() || choices.empty()) {
    return absl::InvalidArgumentError("\"choices\" must be a non-empty array");
  }
  const nlohmann::json& label = row["label"];
  if (!label.is_number_integer() || label.get<int64_t>() < 0 ||
      label.get<int64_t>() >= static_cast<int64_t>(choices.size())) {
    return absl::InvalidArgumentError(absl::StrCat("\"label\" must be an index into the ",
                                                   choices.size(), " choices, got ", label.dump()));
  }
  return absl::OkStatus();
}

absl::Status CheckRow(absl::string_view line, const std::vector<std::string>& members,
                      eval::TaskKind kind) {
  const nlohmann::json row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (row.is_discarded() || !row.is_object()) {
    return absl::InvalidArgumentError("not a JSON object");
  }
  for (const std::string& member : members) {
    if (!row.contains(member))
      return absl::InvalidArgumentError(absl::StrCat("no \"", member, "\""));
  }
  if (kind == eval::TaskKind::kMultipleChoice) return CheckChoices(row);
  return absl::OkStatus();
}

// The task's data file exists and is readable; a JSONL file of examples has at least one row
// and every row has the task's members, so that a bad file fails the run before its first step.
absl::Status CheckTaskData(const eval::TaskOptions& task, const std::string& path) {
  if (task.kind == eval::TaskKind::kNeedle) return absl::OkStatus();
  const std::string field = path + ".data";
  const std::vector<std::string> members = RequiredMembers(task.kind);
  if (members.empty()) {  // perplexity: a manifest or text, read by the eval library
    absl::StatusOr<RegularFile> file = OpenRegularFile(task.data);
    if (!file.ok()) return Annotate(file.status(), field);
    if (file->size == 0)
      return absl::InvalidArgumentError(absl::StrCat(field, ": ", task.data, " is empty"));
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> text = ReadFileToString(task.data, kMaxEvalDataBytes);
  if (!text.ok()) return Annotate(text.status(), field);
  int64_t line_number = 0, rows = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n')) {
    ++line_number;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    ++rows;
    if (absl::Status row = CheckRow(line, members, task.kind); !row.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": ", task.data, ":", line_number, ": ", row.message()));
    }
  }
  if (rows == 0) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", task.data, " has no examples"));
  }
  return absl::OkStatus();
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
    return absl::OkStatus();
  }
  absl::StatusOr<tokenizer::Tokenizer> loaded = tokenizer::Tokenizer::FromFile(spec.tokenizer());
  if (!loaded.ok()) return Annotate(loaded.status(), "tokenizer (for eval.tasks)");
  own_tokenizer = std::make_unique<tokenizer::Tokenizer>(*std::move(loaded));
  eval_tokenizer = own_tokenizer.get();
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
  eval::EvalContext context{
      .model = model.get(), .tokenizer = eval_tokenizer, .cancelled = &cancel};
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
