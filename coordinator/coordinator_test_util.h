// A coordinator on a temporary store with a fake clock, and workers driven by hand.
#ifndef QTRAIN_COORDINATOR_COORDINATOR_TEST_UTIL_H_
#define QTRAIN_COORDINATOR_COORDINATOR_TEST_UTIL_H_

#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "coordinator/coordinator.h"
#include "coordinator/names.h"
#include "coordinator/store.h"
#include "gtest/gtest.h"

namespace qtrain::coordinator::testing {

// Two stages of 4 and 2 steps; 1 or 2 workers.
inline v1::JobSpec TestSpec(const std::string& name = "t") {
  v1::JobSpec spec;
  spec.set_name(name);
  spec.set_seed(1);
  spec.mutable_model()->set_preset("qwen2-tiny");
  spec.set_tokenizer("/data/tokenizer.json");
  spec.mutable_data()->set_manifest("/data/manifest.json");
  auto* s0 = spec.add_curriculum();
  s0->set_name("short");
  s0->set_seq_len(16);
  s0->set_tokens(256);
  s0->set_micro_batch(2);
  auto* s1 = spec.add_curriculum();
  s1->set_name("long");
  s1->set_seq_len(32);
  s1->set_tokens(128);
  s1->set_micro_batch(1);
  spec.mutable_optimizer()->set_lr(1e-3);
  spec.mutable_batch()->set_global_tokens(64);
  spec.mutable_world()->set_min_workers(1);
  spec.mutable_world()->set_max_workers(1);
  return spec;
}

class Harness {
 public:
  explicit Harness(const std::string& name, absl::Duration lease = absl::Seconds(10),
                   absl::Duration settle = absl::Seconds(1), CoordinatorMetrics* metrics = nullptr)
      : dir_((std::filesystem::path(::testing::TempDir()) / ("coord_" + name)).string()),
        lease_(lease),
        settle_(settle),
        metrics_(metrics) {
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    Open();
  }

  void Open() {
    auto store = Store::Open(dir_ + "/state/coordinator.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    CoordinatorOptions options;
    options.store = store_.get();
    options.run_root = run_root();
    options.lease = lease_;
    options.settle = settle_;
    options.max_group_size = max_group_size;
    options.metrics = metrics_;
    options.clock = [this] { return now_; };
    options.plan_data = [](const v1::JobSpec& spec, int stage, int64_t start, int64_t end, int rank,
                           int world) -> absl::StatusOr<v1::DataAssignment> {
      if (spec.data().manifest() == "/missing/manifest.json") {
        return absl::NotFoundError("/missing/manifest.json: no such file");
      }
      v1::DataAssignment data;
      data.set_manifest_sha256(std::string(64, 'a'));
      data.set_seq_len(spec.curriculum(stage).seq_len());
      data.set_windows_per_rank(end - start);
      data.set_total_tokens(rank * 1000 + world);
      return data;
    };
    auto c = Coordinator::Create(options);
    ASSERT_TRUE(c.ok()) << c.status();
    c_ = *std::move(c);
  }
  // CoordinatorOptions::max_group_size of the next Open()/Reopen().
  int64_t max_group_size = 0;

  // A coordinator restart on the same state.
  void Reopen() {
    c_.reset();
    store_.reset();
    Open();
  }

  Coordinator& c() { return *c_; }
  std::string run_root() const { return dir_ + "/runs"; }
  const std::string& dir() const { return dir_; }
  absl::Time now() const { return now_; }
  void Advance(absl::Duration d) {
    now_ += d;
    c_->Tick();
  }

  std::string Submit(const v1::JobSpec& spec, const std::string& request_id) {
    v1::CreateJobRequest request;
    *request.mutable_spec() = spec;
    request.set_request_id(request_id);
    auto job = c_->CreateJob(request);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? job->name() : "";
  }
  v1::Job Job(const std::string& name) {
    v1::GetJobRequest request;
    request.set_name(name);
    auto job = c_->GetJob(request);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? *job : v1::Job();
  }
  v1::JobState State(const std::string& name) { return Job(name).state(); }

  std::string Register(const std::string& host, v1::DeviceKind device = v1::DEVICE_KIND_CPU) {
    v1::RegisterWorkerRequest request;
    request.set_hostname(host);
    request.set_device(device);
    auto r = c_->RegisterWorker(request);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->worker().name() : "";
  }

  absl::StatusOr<v1::HeartbeatResponse> Beat(const std::string& worker,
                                             v1::WorkerPhase phase = v1::WORKER_PHASE_IDLE,
                                             const v1::WorkerProgress* progress = nullptr) {
    v1::HeartbeatRequest request;
    request.set_worker(worker);
    request.set_phase(phase);
    if (progress != nullptr) *request.mutable_progress() = *progress;
    return c_->Heartbeat(request);
  }

  // Heartbeats until a directive arrives (at most a few).
  std::optional<v1::Directive> NextDirective(const std::string& worker,
                                             v1::WorkerPhase phase = v1::WORKER_PHASE_IDLE) {
    auto r = Beat(worker, phase);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || !r->has_directive()) return std::nullopt;
    return r->directive();
  }
  std::optional<v1::Assignment> TakeAssignment(const std::string& worker) {
    auto d = NextDirective(worker);
    if (!d || !d->has_assign()) return std::nullopt;
    return d->assign();
  }

  static v1::WorkerProgress Progress(const v1::Assignment& a, int64_t step) {
    v1::WorkerProgress p;
    p.set_job(a.job());
    p.set_round(a.round());
    p.set_rank(a.rank());
    p.set_stage(a.stage());
    p.set_step(step);
    p.set_loss(2.5);
    p.set_tokens_seen(step * 64);
    return p;
  }
  absl::Status Train(const std::string& worker, const v1::Assignment& a, int64_t step) {
    const v1::WorkerProgress p = Progress(a, step);
    return Beat(worker, v1::WORKER_PHASE_TRAINING, &p).status();
  }

  // Writes the checkpoint's files (one per rank) and reports them.
  absl::StatusOr<v1::Checkpoint> Commit(const std::string& worker, const v1::Assignment& a,
                                        int64_t step) {
    const std::string directory =
        absl::StrCat(a.checkpoint_directory(), "/", CheckpointDirName(step));
    std::filesystem::create_directories(directory);
    const std::string file = absl::StrCat("rank", a.rank(), ".bin");
    std::ofstream(directory + "/" + file) << "weights";
    v1::CommitCheckpointRequest request;
    request.set_worker(worker);
    request.set_job(a.job());
    request.set_round(a.round());
    request.set_rank(a.rank());
    request.set_step(step);
    request.set_stage(a.stage());
    request.set_directory(directory);
    auto* f = request.add_files();
    f->set_path(file);
    f->set_size_bytes(7);
    f->set_sha256(std::string(64, 'b'));
    QTRAIN_ASSIGN_OR_RETURN(v1::CommitCheckpointResponse r, c_->CommitCheckpoint(request));
    return r.checkpoint();
  }

  absl::Status Complete(const std::string& worker, const v1::Assignment& a,
                        bool write_final = true) {
    v1::CompleteAssignmentRequest request;
    request.set_worker(worker);
    request.set_job(a.job());
    request.set_round(a.round());
    request.set_rank(a.rank());
    request.set_stage(a.stage());
    request.set_step(a.end_step());
    if (a.rank() == 0 && a.stage() + 1 == a.spec().curriculum_size()) {
      const std::string final_dir = a.run_directory() + "/final";
      if (write_final) {
        std::filesystem::create_directories(final_dir);
        std::ofstream(final_dir + "/model.safetensors") << "model";
      }
      request.set_final_directory(final_dir);
    }
    return c_->CompleteAssignment(request);
  }

  // All events of a job (with step metrics).
  std::vector<v1::JobEvent> Events(const std::string& job, int64_t after = 0) {
    auto page = c_->ReadEvents(job, after, 10000, true);
    EXPECT_TRUE(page.ok()) << page.status();
    return page.ok() ? page->events : std::vector<v1::JobEvent>();
  }

 private:
  std::string dir_;
  absl::Duration lease_, settle_;
  CoordinatorMetrics* metrics_;
  absl::Time now_ = absl::FromUnixSeconds(1800000000);
  std::unique_ptr<Store> store_;
  std::unique_ptr<Coordinator> c_;
};

}  // namespace qtrain::coordinator::testing

#endif  // QTRAIN_COORDINATOR_COORDINATOR_TEST_UTIL_H_
