// WorkerMetrics fed progress and checkpoints, read back from the registry as a scrape would.
#include "worker/daemon/worker_metrics.h"

#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"

namespace qtrain::worker {
namespace {

using ::testing::ElementsAre;
using ::testing::UnorderedElementsAre;

using Labels = std::map<std::string, std::string>;

// name -> its series (labels -> metric); families without series are left out.
std::map<std::string, std::map<Labels, prometheus::ClientMetric>> Scrape(
    prometheus::Registry& registry) {
  std::map<std::string, std::map<Labels, prometheus::ClientMetric>> out;
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    for (const prometheus::ClientMetric& metric : family.metric) {
      Labels labels;
      for (const auto& label : metric.label) labels[label.name] = label.value;
      out[family.name][labels] = metric;
    }
  }
  return out;
}

std::set<std::string> Names(
    const std::map<std::string, std::map<Labels, prometheus::ClientMetric>>& scrape) {
  std::set<std::string> names;
  for (const auto& [name, series] : scrape) names.insert(name);
  return names;
}

v1::Assignment MakeAssignment(const std::string& job, int64_t stage, int64_t rank) {
  v1::Assignment a;
  a.set_job(job);
  a.set_stage(stage);
  a.set_rank(rank);
  a.set_world_size(2);
  a.mutable_spec()->add_curriculum()->set_name("short");
  a.mutable_spec()->add_curriculum()->set_name("long");
  return a;
}

v1::WorkerProgress Step(int64_t step, double step_seconds) {
  v1::WorkerProgress p;
  p.set_stage(0);
  p.set_step(step);
  p.set_loss(3.5 - 0.1 * static_cast<double>(step));
  p.set_learning_rate(1e-3);
  p.set_grad_norm(0.75);
  p.set_step_seconds(step_seconds);
  p.set_data_wait_seconds(0.25 * step_seconds);
  p.set_comm_seconds(0.125 * step_seconds);
  p.set_rank_tokens(512);
  p.set_flops_per_token(1e6);
  p.set_memory_bytes(int64_t{3} << 30);
  return p;
}

const std::set<std::string> kProgressSeries = {"qtrain_train_loss",
                                               "qtrain_learning_rate",
                                               "qtrain_grad_norm",
                                               "qtrain_tokens_total",
                                               "qtrain_tokens_per_second",
                                               "qtrain_step_seconds",
                                               "qtrain_compute_seconds_total",
                                               "qtrain_comm_seconds_total",
                                               "qtrain_data_wait_seconds_total",
                                               "qtrain_skipped_steps_total",
                                               "qtrain_step",
                                               "qtrain_stage",
                                               "qtrain_memory_bytes",
                                               "qtrain_worker_up"};

class WorkerMetricsTest : public ::testing::Test {
 protected:
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  const Labels first_ = {{"job_id", "j1"}, {"stage", "short"}, {"rank", "1"}};
};

TEST_F(WorkerMetricsTest, UpStartsAtZeroAndFollowsSetUp) {
  WorkerMetrics metrics(registry_, std::nullopt);
  auto scrape = Scrape(*registry_);
  EXPECT_THAT(Names(scrape), ElementsAre("qtrain_worker_up"));
  EXPECT_EQ(scrape["qtrain_worker_up"][{}].gauge.value, 0);
  metrics.SetUp(true);
  EXPECT_EQ(Scrape(*registry_)["qtrain_worker_up"][{}].gauge.value, 1);
  metrics.SetUp(false);
  EXPECT_EQ(Scrape(*registry_)["qtrain_worker_up"][{}].gauge.value, 0);
}

TEST_F(WorkerMetricsTest, ProgressMakesTheSeriesAndCountersAccumulate) {
  WorkerMetrics metrics(registry_, std::nullopt);
  const v1::Assignment a = MakeAssignment("jobs/j1", 0, 1);
  metrics.OnProgress(a, Step(1, 2.0));
  auto scrape = Scrape(*registry_);
  // Every series from the first step, counters included; no eval loss, checkpoint or MFU yet.
  EXPECT_EQ(Names(scrape), kProgressSeries);
  for (const std::string& name : kProgressSeries) {
    if (name == "qtrain_worker_up") continue;
    EXPECT_EQ(scrape[name].size(), 1u) << name;
    EXPECT_TRUE(scrape[name].contains(first_)) << name;
  }
  EXPECT_DOUBLE_EQ(scrape["qtrain_train_loss"][first_].gauge.value, 3.4);
  EXPECT_DOUBLE_EQ(scrape["qtrain_tokens_total"][first_].counter.value, 512);
  EXPECT_DOUBLE_EQ(scrape["qtrain_tokens_per_second"][first_].gauge.value, 256);
  EXPECT_EQ(scrape["qtrain_step_seconds"][first_].histogram.sample_count, 1u);

  v1::WorkerProgress second = Step(2, 0.5);
  second.set_skipped_steps(3);
  second.set_stage(1);
  metrics.OnProgress(a, second);
  scrape = Scrape(*registry_);
  EXPECT_DOUBLE_EQ(scrape["qtrain_train_loss"][first_].gauge.value, 3.3);
  EXPECT_DOUBLE_EQ(scrape["qtrain_learning_rate"][first_].gauge.value, 1e-3);
  EXPECT_DOUBLE_EQ(scrape["qtrain_grad_norm"][first_].gauge.value, 0.75);
  EXPECT_DOUBLE_EQ(scrape["qtrain_tokens_total"][first_].counter.value, 1024);
  EXPECT_DOUBLE_EQ(scrape["qtrain_tokens_per_second"][first_].gauge.value, 1024);
  // 2.5 s of steps: a quarter waiting for data, an eighth in collectives, the rest compute.
  EXPECT_DOUBLE_EQ(scrape["qtrain_data_wait_seconds_total"][first_].counter.value, 0.625);
  EXPECT_DOUBLE_EQ(scrape["qtrain_comm_seconds_total"][first_].counter.value, 0.3125);
  EXPECT_DOUBLE_EQ(scrape["qtrain_compute_seconds_total"][first_].counter.value, 1.5625);
  EXPECT_DOUBLE_EQ(scrape["qtrain_skipped_steps_total"][first_].counter.value, 3);
  EXPECT_DOUBLE_EQ(scrape["qtrain_step"][first_].gauge.value, 2);
  EXPECT_DOUBLE_EQ(scrape["qtrain_stage"][first_].gauge.value, 1);
  EXPECT_DOUBLE_EQ(scrape["qtrain_memory_bytes"][first_].gauge.value, 3.0 * (1 << 30));
  const prometheus::ClientMetric::Histogram& h = scrape["qtrain_step_seconds"][first_].histogram;
  EXPECT_EQ(h.sample_count, 2u);
  EXPECT_DOUBLE_EQ(h.sample_sum, 2.5);
  // Buckets from 5 ms to 600 s (and +Inf); 0.5 s and 2 s fall in le=0.5 and le=2.5.
  ASSERT_GE(h.bucket.size(), 2u);
  EXPECT_DOUBLE_EQ(h.bucket.front().upper_bound, 0.005);
  EXPECT_DOUBLE_EQ(h.bucket[h.bucket.size() - 2].upper_bound, 600);
  for (const auto& bucket : h.bucket) {
    const uint64_t expected = bucket.upper_bound < 0.5 ? 0 : bucket.upper_bound < 2.5 ? 1 : 2;
    EXPECT_EQ(bucket.cumulative_count, expected) << "le=" << bucket.upper_bound;
  }
}

TEST_F(WorkerMetricsTest, SkippedStepsFollowTheJobsCount) {
  WorkerMetrics metrics(registry_, std::nullopt);
  const v1::Assignment a = MakeAssignment("jobs/j1", 0, 1);
  v1::WorkerProgress p = Step(5, 1);
  p.set_skipped_steps(2);  // skipped before this assignment began
  metrics.OnProgress(a, p);
  EXPECT_DOUBLE_EQ(Scrape(*registry_)["qtrain_skipped_steps_total"][first_].counter.value, 2);
  metrics.OnProgress(a, p);
  EXPECT_DOUBLE_EQ(Scrape(*registry_)["qtrain_skipped_steps_total"][first_].counter.value, 2);
  p.set_skipped_steps(4);
  metrics.OnProgress(a, p);
  EXPECT_DOUBLE_EQ(Scrape(*registry_)["qtrain_skipped_steps_total"][first_].counter.value, 4);
}

TEST_F(WorkerMetricsTest, EvalLossAppearsAfterTheFirstEvaluation) {
  WorkerMetrics metrics(registry_, std::nullopt);
  const v1::Assignment a = MakeAssignment("jobs/j1", 0, 1);
  metrics.OnProgress(a, Step(1, 1));
  EXPECT_FALSE(Scrape(*registry_).contains("qtrain_eval_loss"));
  v1::WorkerProgress evaluated = Step(2, 1);
  evaluated.set_eval_loss(2.75);
  metrics.OnProgress(a, evaluated);
  EXPECT_DOUBLE_EQ(Scrape(*registry_)["qtrain_eval_loss"][first_].gauge.value, 2.75);
  // It stays at the last evaluation's value between evaluations.
  metrics.OnProgress(a, Step(3, 1));
  EXPECT_DOUBLE_EQ(Scrape(*registry_)["qtrain_eval_loss"][first_].gauge.value, 2.75);
}

TEST_F(WorkerMetricsTest, CheckpointSecondsAreObserved) {
  WorkerMetrics metrics(registry_, std::nullopt);
  const v1::Assignment a = MakeAssignment("jobs/j1", 0, 1);
  metrics.OnProgress(a, Step(1, 1));
  EXPECT_FALSE(Scrape(*registry_).contains("qtrain_checkpoint_seconds"));
  metrics.OnCheckpoint(a, 1.5);
  metrics.OnCheckpoint(a, 30);
  const prometheus::ClientMetric::Histogram h =
      Scrape(*registry_)["qtrain_checkpoint_seconds"][first_].histogram;
  EXPECT_EQ(h.sample_count, 2u);
  EXPECT_DOUBLE_EQ(h.sample_sum, 31.5);
}

TEST_F(WorkerMetricsTest, AnotherAssignmentReplacesTheSeries) {
  WorkerMetrics metrics(registry_, 1e9);
  const v1::Assignment a = MakeAssignment("jobs/j1", 0, 1);
  v1::WorkerProgress p = Step(1, 1);
  p.set_eval_loss(3);
  metrics.OnProgress(a, p);
  metrics.OnCheckpoint(a, 2);
  const v1::Assignment b = MakeAssignment("jobs/j2", 1, 0);
  metrics.OnProgress(b, Step(7, 1));
  const Labels second = {{"job_id", "j2"}, {"stage", "long"}, {"rank", "0"}};
  for (const auto& [name, series] : Scrape(*registry_)) {
    if (name == "qtrain_worker_up") continue;
    EXPECT_EQ(series.size(), 1u) << name;
    EXPECT_TRUE(series.contains(second)) << name;
  }
  // The new assignment's counters start over.
  auto scrape = Scrape(*registry_);
  EXPECT_DOUBLE_EQ(scrape["qtrain_tokens_total"][second].counter.value, 512);
  EXPECT_FALSE(scrape.contains("qtrain_eval_loss"));
  EXPECT_FALSE(scrape.contains("qtrain_checkpoint_seconds"));
}

TEST_F(WorkerMetricsTest, TheEndOfTheAssignmentLeavesOnlyUp) {
  WorkerMetrics metrics(registry_, 1e9);
  metrics.SetUp(true);
  const v1::Assignment a = MakeAssignment("jobs/j1", 0, 1);
  v1::WorkerProgress p = Step(1, 1);
  p.set_eval_loss(3);
  metrics.OnProgress(a, p);
  metrics.OnCheckpoint(a, 2);
  EXPECT_GT(Names(Scrape(*registry_)).size(), kProgressSeries.size());
  metrics.OnAssignmentEnded();
  auto scrape = Scrape(*registry_);
  EXPECT_THAT(Names(scrape), ElementsAre("qtrain_worker_up"));
  EXPECT_EQ(scrape["qtrain_worker_up"][{}].gauge.value, 1);
  metrics.OnAssignmentEnded();  // twice is harmless
  // The same assignment again starts from nothing.
  metrics.OnProgress(a, Step(2, 1));
  EXPECT_DOUBLE_EQ(Scrape(*registry_)["qtrain_tokens_total"][first_].counter.value, 512);
}

// The progress after a stage end's eval tasks: the last step's, with their results.
v1::WorkerProgress WithEvalTasks(v1::WorkerProgress p) {
  v1::EvalTaskResult* mc = p.add_eval_tasks();
  mc->set_name("hellaswag");
  mc->set_task("multiple-choice");
  (*mc->mutable_metrics())["acc"] = 0.5;
  (*mc->mutable_metrics())["count"] = 40;
  v1::EvalTaskResult* needle = p.add_eval_tasks();
  needle->set_name("needle");
  needle->set_task("needle");
  (*needle->mutable_metrics())["accuracy/L1024/D0.5"] = 0.25;
  return p;
}

TEST_F(WorkerMetricsTest, EvalTaskResultsAreGaugesKeptUntilAnotherJob) {
  WorkerMetrics metrics(registry_, std::nullopt);
  const v1::Assignment a = MakeAssignment("jobs/j1", 1, 0);
  metrics.OnProgress(a, Step(4, 2));
  EXPECT_FALSE(Scrape(*registry_).contains("qtrain_eval_metric"));
  metrics.OnProgress(a, WithEvalTasks(Step(4, 2)));
  auto scrape = Scrape(*registry_);
  const Labels acc = {
      {"job_id", "j1"}, {"stage", "long"}, {"task", "hellaswag"}, {"metric", "acc"}};
  EXPECT_DOUBLE_EQ(scrape["qtrain_eval_metric"][acc].gauge.value, 0.5);
  const Labels cell = {
      {"job_id", "j1"}, {"stage", "long"}, {"task", "needle"}, {"metric", "accuracy/L1024/D0.5"}};
  EXPECT_DOUBLE_EQ(scrape["qtrain_eval_metric"][cell].gauge.value, 0.25);
  EXPECT_EQ(scrape["qtrain_eval_metric"].size(), 3u);
  // The repeated step is not counted twice.
  const Labels rank0 = {{"job_id", "j1"}, {"stage", "long"}, {"rank", "0"}};
  EXPECT_DOUBLE_EQ(scrape["qtrain_tokens_total"][rank0].counter.value, 512);
  EXPECT_EQ(scrape["qtrain_step_seconds"][rank0].histogram.sample_count, 1u);
  // A later result of the same task replaces the value.
  v1::WorkerProgress again = WithEvalTasks(Step(4, 2));
  (*again.mutable_eval_tasks(0)->mutable_metrics())["acc"] = 0.75;
  metrics.OnProgress(a, again);
  EXPECT_DOUBLE_EQ(Scrape(*registry_)["qtrain_eval_metric"][acc].gauge.value, 0.75);
  // They come at the stage's end: they outlive its completed assignment, so that a scrape
  // finds them, and the job's next stage keeps them.
  metrics.OnAssignmentEnded(/*completed=*/true);
  EXPECT_DOUBLE_EQ(Scrape(*registry_)["qtrain_eval_metric"][acc].gauge.value, 0.75);
  EXPECT_FALSE(Scrape(*registry_).contains("qtrain_train_loss"));
  metrics.OnProgress(MakeAssignment("jobs/j1", 0, 0), Step(5, 2));
  EXPECT_EQ(Scrape(*registry_)["qtrain_eval_metric"].size(), 3u);
  // Another job's progress removes them.
  metrics.OnAssignmentEnded(/*completed=*/true);
  metrics.OnProgress(MakeAssignment("jobs/j2", 0, 0), Step(1, 2));
  EXPECT_FALSE(Scrape(*registry_).contains("qtrain_eval_metric"));
  // The job's final results go with their assignment: a finished job leaves no series.
  v1::WorkerProgress last = WithEvalTasks(Step(1, 2));
  for (v1::EvalTaskResult& result : *last.mutable_eval_tasks()) result.set_final(true);
  metrics.OnProgress(MakeAssignment("jobs/j2", 0, 0), last);
  EXPECT_EQ(Scrape(*registry_)["qtrain_eval_metric"].size(), 3u);
  metrics.OnAssignmentEnded(/*completed=*/true);
  EXPECT_FALSE(Scrape(*registry_).contains("qtrain_eval_metric"));
  // An aborted or failed assignment takes them too.
  metrics.OnProgress(MakeAssignment("jobs/j3", 0, 0), WithEvalTasks(Step(1, 2)));
  metrics.OnAssignmentEnded(/*completed=*/false);
  EXPECT_FALSE(Scrape(*registry_).contains("qtrain_eval_metric"));
}

TEST_F(WorkerMetricsTest, UtilizationOnlyWithAPeak) {
  {
    WorkerMetrics metrics(registry_, std::nullopt);
    metrics.OnProgress(MakeAssignment("jobs/j1", 0, 1), Step(1, 0.5));
    EXPECT_FALSE(Scrape(*registry_).contains("qtrain_model_flops_utilization"));
  }
  auto with_peak = std::make_shared<prometheus::Registry>();
  WorkerMetrics metrics(with_peak, 4e9);
  metrics.OnProgress(MakeAssignment("jobs/j1", 0, 1), Step(1, 0.5));
  // 1e6 FLOPs per token x 1024 tokens/s over 4e9 FLOP/s.
  EXPECT_DOUBLE_EQ(Scrape(*with_peak)["qtrain_model_flops_utilization"][first_].gauge.value,
                   1e6 * 1024 / 4e9);
}

TEST_F(WorkerMetricsTest, TheSeriesGoWithTheObject) {
  {
    WorkerMetrics metrics(registry_, std::nullopt);
    metrics.OnProgress(MakeAssignment("jobs/j1", 0, 1), Step(1, 1));
  }
  for (const auto& [name, series] : Scrape(*registry_)) {
    EXPECT_EQ(name, "qtrain_worker_up");
  }
}

TEST_F(WorkerMetricsTest, OddProgressValuesDoNotBreakCounters) {
  WorkerMetrics metrics(registry_, 1e9);
  const v1::Assignment a = MakeAssignment("jobs/j1", 0, 1);
  v1::WorkerProgress p = Step(1, 0);  // a zero-length step: no throughput, not infinity
  p.set_rank_tokens(-5);
  p.set_comm_seconds(std::numeric_limits<double>::quiet_NaN());
  metrics.OnProgress(a, p);
  auto scrape = Scrape(*registry_);
  EXPECT_EQ(scrape["qtrain_tokens_per_second"][first_].gauge.value, 0);
  EXPECT_EQ(scrape["qtrain_tokens_total"][first_].counter.value, 0);
  EXPECT_EQ(scrape["qtrain_comm_seconds_total"][first_].counter.value, 0);
  EXPECT_EQ(scrape["qtrain_model_flops_utilization"][first_].gauge.value, 0);
}

TEST_F(WorkerMetricsTest, StageLabelFallsBackToTheIndex) {
  WorkerMetrics metrics(registry_, std::nullopt);
  v1::Assignment a = MakeAssignment("jobs/j1", 5, 1);  // no stage 5 in the spec
  metrics.OnProgress(a, Step(1, 1));
  EXPECT_TRUE(Scrape(*registry_)["qtrain_step"].contains(
      Labels{{"job_id", "j1"}, {"stage", "5"}, {"rank", "1"}}));
}

TEST(PeakFlopsTest, KnownDevices) {
  EXPECT_EQ(KnownPeakFlops(v1::DEVICE_KIND_CUDA, "NVIDIA A100-SXM4-80GB"), 312e12);
  EXPECT_EQ(KnownPeakFlops(v1::DEVICE_KIND_CUDA, "NVIDIA H100 80GB HBM3"), 989e12);
  EXPECT_EQ(KnownPeakFlops(v1::DEVICE_KIND_CUDA, "NVIDIA H200"), 989e12);
  EXPECT_EQ(KnownPeakFlops(v1::DEVICE_KIND_CUDA, "NVIDIA GeForce GTX 1080"), std::nullopt);
  EXPECT_EQ(KnownPeakFlops(v1::DEVICE_KIND_CPU, "Intel(R) Xeon(R) H100"), std::nullopt);
  EXPECT_EQ(PeakFlopsProblem(1e12), std::nullopt);
  EXPECT_NE(PeakFlopsProblem(0), std::nullopt);
  EXPECT_NE(PeakFlopsProblem(-1), std::nullopt);
  EXPECT_NE(PeakFlopsProblem(std::numeric_limits<double>::infinity()), std::nullopt);
  EXPECT_NE(PeakFlopsProblem(std::numeric_limits<double>::quiet_NaN()), std::nullopt);
}

}  // namespace
}  // namespace qtrain::worker
