#include "worker/train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/job_spec.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "worker/model/checkpoint_io.h"
#include "worker/model/init.h"
#include "worker/model/model.h"
#include "worker/train/checkpoint_store.h"
#include "worker/train/data_plan.h"
#include "worker/train/lr_schedule.h"
#include "worker/train/metrics_log.h"
#include "worker/train/optimizer.h"

namespace qtrain::train {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kOptimizerFile[] = "optimizer.safetensors";

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

}  // namespace

struct Trainer::State {
  v1::JobSpec spec;
  model::ModelConfig base_config;
  std::optional<std::vector<float>> initial_params;
  const TokenSource* data = nullptr;
  TrainerOptions options;

  std::optional<DataPlan> plan;
  std::string plan_sha256;
  std::vector<int64_t> stage_start;  // first job step of each stage; back() = total steps
  int64_t total_steps = 0;

  // Where the run is.
  int64_t step = 0;
  int64_t tokens_seen = 0;
  int64_t skipped_steps = 0;
  int64_t consecutive_nonfinite = 0;
  double last_loss = NAN;
  std::optional<double> last_eval_loss;

  int StageOf(int64_t job_step) const {
    int stage = 0;
    while (stage + 1 < spec.curriculum_size() && job_step >= stage_start[stage + 1]) ++stage;
    return stage;
  }
  void Event(const std::string& text) const {
    if (options.on_event) options.on_event(text);
  }

  absl::Status ReadBatch(const v1::CurriculumStage& stage, const std::vector<Window>& windows,
                         size_t first, std::vector<int32_t>& ids, std::vector<int32_t>& targets,
                         std::vector<int32_t>& scratch) const;
  absl::StatusOr<double> Evaluate(model::Model& model, const v1::CurriculumStage& stage);
  absl::StatusOr<double> UnigramEntropy(const v1::CurriculumStage& stage) const;
  void Fault(std::string_view point) const {
    if (options.fault_hook) options.fault_hook(point, step);
  }
  absl::Status SaveCheckpoint(const CheckpointStore& store, const model::Model& model,
                              const Optimizer& optimizer);
  absl::Status Resume(const CheckpointStore& store, std::vector<float>& params,
                      Optimizer& optimizer);
};

model::ModelConfig Trainer::StageConfig(const model::ModelConfig& base,
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
    config.max_position_embeddings =
        static_cast<int64_t>(std::floor(static_cast<double>(original) * stage.yarn_factor()));
  }
  return config;
}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(
    const v1::JobSpec& spec, const model::ModelConfig& base_config,
    std::optional<std::vector<float>> initial_params, const TokenSource& data,
    TrainerOptions options) {
  QTRAIN_RETURN_IF_ERROR(ValidateJobSpec(spec));
  QTRAIN_RETURN_IF_ERROR(model::ValidateConfig(base_config));
  if (options.run_dir.empty()) return absl::InvalidArgumentError("trainer: no run directory");
  if (spec.world().min_workers() != 1 || spec.world().max_workers() != 1) {
    return absl::InvalidArgumentError(
        "world: a local run trains on one worker (min_workers = max_workers = 1)");
  }
  if (spec.world().device() != v1::DEVICE_KIND_CPU) {
    return absl::UnimplementedError("world.device: only cpu is available to local runs");
  }
  auto state = std::make_unique<State>();
  state->spec = spec;
  state->base_config = base_config;
  state->initial_params = std::move(initial_params);
  state->data = &data;
  state->options = std::move(options);

  int64_t max_seq_len = 0;
  for (int i = 0; i < spec.curriculum_size(); ++i) {
    const v1::CurriculumStage& stage = spec.curriculum(i);
    max_seq_len = std::max(max_seq_len, stage.seq_len());
    const model::ModelConfig config = StageConfig(base_config, stage);
    if (stage.seq_len() > config.max_position_embeddings) {
      return absl::InvalidArgumentError(
          absl::StrCat("curriculum[", i, "].seq_len: ", stage.seq_len(), " exceeds the model's ",
                       config.max_position_embeddings, " positions"));
    }
    state->stage_start.push_back(state->total_steps);
    state->total_steps += StageSteps(spec, i);
  }
  state->stage_start.push_back(state->total_steps);

  // Blocks several windows long, so held-out blocks cost little context.
  const DataPlanOptions plan_options{.seed = spec.seed(),
                                     .validation_fraction = spec.data().validation_fraction(),
                                     .block_tokens = 8 * (max_seq_len + 1)};
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
    const int64_t eval_windows = spec.eval().batches() * stage.micro_batch();
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
  plan_hash.Update(
      absl::StrCat("data=", data.fingerprint(), ";tokens=", data.size(), ";seed=", spec.seed(),
                   ";validation=", spec.data().validation_fraction(),
                   ";block=", plan_options.block_tokens, ";global=", spec.batch().global_tokens()));
  for (const v1::CurriculumStage& stage : spec.curriculum()) {
    plan_hash.Update(absl::StrCat(";stage=", stage.seq_len(), "/", stage.tokens()));
  }
  state->plan_sha256 = plan_hash.FinishHex();

  auto trainer = std::unique_ptr<Trainer>(new Trainer());
  trainer->state_ = std::move(state);
  return trainer;
}

Trainer::~Trainer() = default;

absl::Status Trainer::State::ReadBatch(const v1::CurriculumStage& stage,
                                       const std::vector<Window>& windows, size_t first,
                                       std::vector<int32_t>& ids, std::vector<int32_t>& targets,
                                       std::vector<int32_t>& scratch) const {
  const int64_t seq_len = stage.seq_len();
  ids.resize(static_cast<size_t>(stage.micro_batch() * seq_len));
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

absl::StatusOr<double> Trainer::State::Evaluate(model::Model& model,
                                                const v1::CurriculumStage& stage) {
  const int64_t count = spec.eval().batches() * stage.micro_batch();
  QTRAIN_ASSIGN_OR_RETURN(std::vector<Window> windows,
                          plan->ValidationWindows(stage.seq_len(), count));
  std::vector<int32_t> ids, targets, scratch;
  double loss_sum = 0;
  int64_t num_targets = 0;
  for (size_t first = 0; first < windows.size();
       first += static_cast<size_t>(stage.micro_batch())) {
    QTRAIN_RETURN_IF_ERROR(ReadBatch(stage, windows, first, ids, targets, scratch));
    QTRAIN_ASSIGN_OR_RETURN(model::ForwardResult result,
                            model.Forward({.batch_size = stage.micro_batch(),
                                           .seq_len = stage.seq_len(),
                                           .ids = ids,
                                           .targets = targets}));
    loss_sum += result.loss_sum;
    num_targets += result.num_targets;
  }
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

absl::Status Trainer::State::SaveCheckpoint(const CheckpointStore& store, const model::Model& model,
                                            const Optimizer& optimizer) {
  QTRAIN_ASSIGN_OR_RETURN(CheckpointWriter writer, store.Begin(step));
  QTRAIN_RETURN_IF_ERROR(model::SaveCheckpoint(writer.directory(), model.config(), model.params()));
  QTRAIN_RETURN_IF_ERROR(optimizer.Save(writer.PathFor(kOptimizerFile)));
  Fault("checkpoint_written");
  const nlohmann::json metadata = {{"step", step},
                                   {"stage", StageOf(step)},
                                   {"tokens_seen", tokens_seen},
                                   {"skipped_steps", skipped_steps},
                                   {"consecutive_nonfinite_steps", consecutive_nonfinite},
                                   {"data_plan_sha256", plan_sha256},
                                   {"job_name", spec.name()}};
  QTRAIN_ASSIGN_OR_RETURN(CheckpointInfo info, writer.Commit(metadata));
  Event(absl::StrCat("checkpoint at step ", step, ": ", info.directory));
  return store.ApplyRetention(spec.checkpoint().keep_last());
}

absl::Status Trainer::State::Resume(const CheckpointStore& store, std::vector<float>& params,
                                    Optimizer& optimizer) {
  std::vector<std::string> skipped;
  absl::StatusOr<CheckpointInfo> info = store.LatestGood(&skipped);
  for (const std::string& problem : skipped) Event(absl::StrCat("skipping damaged ", problem));
  if (absl::IsNotFound(info.status())) return absl::OkStatus();  // a fresh start
  QTRAIN_RETURN_IF_ERROR(info.status());
  const nlohmann::json& m = info->metadata;
  if (m.value("data_plan_sha256", "") != plan_sha256) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint ", info->directory,
                     " was trained with another data plan (different data, "
                     "seed, or curriculum); use a new run directory"));
  }
  const int64_t ckpt_step = m.value("step", int64_t{-1});
  if (ckpt_step < 0 || ckpt_step > total_steps) {
    return absl::DataLossError(absl::StrCat("checkpoint ", info->directory, ": bad step"));
  }
  const model::ModelConfig config =
      StageConfig(base_config, spec.curriculum(StageOf(std::max<int64_t>(ckpt_step - 1, 0))));
  QTRAIN_RETURN_IF_ERROR(model::LoadWeights(info->directory, config, params));
  QTRAIN_RETURN_IF_ERROR(optimizer.Load(info->directory + "/" + kOptimizerFile));
  step = ckpt_step;
  tokens_seen = m.value("tokens_seen", int64_t{0});
  skipped_steps = m.value("skipped_steps", int64_t{0});
  consecutive_nonfinite = m.value("consecutive_nonfinite_steps", int64_t{0});
  Event(absl::StrCat("resumed from ", info->directory, " (step ", step, " of ", total_steps, ")"));
  return absl::OkStatus();
}

absl::StatusOr<TrainerSummary> Trainer::Run() {
  State& s = *state_;
  const std::string checkpoint_dir = s.options.run_dir + "/checkpoints";
  QTRAIN_ASSIGN_OR_RETURN(CheckpointStore store, CheckpointStore::Open(checkpoint_dir));

  const model::ParameterLayout layout(s.base_config);
  QTRAIN_ASSIGN_OR_RETURN(
      std::vector<float> params,
      model::MakeHostVector<float>({layout.total_size()}, "the model parameters (host copy)"));
  if (s.initial_params) {
    if (s.initial_params->size() != params.size()) {
      return absl::InvalidArgumentError("trainer: initial parameters do not match the model");
    }
    params = *s.initial_params;  // equal sizes: reuses the storage, allocates nothing
  } else {
    model::InitializeParameters(s.base_config, layout, s.spec.seed(), params);
  }
  const v1::OptimizerSpec& o = s.spec.optimizer();
  QTRAIN_ASSIGN_OR_RETURN(Optimizer optimizer,
                          Optimizer::Create(layout, {.beta1 = o.beta1(),
                                                     .beta2 = o.beta2(),
                                                     .eps = o.eps(),
                                                     .weight_decay = o.weight_decay(),
                                                     .grad_clip = o.grad_clip()}));
  QTRAIN_RETURN_IF_ERROR(s.Resume(store, params, optimizer));
  QTRAIN_ASSIGN_OR_RETURN(MetricsLog metrics,
                          MetricsLog::Open(s.options.run_dir + "/metrics.jsonl", s.step));
  const LrScheduleParams schedule{.lr = o.lr(),
                                  .min_lr = o.min_lr(),
                                  .warmup_steps = o.warmup_steps(),
                                  .total_steps = s.total_steps,
                                  .decay = ToDecay(o.schedule())};
  const int64_t global_tokens = s.spec.batch().global_tokens();
  const int64_t stop_at = s.options.stop_after_step > 0
                              ? std::min(s.options.stop_after_step, s.total_steps)
                              : s.total_steps;
  const Clock::time_point started = Clock::now();
  int64_t tokens_this_process = 0;

  std::unique_ptr<model::Model> model;
  int model_stage = -1;
  std::vector<int32_t> ids, targets, scratch;
  while (s.step < stop_at) {
    const int stage_index = s.StageOf(s.step);
    const v1::CurriculumStage& stage = s.spec.curriculum(stage_index);
    if (stage_index != model_stage) {
      // A new stage may change the RoPE base or YaRN: rebuild the model around the same weights.
      if (model) params.assign(model->params().begin(), model->params().end());
      QTRAIN_ASSIGN_OR_RETURN(model::Model fresh,
                              model::Model::Create(StageConfig(s.base_config, stage)));
      model = std::make_unique<model::Model>(std::move(fresh));
      std::copy(params.begin(), params.end(), model->params().begin());
      model_stage = stage_index;
      s.Event(absl::StrCat("stage ", stage_index, " '", stage.name(), "': seq_len ",
                           stage.seq_len(), ", steps ", s.stage_start[stage_index] + 1, "-",
                           s.stage_start[stage_index + 1]));
    }
    const Clock::time_point step_start = Clock::now();
    Clock::duration data_time{};
    const int64_t windows_per_step = global_tokens / stage.seq_len();
    QTRAIN_ASSIGN_OR_RETURN(
        std::vector<Window> windows,
        s.plan->TrainingWindows(stage_index, stage.seq_len(), windows_per_step,
                                s.step - s.stage_start[stage_index], /*rank=*/0, /*world_size=*/1));
    data_time += Clock::now() - step_start;
    QTRAIN_RETURN_IF_ERROR(model->ZeroGrads());
    double loss_sum = 0;
    for (size_t first = 0; first < windows.size();
         first += static_cast<size_t>(stage.micro_batch())) {
      const Clock::time_point read_start = Clock::now();
      QTRAIN_RETURN_IF_ERROR(s.ReadBatch(stage, windows, first, ids, targets, scratch));
      data_time += Clock::now() - read_start;
      // Every target counts: the loss is the mean over the whole global batch.
      QTRAIN_ASSIGN_OR_RETURN(model::ForwardResult result,
                              model->ForwardBackward({.batch_size = stage.micro_batch(),
                                                      .seq_len = stage.seq_len(),
                                                      .ids = ids,
                                                      .targets = targets,
                                                      .loss_normalizer = global_tokens}));
      loss_sum += result.loss_sum;
    }
    const double loss = loss_sum / static_cast<double>(global_tokens);
    if (s.options.gradient_hook) s.options.gradient_hook(s.step, model->grads());
    const double lr = LearningRate(schedule, s.step);
    StepStats stats{.skipped = true};
    if (std::isfinite(loss)) {
      QTRAIN_ASSIGN_OR_RETURN(stats, optimizer.Step(model->params(), model->grads(), lr));
    }
    if (stats.skipped) {
      ++s.skipped_steps;
      ++s.consecutive_nonfinite;
      s.Event(absl::StrCat("step ", s.step + 1, " skipped: non-finite ",
                           std::isfinite(loss) ? "gradients" : "loss"));
      if (s.consecutive_nonfinite >= o.max_consecutive_nonfinite_steps()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "stopping: ", s.consecutive_nonfinite,
            " steps in a row had a non-finite loss or "
            "gradients (optimizer.max_consecutive_nonfinite_steps = ",
            o.max_consecutive_nonfinite_steps(), "); lower optimizer.lr or check the data"));
      }
    } else {
      s.consecutive_nonfinite = 0;
      s.last_loss = loss;
    }
    ++s.step;
    s.tokens_seen += global_tokens;
    tokens_this_process += global_tokens;

    StepReport report;
    report.stage = stage_index;
    report.stage_name = stage.name();
    report.step = s.step;
    report.total_steps = s.total_steps;
    report.loss = loss;
    report.learning_rate = lr;
    report.grad_norm = stats.grad_norm;
    report.skipped = stats.skipped;
    report.skipped_total = s.skipped_steps;
    report.tokens_seen = s.tokens_seen;
    report.step_seconds = Seconds(Clock::now() - step_start);
    report.data_seconds = Seconds(data_time);
    const double elapsed = Seconds(Clock::now() - started);
    report.tokens_per_second = elapsed > 0 ? static_cast<double>(tokens_this_process) / elapsed : 0;
    report.eta_seconds = report.tokens_per_second > 0
                             ? static_cast<double>((s.total_steps - s.step) * global_tokens) /
                                   report.tokens_per_second
                             : 0;
    const bool stage_ends = s.step == s.stage_start[stage_index + 1];
    const int64_t eval_every = s.spec.eval().every_steps();
    if (s.spec.eval().batches() > 0 &&
        ((eval_every > 0 && s.step % eval_every == 0) || s.step == s.total_steps)) {
      QTRAIN_ASSIGN_OR_RETURN(double eval_loss, s.Evaluate(*model, stage));
      report.eval_loss = eval_loss;
      s.last_eval_loss = eval_loss;
    }
    nlohmann::json record = {
        {"step", report.step},
        {"stage", report.stage},
        {"loss", std::isfinite(loss) ? nlohmann::json(loss) : nlohmann::json()},
        {"lr", lr},
        {"grad_norm", stats.grad_norm},
        {"skipped", stats.skipped},
        {"tokens_seen", report.tokens_seen},
        {"tokens_per_second", report.tokens_per_second},
        {"step_seconds", report.step_seconds},
        {"data_seconds", report.data_seconds}};
    if (report.eval_loss) record["eval_loss"] = *report.eval_loss;
    QTRAIN_RETURN_IF_ERROR(metrics.Append(record));
    if (s.options.on_step) s.options.on_step(report);
    s.Fault("step_done");

    const int64_t every = s.spec.checkpoint().every_steps();
    if ((every > 0 && s.step % every == 0) || stage_ends || s.step == stop_at) {
      QTRAIN_RETURN_IF_ERROR(s.SaveCheckpoint(store, *model, optimizer));
    }
  }

  TrainerSummary summary;
  summary.steps = s.step;
  summary.tokens_seen = s.tokens_seen;
  summary.skipped_steps = s.skipped_steps;
  summary.final_eval_loss = s.last_eval_loss;
  summary.completed = s.step == s.total_steps;
  if (!summary.completed) return summary;
  if (s.spec.eval().batches() > 0) {
    QTRAIN_ASSIGN_OR_RETURN(summary.validation_unigram_entropy,
                            s.UnigramEntropy(s.spec.curriculum(s.spec.curriculum_size() - 1)));
  }

  // The finished model, from the final checkpoint (also when this process trained nothing).
  QTRAIN_ASSIGN_OR_RETURN(CheckpointInfo final_checkpoint, store.LatestGood());
  if (final_checkpoint.step != s.total_steps) {
    return absl::InternalError("the final checkpoint is missing");
  }
  const model::ModelConfig final_config =
      StageConfig(s.base_config, s.spec.curriculum(s.spec.curriculum_size() - 1));
  QTRAIN_RETURN_IF_ERROR(model::LoadWeights(final_checkpoint.directory, final_config, params));
  summary.final_dir = s.options.run_dir + "/final";
  QTRAIN_RETURN_IF_ERROR(model::SaveCheckpoint(summary.final_dir, final_config, params));
  QTRAIN_ASSIGN_OR_RETURN(std::vector<nlohmann::json> records,
                          MetricsLog::ReadAll(s.options.run_dir + "/metrics.jsonl"));
  std::vector<int64_t> starts(s.stage_start.begin(), s.stage_start.end() - 1);
  QTRAIN_RETURN_IF_ERROR(WriteLossCurveSvg(s.options.run_dir + "/loss.svg", records, starts));
  return summary;
}

}  // namespace qtrain::train
