// Data-parallel training end to end: a real qtrain-coordinator and qtrain-worker daemons whose
// training children form Gloo groups over TCP. A job ends with the bytes of `qtrain train` of
// the same spec whatever the number of workers it trained on, and whatever happened to them on
// the way: a rank killed (replaced by an idle worker, or not replaced: the job continues on
// fewer and grows back at the next stage), a rank stopped inside a collective, the network
// between two ranks cut. Every collective failure must be detected within the collective
// timeout, abort the round and leave no process behind.
//
// A failed test prints the logs of every process it ran; QTRAIN_SERVICE_TEST_LOGS=1 prints them
// for passing tests too.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/cli_process.h"
#include "tests/integration/service_harness.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::HasSubstr;
using testing_service::Client;
using testing_service::CliOutput;
using testing_service::Coordinator;
using testing_service::IsAlive;
using testing_service::JobId;
using testing_service::JobState;
using testing_service::JsonInt;
using testing_service::JsonString;
using testing_service::ProcessId;
using testing_service::WaitFor;
using testing_service::CheckpointStep;
using testing_service::Hash;
using testing_service::ProgressStep;
using testing_service::Worker;

// The job: M = 4 micro-batches per step in both stages (global_tokens 256 = 32 x 2 x 4 =
// 64 x 1 x 4), so 1, 2 and 4 workers each give every rank 2^k of them. Stage 0 is steps 1..10,
// stage 1 steps 11..18; a checkpoint every 2 steps.
constexpr int64_t kStage0End = 10;
constexpr int64_t kTotalSteps = 18;
constexpr int kCollectiveTimeoutSeconds = 5;
constexpr absl::Duration kJobTimeout = absl::Seconds(90);
constexpr absl::Duration kTestTimeout = absl::Seconds(150);

int64_t ProgressStage(const json& job) {
  return job.contains("progress") ? JsonInt(job["progress"], "stage") : 0;
}
std::vector<std::string> JobWorkers(const json& job) {
  std::vector<std::string> workers;
  if (job.contains("workers") && job["workers"].is_array()) {
    for (const json& w : job["workers"]) workers.push_back(w.get<std::string>());
  }
  return workers;
}

// Training on `workers` ranks, a checkpoint committed and the job past it, early enough in
// stage 0 that what a test does next happens before the stage ends.
std::function<bool(const json&)> MidStageZero(size_t workers, int64_t last_step) {
  return [=](const json& job) {
    if (JobState(job) != "JOB_STATE_RUNNING" || JobWorkers(job).size() != workers) return false;
    const int64_t committed = CheckpointStep(JsonString(job, "latest_checkpoint"));
    const int64_t step = ProgressStep(job);
    return committed >= 2 && step > committed && step <= last_step;
  };
}

// The optimizer shard file of `rank` of `world` in a checkpoint directory.
fs::path ShardFile(const fs::path& checkpoint, int rank, int world) {
  return checkpoint / absl::StrFormat("optimizer-%05d-of-%05d.safetensors", rank, world);
}
// How many optimizer files a checkpoint directory holds.
int OptimizerFiles(const fs::path& checkpoint) {
  int count = 0;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(checkpoint, error)) {
    count += entry.path().filename().string().rfind("optimizer", 0) == 0;
  }
  return count;
}
fs::path CheckpointDir(const std::string& run_directory, int64_t step) {
  return fs::path(run_directory) / "checkpoints" / absl::StrFormat("step-%012d", step);
}

// The per-step records of metrics.jsonl without their timings: what must not depend on W.
std::vector<json> StepRecords(const fs::path& run_directory) {
  std::vector<json> records;
  const std::string text =
      ReadFileToString((run_directory / "metrics.jsonl").string(), 64 << 20).value_or("");
  for (const absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    const json record = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!record.is_object()) continue;
    json kept = json::object();
    for (const char* key :
         {"step", "stage", "loss", "lr", "grad_norm", "skipped", "tokens_seen", "eval_loss"}) {
      if (record.contains(key)) kept[key] = record[key];
    }
    records.push_back(std::move(kept));
  }
  return records;
}

// Runs `ip ARGS...`; OK, or an error with what it printed.
absl::Status Ip(const std::vector<std::string>& args, const fs::path& log) {
  std::string ip = "/usr/sbin/ip";
  for (const char* candidate : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"}) {
    if (::access(candidate, X_OK) == 0) {
      ip = candidate;
      break;
    }
  }
  std::vector<std::string> argv = {ip};
  argv.insert(argv.end(), args.begin(), args.end());
  testing_cli::CliOptions options;
  options.address_space_bytes = 0;
  options.timeout_seconds = 15;
  const testing_cli::CliResult result = testing_cli::RunCli(argv, log, options);
  if (result.exited && result.exit_code == 0) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat("`", absl::StrJoin(argv, " "), "` failed: ", result.Describe()));
}

// Two network namespaces, each joined to the root namespace by a veth pair (the coordinator
// listens there) and to each other by a third one (the ranks' collectives). Removed when
// destroyed, also after a half-made setup.
class NetworkLab {
 public:
  static absl::StatusOr<std::unique_ptr<NetworkLab>> Create(const fs::path& log_dir) {
    std::unique_ptr<NetworkLab> lab(new NetworkLab(log_dir));
    QTRAIN_RETURN_IF_ERROR(lab->Build());
    return lab;
  }
  ~NetworkLab() {
    for (const std::string& ns : namespaces_) (void)Ip({"netns", "del", ns}, NextLog());
    // Deleting a namespace deletes its veth ends and their peers; this catches a pair whose
    // peer never moved.
    for (const std::string& link : root_links_) (void)Ip({"link", "del", link}, NextLog());
  }

  std::string ns(int i) const { return names_[i]; }
  // The coordinator's address (in the root namespace), and the rank-link address of namespace i.
  std::string coordinator_host() const { return absl::StrCat(prefix_, ".1.1"); }
  std::string peer_host(int i) const { return absl::StrCat(prefix_, ".3.", i + 1); }
  std::vector<std::string> exec_prefix(int i) const {
    std::string ip = "/usr/sbin/ip";
    if (::access(ip.c_str(), X_OK) != 0) ip = "/sbin/ip";
    return {ip, "netns", "exec", names_[i]};
  }
  // Sets the link between the two namespaces down or up (from namespace 0's side).
  absl::Status SetRankLink(bool up) {
    return Ip({"-n", names_[0], "link", "set", rank_link_[0], up ? "up" : "down"}, NextLog());
  }

 private:
  explicit NetworkLab(fs::path log_dir) : log_dir_(std::move(log_dir)) {
    const int tag = static_cast<int>(::getpid() % 10000);
    // An address block of this process, so that two test runs on one machine do not collide.
    prefix_ = absl::StrCat("10.", 100 + tag % 100);
    for (int i = 0; i < 2; ++i) {
      names_.push_back(absl::StrCat("qtdp", tag, "n", i));
      root_side_.push_back(absl::StrCat("qt", tag, "r", i));
      ns_side_.push_back(absl::StrCat("qt", tag, "c", i));
      rank_link_.push_back(absl::StrCat("qt", tag, "p", i));
    }
  }
  fs::path NextLog() { return log_dir_ / absl::StrCat("ip-", ++runs_, ".log"); }

  absl::Status Build() {
    std::error_code error;
    fs::create_directories(log_dir_, error);
    for (int i = 0; i < 2; ++i) {
      QTRAIN_RETURN_IF_ERROR(Ip({"netns", "add", names_[i]}, NextLog()));
      namespaces_.push_back(names_[i]);
      QTRAIN_RETURN_IF_ERROR(Ip({"-n", names_[i], "link", "set", "lo", "up"}, NextLog()));
      // root <-> namespace i: 10.P.(i+1).1 in the root namespace, .2 inside.
      QTRAIN_RETURN_IF_ERROR(Ip({"link", "add", root_side_[i], "type", "veth", "peer", "name",
                                 ns_side_[i], "netns", names_[i]},
                                NextLog()));
      root_links_.push_back(root_side_[i]);
      QTRAIN_RETURN_IF_ERROR(
          Ip({"addr", "add", absl::StrCat(prefix_, ".", i + 1, ".1/24"), "dev", root_side_[i]},
             NextLog()));
      QTRAIN_RETURN_IF_ERROR(Ip({"link", "set", root_side_[i], "up"}, NextLog()));
      QTRAIN_RETURN_IF_ERROR(Ip({"-n", names_[i], "addr", "add",
                                 absl::StrCat(prefix_, ".", i + 1, ".2/24"), "dev", ns_side_[i]},
                                NextLog()));
      QTRAIN_RETURN_IF_ERROR(Ip({"-n", names_[i], "link", "set", ns_side_[i], "up"}, NextLog()));
    }
    // The coordinator listens on 10.P.1.1 alone; namespace 1 reaches it through its own pair.
    QTRAIN_RETURN_IF_ERROR(Ip({"-n", names_[1], "route", "add", absl::StrCat(prefix_, ".1.0/24"),
                               "via", absl::StrCat(prefix_, ".2.1")},
                              NextLog()));
    // namespace 0 <-> namespace 1: 10.P.3.1 and 10.P.3.2.
    QTRAIN_RETURN_IF_ERROR(Ip({"-n", names_[0], "link", "add", rank_link_[0], "type", "veth",
                               "peer", "name", rank_link_[1], "netns", names_[1]},
                              NextLog()));
    for (int i = 0; i < 2; ++i) {
      QTRAIN_RETURN_IF_ERROR(Ip(
          {"-n", names_[i], "addr", "add", absl::StrCat(peer_host(i), "/24"), "dev", rank_link_[i]},
          NextLog()));
      QTRAIN_RETURN_IF_ERROR(Ip({"-n", names_[i], "link", "set", rank_link_[i], "up"}, NextLog()));
    }
    return absl::OkStatus();
  }

  fs::path log_dir_;
  int runs_ = 0;
  std::string prefix_;
  std::vector<std::string> names_, root_side_, ns_side_, rank_link_;
  std::vector<std::string> namespaces_, root_links_;  // made so far: removed when destroyed
};

// Where a worker runs and how it reaches the coordinator and its peers.
struct WorkerPlace {
  std::string coordinator;  // empty: the coordinator's loopback address
  std::string peer_host = "127.0.0.1";
  std::vector<std::string> command_prefix;
  std::vector<std::string> extra_flags;
};

class DataParallelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::path(::testing::TempDir()) / ("dp_" + std::to_string(::getpid())));
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    testing_cli::TrainingDataOptions options;
    options.words = {"every", "rank", "sums", "its",  "share", "of",    "the",
                     "step",  "in",   "one",  "tree", "so",    "bytes", "agree"};
    options.word_count = 20000;
    options.seed = 29;
    options.shard_tokens = 5000;  // several shards
    absl::StatusOr<testing_cli::TrainingData> data =
        testing_cli::PrepareTrainingData(*root_ / "data", options);
    ASSERT_TRUE(data.ok()) << data.status();
    data_ = new testing_cli::TrainingData(*std::move(data));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
    delete data_;
    delete reference_;
    root_ = nullptr;
    data_ = nullptr;
    reference_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(data_, nullptr) << "the training data could not be made";
    testing_service::ForgetLogs();
    watchdog_ = std::make_unique<testing_service::Watchdog>(kTestTimeout);
    dir_ = *root_ / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }

  void TearDown() override {
    if (HasFailure() || std::getenv("QTRAIN_SERVICE_TEST_LOGS") != nullptr) {
      std::cerr << "---- service logs ----\n" << testing_service::AllLogs() << "\n";
    }
    // Stopped processes die of SIGKILL too (Process::Kill sends SIGCONT after it).
    workers_.clear();  // training children first, then the daemons
    coordinator_.reset();
    lab_.reset();
    watchdog_.reset();
  }

  // The spec of the test job; `world` is the body of its world section ("" for none).
  static std::string SpecText(const std::string& name, const std::string& world) {
    return absl::StrCat(
        "name: ", name, "\nseed: 11\n",
        "model: {config: {vocab_size: 320, hidden_size: 32, intermediate_size: 48, "
        "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
        "max_position_embeddings: 128}}\n",
        "tokenizer: ", data_->tokenizer.string(), "\n",
        "data: {manifest: ", data_->manifest.string(), ", validation_fraction: 0.1}\n",
        "curriculum:\n", "  - {name: short, seq_len: 32, tokens: 2560, micro_batch: 2}\n",
        "  - {name: long, seq_len: 64, tokens: 2048, micro_batch: 1, rope_theta: 100000}\n",
        "optimizer: {lr: 1e-2, min_lr: 1e-3, warmup_steps: 2}\n", "batch: {global_tokens: 256}\n",
        "checkpoint: {every_steps: 2, keep_last: 2}\n", "eval: {every_steps: 4, batches: 2}\n",
        world.empty() ? "" : absl::StrCat("world: {", world, "}\n"));
  }
  fs::path WriteSpec(const std::string& name, const std::string& world) {
    const fs::path path = dir_ / (name + ".yaml");
    std::ofstream(path) << SpecText(name, world);
    return path;
  }
  static std::string World(int min_workers, int max_workers, double regroup_seconds = 30,
                           int max_restarts = 5) {
    return absl::StrCat("min_workers: ", min_workers, ", max_workers: ", max_workers,
                        ", regroup_seconds: ", regroup_seconds, ", max_restarts: ", max_restarts);
  }

  // `qtrain train` of the test job (one process, one rank), once per test binary: the bytes and
  // the per-step records every service run must reproduce.
  struct Reference {
    std::string model, config;
    std::vector<json> steps;
  };
  static const Reference& LocalTraining() {
    if (reference_ == nullptr) {
      const fs::path run = *root_ / "reference";
      std::ofstream(*root_ / "reference.yaml") << SpecText("reference", "");
      testing_cli::CliOptions options;
      options.env = {"OMP_NUM_THREADS=1"};
      options.address_space_bytes = 4ull << 30;
      options.timeout_seconds = 120;
      const testing_cli::CliResult trained =
          testing_cli::RunCli({testing_cli::QtrainBinary(), "train",
                               (*root_ / "reference.yaml").string(), "--run-dir", run.string()},
                              *root_ / "reference.log", options);
      EXPECT_EQ(trained.exit_code, 0) << trained;
      reference_ = new Reference{Hash(run / "final" / "model.safetensors"),
                                 Hash(run / "final" / "config.json"), StepRecords(run)};
      EXPECT_EQ(reference_->steps.size(), static_cast<size_t>(kTotalSteps));
    }
    return *reference_;
  }
  static void ExpectSameAsLocalTraining(const std::string& run_directory) {
    const Reference& reference = LocalTraining();
    ASSERT_NE(reference.model, "missing");
    const fs::path final_dir = fs::path(run_directory) / "final";
    EXPECT_EQ(Hash(final_dir / "model.safetensors"), reference.model) << final_dir;
    EXPECT_EQ(Hash(final_dir / "config.json"), reference.config) << final_dir;
    const std::vector<json> steps = StepRecords(run_directory);
    EXPECT_EQ(steps.size(), reference.steps.size()) << run_directory;
    for (size_t i = 0; i < std::min(steps.size(), reference.steps.size()); ++i) {
      EXPECT_EQ(steps[i].dump(), reference.steps[i].dump())
          << "metrics.jsonl line " << i + 1 << " of " << run_directory;
    }
  }

  void StartCoordinator(double lease_seconds, const std::string& listen_host = "127.0.0.1",
                        const std::vector<std::string>& extra_flags = {}) {
    testing_service::CoordinatorOptions options;
    options.state_dir = dir_ / "state";
    options.run_root = dir_ / "runs";
    options.lease_seconds = lease_seconds;
    options.listen_host = listen_host;
    options.extra_flags = extra_flags;
    options.log_dir = dir_ / "logs";
    auto coordinator = Coordinator::Start(options);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    client_ = std::make_unique<Client>(coordinator_->address(), dir_ / "logs");
  }

  // Starts a worker and waits until it is registered; its id is ids_[name].
  Worker* StartWorker(const std::string& name, int step_delay_ms,
                      int collective_timeout_seconds = kCollectiveTimeoutSeconds,
                      const WorkerPlace& place = {}) {
    testing_service::WorkerOptions options;
    options.coordinator = place.coordinator.empty() ? coordinator_->address() : place.coordinator;
    options.work_dir = dir_ / "workers" / name;
    options.name = name;
    options.threads = 1;
    options.env = {"OMP_NUM_THREADS=1", absl::StrCat("QTRAIN_TEST_STEP_DELAY_MS=", step_delay_ms)};
    options.extra_flags = {"--peer-host", place.peer_host, "--collective-timeout-seconds",
                           std::to_string(collective_timeout_seconds)};
    options.extra_flags.insert(options.extra_flags.end(), place.extra_flags.begin(),
                               place.extra_flags.end());
    options.command_prefix = place.command_prefix;
    options.log = dir_ / "logs" / (name + ".log");
    auto worker = Worker::Start(options);
    EXPECT_TRUE(worker.ok()) << worker.status();
    if (!worker.ok()) return nullptr;
    absl::StatusOr<std::string> id = (*worker)->WaitForId(absl::Seconds(20));
    EXPECT_TRUE(id.ok()) << id.status();
    if (!id.ok()) return nullptr;
    ids_[name] = *id;
    workers_.push_back(*std::move(worker));
    return workers_.back().get();
  }
  std::string ResourceName(const Worker* worker) {
    return "workers/" + ids_[worker->options().name];
  }
  // The started worker whose resource name is `name`.
  Worker* ByName(const std::string& name) {
    for (const auto& worker : workers_) {
      if (ResourceName(worker.get()) == name) return worker.get();
    }
    return nullptr;
  }

  absl::StatusOr<json> Submit(const fs::path& spec, const std::string& request_id) {
    return client_->Json({"submit", spec.string(), "--request-id", request_id});
  }

  // What polling saw of a job: each round's workers and the stages it was seen training.
  struct RoundSeen {
    std::vector<std::string> workers;
    std::set<int64_t> stages;
    absl::Time first_seen;
  };
  void Record(const std::string& id, const json& job) {
    if (JobState(job) != "JOB_STATE_RUNNING") return;
    const int64_t round = JsonInt(job, "round");
    auto [it, inserted] = rounds_[id].try_emplace(round);
    if (inserted) it->second.first_seen = absl::Now();
    it->second.workers = JobWorkers(job);
    it->second.stages.insert(ProgressStage(job));
  }
  absl::StatusOr<json> WaitForJob(const std::string& id,
                                  const std::function<bool(const json&)>& done,
                                  absl::Duration timeout = kJobTimeout) {
    return testing_service::WaitForJob(
        *client_, id,
        [&](const json& job) {
          Record(id, job);
          return done(job);
        },
        timeout);
  }
  absl::StatusOr<json> WaitForEnd(const std::string& id) {
    return WaitForJob(id, [](const json& j) { return testing_service::IsTerminal(JobState(j)); });
  }
  // The job ended SUCCEEDED with the bytes of `qtrain train`.
  void ExpectSucceededLikeLocalTraining(const absl::StatusOr<json>& done) {
    ASSERT_OK(done);
    ASSERT_EQ(JobState(*done), "JOB_STATE_SUCCEEDED") << done->dump();
    EXPECT_EQ(ProgressStep(*done), kTotalSteps) << done->dump();
    ExpectSameAsLocalTraining(JsonString(*done, "run_directory"));
  }

  // `watch JOB -o json` of a finished job: every event.
  std::vector<json> Events(const std::string& job) {
    const CliOutput watched = client_->Run({"watch", job, "-o", "json"}, 30);
    EXPECT_FALSE(watched.result.timed_out) << watched.Describe();
    std::vector<json> events;
    for (const absl::string_view line : absl::StrSplit(watched.out, '\n', absl::SkipEmpty())) {
      json event = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!event.is_discarded()) events.push_back(std::move(event));
    }
    return events;
  }
  static std::vector<json> OfKind(const std::vector<json>& events, const std::string& kind) {
    std::vector<json> found;
    for (const json& e : events) {
      if (e.contains(kind)) found.push_back(e[kind]);
    }
    return found;
  }

  // The group formations of a job, from its events: each SCHEDULING state reads "round R: K
  // workers, stage S from step T".
  struct Formation {
    int64_t round = 0, workers = 0, stage = 0, step = 0;
  };
  static std::vector<Formation> Formations(const std::vector<json>& events) {
    static const std::regex kPattern(R"(round (\d+): (\d+) workers?, stage (\d+) from step (\d+))");
    std::vector<Formation> formations;
    for (const json& change : OfKind(events, "state_changed")) {
      std::smatch m;
      const std::string message = JsonString(change, "message");
      if (JsonString(change, "to") != "JOB_STATE_SCHEDULING" ||
          !std::regex_search(message, m, kPattern)) {
        continue;
      }
      formations.push_back(
          {std::stoll(m[1]), std::stoll(m[2]), std::stoll(m[3]), std::stoll(m[4])});
    }
    return formations;
  }
  static std::string Describe(const std::vector<Formation>& formations) {
    std::string text;
    for (const Formation& f : formations) {
      absl::StrAppend(&text, "[round ", f.round, ": ", f.workers, " workers, stage ", f.stage,
                      " from step ", f.step, "] ");
    }
    return text;
  }

  // Every training child of the started workers.
  std::vector<ProcessId> TrainingChildren() {
    std::vector<ProcessId> all;
    for (const auto& worker : workers_) {
      for (const ProcessId& child : worker->TrainingChildren()) all.push_back(child);
    }
    return all;
  }
  static bool AllGone(const std::vector<ProcessId>& processes) {
    return std::none_of(processes.begin(), processes.end(), IsAlive);
  }
  // The end of a test: no training child left once the job ended; the daemons then killed, and
  // no process of the test left but the coordinator.
  void ExpectNothingLeft() {
    EXPECT_TRUE(WaitFor([&] { return TrainingChildren().empty(); }, absl::Seconds(10)))
        << "a training child still runs after the job ended";
    const std::vector<ProcessId> children = TrainingChildren();
    for (const auto& worker : workers_) worker->Kill();
    EXPECT_TRUE(WaitFor([&] { return AllGone(children); }, absl::Seconds(5)));
    std::vector<pid_t> left;
    for (const ProcessId& p : testing_service::ChildrenOf(::getpid())) {
      if (p.pid != coordinator_->pid()) left.push_back(p.pid);
    }
    EXPECT_THAT(left, ::testing::IsEmpty()) << "processes of the test still run";
  }

  // SIGSTOPs (or SIGCONTs) a worker's training children, then the daemon (the reverse for
  // SIGCONT), so that neither sees the other stop.
  static void SignalWorkerTree(Worker* worker, const std::vector<ProcessId>& children, int sig) {
    if (sig == SIGCONT) worker->Signal(sig);
    for (const ProcessId& child : children) {
      if (IsAlive(child)) ::kill(child.pid, sig);
    }
    if (sig != SIGCONT) worker->Signal(sig);
  }

  // Waits until the round `round` of job `id` is no more (aborted: the job restarts or runs a
  // later round); the time it took from `since`.
  absl::StatusOr<absl::Duration> WaitForRoundAborted(const std::string& id, int64_t round,
                                                     absl::Time since, absl::Duration timeout) {
    absl::StatusOr<json> job = WaitForJob(
        id,
        [&](const json& j) {
          return JsonInt(j, "round") > round || JobState(j) == "JOB_STATE_RESTARTING" ||
                 testing_service::IsTerminal(JobState(j));
        },
        timeout);
    if (!job.ok()) return job.status();
    if (testing_service::IsTerminal(JobState(*job))) {
      return absl::FailedPreconditionError(
          absl::StrCat("the job ended instead of restarting: ", job->dump()));
    }
    return absl::Now() - since;
  }

  static fs::path* root_;
  static testing_cli::TrainingData* data_;
  static Reference* reference_;
  fs::path dir_;
  std::unique_ptr<testing_service::Watchdog> watchdog_;
  std::unique_ptr<NetworkLab> lab_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<Client> client_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::map<std::string, std::string> ids_;                      // worker --name -> worker id
  std::map<std::string, std::map<int64_t, RoundSeen>> rounds_;  // job -> round -> seen
};

fs::path* DataParallelTest::root_ = nullptr;
testing_cli::TrainingData* DataParallelTest::data_ = nullptr;
DataParallelTest::Reference* DataParallelTest::reference_ = nullptr;

TEST_F(DataParallelTest, OneTwoAndFourWorkersEndWithTheSameBytes) {
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(/*lease_seconds=*/10));
  // Seven workers: the three jobs train at once, on 1, 2 and 4 ranks.
  for (int i = 0; i < 7; ++i) {
    ASSERT_NE(StartWorker(absl::StrCat("w", i), /*step_delay_ms=*/0), nullptr);
  }
  const std::vector<int> world_sizes = {4, 2, 1};
  std::map<int, std::string> jobs;
  for (const int w : world_sizes) {
    absl::StatusOr<json> submitted =
        Submit(WriteSpec(absl::StrCat("w", w), World(w, w)), absl::StrCat("w", w, "-1"));
    ASSERT_OK(submitted);
    jobs[w] = JobId(*submitted);
  }
  LocalTraining();  // meanwhile
  for (const int w : world_sizes) {
    SCOPED_TRACE(absl::StrCat(w, " workers"));
    absl::StatusOr<json> done = WaitForEnd(jobs[w]);
    ExpectSucceededLikeLocalTraining(done);
    if (!done.ok() || JobState(*done) != "JOB_STATE_SUCCEEDED") continue;  // the next one
    EXPECT_EQ(JsonInt(*done, "restarts"), 0) << done->dump();
    // Every rank wrote its optimizer shard of each checkpoint: the last one and each stage's
    // last one are kept.
    const std::string run = JsonString(*done, "run_directory");
    for (const int64_t step : {kStage0End, kTotalSteps}) {
      for (int rank = 0; rank < w; ++rank) {
        EXPECT_TRUE(fs::exists(ShardFile(CheckpointDir(run, step), rank, w)))
            << ShardFile(CheckpointDir(run, step), rank, w);
      }
      EXPECT_EQ(OptimizerFiles(CheckpointDir(run, step)), w) << CheckpointDir(run, step);
    }
    for (const auto& [round, seen] : rounds_[jobs[w]]) {
      EXPECT_EQ(seen.workers.size(), static_cast<size_t>(w)) << "round " << round;
    }
    const std::vector<Formation> formations = Formations(Events(jobs[w]));
    EXPECT_FALSE(formations.empty());
    for (const Formation& f : formations) {
      EXPECT_EQ(f.workers, w) << Describe(formations);
    }
  }
  ExpectNothingLeft();
}

TEST_F(DataParallelTest, KilledRankIsReplacedByAnIdleWorker) {
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(/*lease_seconds=*/2));
  for (const char* name : {"alpha", "beta", "gamma"}) {
    ASSERT_NE(StartWorker(name, /*step_delay_ms=*/250), nullptr);
  }
  absl::StatusOr<json> submitted = Submit(WriteSpec("replaced", World(2, 2)), "replaced-1");
  ASSERT_OK(submitted);
  const std::string id = JobId(*submitted);
  absl::StatusOr<json> mid = WaitForJob(id, MidStageZero(2, kStage0End - 2));
  ASSERT_OK(mid);
  const std::vector<std::string> group = JobWorkers(*mid);
  const int64_t round = JsonInt(*mid, "round");
  const int64_t committed = CheckpointStep(JsonString(*mid, "latest_checkpoint"));
  Worker* killed = ByName(group[1]);
  ASSERT_NE(killed, nullptr) << mid->dump();
  std::string spare;
  for (const auto& worker : workers_) {
    if (std::find(group.begin(), group.end(), ResourceName(worker.get())) == group.end()) {
      spare = ResourceName(worker.get());
    }
  }
  const std::vector<ProcessId> children = killed->TrainingChildren();
  ASSERT_EQ(children.size(), 1u);
  killed->Kill();  // the child and the daemon, SIGKILL
  const absl::Time kill_time = absl::Now();

  absl::StatusOr<absl::Duration> aborted =
      WaitForRoundAborted(id, round, kill_time, absl::Seconds(20));
  ASSERT_OK(aborted);
  absl::StatusOr<json> done = WaitForEnd(id);
  ASSERT_NO_FATAL_FAILURE(ExpectSucceededLikeLocalTraining(done));
  EXPECT_GE(JsonInt(*done, "restarts"), 1) << done->dump();
  // A later round of two: the survivor and the spare.
  bool replaced = false;
  for (const auto& [r, seen] : rounds_[id]) {
    if (r <= round) continue;
    EXPECT_EQ(seen.workers.size(), 2u) << "round " << r;
    EXPECT_THAT(seen.workers, ::testing::Not(::testing::Contains(group[1]))) << "round " << r;
    replaced |= std::count(seen.workers.begin(), seen.workers.end(), spare) == 1;
  }
  EXPECT_TRUE(replaced) << "no round with the spare " << spare << " was seen";
  const std::vector<json> events = Events(id);
  const std::vector<Formation> formations = Formations(events);
  EXPECT_GE(formations.size(), 2u) << Describe(formations);
  for (const Formation& f : formations) EXPECT_EQ(f.workers, 2) << Describe(formations);
  const std::vector<json> restarted = OfKind(events, "restarted");
  ASSERT_FALSE(restarted.empty());
  EXPECT_GE(CheckpointStep(JsonString(restarted[0], "resume_checkpoint")), committed)
      << restarted[0].dump();
  EXPECT_FALSE(JsonString(restarted[0], "reason").empty()) << restarted[0].dump();
  ExpectNothingLeft();
}

TEST_F(DataParallelTest, LostRankWithoutReplacementContinuesOnOneAndGrowsBack) {
  constexpr double kRegroupSeconds = 2;
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(/*lease_seconds=*/2));
  constexpr int kDelayMs = 300;
  for (const char* name : {"alpha", "beta"}) ASSERT_NE(StartWorker(name, kDelayMs), nullptr);
  absl::StatusOr<json> submitted =
      Submit(WriteSpec("shrunk", World(1, 2, kRegroupSeconds)), "shrunk-1");
  ASSERT_OK(submitted);
  const std::string id = JobId(*submitted);
  absl::StatusOr<json> mid = WaitForJob(id, MidStageZero(2, 5));
  ASSERT_OK(mid);
  const std::vector<std::string> group = JobWorkers(*mid);
  const int64_t round = JsonInt(*mid, "round");
  Worker* killed = ByName(group[0]);  // rank 0: the one that writes the run directory
  ASSERT_NE(killed, nullptr) << mid->dump();
  killed->Kill();
  const absl::Time kill_time = absl::Now();

  // No idle worker: after regroup_seconds it goes on with the one it has.
  absl::StatusOr<json> shrunk = WaitForJob(
      id,
      [&](const json& j) {
        return JobState(j) == "JOB_STATE_RUNNING" && JsonInt(j, "round") > round &&
               JobWorkers(j).size() == 1;
      },
      absl::Seconds(30));
  ASSERT_OK(shrunk);
  EXPECT_GE(absl::Now() - kill_time, absl::Seconds(kRegroupSeconds))
      << "formed on fewer workers before regroup_seconds passed";
  EXPECT_EQ(JobWorkers(*shrunk)[0], group[1]);
  ASSERT_EQ(ProgressStage(*shrunk), 0)
      << "too late to see it grow at the stage boundary: " << shrunk->dump();

  // A worker comes up: not taken mid-stage, but at the next stage's round.
  Worker* added = StartWorker("gamma", kDelayMs);
  ASSERT_NE(added, nullptr);
  absl::StatusOr<json> grown = WaitForJob(id, [&](const json& j) {
    return JobState(j) == "JOB_STATE_RUNNING" && ProgressStage(j) == 1 && JobWorkers(j).size() == 2;
  });
  ASSERT_OK(grown);
  EXPECT_THAT(JobWorkers(*grown), ::testing::Contains(ResourceName(added)));

  absl::StatusOr<json> done = WaitForEnd(id);
  ASSERT_NO_FATAL_FAILURE(ExpectSucceededLikeLocalTraining(done));
  // The formations the events record (the first and each restart; a stage's next round is
  // formed without one): two workers, then one, resumed in stage 0.
  const std::vector<Formation> formations = Formations(Events(id));
  ASSERT_GE(formations.size(), 2u) << Describe(formations);
  EXPECT_EQ(formations.front().workers, 2) << Describe(formations);
  for (size_t i = 1; i < formations.size(); ++i) {
    EXPECT_EQ(formations[i].workers, 1) << Describe(formations);
    EXPECT_EQ(formations[i].stage, 0) << Describe(formations);
  }
  // Stage 0's last checkpoint was written by one rank, the job's last one by two.
  const std::string run = JsonString(*done, "run_directory");
  EXPECT_TRUE(fs::exists(ShardFile(CheckpointDir(run, kStage0End), 0, 1)));
  EXPECT_TRUE(fs::exists(ShardFile(CheckpointDir(run, kTotalSteps), 0, 2)));
  EXPECT_TRUE(fs::exists(ShardFile(CheckpointDir(run, kTotalSteps), 1, 2)));
  for (const auto& [r, seen] : rounds_[id]) {
    if (seen.workers.size() == 1) {
      EXPECT_EQ(*seen.stages.rbegin(), 0) << "round " << r << " of one worker ran stage 1";
    }
  }
  ExpectNothingLeft();
}

TEST_F(DataParallelTest, StoppedRankFailsTheCollectiveWithinItsTimeout) {
  // A lease far longer than the collective timeout: only the collective can notice in time.
  constexpr double kLeaseSeconds = 30;
  constexpr int kTimeoutSeconds = 3;
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(kLeaseSeconds));
  for (const char* name : {"alpha", "beta"}) {
    ASSERT_NE(StartWorker(name, /*step_delay_ms=*/200, kTimeoutSeconds), nullptr);
  }
  absl::StatusOr<json> submitted = Submit(
      WriteSpec("stopped", World(1, 2, /*regroup_seconds=*/2, /*max_restarts=*/10)), "stopped-1");
  ASSERT_OK(submitted);
  const std::string id = JobId(*submitted);
  absl::StatusOr<json> mid = WaitForJob(id, MidStageZero(2, kStage0End - 2));
  ASSERT_OK(mid);
  const std::vector<std::string> group = JobWorkers(*mid);
  const int64_t round = JsonInt(*mid, "round");
  Worker* stopped = ByName(group[1]);
  Worker* healthy = ByName(group[0]);
  ASSERT_TRUE(stopped != nullptr && healthy != nullptr) << mid->dump();
  const std::vector<ProcessId> stopped_children = stopped->TrainingChildren();
  const std::vector<ProcessId> healthy_children = healthy->TrainingChildren();
  ASSERT_EQ(stopped_children.size(), 1u);
  ASSERT_EQ(healthy_children.size(), 1u);
  SignalWorkerTree(stopped, stopped_children, SIGSTOP);
  const absl::Time stop_time = absl::Now();

  // Rank 0 blocks in its next collective and gives up after the timeout; its child ends and
  // the round is aborted, long before the stopped worker's lease runs out.
  EXPECT_TRUE(WaitFor([&] { return AllGone(healthy_children); }, absl::Seconds(15)))
      << "rank 0's training child still runs 15 s after its peer stopped";
  const absl::Duration child_gone = absl::Now() - stop_time;
  absl::StatusOr<absl::Duration> aborted =
      WaitForRoundAborted(id, round, stop_time, absl::Seconds(15));
  ASSERT_OK(aborted);
  EXPECT_LT(*aborted, absl::Seconds(kTimeoutSeconds + 7));
  EXPECT_LT(child_gone, absl::Seconds(kTimeoutSeconds + 7));
  std::cerr << "rank 0's child ended " << absl::FormatDuration(child_gone)
            << " after the stop; the round was aborted after " << absl::FormatDuration(*aborted)
            << "\n";

  // Back again: its stale child goes, and the job ends with the bytes of local training.
  SignalWorkerTree(stopped, stopped_children, SIGCONT);
  EXPECT_TRUE(WaitFor([&] { return AllGone(stopped_children); }, absl::Seconds(15)))
      << "the stale round's training child still runs";
  absl::StatusOr<json> done = WaitForEnd(id);
  ASSERT_NO_FATAL_FAILURE(ExpectSucceededLikeLocalTraining(done));
  EXPECT_GE(JsonInt(*done, "restarts"), 1) << done->dump();
  const std::vector<json> restarted = OfKind(Events(id), "restarted");
  ASSERT_FALSE(restarted.empty());
  // "rank 0 (workers/...) failed with DEADLINE_EXCEEDED: collective ... timed out after 3s
  // waiting for rank 1".
  EXPECT_THAT(JsonString(restarted[0], "reason"), HasSubstr("timed out")) << restarted[0].dump();
  ExpectNothingLeft();
}

TEST_F(DataParallelTest, NetworkCutBetweenRanksIsDetectedAndRecovered) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to make network namespaces (ip netns, veth pairs)";
  }
  absl::StatusOr<std::unique_ptr<NetworkLab>> lab = NetworkLab::Create(dir_ / "logs" / "ip");
  if (!lab.ok()) {
    GTEST_SKIP() << "cannot make network namespaces here: " << lab.status();
  }
  lab_ = *std::move(lab);
  constexpr double kLeaseSeconds = 30;  // longer than the detection may take
  // Not a loopback address: the coordinator requires bearer tokens.
  const fs::path user_token = dir_ / "user.token", cluster_token = dir_ / "cluster.token";
  std::ofstream(user_token) << "user-" << ::getpid() << "\n";
  std::ofstream(cluster_token) << "cluster-" << ::getpid() << "\n";
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(
      kLeaseSeconds, lab_->coordinator_host(),
      {"--auth-token-file", user_token.string(), "--cluster-token-file", cluster_token.string()}));
  client_->set_flags({"--auth-token-file", user_token.string()});
  for (int i = 0; i < 2; ++i) {
    WorkerPlace place;
    place.coordinator = coordinator_->address();
    place.extra_flags = {"--cluster-token-file", cluster_token.string()};
    place.peer_host = lab_->peer_host(i);
    place.command_prefix = lab_->exec_prefix(i);
    ASSERT_NE(
        StartWorker(absl::StrCat("ns", i), /*step_delay_ms=*/200, kCollectiveTimeoutSeconds, place),
        nullptr);
  }
  absl::StatusOr<json> submitted =
      Submit(WriteSpec("cut", World(2, 2, /*regroup_seconds=*/2, /*max_restarts=*/10)), "cut-1");
  ASSERT_OK(submitted);
  const std::string id = JobId(*submitted);
  absl::StatusOr<json> mid = WaitForJob(id, MidStageZero(2, kStage0End - 2));
  ASSERT_OK(mid);
  const int64_t round = JsonInt(*mid, "round");
  const std::vector<ProcessId> children = TrainingChildren();
  ASSERT_EQ(children.size(), 2u);
  ASSERT_OK(lab_->SetRankLink(/*up=*/false));
  const absl::Time cut_time = absl::Now();

  // Both ranks give up within the collective timeout; the round is aborted.
  absl::StatusOr<absl::Duration> aborted =
      WaitForRoundAborted(id, round, cut_time, absl::Seconds(20));
  ASSERT_OK(aborted);
  EXPECT_LT(*aborted, absl::Seconds(kCollectiveTimeoutSeconds + 8));
  EXPECT_TRUE(WaitFor([&] { return AllGone(children); }, absl::Seconds(15)))
      << "a training child of the cut round still runs";
  std::cerr << "the round was aborted " << absl::FormatDuration(*aborted) << " after the cut\n";

  // The link comes back: a new group of the two finishes the job.
  ASSERT_OK(lab_->SetRankLink(/*up=*/true));
  absl::StatusOr<json> done = WaitForEnd(id);
  ASSERT_NO_FATAL_FAILURE(ExpectSucceededLikeLocalTraining(done));
  EXPECT_GE(JsonInt(*done, "restarts"), 1) << done->dump();
  const std::vector<json> restarted = OfKind(Events(id), "restarted");
  ASSERT_FALSE(restarted.empty());
  EXPECT_THAT(JsonString(restarted[0], "reason"), ::testing::ContainsRegex("timed out|UNAVAILABLE"))
      << restarted[0].dump();
  ExpectNothingLeft();
}

}  // namespace
}  // namespace qtrain
