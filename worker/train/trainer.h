// The training loop of one process: curriculum stages, gradient accumulation, AdamW with the
// schedule, clipping and non-finite skipping, evaluation, checkpoints and exact resume.
//
//   QTRAIN_ASSIGN_OR_RETURN(Trainer trainer, Trainer::Create(spec, config, data, options));
//   QTRAIN_RETURN_IF_ERROR(trainer.Run());
//
// Run directory layout:
//   qtrain.lock                      held (flock) by the process training into the directory
//   job.json                         the spec as run
//   checkpoints/step-NNNNNNNNNNNN/   model (transformers format), the optimizer state as one
//                                    file per rank (optimizer-RRRRR-of-WWWWW.safetensors: the
//                                    AdamW moments of the rank's ZeRO-1 shard), manifest (with
//                                    the trainer state, the world size, the shard layout and
//                                    the spec trained with)
//   checkpoints/.shards-step-N/      ranks > 0 stage their optimizer shards here; rank 0 moves
//                                    them into the checkpoint it commits
//   metrics.jsonl                    one JSON object per step (with its evaluation's loss), and
//                                    one {"event": "eval_task", ...} per eval.tasks result
//   final/                           the exported model (config.json, model.safetensors)
//
// Everything the future of a run depends on is in its checkpoint (weights, AdamW moments and
// step count, job step, tokens seen, skip counters) or a pure function of the spec and the data
// (the data plan, the learning rate, the stage), so a run killed at any point and resumed ends
// with the same bytes as one that never stopped (CPU backend, at any thread count).
#ifndef QTRAIN_WORKER_TRAIN_TRAINER_H_
#define QTRAIN_WORKER_TRAIN_TRAINER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/run_dir_lock.h"
#include "kernels/ops.h"
#include "qtrain/v1/jobs.pb.h"
#include "tokenizer/tokenizer.h"
#include "worker/comm/communicator.h"
#include "worker/model/config.h"
#include "worker/train/checkpoint_store.h"
#include "worker/train/token_source.h"

namespace qtrain::train {

struct StepReport {
  int stage = 0;
  std::string stage_name;
  int64_t step = 0;  // optimizer steps completed in the job
  int64_t total_steps = 0;
  double loss = 0;
  double learning_rate = 0;
  double grad_norm = 0;
  bool skipped = false;
  int64_t skipped_total = 0;
  int64_t tokens_seen = 0;
  double tokens_per_second = 0;  // since this process started training
  double eta_seconds = 0;
  double step_seconds = 0;
  double data_seconds = 0;  // of step_seconds, spent reading tokens
  double comm_seconds = 0;  // of step_seconds, spent in collectives (waiting included)
  std::optional<double> eval_loss;
};

enum class TrainerPhase { kTraining, kEvaluating, kCheckpointing };

struct TrainerOptions {
  std::string run_dir;
  // The caller's lock on run_dir, taken before it touched the directory. When null, Run() takes
  // the lock itself for its duration (and fails if another holder has it).
  std::shared_ptr<const RunDirLock> run_dir_lock;
  // Spec fields that may differ from the checkpoint's spec on resume besides the bookkeeping
  // ones (see spec_change.h), e.g. "optimizer.lr".
  std::vector<std::string> allowed_spec_changes;
  // Called after every step (progress display). Optional.
  std::function<void(const StepReport&)> on_step;
  // Called for events worth a log line (resume, stage start, checkpoint, skipped checkpoint).
  std::function<void(const std::string&)> on_event;
  // Stop (returning OK) once this many steps are complete; 0: run to the end. For tests and
  // for running a job in pieces.
  int64_t stop_after_step = 0;
  // Test hook: sees the gradients of every step before the optimizer does (this rank's reduced
  // shard of them: all of them in a group of one; with precision fp16, times the loss scale).
  std::function<void(int64_t step, std::span<float> grads)> gradient_hook;
  // Fault injection for tests (a hook may kill the process): called at "step_done" (after step
  // `step` is logged, before its checkpoint) and "checkpoint_written" (a checkpoint's files are
  // written, not yet committed).
  std::function<void(std::string_view point, int64_t step)> fault_hook;

  // Where Run() starts. Unset: from the newest checkpoint in the run directory that verifies
  // (skipping damaged ones), or from the initialization when there is none. -1: from the
  // initialization, whatever the directory holds. N >= 0: from checkpoint step N exactly,
  // NOT_FOUND when it is absent, DATA_LOSS when it does not verify.
  std::optional<int64_t> resume_from_step;
  // This process's place in a data-parallel group, and the group's collectives
  // (communicator->rank() / world_size() must match). Required when world_size > 1; with
  // world_size 1 and none given, the trainer uses a group of one. Every rank of a group runs
  // Run() with the same spec, data and resume point. Rank 0 alone takes the run directory's
  // lock, writes job.json, metrics.jsonl, the model files of each checkpoint and final/; every
  // rank writes its own optimizer shard (see the checkpoint layout above). The trainer calls
  // communicator->Abort() when it stops on an error, so that its peers fail fast.
  int rank = 0;
  int world_size = 1;
  comm::Communicator* communicator = nullptr;
  // The ZeRO-1 layout's block size (comm/shard_layout.h), which also fixes the gradient norm's
  // summation order: every run of a job must use the same. Tests shrink it so that a tiny model
  // spans every rank.
  int64_t shard_block_elements = comm::kDefaultBlockElements;
  // Asked between steps (before each one); true stops Run() with CANCELLED "training cancelled
  // at step N". Optional.
  std::function<bool()> cancelled;
  // Called on every rank once a checkpoint is committed to disk (before retention), with
  // info.files holding only the files this rank wrote (rank 0: config.json,
  // model.safetensors and its optimizer shard; rank r: its shard). A non-OK status stops Run()
  // with that status. Optional.
  std::function<absl::Status(const CheckpointInfo&)> on_checkpoint;
  // Called when the trainer starts evaluating or writing a checkpoint, and when it goes back to
  // training. Optional.
  std::function<void(TrainerPhase)> on_phase;
  // The spec's eval.tasks (worker/eval/eval.h) run on rank 0 after each stage's last step,
  // before its checkpoint (trainer_eval.cc says why), each result a metrics.jsonl record. Their
  // tokenizer: this one when given (it must outlive Run()), else spec.tokenizer() is read.
  const tokenizer::Tokenizer* tokenizer = nullptr;
  // Called on rank 0 with the results of a stage end's tasks (final: the job's last step).
  // Optional.
  std::function<void(const std::vector<v1::EvalTaskResult>&)> on_eval_tasks;
  // Delete old checkpoints after each one (checkpoint.keep_last). A service run leaves that to
  // its coordinator, which knows which ones are committed.
  bool apply_retention = true;
  // Where the model runs: null (or kernels::CpuBackend()) for world.device cpu, a CUDA backend
  // (training_backend.h; the worker's training child makes it) for world.device cuda; it must
  // outlive Run(). The precision of the spec picks the model's compute dtype (bf16 or fp16
  // weights and activations over fp32 master weights). With a backend other than the CPU one,
  // the model's parameters and gradients live in that backend's memory, and a step is one of:
  // - device-resident, at world_size 1 or with a device_communicator: the micro-batches' tree
  //   sum, the reduce-scatter, the per-block sums of the norm, AdamW on the ZeRO-1 shard (its
  //   moments in backend memory; at world_size 1 it also rewrites the 16-bit working copy) and
  //   the all-gather of the parameters all stay in backend memory. Only the block sums and the
  //   loss sums (a few KB) reach the host, for `communicator`; the parameters and moments are
  //   copied to the host for checkpoints and stage changes only.
  // - host-staged, at world_size > 1 without a device_communicator: each micro-batch's gradient
  //   is copied to the host, where the accumulation, `communicator`'s collectives, the norm,
  //   AdamW and the checkpoints run as on the CPU, and the updated parameters are copied back
  //   after each step.
  // Both compute the same bits as the CPU backend would from the backend's op results.
  kernels::Backend* backend = nullptr;
  // The collectives over backend memory for the device-resident step at world_size > 1
  // (comm::NcclCommunicator): the gradient's reduce-scatter and the parameters' all-gather. Its
  // rank and world size must be `communicator`'s, which still carries everything else (norms,
  // losses, checkpoint votes). Optional; it must outlive Run(); the trainer aborts it with
  // `communicator` when it stops on an error.
  comm::Communicator* device_communicator = nullptr;
};

struct TrainerSummary {
  int64_t steps = 0;
  int64_t tokens_seen = 0;
  int64_t skipped_steps = 0;
  bool completed = false;
  std::optional<double> final_eval_loss;
  // Entropy (nats) of the unigram distribution of the final evaluation's target tokens: the
  // loss of the best model that ignores context, on the same tokens. Rank 0 only.
  std::optional<double> validation_unigram_entropy;
  std::string final_dir;  // set when completed
};

class Trainer {
 public:
  // `spec` must be valid (ValidateJobSpec); `base_config` is its model; `initial_params`, when
  // given, replaces the seeded initialization (model.init_from).
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(
      const v1::JobSpec& spec, const model::ModelConfig& base_config,
      std::optional<std::vector<float>> initial_params, const TokenSource& data,
      TrainerOptions options);
  ~Trainer();

  // Trains from options.resume_from_step (by default the newest good checkpoint in the run
  // directory, or from scratch) to the end of the job, or to options.stop_after_step (which
  // gets a checkpoint). Create and Run call options.communicator->Abort() when they fail.
  absl::StatusOr<TrainerSummary> Run();

  // The model configuration of stage `stage` (RoPE base and YaRN applied). INVALID_ARGUMENT
  // when the YaRN-scaled position count does not fit in int64.
  static absl::StatusOr<model::ModelConfig> StageConfig(const model::ModelConfig& base,
                                                        const v1::CurriculumStage& stage);

  struct State;

 private:
  Trainer() = default;
  std::unique_ptr<State> state_;
};

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_TRAINER_H_
