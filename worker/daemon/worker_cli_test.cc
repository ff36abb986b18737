// The qtrain-worker binary: its flags, the work-directory lock, and signals, against an
// in-process fake coordinator.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/job_spec.h"
#include "common/rpc_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cli_process.h"
#include "tests/integration/http_client.h"
#include "worker/daemon/child_process.h"
#include "worker/daemon/fake_coordinator_test_util.h"
#include "worker/train/shard_assignment.h"
#include "worker/train/test_dataset.h"
#include "worker/train/training_backend.h"

namespace qtrain::worker {
namespace {

using ::qtrain::testing_cli::CliResult;
using ::qtrain::testing_cli::RunCli;
using ::qtrain::testing_http::HttpGet;
using ::qtrain::testing_http::HttpRequest;
using ::qtrain::testing_http::HttpResponse;
using ::qtrain::testing_http::RawStatusLine;
using ::testing::HasSubstr;
using ::testing::Not;

std::string WorkerBinary() {
  const char* dir = std::getenv("QTRAIN_BIN_DIR");
  return std::string(dir != nullptr ? dir : "build/bin") + "/qtrain-worker";
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The processes whose parent is `parent` (any of its threads).
std::vector<int> ChildrenOf(int parent) {
  std::vector<int> out;
  std::error_code ec;
  for (const auto& task :
       std::filesystem::directory_iterator("/proc/" + std::to_string(parent) + "/task", ec)) {
    for (absl::string_view pid :
         absl::StrSplit(ReadFile(task.path().string() + "/children"), ' ', absl::SkipEmpty())) {
      int n;
      if (absl::SimpleAtoi(pid, &n)) out.push_back(n);
    }
  }
  return out;
}

bool ProcessGone(int pid) {
  const std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  const size_t paren = stat.rfind(')');
  return stat.empty() ||
         (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z');
}

// The address in `path` once the process wrote it ("" after 20 s).
std::string WaitForAddressFile(const std::string& path) {
  for (const absl::Time end = absl::Now() + absl::Seconds(20); absl::Now() < end;
       absl::SleepFor(absl::Milliseconds(20))) {
    const std::string text = ReadFile(path);
    if (!text.empty() && text.back() == '\n') return text.substr(0, text.size() - 1);
  }
  return "";
}

// The body of GET /metrics ("" when it fails).
std::string Scrape(const std::string& address) {
  absl::StatusOr<HttpResponse> response = HttpGet(address, "/metrics", absl::Seconds(5));
  if (!response.ok() || response->status != 200) return "";
  return response->body;
}

// Scrapes until `pred` holds for the body (false after `timeout`).
bool WaitForScrape(const std::string& address, const std::function<bool(const std::string&)>& pred,
                   absl::Duration timeout = absl::Seconds(30)) {
  for (const absl::Time end = absl::Now() + timeout; absl::Now() < end;
       absl::SleepFor(absl::Milliseconds(50))) {
    if (pred(Scrape(address))) return true;
  }
  return false;
}

class WorkerCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "/" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(root_);
    std::filesystem::create_directories(root_);
    absl::StatusOr<std::unique_ptr<RpcServer>> server =
        RpcServer::Start({.listen = "127.0.0.1:0"}, {&fake_});
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
  }
  void TearDown() override { server_->Shutdown(absl::Milliseconds(100)); }

  CliResult Run(std::vector<std::string> args, std::vector<std::string> env = {}) {
    args.insert(args.begin(), WorkerBinary());
    return RunCli(args, root_ + "/run.log", {.env = std::move(env), .timeout_seconds = 30});
  }

  // Starts the daemon in the background, its stderr in `log`.
  std::unique_ptr<ChildProcess> StartDaemon(const std::string& work_dir, const std::string& log,
                                            std::vector<std::string> env = {},
                                            const std::vector<std::string>& flags = {}) {
    std::vector<std::string> argv = {
        "/bin/sh",      "-c",         "exec \"$0\" \"$@\" 2>>\"$DAEMON_LOG\"",
        WorkerBinary(), "--work-dir", work_dir};
    argv.insert(argv.end(), flags.begin(), flags.end());
    if (env.empty()) argv.insert(argv.end(), {"--coordinator", server_->address()});
    env.push_back("DAEMON_LOG=" + log);
    absl::StatusOr<std::unique_ptr<ChildProcess>> child =
        ChildProcess::Spawn({.argv = argv, .env = env});
    EXPECT_TRUE(child.ok()) << child.status();
    return child.ok() ? std::move(*child) : nullptr;
  }

  // A real tiny job (train/test_dataset.h): stage 0 is steps [0, 4), checkpoints every 2.
  v1::Directive RealAssignment() {
    auto data = train::testing::WriteTestDataset(root_ + "/data", 70000, 1000);
    EXPECT_TRUE(data.ok()) << data.status();
    auto spec = ParseJobSpec(train::testing::TestJobSpec(*data), "spec.yaml");
    EXPECT_TRUE(spec.ok()) << spec.status();
    v1::Directive d;
    v1::Assignment* a = d.mutable_assign();
    a->set_job("jobs/stage-test-1");
    *a->mutable_spec() = *spec;
    a->set_round(1);
    a->set_world_size(1);
    a->set_end_step(4);
    a->set_backend(v1::COLLECTIVE_BACKEND_GLOO);
    a->set_run_directory(root_ + "/run");
    a->set_checkpoint_directory(root_ + "/run/checkpoints");
    auto assigned = train::PlanShardAssignment(*spec, 0, 0, 4, 0, 1);
    EXPECT_TRUE(assigned.ok()) << assigned.status();
    if (assigned.ok()) *a->mutable_data() = *assigned;
    return d;
  }

  // The daemon's training child, once it has one.
  int WaitForTrainingChild(int daemon) {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      std::vector<int> children = ChildrenOf(daemon);
      if (!children.empty()) return children[0];
      absl::SleepFor(absl::Milliseconds(10));
    }
    return 0;
  }

  std::string root_;
  FakeCoordinator fake_;
  std::unique_ptr<RpcServer> server_;
};

TEST_F(WorkerCliTest, RefusesBadFlags) {
  const std::string dir = root_ + "/w";
  EXPECT_CLEAN_FAILURE(Run({"--work-dir", dir}, {"QTRAIN_COORDINATOR="}), "--coordinator");
  EXPECT_CLEAN_FAILURE(Run({"--coordinator", "127.0.0.1:1"}), "--work-dir");
  EXPECT_CLEAN_FAILURE(Run({"--coordinator", "127.0.0.1:1", "--work-dir", dir, "--device", "gpu"}),
                       "--device");
  EXPECT_CLEAN_FAILURE(Run({"--coordinator", "127.0.0.1:1", "--work-dir", dir, "--threads", "-1"}),
                       "--threads");
  EXPECT_CLEAN_FAILURE(
      Run({"--coordinator", "127.0.0.1:1", "--work-dir", dir, "--drain-timeout-seconds", "soon"}),
      "--drain-timeout-seconds");
  EXPECT_CLEAN_FAILURE(
      Run({"--coordinator", "127.0.0.1:1", "--work-dir", dir, "--tls-ca", root_ + "/missing.pem"}),
      "missing.pem");
  EXPECT_CLEAN_FAILURE(Run({"--coordinator", "no-port", "--work-dir", dir}), "no-port");
  EXPECT_CLEAN_FAILURE(Run({"--coordinator", "127.0.0.1:1", "--work-dir", dir, "--name", "!!"}),
                       "--name");
  EXPECT_CLEAN_FAILURE(
      Run({"--coordinator", "127.0.0.1:1", "--work-dir", dir, "--peer-host", "no such host"}),
      "--peer-host: 'no such host' is not a host name or IP address");
  EXPECT_CLEAN_FAILURE(Run({"--coordinator", "127.0.0.1:1", "--work-dir", dir, "--peer-host", ""}),
                       "--peer-host: is empty");
  for (const char* bad : {"0", "-1", "nan", "soon", "86401"}) {
    EXPECT_CLEAN_FAILURE(Run({"--coordinator", "127.0.0.1:1", "--work-dir", dir,
                              "--collective-timeout-seconds", bad}),
                         "--collective-timeout-seconds");
  }
  EXPECT_CLEAN_FAILURE(
      Run({"train-stage", "--assignment", "a.json", "--collective-timeout-ms", "0"}),
      "--collective-timeout-ms");
  EXPECT_CLEAN_FAILURE(
      Run({"train-stage", "--assignment", "a.json", "--cluster-token-file", root_ + "/none"}),
      "none");
  // Checked by the child itself (a StageError on stdout, exit 2).
  EXPECT_CLEAN_FAILURE(Run({"train-stage", "--assignment", "a.json", "--worker", "w-1"}),
                       "--worker: 'w-1' is not a worker name (workers/ID)");
  EXPECT_CLEAN_FAILURE(Run({"train-stage", "--assignment", "a.json", "--peer-host", "a;b"}),
                       "--peer-host");
  EXPECT_CLEAN_FAILURE(Run({"train-stage"}), "--assignment");
  EXPECT_CLEAN_FAILURE(Run({"train-stage", "--assignment", "a.json", "--parent-timeout-ms", "0"}),
                       "--parent-timeout-ms");
}

TEST_F(WorkerCliTest, RefusesBadMetricsFlags) {
  const std::string dir = root_ + "/w";
  for (const char* bad : {":", "host", "h:99999", "h:-1", "h:abc", "", "::1:80"}) {
    const CliResult r =
        Run({"--coordinator", "127.0.0.1:1", "--work-dir", dir, "--metrics-listen", bad});
    EXPECT_CLEAN_FAILURE(r, "--metrics-listen");
    EXPECT_EQ(r.exit_code, 2) << bad;
  }
  for (const char* bad : {"0", "-1", "nan", "inf", "abc", ""}) {
    const CliResult r =
        Run({"--coordinator", "127.0.0.1:1", "--work-dir", dir, "--peak-flops", bad});
    EXPECT_CLEAN_FAILURE(r, "--peak-flops");
    EXPECT_EQ(r.exit_code, 2) << bad;
  }
  const CliResult r = Run({"--coordinator", "127.0.0.1:1", "--work-dir", dir,
                           "--metrics-address-file", root_ + "/addr"});
  EXPECT_CLEAN_FAILURE(r, "--metrics-address-file needs --metrics-listen");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_FALSE(std::filesystem::exists(dir));  // refused before it touched anything
}

TEST_F(WorkerCliTest, ATakenMetricsPortIsAClearError) {
  // The fake coordinator's port is taken.
  const CliResult r = Run({"--coordinator", server_->address(), "--work-dir", root_ + "/w",
                           "--metrics-listen", server_->address()});
  EXPECT_CLEAN_FAILURE(r, absl::StrCat("cannot listen on ", server_->address()));
  EXPECT_EQ(r.exit_code, 1);
}

TEST_F(WorkerCliTest, ServesMetricsWithoutACoordinator) {
  const std::string address_file = root_ + "/metrics.addr";
  auto daemon = StartDaemon(root_ + "/w", root_ + "/daemon.log", {"QTRAIN_COORDINATOR=127.0.0.1:1"},
                            {"--metrics-listen", "127.0.0.1:0", "--metrics-address-file",
                             address_file, "--peak-flops", "1e12"});
  ASSERT_NE(daemon, nullptr);
  const std::string address = WaitForAddressFile(address_file);
  ASSERT_FALSE(address.empty()) << ReadFile(root_ + "/daemon.log");
  EXPECT_THAT(address, Not(HasSubstr(":0")));
  const std::string body = Scrape(address);
  EXPECT_THAT(body, HasSubstr("# TYPE qtrain_worker_up gauge"));
  EXPECT_THAT(body, HasSubstr("\nqtrain_worker_up 0\n"));
  EXPECT_THAT(body, Not(HasSubstr("job_id=")));
  for (const char* path : {"/", "/metrics/x", "/favicon.ico"}) {
    absl::StatusOr<HttpResponse> response = HttpGet(address, path);
    ASSERT_TRUE(response.ok()) << path << ": " << response.status();
    EXPECT_EQ(response->status, 404) << path;
  }
  for (const char* method : {"HEAD", "POST"}) {
    absl::StatusOr<HttpResponse> response = HttpRequest(address, method, "/metrics");
    ASSERT_TRUE(response.ok()) << method << ": " << response.status();
    EXPECT_EQ(response->status, 405) << method;
  }
  // Malformed requests get the HTTP server's own error answers; it still serves.
  EXPECT_THAT(RawStatusLine(address, "GARBAGE\r\n\r\n"), HasSubstr(" 400 "));
  EXPECT_THAT(RawStatusLine(address, "GET /metrics HTTP/9.9\r\n\r\n"), HasSubstr(" 505 "));
  EXPECT_THAT(Scrape(address), HasSubstr("qtrain_worker_up 0"));
  EXPECT_THAT(ReadFile(root_ + "/daemon.log"),
              HasSubstr(absl::StrCat("metrics on http://", address, "/metrics")));
  daemon->SignalGroup(SIGTERM);
  std::optional<ExitStatus> status = daemon->WaitFor(absl::Seconds(10));
  ASSERT_TRUE(status.has_value()) << ReadFile(root_ + "/daemon.log");
  EXPECT_TRUE(status->success()) << status->Describe() << "\n" << ReadFile(root_ + "/daemon.log");
}

TEST_F(WorkerCliTest, MetricsFollowAnAssignment) {
  const std::string address_file = root_ + "/metrics.addr";
  auto daemon =
      StartDaemon(root_ + "/w", root_ + "/daemon.log",
                  {"QTRAIN_COORDINATOR=" + server_->address(), "QTRAIN_TEST_STEP_DELAY_MS=300"},
                  {"--metrics-listen", "127.0.0.1:0", "--metrics-address-file", address_file});
  ASSERT_NE(daemon, nullptr);
  const std::string address = WaitForAddressFile(address_file);
  ASSERT_FALSE(address.empty()) << ReadFile(root_ + "/daemon.log");
  // Up once registered with a live stream.
  ASSERT_TRUE(WaitForScrape(address, [](const std::string& body) {
    return absl::StrContains(body, "\nqtrain_worker_up 1\n");
  })) << Scrape(address);

  fake_.Send(RealAssignment());
  const std::string labels = R"(job_id="stage-test-1",rank="0",stage="short")";
  ASSERT_TRUE(WaitForScrape(address,
                            [&](const std::string& body) {
                              return absl::StrContains(
                                  body,
                                  absl::StrCat("qtrain_checkpoint_seconds_count{", labels, "} 1"));
                            }))
      << Scrape(address) << ReadFile(root_ + "/daemon.log");
  const std::string during = Scrape(address);
  for (const char* name :
       {"qtrain_train_loss", "qtrain_learning_rate", "qtrain_grad_norm", "qtrain_tokens_total",
        "qtrain_tokens_per_second", "qtrain_step_seconds_count", "qtrain_compute_seconds_total",
        "qtrain_comm_seconds_total", "qtrain_data_wait_seconds_total", "qtrain_skipped_steps_total",
        "qtrain_step", "qtrain_stage", "qtrain_memory_bytes"}) {
    EXPECT_THAT(during, HasSubstr(absl::StrCat(name, "{", labels, "}"))) << name;
  }
  // A CPU without --peak-flops: no utilization.
  EXPECT_THAT(during, Not(HasSubstr("qtrain_model_flops_utilization{")));
  EXPECT_THAT(during, HasSubstr(absl::StrCat("qtrain_stage{", labels, "} 0\n")));

  ASSERT_TRUE(
      fake_.WaitFor([](FakeCoordinator& f) { return !f.completions_.empty(); }, absl::Seconds(60)))
      << ReadFile(root_ + "/daemon.log");
  fake_.Read([](FakeCoordinator& f) {
    for (const auto& commit : f.commits_) EXPECT_GT(commit.write_seconds(), 0);
    for (const auto& h : f.heartbeats_) {
      if (h.progress().step() == 0) continue;
      EXPECT_EQ(h.progress().rank_tokens(), 256);
      EXPECT_GT(h.progress().step_seconds(), 0);
      EXPECT_GT(h.progress().flops_per_token(), 0);
      EXPECT_GT(h.progress().memory_bytes(), 0);
    }
  });
  // The assignment is over: its series go, the worker stays up.
  ASSERT_TRUE(WaitForScrape(address, [](const std::string& body) {
    return absl::StrContains(body, "qtrain_worker_up 1") && !absl::StrContains(body, "job_id=");
  })) << Scrape(address);
  daemon->SignalGroup(SIGTERM);
  std::optional<ExitStatus> status = daemon->WaitFor(absl::Seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->success()) << status->Describe();
}

TEST_F(WorkerCliTest, RefusesCudaWithoutAGpu) {
  if (train::CheckTrainingDevice(v1::DEVICE_KIND_CUDA).ok()) {
    GTEST_SKIP() << "this machine has a GPU: a CUDA worker may start";
  }
  const CliResult r =
      Run({"--coordinator", server_->address(), "--work-dir", root_ + "/w", "--device", "cuda"});
  EXPECT_CLEAN_FAILURE(r, train::BuiltWithCuda() ? "--device cuda: the CUDA driver sees no GPU"
                                                 : "--device cuda: this build has no CUDA backend");
  EXPECT_EQ(r.exit_code, 1);
}

TEST_F(WorkerCliTest, RegistersAndExitsOnSigtermWhenIdle) {
  const std::string work = root_ + "/w";
  auto daemon = StartDaemon(work, root_ + "/daemon.log");
  ASSERT_NE(daemon, nullptr);
  ASSERT_TRUE(fake_.WaitFor([](FakeCoordinator& f) { return f.heartbeats_.size() >= 2; }))
      << ReadFile(root_ + "/daemon.log");
  EXPECT_EQ(ReadFile(work + "/worker_id"), "fake-1\n");

  // A second daemon on the same directory refuses, naming the first.
  const CliResult second = Run({"--coordinator", server_->address(), "--work-dir", work});
  EXPECT_CLEAN_FAILURE(second, absl::StrCat("in use by qtrain-worker process ", daemon->pid()));
  EXPECT_EQ(second.exit_code, 1);

  const absl::Time start = absl::Now();
  daemon->SignalGroup(SIGTERM);
  std::optional<ExitStatus> status = daemon->WaitFor(absl::Seconds(10));
  ASSERT_TRUE(status.has_value()) << ReadFile(root_ + "/daemon.log");
  EXPECT_TRUE(status->success()) << status->Describe() << "\n" << ReadFile(root_ + "/daemon.log");
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_THAT(ReadFile(root_ + "/daemon.log"), HasSubstr("registered as workers/fake-1"));
}

TEST_F(WorkerCliTest, TakesTheCoordinatorFromTheEnvironment) {
  auto daemon = StartDaemon(root_ + "/w", root_ + "/daemon.log",
                            {"QTRAIN_COORDINATOR=" + server_->address()});
  ASSERT_NE(daemon, nullptr);
  ASSERT_TRUE(fake_.WaitFor([](FakeCoordinator& f) { return !f.heartbeats_.empty(); }))
      << ReadFile(root_ + "/daemon.log");
  daemon->SignalGroup(SIGINT);
  std::optional<ExitStatus> status = daemon->WaitFor(absl::Seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->success()) << status->Describe();
}

TEST_F(WorkerCliTest, TrainsARealAssignment) {
  auto daemon = StartDaemon(root_ + "/w", root_ + "/daemon.log");
  ASSERT_NE(daemon, nullptr);
  fake_.Send(RealAssignment());
  ASSERT_TRUE(
      fake_.WaitFor([](FakeCoordinator& f) { return !f.completions_.empty(); }, absl::Seconds(60)))
      << ReadFile(root_ + "/daemon.log");
  fake_.Read([&](FakeCoordinator& f) {
    ASSERT_EQ(f.commits_.size(), 2u);
    EXPECT_EQ(f.commits_[0].step(), 2);
    EXPECT_EQ(f.commits_[1].step(), 4);
    EXPECT_EQ(f.commits_[1].job(), "jobs/stage-test-1");
    EXPECT_FALSE(f.commits_[1].files().empty());
    EXPECT_EQ(f.completions_[0].step(), 4);
    EXPECT_TRUE(f.failures_.empty()) << f.failures_[0].message();
    int steps = 0;
    for (const auto& h : f.heartbeats_) {
      if (h.phase() == v1::WORKER_PHASE_TRAINING && h.progress().step() > 0) ++steps;
    }
    EXPECT_GE(steps, 4);
  });
  EXPECT_TRUE(std::filesystem::exists(root_ + "/run/checkpoints/step-000000000004"));
  ASSERT_TRUE(fake_.WaitFor(
      [](FakeCoordinator& f) { return f.heartbeats_.back().phase() == v1::WORKER_PHASE_IDLE; }));
  daemon->SignalGroup(SIGTERM);
  std::optional<ExitStatus> status = daemon->WaitFor(absl::Seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->success()) << status->Describe();
}

TEST_F(WorkerCliTest, GivesItsPeerHostToTheCoordinatorAndTheChild) {
  auto daemon =
      StartDaemon(root_ + "/w", root_ + "/daemon.log",
                  {"QTRAIN_COORDINATOR=" + server_->address(), "QTRAIN_TEST_STEP_DELAY_MS=300"},
                  {"--peer-host", "127.0.0.1", "--collective-timeout-seconds", "7.5"});
  ASSERT_NE(daemon, nullptr);
  fake_.Send(RealAssignment());
  const int child = WaitForTrainingChild(daemon->pid());
  ASSERT_GT(child, 0) << ReadFile(root_ + "/daemon.log");
  // Once it has exec'd (a forked child has the daemon's command line for a moment).
  std::string cmdline;
  for (const absl::Time end = absl::Now() + absl::Seconds(10);
       cmdline.find("train-stage") == std::string::npos && absl::Now() < end;
       absl::SleepFor(absl::Milliseconds(10))) {
    cmdline = ReadFile("/proc/" + std::to_string(child) + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
  }
  EXPECT_THAT(cmdline, HasSubstr("train-stage"));
  EXPECT_THAT(cmdline, HasSubstr("--coordinator " + server_->address()));
  EXPECT_THAT(cmdline, HasSubstr("--worker workers/fake-1"));
  EXPECT_THAT(cmdline, HasSubstr("--peer-host 127.0.0.1"));
  EXPECT_THAT(cmdline, HasSubstr("--collective-timeout-ms 7500"));
  fake_.Read([](FakeCoordinator& f) {
    ASSERT_FALSE(f.registrations_.empty());
    EXPECT_EQ(f.registrations_[0].peer_host(), "127.0.0.1");
  });
  // The child accepted its flags: it trains the (one-worker) assignment to its end.
  ASSERT_TRUE(
      fake_.WaitFor([](FakeCoordinator& f) { return !f.completions_.empty(); }, absl::Seconds(60)))
      << ReadFile(root_ + "/daemon.log");
  fake_.Read([](FakeCoordinator& f) { EXPECT_TRUE(f.failures_.empty()); });
  daemon->SignalGroup(SIGTERM);
  std::optional<ExitStatus> status = daemon->WaitFor(absl::Seconds(10));
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(status->success()) << status->Describe();
}

TEST_F(WorkerCliTest, SigtermDrainsToTheNextCheckpoint) {
  auto daemon =
      StartDaemon(root_ + "/w", root_ + "/daemon.log",
                  {"QTRAIN_TEST_STEP_DELAY_MS=400", "QTRAIN_COORDINATOR=" + server_->address()});
  ASSERT_NE(daemon, nullptr);
  fake_.Send(RealAssignment());
  ASSERT_TRUE(fake_.WaitFor(
      [](FakeCoordinator& f) {
        return !f.heartbeats_.empty() && f.heartbeats_.back().progress().step() >= 1;
      },
      absl::Seconds(60)))
      << ReadFile(root_ + "/daemon.log");
  const int child = WaitForTrainingChild(daemon->pid());
  ASSERT_GT(child, 0);
  daemon->SignalGroup(SIGTERM);
  std::optional<ExitStatus> status = daemon->WaitFor(absl::Seconds(30));
  ASSERT_TRUE(status.has_value()) << ReadFile(root_ + "/daemon.log");
  EXPECT_TRUE(status->success()) << status->Describe();
  EXPECT_TRUE(ProcessGone(child));
  fake_.Read([&](FakeCoordinator& f) {
    ASSERT_EQ(f.commits_.size(), 1u) << ReadFile(root_ + "/daemon.log");
    EXPECT_EQ(f.commits_[0].step(), 2);
    ASSERT_EQ(f.failures_.size(), 1u);
    EXPECT_TRUE(f.failures_[0].drained());
    EXPECT_TRUE(f.completions_.empty());
  });
}

TEST_F(WorkerCliTest, SecondSigtermAbortsTheChild) {
  auto daemon =
      StartDaemon(root_ + "/w", root_ + "/daemon.log",
                  {"QTRAIN_TEST_STEP_DELAY_MS=5000", "QTRAIN_COORDINATOR=" + server_->address()});
  ASSERT_NE(daemon, nullptr);
  fake_.Send(RealAssignment());
  ASSERT_TRUE(fake_.WaitFor(
      [](FakeCoordinator& f) {
        return !f.heartbeats_.empty() && f.heartbeats_.back().progress().step() >= 1;
      },
      absl::Seconds(60)))
      << ReadFile(root_ + "/daemon.log");
  const int child = WaitForTrainingChild(daemon->pid());
  ASSERT_GT(child, 0);
  daemon->SignalGroup(SIGTERM);
  absl::SleepFor(absl::Milliseconds(300));
  const absl::Time start = absl::Now();
  daemon->SignalGroup(SIGTERM);
  std::optional<ExitStatus> status = daemon->WaitFor(absl::Seconds(10));
  ASSERT_TRUE(status.has_value()) << ReadFile(root_ + "/daemon.log");
  EXPECT_TRUE(status->success()) << status->Describe();
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
  EXPECT_TRUE(ProcessGone(child));
}

TEST_F(WorkerCliTest, KilledDaemonTakesItsChildAlong) {
  auto daemon =
      StartDaemon(root_ + "/w", root_ + "/daemon.log",
                  {"QTRAIN_TEST_STEP_DELAY_MS=5000", "QTRAIN_COORDINATOR=" + server_->address()});
  ASSERT_NE(daemon, nullptr);
  fake_.Send(RealAssignment());
  const int child = WaitForTrainingChild(daemon->pid());
  ASSERT_GT(child, 0);
  daemon->SignalGroup(SIGKILL);
  ASSERT_TRUE(daemon->WaitFor(absl::Seconds(10)).has_value());
  const absl::Time deadline = absl::Now() + absl::Seconds(3);
  while (!ProcessGone(child) && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_TRUE(ProcessGone(child));
}

}  // namespace
}  // namespace qtrain::worker
