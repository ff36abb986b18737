// The remote `qtrain` commands as processes: against no coordinator (one line naming the address,
// within the deadline), with bad flags, and against a real qtrain-coordinator (no workers, so
// jobs stay QUEUED until cancelled): submit, get, list, cancel, watch, checkpoints, workers in
// every output format.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/cli_process.h"
#include "yaml-cpp/yaml.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using testing_cli::CliOptions;
using testing_cli::CliResult;
using testing_cli::QtrainBinary;
using testing_cli::RunCli;

constexpr char kSpec[] = R"(name: NAME
model: {preset: qwen2-tiny}
tokenizer: /nonexistent/tokenizer.json
data: {manifest: /nonexistent/manifest.json}
curriculum:
  - {name: short, seq_len: 64, tokens: 8192, micro_batch: 4}
  - {name: long, seq_len: 128, tokens: 4096, micro_batch: 2}
optimizer: {lr: 1e-3}
batch: {global_tokens: 1024}
)";

std::string BinDir() { return fs::path(QtrainBinary()).parent_path().string(); }

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One line of output (trailing newline aside).
bool IsOneLine(const std::string& s) {
  const absl::string_view trimmed = absl::StripSuffix(s, "\n");
  return !trimmed.empty() && trimmed.find('\n') == absl::string_view::npos;
}

// A qtrain-coordinator on an ephemeral port, killed (SIGKILL) and reaped when the test ends.
class Coordinator {
 public:
  explicit Coordinator(const fs::path& root) : root_(root) {}
  ~Coordinator() { Kill(); }

  void Kill() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
  }

  // Empty on success, else why it did not start.
  std::string Start(const std::string& listen = "127.0.0.1:0") {
    const std::string bin = BinDir() + "/qtrain-coordinator";
    if (::access(bin.c_str(), X_OK) != 0) return "no " + bin;
    fs::create_directories(root_ / "state");
    fs::create_directories(root_ / "runs");
    const std::string address_file = (root_ / "address").string();
    const std::string log = (root_ / "coordinator.log").string();
    fs::remove(address_file);
    std::vector<std::string> args = {bin,
                                     "--listen",
                                     listen,
                                     "--address-file",
                                     address_file,
                                     "--state-dir",
                                     (root_ / "state").string(),
                                     "--run-root",
                                     (root_ / "runs").string()};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      FILE* f = std::freopen(log.c_str(), "w", stderr);
      (void)f;
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < deadline) {
      std::ifstream in(address_file);
      std::stringstream text;
      text << in.rdbuf();
      const std::string content = text.str();
      if (!content.empty() && content.back() == '\n') {  // written atomically, newline last
        address_ = content.substr(0, content.size() - 1);
        return "";
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        std::ifstream l(log);
        std::stringstream ss;
        ss << l.rdbuf();
        return "the coordinator exited: " + ss.str();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return "the coordinator wrote no address file in 30 s";
  }

  const std::string& address() const { return address_; }
  fs::path run_root() const { return root_ / "runs"; }

 private:
  fs::path root_;
  pid_t pid_ = -1;
  std::string address_;
};

class RemoteCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("remote_cli_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  fs::path WriteSpec(const std::string& name, const std::string& extra = "") {
    std::string text = kSpec;
    text.replace(text.find("NAME"), 4, name);
    text += extra;
    const fs::path path = root_ / (name + std::to_string(++files_) + ".yaml");
    std::ofstream(path) << text;
    return path;
  }

  CliResult Run(std::vector<std::string> args, double timeout = 30,
                std::vector<std::string> env = {}) {
    args.insert(args.begin(), QtrainBinary());
    CliOptions options;
    options.timeout_seconds = timeout;
    options.env = std::move(env);
    options.stdout_path = root_ / ("out" + std::to_string(++runs_));
    CliResult result = RunCli(args, root_ / ("log" + std::to_string(runs_)), options);
    std::ifstream in(options.stdout_path);
    std::stringstream ss;
    ss << in.rdbuf();
    stdout_ = ss.str();
    return result;
  }

  // Runs against `address` and parses stdout as JSON.
  nlohmann::json RunJson(const std::string& address, std::vector<std::string> args) {
    args.insert(args.begin(), {"--coordinator", address});
    args.push_back("-o");
    args.push_back("json");
    const CliResult r = Run(args);
    EXPECT_TRUE(r.exited && r.exit_code == 0) << r << "\nstdout: " << stdout_;
    nlohmann::json json = nlohmann::json::parse(stdout_, nullptr, false);
    EXPECT_FALSE(json.is_discarded()) << stdout_;
    return json;
  }

  fs::path root_;
  std::string stdout_;
  int files_ = 0, runs_ = 0;
};

TEST_F(RemoteCliTest, UnreachableCoordinatorIsOneLineNamingTheAddress) {
  const std::vector<std::vector<std::string>> commands = {
      {"--coordinator", "127.0.0.1:1", "get", "demo-1"},
      {"get", "jobs/demo-1", "--coordinator", "127.0.0.1:1", "--timeout", "3"},
      {"--coordinator", "127.0.0.1:1", "list"},
      {"--coordinator", "127.0.0.1:1", "workers", "-o", "json"},
      {"--coordinator", "127.0.0.1:1", "checkpoints", "demo-1"},
      {"--coordinator", "127.0.0.1:1", "cancel", "demo-1"},
      {"--coordinator", "127.0.0.1:1", "watch", "demo-1"},
      {"--coordinator", "127.0.0.1:1", "submit", WriteSpec("demo").string()},
  };
  for (const auto& command : commands) {
    const auto start = std::chrono::steady_clock::now();
    const CliResult r = Run(command, 20);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_TRUE(r.exited && r.exit_code == 1) << command[2] << ": " << r;
    EXPECT_THAT(r.output, HasSubstr("qtrain: cannot reach the coordinator at 127.0.0.1:1"))
        << command[2];
    EXPECT_TRUE(IsOneLine(r.output)) << r.output;
    EXPECT_LT(seconds, 12) << command[2];
    EXPECT_EQ(stdout_, "");
  }
}

TEST_F(RemoteCliTest, CoordinatorFromTheEnvironment) {
  const CliResult r = Run({"get", "demo-1"}, 20, {"QTRAIN_COORDINATOR=127.0.0.1:2"});
  EXPECT_TRUE(r.exited && r.exit_code == 1) << r;
  EXPECT_THAT(r.output, HasSubstr("cannot reach the coordinator at 127.0.0.1:2"));
  // The flag wins over the environment.
  const CliResult flag = Run({"get", "demo-1", "--coordinator", "127.0.0.1:3"}, 20,
                             {"QTRAIN_COORDINATOR=127.0.0.1:2"});
  EXPECT_THAT(flag.output, HasSubstr("127.0.0.1:3"));
}

TEST_F(RemoteCliTest, BadFlagsAreUsageErrors) {
  struct Case {
    std::vector<std::string> args;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {{"get"}, "job"},
      {{"get", "jobs/a/b"}, "jobs/a/b"},
      {{"cancel", ""}, "JOB"},
      {{"list", "--state", "sleeping"}, "sleeping"},
      {{"list", "--page-size", "0"}, "page-size"},
      {{"list", "--page-size", "1001"}, "page-size"},
      {{"--timeout", "0", "list"}, "timeout"},
      {{"--timeout", "soon", "list"}, "timeout"},
      {{"get", "demo-1", "-o", "xml"}, "xml"},
      {{"list", "-o", "csv"}, "csv"},
      {{"watch", "demo-1", "-o", "yaml"}, "yaml"},
      {{"submit"}, "spec"},
      {{"submit", "x.yaml", "--request-id", ""}, "request-id"},
      {{"watch", "demo-1", "--reconnect-timeout", "-1"}, "reconnect-timeout"},
      {{"local"}, "spec"},
      {{"local", "x.yaml", "--workers", "0"}, "workers"},
      {{"local", "x.yaml", "--workers", "65"}, "workers"},
      {{"local", "x.yaml", "--workers", "two"}, "workers"},
  };
  for (const Case& c : cases) {
    const CliResult r = Run(c.args, 20);
    EXPECT_TRUE(r.exited && r.exit_code == 2) << c.args[0] << ": " << r;
    EXPECT_THAT(r.output, HasSubstr(c.needle)) << r;
  }
}

TEST_F(RemoteCliTest, SubmitRefusesAnInvalidSpecListingEveryField) {
  std::string text = kSpec;
  text.replace(text.find("NAME"), 4, "bad");
  text.replace(text.find("seq_len: 64"), 11, "seq_len: 0");
  text.replace(text.find("lr: 1e-3"), 8, "lr: -1");
  const fs::path spec = root_ / "bad.yaml";
  std::ofstream(spec) << text;
  const CliResult r = Run({"--coordinator", "127.0.0.1:1", "submit", spec.string()});
  EXPECT_TRUE(r.exited && r.exit_code == 1) << r;
  EXPECT_THAT(r.output, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(r.output, HasSubstr("curriculum[0].seq_len"));
  EXPECT_THAT(r.output, HasSubstr("optimizer.lr"));
  // Refused before any call: the unreachable coordinator is not mentioned.
  EXPECT_THAT(r.output, Not(HasSubstr("cannot reach")));
}

class RemoteCliCoordinatorTest : public RemoteCliTest {
 protected:
  void SetUp() override {
    RemoteCliTest::SetUp();
    coordinator_ = std::make_unique<Coordinator>(root_ / "coordinator");
    const std::string error = coordinator_->Start();
    if (error.rfind("no ", 0) == 0) GTEST_SKIP() << error;
    ASSERT_EQ(error, "");
    address_ = coordinator_->address();
  }
  void TearDown() override {
    coordinator_.reset();
    RemoteCliTest::TearDown();
  }

  std::unique_ptr<Coordinator> coordinator_;
  std::string address_;
};

TEST_F(RemoteCliCoordinatorTest, SubmitGetListJsonAndYaml) {
  const fs::path spec = WriteSpec("alpha");
  nlohmann::json job = RunJson(address_, {"submit", spec.string(), "--request-id", "req-1"});
  EXPECT_EQ(job["name"], "jobs/alpha-1");
  EXPECT_EQ(job["state"], "JOB_STATE_QUEUED");
  EXPECT_EQ(job["request_id"], "req-1");
  EXPECT_EQ(job["run_directory"], (coordinator_->run_root() / "alpha-1").string());
  EXPECT_EQ(job["spec"]["curriculum"][1]["name"], "long");
  EXPECT_TRUE(job.contains("state_message"));  // default-valued fields are printed
  EXPECT_TRUE(job.contains("restarts"));
  EXPECT_FALSE(job.contains("runDirectory"));

  // The same request id and spec: the same job.
  nlohmann::json again = RunJson(address_, {"submit", spec.string(), "--request-id", "req-1"});
  EXPECT_EQ(again["name"], "jobs/alpha-1");
  // The same request id with another spec: refused.
  const CliResult other = Run(
      {"--coordinator", address_, "submit", WriteSpec("other").string(), "--request-id", "req-1"});
  EXPECT_TRUE(other.exited && other.exit_code == 1) << other;
  EXPECT_THAT(other.output, HasSubstr("qtrain: ALREADY_EXISTS"));

  // get by ID and by resource name, in every format.
  nlohmann::json got = RunJson(address_, {"get", "alpha-1"});
  EXPECT_EQ(got["name"], "jobs/alpha-1");
  EXPECT_EQ(RunJson(address_, {"get", "jobs/alpha-1"})["request_id"], "req-1");
  CliResult r = Run({"--coordinator", address_, "get", "alpha-1", "-o", "yaml"});
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r;
  YAML::Node yaml = YAML::Load(stdout_);
  EXPECT_EQ(yaml["name"].as<std::string>(), "jobs/alpha-1");
  EXPECT_EQ(yaml["state"].as<std::string>(), "JOB_STATE_QUEUED");
  EXPECT_EQ(yaml["run_directory"].as<std::string>(), got["run_directory"].get<std::string>());
  r = Run({"--coordinator", address_, "get", "alpha-1"});
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r;
  EXPECT_THAT(stdout_, HasSubstr("NAME"));
  EXPECT_THAT(stdout_, HasSubstr("STEP/TOTAL"));
  EXPECT_THAT(stdout_, HasSubstr("jobs/alpha-1"));
  EXPECT_THAT(stdout_, HasSubstr("QUEUED"));
  EXPECT_THAT(stdout_, HasSubstr("0/12"));  // 8 + 4 steps, from the spec

  nlohmann::json list = RunJson(address_, {"list"});
  ASSERT_EQ(list["jobs"].size(), 1u) << list;
  EXPECT_EQ(list["jobs"][0]["name"], "jobs/alpha-1");
  EXPECT_EQ(list["next_page_token"], "");
  r = Run({"--coordinator", address_, "list", "-o", "yaml"});
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r;
  yaml = YAML::Load(stdout_);
  EXPECT_EQ(yaml["jobs"][0]["name"].as<std::string>(), "jobs/alpha-1");

  // An unknown job.
  r = Run({"--coordinator", address_, "get", "nope-9"});
  EXPECT_TRUE(r.exited && r.exit_code == 1) << r;
  EXPECT_THAT(r.output, HasSubstr("qtrain: NOT_FOUND"));
}

TEST_F(RemoteCliCoordinatorTest, CancelQueuedJobThenWatchExitsTwo) {
  nlohmann::json job = RunJson(address_, {"submit", WriteSpec("beta").string()});
  const std::string name = job["name"];
  EXPECT_FALSE(job["request_id"].get<std::string>().empty());  // a generated UUID
  nlohmann::json cancelled = RunJson(address_, {"cancel", name, "--reason", "not needed"});
  EXPECT_EQ(cancelled["state"], "JOB_STATE_CANCELLED");
  EXPECT_THAT(cancelled["state_message"].get<std::string>(), HasSubstr("not needed"));

  CliResult r = Run({"--coordinator", address_, "watch", name});
  EXPECT_TRUE(r.exited && r.exit_code == 2) << r;
  EXPECT_THAT(stdout_, HasSubstr("-> CANCELLED"));

  r = Run({"--coordinator", address_, "watch", name, "-o", "json"});
  EXPECT_TRUE(r.exited && r.exit_code == 2) << r;
  std::vector<std::string> lines = absl::StrSplit(stdout_, '\n', absl::SkipEmpty());
  ASSERT_FALSE(lines.empty());
  int64_t last = 0;
  for (const std::string& line : lines) {
    nlohmann::json event = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(event.is_discarded()) << line;
    EXPECT_EQ(event["job"], name);
    const int64_t sequence = std::stoll(event["sequence"].get<std::string>());
    EXPECT_GT(sequence, last);
    last = sequence;
  }
  nlohmann::json final_event = nlohmann::json::parse(lines.back());
  EXPECT_EQ(final_event["state_changed"]["to"], "JOB_STATE_CANCELLED");

  // submit --watch of a job that is then cancelled from elsewhere: exit 2.
  const fs::path spec = WriteSpec("gamma");
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    CliOptions options;
    options.timeout_seconds = 20;
    RunCli({QtrainBinary(), "--coordinator", address_, "cancel", "gamma-2"}, root_ / "cancel.log",
           options);
  });
  r = Run({"--coordinator", address_, "submit", spec.string(), "--watch"}, 30);
  canceller.join();
  EXPECT_TRUE(r.exited && r.exit_code == 2) << r;
  EXPECT_THAT(stdout_, HasSubstr("jobs/gamma-2"));
  EXPECT_THAT(stdout_, HasSubstr("QUEUED -> CANCELLED"));
}

TEST_F(RemoteCliCoordinatorTest, ListFiltersByStateAndPages) {
  for (const char* name : {"j", "k", "l"}) RunJson(address_, {"submit", WriteSpec(name).string()});
  RunJson(address_, {"cancel", "k-2"});
  nlohmann::json queued = RunJson(address_, {"list", "--state", "queued"});
  ASSERT_EQ(queued["jobs"].size(), 2u) << queued;
  for (const auto& job : queued["jobs"]) EXPECT_EQ(job["state"], "JOB_STATE_QUEUED");
  nlohmann::json cancelled = RunJson(address_, {"list", "--state", "JOB_STATE_CANCELLED"});
  ASSERT_EQ(cancelled["jobs"].size(), 1u);
  EXPECT_EQ(cancelled["jobs"][0]["name"], "jobs/k-2");
  nlohmann::json both = RunJson(address_, {"list", "--state", "CANCELLED", "--state", "queued"});
  EXPECT_EQ(both["jobs"].size(), 3u);

  // Newest first, one per page.
  nlohmann::json page = RunJson(address_, {"list", "--page-size", "1"});
  ASSERT_EQ(page["jobs"].size(), 1u);
  EXPECT_EQ(page["jobs"][0]["name"], "jobs/l-3");
  const std::string token = page["next_page_token"];
  ASSERT_FALSE(token.empty());
  nlohmann::json second = RunJson(address_, {"list", "--page-size", "1", "--page-token", token});
  ASSERT_EQ(second["jobs"].size(), 1u);
  EXPECT_EQ(second["jobs"][0]["name"], "jobs/k-2");
  nlohmann::json all = RunJson(address_, {"list", "--page-size", "1", "--all"});
  ASSERT_EQ(all["jobs"].size(), 3u);
  EXPECT_EQ(all["jobs"][2]["name"], "jobs/j-1");
  EXPECT_EQ(all["next_page_token"], "");
  // The table says there is more.
  const CliResult r = Run({"--coordinator", address_, "list", "--page-size", "2"});
  EXPECT_TRUE(r.exited && r.exit_code == 0) << r;
  EXPECT_THAT(r.output, HasSubstr("--all"));
}

TEST_F(RemoteCliCoordinatorTest, EmptyCheckpointsAndWorkers) {
  RunJson(address_, {"submit", WriteSpec("delta").string()});
  nlohmann::json checkpoints = RunJson(address_, {"checkpoints", "delta-1"});
  EXPECT_TRUE(checkpoints["checkpoints"].is_array());
  EXPECT_EQ(checkpoints["checkpoints"].size(), 0u);
  EXPECT_EQ(checkpoints["next_page_token"], "");
  nlohmann::json workers = RunJson(address_, {"workers"});
  EXPECT_TRUE(workers["workers"].is_array());
  EXPECT_EQ(workers["workers"].size(), 0u);
  CliResult r = Run({"--coordinator", address_, "checkpoints", "jobs/delta-1"});
  EXPECT_TRUE(r.exited && r.exit_code == 0) << r;
  EXPECT_EQ(stdout_, "NAME   STATE   STEP   STAGE   TOKENS   FILES\n");
  r = Run({"--coordinator", address_, "workers", "-o", "yaml"});
  EXPECT_TRUE(r.exited && r.exit_code == 0) << r;
  YAML::Node yaml = YAML::Load(stdout_);
  EXPECT_TRUE(yaml["workers"].IsSequence());
  r = Run({"--coordinator", address_, "checkpoints", "nope-1"});
  EXPECT_TRUE(r.exited && r.exit_code == 1) << r;
  EXPECT_THAT(r.output, HasSubstr("NOT_FOUND"));
}

TEST_F(RemoteCliCoordinatorTest, WatchReconnectsToARestartedCoordinator) {
  RunJson(address_, {"submit", WriteSpec("zeta").string()});
  std::string restart_error = "not restarted";
  std::thread restarter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    coordinator_->Kill();
    // Longer than one reconnect probe (2 s), so the watch says it lost the stream.
    std::this_thread::sleep_for(std::chrono::milliseconds(3500));
    restart_error = coordinator_->Start(address_);
    if (!restart_error.empty()) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    CliOptions options;
    options.timeout_seconds = 20;
    RunCli({QtrainBinary(), "--coordinator", address_, "cancel", "zeta-1"}, root_ / "cancel.log",
           options);
  });
  const CliResult r = Run({"--coordinator", address_, "watch", "zeta-1"}, 40);
  restarter.join();
  ASSERT_EQ(restart_error, "");
  EXPECT_TRUE(r.exited && r.exit_code == 2)
      << r << "\ncancel: " << ReadAll(root_ / "cancel.log")
      << "\ncoordinator: " << ReadAll(root_ / "coordinator" / "coordinator.log");
  EXPECT_THAT(r.output, HasSubstr("reconnecting"));
  EXPECT_THAT(r.output, HasSubstr("reconnected"));
  // Every event once: the replay after the reconnect starts after the last one seen.
  EXPECT_THAT(stdout_, HasSubstr("QUEUED -> CANCELLED"));
  const std::vector<std::string> lines = absl::StrSplit(stdout_, '\n', absl::SkipEmpty());
  std::set<std::string> unique(lines.begin(), lines.end());
  EXPECT_EQ(unique.size(), lines.size()) << stdout_;
}

TEST_F(RemoteCliCoordinatorTest, WatchGivesUpWhenTheCoordinatorStaysAway) {
  RunJson(address_, {"submit", WriteSpec("eps").string()});
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1000));
    coordinator_.reset();
  });
  const auto start = std::chrono::steady_clock::now();
  const CliResult r =
      Run({"--coordinator", address_, "watch", "eps-1", "--reconnect-timeout", "2"}, 30);
  killer.join();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(r.exited && r.exit_code == 1) << r;
  EXPECT_THAT(r.output, HasSubstr("cannot reach the coordinator at " + address_));
  EXPECT_THAT(r.output, HasSubstr("gave up"));
  EXPECT_LT(seconds, 15);
}

// `qtrain local`: a tiny two-stage job through a real coordinator, worker and training child.
class LocalCliTest : public RemoteCliTest {
 protected:
  void SetUp() override {
    RemoteCliTest::SetUp();
    for (const char* bin : {"qtrain-coordinator", "qtrain-worker"}) {
      if (::access((BinDir() + "/" + bin).c_str(), X_OK) != 0) GTEST_SKIP() << "no " << bin;
    }
    ASSERT_TRUE(testing_cli::WriteWordCorpus(
        root_ / "text.txt",
        {"the", "model", "learns", "tokens", "from", "a", "small", "corpus", "and", "predicts"},
        4000, /*seed=*/7, /*sentence_every=*/9));
    CliResult r = Run({"train-tokenizer", "--vocab-size", "300", "--out", (root_ / "tok").string(),
                       (root_ / "text.txt").string()});
    ASSERT_TRUE(r.exited && r.exit_code == 0) << r;
    r = Run({"tokenize", "--tokenizer", (root_ / "tok" / "tokenizer.json").string(), "--out",
             (root_ / "shards").string(), (root_ / "text.txt").string()});
    ASSERT_TRUE(r.exited && r.exit_code == 0) << r;
    std::ofstream(root_ / "job.yaml")
        << "name: tiny\nseed: 3\n"
        << "model: {config: {vocab_size: 320, hidden_size: 32, intermediate_size: 48, "
           "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
           "max_position_embeddings: 128}}\n"
        << "tokenizer: " << (root_ / "tok" / "tokenizer.json").string() << "\n"
        << "data: {manifest: " << (root_ / "shards" / "manifest.json").string()
        << ", validation_fraction: 0.1}\n"
        << "curriculum:\n"
        << "  - {name: short, seq_len: 16, tokens: 1024, micro_batch: 4}\n"
        << "  - {name: long, seq_len: 64, tokens: 512, micro_batch: 2}\n"
        << "optimizer: {lr: 1e-2, warmup_steps: 1}\n"
        << "batch: {global_tokens: 256}\n"
        << "checkpoint: {every_steps: 2, keep_last: 1}\n";
  }

  // Processes whose command line mentions `needle` (the children of a run, by their run root).
  static std::vector<std::string> ProcessesMentioning(const std::string& needle) {
    std::vector<std::string> found;
    for (const auto& entry : fs::directory_iterator("/proc")) {
      const std::string name = entry.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::string cmdline = ReadAll(entry.path() / "cmdline");
      std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
      if (cmdline.find(needle) != std::string::npos) found.push_back(name + ": " + cmdline);
    }
    return found;
  }
};

TEST_F(LocalCliTest, TwoStageJobSucceedsAndLeavesNothingRunning) {
  const fs::path run_root = root_ / "local";
  const CliResult r = Run({"local", (root_ / "job.yaml").string(), "--workers", "1", "--run-root",
                           run_root.string(), "--threads", "1", "--lease-seconds", "5"},
                          180);
  ASSERT_TRUE(r.exited && r.exit_code == 0)
      << r << "\nstdout: " << stdout_
      << "\ncoordinator: " << ReadAll(run_root / ".logs" / "coordinator.log")
      << "\nworker: " << ReadAll(run_root / ".logs" / "worker-0.log");
  EXPECT_THAT(stdout_, HasSubstr("jobs/tiny-1"));
  EXPECT_THAT(stdout_, HasSubstr("stage 1 'long' started"));
  EXPECT_THAT(stdout_, HasSubstr("-> SUCCEEDED"));
  EXPECT_THAT(stdout_, HasSubstr("final model: " + (run_root / "tiny-1" / "final").string()));
  EXPECT_TRUE(fs::exists(run_root / "tiny-1" / "final" / "model.safetensors"));
  EXPECT_THAT(r.output, HasSubstr((run_root / ".logs").string()));
  EXPECT_TRUE(fs::exists(run_root / ".logs" / "coordinator.log"));
  EXPECT_TRUE(fs::exists(run_root / ".logs" / "worker-0.log"));
  EXPECT_THAT(ProcessesMentioning(run_root.string()), ::testing::IsEmpty());
}

TEST_F(LocalCliTest, TwoWorkersTrainTheSameModelAsOne) {
  // 4 then 2 micro-batches per step: 1 or 2 workers each get a power of two.
  std::ofstream(root_ / "job.yaml", std::ios::app) << "world: {min_workers: 1, max_workers: 2}\n";
  std::map<int, std::string> models;
  for (const int workers : {2, 1}) {
    const fs::path run_root = root_ / absl::StrCat("local-", workers);
    const CliResult r =
        Run({"local", (root_ / "job.yaml").string(), "--workers", absl::StrCat(workers),
             "--run-root", run_root.string(), "--threads", "2", "--lease-seconds", "5"},
            240);
    ASSERT_TRUE(r.exited && r.exit_code == 0)
        << r << "\nstdout: " << stdout_
        << "\ncoordinator: " << ReadAll(run_root / ".logs" / "coordinator.log")
        << "\nworker 0: " << ReadAll(run_root / ".logs" / "worker-0.log")
        << "\nworker 1: " << ReadAll(run_root / ".logs" / "worker-1.log");
    EXPECT_THAT(stdout_, HasSubstr("-> SUCCEEDED"));
    const fs::path run = run_root / "tiny-1";
    models[workers] = ReadAll(run / "final" / "model.safetensors");
    ASSERT_FALSE(models[workers].empty());
    EXPECT_THAT(ProcessesMentioning(run_root.string()), ::testing::IsEmpty());
    if (workers == 2) {
      EXPECT_THAT(r.output, HasSubstr("2 workers (1 thread each; progress of rank 0)"));
      // Both ranks trained: the last checkpoint holds the optimizer shard of each.
      std::vector<std::string> shards;
      for (const auto& step : fs::directory_iterator(run / "checkpoints")) {
        for (const auto& file : fs::directory_iterator(step.path())) {
          const std::string name = file.path().filename().string();
          if (name.rfind("optimizer-", 0) == 0) shards.push_back(name);
        }
      }
      EXPECT_THAT(shards, ::testing::Contains("optimizer-00000-of-00002.safetensors"));
      EXPECT_THAT(shards, ::testing::Contains("optimizer-00001-of-00002.safetensors"));
      EXPECT_THAT(ReadAll(run_root / ".logs" / "worker-1.log"), HasSubstr("joined its group"));
    }
  }
  EXPECT_TRUE(models[1] == models[2]) << "2 workers trained other bytes than 1";
}

TEST_F(LocalCliTest, SigtermCancelsTheJobAndStopsEveryChild) {
  const fs::path run_root = root_ / "local";
  const std::string log = (root_ / "sigterm.log").string();
  std::vector<std::string> args = {QtrainBinary(),    "local",     (root_ / "job.yaml").string(),
                                   "--workers",       "1",         "--run-root",
                                   run_root.string(), "--threads", "1"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setenv("QTRAIN_TEST_STEP_DELAY_MS", "300", 1);
    FILE* out = std::freopen(log.c_str(), "w", stdout);
    (void)out;
    ::dup2(1, 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ASSERT_GT(pid, 0);
  // Wait until it trains.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (ReadAll(log).find("-> RUNNING") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_THAT(ReadAll(log), HasSubstr("-> RUNNING"));
  ::kill(pid, SIGTERM);
  int status = 0;
  const auto stop_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  pid_t done = 0;
  while ((done = ::waitpid(pid, &status, WNOHANG)) == 0 &&
         std::chrono::steady_clock::now() < stop_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (done == 0) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    FAIL() << "qtrain local did not stop within 20 s of SIGTERM:\n" << ReadAll(log);
  }
  EXPECT_TRUE(WIFEXITED(status)) << ReadAll(log);
  EXPECT_EQ(WEXITSTATUS(status), 2) << ReadAll(log);
  EXPECT_THAT(ReadAll(log), HasSubstr("-> CANCELLED"));
  EXPECT_THAT(ProcessesMentioning(run_root.string()), ::testing::IsEmpty());
}

TEST_F(RemoteCliTest, LocalRefusesAWorkerCountOutsideTheJobsWorld) {
  // The default world is one worker.
  CliResult r = Run({"local", WriteSpec("solo").string(), "--workers", "2", "--run-root",
                     (root_ / "runs").string()});
  EXPECT_TRUE(r.exited && r.exit_code == 1) << r;
  EXPECT_THAT(r.output, HasSubstr("--workers 2 is outside the job's world range 1-1"));
  EXPECT_THAT(r.output, HasSubstr("world.max_workers 1"));
  EXPECT_TRUE(IsOneLine(r.output)) << r.output;
  r = Run({"local", WriteSpec("pair", "world: {min_workers: 2, max_workers: 2}\n").string(),
           "--run-root", (root_ / "runs").string()});
  EXPECT_TRUE(r.exited && r.exit_code == 1) << r;
  EXPECT_THAT(r.output, HasSubstr("--workers 1 is outside the job's world range 2-2"));
  EXPECT_THAT(r.output, HasSubstr("world.min_workers 2"));
  EXPECT_FALSE(fs::exists(root_ / "runs")) << "nothing is started for a refused run";
}

TEST_F(RemoteCliTest, LocalNeedsItsSiblingBinaries) {
  const fs::path lonely = root_ / "bin";
  fs::create_directories(lonely);
  fs::copy_file(QtrainBinary(), lonely / "qtrain");
  const fs::path spec = WriteSpec("solo");
  const std::vector<std::string> args = {
      (lonely / "qtrain").string(), "local", spec.string(), "--workers", "1", "--run-root",
      (root_ / "runs").string()};
  CliOptions options;
  options.timeout_seconds = 30;
  const CliResult r = RunCli(args, root_ / "lonely.log", options);
  EXPECT_TRUE(r.exited && r.exit_code == 1) << r;
  EXPECT_THAT(r.output, HasSubstr("qtrain-coordinator"));
  EXPECT_THAT(r.output, HasSubstr("missing"));
  EXPECT_TRUE(IsOneLine(r.output)) << r.output;
}

}  // namespace
}  // namespace qtrain
