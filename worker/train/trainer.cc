#include "worker/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/checked_math.h"
#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/logging.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "worker/comm/tree_sum.h"
#include "worker/model/buffer.h"
#include "worker/model/checkpoint_io.h"
#include "worker/model/init.h"
#include "worker/model/model.h"
#include "worker/train/checkpoint_store.h"
#include "worker/train/data_plan.h"
#include "worker/train/lr_schedule.h"
#include "worker/train/metrics_log.h"
#include "worker/train/optimizer.h"
#include "worker/train/shard_assignment.h"
#include "worker/train/sharded_checkpoint.h"
#include "worker/train/sharded_step.h"
#include "worker/train/spec_change.h"
#include "worker/train/trainer_state.h"

namespace qtrain::train {
namespace {

constexpr char kJobFile[] = "job.json";
constexpr char kMetricsFile[] = "metrics.jsonl";

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

DecayKind ToDecay(v1::LrSchedule schedule) {
  switch (schedule) {
    case v1::LR_SCHEDULE_LINEAR:
      return DecayKind::kLinear;
    case v1::LR_SCHEDULE_CONSTANT:
      return DecayKind::kConstant;
    default:
      return DecayKind::kCosine;
  }
}

// Optimizer steps of stage `stage`: its tokens / batch.global_tokens rounded up, without the
// overflow of adding global_tokens - 1 first.
absl::Status Overflow(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(what, " does not fit in a 64-bit integer"));
}

// The process's place in its group, and where it resumes.
absl::Status CheckGroup(const v1::JobSpec& spec, const TrainerOptions& options) {
  if (options.world_size < 1 || options.rank < 0 || options.rank >= options.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("trainer: rank ", options.rank, " of ", options.world_size, " workers"));
  }
  if (options.world_size > 1 && options.communicator == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("trainer: rank ", options.rank, " of ",
                                                   options.world_size,
                                                   " workers needs a communicator"));
  }
  if (options.communicator != nullptr &&
      (options.communicator->rank() != options.rank ||
       options.communicator->world_size() != options.world_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "trainer: rank ", options.rank, " of ", options.world_size, " workers given the ",
        std::string(options.communicator->backend()), " communicator of rank ",
        options.communicator->rank(), " of ", options.communicator->world_size()));
  }
  if (const comm::Communicator* device = options.device_communicator; device != nullptr) {
    if (options.backend == nullptr || options.backend == &kernels::CpuBackend()) {
      return absl::InvalidArgumentError(
          "trainer: a device communicator needs a device backend (TrainerOptions::backend)");
    }
    if (device->rank() != options.rank || device->world_size() != options.world_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "trainer: rank ", options.rank, " of ", options.world_size, " workers given the ",
          std::string(device->backend()), " device communicator of rank ", device->rank(), " of ",
          device->world_size()));
    }
  }
  if (options.shard_block_elements < 1) {
    return absl::InvalidArgumentError(absl::StrCat("trainer: shard_block_elements ",
                                                   options.shard_block_elements, " must be >= 1"));
  }
  if (options.world_size < spec.world().min_workers() ||
      options.world_size > spec.world().max_workers()) {
    return absl::InvalidArgumentError(
        absl::StrCat("world: ", options.world_size, " worker(s), outside min_workers ",
                     spec.world().min_workers(), " - max_workers ", spec.world().max_workers()));
  }
  if (options.resume_from_step && *options.resume_from_step < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("trainer: resume_from_step ", *options.resume_from_step,
                     " is neither a checkpoint step nor -1 (from the initialization)"));
  }
  return absl::OkStatus();
}

// The backend fits the spec: the CPU one for world.device cpu, another (CUDA) for cuda.
absl::Status CheckBackend(const v1::JobSpec& spec, const kernels::Backend* given) {
  const kernels::Backend& backend = given != nullptr ? *given : kernels::CpuBackend();
  const bool cpu = &backend == &kernels::CpuBackend();
  const bool wants_cuda = spec.world().device() == v1::DEVICE_KIND_CUDA;
  if (wants_cuda && cpu) {
    return absl::FailedPreconditionError(
        "world.device: cuda, but this process trains on the CPU: submit the job (qtrain submit) "
        "to a coordinator with workers started as qtrain-worker --device cuda");
  }
  if (!wants_cuda && !cpu) {
    return absl::InvalidArgumentError(
        absl::StrCat("world.device: cpu, but the trainer was given the ",
                     std::string(backend.name()), " backend"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<model::ModelConfig> Trainer::StageConfig(const model::ModelConfig& base,
                                                        const v1::CurriculumStage& stage) {
  model::ModelConfig config = base;
  if (stage.rope_theta() > 0) config.rope_theta = stage.rope_theta();
  if (stage.yarn_factor() > 1) {
    config.rope_type = model::RopeType::kYarn;
    config.yarn.factor = stage.yarn_factor();
    const int64_t original = stage.yarn_original_max_position_embeddings() > 0
                                 ? stage.yarn_original_max_position_embeddings()
                                 : base.max_position_embeddings;
    config.yarn.original_max_position_embeddings = original;
    const std::optional<int64_t> positions = ScaledPositions(original, stage.yarn_factor());
    if (!positions) {
      return Overflow(absl::StrCat("stage '", stage.name(), "': ", original,
                                   " positions x yarn_factor ", stage.yarn_factor()));
    }
    config.max_position_embeddings = *positions;
  }
  return config;
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(
    const v1::JobSpec& spec, const model::ModelConfig& base_config,
    std::optional<std::vector<float>> initial_params, const TokenSource& data,
    TrainerOptions options) {
  // A rank that cannot start must not leave its peers waiting for it.
  comm::Communicator* const group = options.communicator;
  comm::Communicator* const device_group = options.device_communicator;
  const auto create = [&]() -> absl::StatusOr<std::unique_ptr<Trainer>> {
    QTRAIN_RETURN_IF_ERROR(ValidateJobSpec(spec));
    QTRAIN_RETURN_IF_ERROR(model::ValidateConfig(base_config));
    if (options.run_dir.empty()) return absl::InvalidArgumentError("trainer: no run directory");
    QTRAIN_RETURN_IF_ERROR(CheckGroup(spec, options));
    QTRAIN_RETURN_IF_ERROR(CheckBackend(spec, options.backend));
    QTRAIN_RETURN_IF_ERROR(ValidateAllowedSpecChanges(options.allowed_spec_changes));
    auto state = std::make_unique<State>();
    state->spec = spec;
    state->spec_json = JobSpecToJson(spec);
    state->training_spec_sha256 = TrainingSpecSha256(state->spec_json);
    state->base_config = base_config;
    state->initial_params = std::move(initial_params);
    state->data = &data;
    state->options = std::move(options);
    state->backend =
        state->options.backend != nullptr ? state->options.backend : &kernels::CpuBackend();
    state->compute_dtype = spec.precision() == v1::PRECISION_BF16   ? kernels::DType::kBfloat16
                           : spec.precision() == v1::PRECISION_FP16 ? kernels::DType::kFloat16
                                                                    : kernels::DType::kFloat32;
    state->global_tokens = spec.batch().global_tokens();
    // A bad task or data file fails here, before the first step.
    QTRAIN_RETURN_IF_ERROR(state->PrepareEvalTasks(state->options.tokenizer));

    for (int i = 0; i < spec.curriculum_size(); ++i) {
      const v1::CurriculumStage& stage = spec.curriculum(i);
      QTRAIN_ASSIGN_OR_RETURN(model::ModelConfig config, StageConfig(base_config, stage));
      if (stage.seq_len() > config.max_position_embeddings) {
        return absl::InvalidArgumentError(
            absl::StrCat("curriculum[", i, "].seq_len: ", stage.seq_len(), " exceeds the model's ",
                         config.max_position_embeddings, " positions"));
      }
      if (!CheckedMul(stage.micro_batch(), stage.seq_len())) {
        return Overflow(absl::StrCat("curriculum[", i, "]: micro_batch x seq_len"));
      }
      if (!CheckedMul(spec.eval().batches(), stage.micro_batch())) {
        return Overflow(absl::StrCat("curriculum[", i, "]: eval.batches x micro_batch"));
      }
      state->stage_configs.push_back(std::move(config));
    }
    QTRAIN_ASSIGN_OR_RETURN(state->stage_start, StageStartSteps(spec));
    state->total_steps = state->stage_start.back();
    // tokens_seen grows to total_steps x global_tokens.
    if (!CheckedMul(state->total_steps, state->global_tokens)) {
      return Overflow(absl::StrCat("the job's tokens (", state->total_steps,
                                   " steps x batch.global_tokens ", state->global_tokens, ")"));
    }
    // The options the shard dispatch plans with (shard_assignment.h).
    QTRAIN_ASSIGN_OR_RETURN(const DataPlanOptions plan_options, JobDataPlanOptions(spec));
    QTRAIN_ASSIGN_OR_RETURN(DataPlan plan, DataPlan::Create(data.size(), plan_options));
    for (int i = 0; i < spec.curriculum_size(); ++i) {
      const v1::CurriculumStage& stage = spec.curriculum(i);
      const int64_t windows = spec.batch().global_tokens() / stage.seq_len();
      if (plan.TrainingWindowCount(stage.seq_len()) < windows) {
        return absl::FailedPreconditionError(
            absl::StrCat("curriculum[", i, "]: the data has ",
                         plan.TrainingWindowCount(stage.seq_len()), " training windows of ",
                         stage.seq_len(), " tokens, fewer than one global batch (", windows, ")"));
      }
      const int64_t eval_windows = spec.eval().batches() * stage.micro_batch();  // checked above
      if (plan.ValidationWindowCount(stage.seq_len()) < eval_windows) {
        return absl::FailedPreconditionError(absl::StrCat(
            "eval.batches: stage '", stage.name(), "' needs ", eval_windows,
            " validation windows of ", stage.seq_len(), " tokens, the held-out data has ",
            plan.ValidationWindowCount(stage.seq_len()), " (raise data.validation_fraction)"));
      }
    }
    state->plan = std::move(plan);
    // Everything the data order depends on.
    Sha256 plan_hash;
    plan_hash.Update(absl::StrCat(
        "data=", data.fingerprint(), ";tokens=", data.size(), ";seed=", spec.seed(),
        ";validation=", spec.data().validation_fraction(), ";block=", plan_options.block_tokens,
        ";global=", spec.batch().global_tokens()));
    for (const v1::CurriculumStage& stage : spec.curriculum()) {
      plan_hash.Update(absl::StrCat(";stage=", stage.seq_len(), "/", stage.tokens()));
    }
    state->plan_sha256 = plan_hash.FinishHex();
    const v1::OptimizerSpec& o = spec.optimizer();
    state->schedule = LrScheduleParams{.lr = o.lr(),
                                       .min_lr = o.min_lr(),
                                       .warmup_steps = o.warmup_steps(),
                                       .total_steps = state->total_steps,
                                       .decay = ToDecay(o.schedule())};

    auto trainer = std::unique_ptr<Trainer>(new Trainer());
    trainer->state_ = std::move(state);
    return trainer;
  };
  absl::StatusOr<std::unique_ptr<Trainer>> created = create();
  if (!created.ok() && group != nullptr) group->Abort();
  if (!created.ok() && device_group != nullptr) device_group->Abort();
  return created;
}

Trainer::~Trainer() = default;

absl::Status Trainer::State::ReadBatch(const v1::CurriculumStage& stage,
                                       const std::vector<Window>& windows, size_t first,
                                       std::vector<int32_t>& ids, std::vector<int32_t>& targets,
                                       std::vector<int32_t>& scratch) const {
  const int64_t seq_len = stage.seq_len();
  ids.resize(static_cast<size_t>(stage.micro_batch() * seq_len));  // checked in Create
  targets.resize(ids.size());
  scratch.resize(static_cast<size_t>(seq_len + 1));
  for (int64_t b = 0; b < stage.micro_batch(); ++b) {
    const Window& w = windows[first + static_cast<size_t>(b)];
    QTRAIN_RETURN_IF_ERROR(data->Read(w.begin, scratch));
    std::copy_n(scratch.begin(), seq_len, ids.begin() + b * seq_len);
    std::copy_n(scratch.begin() + 1, seq_len, targets.begin() + b * seq_len);
  }
  return absl::OkStatus();
}

// Batch b of the E evaluation batches is computed by rank b % W; the per-batch loss sums (zero
// for other ranks' batches) are summed over the group, then added in batch order.
absl::StatusOr<double> Trainer::State::Evaluate(model::Model& model,
                                                const v1::CurriculumStage& stage) {
  const int64_t batches = spec.eval().batches();
  const int64_t count = batches * stage.micro_batch();
  QTRAIN_ASSIGN_OR_RETURN(std::vector<Window> windows,
                          plan->ValidationWindows(stage.seq_len(), count));
  std::vector<int32_t> ids, targets, scratch;
  std::vector<double> batch_loss(static_cast<size_t>(batches), 0.0);
  for (int64_t b = options.rank; b < batches; b += options.world_size) {
    QTRAIN_RETURN_IF_ERROR(ReadBatch(stage, windows, static_cast<size_t>(b * stage.micro_batch()),
                                     ids, targets, scratch));
    QTRAIN_ASSIGN_OR_RETURN(model::ForwardResult result,
                            model.Forward({.batch_size = stage.micro_batch(),
                                           .seq_len = stage.seq_len(),
                                           .ids = ids,
                                           .targets = targets}));
    batch_loss[static_cast<size_t>(b)] = result.loss_sum;
  }
  QTRAIN_RETURN_IF_ERROR(comm->AllReduceSum(std::span<double>(batch_loss)));
  double loss_sum = 0;
  for (double l : batch_loss) loss_sum += l;
  const int64_t num_targets = count * stage.seq_len();  // checked in Create
  return num_targets > 0 ? loss_sum / static_cast<double>(num_targets) : NAN;
}

absl::StatusOr<double> Trainer::State::UnigramEntropy(const v1::CurriculumStage& stage) const {
  const int64_t count = spec.eval().batches() * stage.micro_batch();
  QTRAIN_ASSIGN_OR_RETURN(std::vector<Window> windows,
                          plan->ValidationWindows(stage.seq_len(), count));
  std::vector<int64_t> counts;
  std::vector<int32_t> tokens(static_cast<size_t>(stage.seq_len() + 1));
  int64_t total = 0;
  for (const Window& w : windows) {
    QTRAIN_RETURN_IF_ERROR(data->Read(w.begin, tokens));
    for (size_t i = 1; i < tokens.size(); ++i) {  // the targets
      const auto id = static_cast<size_t>(tokens[i]);
      if (id >= counts.size()) counts.resize(id + 1, 0);
      ++counts[id];
      ++total;
    }
  }
  double entropy = 0;
  for (int64_t c : counts) {
    if (c == 0) continue;
    const double p = static_cast<double>(c) / static_cast<double>(total);
    entropy -= p * std::log(p);
  }
  return entropy;
}

// ---------------------------------------------------------------------------------------------
// Setup: the lock, the checkpoint store, the initial weights and optimizer, resume, job.json and
// the metrics log.

absl::Status Trainer::State::Setup() {
  step = 0;
  tokens_seen = 0;
  skipped_steps = 0;
  consecutive_nonfinite = 0;
  const v1::OptimizerSpec& o = spec.optimizer();
  loss_scaler =
      LossScaler({.enabled = spec.precision() == v1::PRECISION_FP16,
                  .initial = o.has_loss_scale() ? o.loss_scale() : 65536.0,
                  .growth_interval =
                      o.has_loss_scale_growth_interval() ? o.loss_scale_growth_interval() : 2000});
  last_loss = NAN;
  last_eval_loss.reset();
  if (options.communicator != nullptr) {
    comm = options.communicator;
  } else {
    own_comm = comm::MakeLocalCommunicator();
    comm = own_comm.get();
  }
  device_comm = options.device_communicator;
  layout.emplace(base_config);
  QTRAIN_ASSIGN_OR_RETURN(comm::ShardLayout sharding,
                          comm::ShardLayout::Create(layout->total_size(), options.world_size,
                                                    options.shard_block_elements));
  shards.emplace(sharding);
  // Nothing in the run directory is touched before rank 0 holds its lock.
  if (lead()) QTRAIN_RETURN_IF_ERROR(LockRunDir());
  QTRAIN_RETURN_IF_ERROR(OpenStore());
  QTRAIN_RETURN_IF_ERROR(InitializeParams());
  QTRAIN_ASSIGN_OR_RETURN(Optimizer fresh, MakeOptimizer());
  optimizer.emplace(std::move(fresh));
  QTRAIN_RETURN_IF_ERROR(Resume());
  if (lead()) {
    // Written once the spec is known to agree with the checkpoint's, so it never records a
    // spec the run did not accept.
    QTRAIN_RETURN_IF_ERROR(WriteJobFile());
    QTRAIN_ASSIGN_OR_RETURN(MetricsLog log,
                            MetricsLog::Open(options.run_dir + "/" + kMetricsFile, step));
    metrics.emplace(std::move(log));
  }
  if (device_step()) {
    QTRAIN_RETURN_IF_ERROR(PrepareDeviceStep());
  } else {
    QTRAIN_ASSIGN_OR_RETURN(
        grad_shard,
        model::MakeHostVector<float>({shards->ShardSize(options.rank)}, "the gradient shard"));
    accumulator.emplace(layout->total_size());
  }
  started = Clock::now();
  tokens_this_process = 0;
  return absl::OkStatus();
}

absl::Status Trainer::State::LockRunDir() {
  if (options.run_dir_lock == nullptr) {
    QTRAIN_ASSIGN_OR_RETURN(RunDirLock own, RunDirLock::Acquire(options.run_dir));
    lock = std::make_shared<const RunDirLock>(std::move(own));
    return absl::OkStatus();
  }
  std::error_code ec;
  if (!options.run_dir_lock->held() ||
      !std::filesystem::equivalent(options.run_dir_lock->directory(), options.run_dir, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat("trainer: the run directory lock given is not held on ", options.run_dir));
  }
  lock = options.run_dir_lock;
  return absl::OkStatus();
}

absl::Status Trainer::State::InitializeParams() {
  QTRAIN_ASSIGN_OR_RETURN(params, model::MakeHostVector<float>({layout->total_size()},
                                                               "the model parameters (host copy)"));
  if (initial_params) {
    if (initial_params->size() != params.size()) {
      return absl::InvalidArgumentError("trainer: initial parameters do not match the model");
    }
    params = *initial_params;  // equal sizes: reuses the storage, allocates nothing
  } else {
    model::InitializeParameters(base_config, *layout, spec.seed(), params);
  }
  return absl::OkStatus();
}

absl::StatusOr<Optimizer> Trainer::State::MakeOptimizer() const {
  const v1::OptimizerSpec& o = spec.optimizer();
  // A device-resident step keeps the moments in the backend's memory.
  return Optimizer::Create(*layout,
                           {.beta1 = o.beta1(),
                            .beta2 = o.beta2(),
                            .eps = o.eps(),
                            .weight_decay = o.weight_decay(),
                            .grad_clip = o.grad_clip()},
                           shards->ShardBegin(options.rank), shards->ShardEnd(options.rank),
                           device_step() ? *backend : kernels::CpuBackend());
}

// The device-resident step's buffers: the reduced shard (a group of more than one: the model's
// gradient is the whole sum otherwise) and the shard's block sums, in backend memory.
absl::Status Trainer::State::PrepareDeviceStep() {
  device_accumulator.emplace(*backend, layout->total_size());
  if (options.world_size > 1) {
    QTRAIN_RETURN_IF_ERROR(device_grad_shard.Resize(*backend, {shards->ShardSize(options.rank)},
                                                    "the gradient shard"));
  }
  const int64_t blocks = shards->BlockCount(options.rank);
  QTRAIN_RETURN_IF_ERROR(
      device_block_sums.Resize(*backend, {blocks}, "the gradient norm's block sums"));
  QTRAIN_ASSIGN_OR_RETURN(
      block_sums, model::MakeHostVector<double>({blocks}, "the gradient norm's block sums"));
  return absl::OkStatus();
}

absl::Status Trainer::State::WriteJobFile() const {
  std::string spec_text;
  google::protobuf::util::JsonPrintOptions print;
  print.add_whitespace = true;
  print.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(spec, &spec_text, print);
  return WriteFileAtomically(options.run_dir + "/" + kJobFile, spec_text);
}

// ---------------------------------------------------------------------------------------------
// The steps.

absl::Status Trainer::State::EnterStage(int stage_index) {
  const v1::CurriculumStage& stage = spec.curriculum(stage_index);
  // A new stage may change the RoPE base or YaRN: rebuild the model around the same weights.
  // (A host-staged step keeps `params` current.)
  if (model && model_on_host()) params.assign(model->params().begin(), model->params().end());
  QTRAIN_RETURN_IF_ERROR(SyncHostParams());
  model.reset();  // before the next one: a device need not hold two models
  QTRAIN_ASSIGN_OR_RETURN(
      model::Model fresh,
      model::Model::Create(stage_configs[stage_index],
                           {.recompute_activations = stage.recompute_activations(),
                            .compute_dtype = compute_dtype},
                           *backend));
  model = std::make_unique<model::Model>(std::move(fresh));
  if (model_on_host()) {
    std::copy(params.begin(), params.end(), model->params().begin());
  } else {
    if (!device_step()) {
      QTRAIN_RETURN_IF_ERROR(model::ResizeHostVector(host_grads, {layout->total_size()},
                                                     "the host copy of the gradients", 0.0f));
    }
    QTRAIN_RETURN_IF_ERROR(CopyParamsToModel());
  }
  model_stage = stage_index;
  Event(absl::StrCat("stage ", stage_index, " '", stage.name(), "': seq_len ", stage.seq_len(),
                     ", steps ", stage_start[stage_index] + 1, "-", stage_start[stage_index + 1],
                     model->options().recompute_activations ? ", recomputing activations" : ""));
  return absl::OkStatus();
}

// One optimizer step of the group (see trainer.h and comm/tree_sum.h for why the bytes do not
// depend on the world size): this rank's micro-batches, their gradient summed as a tree, the
// group's reduce-scatter into this rank's shard, the norm and loss over the group, AdamW on the
// shard, and the all-gather of the updated parameters.
absl::StatusOr<Trainer::State::StepResult> Trainer::State::TrainStep(int stage_index) {
  const v1::CurriculumStage& stage = spec.curriculum(stage_index);
  StepResult result;
  result.start = Clock::now();
  const int64_t windows_per_step = global_tokens / stage.seq_len();
  QTRAIN_ASSIGN_OR_RETURN(
      std::vector<Window> windows,
      plan->TrainingWindows(stage_index, stage.seq_len(), windows_per_step,
                            step - stage_start[stage_index], options.rank, options.world_size));
  result.data_time += Clock::now() - result.start;
  result.loss_scale = loss_scaler.scale();
  QTRAIN_RETURN_IF_ERROR(AccumulateGradients(stage, windows, result));
  QTRAIN_RETURN_IF_ERROR(ReduceGradients(result));
  result.learning_rate = LearningRate(schedule, step);
  QTRAIN_RETURN_IF_ERROR(ApplyUpdate(result));
  const v1::OptimizerSpec& o = spec.optimizer();
  // fp16: gradients that overflow with a finite loss are the loss scale's doing: it halves,
  // and the step does not count towards the stop (unless the scale is 1 already).
  const bool scale_overflow = result.stats.skipped && std::isfinite(result.loss) &&
                              loss_scaler.enabled() && loss_scaler.Backoff();
  if (scale_overflow) {
    ++skipped_steps;
    Event(absl::StrCat("step ", step + 1, " skipped: the fp16 gradients overflowed at loss scale ",
                       static_cast<int64_t>(result.loss_scale), "; the scale is now ",
                       static_cast<int64_t>(loss_scaler.scale())));
  } else if (result.stats.skipped) {
    ++skipped_steps;
    ++consecutive_nonfinite;
    Event(absl::StrCat("step ", step + 1, " skipped: non-finite ",
                       std::isfinite(result.loss) ? "gradients" : "loss"));
    if (consecutive_nonfinite >= o.max_consecutive_nonfinite_steps()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "stopping: ", consecutive_nonfinite,
          " steps in a row had a non-finite loss or "
          "gradients (optimizer.max_consecutive_nonfinite_steps = ",
          o.max_consecutive_nonfinite_steps(), "); lower optimizer.lr or check the data"));
    }
  } else {
    consecutive_nonfinite = 0;
    last_loss = result.loss;
    if (loss_scaler.Grow()) {
      Event(absl::StrCat("step ", step + 1, ": loss scale raised to ",
                         static_cast<int64_t>(loss_scaler.scale())));
    }
  }
  ++step;
  tokens_seen += global_tokens;  // at most total_steps x global_tokens, checked in Create
  tokens_this_process += global_tokens;
  return result;
}

// This rank's micro-batches, each its own gradient (ZeroGrads), summed as a tree into
// model->grads(): the rank's partial gradient. Their loss sums are kept for the group's sum.
absl::Status Trainer::State::AccumulateGradients(const v1::CurriculumStage& stage,
                                                 const std::vector<Window>& windows,
                                                 StepResult& result) {
  const auto micro_batch = static_cast<size_t>(stage.micro_batch());
  const size_t count = windows.size() / micro_batch;
  micro_batch_losses.clear();
  for (size_t first = 0; first < windows.size(); first += micro_batch) {
    const Clock::time_point read_start = Clock::now();
    QTRAIN_RETURN_IF_ERROR(ReadBatch(stage, windows, first, ids, targets, scratch));
    result.data_time += Clock::now() - read_start;
    QTRAIN_RETURN_IF_ERROR(model->ZeroGrads());
    // Every target counts: the loss is the mean over the whole global batch.
    QTRAIN_ASSIGN_OR_RETURN(
        model::ForwardResult forward,
        model->ForwardBackward({.batch_size = stage.micro_batch(),
                                .seq_len = stage.seq_len(),
                                .ids = ids,
                                .targets = targets,
                                .loss_normalizer = global_tokens,
                                .loss_scale = static_cast<float>(result.loss_scale)}));
    micro_batch_losses.push_back(forward.loss_sum);
    // The tree sum of one leaf is the leaf: no copy.
    if (device_step()) {
      if (count > 1) QTRAIN_RETURN_IF_ERROR(device_accumulator->Add(model->grads().data()));
      continue;
    }
    QTRAIN_RETURN_IF_ERROR(CopyGradsToHost());
    if (count > 1) QTRAIN_RETURN_IF_ERROR(accumulator->Add(HostGrads()));
  }
  if (count > 1) {
    QTRAIN_RETURN_IF_ERROR(device_step() ? device_accumulator->Finish(model->grads().data())
                                         : accumulator->Finish(HostGrads()));
  }
  return absl::OkStatus();
}

absl::Status Trainer::State::SyncHostParams() {
  if (!host_params_stale) return absl::OkStatus();
  const std::span<const float> device_params = std::as_const(*model).params();
  QTRAIN_RETURN_IF_OP_ERROR(
      backend->CopyBackendToHost(params.data(), device_params.data(), device_params.size_bytes()));
  host_params_stale = false;
  return absl::OkStatus();
}

absl::Status Trainer::State::CopyGradsToHost() {
  if (model_on_host()) return absl::OkStatus();
  const std::span<const float> grads = std::as_const(*model).grads();
  return model::OpToStatus(
      backend->CopyBackendToHost(host_grads.data(), grads.data(), grads.size_bytes()));
}

absl::Status Trainer::State::CopyParamsToModel() {
  if (model_on_host()) return absl::OkStatus();
  // Writable params(): the model casts its bf16 working copy again before the next pass.
  const std::span<float> device_params = model->params();
  return model::OpToStatus(
      backend->CopyHostToBackend(device_params.data(), params.data(), device_params.size_bytes()));
}

// The group's gradient: this rank's shard of the sum over ranks, its norm, and the loss.
absl::Status Trainer::State::ReduceGradients(StepResult& result) {
  if (device_step()) {
    if (options.world_size > 1) {
      // The device communicator runs on a stream of its own: the gradient's work first.
      QTRAIN_RETURN_IF_OP_ERROR(backend->Synchronize());
      QTRAIN_RETURN_IF_ERROR(Timed(result.comm_time, [&] {
        return device_comm->ReduceScatterSum(std::as_const(*model).grads(), DeviceGradShard(),
                                             *shards);
      }));
    }
    if (options.gradient_hook) QTRAIN_RETURN_IF_ERROR(RunGradientHookOnDevice());
  } else {
    QTRAIN_RETURN_IF_ERROR(Timed(result.comm_time, [&] {
      return comm->ReduceScatterSum(HostGrads(), grad_shard, *shards);
    }));
    if (options.gradient_hook) options.gradient_hook(step, grad_shard);
  }
  QTRAIN_RETURN_IF_ERROR(Timed(result.comm_time, [&]() -> absl::Status {
    double scaled_norm = 0;
    if (device_step()) {
      QTRAIN_ASSIGN_OR_RETURN(scaled_norm, DeviceShardNorm());
    } else {
      QTRAIN_ASSIGN_OR_RETURN(scaled_norm, GroupGradientNorm(*comm, grad_shard, *shards));
    }
    // The norm without fp16's loss scale (a power of two: exact).
    result.stats.grad_norm = scaled_norm / result.loss_scale;
    QTRAIN_ASSIGN_OR_RETURN(const double loss_sum, GroupLossSum(*comm, micro_batch_losses));
    result.loss = loss_sum / static_cast<double>(global_tokens);
    return absl::OkStatus();
  }));
  return absl::OkStatus();
}

// The device-resident step's reduced shard: the model's whole gradient in a group of one.
std::span<float> Trainer::State::DeviceGradShard() {
  if (options.world_size == 1) return model->grads();
  return {device_grad_shard.get(), static_cast<size_t>(device_grad_shard.size())};
}

// The test hook sees (and may change) a host copy of the device shard.
absl::Status Trainer::State::RunGradientHookOnDevice() {
  const std::span<float> shard = DeviceGradShard();
  QTRAIN_RETURN_IF_ERROR(model::ResizeHostVector(grad_shard, {static_cast<int64_t>(shard.size())},
                                                 "the gradient shard", 0.0f));
  QTRAIN_RETURN_IF_OP_ERROR(
      backend->CopyBackendToHost(grad_shard.data(), shard.data(), shard.size_bytes()));
  options.gradient_hook(step, grad_shard);
  QTRAIN_RETURN_IF_OP_ERROR(
      backend->CopyHostToBackend(shard.data(), grad_shard.data(), shard.size_bytes()));
  return absl::OkStatus();
}

// The group's norm from the device shard's block sums (computed on the device; only they are
// copied to the host), gathered over `comm` as GroupGradientNorm does.
absl::StatusOr<double> Trainer::State::DeviceShardNorm() {
  const std::span<const float> shard = DeviceGradShard();
  QTRAIN_RETURN_IF_OP_ERROR(
      backend->BlockSumsOfSquares(shard.data(), static_cast<int64_t>(shard.size()),
                                  shards->block_elements(), device_block_sums.get()));
  QTRAIN_RETURN_IF_OP_ERROR(backend->CopyBackendToHost(block_sums.data(), device_block_sums.get(),
                                                       block_sums.size() * sizeof(double)));
  return GroupNormOfBlockSums(*comm, block_sums, *shards);
}

// AdamW on this rank's shard and the all-gather of the parameters; every rank skips the same
// steps (a loss or norm that is not finite), as the values are the group's.
absl::Status Trainer::State::ApplyUpdate(StepResult& result) {
  if (!std::isfinite(result.loss) || !std::isfinite(result.stats.grad_norm)) {
    result.stats.skipped = true;
    return absl::OkStatus();
  }
  if (device_step()) return ApplyDeviceUpdate(result);
  QTRAIN_ASSIGN_OR_RETURN(result.stats,
                          optimizer->Step(param_shard(), grad_shard, result.learning_rate,
                                          result.stats.grad_norm, result.loss_scale));
  // The shard is updated in place, at its range of the full buffer.
  QTRAIN_RETURN_IF_ERROR(Timed(
      result.comm_time, [&] { return comm->AllGather(param_shard(), HostParams(), *shards); }));
  return CopyParamsToModel();
}

// The same in backend memory. In a group of one AdamW rewrites the working copy as it goes; in a
// larger group the all-gather changes the other ranks' ranges, so the model casts the copy again.
absl::Status Trainer::State::ApplyDeviceUpdate(StepResult& result) {
  const model::Model::UpdatableWeights weights = model->weights_for_update();
  const std::span<float> shard_params =
      weights.params.subspan(static_cast<size_t>(shard_begin()), DeviceGradShard().size());
  const kernels::Tensor working_copy =
      options.world_size == 1 ? weights.working_copy : kernels::Tensor();
  host_params_stale = true;  // from here on, whatever happens
  QTRAIN_ASSIGN_OR_RETURN(result.stats,
                          optimizer->Step(shard_params, DeviceGradShard(), result.learning_rate,
                                          result.stats.grad_norm, result.loss_scale, working_copy));
  if (options.world_size == 1) return absl::OkStatus();
  QTRAIN_RETURN_IF_OP_ERROR(backend->Synchronize());  // AdamW's writes, before NCCL reads them
  QTRAIN_RETURN_IF_ERROR(Timed(result.comm_time, [&] {
    return device_comm->AllGather(shard_params, weights.params, *shards);
  }));
  (void)model->params();  // marks the working copy stale
  return absl::OkStatus();
}

absl::Status Trainer::State::Report(int stage_index, const StepResult& result) {
  const v1::CurriculumStage& stage = spec.curriculum(stage_index);
  StepReport report;
  report.stage = stage_index;
  report.stage_name = stage.name();
  report.step = step;
  report.total_steps = total_steps;
  report.loss = result.loss;
  report.learning_rate = result.learning_rate;
  report.grad_norm = result.stats.grad_norm;
  report.skipped = result.stats.skipped;
  report.skipped_total = skipped_steps;
  report.tokens_seen = tokens_seen;
  report.step_seconds = Seconds(Clock::now() - result.start);
  report.data_seconds = Seconds(result.data_time);
  report.comm_seconds = Seconds(result.comm_time);
  const double elapsed = Seconds(Clock::now() - started);
  report.tokens_per_second = elapsed > 0 ? static_cast<double>(tokens_this_process) / elapsed : 0;
  report.eta_seconds = report.tokens_per_second > 0
                           ? static_cast<double>(total_steps - step) *
                                 static_cast<double>(global_tokens) / report.tokens_per_second
                           : 0;
  const int64_t eval_every = spec.eval().every_steps();
  if (spec.eval().batches() > 0 &&
      ((eval_every > 0 && step % eval_every == 0) || step == total_steps)) {
    Phase(TrainerPhase::kEvaluating);
    QTRAIN_ASSIGN_OR_RETURN(double eval_loss, Evaluate(*model, stage));
    Phase(TrainerPhase::kTraining);
    report.eval_loss = eval_loss;
    last_eval_loss = eval_loss;
  }
  nlohmann::json record = {
      {"step", report.step},
      {"stage", report.stage},
      {"loss", std::isfinite(result.loss) ? nlohmann::json(result.loss) : nlohmann::json()},
      {"lr", result.learning_rate},
      {"grad_norm", result.stats.grad_norm},
      {"skipped", result.stats.skipped},
      {"tokens_seen", report.tokens_seen},
      {"tokens_per_second", report.tokens_per_second},
      {"step_seconds", report.step_seconds},
      {"data_seconds", report.data_seconds},
      {"comm_seconds", report.comm_seconds}};
  if (report.eval_loss) record["eval_loss"] = *report.eval_loss;
  if (loss_scaler.enabled()) record["loss_scale"] = result.loss_scale;
  if (lead()) QTRAIN_RETURN_IF_ERROR(metrics->Append(record));
  if (options.on_step) options.on_step(report);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// The end: the summary and, when the job is complete, the exported model and the loss curve.

absl::StatusOr<TrainerSummary> Trainer::State::Finish() {
  TrainerSummary summary;
  summary.steps = step;
  summary.tokens_seen = tokens_seen;
  summary.skipped_steps = skipped_steps;
  summary.final_eval_loss = last_eval_loss;
  summary.completed = step == total_steps;
  if (!summary.completed) return summary;
  // Rank 0 exports; the others return once it has (or fail when it could not).
  const absl::Status exported = lead() ? ExportFinal(summary) : absl::OkStatus();
  char verdict = exported.ok() ? 1 : 0;
  const absl::Status sent =
      comm->Broadcast(std::as_writable_bytes(std::span(&verdict, 1)), /*root=*/0);
  QTRAIN_RETURN_IF_ERROR(exported);
  QTRAIN_RETURN_IF_ERROR(sent);
  if (verdict != 1) return absl::AbortedError("rank 0 could not export the final model");
  summary.final_dir = options.run_dir + "/final";
  return summary;
}

// Rank 0: the unigram entropy, final/ from the final checkpoint (also when this process trained
// nothing), and the loss curve.
absl::Status Trainer::State::ExportFinal(TrainerSummary& summary) {
  if (spec.eval().batches() > 0) {
    QTRAIN_ASSIGN_OR_RETURN(summary.validation_unigram_entropy,
                            UnigramEntropy(spec.curriculum(spec.curriculum_size() - 1)));
  }
  QTRAIN_ASSIGN_OR_RETURN(CheckpointInfo final_checkpoint, store->LatestGood());
  if (final_checkpoint.step != total_steps) {
    return absl::InternalError("the final checkpoint is missing");
  }
  const model::ModelConfig& final_config = stage_configs.back();
  QTRAIN_RETURN_IF_ERROR(model::LoadWeights(final_checkpoint.directory, final_config, params));
  QTRAIN_RETURN_IF_ERROR(model::SaveCheckpoint(options.run_dir + "/final", final_config, params));
  QTRAIN_ASSIGN_OR_RETURN(std::vector<nlohmann::json> records,
                          MetricsLog::ReadAll(options.run_dir + "/" + kMetricsFile));
  std::vector<int64_t> starts(stage_start.begin(), stage_start.end() - 1);
  return WriteLossCurveSvg(options.run_dir + "/loss.svg", records, starts);
}

void Trainer::State::Release() {
  model.reset();
  model_stage = -1;
  metrics.reset();
  optimizer.reset();
  params = {};
  host_params_stale = false;
  host_grads = {};
  device_accumulator.reset();
  device_grad_shard.Reset();
  device_block_sums.Reset();
  block_sums = {};
  device_comm = nullptr;
  ids = {};
  targets = {};
  scratch = {};
  grad_shard = {};
  accumulator.reset();
  micro_batch_losses = {};
  shards.reset();
  comm = nullptr;
  own_comm.reset();
  store.reset();
  layout.reset();
  lock.reset();  // last: nothing of this run writes into the directory after it
}

absl::StatusOr<TrainerSummary> Trainer::Run() {
  State& s = *state_;
  const auto run = [&s]() -> absl::StatusOr<TrainerSummary> {
    QTRAIN_RETURN_IF_ERROR(s.Setup());
    const int64_t stop_at = s.options.stop_after_step > 0
                                ? std::min(s.options.stop_after_step, s.total_steps)
                                : s.total_steps;
    while (s.step < stop_at) {
      if (s.options.cancelled && s.options.cancelled()) {
        return absl::CancelledError(absl::StrCat("training cancelled at step ", s.step));
      }
      const int stage_index = s.StageOf(s.step);
      if (stage_index != s.model_stage) QTRAIN_RETURN_IF_ERROR(s.EnterStage(stage_index));
      QTRAIN_ASSIGN_OR_RETURN(const State::StepResult result, s.TrainStep(stage_index));
      QTRAIN_RETURN_IF_ERROR(s.Report(stage_index, result));
      s.Fault("step_done");
      if (s.step == s.stage_start[stage_index + 1]) {
        QTRAIN_RETURN_IF_ERROR(s.RunEvalTasks(stage_index));
      }
      QTRAIN_RETURN_IF_ERROR(s.MaybeCheckpoint(stage_index, stop_at));
    }
    return s.Finish();
  };
  absl::StatusOr<TrainerSummary> summary = run();
  // The peers, blocked in a collective or about to be, fail at once instead of timing out.
  if (!summary.ok() && s.comm != nullptr && s.options.world_size > 1) {
    QTRAIN_LOG(WARNING) << "rank " << s.options.rank << " of " << s.options.world_size
                        << " stops its group: " << summary.status();
  }
  if (!summary.ok() && s.comm != nullptr) s.comm->Abort();
  if (!summary.ok() && s.device_comm != nullptr) s.device_comm->Abort();
  s.Release();
  return summary;
}

}  // namespace qtrain::train
