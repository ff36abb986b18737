// The state of a Trainer (trainer.h) and its steps, shared by the files that implement it:
// trainer.cc (setup, the training steps, evaluation, the end), trainer_checkpoint.cc (the
// checkpoint store, resume, and the checkpoint write protocol of a group) and trainer_eval.cc
// (the benchmark tasks of eval.tasks). Not an interface.
#ifndef QTRAIN_WORKER_TRAIN_TRAINER_STATE_H_
#define QTRAIN_WORKER_TRAIN_TRAINER_STATE_H_

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "qtrain/v1/jobs.pb.h"
#include "worker/comm/communicator.h"
#include "worker/comm/shard_layout.h"
#include "worker/comm/tree_sum.h"
#include "worker/eval/eval.h"
#include "worker/model/model.h"
#include "worker/model/param_layout.h"
#include "worker/train/checkpoint_store.h"
#include "worker/train/data_plan.h"
#include "worker/train/device_accumulator.h"
#include "worker/train/loss_scale.h"
#include "worker/train/lr_schedule.h"
#include "worker/train/metrics_log.h"
#include "worker/train/optimizer.h"
#include "worker/train/trainer.h"

namespace qtrain::train {

using Clock = std::chrono::steady_clock;

struct Trainer::State {
  v1::JobSpec spec;
  nlohmann::json spec_json;  // JobSpecToJson(spec), stored in every checkpoint
  std::string training_spec_sha256;
  model::ModelConfig base_config;
  std::vector<model::ModelConfig> stage_configs;  // StageConfig of each stage
  std::optional<std::vector<float>> initial_params;
  const TokenSource* data = nullptr;
  TrainerOptions options;

  std::optional<DataPlan> plan;
  std::string plan_sha256;
  std::vector<int64_t> stage_start;  // first job step of each stage; back() = total steps
  int64_t total_steps = 0;
  int64_t global_tokens = 0;
  LrScheduleParams schedule;
  // Rank 0: eval.tasks converted and checked (trainer_eval.cc), and the tokenizer they use.
  std::vector<eval::TaskOptions> eval_tasks;
  std::unique_ptr<tokenizer::Tokenizer> own_tokenizer;
  const tokenizer::Tokenizer* eval_tokenizer = nullptr;

  // Where the run is.
  int64_t step = 0;
  int64_t tokens_seen = 0;
  int64_t skipped_steps = 0;
  int64_t consecutive_nonfinite = 0;
  LossScaler loss_scaler;  // precision fp16; off (scale 1) otherwise
  double last_loss = NAN;
  std::optional<double> last_eval_loss;

  // What one Run() holds (Setup() to Release()).
  std::shared_ptr<const RunDirLock> lock;
  std::optional<CheckpointStore> store;
  std::optional<model::ParameterLayout> layout;
  // The host copy of the parameters: between stages and on resume; with a device backend, the
  // master copy the optimizer updates (the model's are copies of it, see HostParams).
  std::vector<float> params;
  kernels::Backend* backend = nullptr;  // options.backend, or the CPU backend
  kernels::DType compute_dtype = kernels::DType::kFloat32;
  std::vector<float> host_grads;  // host-staged step: the micro-batch's gradient, then the sum
  // The device-resident step (trainer.h, TrainerOptions::backend): after a step, `params` is
  // stale until SyncHostParams copies the model's (for a checkpoint or a stage change).
  bool host_params_stale = false;
  comm::Communicator* device_comm = nullptr;                // options.device_communicator
  std::optional<DeviceTreeAccumulator> device_accumulator;  // the micro-batches' sum
  model::Buffer<float> device_grad_shard;   // a group of more than one: the reduced shard
  model::Buffer<double> device_block_sums;  // the shard's block sums of squares
  std::vector<double> block_sums;           // ... copied to the host for `comm`
  std::optional<Optimizer> optimizer;
  std::optional<MetricsLog> metrics;  // rank 0
  std::unique_ptr<model::Model> model;
  int model_stage = -1;
  // The group: options.communicator, or a group of one.
  std::unique_ptr<comm::Communicator> own_comm;
  comm::Communicator* comm = nullptr;
  std::optional<comm::ShardLayout> shards;                  // the ZeRO-1 layout of the parameters
  std::vector<float> grad_shard;                            // this rank's reduced gradient
  std::optional<comm::TreeAccumulator<float>> accumulator;  // the micro-batches' sum
  std::vector<double> micro_batch_losses;
  Clock::time_point started;
  int64_t tokens_this_process = 0;
  std::vector<int32_t> ids, targets, scratch;

  // One optimizer step's outcome, for the report.
  struct StepResult {
    Clock::time_point start;
    Clock::duration data_time{};
    Clock::duration comm_time{};
    double loss = 0;
    double learning_rate = 0;
    double loss_scale = 1;  // the step's (fp16)
    StepStats stats;
  };

  int StageOf(int64_t job_step) const {
    int stage = 0;
    while (stage + 1 < spec.curriculum_size() && job_step >= stage_start[stage + 1]) ++stage;
    return stage;
  }
  void Event(const std::string& text) const {
    if (options.on_event) options.on_event(text);
  }
  void Fault(std::string_view point) const {
    if (options.fault_hook) options.fault_hook(point, step);
  }
  void Phase(TrainerPhase phase) const {
    if (options.on_phase) options.on_phase(phase);
  }
  bool lead() const { return options.rank == 0; }
  int64_t shard_begin() const { return shards->ShardBegin(options.rank); }
  // Whether the model's memory is host memory (the CPU backend): the trainer then works on the
  // model's own buffers; otherwise on host copies (TrainerOptions::backend).
  bool model_on_host() const { return backend == &kernels::CpuBackend(); }
  // Whether the step stays in backend memory: a device backend in a group of one, or with a
  // device communicator (trainer.h).
  bool device_step() const {
    return !model_on_host() && (options.world_size == 1 || device_comm != nullptr);
  }
  // The parameters the optimizer updates and checkpoints save: the model's, or the host copy.
  std::span<float> HostParams() { return model_on_host() ? model->params() : std::span(params); }
  // The gradient the collectives reduce: the model's, or host_grads (see CopyGradsToHost).
  std::span<float> HostGrads() { return model_on_host() ? model->grads() : std::span(host_grads); }
  // Device backend: the model's gradient into host_grads (a no-op on the CPU backend).
  absl::Status CopyGradsToHost();
  // Device backend: the host parameters into the model (a no-op on the CPU backend).
  absl::Status CopyParamsToModel();
  // Device-resident step: the model's parameters into `params` when they are stale.
  absl::Status SyncHostParams();
  std::span<float> param_shard() {
    return HostParams().subspan(static_cast<size_t>(shard_begin()), grad_shard.size());
  }
  // Runs a collective, adding its time to `time`.
  template <typename Op>
  absl::Status Timed(Clock::duration& time, Op op) {
    const Clock::time_point start = Clock::now();
    absl::Status status = op();
    time += Clock::now() - start;
    return status;
  }

  // Run() in order: Setup, then per step EnterStage (on a stage change), TrainStep, Report,
  // RunEvalTasks (at a stage's end), MaybeCheckpoint; then Finish.
  absl::Status Setup();
  absl::Status EnterStage(int stage_index);
  absl::StatusOr<StepResult> TrainStep(int stage_index);
  absl::Status Report(int stage_index, const StepResult& result);
  absl::Status RunEvalTasks(int stage_index);
  absl::Status MaybeCheckpoint(int stage_index, int64_t stop_at);
  absl::StatusOr<TrainerSummary> Finish();
  void Release();

  // Setup's parts.
  absl::Status LockRunDir();
  absl::Status OpenStore();
  absl::Status InitializeParams();
  absl::StatusOr<Optimizer> MakeOptimizer() const;
  absl::Status PrepareDeviceStep();
  absl::Status Resume();
  absl::Status ResumeFromNewest();
  absl::StatusOr<int64_t> PickNewest();
  absl::Status ResumeFrom(int64_t checkpoint_step);
  absl::Status ResetState();
  absl::Status ValidateCheckpointMetadata(const CheckpointInfo& info) const;
  absl::Status WriteJobFile() const;

  absl::Status ReadBatch(const v1::CurriculumStage& stage, const std::vector<Window>& windows,
                         size_t first, std::vector<int32_t>& ids, std::vector<int32_t>& targets,
                         std::vector<int32_t>& scratch) const;
  // TrainStep's parts.
  absl::Status AccumulateGradients(const v1::CurriculumStage& stage,
                                   const std::vector<Window>& windows, StepResult& result);
  absl::Status ReduceGradients(StepResult& result);
  absl::Status ApplyUpdate(StepResult& result);
  // The device-resident step's parts.
  std::span<float> DeviceGradShard();
  absl::Status RunGradientHookOnDevice();
  absl::StatusOr<double> DeviceShardNorm();
  absl::Status ApplyDeviceUpdate(StepResult& result);

  absl::StatusOr<double> Evaluate(model::Model& model, const v1::CurriculumStage& stage);
  // eval.tasks (trainer_eval.cc).
  absl::Status PrepareEvalTasks(const tokenizer::Tokenizer* given);
  absl::Status LeadEvalTasks(int stage_index);
  absl::Status AwaitEvalTasks();
  absl::StatusOr<std::vector<nlohmann::json>> EvaluateTasks(int stage_index,
                                                            const std::atomic<bool>& cancel);
  absl::Status RecordEvalResults(int stage_index, const std::vector<nlohmann::json>& results);

  absl::StatusOr<double> UnigramEntropy(const v1::CurriculumStage& stage) const;
  absl::Status SaveCheckpoint();
  absl::StatusOr<CheckpointInfo> CommitCheckpoint();
  absl::StatusOr<CheckpointInfo> AwaitCommit();
  nlohmann::json CheckpointMetadata() const;
  absl::Status ExportFinal(TrainerSummary& summary);
};

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_TRAINER_STATE_H_
