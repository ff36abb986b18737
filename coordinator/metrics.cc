#include "coordinator/metrics.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "coordinator/coordinator.h"
#include "prometheus/metric_type.h"

namespace qtrain::coordinator {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

bool IsFinished(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

std::string WithoutPrefix(const std::string& name, absl::string_view prefix) {
  return absl::StartsWith(name, prefix) ? name.substr(prefix.size()) : name;
}

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = type;
  return family;
}

ClientMetric Sample(std::vector<ClientMetric::Label> labels, MetricType type, double value) {
  ClientMetric metric;
  metric.label = std::move(labels);
  if (type == MetricType::Counter) {
    metric.counter.value = value;
  } else {
    metric.gauge.value = value;
  }
  return metric;
}

// One sample per state, zeros included, so that a state's series never vanishes.
template <typename State>
MetricFamily StateCounts(std::string name, std::string help, const std::map<State, int64_t>& counts,
                         std::string (*label)(State)) {
  MetricFamily family = Family(std::move(name), std::move(help), MetricType::Gauge);
  for (const auto& [state, count] : counts) {
    family.metric.push_back(
        Sample({{"state", label(state)}}, MetricType::Gauge, static_cast<double>(count)));
  }
  return family;
}

}  // namespace

std::string JobStateLabel(v1::JobState state) {
  return WithoutPrefix(v1::JobState_Name(state), "JOB_STATE_");
}

std::string WorkerStateLabel(v1::WorkerState state) {
  return WithoutPrefix(v1::WorkerState_Name(state), "WORKER_STATE_");
}

CoordinatorSnapshot Coordinator::MetricsSnapshot() const {
  CoordinatorSnapshot snapshot;
  for (int s = v1::JobState_MIN; s <= v1::JobState_MAX; ++s) {
    if (v1::JobState_IsValid(s) && s != v1::JOB_STATE_UNSPECIFIED) {
      snapshot.jobs_by_state[static_cast<v1::JobState>(s)] = 0;
    }
  }
  for (int s = v1::WorkerState_MIN; s <= v1::WorkerState_MAX; ++s) {
    if (v1::WorkerState_IsValid(s) && s != v1::WORKER_STATE_UNSPECIFIED) {
      snapshot.workers_by_state[static_cast<v1::WorkerState>(s)] = 0;
    }
  }
  absl::MutexLock lock(&mu_);
  for (const auto& record : jobs_) {
    const v1::Job& job = record->job;
    ++snapshot.jobs_by_state[job.state()];
    if (IsFinished(job.state())) continue;
    JobMetrics& m = snapshot.jobs.emplace_back();
    m.job_id = Id(job.name());
    m.state = job.state();
    m.restarts = job.restarts();
    m.step = job.progress().step();
    m.total_steps = job.progress().total_steps();
    if (job.progress().eta_seconds() > 0) m.eta_seconds = job.progress().eta_seconds();
    m.last_progress = record->last_progress;
  }
  for (const auto& record : workers_) ++snapshot.workers_by_state[record->worker.state()];
  return snapshot;
}

std::vector<MetricFamily> SnapshotFamilies(const CoordinatorSnapshot& snapshot) {
  std::vector<MetricFamily> families;
  families.push_back(
      StateCounts("qtrain_jobs", "Jobs in each state.", snapshot.jobs_by_state, &JobStateLabel));
  families.push_back(StateCounts("qtrain_workers", "Workers in each state.",
                                 snapshot.workers_by_state, &WorkerStateLabel));
  MetricFamily restarts =
      Family("qtrain_job_restarts_total", "Restarts of each unfinished job after a failed round.",
             MetricType::Counter);
  MetricFamily progress = Family("qtrain_job_progress_ratio",
                                 "Optimizer steps done over the job's total.", MetricType::Gauge);
  MetricFamily eta =
      Family("qtrain_job_eta_seconds",
             "Estimated seconds to the job's end, from its ranks' throughput.", MetricType::Gauge);
  MetricFamily state =
      Family("qtrain_job_state", "1 for each unfinished job's current state.", MetricType::Gauge);
  MetricFamily last_progress =
      Family("qtrain_job_last_progress_timestamp_seconds",
             "Unix time the job last advanced a step, or began RUNNING (or was loaded), if later.",
             MetricType::Gauge);
  for (const JobMetrics& job : snapshot.jobs) {
    const std::vector<ClientMetric::Label> id = {{"job_id", job.job_id}};
    restarts.metric.push_back(Sample(id, MetricType::Counter, static_cast<double>(job.restarts)));
    const double ratio = job.total_steps > 0
                             ? static_cast<double>(job.step) / static_cast<double>(job.total_steps)
                             : 0.0;
    progress.metric.push_back(Sample(id, MetricType::Gauge, ratio));
    if (job.eta_seconds.has_value()) {
      eta.metric.push_back(Sample(id, MetricType::Gauge, *job.eta_seconds));
    }
    state.metric.push_back(Sample({{"job_id", job.job_id}, {"state", JobStateLabel(job.state)}},
                                  MetricType::Gauge, 1.0));
    last_progress.metric.push_back(Sample(
        id, MetricType::Gauge, static_cast<double>(absl::ToUnixMicros(job.last_progress)) / 1e6));
  }
  families.push_back(std::move(restarts));
  families.push_back(std::move(progress));
  families.push_back(std::move(eta));
  families.push_back(std::move(state));
  families.push_back(std::move(last_progress));
  return families;
}

std::vector<MetricFamily> CoordinatorStateCollector::Collect() const {
  return SnapshotFamilies(coordinator_->MetricsSnapshot());
}

CoordinatorMetrics::CoordinatorMetrics(prometheus::Registry& registry)
    : lease_expiries_(prometheus::BuildCounter()
                          .Name("qtrain_lease_expiries_total")
                          .Help("Worker leases that expired (no heartbeat within the lease).")
                          .Register(registry)
                          .Add({})),
      checkpoints_(prometheus::BuildCounter()
                       .Name("qtrain_checkpoints_total")
                       .Help("Checkpoints committed (COMMITTED) and commits refused or "
                             "checkpoints abandoned (FAILED).")
                       .Register(registry)),
      checkpoints_committed_(checkpoints_.Add({{"state", "COMMITTED"}})),
      checkpoints_failed_(checkpoints_.Add({{"state", "FAILED"}})) {}

}  // namespace qtrain::coordinator
