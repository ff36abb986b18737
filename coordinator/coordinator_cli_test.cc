// The qtrain-coordinator binary: flags, the address file, the state-dir lock, SIGTERM.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cli_process.h"

namespace {

using ::qtrain::testing_cli::RunCli;
using ::testing::HasSubstr;

std::string Binary() {
  const char* dir = std::getenv("QTRAIN_BIN_DIR");
  return std::string(dir == nullptr ? "build/bin" : dir) + "/qtrain-coordinator";
}

std::filesystem::path TestDir(const std::string& name) {
  const auto dir = std::filesystem::path(::testing::TempDir()) / ("coord_cli_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// A coordinator running in the background, killed when the test ends however it ends.
class Running {
 public:
  explicit Running(const std::vector<std::string>& args, const std::filesystem::path& log) {
    pid_ = fork();
    if (pid_ == 0) {
      std::freopen(log.c_str(), "w", stderr);
      std::vector<char*> argv;
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~Running() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  // The exit status after SIGTERM (-1 when it did not end within 10 s).
  int Terminate() {
    kill(pid_, SIGTERM);
    for (int i = 0; i < 1000; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return -1;
  }

 private:
  pid_t pid_ = -1;
};

bool WaitForFile(const std::filesystem::path& path) {
  for (int i = 0; i < 1000; ++i) {
    if (std::filesystem::exists(path)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

TEST(CoordinatorCliTest, ServesWritesTheAddressAndStopsOnSigterm) {
  const auto dir = TestDir("serve");
  const auto address = dir / "address";
  Running coordinator(
      {Binary(), "--listen", "127.0.0.1:0", "--address-file", address.string(), "--state-dir",
       (dir / "state").string(), "--run-root", (dir / "runs").string(), "--lease-seconds", "2.5"},
      dir / "log");
  ASSERT_TRUE(WaitForFile(address));
  std::ifstream in(address);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_THAT(text.str(), ::testing::MatchesRegex("127\\.0\\.0\\.1:[0-9]+\n"));
  EXPECT_TRUE(std::filesystem::is_directory(dir / "runs"));
  EXPECT_TRUE(std::filesystem::exists(dir / "state" / "coordinator.db"));
  // A second coordinator on the same state dir refuses, naming the first.
  auto second = RunCli({Binary(), "--listen", "127.0.0.1:0", "--state-dir",
                        (dir / "state").string(), "--run-root", (dir / "runs").string()},
                       dir / "second.log", {.timeout_seconds = 30});
  EXPECT_CLEAN_FAILURE(second, "process " + std::to_string(coordinator.pid()));
  EXPECT_EQ(coordinator.Terminate(), 0);
}

TEST(CoordinatorCliTest, RefusesBadFlags) {
  const auto dir = TestDir("flags");
  const std::string state = (dir / "state").string(), runs = (dir / "runs").string();
  const qtrain::testing_cli::CliOptions options{.timeout_seconds = 30};
  EXPECT_CLEAN_FAILURE(RunCli({Binary(), "--run-root", runs}, dir / "1.log", options),
                       "--state-dir");
  EXPECT_CLEAN_FAILURE(
      RunCli({Binary(), "--state-dir", state, "--run-root", runs, "--lease-seconds", "0"},
             dir / "2.log", options),
      "--lease-seconds");
  EXPECT_CLEAN_FAILURE(
      RunCli({Binary(), "--state-dir", state, "--run-root", runs, "--settle-seconds", "-1"},
             dir / "3.log", options),
      "--settle-seconds");
  EXPECT_CLEAN_FAILURE(
      RunCli({Binary(), "--state-dir", state, "--run-root", runs, "--listen", "0.0.0.0:0"},
             dir / "4.log", options),
      "--auth-token-file");
  EXPECT_CLEAN_FAILURE(
      RunCli({Binary(), "--state-dir", state, "--run-root", runs, "--listen", "nonsense"},
             dir / "5.log", options),
      "nonsense");
  EXPECT_CLEAN_FAILURE(
      RunCli({Binary(), "--state-dir", state, "--run-root", runs, "--auth-token-file",
              (dir / "missing").string(), "--cluster-token-file", (dir / "missing").string()},
             dir / "6.log", options),
      "missing");
}

}  // namespace
