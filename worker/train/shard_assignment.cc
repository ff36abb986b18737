#include "worker/train/shard_assignment.h"

#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/checked_math.h"
#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "tokenizer/shard_format.h"

namespace qtrain::train {
namespace {

// Marks the shards (non-empty ones) that hold a token of `window`; `starts` is each shard's
// first stream position, back() the total.
void MarkShards(const std::vector<int64_t>& starts, const Window& window,
                std::vector<bool>& touched) {
  const int64_t end = window.begin + window.length;
  auto k = static_cast<size_t>(std::upper_bound(starts.begin(), starts.end(), window.begin) -
                               starts.begin() - 1);
  for (; k + 1 < starts.size() && starts[k] < end; ++k) {
    if (starts[k + 1] > starts[k]) touched[k] = true;
  }
}

absl::Status CheckRange(const v1::JobSpec& spec, const std::vector<int64_t>& stage_start, int stage,
                        int64_t start_step, int64_t end_step, int rank, int world_size) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard assignment: rank ", rank, " of ", world_size, " workers"));
  }
  if (stage < 0 || stage >= spec.curriculum_size()) {
    return absl::InvalidArgumentError(absl::StrCat("shard assignment: stage ", stage,
                                                   " is not in the curriculum's 0-",
                                                   spec.curriculum_size() - 1));
  }
  const int64_t first = stage_start[static_cast<size_t>(stage)];
  const int64_t last = stage_start[static_cast<size_t>(stage) + 1];
  if (start_step < first || end_step > last || start_step > end_step) {
    return absl::InvalidArgumentError(absl::StrCat("shard assignment: steps [", start_step, ", ",
                                                   end_step, ") are not inside stage ", stage,
                                                   "'s [", first, ", ", last, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DataPlanOptions> JobDataPlanOptions(const v1::JobSpec& spec) {
  int64_t max_seq_len = 0;
  for (const v1::CurriculumStage& stage : spec.curriculum()) {
    max_seq_len = std::max(max_seq_len, stage.seq_len());
  }
  const std::optional<int64_t> window_tokens = CheckedAdd(max_seq_len, 1);
  const std::optional<int64_t> block_tokens =
      window_tokens ? CheckedMul(8, *window_tokens) : std::nullopt;
  if (!block_tokens) {
    return absl::InvalidArgumentError("8 x (longest seq_len + 1) does not fit in a 64-bit integer");
  }
  // Blocks several windows long, so held-out blocks cost little context.
  return DataPlanOptions{.seed = spec.seed(),
                         .validation_fraction = spec.data().validation_fraction(),
                         .block_tokens = *block_tokens};
}

absl::StatusOr<v1::DataAssignment> PlanShardAssignment(const v1::JobSpec& spec, int stage,
                                                       int64_t start_step, int64_t end_step,
                                                       int rank, int world_size) {
  QTRAIN_ASSIGN_OR_RETURN(const std::vector<int64_t> stage_start, StageStartSteps(spec));
  QTRAIN_RETURN_IF_ERROR(
      CheckRange(spec, stage_start, stage, start_step, end_step, rank, world_size));
  const v1::CurriculumStage& s = spec.curriculum(stage);
  const int64_t seq_len = s.seq_len();
  // ValidateJobSpec refuses these; a planner must not divide by them all the same.
  if (seq_len <= 0 || s.micro_batch() <= 0 || spec.batch().global_tokens() < seq_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard assignment: stage '", s.name(), "' has seq_len ", seq_len,
                     " and micro_batch ", s.micro_batch(), " with batch.global_tokens ",
                     spec.batch().global_tokens(), "; validate the spec first"));
  }
  const int64_t windows_per_step = spec.batch().global_tokens() / seq_len;
  if (windows_per_step % world_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard assignment: stage '", s.name(), "' takes ", windows_per_step,
                     " windows a step, which ", world_size, " workers cannot share evenly"));
  }
  const int64_t per_rank = windows_per_step / world_size;
  const int64_t total_steps = stage_start.back();
  const int64_t every = spec.eval().every_steps();
  // Evaluations after the steps (start_step, end_step], and the final one of the job.
  const bool evaluates =
      spec.eval().batches() > 0 &&
      (end_step == total_steps || (every > 0 && end_step / every > start_step / every));
  const std::optional<int64_t> eval_windows =
      evaluates ? CheckedMul(spec.eval().batches(), s.micro_batch()) : int64_t{0};
  const std::optional<int64_t> train_windows = CheckedMul(end_step - start_step, per_rank);
  const std::optional<int64_t> windows =
      eval_windows && train_windows ? CheckedAdd(*eval_windows, *train_windows) : std::nullopt;
  if (!windows || *windows > kMaxAssignmentWindows) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "shard assignment: steps [", start_step, ", ", end_step, ") of stage '", s.name(),
        "' take more than ", kMaxAssignmentWindows, " windows; assign fewer steps at a time"));
  }

  const std::string& manifest_path = spec.data().manifest();
  QTRAIN_ASSIGN_OR_RETURN(const std::string text,
                          ReadFileToString(manifest_path, tokenizer::kMaxManifestBytes));
  QTRAIN_ASSIGN_OR_RETURN(const tokenizer::ShardManifest manifest,
                          tokenizer::ShardManifest::FromJson(text, manifest_path));
  // The manifest parser bounds the sum of the token counts by 2^63 - 1.
  std::vector<int64_t> starts{0};
  for (const tokenizer::ShardInfo& shard : manifest.shards) {
    starts.push_back(starts.back() + static_cast<int64_t>(shard.num_tokens));
  }
  const int64_t total_tokens = starts.back();
  QTRAIN_ASSIGN_OR_RETURN(const DataPlanOptions plan_options, JobDataPlanOptions(spec));
  QTRAIN_ASSIGN_OR_RETURN(const DataPlan plan, DataPlan::Create(total_tokens, plan_options));
  if (plan.TrainingWindowCount(seq_len) < windows_per_step) {
    return absl::FailedPreconditionError(
        absl::StrCat("curriculum[", stage, "]: the data has ", plan.TrainingWindowCount(seq_len),
                     " training windows of ", seq_len, " tokens, fewer than one global batch (",
                     windows_per_step, ")"));
  }

  std::vector<bool> touched(manifest.shards.size(), false);
  const auto mark = [&](const Window& w) { MarkShards(starts, w, touched); };
  QTRAIN_RETURN_IF_ERROR(plan.ForEachTrainingWindow(
      stage, seq_len, windows_per_step, start_step - stage_start[static_cast<size_t>(stage)],
      end_step - stage_start[static_cast<size_t>(stage)], rank, world_size, mark));
  if (*eval_windows > 0) {
    QTRAIN_ASSIGN_OR_RETURN(const std::vector<Window> validation,
                            plan.ValidationWindows(seq_len, *eval_windows));
    for (const Window& w : validation) mark(w);
  }

  v1::DataAssignment data;
  data.set_manifest_sha256(Sha256Hex(text));
  data.set_total_tokens(total_tokens);
  data.set_windows_per_step(windows_per_step);
  data.set_windows_per_rank(per_rank);
  data.set_seq_len(seq_len);
  for (size_t k = 0; k < manifest.shards.size(); ++k) {
    if (!touched[k]) continue;
    v1::AssignedShard* shard = data.add_shards();
    shard->set_index(static_cast<int64_t>(k));
    shard->set_path(manifest.shards[k].file);
    shard->set_tokens(static_cast<int64_t>(manifest.shards[k].num_tokens));
    shard->set_sha256(manifest.shards[k].sha256);
    shard->set_first_token(starts[k]);
  }
  return data;
}

}  // namespace qtrain::train
