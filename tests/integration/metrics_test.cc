// Monitoring end to end: a real Prometheus (the `prometheus` binary, scrape interval 1 s, with
// deploy/prometheus/rules.yml) scraping a real qtrain-coordinator and two qtrain-worker daemons
// while they train a real two-worker job with checkpoints and evaluations. Then every query of
// the Grafana dashboard (deploy/grafana/qtrain.json), its variables substituted, must return
// data over the job's time window; every metric of the contract must have a series there; the
// metrics endpoints serve nothing but /metrics; and no token given to a daemon shows in a
// metrics body or in any log. The alerts of deploy/prometheus/rules.yml fire on the real series
// of a job that restarts and fails and of a worker that dies.
//
// A failed test prints the logs of every process it ran; QTRAIN_SERVICE_TEST_LOGS=1 prints them
// for passing tests too.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/cli_process.h"
#include "tests/integration/http_client.h"
#include "tests/integration/service_harness.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using testing_http::HttpGet;
using testing_http::HttpRequest;
using testing_http::UrlEncode;
using testing_service::Client;
using testing_service::Coordinator;
using testing_service::JobId;
using testing_service::JobState;
using testing_service::Process;
using testing_service::WaitFor;
using testing_service::Worker;

constexpr int kScrapeSeconds = 1;
// What the dashboard's $__rate_interval is at this scrape interval (Grafana: 4 x the scrape
// interval at least).
constexpr int kRateIntervalSeconds = 4 * kScrapeSeconds;
constexpr int kStepDelayMs = 400;  // the 18 steps last several scrapes
constexpr absl::Duration kTestTimeout = absl::Seconds(220);
constexpr absl::Duration kJobTimeout = absl::Seconds(120);

// The contract's metrics (histograms by their _count series): every one must have a series in
// the job's window.
const char* const kWorkerMetrics[] = {
    "qtrain_train_loss",
    "qtrain_eval_loss",
    "qtrain_learning_rate",
    "qtrain_grad_norm",
    "qtrain_tokens_total",
    "qtrain_tokens_per_second",
    "qtrain_step_seconds_count",
    "qtrain_compute_seconds_total",
    "qtrain_comm_seconds_total",
    "qtrain_data_wait_seconds_total",
    "qtrain_checkpoint_seconds_count",
    "qtrain_skipped_steps_total",
    "qtrain_step",
    "qtrain_stage",
    "qtrain_model_flops_utilization",
    "qtrain_memory_bytes",
};
const char* const kCoordinatorMetrics[] = {
    "qtrain_jobs",
    "qtrain_workers",
    "qtrain_job_restarts_total",
    "qtrain_checkpoints_total",
    "qtrain_lease_expiries_total",
    "qtrain_rpc_total",
    "qtrain_rpc_seconds_count",
    "qtrain_job_progress_ratio",
    "qtrain_job_eta_seconds",
    "qtrain_job_state",
    "qtrain_job_last_progress_timestamp_seconds",
};

fs::path SourceDir() {
  const char* dir = std::getenv("QTRAIN_SOURCE_DIR");
  return dir != nullptr ? fs::path(dir) : fs::current_path();
}

// A port of 127.0.0.1 that was free a moment ago (Prometheus has no "port 0 and tell me").
absl::StatusOr<int> FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket() failed");
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  if (!ok) return absl::InternalError("cannot bind a port of 127.0.0.1");
  return ntohs(address.sin_port);
}

// Waits for a daemon's --metrics-address-file; "HOST:PORT".
absl::StatusOr<std::string> ReadAddressFile(const fs::path& path, absl::Duration timeout) {
  std::string address;
  WaitFor(
      [&] {
        const std::string text = ReadFileToString(path.string(), 1024).value_or("");
        if (text.empty() || text.back() != '\n') return false;
        address = std::string(absl::StripTrailingAsciiWhitespace(text));
        return true;
      },
      timeout);
  if (address.empty()) {
    return absl::DeadlineExceededError(absl::StrCat(path.string(), " was not written"));
  }
  return address;
}

// A `prometheus` server of this test: its configuration, storage and log in `dir`.
class PrometheusServer {
 public:
  static absl::StatusOr<std::unique_ptr<PrometheusServer>> Start(const fs::path& dir,
                                                                 const std::string& config) {
    std::error_code error;
    fs::create_directories(dir, error);
    const fs::path config_path = dir / "prometheus.yml";
    std::ofstream(config_path) << config;
    std::string last_log;
    // Another process may take the port between FreePort() and Prometheus's bind: retry.
    for (int attempt = 1; attempt <= 5; ++attempt) {
      QTRAIN_ASSIGN_OR_RETURN(const int port, FreePort());
      const std::string address = absl::StrCat("127.0.0.1:", port);
      const fs::path log = dir / absl::StrCat("prometheus-", attempt, ".log");
      QTRAIN_ASSIGN_OR_RETURN(
          std::unique_ptr<Process> process,
          Process::Spawn({"/usr/bin/prometheus", "--config.file=" + config_path.string(),
                          "--storage.tsdb.path=" + (dir / absl::StrCat("data-", attempt)).string(),
                          "--web.listen-address=" + address, "--log.level=info"},
                         {}, log));
      std::unique_ptr<PrometheusServer> server(new PrometheusServer(address, std::move(process)));
      const bool ready = WaitFor(
          [&] {
            if (server->process_->Poll()) return true;
            absl::StatusOr<testing_http::HttpResponse> r =
                HttpGet(address, "/-/ready", absl::Seconds(2));
            return r.ok() && r->status == 200;
          },
          absl::Seconds(30), absl::Milliseconds(100));
      if (ready && !server->process_->exited()) return server;
      last_log = server->process_->Log();
      if (!absl::StrContains(last_log, "address already in use")) break;
    }
    return absl::UnavailableError(absl::StrCat("prometheus did not start: ", last_log));
  }

  const std::string& address() const { return address_; }
  const Process& process() const { return *process_; }

  // GET /api/v1/PATH?QUERY (or POST with `form`); the "data" of a successful answer.
  absl::StatusOr<json> Api(const std::string& path, const std::string& form = "") {
    QTRAIN_ASSIGN_OR_RETURN(testing_http::HttpResponse response,
                            HttpRequest(address_, form.empty() ? "GET" : "POST", "/api/v1/" + path,
                                        form, absl::Seconds(20)));
    const json answer = json::parse(response.body, nullptr, /*allow_exceptions=*/false);
    if (response.status != 200 || !answer.is_object() || answer.value("status", "") != "success") {
      return absl::InternalError(absl::StrCat("/api/v1/", path, " answered ", response.status, ": ",
                                              response.body.substr(0, 2000)));
    }
    return answer["data"];
  }
  // The instant vector of `expr` now.
  absl::StatusOr<json> Query(const std::string& expr) {
    QTRAIN_ASSIGN_OR_RETURN(json data, Api("query", "query=" + UrlEncode(expr)));
    return data["result"];
  }
  // The range result of `expr` over [start, end] with a 1 s step.
  absl::StatusOr<json> QueryRange(const std::string& expr, absl::Time start, absl::Time end) {
    QTRAIN_ASSIGN_OR_RETURN(
        json data,
        Api("query_range",
            absl::StrCat("query=", UrlEncode(expr), "&start=", absl::ToUnixSeconds(start),
                         "&end=", absl::ToUnixSeconds(end) + 1, "&step=", kScrapeSeconds)));
    return data["result"];
  }
  // The series matching `selector` over [start, end].
  absl::StatusOr<json> Series(const std::string& selector, absl::Time start, absl::Time end) {
    return Api("series",
               absl::StrCat("match[]=", UrlEncode(selector), "&start=", absl::ToUnixSeconds(start),
                            "&end=", absl::ToUnixSeconds(end) + 1));
  }

 private:
  PrometheusServer(std::string address, std::unique_ptr<Process> process)
      : address_(std::move(address)), process_(std::move(process)) {}
  std::string address_;
  std::unique_ptr<Process> process_;
};

// One query of the dashboard: where it is and its expression.
struct PanelQuery {
  std::string panel;  // title
  std::string expr;
};
void CollectQueries(const json& panels, std::vector<PanelQuery>* out) {
  if (!panels.is_array()) return;
  for (const json& panel : panels) {
    if (!panel.is_object()) continue;
    const std::string title = panel.value("title", "(untitled)");
    if (panel.contains("targets") && panel["targets"].is_array()) {
      for (const json& target : panel["targets"]) {
        if (target.is_object() && target.contains("expr") && target["expr"].is_string()) {
          out->push_back({title, target["expr"].get<std::string>()});
        }
      }
    }
    if (panel.contains("panels")) CollectQueries(panel["panels"], out);  // a row's panels
  }
}

// The expression as Grafana sends it for this job, `stage` (a regex) and a window of
// `range_seconds`.
std::string Substitute(std::string expr, const std::string& job_id, const std::string& stage,
                       int64_t range_seconds) {
  const std::string rate = absl::StrCat(kRateIntervalSeconds, "s");
  const std::string interval = absl::StrCat(kScrapeSeconds, "s");
  const std::string range = absl::StrCat(range_seconds, "s");
  // Longest names first: $__interval is a prefix of $__interval_ms.
  return absl::StrReplaceAll(expr, {{"${__rate_interval}", rate},
                                    {"$__rate_interval", rate},
                                    {"${__interval}", interval},
                                    {"$__interval", interval},
                                    {"${__range}", range},
                                    {"$__range", range},
                                    {"${job_id}", job_id},
                                    {"$job_id", job_id},
                                    {"${stage}", stage},
                                    {"$stage", stage}});
}

class MetricsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ =
        new fs::path(fs::path(::testing::TempDir()) / ("metrics_" + std::to_string(::getpid())));
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    testing_cli::TrainingDataOptions options;
    options.words = {"each", "scrape", "reads", "the",   "gauges", "and",   "counters",
                     "of",   "every",  "rank",  "while", "it",     "trains"};
    options.word_count = 20000;
    options.seed = 31;
    options.shard_tokens = 5000;
    absl::StatusOr<testing_cli::TrainingData> data =
        testing_cli::PrepareTrainingData(*root_ / "data", options);
    ASSERT_TRUE(data.ok()) << data.status();
    data_ = new testing_cli::TrainingData(*std::move(data));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
    delete data_;
    root_ = nullptr;
    data_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(data_, nullptr) << "the training data could not be made";
    if (::access("/usr/bin/prometheus", X_OK) != 0) {
      GTEST_FAIL() << "/usr/bin/prometheus is missing: install Debian's prometheus "
                      "(scripts/setup.sh)";
    }
    testing_service::ForgetLogs();
    watchdog_ = std::make_unique<testing_service::Watchdog>(kTestTimeout);
    dir_ = *root_ / ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "logs");
  }

  void TearDown() override {
    if (HasFailure() || std::getenv("QTRAIN_SERVICE_TEST_LOGS") != nullptr) {
      std::cerr << "---- service logs ----\n" << testing_service::AllLogs() << "\n";
    }
    prometheus_.reset();
    workers_.clear();  // training children first, then the daemons
    coordinator_.reset();
    watchdog_.reset();
  }

  // Two stages of 10 and 8 steps, a checkpoint every 2 steps and an evaluation every 4; `world`
  // is the body of its world section.
  static std::string SpecText(const std::string& name, const std::string& world =
                                                           "min_workers: 2, max_workers: 2, "
                                                           "regroup_seconds: 30, max_restarts: 3") {
    return absl::StrCat(
        "name: ", name, "\nseed: 5\n",
        "model: {config: {vocab_size: 320, hidden_size: 32, intermediate_size: 48, "
        "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
        "max_position_embeddings: 128}}\n",
        "tokenizer: ", data_->tokenizer.string(), "\n",
        "data: {manifest: ", data_->manifest.string(), ", validation_fraction: 0.1}\n",
        "curriculum:\n", "  - {name: short, seq_len: 32, tokens: 2560, micro_batch: 2}\n",
        "  - {name: long, seq_len: 64, tokens: 2048, micro_batch: 1}\n",
        "optimizer: {lr: 1e-2, min_lr: 1e-3, warmup_steps: 2}\n", "batch: {global_tokens: 256}\n",
        "checkpoint: {every_steps: 2, keep_last: 2}\n",
        "eval: {every_steps: 4, batches: 2, tasks: [{task: perplexity, data: ",
        data_->manifest.string(), ", seq_len: 32, limit: 2}]}\n", "world: {", world, "}\n");
  }

  void WriteTokens() {
    // Distinctive: a match anywhere is a leak, not a coincidence.
    user_token_ = absl::StrCat("qtusr-", ::getpid(), "-5d1f0a9c3e7b2846");
    cluster_token_ = absl::StrCat("qtclu-", ::getpid(), "-b83e4c07d2a9f615");
    std::ofstream(dir_ / "user.token") << user_token_ << "\n";
    std::ofstream(dir_ / "cluster.token") << cluster_token_ << "\n";
  }

  void StartCoordinator(double lease_seconds = 10) {
    testing_service::CoordinatorOptions options;
    options.state_dir = dir_ / "state";
    options.run_root = dir_ / "runs";
    options.lease_seconds = lease_seconds;
    options.log_dir = dir_ / "logs";
    options.extra_flags = {"--auth-token-file",      (dir_ / "user.token").string(),
                           "--cluster-token-file",   (dir_ / "cluster.token").string(),
                           "--metrics-listen",       "127.0.0.1:0",
                           "--metrics-address-file", (dir_ / "coordinator.metrics").string()};
    auto coordinator = Coordinator::Start(options);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = *std::move(coordinator);
    client_ = std::make_unique<Client>(coordinator_->address(), dir_ / "logs");
    client_->set_flags({"--auth-token-file", (dir_ / "user.token").string()});
    absl::StatusOr<std::string> metrics =
        ReadAddressFile(dir_ / "coordinator.metrics", absl::Seconds(20));
    ASSERT_TRUE(metrics.ok()) << metrics.status();
    coordinator_metrics_ = *metrics;
  }

  void StartWorker(const std::string& name) {
    testing_service::WorkerOptions options;
    options.coordinator = coordinator_->address();
    options.work_dir = dir_ / "workers" / name;
    options.name = name;
    options.threads = 1;
    options.env = {"OMP_NUM_THREADS=1", absl::StrCat("QTRAIN_TEST_STEP_DELAY_MS=", kStepDelayMs)};
    const fs::path metrics_file = dir_ / (name + ".metrics");
    options.extra_flags = {"--peer-host", "127.0.0.1", "--cluster-token-file",
                           (dir_ / "cluster.token").string(), "--metrics-listen", "127.0.0.1:0",
                           "--metrics-address-file", metrics_file.string(),
                           // A CPU has no known peak: given, the MFU series exists. Far
                           // above what this tiny model reaches on a CPU (a stage's first
                           // step, measured alone, reached 1e10 here), so the MFU stays a
                           // fraction on any machine.
                           "--peak-flops", "1e13"};
    options.log = dir_ / "logs" / (name + ".log");
    auto worker = Worker::Start(options);
    ASSERT_TRUE(worker.ok()) << worker.status();
    workers_.push_back(*std::move(worker));
    absl::StatusOr<std::string> id = workers_.back()->WaitForId(absl::Seconds(20));
    ASSERT_TRUE(id.ok()) << id.status();
    absl::StatusOr<std::string> metrics = ReadAddressFile(metrics_file, absl::Seconds(20));
    ASSERT_TRUE(metrics.ok()) << metrics.status();
    worker_metrics_.push_back(*metrics);
  }

  std::string PrometheusConfig() const {
    std::vector<std::string> workers;
    for (const std::string& address : worker_metrics_) workers.push_back("\"" + address + "\"");
    return absl::StrCat("global: {scrape_interval: ", kScrapeSeconds,
                        "s, scrape_timeout: ", kScrapeSeconds,
                        "s, evaluation_interval: ", kScrapeSeconds, "s}\n", "rule_files: [\"",
                        (SourceDir() / "deploy" / "prometheus" / "rules.yml").string(), "\"]\n",
                        "scrape_configs:\n", "  - job_name: qtrain-coordinator\n",
                        "    static_configs: [{targets: [\"", coordinator_metrics_, "\"]}]\n",
                        "  - job_name: qtrain-worker\n", "    static_configs: [{targets: [",
                        absl::StrJoin(workers, ", "), "]}]\n");
  }

  // Starts Prometheus on the started daemons and waits until it scrapes them all and sees the
  // workers connected.
  void StartPrometheus() {
    absl::StatusOr<std::unique_ptr<PrometheusServer>> prometheus =
        PrometheusServer::Start(dir_ / "prometheus", PrometheusConfig());
    ASSERT_TRUE(prometheus.ok()) << prometheus.status();
    prometheus_ = *std::move(prometheus);
    const double targets = 1.0 + worker_metrics_.size();
    std::string last;
    ASSERT_TRUE(WaitForQuery(
        "sum(up{job=~\"qtrain-coordinator|qtrain-worker\"})",
        [&](double v) { return v == targets; }, absl::Seconds(30), &last))
        << "the targets are not up: " << last;
    ASSERT_TRUE(WaitForQuery(
        "sum(qtrain_worker_up)", [&](double v) { return v == targets - 1; }, absl::Seconds(30),
        &last))
        << "the workers are not connected: " << last;
  }

  // Polls Prometheus until the alert fires for `job_id` (any job when empty); its entry of
  // /api/v1/alerts.
  absl::StatusOr<json> WaitForAlert(const std::string& name, const std::string& job_id,
                                    absl::Duration timeout) {
    json found;
    std::string last;
    WaitFor(
        [&] {
          absl::StatusOr<json> alerts = prometheus_->Api("alerts");
          if (!alerts.ok()) {
            last = alerts.status().ToString();
            return false;
          }
          last = alerts->dump();
          for (const json& alert : (*alerts)["alerts"]) {
            const json& labels = alert["labels"];
            if (labels.value("alertname", "") == name && alert.value("state", "") == "firing" &&
                (job_id.empty() || labels.value("job_id", "") == job_id)) {
              found = alert;
              return true;
            }
          }
          return false;
        },
        timeout, absl::Milliseconds(250));
    if (found.is_null()) {
      return absl::DeadlineExceededError(absl::StrCat(name, " did not fire: ", last));
    }
    return found;
  }

  // Polls Prometheus until `expr` has a sample whose value satisfies `accept`.
  bool WaitForQuery(const std::string& expr, const std::function<bool(double)>& accept,
                    absl::Duration timeout, std::string* last) {
    return WaitFor(
        [&] {
          absl::StatusOr<json> result = prometheus_->Query(expr);
          if (!result.ok()) {
            *last = result.status().ToString();
            return false;
          }
          *last = result->dump();
          for (const json& sample : *result) {
            const std::string value = sample["value"][1].get<std::string>();
            if (accept(std::strtod(value.c_str(), nullptr))) return true;
          }
          return false;
        },
        timeout, absl::Milliseconds(250));
  }

  // Every /metrics body now, by address.
  std::vector<std::pair<std::string, std::string>> ScrapeAll() {
    std::vector<std::pair<std::string, std::string>> bodies;
    std::vector<std::string> addresses = worker_metrics_;
    addresses.push_back(coordinator_metrics_);
    for (const std::string& address : addresses) {
      absl::StatusOr<testing_http::HttpResponse> response = HttpGet(address, "/metrics");
      EXPECT_TRUE(response.ok()) << address << ": " << response.status();
      if (!response.ok()) continue;
      EXPECT_EQ(response->status, 200) << address;
      bodies.emplace_back(address, response->body);
    }
    return bodies;
  }

  void ExpectNoToken(const std::string& what, const std::string& text) {
    EXPECT_FALSE(absl::StrContains(text, user_token_)) << "the user token is in " << what;
    EXPECT_FALSE(absl::StrContains(text, cluster_token_)) << "the cluster token is in " << what;
  }

  static fs::path* root_;
  static testing_cli::TrainingData* data_;
  std::unique_ptr<testing_service::Watchdog> watchdog_;
  fs::path dir_;
  std::string user_token_, cluster_token_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<Client> client_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<PrometheusServer> prometheus_;
  std::string coordinator_metrics_;
  std::vector<std::string> worker_metrics_;
};

fs::path* MetricsTest::root_ = nullptr;
testing_cli::TrainingData* MetricsTest::data_ = nullptr;

TEST_F(MetricsTest, PrometheusScrapesATrainingJobAndEveryDashboardQueryHasData) {
  WriteTokens();
  ASSERT_NO_FATAL_FAILURE(StartCoordinator());
  ASSERT_NO_FATAL_FAILURE(StartWorker("w0"));
  ASSERT_NO_FATAL_FAILURE(StartWorker("w1"));

  // Only /metrics is served.
  for (const std::string& address :
       {coordinator_metrics_, worker_metrics_[0], worker_metrics_[1]}) {
    for (const char* path : {"/", "/metric", "/metrics/x", "/api/v1/query", "/favicon.ico"}) {
      absl::StatusOr<testing_http::HttpResponse> response = HttpGet(address, path);
      ASSERT_TRUE(response.ok()) << address << path << ": " << response.status();
      EXPECT_EQ(response->status, 404) << address << path << ": " << response->body;
    }
  }

  ASSERT_NO_FATAL_FAILURE(StartPrometheus());
  std::string last;

  const absl::Time start = absl::Now() - absl::Seconds(2);
  // An RPC that fails: the error panels have data.
  const testing_service::CliOutput missing = client_->Run({"get", "no-such-job"});
  EXPECT_FALSE(missing.ok()) << missing.Describe();

  std::ofstream(dir_ / "job.yaml") << SpecText("metrics");
  absl::StatusOr<json> submitted =
      client_->Json({"submit", (dir_ / "job.yaml").string(), "--request-id", "metrics-1"});
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  const std::string id = JobId(*submitted);

  // While it trains: the bodies carry no token.
  ASSERT_TRUE(WaitForQuery(
      absl::StrCat("count(qtrain_step{job_id=\"", id, "\"} >= 4)"), [](double v) { return v == 2; },
      kJobTimeout, &last))
      << "the job's ranks were not seen training: " << last;
  for (const auto& [address, body] : ScrapeAll()) {
    ExpectNoToken("the /metrics body of " + address, body);
    EXPECT_TRUE(absl::StrContains(body, "job_id=\"" + id + "\"")) << address << ":\n" << body;
  }

  absl::StatusOr<json> done = testing_service::WaitForJob(
      *client_, id, [](const json& job) { return testing_service::IsTerminal(JobState(job)); },
      kJobTimeout);
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(JobState(*done), "JOB_STATE_SUCCEEDED") << done->dump();
  // Prometheus has scraped the end.
  ASSERT_TRUE(WaitForQuery(
      "qtrain_jobs{state=\"SUCCEEDED\"}", [](double v) { return v >= 1; }, absl::Seconds(20),
      &last))
      << last;
  // A finished job leaves no series behind: the workers' per-assignment series and the
  // coordinator's per-job ones went out of the scrapes (Prometheus marks them stale).
  for (const std::string& selector :
       {absl::StrCat("{job=\"qtrain-worker\",job_id=\"", id, "\"}"),
        absl::StrCat("{job=\"qtrain-coordinator\",job_id=\"", id, "\"}")}) {
    EXPECT_TRUE(WaitFor(
        [&] {
          absl::StatusOr<json> result = prometheus_->Query(selector);
          last = result.ok() ? result->dump() : result.status().ToString();
          return result.ok() && result->empty();
        },
        absl::Seconds(20), absl::Milliseconds(250)))
        << selector << " still has series after the job ended: " << last;
  }
  const absl::Time end = absl::Now();
  const int64_t range_seconds = absl::ToInt64Seconds(end - start) + 1;

  // Every dashboard query has data over the job's window, for all stages and for the stages by
  // name.
  const std::string dashboard_path = (SourceDir() / "deploy" / "grafana" / "qtrain.json").string();
  absl::StatusOr<std::string> dashboard_text = ReadFileToString(dashboard_path, 16 << 20);
  ASSERT_TRUE(dashboard_text.ok()) << dashboard_text.status();
  const json dashboard = json::parse(*dashboard_text, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(dashboard.is_object()) << dashboard_path << " is not JSON";
  std::vector<PanelQuery> queries;
  CollectQueries(dashboard["panels"], &queries);
  ASSERT_GE(queries.size(), 20u) << "the dashboard lost its panels";
  std::set<std::string> panels_with_data;
  for (const PanelQuery& query : queries) {
    for (const std::string stage : {".*", "(short|long)"}) {
      const std::string expr = Substitute(query.expr, id, stage, range_seconds);
      EXPECT_FALSE(absl::StrContains(expr, "$")) << query.panel << ": " << expr;
      absl::StatusOr<json> result = prometheus_->QueryRange(expr, start, end);
      ASSERT_TRUE(result.ok()) << query.panel << ": " << expr << ": " << result.status();
      EXPECT_FALSE(result->empty()) << "panel \"" << query.panel << "\" has no data: " << expr;
    }
  }

  std::cerr << queries.size() << " dashboard queries checked over the " << range_seconds
            << " s of job " << id << "\n";

  // Every metric of the contract has a series in the window; the worker series carry the job,
  // both stages and both ranks.
  for (const char* name : kWorkerMetrics) {
    absl::StatusOr<json> series = prometheus_->Series(
        absl::StrCat(name, "{job=\"qtrain-worker\",job_id=\"", id, "\"}"), start, end);
    ASSERT_TRUE(series.ok()) << name << ": " << series.status();
    std::set<std::string> ranks, stages;
    for (const json& labels : *series) {
      ranks.insert(labels.value("rank", ""));
      stages.insert(labels.value("stage", ""));
    }
    EXPECT_EQ(ranks, (std::set<std::string>{"0", "1"})) << name << ": " << series->dump();
    EXPECT_EQ(stages, (std::set<std::string>{"short", "long"})) << name << ": " << series->dump();
  }
  absl::StatusOr<json> worker_up = prometheus_->Series("qtrain_worker_up", start, end);
  ASSERT_TRUE(worker_up.ok()) << worker_up.status();
  EXPECT_EQ(worker_up->size(), 2u) << worker_up->dump();
  for (const char* name : kCoordinatorMetrics) {
    absl::StatusOr<json> series =
        prometheus_->Series(absl::StrCat(name, "{job=\"qtrain-coordinator\"}"), start, end);
    ASSERT_TRUE(series.ok()) << name << ": " << series.status();
    EXPECT_FALSE(series->empty()) << name << " has no series";
  }
  // The always-present label values.
  const auto label_values = [&](const std::string& selector, const std::string& label) {
    std::set<std::string> values;
    absl::StatusOr<json> series = prometheus_->Series(selector, start, end);
    EXPECT_TRUE(series.ok()) << selector << ": " << series.status();
    if (series.ok()) {
      for (const json& labels : *series) values.insert(labels.value(label, ""));
    }
    return values;
  };
  EXPECT_EQ(label_values("qtrain_jobs", "state"),
            (std::set<std::string>{"QUEUED", "SCHEDULING", "RUNNING", "RESTARTING", "SUCCEEDED",
                                   "FAILED", "CANCELLING", "CANCELLED"}));
  EXPECT_EQ(label_values("qtrain_workers", "state"),
            (std::set<std::string>{"IDLE", "ASSIGNED", "DRAINING", "LOST"}));
  EXPECT_EQ(label_values("qtrain_checkpoints_total", "state"),
            (std::set<std::string>{"COMMITTED", "FAILED"}));
  EXPECT_EQ(label_values("qtrain_rpc_total{method=\"qtrain.v1.JobService/GetJob\"}", "code")
                .count("NOT_FOUND"),
            1u)
      << "the failed GetJob is not counted";
  // The checkpoints were counted, and the MFU is a fraction.
  ASSERT_TRUE(WaitForQuery(
      "qtrain_checkpoints_total{state=\"COMMITTED\"}", [](double v) { return v >= 1; },
      absl::Seconds(5), &last))
      << "the job's checkpoints are not counted: " << last;
  absl::StatusOr<json> mfu = prometheus_->QueryRange(
      absl::StrCat("qtrain_model_flops_utilization{job_id=\"", id, "\"}"), start, end);
  ASSERT_TRUE(mfu.ok()) << mfu.status();
  for (const json& series : *mfu) {
    for (const json& point : series["values"]) {
      const double value = std::strtod(point[1].get<std::string>().c_str(), nullptr);
      EXPECT_GT(value, 0) << series.dump();
      EXPECT_LE(value, 1) << series.dump();
    }
  }

  // The alert rules loaded and evaluate without errors on the real series.
  absl::StatusOr<json> rules = prometheus_->Api("rules");
  ASSERT_TRUE(rules.ok()) << rules.status();
  std::set<std::string> alerts;
  for (const json& group : (*rules)["groups"]) {
    for (const json& rule : group["rules"]) {
      alerts.insert(rule.value("name", ""));
      EXPECT_EQ(rule.value("health", ""), "ok") << rule.dump();
    }
  }
  EXPECT_EQ(alerts,
            (std::set<std::string>{"QtrainJobFailed", "QtrainJobRestartsRising", "QtrainJobStalled",
                                   "QtrainLossNotFinite", "QtrainLossSpike", "QtrainLeaseExpiries",
                                   "QtrainWorkerDown"}));
  // A healthy job fires none of them.
  absl::StatusOr<json> firing = prometheus_->Query("ALERTS{alertstate=\"firing\"}");
  ASSERT_TRUE(firing.ok()) << firing.status();
  EXPECT_TRUE(firing->empty()) << firing->dump();

  // No token in a metrics body now, nor in any log of any process (coordinator, workers and
  // their training children, client runs, Prometheus).
  for (const auto& [address, body] : ScrapeAll()) {
    ExpectNoToken("the /metrics body of " + address, body);
  }
  prometheus_.reset();
  workers_.clear();
  coordinator_.reset();
  int logs = 0;
  for (const auto& entry : fs::recursive_directory_iterator(dir_)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".log") continue;
    ++logs;
    ExpectNoToken(entry.path().string(),
                  ReadFileToString(entry.path().string(), 256 << 20).value_or(""));
  }
  EXPECT_GE(logs, 4) << "the logs of the coordinator, the workers and Prometheus";
}

// The alerts on real series: a job whose training child is killed restarts
// (QtrainJobRestartsRising, naming the job); killed again with no restart left, it fails
// (QtrainJobFailed). Then the worker daemon is killed: its target is down (QtrainWorkerDown
// pending: it fires after 2 minutes) and its lease expires (QtrainLeaseExpiries).
TEST_F(MetricsTest, RestartFailureLeaseAndDownAlertsFireOnRealSeries) {
  WriteTokens();
  ASSERT_NO_FATAL_FAILURE(StartCoordinator(/*lease_seconds=*/5));
  ASSERT_NO_FATAL_FAILURE(StartWorker("w0"));
  ASSERT_NO_FATAL_FAILURE(StartPrometheus());
  std::string last;
  ASSERT_TRUE(WaitForQuery(
      "qtrain_jobs{state=\"FAILED\"}", [](double v) { return v == 0; }, absl::Seconds(10), &last))
      << last;

  std::ofstream(dir_ / "job.yaml")
      << SpecText("doomed", "min_workers: 1, max_workers: 1, regroup_seconds: 1, max_restarts: 1");
  absl::StatusOr<json> submitted =
      client_->Json({"submit", (dir_ / "job.yaml").string(), "--request-id", "doomed-1"});
  ASSERT_TRUE(submitted.ok()) << submitted.status();
  const std::string id = JobId(*submitted);
  Worker& worker = *workers_[0];
  // Prometheus has seen the job with no restart, then its child dies.
  ASSERT_TRUE(WaitForQuery(
      absl::StrCat("qtrain_job_restarts_total{job_id=\"", id, "\"}"),
      [](double v) { return v == 0; }, kJobTimeout, &last))
      << last;
  absl::StatusOr<testing_service::ProcessId> child = worker.WaitForTrainingChild(kJobTimeout);
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_EQ(::kill(child->pid, SIGKILL), 0);

  absl::StatusOr<json> restarting = WaitForAlert("QtrainJobRestartsRising", id, kJobTimeout);
  ASSERT_TRUE(restarting.ok()) << restarting.status();
  EXPECT_EQ((*restarting)["labels"].value("severity", ""), "warning") << restarting->dump();
  EXPECT_TRUE(absl::StrContains((*restarting)["annotations"].value("summary", ""), id))
      << restarting->dump();

  // The restarted round trains; its child dies too: no restart is left.
  absl::StatusOr<testing_service::ProcessId> second = worker.WaitForTrainingChild(kJobTimeout);
  ASSERT_TRUE(second.ok()) << second.status();
  ASSERT_NE(second->pid, child->pid);
  ASSERT_EQ(::kill(second->pid, SIGKILL), 0);
  absl::StatusOr<json> done = testing_service::WaitForJob(
      *client_, id, [](const json& job) { return testing_service::IsTerminal(JobState(job)); },
      kJobTimeout);
  ASSERT_TRUE(done.ok()) << done.status();
  ASSERT_EQ(JobState(*done), "JOB_STATE_FAILED") << done->dump();

  absl::StatusOr<json> failed = WaitForAlert("QtrainJobFailed", "", absl::Seconds(30));
  ASSERT_TRUE(failed.ok()) << failed.status();
  EXPECT_EQ((*failed)["labels"].value("severity", ""), "critical") << failed->dump();
  EXPECT_EQ((*failed)["labels"].value("job", ""), "qtrain-coordinator") << failed->dump();
  // Nothing else is wrong: the loss stayed finite and the worker up.
  absl::StatusOr<json> others = prometheus_->Query(
      "ALERTS{alertstate=\"firing\", alertname!~\"QtrainJobFailed|QtrainJobRestartsRising\"}");
  ASSERT_TRUE(others.ok()) << others.status();
  EXPECT_TRUE(others->empty()) << others->dump();

  worker.Kill();
  const std::string instance = worker_metrics_[0];
  EXPECT_TRUE(WaitFor(
      [&] {
        absl::StatusOr<json> pending = prometheus_->Query(absl::StrCat(
            "ALERTS{alertname=\"QtrainWorkerDown\", alertstate=\"pending\", instance=\"", instance,
            "\", job=\"qtrain-worker\"}"));
        last = pending.ok() ? pending->dump() : pending.status().ToString();
        return pending.ok() && !pending->empty();
      },
      absl::Seconds(30), absl::Milliseconds(250)))
      << "QtrainWorkerDown is not pending for the killed worker: " << last;
  absl::StatusOr<json> expired = WaitForAlert("QtrainLeaseExpiries", "", absl::Seconds(40));
  ASSERT_TRUE(expired.ok()) << expired.status();
  EXPECT_EQ((*expired)["labels"].value("severity", ""), "warning") << expired->dump();
}

}  // namespace
}  // namespace qtrain
