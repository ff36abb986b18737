// The qtrain-worker binary: its flags, the work-directory lock, and signals, against an
// in-process fake coordinator.
#include <signal.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/rpc_server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cli_process.h"
#include "worker/daemon/child_process.h"
#include "worker/daemon/fake_coordinator_test_util.h"

namespace qtrain::worker {
namespace {

using ::qtrain::testing_cli::CliResult;
using ::qtrain::testing_cli::RunCli;
using ::testing::HasSubstr;

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
                                            std::vector<std::string> env = {}) {
    std::vector<std::string> argv = {
        "/bin/sh",      "-c",         "exec \"$0\" \"$@\" 2>>\"$DAEMON_LOG\"",
        WorkerBinary(), "--work-dir", work_dir};
    if (env.empty()) argv.insert(argv.end(), {"--coordinator", server_->address()});
    env.push_back("DAEMON_LOG=" + log);
    absl::StatusOr<std::unique_ptr<ChildProcess>> child =
        ChildProcess::Spawn({.argv = argv, .env = env});
    EXPECT_TRUE(child.ok()) << child.status();
    return child.ok() ? std::move(*child) : nullptr;
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
  EXPECT_CLEAN_FAILURE(Run({"train-stage"}), "--assignment");
  EXPECT_CLEAN_FAILURE(Run({"train-stage", "--assignment", "a.json", "--parent-timeout-ms", "0"}),
                       "--parent-timeout-ms");
}

TEST_F(WorkerCliTest, RefusesCudaWithoutCuda) {
  const CliResult r =
      Run({"--coordinator", server_->address(), "--work-dir", root_ + "/w", "--device", "cuda"});
#ifndef QTRAIN_WORKER_HAVE_CUDA
  EXPECT_CLEAN_FAILURE(r, "built without CUDA");
  EXPECT_EQ(r.exit_code, 1);
#endif
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

}  // namespace
}  // namespace qtrain::worker
