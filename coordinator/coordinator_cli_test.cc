// The qtrain-coordinator binary: flags, the address file, the state-dir lock, SIGTERM, and
// the Prometheus endpoint.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
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

#include "absl/strings/str_cat.h"
#include "common/rpc_channel.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "qtrain/v1/jobs.grpc.pb.h"
#include "tests/integration/cli_process.h"
#include "tests/integration/http_client.h"

namespace {

using ::qtrain::testing_cli::RunCli;
using ::testing::HasSubstr;
using ::testing::Not;

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

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// "HOST:PORT" of an address file, without its newline.
std::string ReadAddress(const std::filesystem::path& path) {
  std::string address = ReadFile(path);
  while (!address.empty() && address.back() == '\n') address.pop_back();
  return address;
}

std::string Scrape(const std::string& address) {
  auto response = qtrain::testing_http::HttpGet(address, "/metrics");
  EXPECT_TRUE(response.ok()) << response.status();
  if (!response.ok()) return "";
  EXPECT_EQ(response->status, 200);
  return response->body;
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

TEST(CoordinatorCliTest, ServesMetricsWithoutItsTokens) {
  const auto dir = TestDir("metrics");
  const std::string user_token = "user-secret-4b1d9e0c7a",
                    cluster_token = "cluster-secret-93fe21d8";
  std::ofstream(dir / "user.token") << user_token << "\n";
  std::ofstream(dir / "cluster.token") << cluster_token << "\n";
  const auto address_file = dir / "address", metrics_file = dir / "metrics_address";
  Running coordinator({Binary(), "--listen", "127.0.0.1:0", "--address-file", address_file.string(),
                       "--metrics-listen", "127.0.0.1:0", "--metrics-address-file",
                       metrics_file.string(), "--state-dir", (dir / "state").string(), "--run-root",
                       (dir / "runs").string(), "--auth-token-file", (dir / "user.token").string(),
                       "--cluster-token-file", (dir / "cluster.token").string()},
                      dir / "log");
  ASSERT_TRUE(WaitForFile(address_file)) << ReadFile(dir / "log");
  ASSERT_TRUE(std::filesystem::exists(metrics_file));
  EXPECT_THAT(ReadFile(metrics_file), ::testing::MatchesRegex("127\\.0\\.0\\.1:[0-9]+\n"));
  const std::string metrics = ReadAddress(metrics_file);
  EXPECT_THAT(ReadFile(dir / "log"), HasSubstr("metrics on http://" + metrics + "/metrics"));

  std::string text = Scrape(metrics);
  EXPECT_THAT(text, HasSubstr("qtrain_jobs{state=\"QUEUED\"} 0"));
  EXPECT_THAT(text, HasSubstr("qtrain_workers{state=\"IDLE\"} 0"));
  EXPECT_THAT(text, HasSubstr("qtrain_checkpoints_total{state=\"FAILED\"} 0"));
  EXPECT_THAT(text, HasSubstr("qtrain_lease_expiries_total 0"));

  // Calls with the right token, a missing one and a wrong one.
  std::ofstream(dir / "wrong.token") << "wrong-token\n";
  for (const std::string& token_file :
       {(dir / "user.token").string(), std::string(), (dir / "wrong.token").string()}) {
    auto client =
        qtrain::RpcClient::Create({.address = ReadAddress(address_file), .token_file = token_file});
    ASSERT_TRUE(client.ok()) << client.status();
    auto stub = qtrain::v1::JobService::NewStub(client->channel());
    qtrain::v1::GetJobRequest request;
    request.set_name("jobs/nope-1");
    qtrain::v1::Job job;
    auto context = client->NewContext(absl::Seconds(10));
    const grpc::Status status = stub->GetJob(context.get(), request, &job);
    EXPECT_EQ(status.error_code(),
              token_file.empty() || token_file.find("wrong") != std::string::npos
                  ? grpc::StatusCode::UNAUTHENTICATED
                  : grpc::StatusCode::NOT_FOUND)
        << status.error_message();
  }
  text = Scrape(metrics);
  EXPECT_THAT(text, HasSubstr("qtrain_rpc_total{code=\"NOT_FOUND\",method=\"qtrain.v1.JobService/"
                              "GetJob\"} 1"));
  EXPECT_THAT(text, HasSubstr("qtrain_rpc_total{code=\"UNAUTHENTICATED\",method=\"qtrain.v1."
                              "JobService/GetJob\"} 2"));
  EXPECT_THAT(text,
              HasSubstr("qtrain_rpc_seconds_count{method=\"qtrain.v1.JobService/GetJob\"} 3"));
  EXPECT_THAT(text, Not(HasSubstr(user_token)));
  EXPECT_THAT(text, Not(HasSubstr(cluster_token)));
  EXPECT_EQ(coordinator.Terminate(), 0);
  const std::string log = ReadFile(dir / "log");
  EXPECT_THAT(log, Not(HasSubstr(user_token)));
  EXPECT_THAT(log, Not(HasSubstr(cluster_token)));
}

TEST(CoordinatorCliTest, RefusesBadMetricsFlags) {
  const auto dir = TestDir("metrics_flags");
  const std::vector<std::string> base = {Binary(), "--state-dir", (dir / "state").string(),
                                         "--run-root", (dir / "runs").string()};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  const qtrain::testing_cli::CliOptions options{.timeout_seconds = 30};
  for (const char* bad : {"nonsense", "127.0.0.1", "127.0.0.1:70000", ":9401"}) {
    auto r = RunCli(with({"--metrics-listen", bad}), dir / "bad.log", options);
    EXPECT_CLEAN_FAILURE(r, "--metrics-listen");
    EXPECT_EQ(r.exit_code, 2) << r;
  }
  auto r =
      RunCli(with({"--metrics-address-file", (dir / "m").string()}), dir / "file.log", options);
  EXPECT_CLEAN_FAILURE(r, "--metrics-address-file needs --metrics-listen");
  EXPECT_EQ(r.exit_code, 2) << r;

  // A port another process holds: refused at start, naming the address.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t size = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &size), 0);
  const std::string taken = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
  EXPECT_CLEAN_FAILURE(RunCli(with({"--listen", "127.0.0.1:0", "--metrics-listen", taken}),
                              dir / "taken.log", options),
                       taken);
  close(fd);
}

}  // namespace
