// The checkpoints of a Trainer: the store, what a checkpoint's metadata must say, resume (at any
// world size), and the write protocol of a group (sharded_checkpoint.h).
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "worker/model/checkpoint_io.h"
#include "worker/train/checkpoint_store.h"
#include "worker/train/sharded_checkpoint.h"
#include "worker/train/spec_change.h"
#include "worker/train/trainer_state.h"

namespace qtrain::train {
namespace {

// What model::SaveCheckpoint writes: a checkpoint lacking any of them is damaged. The optimizer
// state's files are named by the metadata (sharded_checkpoint.h) and checked with it.
const std::vector<std::string>& RequiredCheckpointFiles() {
  static const auto* files = new std::vector<std::string>{"config.json", "model.safetensors"};
  return *files;
}

// metadata[key] as an int64 (DATA_LOSS when missing, not an integer, or out of range).
absl::StatusOr<int64_t> MetadataInt(const nlohmann::json& m, const char* key) {
  const auto it = m.find(key);
  if (it == m.end()) return absl::DataLossError(absl::StrCat("metadata.", key, " is missing"));
  if (it->is_number_unsigned() && it->get<uint64_t>() > uint64_t{INT64_MAX}) {
    return absl::DataLossError(absl::StrCat("metadata.", key, " ", it->dump(), " is out of range"));
  }
  if (!it->is_number_integer()) {
    return absl::DataLossError(
        absl::StrCat("metadata.", key, " is ", it->dump(), ", not an integer"));
  }
  return it->get<int64_t>();
}

bool IsSha256Hex(const nlohmann::json& value) {
  if (!value.is_string()) return false;
  const std::string& s = value.get_ref<const std::string&>();
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// A failure to load a checkpoint's (verified) files means the checkpoint is unusable; running
// out of memory does not.
absl::Status AsDamage(const absl::Status& status, absl::string_view what) {
  if (status.ok() || absl::IsResourceExhausted(status)) return status;
  return absl::DataLossError(absl::StrCat(what, ": ", status.message()));
}

}  // namespace

// Rank 0 opens the store as its writer (removing what an interrupted run left) before the
// others open it to read: the first collective orders the two.
absl::Status Trainer::State::OpenStore() {
  const std::string root = options.run_dir + "/checkpoints";
  CheckpointStoreOptions store_options{.required_files = RequiredCheckpointFiles(),
                                       .validate_metadata = [this](const CheckpointInfo& info) {
                                         return ValidateCheckpointMetadata(info);
                                       }};
  if (lead()) {
    QTRAIN_ASSIGN_OR_RETURN(CheckpointStore opened,
                            CheckpointStore::Open(root, std::move(store_options)));
    store.emplace(std::move(opened));
    QTRAIN_RETURN_IF_ERROR(RemoveShardStaging(root));
  }
  QTRAIN_RETURN_IF_ERROR(comm->Barrier());
  if (!lead()) {
    store_options.read_only = true;
    QTRAIN_ASSIGN_OR_RETURN(CheckpointStore opened,
                            CheckpointStore::Open(root, std::move(store_options)));
    store.emplace(std::move(opened));
  }
  return absl::OkStatus();
}

// The manifest's trainer state must agree with itself, the directory and this job: a checkpoint
// that claims another step, stage or token count than its step implies is damaged.
absl::Status Trainer::State::ValidateCheckpointMetadata(const CheckpointInfo& info) const {
  const nlohmann::json& m = info.metadata;
  const auto plan_it = m.find("data_plan_sha256");
  if (plan_it == m.end() || !IsSha256Hex(*plan_it)) {
    return absl::DataLossError("metadata.data_plan_sha256 is missing or not a sha256");
  }
  if (*plan_it != plan_sha256) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", info.directory,
                     " was trained with another data plan (different data, "
                     "seed, or curriculum); use a new run directory"));
  }
  QTRAIN_ASSIGN_OR_RETURN(const int64_t ckpt_step, MetadataInt(m, "step"));
  if (ckpt_step != info.step) {
    return absl::DataLossError(
        absl::StrCat("metadata.step ", ckpt_step, " does not match the checkpoint's ", info.step));
  }
  if (ckpt_step < 0 || ckpt_step > total_steps) {
    return absl::DataLossError(
        absl::StrCat("metadata.step ", ckpt_step, " is outside the job's 0-", total_steps));
  }
  QTRAIN_ASSIGN_OR_RETURN(const int64_t stage, MetadataInt(m, "stage"));
  if (stage != StageOf(ckpt_step)) {
    return absl::DataLossError(absl::StrCat("metadata.stage ", stage, " is not the stage of step ",
                                            ckpt_step, " (", StageOf(ckpt_step), ")"));
  }
  QTRAIN_ASSIGN_OR_RETURN(const int64_t tokens, MetadataInt(m, "tokens_seen"));
  const int64_t expected_tokens = ckpt_step * global_tokens;  // <= total tokens, checked in Create
  if (tokens != expected_tokens) {
    return absl::DataLossError(absl::StrCat("metadata.tokens_seen ", tokens, " is not step ",
                                            ckpt_step, " x batch.global_tokens ", global_tokens,
                                            " = ", expected_tokens));
  }
  QTRAIN_ASSIGN_OR_RETURN(const int64_t skipped, MetadataInt(m, "skipped_steps"));
  if (skipped < 0 || skipped > ckpt_step) {
    return absl::DataLossError(
        absl::StrCat("metadata.skipped_steps ", skipped, " is outside 0-", ckpt_step));
  }
  QTRAIN_ASSIGN_OR_RETURN(const int64_t in_a_row, MetadataInt(m, "consecutive_nonfinite_steps"));
  if (in_a_row < 0 || in_a_row > skipped) {
    return absl::DataLossError(absl::StrCat("metadata.consecutive_nonfinite_steps ", in_a_row,
                                            " is outside 0-", skipped, " (the skipped steps)"));
  }
  const auto name_it = m.find("job_name");
  if (name_it == m.end() || !name_it->is_string()) {
    return absl::DataLossError("metadata.job_name is missing or not a string");
  }
  const auto spec_it = m.find("spec");
  const auto spec_sha_it = m.find("spec_sha256");
  if (spec_it == m.end() || !spec_it->is_object() || spec_sha_it == m.end() ||
      !IsSha256Hex(*spec_sha_it)) {
    return absl::DataLossError("metadata lacks the job spec ('spec', 'spec_sha256')");
  }
  if (*spec_sha_it != TrainingSpecSha256(*spec_it)) {
    return absl::DataLossError("metadata.spec does not match metadata.spec_sha256");
  }
  return ValidateShardMetadata(info, layout->total_size(), ckpt_step - skipped);
}

// An explicit resume point is found by every rank; otherwise rank 0 picks the newest good
// checkpoint and tells the others (every rank then loads it, each its own shard of the moments).
absl::Status Trainer::State::Resume() {
  if (!options.resume_from_step) return ResumeFromNewest();
  const int64_t wanted = *options.resume_from_step;
  if (wanted < 0) {
    Event("starting from the initialization (checkpoints in the run directory are not used)");
    return absl::OkStatus();
  }
  QTRAIN_ASSIGN_OR_RETURN(std::vector<int64_t> steps, store->ListSteps());
  if (std::find(steps.begin(), steps.end(), wanted) == steps.end()) {
    return absl::NotFoundError(absl::StrCat("checkpoint of step ", wanted, " not found: ",
                                            store->DirectoryFor(wanted), " does not exist"));
  }
  return ResumeFrom(wanted);
}

absl::Status Trainer::State::ResumeFromNewest() {
  int64_t chosen = -1;  // -1: a fresh start
  if (lead()) {
    QTRAIN_ASSIGN_OR_RETURN(chosen, PickNewest());
  }
  QTRAIN_RETURN_IF_ERROR(comm->Broadcast(std::as_writable_bytes(std::span(&chosen, 1)), 0));
  if (lead() || chosen < 0) return absl::OkStatus();  // rank 0 has loaded it already
  return ResumeFrom(chosen);
}

// Rank 0: the newest checkpoint that loads (its own shard of it), skipping damaged ones.
absl::StatusOr<int64_t> Trainer::State::PickNewest() {
  QTRAIN_ASSIGN_OR_RETURN(std::vector<int64_t> steps, store->ListSteps());
  for (int64_t checkpoint_step : steps) {
    const absl::Status resumed = ResumeFrom(checkpoint_step);
    if (resumed.ok()) return checkpoint_step;
    if (!absl::IsDataLoss(resumed)) return resumed;
    Event(absl::StrCat("skipping damaged ", resumed.message()));
    QTRAIN_RETURN_IF_ERROR(ResetState());
  }
  return -1;
}

// A failed load may have written part of the weights or moments: start them over.
absl::Status Trainer::State::ResetState() {
  QTRAIN_RETURN_IF_ERROR(InitializeParams());
  QTRAIN_ASSIGN_OR_RETURN(Optimizer fresh, MakeOptimizer());
  optimizer.emplace(std::move(fresh));
  return absl::OkStatus();
}

absl::Status Trainer::State::ResumeFrom(int64_t checkpoint_step) {
  QTRAIN_ASSIGN_OR_RETURN(CheckpointInfo info, store->Verify(checkpoint_step));
  const nlohmann::json& m = info.metadata;  // validated by ValidateCheckpointMetadata
  absl::StatusOr<std::vector<SpecChange>> changes =
      CheckSpecChanges(m["spec"], spec_json, options.allowed_spec_changes);
  if (!changes.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", info.directory, ": ", changes.status().message()));
  }
  const auto damaged = [&](absl::string_view what) {
    return absl::StrCat("checkpoint ", info.directory, ": ", what);
  };
  const model::ModelConfig& config =
      stage_configs[StageOf(std::max<int64_t>(checkpoint_step - 1, 0))];
  QTRAIN_RETURN_IF_ERROR(AsDamage(model::LoadWeights(info.directory, config, params),
                                  damaged("cannot load the weights")));
  const int64_t skipped = m["skipped_steps"].get<int64_t>();
  const int64_t updates = checkpoint_step - skipped;
  if (HasShardedOptimizer(info)) {
    // Every rank checks every shard's header, so that all of them accept or skip a checkpoint
    // alike; then, whatever world size wrote it, this rank reads its range from the files that
    // overlap it.
    for (const OptimizerShardFile& file : OptimizerShardFiles(info)) {
      QTRAIN_RETURN_IF_ERROR(AsDamage(CheckOptimizerShard(file, layout->total_size(), updates),
                                      damaged("bad optimizer shard")));
    }
    QTRAIN_RETURN_IF_ERROR(AsDamage(optimizer->LoadShards(OptimizerShardFiles(info), updates),
                                    damaged("cannot load the optimizer state")));
  } else {
    QTRAIN_RETURN_IF_ERROR(
        AsDamage(optimizer->LoadSingleFile(info.directory + "/" + kSingleFileOptimizer),
                 damaged("cannot load the optimizer state")));
    if (optimizer->step_count() != updates) {
      return absl::DataLossError(
          damaged(absl::StrCat(kSingleFileOptimizer, " has taken ", optimizer->step_count(),
                               " updates, the trainer state says ", updates, " (step ",
                               checkpoint_step, " less ", skipped, " skipped)")));
    }
  }
  // fp16's loss scale where it was (checkpoints written before loss scaling have none: the
  // scaler keeps its start).
  if (m.contains("loss_scale")) {
    const nlohmann::json& scale = m["loss_scale"];
    const nlohmann::json* good =
        m.contains("loss_scale_good_steps") ? &m["loss_scale_good_steps"] : nullptr;
    if (!scale.is_number() || good == nullptr || !good->is_number_integer()) {
      return absl::DataLossError(damaged("metadata.loss_scale or loss_scale_good_steps is bad"));
    }
    QTRAIN_RETURN_IF_ERROR(AsDamage(loss_scaler.Restore(scale.get<double>(), good->get<int64_t>()),
                                    damaged("bad loss scale state")));
  }
  step = checkpoint_step;
  tokens_seen = m["tokens_seen"].get<int64_t>();
  skipped_steps = skipped;
  consecutive_nonfinite = m["consecutive_nonfinite_steps"].get<int64_t>();
  Event(absl::StrCat("resumed from ", info.directory, " (step ", step, " of ", total_steps, ")"));
  for (const SpecChange& change : *changes) {
    Event(absl::StrCat("spec changed since the checkpoint: ", change.Describe()));
  }
  return absl::OkStatus();
}

absl::Status Trainer::State::MaybeCheckpoint(int stage_index, int64_t stop_at) {
  const bool stage_ends = step == stage_start[stage_index + 1];
  const int64_t every = spec.checkpoint().every_steps();
  if ((every > 0 && step % every == 0) || stage_ends || step == stop_at) {
    return SaveCheckpoint();
  }
  return absl::OkStatus();
}

// The write protocol of a group (sharded_checkpoint.h): ranks > 0 stage their optimizer shard,
// then rank 0 writes the model and its shard, adopts the staged shards and commits; its verdict
// (1 committed, 0 failed) is broadcast, and every rank reports the files it wrote.
absl::Status Trainer::State::SaveCheckpoint() {
  Phase(TrainerPhase::kCheckpointing);
  double staged_seconds = 0;
  if (!lead()) {
    const Clock::time_point start = Clock::now();
    QTRAIN_RETURN_IF_ERROR(
        StageOptimizerShard(*optimizer, store->root(), step, options.rank, options.world_size));
    staged_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    Fault("checkpoint_written");
  }
  QTRAIN_RETURN_IF_ERROR(comm->Barrier());
  QTRAIN_ASSIGN_OR_RETURN(CheckpointInfo info, lead() ? CommitCheckpoint() : AwaitCommit());
  if (!lead()) info.write_seconds = staged_seconds;
  Event(absl::StrCat("checkpoint at step ", step, ": ", info.directory));
  if (options.on_checkpoint) {
    CheckpointInfo own = info;
    own.files = FilesWrittenBy(info.files, options.rank, options.world_size);
    QTRAIN_RETURN_IF_ERROR(options.on_checkpoint(own));
  }
  if (lead() && options.apply_retention) {
    QTRAIN_RETURN_IF_ERROR(store->ApplyRetention(spec.checkpoint().keep_last()));
  }
  Phase(TrainerPhase::kTraining);
  return absl::OkStatus();
}

// Rank 0: the checkpoint, committed, and the verdict sent to the others.
absl::StatusOr<CheckpointInfo> Trainer::State::CommitCheckpoint() {
  const auto commit = [&]() -> absl::StatusOr<CheckpointInfo> {
    QTRAIN_ASSIGN_OR_RETURN(CheckpointWriter writer, store->Begin(step));
    QTRAIN_RETURN_IF_ERROR(SyncHostParams());
    QTRAIN_RETURN_IF_ERROR(
        model::SaveCheckpoint(writer.directory(), model->config(), HostParams()));
    QTRAIN_RETURN_IF_ERROR(
        optimizer->Save(writer.PathFor(OptimizerShardFileName(0, options.world_size))));
    QTRAIN_RETURN_IF_ERROR(
        AdoptStagedShards(store->root(), step, options.world_size, writer.directory()));
    Fault("checkpoint_written");
    return writer.Commit(CheckpointMetadata());
  };
  const Clock::time_point start = Clock::now();
  absl::StatusOr<CheckpointInfo> info = commit();
  if (info.ok()) info->write_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  char verdict = info.ok() ? 1 : 0;
  const absl::Status sent =
      comm->Broadcast(std::as_writable_bytes(std::span(&verdict, 1)), /*root=*/0);
  if (!info.ok()) return info.status();
  QTRAIN_RETURN_IF_ERROR(sent);
  return info;
}

// Ranks > 0: rank 0's verdict, and the committed checkpoint's manifest.
absl::StatusOr<CheckpointInfo> Trainer::State::AwaitCommit() {
  char verdict = 0;
  QTRAIN_RETURN_IF_ERROR(comm->Broadcast(std::as_writable_bytes(std::span(&verdict, 1)), 0));
  if (verdict != 1) {
    return absl::AbortedError(absl::StrCat("rank 0 could not commit checkpoint ", step));
  }
  const std::string dir = store->DirectoryFor(step);
  QTRAIN_ASSIGN_OR_RETURN(std::string manifest,
                          ReadFileToString(dir + "/" + CheckpointStore::kManifestName));
  return ParseCheckpointManifest(manifest, dir, step);
}

nlohmann::json Trainer::State::CheckpointMetadata() const {
  nlohmann::json metadata = {{"step", step},
                             {"stage", StageOf(step)},
                             {"tokens_seen", tokens_seen},
                             {"skipped_steps", skipped_steps},
                             {"consecutive_nonfinite_steps", consecutive_nonfinite},
                             {"loss_scale", loss_scaler.scale()},
                             {"loss_scale_good_steps", loss_scaler.good_steps()},
                             {"data_plan_sha256", plan_sha256},
                             {"job_name", spec.name()},
                             {"spec", spec_json},
                             {"spec_sha256", training_spec_sha256}};
  metadata.update(ShardMetadata(*shards, optimizer->step_count()));
  return metadata;
}

}  // namespace qtrain::train
