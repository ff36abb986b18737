#include "worker/daemon/worker_metrics.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace qtrain::worker {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;

// Wall-time buckets from 5 ms to 10 minutes, about x2.5 apart.
const Histogram::BucketBoundaries& SecondsBuckets() {
  static const auto* buckets = new Histogram::BucketBoundaries{
      0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 600};
  return *buckets;
}

Family<Gauge>& GaugeFamily(prometheus::Registry& r, const std::string& name,
                           const std::string& help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r);
}

Family<Counter>& CounterFamily(prometheus::Registry& r, const std::string& name,
                               const std::string& help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r);
}

Family<prometheus::Histogram>& HistogramFamily(prometheus::Registry& r, const std::string& name,
                                               const std::string& help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r);
}

// The stage's name in the spec (unique there); its index when the spec has no such stage.
std::string StageLabel(const v1::Assignment& a) {
  const v1::JobSpec& spec = a.spec();
  if (a.stage() >= 0 && a.stage() < spec.curriculum_size() &&
      !spec.curriculum(static_cast<int>(a.stage())).name().empty()) {
    return spec.curriculum(static_cast<int>(a.stage())).name();
  }
  return absl::StrCat(a.stage());
}

prometheus::Labels LabelsOf(const v1::Assignment& a) {
  return {{"job_id", std::string(absl::StripPrefix(a.job(), "jobs/"))},
          {"stage", StageLabel(a)},
          {"rank", absl::StrCat(a.rank())}};
}

// A finite, non-negative amount of seconds (anything else counts as none).
double Seconds(double value) { return std::isfinite(value) && value > 0 ? value : 0; }

template <typename T>
void RemoveFrom(Family<T>& family, T*& metric) {
  if (metric != nullptr) family.Remove(metric);
  metric = nullptr;
}

}  // namespace

std::optional<double> KnownPeakFlops(v1::DeviceKind device, absl::string_view device_name) {
  if (device != v1::DEVICE_KIND_CUDA) return std::nullopt;
  // Dense bf16/fp16 tensor-core peaks (no sparsity).
  static constexpr std::pair<absl::string_view, double> kTable[] = {
      {"A100", 312e12}, {"H100", 989e12}, {"H200", 989e12}};
  for (const auto& [name, peak] : kTable) {
    if (absl::StrContains(device_name, name)) return peak;
  }
  return std::nullopt;
}

std::optional<std::string> PeakFlopsProblem(double peak_flops) {
  if (!std::isfinite(peak_flops) || peak_flops <= 0) {
    return absl::StrCat(peak_flops, " is not a finite number > 0");
  }
  return std::nullopt;
}

// The series of one (job, stage, rank); null until made.
struct WorkerMetrics::Series {
  prometheus::Labels labels;
  Gauge* train_loss = nullptr;
  Gauge* eval_loss = nullptr;
  Gauge* learning_rate = nullptr;
  Gauge* grad_norm = nullptr;
  Counter* tokens_total = nullptr;
  Gauge* tokens_per_second = nullptr;
  Histogram* step_seconds = nullptr;
  Counter* compute_seconds = nullptr;
  Counter* comm_seconds = nullptr;
  Counter* data_wait_seconds = nullptr;
  Histogram* checkpoint_seconds = nullptr;
  Counter* skipped_steps = nullptr;
  Gauge* step = nullptr;
  Gauge* stage = nullptr;
  Gauge* mfu = nullptr;
  Gauge* memory_bytes = nullptr;
};

WorkerMetrics::WorkerMetrics(std::shared_ptr<prometheus::Registry> registry,
                             std::optional<double> peak_flops)
    : registry_(std::move(registry)),
      peak_flops_(peak_flops && !PeakFlopsProblem(*peak_flops) ? peak_flops : std::nullopt),
      train_loss_(GaugeFamily(*registry_, "qtrain_train_loss",
                              "Mean training loss of the last optimizer step.")),
      eval_loss_(
          GaugeFamily(*registry_, "qtrain_eval_loss", "Validation loss of the last evaluation.")),
      learning_rate_(
          GaugeFamily(*registry_, "qtrain_learning_rate", "Learning rate of the last step.")),
      grad_norm_(GaugeFamily(*registry_, "qtrain_grad_norm",
                             "Global gradient norm of the last step, before clipping.")),
      tokens_total_(
          CounterFamily(*registry_, "qtrain_tokens_total", "Tokens this rank trained on.")),
      tokens_per_second_(GaugeFamily(*registry_, "qtrain_tokens_per_second",
                                     "This rank's training tokens per second in the last step.")),
      step_seconds_(
          HistogramFamily(*registry_, "qtrain_step_seconds", "Wall time per optimizer step.")),
      compute_seconds_(CounterFamily(*registry_, "qtrain_compute_seconds_total",
                                     "Step time not spent waiting for data or in collectives.")),
      comm_seconds_(CounterFamily(*registry_, "qtrain_comm_seconds_total",
                                  "Step time spent in collectives, waiting for peers included.")),
      data_wait_seconds_(CounterFamily(*registry_, "qtrain_data_wait_seconds_total",
                                       "Step time spent waiting for training data.")),
      checkpoint_seconds_(HistogramFamily(*registry_, "qtrain_checkpoint_seconds",
                                          "Seconds this rank spent writing a checkpoint.")),
      skipped_steps_(CounterFamily(*registry_, "qtrain_skipped_steps_total",
                                   "Steps of the job skipped for non-finite gradients.")),
      step_(GaugeFamily(*registry_, "qtrain_step", "Optimizer steps completed in the job.")),
      stage_(GaugeFamily(*registry_, "qtrain_stage", "Index of the curriculum stage.")),
      mfu_(GaugeFamily(*registry_, "qtrain_model_flops_utilization",
                       "Model FLOPs per second over the device's peak (0..1).")),
      memory_bytes_(GaugeFamily(*registry_, "qtrain_memory_bytes",
                                "Memory of the training process (resident; device on CUDA).")),
      eval_metric_(GaugeFamily(*registry_, "qtrain_eval_metric",
                               "A metric of an eval task (eval.tasks) at the stage's end.")),
      up_(GaugeFamily(*registry_, "qtrain_worker_up",
                      "1 while registered with the coordinator with a live heartbeat stream.")
              .Add({})) {}

WorkerMetrics::~WorkerMetrics() {
  absl::MutexLock lock(&mu_);
  RemoveSeries();
  RemoveEvalSeries();
}

void WorkerMetrics::SetUp(bool up) { up_.Set(up ? 1 : 0); }

WorkerMetrics::Series& WorkerMetrics::SeriesFor(const v1::Assignment& assignment) {
  prometheus::Labels labels = LabelsOf(assignment);
  if (series_ != nullptr && series_->labels == labels) return *series_;
  RemoveSeries();
  if (labels.at("job_id") != eval_job_) RemoveEvalSeries();
  series_ = std::make_unique<Series>();
  series_->labels = std::move(labels);
  return *series_;
}

void WorkerMetrics::AddProgressSeries(Series& s) {
  if (s.train_loss != nullptr) return;
  const prometheus::Labels& l = s.labels;
  s.train_loss = &train_loss_.Add(l);
  s.learning_rate = &learning_rate_.Add(l);
  s.grad_norm = &grad_norm_.Add(l);
  s.tokens_total = &tokens_total_.Add(l);
  s.tokens_per_second = &tokens_per_second_.Add(l);
  s.step_seconds = &step_seconds_.Add(l, SecondsBuckets());
  s.compute_seconds = &compute_seconds_.Add(l);
  s.comm_seconds = &comm_seconds_.Add(l);
  s.data_wait_seconds = &data_wait_seconds_.Add(l);
  s.skipped_steps = &skipped_steps_.Add(l);
  s.step = &step_.Add(l);
  s.stage = &stage_.Add(l);
  s.memory_bytes = &memory_bytes_.Add(l);
  if (peak_flops_) s.mfu = &mfu_.Add(l);
}

void WorkerMetrics::RemoveSeries() {
  if (series_ == nullptr) return;
  Series& s = *series_;
  RemoveFrom(train_loss_, s.train_loss);
  RemoveFrom(eval_loss_, s.eval_loss);
  RemoveFrom(learning_rate_, s.learning_rate);
  RemoveFrom(grad_norm_, s.grad_norm);
  RemoveFrom(tokens_total_, s.tokens_total);
  RemoveFrom(tokens_per_second_, s.tokens_per_second);
  RemoveFrom(step_seconds_, s.step_seconds);
  RemoveFrom(compute_seconds_, s.compute_seconds);
  RemoveFrom(comm_seconds_, s.comm_seconds);
  RemoveFrom(data_wait_seconds_, s.data_wait_seconds);
  RemoveFrom(checkpoint_seconds_, s.checkpoint_seconds);
  RemoveFrom(skipped_steps_, s.skipped_steps);
  RemoveFrom(step_, s.step);
  RemoveFrom(stage_, s.stage);
  RemoveFrom(mfu_, s.mfu);
  RemoveFrom(memory_bytes_, s.memory_bytes);
  series_.reset();
}

void WorkerMetrics::RemoveEvalSeries() {
  for (auto& [labels, gauge] : eval_series_) RemoveFrom(eval_metric_, gauge);
  eval_series_.clear();
  eval_job_.clear();
  eval_final_ = false;
}

void WorkerMetrics::OnProgress(const v1::Assignment& assignment,
                               const v1::WorkerProgress& progress) {
  absl::MutexLock lock(&mu_);
  Series& s = SeriesFor(assignment);
  if (!progress.eval_tasks().empty()) {
    SetEvalMetrics(s, progress);
    return;
  }
  AddProgressSeries(s);
  s.train_loss->Set(progress.loss());
  s.learning_rate->Set(progress.learning_rate());
  s.grad_norm->Set(progress.grad_norm());
  if (progress.has_eval_loss()) {
    if (s.eval_loss == nullptr) s.eval_loss = &eval_loss_.Add(s.labels);
    s.eval_loss->Set(progress.eval_loss());
  }
  const double step_seconds = Seconds(progress.step_seconds());
  const double data_wait = Seconds(progress.data_wait_seconds());
  const double comm = Seconds(progress.comm_seconds());
  const double tokens = static_cast<double>(std::max<int64_t>(progress.rank_tokens(), 0));
  s.tokens_total->Increment(tokens);
  s.step_seconds->Observe(step_seconds);
  s.compute_seconds->Increment(std::max(0.0, step_seconds - data_wait - comm));
  s.comm_seconds->Increment(comm);
  s.data_wait_seconds->Increment(data_wait);
  // The job's count, as a counter: it only grows within an assignment.
  const double skipped = static_cast<double>(progress.skipped_steps());
  if (skipped > s.skipped_steps->Value()) {
    s.skipped_steps->Increment(skipped - s.skipped_steps->Value());
  }
  s.step->Set(static_cast<double>(progress.step()));
  s.stage->Set(static_cast<double>(progress.stage()));
  s.memory_bytes->Set(static_cast<double>(progress.memory_bytes()));
  const double tokens_per_second = step_seconds > 0 ? tokens / step_seconds : 0;
  s.tokens_per_second->Set(tokens_per_second);
  if (s.mfu != nullptr) {
    const double flops = std::isfinite(progress.flops_per_token()) ? progress.flops_per_token() : 0;
    s.mfu->Set(std::max(0.0, flops) * tokens_per_second / *peak_flops_);
  }
}

// Labelled without the rank: only rank 0 evaluates. The results come at a stage's end, just
// before its assignment ends, so they outlive the assignment (a scrape must find them): they
// stay until this worker trains another job, until the assignment of the job's final results
// (the job's end: a finished job leaves no series) ends, or until an assignment of the job
// fails or is aborted (it restarts or is over).
void WorkerMetrics::SetEvalMetrics(Series& s, const v1::WorkerProgress& progress) {
  eval_job_ = s.labels.at("job_id");
  for (const v1::EvalTaskResult& result : progress.eval_tasks()) {
    if (result.final()) eval_final_ = true;
    for (const auto& [metric, value] : result.metrics()) {
      const prometheus::Labels labels = {{"job_id", eval_job_},
                                         {"stage", s.labels.at("stage")},
                                         {"task", result.name()},
                                         {"metric", metric}};
      Gauge*& gauge = eval_series_[labels];
      if (gauge == nullptr) gauge = &eval_metric_.Add(labels);
      gauge->Set(value);
    }
  }
}

void WorkerMetrics::OnCheckpoint(const v1::Assignment& assignment, double write_seconds) {
  absl::MutexLock lock(&mu_);
  Series& s = SeriesFor(assignment);
  if (s.checkpoint_seconds == nullptr) {
    s.checkpoint_seconds = &checkpoint_seconds_.Add(s.labels, SecondsBuckets());
  }
  s.checkpoint_seconds->Observe(Seconds(write_seconds));
}

void WorkerMetrics::OnAssignmentEnded(bool completed) {
  absl::MutexLock lock(&mu_);
  RemoveSeries();
  if (eval_final_ || !completed) RemoveEvalSeries();
}

}  // namespace qtrain::worker
