#include "coordinator/coordinator.h"

#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "coordinator/coordinator_test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::coordinator {
namespace {

using ::qtrain::coordinator::testing::Harness;
using ::qtrain::coordinator::testing::TestSpec;
using ::testing::HasSubstr;

std::vector<v1::JobState> StatesOf(const std::vector<v1::JobEvent>& events) {
  std::vector<v1::JobState> states;
  for (const auto& e : events) {
    if (e.has_state_changed()) states.push_back(e.state_changed().to());
  }
  return states;
}

TEST(CoordinatorTest, CreateJobReportsEveryProblemAndStoresNothing) {
  Harness h("invalid");
  v1::CreateJobRequest request;
  *request.mutable_spec() = TestSpec();
  request.mutable_spec()->mutable_batch()->set_global_tokens(0);
  request.mutable_spec()->clear_tokenizer();
  auto job = h.c().CreateJob(request);
  ASSERT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(job.status().message(), HasSubstr("request_id"));
  EXPECT_THAT(job.status().message(), HasSubstr("spec.tokenizer"));
  EXPECT_THAT(job.status().message(), HasSubstr("spec.batch.global_tokens"));
  auto list = h.c().ListJobs(v1::ListJobsRequest());
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->jobs_size(), 0);
  h.Reopen();
  EXPECT_EQ(h.c().ListJobs(v1::ListJobsRequest())->jobs_size(), 0);
}

TEST(CoordinatorTest, CreateJobIsIdempotentAcrossRestarts) {
  Harness h("idempotent");
  const std::string name = h.Submit(TestSpec(), "req-1");
  EXPECT_EQ(name, "jobs/t-1");
  const v1::Job job = h.Job(name);
  EXPECT_EQ(job.state(), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(job.progress().total_steps(), 6);
  EXPECT_EQ(job.run_directory(), h.run_root() + "/t-1");
  EXPECT_TRUE(std::filesystem::path(job.run_directory()).is_absolute());
  EXPECT_TRUE(std::filesystem::is_directory(job.run_directory()));
  EXPECT_EQ(job.spec().world().max_restarts(), 3);  // defaults applied
  EXPECT_EQ(h.Submit(TestSpec(), "req-1"), name);
  v1::CreateJobRequest other;
  *other.mutable_spec() = TestSpec();
  other.mutable_spec()->set_seed(2);
  other.set_request_id("req-1");
  EXPECT_EQ(h.c().CreateJob(other).status().code(), absl::StatusCode::kAlreadyExists);
  h.Reopen();
  EXPECT_EQ(h.Submit(TestSpec(), "req-1"), name);
  EXPECT_EQ(h.Submit(TestSpec(), "req-2"), "jobs/t-2");
  v1::JobSpec unnamed = TestSpec("");
  unnamed.clear_name();
  // A spec needs a name; the job id is then name-n.
  v1::CreateJobRequest bad;
  *bad.mutable_spec() = unnamed;
  bad.set_request_id("req-3");
  EXPECT_EQ(h.c().CreateJob(bad).status().code(), absl::StatusCode::kInvalidArgument);
  // Strings that are not UTF-8 could not be read back from the store.
  v1::CreateJobRequest binary;
  *binary.mutable_spec() = TestSpec();
  binary.mutable_spec()->set_tokenizer("/data/\xff\xfe.json");
  binary.set_request_id("req-4");
  auto refused = h.c().CreateJob(binary);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(refused.status().message(), HasSubstr("spec.tokenizer: not valid UTF-8"));
}

TEST(CoordinatorTest, GetAndCancelCheckNames) {
  Harness h("names");
  v1::GetJobRequest get;
  get.set_name("t-1");
  EXPECT_EQ(h.c().GetJob(get).status().code(), absl::StatusCode::kInvalidArgument);
  get.set_name("jobs/a/b");
  EXPECT_EQ(h.c().GetJob(get).status().code(), absl::StatusCode::kInvalidArgument);
  get.set_name("jobs/nope-1");
  EXPECT_EQ(h.c().GetJob(get).status().code(), absl::StatusCode::kNotFound);
  v1::CancelJobRequest cancel;
  cancel.set_name("jobs/nope-1");
  EXPECT_EQ(h.c().CancelJob(cancel).status().code(), absl::StatusCode::kNotFound);
}

TEST(CoordinatorTest, SchedulesFifoByDeviceKind) {
  Harness h("fifo");
  const std::string a = h.Submit(TestSpec("a"), "a");
  const std::string b = h.Submit(TestSpec("b"), "b");
  v1::JobSpec cuda = TestSpec("c");
  cuda.mutable_world()->set_device(v1::DEVICE_KIND_CUDA);
  const std::string c = h.Submit(cuda, "c");
  const std::string w1 = h.Register("host");
  EXPECT_EQ(h.State(a), v1::JOB_STATE_SCHEDULING);
  EXPECT_EQ(h.State(b), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(h.State(c), v1::JOB_STATE_QUEUED);
  EXPECT_EQ(h.Job(a).workers(0), w1);
  EXPECT_EQ(h.Job(a).round(), 1);
  const std::string w2 = h.Register("host");
  EXPECT_NE(w1, w2);
  EXPECT_EQ(w1, "workers/host-1");
  EXPECT_EQ(h.State(b), v1::JOB_STATE_SCHEDULING);
  EXPECT_EQ(h.State(c), v1::JOB_STATE_QUEUED);
  const std::string gpu = h.Register("gpu", v1::DEVICE_KIND_CUDA);
  EXPECT_EQ(h.State(c), v1::JOB_STATE_SCHEDULING);
  // A CUDA job's gradient and parameters go over NCCL; the CPU jobs' over Gloo.
  auto on_gpu = h.TakeAssignment(gpu);
  ASSERT_TRUE(on_gpu);
  EXPECT_EQ(on_gpu->backend(), v1::COLLECTIVE_BACKEND_NCCL);
  auto on_cpu = h.TakeAssignment(w1);
  ASSERT_TRUE(on_cpu);
  EXPECT_EQ(on_cpu->backend(), v1::COLLECTIVE_BACKEND_GLOO);
}

TEST(CoordinatorTest, SettleWindowWaitsForMoreWorkers) {
  Harness h("settle", absl::Seconds(10), absl::Seconds(1));
  v1::JobSpec spec = TestSpec();
  spec.mutable_world()->set_max_workers(2);
  const std::string job = h.Submit(spec, "r");
  h.Register("w");
  h.Advance(absl::Milliseconds(500));
  EXPECT_EQ(h.State(job), v1::JOB_STATE_QUEUED);
  h.Advance(absl::Milliseconds(600));
  EXPECT_EQ(h.State(job), v1::JOB_STATE_SCHEDULING);
  EXPECT_EQ(h.Job(job).workers_size(), 1);

  // With max workers idle the group forms at once.
  Harness h2("settle_full", absl::Seconds(10), absl::Seconds(1));
  const std::string job2 = h2.Submit(spec, "r");
  h2.Register("w");
  EXPECT_EQ(h2.State(job2), v1::JOB_STATE_QUEUED);
  h2.Register("w");
  EXPECT_EQ(h2.State(job2), v1::JOB_STATE_SCHEDULING);
  EXPECT_EQ(h2.Job(job2).workers_size(), 2);
}

TEST(CoordinatorTest, RunsStagesToSuccess) {
  Harness h("stages");
  const std::string job = h.Submit(TestSpec(), "r");
  const std::string w = h.Register("w");
  auto a = h.TakeAssignment(w);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->job(), job);
  EXPECT_EQ(a->round(), 1);
  EXPECT_EQ(a->stage(), 0);
  EXPECT_EQ(a->start_step(), 0);
  EXPECT_EQ(a->end_step(), 4);
  EXPECT_FALSE(a->has_resume_from());
  EXPECT_EQ(a->backend(), v1::COLLECTIVE_BACKEND_GLOO);
  EXPECT_EQ(a->rendezvous_prefix(), job + "/rounds/1/");
  EXPECT_EQ(a->run_directory(), h.run_root() + "/t-1");
  EXPECT_EQ(a->checkpoint_directory(), h.run_root() + "/t-1/checkpoints");
  EXPECT_EQ(a->data().seq_len(), 16);
  EXPECT_EQ(a->spec().world().max_restarts(), 3);
  ASSERT_TRUE(h.Train(w, *a, 1).ok());
  EXPECT_EQ(h.State(job), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(h.Job(job).progress().step(), 1);
  ASSERT_TRUE(h.Train(w, *a, 1).ok());  // the same step again: no new event
  ASSERT_TRUE(h.Train(w, *a, 2).ok());
  // Completing before the stage's checkpoint is committed is refused.
  EXPECT_EQ(h.Complete(w, *a).code(), absl::StatusCode::kFailedPrecondition);
  auto ckpt = h.Commit(w, *a, 4);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->state(), v1::CHECKPOINT_STATE_COMMITTED);
  EXPECT_EQ(ckpt->name(), job + "/checkpoints/step-000000000004");
  EXPECT_EQ(h.Job(job).latest_checkpoint(), ckpt->name());
  ASSERT_TRUE(h.Complete(w, *a).ok());
  // Retries after the round moved on (a lost reply) are answered as before.
  EXPECT_TRUE(h.Complete(w, *a).ok());
  EXPECT_EQ(h.Commit(w, *a, 4)->state(), v1::CHECKPOINT_STATE_COMMITTED);
  EXPECT_EQ(h.State(job), v1::JOB_STATE_SCHEDULING);
  auto b = h.TakeAssignment(w);
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->round(), 2);
  EXPECT_EQ(b->stage(), 1);
  EXPECT_EQ(b->start_step(), 4);
  EXPECT_EQ(b->end_step(), 6);
  EXPECT_EQ(b->resume_from().step(), 4);
  EXPECT_EQ(b->data().seq_len(), 32);
  ASSERT_TRUE(h.Train(w, *b, 5).ok());
  ASSERT_TRUE(h.Commit(w, *b, 6).ok());
  // Rank 0 of the last stage must show the exported model.
  EXPECT_EQ(h.Complete(w, *b, /*write_final=*/false).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(h.Complete(w, *b).ok());
  const v1::Job done = h.Job(job);
  EXPECT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_TRUE(done.has_end_time());
  EXPECT_TRUE(done.has_start_time());
  EXPECT_EQ(done.progress().step(), 6);
  auto workers = h.c().ListWorkers(v1::ListWorkersRequest());
  ASSERT_TRUE(workers.ok());
  EXPECT_EQ(workers->workers(0).state(), v1::WORKER_STATE_IDLE);

  const auto events = h.Events(job);
  EXPECT_EQ(StatesOf(events),
            (std::vector<v1::JobState>{v1::JOB_STATE_QUEUED, v1::JOB_STATE_SCHEDULING,
                                       v1::JOB_STATE_RUNNING, v1::JOB_STATE_SCHEDULING,
                                       v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED}));
  int stage_started = 0, checkpoints = 0, steps = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].sequence(), static_cast<int64_t>(i + 1));
    stage_started += events[i].has_stage_started();
    checkpoints += events[i].has_checkpoint();
    steps += events[i].has_step_metrics();
  }
  EXPECT_EQ(stage_started, 2);
  EXPECT_EQ(checkpoints, 2);
  EXPECT_EQ(steps, 3);  // steps 1, 2 and 5
  // Without step metrics.
  auto page = h.c().ReadEvents(job, 0, 1000, false);
  ASSERT_TRUE(page.ok());
  for (const auto& e : page->events) EXPECT_FALSE(e.has_step_metrics());
  EXPECT_TRUE(page->ended);
}

TEST(CoordinatorTest, GroupsTakeEveryIdleWorkerUpToMaxWorkers) {
  Harness h("wide");
  v1::JobSpec spec = TestSpec();
  spec.mutable_world()->set_min_workers(1);
  spec.mutable_world()->set_max_workers(2);
  const std::string job = h.Submit(spec, "two");
  const std::string w0 = h.Register("w");
  const std::string w1 = h.Register("w");
  const std::string w2 = h.Register("w");
  auto a0 = h.TakeAssignment(w0);
  auto a1 = h.TakeAssignment(w1);
  ASSERT_TRUE(a0 && a1);
  EXPECT_FALSE(h.TakeAssignment(w2));  // max_workers 2
  for (const v1::Assignment* a : {&*a0, &*a1}) {
    EXPECT_EQ(a->world_size(), 2);
    EXPECT_EQ(a->backend(), v1::COLLECTIVE_BACKEND_GLOO);
    EXPECT_EQ(a->rendezvous_prefix(), job + "/rounds/1/");
    EXPECT_EQ(a->data().total_tokens(), a->rank() * 1000 + 2);  // each rank's own plan
  }
  EXPECT_EQ(a0->rank(), 0);
  EXPECT_EQ(a1->rank(), 1);
  EXPECT_EQ(h.Job(job).workers_size(), 2);
}

// CoordinatorOptions::max_group_size (tests only) caps a group below world.max_workers; a job
// whose min_workers is larger still forms with min_workers.
TEST(CoordinatorTest, MaxGroupSizeOptionCapsGroups) {
  Harness h("cap");
  h.max_group_size = 1;
  h.Reopen();
  v1::JobSpec spec = TestSpec();
  spec.mutable_world()->set_min_workers(1);
  spec.mutable_world()->set_max_workers(2);
  h.Submit(spec, "capped");
  const std::string w0 = h.Register("w");
  const std::string w1 = h.Register("w");
  h.Advance(absl::Seconds(5));  // past the settle window
  auto a0 = h.TakeAssignment(w0);
  ASSERT_TRUE(a0);
  EXPECT_EQ(a0->world_size(), 1);
  EXPECT_FALSE(h.TakeAssignment(w1));

  v1::JobSpec wide = TestSpec();
  wide.mutable_world()->set_min_workers(2);
  wide.mutable_world()->set_max_workers(2);
  h.Submit(wide, "wide");
  const std::string w2 = h.Register("w");
  h.Advance(absl::Seconds(1));
  auto b = h.TakeAssignment(w1);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->world_size(), 2);
}

TEST(CoordinatorTest, CheckpointCommitsWhenEveryRankReported) {
  Harness h("ranks");
  v1::JobSpec spec = TestSpec();
  spec.mutable_world()->set_min_workers(2);
  spec.mutable_world()->set_max_workers(2);
  const std::string job = h.Submit(spec, "r");
  const std::string w0 = h.Register("w");
  const std::string w1 = h.Register("w");
  auto a0 = h.TakeAssignment(w0);
  auto a1 = h.TakeAssignment(w1);
  ASSERT_TRUE(a0 && a1);
  EXPECT_EQ(a0->rank(), 0);
  EXPECT_EQ(a1->rank(), 1);
  EXPECT_EQ(a0->world_size(), 2);
  EXPECT_EQ(a1->data().total_tokens(), 1002);  // planned per rank
  auto c0 = h.Commit(w0, *a0, 2);
  ASSERT_TRUE(c0.ok()) << c0.status();
  EXPECT_EQ(c0->state(), v1::CHECKPOINT_STATE_WRITING);
  EXPECT_EQ(h.Commit(w0, *a0, 2)->state(), v1::CHECKPOINT_STATE_WRITING);  // idempotent
  // A rank may only report for itself.
  v1::Assignment wrong = *a1;
  EXPECT_EQ(h.Commit(w0, wrong, 2).status().code(), absl::StatusCode::kFailedPrecondition);
  auto c1 = h.Commit(w1, *a1, 2);
  ASSERT_TRUE(c1.ok());
  EXPECT_EQ(c1->state(), v1::CHECKPOINT_STATE_COMMITTED);
  EXPECT_EQ(c1->files_size(), 2);
  EXPECT_EQ(h.Commit(w0, *a0, 2)->state(), v1::CHECKPOINT_STATE_COMMITTED);
  // Files that are not there, or a foreign directory, are refused.
  v1::CommitCheckpointRequest bad;
  bad.set_worker(w0);
  bad.set_job(job);
  bad.set_round(1);
  bad.set_rank(0);
  bad.set_step(3);
  bad.set_directory(a0->checkpoint_directory() + "/step-000000000003");
  bad.add_files()->set_path("missing.bin");
  EXPECT_EQ(h.c().CommitCheckpoint(bad).status().code(), absl::StatusCode::kFailedPrecondition);
  bad.mutable_files(0)->set_path("../../escape");
  EXPECT_EQ(h.c().CommitCheckpoint(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad.clear_files();
  bad.set_directory("/tmp");
  EXPECT_EQ(h.c().CommitCheckpoint(bad).status().code(), absl::StatusCode::kInvalidArgument);
  v1::ListCheckpointsRequest list;
  list.set_parent(job);
  EXPECT_EQ(h.c().ListCheckpoints(list)->checkpoints_size(), 1);
}

// A rank of a group may finish its stage before the others have reported the stage's last
// checkpoint: its completion is accepted once its own files are reported, and the round ends
// when every rank has completed (the checkpoint then committed).
TEST(CoordinatorTest, ARankMayCompleteBeforeTheGroupsCheckpointCommits) {
  Harness h("early");
  v1::JobSpec spec = TestSpec();
  spec.mutable_world()->set_min_workers(2);
  spec.mutable_world()->set_max_workers(2);
  const std::string job = h.Submit(spec, "e");
  const std::string w0 = h.Register("w");
  const std::string w1 = h.Register("w");
  auto a0 = h.TakeAssignment(w0);
  auto a1 = h.TakeAssignment(w1);
  ASSERT_TRUE(a0 && a1);
  const int64_t end = a1->end_step();
  // Not reported at all: refused.
  EXPECT_EQ(h.Complete(w1, *a1).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_EQ(h.Commit(w1, *a1, end)->state(), v1::CHECKPOINT_STATE_WRITING);
  ASSERT_TRUE(h.Complete(w1, *a1).ok());
  EXPECT_TRUE(h.Complete(w1, *a1).ok());  // a retry
  EXPECT_EQ(h.Job(job).round(), a1->round()) << "the round goes on until every rank is done";
  ASSERT_EQ(h.Commit(w0, *a0, end)->state(), v1::CHECKPOINT_STATE_COMMITTED);
  ASSERT_TRUE(h.Complete(w0, *a0).ok());
  EXPECT_EQ(h.Job(job).progress().step(), end);
  EXPECT_GT(h.Job(job).round(), a0->round()) << "the next stage's round";
}

TEST(CoordinatorTest, RetentionKeepsNewestAndStageFinals) {
  Harness h("retention");
  v1::JobSpec spec = TestSpec();
  spec.mutable_checkpoint()->set_keep_last(1);
  spec.mutable_checkpoint()->set_every_steps(1);
  const std::string job = h.Submit(spec, "r");
  const std::string w = h.Register("w");
  auto a = h.TakeAssignment(w);
  ASSERT_TRUE(a);
  for (int step = 1; step <= 4; ++step) ASSERT_TRUE(h.Commit(w, *a, step).ok());
  ASSERT_TRUE(h.Complete(w, *a).ok());
  auto b = h.TakeAssignment(w);
  ASSERT_TRUE(b);
  ASSERT_TRUE(h.Commit(w, *b, 5).ok());
  v1::ListCheckpointsRequest list;
  list.set_parent(job);
  auto listed = h.c().ListCheckpoints(list);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->checkpoints_size(), 5);
  std::map<int64_t, v1::CheckpointState> states;
  for (const auto& c : listed->checkpoints()) states[c.step()] = c.state();
  EXPECT_EQ(listed->checkpoints(0).step(), 5);  // newest first
  EXPECT_EQ(states[1], v1::CHECKPOINT_STATE_DELETED);
  EXPECT_EQ(states[2], v1::CHECKPOINT_STATE_DELETED);
  EXPECT_EQ(states[3], v1::CHECKPOINT_STATE_DELETED);
  EXPECT_EQ(states[4], v1::CHECKPOINT_STATE_COMMITTED);  // stage 0's final
  EXPECT_EQ(states[5], v1::CHECKPOINT_STATE_COMMITTED);
  const std::string dir = a->checkpoint_directory();
  EXPECT_FALSE(std::filesystem::exists(dir + "/step-000000000001"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/step-000000000003"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/step-000000000004"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/step-000000000005"));
  // Paging.
  list.set_page_size(2);
  auto p1 = h.c().ListCheckpoints(list);
  ASSERT_TRUE(p1.ok());
  ASSERT_EQ(p1->checkpoints_size(), 2);
  list.set_page_token(p1->next_page_token());
  auto p2 = h.c().ListCheckpoints(list);
  ASSERT_TRUE(p2.ok());
  EXPECT_EQ(p2->checkpoints(0).step(), 3);
}

TEST(CoordinatorTest, LostLeaseRestartsThenFailsAfterMaxRestarts) {
  Harness h("lease", absl::Seconds(10));
  v1::JobSpec spec = TestSpec();
  spec.mutable_world()->set_max_restarts(1);
  const std::string job = h.Submit(spec, "r");
  const std::string w1 = h.Register("w");
  auto a = h.TakeAssignment(w1);
  ASSERT_TRUE(a);
  ASSERT_TRUE(h.Train(w1, *a, 1).ok());
  ASSERT_TRUE(h.Commit(w1, *a, 2).ok());
  h.Advance(absl::Seconds(5));
  ASSERT_TRUE(h.Train(w1, *a, 2).ok());
  h.Advance(absl::Seconds(9));
  EXPECT_EQ(h.State(job), v1::JOB_STATE_RUNNING);  // renewed 9 s ago
  h.Advance(absl::Seconds(2));
  v1::Job restarting = h.Job(job);
  EXPECT_EQ(restarting.state(), v1::JOB_STATE_RESTARTING);
  EXPECT_EQ(restarting.restarts(), 1);
  EXPECT_THAT(restarting.state_message(), HasSubstr("lost its lease"));
  // Stale-round RPCs are fenced.
  v1::PutKeyRequest put;
  put.set_worker(w1);
  put.set_job(job);
  put.set_round(1);
  put.set_key("k");
  EXPECT_EQ(h.c().PutKey(put).code(), absl::StatusCode::kFailedPrecondition);
  // A second worker takes over from the committed checkpoint.
  const std::string w2 = h.Register("w");
  auto b = h.TakeAssignment(w2);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->round(), 2);
  EXPECT_EQ(b->start_step(), 2);
  EXPECT_EQ(b->resume_from().step(), 2);
  auto stale = h.Commit(w1, *a, 3);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(stale.status().message(),
              HasSubstr("round 1 of " + job + " is over; the current round is 2"));
  // The lost worker comes back: told to abort its round, then idle.
  const v1::WorkerProgress old = Harness::Progress(*a, 3);
  auto back = h.Beat(w1, v1::WORKER_PHASE_TRAINING, &old);
  ASSERT_TRUE(back.ok());
  ASSERT_TRUE(back->directive().has_abort());
  EXPECT_EQ(back->directive().abort().round(), 1);
  ASSERT_TRUE(h.Beat(w1).ok());
  ASSERT_TRUE(h.Train(w2, *b, 3).ok());
  // w2 goes silent too (w1 keeps beating): the budget is spent.
  h.Advance(absl::Seconds(6));
  ASSERT_TRUE(h.Beat(w1).ok());
  h.Advance(absl::Seconds(6));
  const v1::Job failed = h.Job(job);
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.restarts(), 1);
  EXPECT_THAT(failed.state_message(), HasSubstr("worker " + w2 +
                                                " lost its lease (no heartbeat for 10s); 1 restart "
                                                "allowed, 1 used"));
  int restarted = 0;
  for (const auto& e : h.Events(job)) restarted += e.has_restarted();
  EXPECT_EQ(restarted, 1);
}

TEST(CoordinatorTest, ReportedFailures) {
  Harness h("failures");
  const std::string job = h.Submit(TestSpec(), "r");
  const std::string w = h.Register("w");
  auto a = h.TakeAssignment(w);
  ASSERT_TRUE(a);
  v1::ReportFailureRequest failure;
  failure.set_worker(w);
  failure.set_job(job);
  failure.set_round(1);
  failure.set_rank(0);
  failure.set_code("INTERNAL");
  failure.set_message("child crashed");
  failure.set_retryable(true);
  ASSERT_TRUE(h.c().ReportFailure(failure).ok());
  EXPECT_EQ(h.State(job), v1::JOB_STATE_SCHEDULING);  // re-formed at once on the idle worker
  EXPECT_EQ(h.Job(job).restarts(), 1);
  auto abort = h.NextDirective(w);
  ASSERT_TRUE(abort && abort->has_abort());
  auto b = h.TakeAssignment(w);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->round(), 2);
  // Drained: re-formed without counting.
  failure.set_round(2);
  failure.set_drained(true);
  ASSERT_TRUE(h.c().ReportFailure(failure).ok());
  EXPECT_EQ(h.Job(job).restarts(), 1);
  EXPECT_EQ(h.Job(job).round(), 3);
  // Non-retryable: FAILED with the worker's message.
  failure.set_round(3);
  failure.set_drained(false);
  failure.set_retryable(false);
  failure.set_message("data.manifest: shard 3 changed");
  ASSERT_TRUE(h.c().ReportFailure(failure).ok());
  EXPECT_EQ(h.State(job), v1::JOB_STATE_FAILED);
  EXPECT_EQ(h.Job(job).state_message(), "data.manifest: shard 3 changed");
  failure.set_message(std::string(100000, 'x'));
  EXPECT_EQ(h.c().ReportFailure(failure).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CoordinatorTest, UnreadableManifestFailsTheJob) {
  Harness h("manifest");
  v1::JobSpec spec = TestSpec();
  spec.mutable_data()->set_manifest("/missing/manifest.json");
  const std::string job = h.Submit(spec, "r");
  h.Register("w");
  const v1::Job failed = h.Job(job);
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_THAT(failed.state_message(), HasSubstr("data.manifest"));
}

TEST(CoordinatorTest, CancelPaths) {
  Harness h("cancel");
  const std::string queued = h.Submit(TestSpec("q"), "q");
  v1::CancelJobRequest cancel;
  cancel.set_name(queued);
  cancel.set_reason("not needed");
  auto c = h.c().CancelJob(cancel);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_THAT(c->state_message(), HasSubstr("not needed"));
  EXPECT_EQ(h.c().CancelJob(cancel)->state(), v1::JOB_STATE_CANCELLED);  // idempotent

  const std::string running = h.Submit(TestSpec("r"), "r");
  const std::string w = h.Register("w");
  auto a = h.TakeAssignment(w);
  ASSERT_TRUE(a);
  ASSERT_TRUE(h.Train(w, *a, 1).ok());
  cancel.set_name(running);
  EXPECT_EQ(h.c().CancelJob(cancel)->state(), v1::JOB_STATE_CANCELLING);
  auto abort = h.NextDirective(w, v1::WORKER_PHASE_TRAINING);
  ASSERT_TRUE(abort && abort->has_abort());
  EXPECT_EQ(abort->abort().job(), running);
  v1::WorkerProgress stopped = Harness::Progress(*a, 1);
  ASSERT_TRUE(h.Beat(w, v1::WORKER_PHASE_STOPPED, &stopped).ok());
  EXPECT_EQ(h.State(running), v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(h.Job(running).has_end_time());

  // A group formed but not yet told: cancelled at once.
  const std::string fresh = h.Submit(TestSpec("f"), "f");
  EXPECT_EQ(h.State(fresh), v1::JOB_STATE_SCHEDULING);
  cancel.set_name(fresh);
  EXPECT_EQ(h.c().CancelJob(cancel)->state(), v1::JOB_STATE_CANCELLED);
  EXPECT_FALSE(h.NextDirective(w).has_value());

  // Finished jobs cannot be cancelled.
  const std::string fails = h.Submit(TestSpec("x"), "x");
  auto b = h.TakeAssignment(w);
  ASSERT_TRUE(b);
  v1::ReportFailureRequest failure;
  failure.set_worker(w);
  failure.set_job(fails);
  failure.set_round(1);
  failure.set_message("bad");
  ASSERT_TRUE(h.c().ReportFailure(failure).ok());
  cancel.set_name(fails);
  EXPECT_EQ(h.c().CancelJob(cancel).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(CoordinatorTest, ListJobsPagesNewestFirstWithStableTokens) {
  Harness h("paging");
  for (int i = 0; i < 5; ++i) h.Submit(TestSpec("p"), absl::StrCat("r", i));
  v1::ListJobsRequest request;
  request.set_page_size(2);
  auto p1 = h.c().ListJobs(request);
  ASSERT_TRUE(p1.ok());
  ASSERT_EQ(p1->jobs_size(), 2);
  EXPECT_EQ(p1->jobs(0).name(), "jobs/p-5");
  EXPECT_EQ(p1->jobs(1).name(), "jobs/p-4");
  h.Submit(TestSpec("p"), "late");  // does not shift the next pages
  request.set_page_token(p1->next_page_token());
  auto p2 = h.c().ListJobs(request);
  ASSERT_TRUE(p2.ok());
  ASSERT_EQ(p2->jobs_size(), 2);
  EXPECT_EQ(p2->jobs(0).name(), "jobs/p-3");
  request.set_page_token(p2->next_page_token());
  auto p3 = h.c().ListJobs(request);
  ASSERT_TRUE(p3.ok());
  ASSERT_EQ(p3->jobs_size(), 1);
  EXPECT_EQ(p3->jobs(0).name(), "jobs/p-1");
  EXPECT_TRUE(p3->next_page_token().empty());
  request.set_page_token("garbage!");
  EXPECT_EQ(h.c().ListJobs(request).status().code(), absl::StatusCode::kInvalidArgument);
  request.clear_page_token();
  request.set_page_size(-1);
  EXPECT_EQ(h.c().ListJobs(request).status().code(), absl::StatusCode::kInvalidArgument);
  // State filter.
  v1::CancelJobRequest cancel;
  cancel.set_name("jobs/p-2");
  ASSERT_TRUE(h.c().CancelJob(cancel).ok());
  v1::ListJobsRequest filtered;
  filtered.add_states(v1::JOB_STATE_CANCELLED);
  auto f = h.c().ListJobs(filtered);
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(f->jobs_size(), 1);
  EXPECT_EQ(f->jobs(0).name(), "jobs/p-2");
  // The tokens survive a restart.
  h.Reopen();
  request.set_page_size(2);
  request.set_page_token(p2->next_page_token());
  EXPECT_EQ(h.c().ListJobs(request)->jobs(0).name(), "jobs/p-1");
}

TEST(CoordinatorTest, WatchReplaysThenGoesLiveWithoutGapsOrRepeats) {
  Harness h("watch");
  const std::string job = h.Submit(TestSpec(), "r");
  const std::string w = h.Register("w");
  auto a = h.TakeAssignment(w);
  ASSERT_TRUE(a);
  auto page = h.c().ReadEvents(job, 0, 1000, true);
  ASSERT_TRUE(page.ok());
  ASSERT_FALSE(page->events.empty());
  EXPECT_FALSE(page->ended);
  const int64_t last = page->events.back().sequence();
  bool woken = false;
  h.c().WaitForEvents(job, page->scanned, [&] { woken = true; });
  EXPECT_FALSE(woken);
  ASSERT_TRUE(h.Train(w, *a, 1).ok());
  EXPECT_TRUE(woken);
  auto live = h.c().ReadEvents(job, last, 1000, true);
  ASSERT_TRUE(live.ok());
  ASSERT_FALSE(live->events.empty());
  EXPECT_EQ(live->events.front().sequence(), last + 1);
  // Filtered reads still advance: a step event does not wake a reader forever.
  auto filtered = h.c().ReadEvents(job, live->events.back().sequence() - 1, 1000, false);
  ASSERT_TRUE(filtered.ok());
  EXPECT_EQ(filtered->scanned, live->events.back().sequence());
  // Small pages continue where the previous ended.
  auto first = h.c().ReadEvents(job, 0, 2, true);
  ASSERT_EQ(first->events.size(), 2u);
  EXPECT_EQ(first->scanned, 2);
  auto rest = h.c().ReadEvents(job, first->scanned, 1000, true);
  EXPECT_EQ(rest->events.front().sequence(), 3);
}

TEST(CoordinatorTest, RestartKeepsLiveRounds) {
  Harness h("restart");
  const std::string job = h.Submit(TestSpec(), "r");
  const std::string w = h.Register("w");
  auto a = h.TakeAssignment(w);
  ASSERT_TRUE(a);
  ASSERT_TRUE(h.Train(w, *a, 1).ok());
  ASSERT_TRUE(h.Commit(w, *a, 2).ok());
  const int64_t events = h.Events(job).size();
  h.Advance(absl::Seconds(8));
  h.Reopen();
  // A fresh lease from the restart.
  h.Advance(absl::Seconds(8));
  v1::Job kept = h.Job(job);
  EXPECT_EQ(kept.state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(kept.round(), 1);
  EXPECT_EQ(kept.latest_checkpoint(), job + "/checkpoints/step-000000000002");
  EXPECT_EQ(static_cast<int64_t>(h.Events(job).size()), events);
  ASSERT_TRUE(h.Train(w, *a, 3).ok());
  EXPECT_EQ(h.Events(job).back().sequence(), events + 1);
  ASSERT_TRUE(h.Commit(w, *a, 4).ok());
  ASSERT_TRUE(h.Complete(w, *a).ok());
  EXPECT_EQ(h.State(job), v1::JOB_STATE_SCHEDULING);
  auto b = h.TakeAssignment(w);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->round(), 2);
  EXPECT_EQ(b->stage(), 1);
}

// The progress after stage 0's eval tasks: its last step's, with one result.
v1::WorkerProgress EvalProgress(const v1::Assignment& a, int64_t step, double acc) {
  v1::WorkerProgress p = Harness::Progress(a, step);
  v1::EvalTaskResult* r = p.add_eval_tasks();
  r->set_stage(a.stage());
  r->set_step(step);
  r->set_name("arc");
  r->set_task("multiple-choice");
  (*r->mutable_metrics())["acc"] = acc;
  (*r->mutable_metrics())["count"] = 20;
  return p;
}

std::vector<v1::EvalTaskResult> EvalTasksOf(const std::vector<v1::JobEvent>& events) {
  std::vector<v1::EvalTaskResult> out;
  for (const v1::JobEvent& e : events) {
    if (e.has_eval_task()) out.push_back(e.eval_task());
  }
  return out;
}

TEST(CoordinatorTest, EvalTaskResultsBecomeEventsOnceAcrossResendsAndRestarts) {
  Harness h("eval_tasks");
  v1::JobSpec spec = TestSpec();
  v1::EvalTaskSpec* task = spec.mutable_eval()->add_tasks();
  task->set_task("multiple-choice");
  task->set_name("arc");
  task->set_data("/data/arc.jsonl");
  const std::string job = h.Submit(spec, "r");
  const std::string w = h.Register("w");
  auto a = h.TakeAssignment(w);
  ASSERT_TRUE(a);
  ASSERT_TRUE(h.Train(w, *a, 4).ok());
  const v1::WorkerProgress evaluated = EvalProgress(*a, 4, 0.45);
  ASSERT_TRUE(h.Beat(w, v1::WORKER_PHASE_TRAINING, &evaluated).ok());
  // Every heartbeat repeats the last progress: no second copy.
  ASSERT_TRUE(h.Beat(w, v1::WORKER_PHASE_TRAINING, &evaluated).ok());
  std::vector<v1::EvalTaskResult> results = EvalTasksOf(h.Events(job));
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].name(), "arc");
  EXPECT_EQ(results[0].task(), "multiple-choice");
  EXPECT_EQ(results[0].step(), 4);
  EXPECT_EQ(results[0].stage(), 0);
  EXPECT_DOUBLE_EQ(results[0].metrics().at("acc"), 0.45);
  // Nor after a restart of the coordinator (the events are durable).
  h.Reopen();
  ASSERT_TRUE(h.Beat(w, v1::WORKER_PHASE_TRAINING, &evaluated).ok());
  EXPECT_EQ(EvalTasksOf(h.Events(job)).size(), 1u);
  ASSERT_TRUE(h.Commit(w, *a, 4).ok());
  ASSERT_TRUE(h.Complete(w, *a).ok());
  auto b = h.TakeAssignment(w);
  ASSERT_TRUE(b);
  ASSERT_TRUE(h.Train(w, *b, 6).ok());
  v1::WorkerProgress last = EvalProgress(*b, 6, 0.6);
  last.mutable_eval_tasks(0)->set_final(true);
  ASSERT_TRUE(h.Beat(w, v1::WORKER_PHASE_TRAINING, &last).ok());
  results = EvalTasksOf(h.Events(job));
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[1].step(), 6);
  EXPECT_EQ(results[1].stage(), 1);
  EXPECT_TRUE(results[1].final());
  EXPECT_DOUBLE_EQ(results[1].metrics().at("acc"), 0.6);
  // They are events without step metrics too (what `qtrain watch` reads by default).
  auto page = h.c().ReadEvents(job, 0, 1000, false);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(EvalTasksOf(page->events).size(), 2u);
}

TEST(CoordinatorTest, RestartResendsAnAssignmentThatWasNotDelivered) {
  Harness h("resend");
  const std::string job = h.Submit(TestSpec(), "r");
  const std::string w = h.Register("w");
  EXPECT_EQ(h.State(job), v1::JOB_STATE_SCHEDULING);
  h.Reopen();
  auto a = h.TakeAssignment(w);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->round(), 1);
  EXPECT_EQ(a->start_step(), 0);
}

TEST(CoordinatorTest, ReRegisteringDuringARoundRestartsIt) {
  Harness h("reregister");
  const std::string job = h.Submit(TestSpec(), "r");
  const std::string w = h.Register("w");
  auto a = h.TakeAssignment(w);
  ASSERT_TRUE(a);
  v1::RegisterWorkerRequest again;
  again.set_worker_id(w);
  again.set_hostname("w");
  auto r = h.c().RegisterWorker(again);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->worker().name(), w);
  EXPECT_EQ(r->lease_ms(), 10000);
  EXPECT_EQ(r->heartbeat_interval_ms(), 1000);
  const v1::Job j = h.Job(job);
  EXPECT_EQ(j.restarts(), 1);
  EXPECT_EQ(j.round(), 2);  // re-formed on the same (now idle) worker
}

TEST(CoordinatorTest, RendezvousKeys) {
  Harness h("kv");
  const std::string job = h.Submit(TestSpec(), "r");
  const std::string w = h.Register("w");
  auto a = h.TakeAssignment(w);
  ASSERT_TRUE(a);
  v1::GetKeyRequest get;
  get.set_worker(w);
  get.set_job(job);
  get.set_round(1);
  get.set_key("gloo/0");
  std::optional<absl::StatusOr<std::string>> got;
  h.c().GetKey(get, h.now() + absl::Seconds(5), [&](absl::StatusOr<std::string> v) { got = v; });
  EXPECT_FALSE(got.has_value());
  v1::PutKeyRequest put;
  put.set_worker(w);
  put.set_job(job);
  put.set_round(1);
  put.set_key("gloo/0");
  put.set_value("addr");
  ASSERT_TRUE(h.c().PutKey(put).ok());
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(**got, "addr");
  // Deadline.
  got.reset();
  get.set_key("never");
  h.c().GetKey(get, h.now() + absl::Seconds(1), [&](absl::StatusOr<std::string> v) { got = v; });
  h.Advance(absl::Seconds(2));
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status().code(), absl::StatusCode::kDeadlineExceeded);
  // Bounds.
  put.set_key(std::string(513, 'k'));
  EXPECT_EQ(h.c().PutKey(put).code(), absl::StatusCode::kInvalidArgument);
  put.set_key("big");
  put.set_value(std::string((1 << 20) + 1, 'v'));
  EXPECT_EQ(h.c().PutKey(put).code(), absl::StatusCode::kInvalidArgument);
  // The round ends while waiting: ABORTED.
  got.reset();
  h.c().GetKey(get, h.now() + absl::Seconds(30), [&](absl::StatusOr<std::string> v) { got = v; });
  v1::ReportFailureRequest failure;
  failure.set_worker(w);
  failure.set_job(job);
  failure.set_round(1);
  failure.set_retryable(true);
  ASSERT_TRUE(h.c().ReportFailure(failure).ok());
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->status().code(), absl::StatusCode::kAborted);
}

TEST(CoordinatorTest, KeyCountIsBounded) {
  Harness h("kvcount");
  const std::string job = h.Submit(TestSpec(), "r");
  const std::string w = h.Register("w");
  v1::PutKeyRequest put;
  put.set_worker(w);
  put.set_job(job);
  put.set_round(1);
  for (int i = 0; i < kMaxKeysPerRound; ++i) {
    put.set_key(absl::StrCat("k", i));
    ASSERT_TRUE(h.c().PutKey(put).ok());
  }
  put.set_key("one-more");
  EXPECT_EQ(h.c().PutKey(put).code(), absl::StatusCode::kResourceExhausted);
}

TEST(CoordinatorTest, IdleWorkersStayIdleWithinTheirLease) {
  Harness h("idle");
  const std::string w = h.Register("w");
  EXPECT_TRUE(h.Beat(w).ok());
  v1::HeartbeatRequest unknown;
  unknown.set_worker("workers/nobody-9");
  EXPECT_EQ(h.c().Heartbeat(unknown).status().code(), absl::StatusCode::kNotFound);
  // The worker stays IDLE (not LOST) as long as it beats within the lease.
  for (int i = 0; i < 30; ++i) {
    h.Advance(absl::Seconds(1));
    ASSERT_TRUE(h.Beat(w).ok());
  }
  auto list = h.c().ListWorkers(v1::ListWorkersRequest());
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->workers(0).state(), v1::WORKER_STATE_IDLE);
  h.Advance(absl::Seconds(11));
  EXPECT_EQ(h.c().ListWorkers(v1::ListWorkersRequest())->workers(0).state(), v1::WORKER_STATE_LOST);
}

}  // namespace
}  // namespace qtrain::coordinator

namespace qtrain::coordinator {
namespace {

TEST(CoordinatorTest, IdleHeartbeatsAreNotWrittenOneByOne) {
  Harness h("cheap", absl::Seconds(10));
  std::vector<std::string> workers;
  for (int i = 0; i < 200; ++i) workers.push_back(h.Register("w"));
  // Every commit writes the WAL (its size may not change: it is reused after checkpoints).
  const std::string wal = h.dir() + "/state/coordinator.db-wal";
  const auto written_before = std::filesystem::last_write_time(wal);
  const absl::Time start = absl::Now();
  for (int round = 0; round < 25; ++round) {
    for (const std::string& w : workers) ASSERT_TRUE(h.Beat(w).ok());
  }
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(std::filesystem::last_write_time(wal), written_before)
      << "idle heartbeats wrote to the store";
  // 5,000 heartbeats: far below a millisecond each.
  EXPECT_LT(took, absl::Seconds(5));
  // Their times are saved lazily, once per lease, in one batch.
  h.Advance(absl::Seconds(6));
  for (const std::string& w : workers) ASSERT_TRUE(h.Beat(w).ok());
  h.Advance(absl::Seconds(5));
  EXPECT_GT(std::filesystem::last_write_time(wal), written_before);
  auto list = h.c().ListWorkers(v1::ListWorkersRequest());
  ASSERT_TRUE(list.ok());
  EXPECT_EQ(list->workers_size(), 50);
  EXPECT_EQ(list->workers(0).state(), v1::WORKER_STATE_IDLE);
  EXPECT_FALSE(list->next_page_token().empty());
}

}  // namespace
}  // namespace qtrain::coordinator

namespace qtrain::coordinator {
namespace {

TEST(CoordinatorTest, DrainingWorkerFinishesAndGetsNothingNew) {
  Harness h("drain");
  const std::string job = h.Submit(TestSpec(), "r");
  const std::string w1 = h.Register("w");
  auto a = h.TakeAssignment(w1);
  ASSERT_TRUE(a);
  v1::HeartbeatRequest beat;
  beat.set_worker(w1);
  beat.set_phase(v1::WORKER_PHASE_TRAINING);
  beat.set_draining(true);
  *beat.mutable_progress() = Harness::Progress(*a, 1);
  ASSERT_TRUE(h.c().Heartbeat(beat).ok());
  auto list = h.c().ListWorkers(v1::ListWorkersRequest());
  EXPECT_EQ(list->workers(0).state(), v1::WORKER_STATE_DRAINING);
  EXPECT_EQ(list->workers(0).job(), job);
  ASSERT_TRUE(h.Commit(w1, *a, 2).ok());
  v1::ReportFailureRequest drained;
  drained.set_worker(w1);
  drained.set_job(job);
  drained.set_round(1);
  drained.set_drained(true);
  ASSERT_TRUE(h.c().ReportFailure(drained).ok());
  EXPECT_EQ(h.State(job), v1::JOB_STATE_RESTARTING);  // nobody else to take it
  EXPECT_EQ(h.Job(job).restarts(), 0);
  const std::string w2 = h.Register("w");
  auto b = h.TakeAssignment(w2);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->start_step(), 2);
  list = h.c().ListWorkers(v1::ListWorkersRequest());
  EXPECT_EQ(list->workers(0).state(), v1::WORKER_STATE_DRAINING);
  EXPECT_TRUE(list->workers(0).job().empty());
}

}  // namespace
}  // namespace qtrain::coordinator

namespace qtrain::coordinator {
namespace {

TEST(NamesTest, Utf8AndNames) {
  EXPECT_TRUE(IsValidUtf8("plain"));
  EXPECT_TRUE(IsValidUtf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xff"));
  EXPECT_FALSE(IsValidUtf8("\xc3"));              // truncated
  EXPECT_FALSE(IsValidUtf8("\xc0\xaf"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_EQ(*ParseJobName("jobs/a.b-1", "name"), "a.b-1");
  EXPECT_FALSE(ParseJobName("jobs/", "name").ok());
  EXPECT_FALSE(ParseJobName("jobs/..", "name").ok());
  EXPECT_FALSE(ParseJobName("workers/a", "name").ok());
  EXPECT_EQ(*ParseWorkerName("a-1", "worker"), "a-1");
  EXPECT_EQ(*ParseWorkerName("workers/a-1", "worker"), "a-1");
  EXPECT_EQ(SanitizeWorkerPrefix("Node_07.Example.COM"), "node-07-example-com");
  EXPECT_EQ(SanitizeWorkerPrefix("__"), "worker");
  EXPECT_EQ(*DecodePageToken(EncodePageToken("jobs", 17), "jobs", "t"), 17);
  EXPECT_FALSE(DecodePageToken(EncodePageToken("workers", 17), "jobs", "t").ok());
}

}  // namespace
}  // namespace qtrain::coordinator

namespace qtrain::coordinator {
namespace {

// Workers driven one heartbeat a second; the assignments they receive are kept.
class Fleet {
 public:
  explicit Fleet(Harness& h) : h_(h) {}

  void Beat(const std::string& worker) {
    auto r = h_.Beat(worker);
    ASSERT_TRUE(r.ok()) << r.status();
    if (r->has_directive() && r->directive().has_assign()) {
      assigned_[worker] = r->directive().assign();
    }
  }
  // `seconds` ticks of one second, each followed by an idle heartbeat of every `alive` worker.
  void Advance(int seconds, const std::vector<std::string>& alive) {
    for (int i = 0; i < seconds; ++i) {
      h_.Advance(absl::Seconds(1));
      for (const std::string& w : alive) Beat(w);
    }
  }
  // The newest assignment `worker` received (of round > `after_round`), beating it a few times.
  std::optional<v1::Assignment> Assignment(const std::string& worker, int64_t after_round) {
    for (int i = 0; i < 4; ++i) {
      auto it = assigned_.find(worker);
      if (it != assigned_.end() && it->second.round() > after_round) return it->second;
      Beat(worker);
    }
    return std::nullopt;
  }

 private:
  Harness& h_;
  std::map<std::string, v1::Assignment> assigned_;
};

v1::JobSpec ElasticSpec(int64_t min_workers, double regroup_seconds) {
  v1::JobSpec spec = TestSpec();
  spec.mutable_world()->set_min_workers(min_workers);
  spec.mutable_world()->set_max_workers(2);
  spec.mutable_world()->set_regroup_seconds(regroup_seconds);
  return spec;
}

// A 2-worker round 1 of `job` on w0 and w1 with step 2 committed by both ranks.
void StartPair(Harness& h, const std::string& job, const std::string& w0, const std::string& w1) {
  auto a0 = h.TakeAssignment(w0);
  auto a1 = h.TakeAssignment(w1);
  ASSERT_TRUE(a0 && a1);
  ASSERT_EQ(a0->world_size(), 2);
  ASSERT_EQ(a0->rank(), 0);
  ASSERT_EQ(a1->rank(), 1);
  ASSERT_TRUE(h.Train(w0, *a0, 1).ok());
  ASSERT_EQ(h.State(job), v1::JOB_STATE_RUNNING);
  ASSERT_EQ(h.Commit(w0, *a0, 2)->state(), v1::CHECKPOINT_STATE_WRITING);
  ASSERT_EQ(h.Commit(w1, *a1, 2)->state(), v1::CHECKPOINT_STATE_COMMITTED);
}

TEST(RegroupTest, LostMemberWithAnIdleReplacementReformsAtTwoAtOnce) {
  Harness h("regroup_replace");
  Fleet fleet(h);
  const std::string job = h.Submit(ElasticSpec(1, 30), "r");
  const std::string w0 = h.Register("w");
  const std::string w1 = h.Register("w");
  StartPair(h, job, w0, w1);
  const std::string spare = h.Register("spare");
  EXPECT_EQ(h.Job(job).round(), 1);  // the spare is not taken by a running job
  // w1 goes silent; its lease ends 11 s after its last heartbeat.
  fleet.Advance(10, {w0, spare});
  EXPECT_EQ(h.State(job), v1::JOB_STATE_RUNNING);
  fleet.Advance(1, {w0, spare});
  EXPECT_EQ(h.State(job), v1::JOB_STATE_RESTARTING);
  // At the next tick both have sent a heartbeat since the failure: no wait for regroup_seconds.
  fleet.Advance(1, {w0, spare});
  const v1::Job job_now = h.Job(job);
  EXPECT_EQ(job_now.state(), v1::JOB_STATE_SCHEDULING);
  EXPECT_EQ(job_now.round(), 2);
  EXPECT_EQ(job_now.restarts(), 1);
  EXPECT_THAT(job_now.workers(), ::testing::ElementsAre(w0, spare));
  auto b0 = fleet.Assignment(w0, 1);
  auto b1 = fleet.Assignment(spare, 1);
  ASSERT_TRUE(b0 && b1);
  EXPECT_EQ(b0->world_size(), 2);
  EXPECT_EQ(b0->rank(), 0);
  EXPECT_EQ(b1->rank(), 1);
  EXPECT_EQ(b1->rendezvous_prefix(), job + "/rounds/2/");
  EXPECT_EQ(b0->resume_from().step(), 2);
  EXPECT_EQ(b1->start_step(), 2);
  EXPECT_EQ(b1->data().total_tokens(), 1002);
}

TEST(RegroupTest, WithoutAReplacementContinuesOnOneAfterRegroupSeconds) {
  Harness h("regroup_shrink");
  Fleet fleet(h);
  const std::string job = h.Submit(ElasticSpec(1, 30), "r");
  const std::string w0 = h.Register("w");
  const std::string w1 = h.Register("w");
  StartPair(h, job, w0, w1);
  fleet.Advance(11, {w0});  // w1 is lost: the failure
  EXPECT_EQ(h.State(job), v1::JOB_STATE_RESTARTING);
  EXPECT_EQ(h.Job(job).restarts(), 1);
  fleet.Advance(10, {w0});
  // A coordinator restart does not restart the window: it runs from the failure.
  h.Reopen();
  fleet.Advance(19, {w0});  // 29 s after the failure
  EXPECT_EQ(h.State(job), v1::JOB_STATE_RESTARTING);
  EXPECT_EQ(h.Job(job).round(), 1);
  fleet.Advance(1, {w0});  // 30 s
  const v1::Job shrunk = h.Job(job);
  EXPECT_EQ(shrunk.state(), v1::JOB_STATE_SCHEDULING);
  EXPECT_EQ(shrunk.round(), 2);
  EXPECT_THAT(shrunk.workers(), ::testing::ElementsAre(w0));
  auto b = fleet.Assignment(w0, 1);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->world_size(), 1);
  EXPECT_EQ(b->rank(), 0);
  EXPECT_EQ(b->start_step(), 2);
  EXPECT_EQ(b->resume_from().step(), 2);
  EXPECT_EQ(b->data().total_tokens(), 1);
  int restarted = 0;
  for (const auto& e : h.Events(job)) restarted += e.has_restarted();
  EXPECT_EQ(restarted, 1);
}

// A member killed with its daemon: its peer's collective breaks and is reported at once, while
// the dead worker is still within its lease (IDLE once the round is released). The group
// re-forms with the live replacement, not with the silent member.
TEST(RegroupTest, AReportedFailureRegroupsOnlyWorkersThatBeatSinceIt) {
  Harness h("regroup_silent");
  Fleet fleet(h);
  const std::string job = h.Submit(ElasticSpec(1, 30), "r");
  const std::string w0 = h.Register("w");
  const std::string w1 = h.Register("w");
  StartPair(h, job, w0, w1);
  const std::string spare = h.Register("spare");
  fleet.Advance(2, {w0, w1, spare});
  // w1 dies half a second after its last heartbeat; w0 reports the broken collective.
  h.Advance(absl::Milliseconds(500));
  v1::ReportFailureRequest failure;
  failure.set_worker(w0);
  failure.set_job(job);
  failure.set_round(1);
  failure.set_rank(0);
  failure.set_code("UNAVAILABLE");
  failure.set_message("collective ReduceScatterSum: connection to rank 1 closed");
  failure.set_retryable(true);
  ASSERT_TRUE(h.c().ReportFailure(failure).ok());
  EXPECT_EQ(h.State(job), v1::JOB_STATE_RESTARTING);
  EXPECT_EQ(h.Job(job).restarts(), 1);
  fleet.Advance(2, {w0, spare});  // their heartbeats, then the next tick
  const v1::Job regrouped = h.Job(job);
  EXPECT_EQ(regrouped.state(), v1::JOB_STATE_SCHEDULING);
  EXPECT_THAT(regrouped.workers(), ::testing::ElementsAre(w0, spare));
  // w1's lease ends later: it is in no round, so nothing else restarts.
  fleet.Advance(12, {w0, spare});
  EXPECT_EQ(h.Job(job).restarts(), 1);
  EXPECT_EQ(h.Job(job).round(), 2);
}

TEST(RegroupTest, ZeroRegroupSecondsContinuesAtOnce) {
  Harness h("regroup_zero");
  Fleet fleet(h);
  const std::string job = h.Submit(ElasticSpec(1, 0), "r");
  const std::string w0 = h.Register("w");
  const std::string w1 = h.Register("w");
  StartPair(h, job, w0, w1);
  fleet.Advance(12, {w0});  // the failure, then w0's next heartbeat
  EXPECT_EQ(h.State(job), v1::JOB_STATE_SCHEDULING);
  EXPECT_THAT(h.Job(job).workers(), ::testing::ElementsAre(w0));
}

TEST(RegroupTest, BelowMinWorkersTheJobWaitsForAReplacement) {
  Harness h("regroup_min");
  Fleet fleet(h);
  const std::string job = h.Submit(ElasticSpec(2, 30), "r");
  const std::string w0 = h.Register("w");
  const std::string w1 = h.Register("w");
  StartPair(h, job, w0, w1);
  fleet.Advance(11, {w0});
  fleet.Advance(120, {w0});  // long past regroup_seconds: one worker is not enough
  EXPECT_EQ(h.State(job), v1::JOB_STATE_RESTARTING);
  EXPECT_EQ(h.Job(job).round(), 1);
  // The lost worker comes back: the group re-forms at two.
  fleet.Beat(w1);
  const v1::Job back = h.Job(job);
  EXPECT_EQ(back.state(), v1::JOB_STATE_SCHEDULING);
  EXPECT_EQ(back.round(), 2);
  EXPECT_EQ(back.workers_size(), 2);
  auto b0 = fleet.Assignment(w0, 1);
  ASSERT_TRUE(b0);
  EXPECT_EQ(b0->world_size(), 2);
}

TEST(RegroupTest, AShrunkJobGrowsBackAtTheNextStageBoundary) {
  Harness h("regroup_grow");
  Fleet fleet(h);
  const std::string job = h.Submit(ElasticSpec(1, 5), "r");
  const std::string w0 = h.Register("w");
  const std::string w1 = h.Register("w");
  StartPair(h, job, w0, w1);
  fleet.Advance(11 + 5, {w0});
  auto b = fleet.Assignment(w0, 1);
  ASSERT_TRUE(b);
  ASSERT_EQ(b->world_size(), 1);
  ASSERT_TRUE(h.Train(w0, *b, 3).ok());
  // A worker becomes idle mid-stage: the running round keeps its one worker.
  const std::string w2 = h.Register("w");
  fleet.Advance(2, {w0, w2});
  EXPECT_EQ(h.Job(job).round(), 2);
  EXPECT_FALSE(fleet.Assignment(w2, 0));
  // The stage ends: the next round takes every idle worker up to max_workers.
  ASSERT_EQ(h.Commit(w0, *b, 4)->state(), v1::CHECKPOINT_STATE_COMMITTED);
  ASSERT_TRUE(h.Complete(w0, *b).ok());
  const v1::Job grown = h.Job(job);
  EXPECT_EQ(grown.state(), v1::JOB_STATE_SCHEDULING);
  EXPECT_EQ(grown.round(), 3);
  EXPECT_THAT(grown.workers(), ::testing::ElementsAre(w0, w2));
  EXPECT_EQ(grown.restarts(), 1);
  auto c0 = fleet.Assignment(w0, 2);
  auto c1 = fleet.Assignment(w2, 2);
  ASSERT_TRUE(c0 && c1);
  EXPECT_EQ(c0->world_size(), 2);
  EXPECT_EQ(c1->rank(), 1);
  EXPECT_EQ(c1->stage(), 1);
  EXPECT_EQ(c1->start_step(), 4);
  EXPECT_EQ(c1->resume_from().step(), 4);
  // Its checkpoints again need both ranks.
  ASSERT_EQ(h.Commit(w0, *c0, 5)->state(), v1::CHECKPOINT_STATE_WRITING);
  ASSERT_EQ(h.Commit(w2, *c1, 5)->state(), v1::CHECKPOINT_STATE_COMMITTED);
}

TEST(RegroupTest, StageBoundaryWithOneIdleWorkerKeepsTheSettleWindow) {
  Harness h("regroup_settle", absl::Seconds(10), absl::Seconds(3));
  Fleet fleet(h);
  const std::string job = h.Submit(ElasticSpec(1, 30), "r");
  const std::string w0 = h.Register("w");
  fleet.Advance(3, {w0});  // the first formation waited the settle window
  auto a = fleet.Assignment(w0, 0);
  ASSERT_TRUE(a);
  ASSERT_EQ(a->world_size(), 1);
  ASSERT_EQ(h.Commit(w0, *a, 4)->state(), v1::CHECKPOINT_STATE_COMMITTED);
  ASSERT_TRUE(h.Complete(w0, *a).ok());
  fleet.Advance(2, {w0});
  EXPECT_EQ(h.Job(job).round(), 1);  // settling, not the 30 s regroup window
  fleet.Advance(1, {w0});
  EXPECT_EQ(h.Job(job).round(), 2);
  EXPECT_EQ(h.Job(job).workers_size(), 1);
}

TEST(RegroupTest, RestartsAreCountedAcrossRegroups) {
  Harness h("regroup_budget");
  Fleet fleet(h);
  v1::JobSpec spec = ElasticSpec(1, 30);
  spec.mutable_world()->set_max_restarts(1);
  const std::string job = h.Submit(spec, "r");
  const std::string w0 = h.Register("w");
  const std::string w1 = h.Register("w");
  StartPair(h, job, w0, w1);
  const std::string spare = h.Register("spare");
  fleet.Advance(12, {w0, spare});  // w1 lost: restart 1 of 1, the spare replaces it
  ASSERT_EQ(h.Job(job).restarts(), 1);
  auto b1 = fleet.Assignment(spare, 1);
  ASSERT_TRUE(b1);
  ASSERT_EQ(h.Job(job).round(), 2);
  fleet.Advance(11, {w0});  // the spare is lost too: the budget is spent
  const v1::Job failed = h.Job(job);
  EXPECT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(failed.restarts(), 1);
  EXPECT_THAT(failed.state_message(), HasSubstr("1 restart allowed, 1 used"));
  fleet.Advance(60, {w0});  // nothing re-forms a failed job
  EXPECT_EQ(h.Job(job).round(), 2);
}

}  // namespace
}  // namespace qtrain::coordinator
