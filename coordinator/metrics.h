// The coordinator's Prometheus metrics. Event counters (lease expiries, checkpoint outcomes)
// are incremented where the events happen; everything derived from the state (jobs and workers
// by state, per-job progress) is computed at scrape time from Coordinator::MetricsSnapshot(),
// so per-job series exist exactly while a job is unfinished.
//
//   auto registry = std::make_shared<MetricsRegistry>();
//   CoordinatorMetrics metrics(*registry);
//   options.metrics = &metrics;                     // CoordinatorOptions
//   ... coordinator = Coordinator::Create(options) ...
//   auto state = std::make_shared<CoordinatorStateCollector>(coordinator.get());
//   registry->AddCollectable(state);                // keep `state` while serving
#ifndef QTRAIN_COORDINATOR_METRICS_H_
#define QTRAIN_COORDINATOR_METRICS_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain::coordinator {

class Coordinator;

// What the scrape-time metrics need of one unfinished job.
struct JobMetrics {
  std::string job_id;  // "ID" of "jobs/ID"
  v1::JobState state = v1::JOB_STATE_UNSPECIFIED;
  int64_t restarts = 0;
  int64_t step = 0;
  int64_t total_steps = 0;
  // The ranks' estimate of the seconds to the job's end; absent while unknown.
  std::optional<double> eta_seconds;
  // The last step advance, or when the job began RUNNING or came into this coordinator's
  // memory (created or loaded), whichever is latest.
  absl::Time last_progress;
};

// Coordinator::MetricsSnapshot(): counts of every state (zeros included) and the unfinished
// jobs in creation order.
struct CoordinatorSnapshot {
  std::map<v1::JobState, int64_t> jobs_by_state;
  std::map<v1::WorkerState, int64_t> workers_by_state;
  std::vector<JobMetrics> jobs;
};

// "QUEUED" for JOB_STATE_QUEUED, "IDLE" for WORKER_STATE_IDLE.
std::string JobStateLabel(v1::JobState state);
std::string WorkerStateLabel(v1::WorkerState state);

// The state-derived families of a snapshot: qtrain_jobs, qtrain_workers,
// qtrain_job_restarts_total, qtrain_job_progress_ratio, qtrain_job_eta_seconds,
// qtrain_job_state and qtrain_job_last_progress_timestamp_seconds.
std::vector<prometheus::MetricFamily> SnapshotFamilies(const CoordinatorSnapshot& snapshot);

// A Collectable over a coordinator's state (not owned; it must outlive every Collect call,
// i.e. stop serving metrics before destroying the coordinator).
class CoordinatorStateCollector : public prometheus::Collectable {
 public:
  explicit CoordinatorStateCollector(const Coordinator* coordinator) : coordinator_(coordinator) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const Coordinator* const coordinator_;
};

// The event counters, registered on `registry` (which must outlive this object). Thread-safe.
class CoordinatorMetrics {
 public:
  explicit CoordinatorMetrics(prometheus::Registry& registry);
  CoordinatorMetrics(const CoordinatorMetrics&) = delete;
  CoordinatorMetrics& operator=(const CoordinatorMetrics&) = delete;

  void LeaseExpired() { lease_expiries_.Increment(); }
  void CheckpointCommitted() { checkpoints_committed_.Increment(); }
  // A commit refused or a checkpoint abandoned (its round ended before every rank reported).
  void CheckpointFailed() { checkpoints_failed_.Increment(); }

 private:
  prometheus::Counter& lease_expiries_;
  prometheus::Family<prometheus::Counter>& checkpoints_;
  prometheus::Counter& checkpoints_committed_;
  prometheus::Counter& checkpoints_failed_;
};

}  // namespace qtrain::coordinator

#endif  // QTRAIN_COORDINATOR_METRICS_H_
