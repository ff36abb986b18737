// `qtrain train JOB --run-dir DIR`: runs a job in this process (no coordinator), resuming from
// the newest good checkpoint in DIR.
#include <signal.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/command.h"
#include "common/job_spec.h"
#include "common/run_dir_lock.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "kernels/ops.h"
#include "worker/model/config.h"
#include "worker/model/model_source.h"
#include "worker/train/cuda_plugin.h"
#include "worker/train/job_setup.h"
#include "worker/train/shard_token_source.h"
#include "worker/train/trainer.h"

namespace qtrain::cli {
namespace {

std::string FormatDuration(double seconds) {
  const auto s = static_cast<int64_t>(std::llround(seconds));
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, s % 3600 / 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

// QTRAIN_FAULT_INJECT=<point>:<step> kills the process with SIGKILL at that point of that step
// (points: step_done, checkpoint_written). Used by the crash-recovery tests.
std::function<void(std::string_view, int64_t)> FaultHookFromEnvironment() {
  const char* env = std::getenv("QTRAIN_FAULT_INJECT");
  if (env == nullptr) return nullptr;
  std::vector<std::string> parts = absl::StrSplit(env, ':');
  int64_t step = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[1], &step)) return nullptr;
  return [point = parts[0], step](std::string_view at, int64_t now) {
    if (at == point && now == step) ::raise(SIGKILL);
  };
}

absl::Status RunTrain(const std::string& spec_path, const std::string& run_dir,
                      const std::vector<std::string>& allowed_spec_changes) {
  if (run_dir.empty()) {
    return absl::InvalidArgumentError(
        "--run-dir is empty: give the directory for checkpoints, metrics and the final model");
  }
  QTRAIN_ASSIGN_OR_RETURN(v1::JobSpec spec,
                          LoadJobSpecFile(spec_path, model::ModelAwareJobSpecOptions()));
  QTRAIN_ASSIGN_OR_RETURN(train::PreparedJob job, train::PrepareJob(spec));
  const model::ModelConfig& config = job.config;
  const train::ShardTokenSource& data = *job.data;
  // world.device cuda: the CUDA plugin's backend on the first GPU the process sees
  // (worker/train/cuda_plugin.h); it outlives the trainer, declared below it.
  std::unique_ptr<kernels::Backend> backend;
  if (spec.world().device() == v1::DEVICE_KIND_CUDA) {
    QTRAIN_ASSIGN_OR_RETURN(backend, train::LoadCudaPluginBackend(0));
    std::fprintf(stderr, "train: on the %s backend (the first GPU of CUDA_VISIBLE_DEVICES)\n",
                 std::string(backend->name()).c_str());
  }
  // Held until training ends: nothing in the run directory is touched without it. The trainer
  // writes job.json once the spec agrees with the checkpoint's.
  QTRAIN_ASSIGN_OR_RETURN(RunDirLock lock, RunDirLock::Acquire(run_dir));

  std::fprintf(stderr, "train: job '%s', %lld tokens of data (%s), model %lld parameters\n",
               spec.name().c_str(), static_cast<long long>(data.size()),
               spec.data().manifest().c_str(), static_cast<long long>(config.NumParameters()));
  train::TrainerOptions trainer_options;
  trainer_options.run_dir = run_dir;
  trainer_options.run_dir_lock = std::make_shared<const RunDirLock>(std::move(lock));
  trainer_options.allowed_spec_changes = allowed_spec_changes;
  // Events include a line per eval task result ("eval arc (multiple-choice) at step 40: ...").
  trainer_options.on_event = [](const std::string& event) {
    std::fprintf(stderr, "train: %s\n", event.c_str());
  };
  trainer_options.tokenizer = job.tokenizer.get();
  trainer_options.backend = backend.get();
  auto last_print = std::chrono::steady_clock::time_point{};
  double data_seconds = 0, step_seconds = 0;
  trainer_options.on_step = [&](const train::StepReport& r) {
    data_seconds += r.data_seconds;
    step_seconds += r.step_seconds;
    const auto now = std::chrono::steady_clock::now();
    // At most one progress line a second, plus every evaluation and the last step.
    if (now - last_print < std::chrono::seconds(1) && !r.eval_loss && r.step != r.total_steps)
      return;
    last_print = now;
    std::string line = absl::StrFormat("train: [%s] step %d/%d loss %.4f lr %.2e %.0f tok/s ETA %s",
                                       r.stage_name, r.step, r.total_steps, r.loss, r.learning_rate,
                                       r.tokens_per_second, FormatDuration(r.eta_seconds));
    if (r.eval_loss) absl::StrAppendFormat(&line, " val_loss %.4f", *r.eval_loss);
    if (r.skipped_total > 0) absl::StrAppendFormat(&line, " skipped %d", r.skipped_total);
    std::fprintf(stderr, "%s\n", line.c_str());
  };
  trainer_options.fault_hook = FaultHookFromEnvironment();
  if (spec.world().min_workers() != 1 || spec.world().max_workers() != 1) {
    return absl::InvalidArgumentError(
        "world: a local run trains on one worker (min_workers = max_workers = 1)");
  }
  QTRAIN_ASSIGN_OR_RETURN(std::unique_ptr<train::Trainer> trainer,
                          train::Trainer::Create(spec, config, std::move(job.initial_params), data,
                                                 std::move(trainer_options)));
  QTRAIN_ASSIGN_OR_RETURN(train::TrainerSummary summary, trainer->Run());
  if (!summary.completed) return absl::InternalError("training stopped before the end");
  QTRAIN_RETURN_IF_ERROR(train::WriteTokenizerFiles(job.tokenizer_files, summary.final_dir));
  if (step_seconds > 0) {
    std::fprintf(stderr, "train: data loading took %.3f%% of step time in this process\n",
                 100.0 * data_seconds / step_seconds);
  }
  if (summary.final_eval_loss && summary.validation_unigram_entropy) {
    std::fprintf(stderr,
                 "train: final validation loss %.4f nats/token; unigram entropy of the same "
                 "tokens %.4f (a model that ignores context)\n",
                 *summary.final_eval_loss, *summary.validation_unigram_entropy);
  }
  std::fprintf(stderr,
               "train: done: %lld steps, %lld tokens, %lld skipped\n  run directory: %s\n"
               "  loss curve: %s/loss.svg\n  metrics: %s/metrics.jsonl\n  model: %s\n",
               static_cast<long long>(summary.steps), static_cast<long long>(summary.tokens_seen),
               static_cast<long long>(summary.skipped_steps), run_dir.c_str(), run_dir.c_str(),
               run_dir.c_str(), summary.final_dir.c_str());
  return absl::OkStatus();
}

}  // namespace

void AddTrainCommands(CLI::App& app, CommandSelection& selection) {
  auto spec = std::make_shared<std::string>();
  auto run_dir = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "train", "Run a job in this process, resuming from the newest good checkpoint in --run-dir");
  cmd->add_option("spec", *spec, "Job spec (YAML or JSON)")->required();
  cmd->add_option("--run-dir", *run_dir, "Directory for checkpoints, metrics and the final model")
      ->required();
  auto allowed = std::make_shared<std::vector<std::string>>();
  cmd->add_option("--allow-spec-change", *allowed,
                  "On resume, accept a change of this spec field (e.g. optimizer.lr) from the "
                  "checkpoint's spec; repeatable")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cmd->callback([&selection, spec, run_dir, allowed] {
    selection.action = [spec, run_dir, allowed] { return RunTrain(*spec, *run_dir, *allowed); };
  });
}

}  // namespace qtrain::cli
