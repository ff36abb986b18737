// The coordinator's metrics through the test harness (fake clock, workers driven by hand):
// counts by state, a running job's per-job series, the event counters, and per-job series
// gone once a job finishes.
#include "coordinator/metrics.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/metrics_registry.h"
#include "coordinator/coordinator_test_util.h"
#include "gtest/gtest.h"
#include "prometheus/text_serializer.h"

namespace qtrain::coordinator {
namespace {

using ::qtrain::coordinator::testing::Harness;
using ::qtrain::coordinator::testing::TestSpec;
using Labels = std::vector<prometheus::ClientMetric::Label>;

// A registry with the counters and a collector over the harness's coordinator.
class Metrics {
 public:
  Metrics() : counters_(*registry_) {}
  CoordinatorMetrics* counters() { return &counters_; }
  // (Re)attaches the state collector to `h`'s current coordinator.
  void Attach(Harness& h) {
    state_ = std::make_shared<CoordinatorStateCollector>(&h.c());
    registry_->AddCollectable(state_);
  }

  // The value of series `name`{labels} (gauge or counter); nullopt when absent.
  std::optional<double> Value(const std::string& name, Labels labels = {}) const {
    std::sort(labels.begin(), labels.end());
    for (const auto& family : registry_->Collect()) {
      if (family.name != name) continue;
      for (const auto& metric : family.metric) {
        Labels have = metric.label;
        std::sort(have.begin(), have.end());
        if (have != labels) continue;
        return family.type == prometheus::MetricType::Counter ? metric.counter.value
                                                              : metric.gauge.value;
      }
    }
    return std::nullopt;
  }
  // Every series of any family that carries job_id="id".
  std::vector<std::string> SeriesOf(const std::string& id) const {
    std::vector<std::string> found;
    for (const auto& family : registry_->Collect()) {
      for (const auto& metric : family.metric) {
        for (const auto& label : metric.label) {
          if (label.name == "job_id" && label.value == id) found.push_back(family.name);
        }
      }
    }
    return found;
  }
  std::string Text() const { return prometheus::TextSerializer().Serialize(registry_->Collect()); }

 private:
  std::shared_ptr<MetricsRegistry> registry_ = std::make_shared<MetricsRegistry>();
  CoordinatorMetrics counters_;
  std::shared_ptr<CoordinatorStateCollector> state_;
};

double Unix(absl::Time t) { return static_cast<double>(absl::ToUnixMicros(t)) / 1e6; }

TEST(CoordinatorMetricsTest, CountsJobsAndWorkersByState) {
  Metrics m;
  Harness h("metrics_states", absl::Seconds(10), absl::Seconds(1), m.counters());
  m.Attach(h);
  for (const char* state : {"QUEUED", "SCHEDULING", "RUNNING", "RESTARTING", "SUCCEEDED", "FAILED",
                            "CANCELLING", "CANCELLED"}) {
    EXPECT_EQ(m.Value("qtrain_jobs", {{"state", state}}), 0) << state;
  }
  for (const char* state : {"IDLE", "ASSIGNED", "DRAINING", "LOST"}) {
    EXPECT_EQ(m.Value("qtrain_workers", {{"state", state}}), 0) << state;
  }
  EXPECT_FALSE(m.Value("qtrain_jobs", {{"state", "UNSPECIFIED"}}).has_value());
  EXPECT_EQ(m.Value("qtrain_checkpoints_total", {{"state", "COMMITTED"}}), 0);
  EXPECT_EQ(m.Value("qtrain_checkpoints_total", {{"state", "FAILED"}}), 0);
  EXPECT_EQ(m.Value("qtrain_lease_expiries_total"), 0);

  h.Submit(TestSpec("a"), "a");
  h.Submit(TestSpec("b"), "b");
  const std::string c = h.Submit(TestSpec("c"), "c");
  EXPECT_EQ(m.Value("qtrain_jobs", {{"state", "QUEUED"}}), 3);
  h.Register("w");
  h.Register("w");
  EXPECT_EQ(m.Value("qtrain_jobs", {{"state", "QUEUED"}}), 1);
  EXPECT_EQ(m.Value("qtrain_jobs", {{"state", "SCHEDULING"}}), 2);
  EXPECT_EQ(m.Value("qtrain_workers", {{"state", "ASSIGNED"}}), 2);
  EXPECT_EQ(m.Value("qtrain_workers", {{"state", "IDLE"}}), 0);
  v1::CancelJobRequest cancel;
  cancel.set_name(c);
  ASSERT_TRUE(h.c().CancelJob(cancel).ok());
  EXPECT_EQ(m.Value("qtrain_jobs", {{"state", "QUEUED"}}), 0);
  EXPECT_EQ(m.Value("qtrain_jobs", {{"state", "CANCELLED"}}), 1);
  const std::string text = m.Text();
  EXPECT_NE(text.find("qtrain_jobs{state=\"SCHEDULING\"} 2"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE qtrain_job_restarts_total counter"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE qtrain_jobs gauge"), std::string::npos) << text;
}

TEST(CoordinatorMetricsTest, RunningJobProgressEtaStateAndLastProgress) {
  Metrics m;
  Harness h("metrics_progress", absl::Seconds(10), absl::Seconds(1), m.counters());
  m.Attach(h);
  const absl::Time created = h.now();
  const std::string job = h.Submit(TestSpec(), "r");
  const std::string id = "t-1";
  EXPECT_EQ(m.Value("qtrain_job_state", {{"job_id", id}, {"state", "QUEUED"}}), 1);
  EXPECT_EQ(m.Value("qtrain_job_progress_ratio", {{"job_id", id}}), 0);
  EXPECT_EQ(m.Value("qtrain_job_restarts_total", {{"job_id", id}}), 0);
  EXPECT_EQ(m.Value("qtrain_job_last_progress_timestamp_seconds", {{"job_id", id}}), Unix(created));
  EXPECT_FALSE(m.Value("qtrain_job_eta_seconds", {{"job_id", id}}).has_value());

  const std::string w = h.Register("w");
  auto a = h.TakeAssignment(w);
  ASSERT_TRUE(a);
  h.Advance(absl::Seconds(3));
  const absl::Time running = h.now();
  v1::WorkerProgress p = Harness::Progress(*a, 0);
  p.set_eta_seconds(240);
  ASSERT_TRUE(h.Beat(w, v1::WORKER_PHASE_TRAINING, &p).ok());
  ASSERT_EQ(h.State(job), v1::JOB_STATE_RUNNING);
  // One state series per job: its current state.
  EXPECT_EQ(m.Value("qtrain_job_state", {{"job_id", id}, {"state", "RUNNING"}}), 1);
  EXPECT_FALSE(m.Value("qtrain_job_state", {{"job_id", id}, {"state", "QUEUED"}}).has_value());
  EXPECT_FALSE(m.Value("qtrain_job_state", {{"job_id", id}, {"state", "SCHEDULING"}}).has_value());
  EXPECT_EQ(m.Value("qtrain_job_eta_seconds", {{"job_id", id}}), 240);
  EXPECT_EQ(m.Value("qtrain_job_last_progress_timestamp_seconds", {{"job_id", id}}), Unix(running));

  h.Advance(absl::Seconds(4));
  const absl::Time stepped = h.now();
  p.set_step(3);
  p.set_eta_seconds(80);
  ASSERT_TRUE(h.Beat(w, v1::WORKER_PHASE_TRAINING, &p).ok());
  EXPECT_DOUBLE_EQ(*m.Value("qtrain_job_progress_ratio", {{"job_id", id}}), 3.0 / 6.0);
  EXPECT_EQ(m.Value("qtrain_job_eta_seconds", {{"job_id", id}}), 80);
  EXPECT_EQ(m.Value("qtrain_job_last_progress_timestamp_seconds", {{"job_id", id}}), Unix(stepped));
  // The same step again is no progress.
  h.Advance(absl::Seconds(5));
  ASSERT_TRUE(h.Beat(w, v1::WORKER_PHASE_TRAINING, &p).ok());
  EXPECT_EQ(m.Value("qtrain_job_last_progress_timestamp_seconds", {{"job_id", id}}), Unix(stepped));

  // A restarted coordinator keeps the round; the job's clock starts at the load.
  h.Advance(absl::Seconds(2));
  h.Reopen();
  m.Attach(h);
  EXPECT_EQ(m.Value("qtrain_job_state", {{"job_id", id}, {"state", "RUNNING"}}), 1);
  EXPECT_EQ(m.Value("qtrain_job_last_progress_timestamp_seconds", {{"job_id", id}}), Unix(h.now()));
  EXPECT_DOUBLE_EQ(*m.Value("qtrain_job_progress_ratio", {{"job_id", id}}), 3.0 / 6.0);
}

TEST(CoordinatorMetricsTest, LeaseExpiriesCheckpointsAndRestarts) {
  Metrics m;
  Harness h("metrics_events", absl::Seconds(10), absl::Seconds(1), m.counters());
  m.Attach(h);
  v1::JobSpec spec = TestSpec();
  spec.mutable_world()->set_min_workers(2);
  spec.mutable_world()->set_max_workers(2);
  const std::string job = h.Submit(spec, "r");
  const std::string w0 = h.Register("w");
  const std::string w1 = h.Register("w");
  auto a0 = h.TakeAssignment(w0);
  auto a1 = h.TakeAssignment(w1);
  ASSERT_TRUE(a0 && a1);
  ASSERT_TRUE(h.Commit(w0, *a0, 2).ok());
  EXPECT_EQ(m.Value("qtrain_checkpoints_total", {{"state", "COMMITTED"}}), 0);  // one rank of two
  ASSERT_TRUE(h.Commit(w1, *a1, 2).ok());
  EXPECT_EQ(m.Value("qtrain_checkpoints_total", {{"state", "COMMITTED"}}), 1);
  ASSERT_TRUE(h.Commit(w0, *a0, 2).ok());  // a retry: not a second commit
  EXPECT_EQ(m.Value("qtrain_checkpoints_total", {{"state", "COMMITTED"}}), 1);
  EXPECT_EQ(m.Value("qtrain_checkpoints_total", {{"state", "FAILED"}}), 0);

  // A refused commit: files that are not there.
  v1::CommitCheckpointRequest bad;
  bad.set_worker(w0);
  bad.set_job(job);
  bad.set_round(1);
  bad.set_rank(0);
  bad.set_step(3);
  bad.set_directory(a0->checkpoint_directory() + "/step-000000000003");
  bad.add_files()->set_path("missing.bin");
  ASSERT_FALSE(h.c().CommitCheckpoint(bad).ok());
  EXPECT_EQ(m.Value("qtrain_checkpoints_total", {{"state", "FAILED"}}), 1);

  // Rank 0 reports step 3, then rank 1 goes silent: the lease expires, the round ends and the
  // half-written checkpoint is abandoned.
  ASSERT_TRUE(h.Commit(w0, *a0, 3).ok());
  h.Advance(absl::Seconds(6));
  ASSERT_TRUE(h.Beat(w0).ok());
  EXPECT_EQ(m.Value("qtrain_lease_expiries_total"), 0);
  h.Advance(absl::Seconds(6));
  EXPECT_EQ(m.Value("qtrain_lease_expiries_total"), 1);
  EXPECT_EQ(m.Value("qtrain_checkpoints_total", {{"state", "FAILED"}}), 2);
  EXPECT_EQ(m.Value("qtrain_checkpoints_total", {{"state", "COMMITTED"}}), 1);
  EXPECT_EQ(m.Value("qtrain_workers", {{"state", "LOST"}}), 1);
  EXPECT_EQ(h.State(job), v1::JOB_STATE_RESTARTING);
  EXPECT_EQ(m.Value("qtrain_job_restarts_total", {{"job_id", "t-1"}}), 1);
  EXPECT_EQ(m.Value("qtrain_job_state", {{"job_id", "t-1"}, {"state", "RESTARTING"}}), 1);
  EXPECT_EQ(m.Value("qtrain_jobs", {{"state", "RESTARTING"}}), 1);
  // The lost worker's lease is not counted twice.
  h.Advance(absl::Seconds(1));
  ASSERT_TRUE(h.Beat(w0).ok());
  h.Advance(absl::Seconds(1));
  EXPECT_EQ(m.Value("qtrain_lease_expiries_total"), 1);
}

TEST(CoordinatorMetricsTest, FinishedJobsHaveNoPerJobSeries) {
  Metrics m;
  Harness h("metrics_finished", absl::Seconds(10), absl::Seconds(1), m.counters());
  m.Attach(h);
  const std::string w = h.Register("w");

  // Succeeds: two stages.
  const std::string ok = h.Submit(TestSpec("ok"), "ok");
  auto a = h.TakeAssignment(w);
  ASSERT_TRUE(a);
  ASSERT_TRUE(h.Train(w, *a, 2).ok());
  EXPECT_FALSE(m.SeriesOf("ok-1").empty());
  ASSERT_TRUE(h.Commit(w, *a, 4).ok());
  ASSERT_TRUE(h.Complete(w, *a).ok());
  auto b = h.TakeAssignment(w);
  ASSERT_TRUE(b);
  ASSERT_TRUE(h.Train(w, *b, 5).ok());
  ASSERT_TRUE(h.Commit(w, *b, 6).ok());
  ASSERT_TRUE(h.Complete(w, *b).ok());
  ASSERT_EQ(h.State(ok), v1::JOB_STATE_SUCCEEDED);

  // Fails: a fatal reported failure.
  const std::string bad = h.Submit(TestSpec("bad"), "bad");
  auto c = h.TakeAssignment(w);
  ASSERT_TRUE(c);
  EXPECT_FALSE(m.SeriesOf("bad-2").empty());
  v1::ReportFailureRequest failure;
  failure.set_worker(w);
  failure.set_job(bad);
  failure.set_round(c->round());
  failure.set_message("bad");
  ASSERT_TRUE(h.c().ReportFailure(failure).ok());
  ASSERT_EQ(h.State(bad), v1::JOB_STATE_FAILED);

  // Cancelled while running: CANCELLING until the rank stops.
  const std::string gone = h.Submit(TestSpec("gone"), "gone");
  auto abort = h.NextDirective(w);  // of the failed round first
  ASSERT_TRUE(abort && abort->has_abort());
  auto d = h.TakeAssignment(w);
  ASSERT_TRUE(d);
  ASSERT_TRUE(h.Train(w, *d, 1).ok());
  EXPECT_FALSE(m.SeriesOf("gone-3").empty());
  v1::CancelJobRequest cancel;
  cancel.set_name(gone);
  ASSERT_TRUE(h.c().CancelJob(cancel).ok());
  EXPECT_EQ(m.Value("qtrain_job_state", {{"job_id", "gone-3"}, {"state", "CANCELLING"}}), 1);
  v1::WorkerProgress stopped = Harness::Progress(*d, 1);
  ASSERT_TRUE(h.Beat(w, v1::WORKER_PHASE_STOPPED, &stopped).ok());
  ASSERT_EQ(h.State(gone), v1::JOB_STATE_CANCELLED);

  for (const char* id : {"ok-1", "bad-2", "gone-3"}) {
    EXPECT_TRUE(m.SeriesOf(id).empty()) << id << ": " << m.SeriesOf(id).front();
  }
  EXPECT_EQ(m.Value("qtrain_jobs", {{"state", "SUCCEEDED"}}), 1);
  EXPECT_EQ(m.Value("qtrain_jobs", {{"state", "FAILED"}}), 1);
  EXPECT_EQ(m.Value("qtrain_jobs", {{"state", "CANCELLED"}}), 1);
  EXPECT_EQ(m.Value("qtrain_checkpoints_total", {{"state", "COMMITTED"}}), 2);
  // An unfinished job still has its series next to the finished ones.
  h.Submit(TestSpec("next"), "next");
  EXPECT_EQ(m.Value("qtrain_job_state", {{"job_id", "next-4"}, {"state", "SCHEDULING"}}), 1);
}

TEST(CoordinatorMetricsTest, WithoutMetricsNothingIsCounted) {
  Harness h("metrics_none");
  const std::string w = h.Register("w");
  h.Submit(TestSpec(), "r");
  auto a = h.TakeAssignment(w);
  ASSERT_TRUE(a);
  ASSERT_TRUE(h.Commit(w, *a, 2).ok());
  h.Advance(absl::Seconds(11));  // the lease expires with no metrics object
  const CoordinatorSnapshot snapshot = h.c().MetricsSnapshot();
  EXPECT_EQ(snapshot.jobs_by_state.at(v1::JOB_STATE_RESTARTING), 1);
  EXPECT_EQ(snapshot.workers_by_state.at(v1::WORKER_STATE_LOST), 1);
  ASSERT_EQ(snapshot.jobs.size(), 1u);
  EXPECT_EQ(snapshot.jobs[0].restarts, 1);
}

}  // namespace
}  // namespace qtrain::coordinator
