// The worker daemon's Prometheus metrics: per-assignment training series labelled
// job_id/stage/rank (created on the assignment's first progress, removed when it ends or
// another begins, so labels never pile up), the results of the job's eval tasks
// (qtrain_eval_metric{job_id,stage,task,metric}: they come at a stage's end, so they stay until
// the worker trains another job or the job's final results' assignment ends) and
// qtrain_worker_up.
//
//   auto registry = std::make_shared<prometheus::Registry>();
//   WorkerMetrics metrics(registry, KnownPeakFlops(device, device_name));
//   metrics.OnProgress(assignment, progress);  // every step
//   metrics.OnAssignmentEnded(completed);      // done, failed, aborted, child gone
#ifndef QTRAIN_WORKER_DAEMON_WORKER_METRICS_H_
#define QTRAIN_WORKER_DAEMON_WORKER_METRICS_H_

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "qtrain/v1/jobs.pb.h"
#include "qtrain/v1/worker.pb.h"

namespace qtrain::worker {

// The peak FLOP/s of a known device at bf16/fp16 (by CUDA device name: A100, H100, H200);
// nullopt for a CPU or an unknown device.
std::optional<double> KnownPeakFlops(v1::DeviceKind device, absl::string_view device_name);

// Why `peak_flops` cannot be a device's peak FLOP/s (not finite or not > 0), if it cannot.
std::optional<std::string> PeakFlopsProblem(double peak_flops);

class WorkerMetrics {
 public:
  // Registers the families on `registry` (qtrain_worker_up at 0). `peak_flops`: the device's
  // peak FLOP/s; without it there is no qtrain_model_flops_utilization.
  WorkerMetrics(std::shared_ptr<prometheus::Registry> registry, std::optional<double> peak_flops);
  ~WorkerMetrics();  // removes the series it made

  WorkerMetrics(const WorkerMetrics&) = delete;
  WorkerMetrics& operator=(const WorkerMetrics&) = delete;

  // A step of `assignment` (progress of the child, one per step). A progress with eval_tasks
  // repeats its step's and only sets their qtrain_eval_metric series.
  void OnProgress(const v1::Assignment& assignment, const v1::WorkerProgress& progress);
  // A checkpoint of `assignment` whose files took `write_seconds` to write.
  void OnCheckpoint(const v1::Assignment& assignment, double write_seconds);
  // The current assignment is over: its series go.
  // `completed`: the child trained the assignment to its end and exited 0. Otherwise (failed,
  // aborted, killed) the eval results go too: the job is restarting or over.
  void OnAssignmentEnded(bool completed = false);
  // Registered with the coordinator with a live heartbeat stream.
  void SetUp(bool up);

 private:
  struct Series;
  // The series of `assignment`, made (and the previous assignment's removed) on first use.
  Series& SeriesFor(const v1::Assignment& assignment) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveSeries() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveEvalSeries() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddProgressSeries(Series& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SetEvalMetrics(Series& s, const v1::WorkerProgress& progress)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::shared_ptr<prometheus::Registry> registry_;
  const std::optional<double> peak_flops_;

  prometheus::Family<prometheus::Gauge>& train_loss_;
  prometheus::Family<prometheus::Gauge>& eval_loss_;
  prometheus::Family<prometheus::Gauge>& learning_rate_;
  prometheus::Family<prometheus::Gauge>& grad_norm_;
  prometheus::Family<prometheus::Counter>& tokens_total_;
  prometheus::Family<prometheus::Gauge>& tokens_per_second_;
  prometheus::Family<prometheus::Histogram>& step_seconds_;
  prometheus::Family<prometheus::Counter>& compute_seconds_;
  prometheus::Family<prometheus::Counter>& comm_seconds_;
  prometheus::Family<prometheus::Counter>& data_wait_seconds_;
  prometheus::Family<prometheus::Histogram>& checkpoint_seconds_;
  prometheus::Family<prometheus::Counter>& skipped_steps_;
  prometheus::Family<prometheus::Gauge>& step_;
  prometheus::Family<prometheus::Gauge>& stage_;
  prometheus::Family<prometheus::Gauge>& mfu_;
  prometheus::Family<prometheus::Gauge>& memory_bytes_;
  prometheus::Family<prometheus::Gauge>& eval_metric_;
  prometheus::Gauge& up_;

  absl::Mutex mu_;
  std::unique_ptr<Series> series_ ABSL_GUARDED_BY(mu_);
  // qtrain_eval_metric series of eval_job_ (every stage's), kept until another job's progress.
  std::map<prometheus::Labels, prometheus::Gauge*> eval_series_ ABSL_GUARDED_BY(mu_);
  std::string eval_job_ ABSL_GUARDED_BY(mu_);
  bool eval_final_ ABSL_GUARDED_BY(mu_) = false;  // the job's final results are among them
};

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_WORKER_METRICS_H_
