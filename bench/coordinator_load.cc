// Load test of qtrain-coordinator: many idle workers heartbeating and a few clients watching a
// job, against the real binary.
//
//   build/bin/coordinator_load [--workers 1000] [--watchers 10] [--seconds 60]
//                              [--coordinator build/bin/qtrain-coordinator]
//
// It starts the coordinator (a temporary state directory and run root, --listen 127.0.0.1:0
// --address-file), creates one CPU job (min_workers 1), registers --workers simulated CUDA
// workers (so the job never gets a group and stays QUEUED), opens one Heartbeat stream per
// worker (spread over --connections TCP connections, one per worker by default) sending a
// HeartbeatRequest every --interval-ms, staggered evenly, plus --watchers WatchJob streams on
// the job. After --warmup-seconds it measures for --seconds: each heartbeat's latency (write
// started -> its response read), heartbeats answered per second, failures, and the
// coordinator's CPU time (utime + stime from /proc/<pid>/stat over the window, in cores) and
// peak RSS. Prints a table and then one JSON line. Goals: p99 < 20 ms, CPU < 0.25 core. Exits 1
// when the coordinator dies or stops badly, or more than 1% of the heartbeats fail.
//
// The streams use gRPC's callback API, so a thousand of them need only gRPC's few threads.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/rpc_channel.h"
#include "common/status_macros.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/client_callback.h"
#include "qtrain/v1/jobs.grpc.pb.h"
#include "qtrain/v1/worker.grpc.pb.h"

namespace qtrain::bench {
namespace {

using Clock = std::chrono::steady_clock;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

struct Flags {
  std::string coordinator;
  int workers = 1000;
  int watchers = 10;
  double seconds = 60;
  double warmup_seconds = 3;
  int interval_ms = 1000;
  int connections = 0;  // 0: one per worker
  std::string work_dir;
  bool keep_work_dir = false;
};

// --- The coordinator process ----------------------------------------------------------------

class CoordinatorProcess {
 public:
  ~CoordinatorProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  absl::Status Start(const std::string& binary, const std::filesystem::path& dir) {
    if (access(binary.c_str(), X_OK) != 0 || std::filesystem::is_directory(binary)) {
      return absl::NotFoundError(
          absl::StrCat("--coordinator ", binary,
                       ": not an executable file (build the qtrain-coordinator "
                       "target, or pass its path)"));
    }
    dir_ = dir;
    log_ = dir / "coordinator.log";
    address_file_ = dir / "address";
    const std::vector<std::string> args = {binary,
                                           "--listen",
                                           "127.0.0.1:0",
                                           "--address-file",
                                           address_file_.string(),
                                           "--state-dir",
                                           (dir / "state").string(),
                                           "--run-root",
                                           (dir / "runs").string()};
    std::vector<char*> argv;
    for (const std::string& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
    if (pid == 0) {
      // Only async-signal-safe calls until exec.
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
      }
      execv(argv[0], argv.data());
      _exit(127);
    }
    pid_ = pid;
    return absl::OkStatus();
  }

  // Waits for --address-file; fails if the coordinator exits first.
  absl::StatusOr<std::string> WaitForAddress(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      if (!Alive()) {
        return absl::FailedPreconditionError(absl::StrCat("the coordinator exited before serving (",
                                                          DescribeExit(), ")\n", LogTail()));
      }
      std::ifstream file(address_file_);
      std::string address;
      if (file && std::getline(file, address) && !address.empty()) return address;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return absl::DeadlineExceededError(absl::StrCat("the coordinator wrote no address file within ",
                                                    absl::FormatDuration(timeout), "\n",
                                                    LogTail()));
  }

  // False once it has exited (reaped here).
  bool Alive() {
    if (pid_ <= 0) return false;
    int status = 0;
    const pid_t got = waitpid(pid_, &status, WNOHANG);
    if (got == pid_) {
      exit_status_ = status;
      pid_ = -1;
      return false;
    }
    return true;
  }

  // SIGTERM, then SIGKILL after `grace`. OK when it exited 0 on its own.
  absl::Status Stop(absl::Duration grace) {
    if (!Alive()) return absl::InternalError("the coordinator was already gone");
    kill(pid_, SIGTERM);
    const absl::Time deadline = absl::Now() + grace;
    while (Alive() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(20));
    if (Alive()) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &exit_status_, 0);
      pid_ = -1;
      return absl::DeadlineExceededError(absl::StrCat("the coordinator did not exit within ",
                                                      absl::FormatDuration(grace), " of SIGTERM"));
    }
    if (!WIFEXITED(exit_status_) || WEXITSTATUS(exit_status_) != 0) {
      return absl::InternalError(absl::StrCat("the coordinator stopped badly on SIGTERM (",
                                              DescribeExit(), ")\n", LogTail()));
    }
    return absl::OkStatus();
  }

  pid_t pid() const { return pid_; }

  std::string DescribeExit() const {
    if (WIFEXITED(exit_status_)) return absl::StrCat("exit code ", WEXITSTATUS(exit_status_));
    if (WIFSIGNALED(exit_status_)) return absl::StrCat("signal ", WTERMSIG(exit_status_));
    return absl::StrCat("wait status ", exit_status_);
  }

  std::string LogTail() const {
    std::ifstream file(log_);
    std::deque<std::string> lines;
    for (std::string line; std::getline(file, line);) {
      lines.push_back(line);
      if (lines.size() > 15) lines.pop_front();
    }
    std::string out = absl::StrCat("last lines of ", log_.string(), ":");
    for (const std::string& line : lines) absl::StrAppend(&out, "\n  ", line);
    return out;
  }

 private:
  pid_t pid_ = -1;
  int exit_status_ = 0;
  std::filesystem::path dir_, log_, address_file_;
};

// CPU seconds (user + system) and peak RSS of a process, from /proc.
struct ProcessUsage {
  double cpu_seconds = 0;
  int64_t peak_rss_bytes = 0;
};

absl::StatusOr<ProcessUsage> ReadUsage(pid_t pid) {
  ProcessUsage usage;
  std::ifstream stat_file(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) {
    return absl::NotFoundError(absl::StrCat("cannot read /proc/", pid, "/stat"));
  }
  std::istringstream fields(stat.substr(close + 2));
  std::string field;
  // Fields 3.. follow; utime and stime are fields 14 and 15.
  int64_t utime = 0, stime = 0;
  for (int index = 3; index <= 15 && fields >> field; ++index) {
    if (index == 14) utime = std::stoll(field);
    if (index == 15) stime = std::stoll(field);
  }
  usage.cpu_seconds =
      static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
  std::ifstream status_file(absl::StrCat("/proc/", pid, "/status"));
  for (std::string line; std::getline(status_file, line);) {
    if (line.rfind("VmHWM:", 0) == 0) {
      usage.peak_rss_bytes = std::stoll(line.substr(6)) * 1024;  // "VmHWM:   1234 kB"
    }
  }
  return usage;
}

// --- Measurements ---------------------------------------------------------------------------

// What every stream reports into. Heartbeats count when they were sent inside the window.
class LoadStats {
 public:
  void SetWindow(int64_t start_ns, int64_t end_ns) {
    window_start_ns_.store(start_ns);
    window_end_ns_.store(end_ns);
  }
  bool InWindow(int64_t t) const {
    return t >= window_start_ns_.load() && t < window_end_ns_.load();
  }

  void Sent(int64_t t) {
    if (InWindow(t)) sent_.fetch_add(1);
  }
  void Answered(int64_t sent_ns, int64_t now_ns) {
    if (!InWindow(sent_ns)) return;
    answered_.fetch_add(1);
    absl::MutexLock lock(&mu_);
    latencies_ns_.push_back(now_ns - sent_ns);
  }
  // A heartbeat that could not be sent (its stream broke) or was never answered.
  void Failed(int64_t sent_ns) {
    if (InWindow(sent_ns)) failed_.fetch_add(1);
  }
  void StreamError(const std::string& what) {
    stream_errors_.fetch_add(1);
    absl::MutexLock lock(&mu_);
    if (first_errors_.size() < 5) first_errors_.push_back(what);
  }
  void Unsolicited() { unsolicited_.fetch_add(1); }
  void Directive() { directives_.fetch_add(1); }
  void MissingLease() { missing_lease_.fetch_add(1); }
  void WatchEvent() { watch_events_.fetch_add(1); }

  int64_t sent() const { return sent_.load(); }
  int64_t answered() const { return answered_.load(); }
  int64_t failed() const { return failed_.load(); }
  int64_t stream_errors() const { return stream_errors_.load(); }
  int64_t unsolicited() const { return unsolicited_.load(); }
  int64_t directives() const { return directives_.load(); }
  int64_t missing_lease() const { return missing_lease_.load(); }
  int64_t watch_events() const { return watch_events_.load(); }
  std::vector<int64_t> latencies() const {
    absl::MutexLock lock(&mu_);
    return latencies_ns_;
  }
  std::vector<std::string> first_errors() const {
    absl::MutexLock lock(&mu_);
    return first_errors_;
  }

 private:
  std::atomic<int64_t> window_start_ns_{INT64_MAX}, window_end_ns_{INT64_MAX};
  std::atomic<int64_t> sent_{0}, answered_{0}, failed_{0}, stream_errors_{0}, unsolicited_{0},
      directives_{0}, missing_lease_{0}, watch_events_{0};
  mutable absl::Mutex mu_;
  std::vector<int64_t> latencies_ns_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> first_errors_ ABSL_GUARDED_BY(mu_);
};

// Counts streams that have finished (OnDone), so teardown can wait for all of them.
class DoneCounter {
 public:
  void Done() {
    absl::MutexLock lock(&mu_);
    ++done_;
  }
  bool WaitFor(int count, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto reached = [this, count]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ >= count; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }

 private:
  absl::Mutex mu_;
  int done_ ABSL_GUARDED_BY(mu_) = 0;
};

// --- One simulated worker's Heartbeat stream --------------------------------------------------

// The gRPC calls (StartWrite, RemoveHold, ...) are made outside mu_: some complete inline and
// call back into the reactor.
class HeartbeatStream final
    : public grpc::ClientBidiReactor<v1::HeartbeatRequest, v1::HeartbeatResponse> {
 public:
  HeartbeatStream(v1::WorkerService::Stub* stub, std::string worker, LoadStats* stats,
                  DoneCounter* done)
      : stats_(stats), done_(done) {
    request_.set_worker(std::move(worker));
    request_.set_phase(v1::WORKER_PHASE_IDLE);
    stub->async()->Heartbeat(&context_, this);
    // The hold keeps the stream open for writes started from the scheduler thread; it is
    // released once the stream is closed or broken and no write is in flight.
    AddHold();
    StartRead(&response_);
    StartCall();
  }

  // Sends the next heartbeat (or queues it behind the write in flight).
  void Beat() {
    const int64_t now = NowNs();
    bool write = false;
    {
      absl::MutexLock lock(&mu_);
      if (closing_ || broken_) {
        if (broken_) stats_->Failed(now);
        return;
      }
      outstanding_.push_back(now);
      stats_->Sent(now);
      if (write_in_flight_) {
        ++queued_writes_;
      } else {
        write = PrepareWriteLocked();
      }
    }
    if (write) StartWrite(&request_);
  }

  // Stops writing: WritesDone once no write is in flight, then the hold goes.
  void Close() {
    bool release = false;
    {
      absl::MutexLock lock(&mu_);
      closing_ = true;
      release = TakeHoldLocked();
    }
    if (release) ReleaseHold();
  }

  void Cancel() { context_.TryCancel(); }

  // Heartbeats never answered count as failed.
  void CountUnanswered() {
    absl::MutexLock lock(&mu_);
    for (int64_t sent : outstanding_) stats_->Failed(sent);
    outstanding_.clear();
  }

  void OnWriteDone(bool ok) override {
    bool write = false, release = false;
    {
      absl::MutexLock lock(&mu_);
      write_in_flight_ = false;
      if (!ok && !closing_) MarkBrokenLocked("a heartbeat write failed");
      if (ok && !closing_ && !broken_ && queued_writes_ > 0) {
        --queued_writes_;
        write = PrepareWriteLocked();
      } else {
        release = TakeHoldLocked();
      }
    }
    if (write) StartWrite(&request_);
    if (release) ReleaseHold();
  }

  void OnReadDone(bool ok) override {
    const int64_t now = NowNs();
    if (!ok) {
      bool release = false;
      {
        absl::MutexLock lock(&mu_);
        if (!closing_) MarkBrokenLocked("the coordinator ended the Heartbeat stream");
        release = TakeHoldLocked();
      }
      if (release) ReleaseHold();
      return;
    }
    if (!response_.has_lease_expire_time()) stats_->MissingLease();
    if (response_.has_directive()) stats_->Directive();
    {
      absl::MutexLock lock(&mu_);
      if (outstanding_.empty()) {
        stats_->Unsolicited();
      } else {
        stats_->Answered(outstanding_.front(), now);
        outstanding_.pop_front();
      }
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    {
      absl::MutexLock lock(&mu_);
      if (!closing_ && !broken_ && !status.ok()) {
        stats_->StreamError(absl::StrCat(request_.worker(),
                                         ": Heartbeat ended: ", status.error_message(), " (code ",
                                         static_cast<int>(status.error_code()), ")"));
      }
    }
    done_->Done();
  }

 private:
  bool PrepareWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    request_.set_sequence(++sequence_);
    write_in_flight_ = true;
    return true;
  }
  // True (once) when the hold may go: closed or broken, nothing in flight.
  bool TakeHoldLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (hold_released_ || write_in_flight_ || !(closing_ || broken_)) return false;
    hold_released_ = true;
    return true;
  }
  void ReleaseHold() {
    StartWritesDone();
    RemoveHold();
  }
  void MarkBrokenLocked(const char* why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!broken_) stats_->StreamError(absl::StrCat(request_.worker(), ": ", why));
    broken_ = true;
    for (int64_t sent : outstanding_) stats_->Failed(sent);
    outstanding_.clear();
  }

  LoadStats* stats_;
  DoneCounter* done_;
  grpc::ClientContext context_;
  v1::HeartbeatResponse response_;  // owned by the read chain
  absl::Mutex mu_;
  v1::HeartbeatRequest request_;  // changed only while no write is in flight
  std::deque<int64_t> outstanding_ ABSL_GUARDED_BY(mu_);  // send times awaiting a response
  int64_t sequence_ ABSL_GUARDED_BY(mu_) = 0;
  int queued_writes_ ABSL_GUARDED_BY(mu_) = 0;
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_released_ ABSL_GUARDED_BY(mu_) = false;
};

// --- A WatchJob client --------------------------------------------------------------------------

class Watcher final : public grpc::ClientReadReactor<v1::JobEvent> {
 public:
  Watcher(v1::JobService::Stub* stub, const std::string& job, LoadStats* stats, DoneCounter* done)
      : stats_(stats), done_(done) {
    request_.set_name(job);
    request_.set_include_step_metrics(true);
    stub->async()->WatchJob(&context_, &request_, this);
    StartRead(&event_);
    StartCall();
  }

  void Stop() {
    stopping_.store(true);
    context_.TryCancel();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    stats_->WatchEvent();
    StartRead(&event_);
  }

  void OnDone(const grpc::Status& status) override {
    if (!stopping_.load()) {
      stats_->StreamError(absl::StrCat("WatchJob ended early: ", status.error_message(), " (code ",
                                       static_cast<int>(status.error_code()), ")"));
    }
    done_->Done();
  }

 private:
  LoadStats* stats_;
  DoneCounter* done_;
  grpc::ClientContext context_;
  v1::WatchJobRequest request_;
  v1::JobEvent event_;
  std::atomic<bool> stopping_{false};
};

// --- Setup calls --------------------------------------------------------------------------------

// A valid CPU job that needs one worker; its files are not read at creation.
v1::JobSpec LoadJobSpec(const std::filesystem::path& dir) {
  v1::JobSpec spec;
  spec.set_name("load");
  spec.set_seed(1);
  spec.mutable_model()->set_preset("qwen2-tiny");
  spec.set_tokenizer((dir / "tokenizer.json").string());
  spec.mutable_data()->set_manifest((dir / "shards" / "manifest.json").string());
  v1::CurriculumStage* stage = spec.add_curriculum();
  stage->set_name("short");
  stage->set_seq_len(128);
  stage->set_tokens(4000000);
  stage->set_micro_batch(16);
  spec.mutable_optimizer()->set_lr(6e-4);
  spec.mutable_optimizer()->set_min_lr(6e-5);
  spec.mutable_optimizer()->set_warmup_steps(100);
  spec.mutable_batch()->set_global_tokens(32768);
  spec.mutable_checkpoint()->set_every_steps(100);
  spec.mutable_world()->set_min_workers(1);
  spec.mutable_world()->set_device(v1::DEVICE_KIND_CPU);
  return spec;
}

absl::StatusOr<std::string> CreateJob(const RpcClient& client, const std::filesystem::path& dir) {
  auto stub = v1::JobService::NewStub(client.channel());
  v1::CreateJobRequest request;
  *request.mutable_spec() = LoadJobSpec(dir);
  request.set_request_id(absl::StrCat("coordinator-load-", getpid(), "-", NowNs()));
  v1::Job job;
  auto context = client.NewContext(absl::Seconds(10));
  grpc::Status status = stub->CreateJob(context.get(), request, &job);
  if (!status.ok()) return client.Describe(status, "CreateJob");
  return job.name();
}

// Registers `count` CUDA workers from a few threads; returns their names.
absl::StatusOr<std::vector<std::string>> RegisterWorkers(const RpcClient& client, int count) {
  auto stub = v1::WorkerService::NewStub(client.channel());
  std::vector<std::string> names(count);
  std::vector<absl::Status> results(8);
  std::vector<std::thread> threads;
  for (int t = 0; t < static_cast<int>(results.size()); ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < count && results[t].ok(); i += static_cast<int>(results.size())) {
        v1::RegisterWorkerRequest request;
        request.set_hostname(absl::StrCat("load-", i));
        request.set_device(v1::DEVICE_KIND_CUDA);
        request.set_device_count(1);
        request.add_device_names("simulated GPU");
        request.set_device_memory_bytes(int64_t{80} << 30);
        request.set_version("coordinator_load");
        v1::RegisterWorkerResponse response;
        auto context = client.NewContext(absl::Seconds(30));
        grpc::Status status = stub->RegisterWorker(context.get(), request, &response);
        if (!status.ok()) {
          results[t] = client.Describe(status, "RegisterWorker");
        } else {
          names[i] = response.worker().name();
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (const absl::Status& result : results) QTRAIN_RETURN_IF_ERROR(result);
  return names;
}

// Separate connections: channels with distinct arguments do not share a subchannel.
std::vector<std::shared_ptr<grpc::Channel>> OpenConnections(const std::string& address, int count) {
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int c = 0; c < count; ++c) {
    grpc::ChannelArguments args;
    args.SetInt("qtrain.bench.connection", c);
    args.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);  // as the worker's channel (common/rpc_channel.cc)
    channels.push_back(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  }
  return channels;
}

// The simulated workers' Heartbeat streams (over their connections) and the watchers.
class LoadClients {
 public:
  explicit LoadClients(LoadStats* stats) : stats_(stats) {}

  void Open(const RpcClient& client, const std::string& address, const std::string& job,
            const std::vector<std::string>& workers, const Flags& flags) {
    job_stub_ = v1::JobService::NewStub(client.channel());
    for (int w = 0; w < flags.watchers; ++w) {
      watchers_.push_back(std::make_unique<Watcher>(job_stub_.get(), job, stats_, &done_));
    }
    const int workers_count = static_cast<int>(workers.size());
    channels_ =
        OpenConnections(address, flags.connections > 0 ? std::min(flags.connections, workers_count)
                                                       : workers_count);
    for (const auto& channel : channels_) stubs_.push_back(v1::WorkerService::NewStub(channel));
    for (size_t i = 0; i < workers.size(); ++i) {
      streams_.push_back(std::make_unique<HeartbeatStream>(stubs_[i % stubs_.size()].get(),
                                                           workers[i], stats_, &done_));
    }
  }

  // Counts the unanswered heartbeats, ends every stream (cancelling those the coordinator does
  // not end); false if some never finished.
  bool Close() {
    for (auto& stream : streams_) stream->CountUnanswered();
    for (auto& stream : streams_) stream->Close();
    for (auto& watcher : watchers_) watcher->Stop();
    const int total = static_cast<int>(streams_.size() + watchers_.size());
    if (!done_.WaitFor(total, absl::Seconds(2))) {
      for (auto& stream : streams_) stream->Cancel();
    }
    return done_.WaitFor(total, absl::Seconds(10));
  }

  const std::vector<std::unique_ptr<HeartbeatStream>>& streams() const { return streams_; }
  int connections() const { return static_cast<int>(channels_.size()); }

 private:
  LoadStats* stats_;
  DoneCounter done_;  // outlives the streams, which report into it
  std::unique_ptr<v1::JobService::Stub> job_stub_;
  std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<v1::WorkerService::Stub>> stubs_;
  std::vector<std::unique_ptr<Watcher>> watchers_;
  std::vector<std::unique_ptr<HeartbeatStream>> streams_;
};

// Beats every stream once per interval, stream i at offset i/n of the interval.
void RunScheduler(const std::vector<std::unique_ptr<HeartbeatStream>>& streams,
                  std::chrono::nanoseconds interval, const std::atomic<bool>& stop) {
  const Clock::time_point start = Clock::now();
  const int64_t n = static_cast<int64_t>(streams.size());
  for (int64_t round = 0; !stop.load(); ++round) {
    for (int64_t i = 0; i < n && !stop.load(); ++i) {
      std::this_thread::sleep_until(start + interval * round + interval * i / n);
      streams[i]->Beat();
    }
  }
}

// --- Report -----------------------------------------------------------------------------------

struct Report {
  int workers = 0, watchers = 0, connections = 0;
  double seconds = 0;
  int64_t sent = 0, answered = 0, failed = 0, stream_errors = 0, unsolicited = 0, directives = 0,
          missing_lease = 0, watch_events = 0;
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, max_ms = 0;
  double heartbeats_per_second = 0;
  double cpu_cores = 0;
  int64_t peak_rss_bytes = 0;
  bool coordinator_ok = true;
  std::string coordinator_problem;
};

double PercentileMs(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  const size_t index = std::min(sorted.size() - 1, static_cast<size_t>(q * sorted.size()));
  return static_cast<double>(sorted[index]) / 1e6;
}

void FillLatencies(std::vector<int64_t> latencies, Report& report) {
  std::sort(latencies.begin(), latencies.end());
  report.p50_ms = PercentileMs(latencies, 0.50);
  report.p90_ms = PercentileMs(latencies, 0.90);
  report.p99_ms = PercentileMs(latencies, 0.99);
  report.max_ms = latencies.empty() ? 0 : static_cast<double>(latencies.back()) / 1e6;
}

void FillCounters(const LoadStats& stats, double seconds, Report& report) {
  report.seconds = seconds;
  report.sent = stats.sent();
  report.answered = stats.answered();
  report.failed = stats.failed();
  report.stream_errors = stats.stream_errors();
  report.unsolicited = stats.unsolicited();
  report.directives = stats.directives();
  report.missing_lease = stats.missing_lease();
  report.watch_events = stats.watch_events();
  report.heartbeats_per_second = static_cast<double>(report.answered) / seconds;
  FillLatencies(stats.latencies(), report);
}

double FailureFraction(const Report& r) {
  return r.sent == 0 ? 1.0 : static_cast<double>(r.failed) / static_cast<double>(r.sent);
}

void PrintReport(const Report& r) {
  const double failure = FailureFraction(r);
  std::printf("coordinator_load: %d workers over %d connections, %d watchers, %.1f s measured\n",
              r.workers, r.connections, r.watchers, r.seconds);
  std::printf("  %-30s %lld\n", "heartbeats sent", static_cast<long long>(r.sent));
  std::printf("  %-30s %lld (%.1f/s)\n", "heartbeats answered", static_cast<long long>(r.answered),
              r.heartbeats_per_second);
  std::printf("  %-30s %lld (%.3f%%)\n", "heartbeats failed", static_cast<long long>(r.failed),
              failure * 100);
  std::printf("  %-30s %.3f / %.3f / %.3f / %.3f ms   (goal p99 < 20 ms: %s)\n",
              "latency p50 / p90 / p99 / max", r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms,
              r.p99_ms < 20 ? "met" : "MISSED");
  std::printf("  %-30s %.3f core   (goal < 0.25 core: %s)\n", "coordinator CPU", r.cpu_cores,
              r.cpu_cores < 0.25 ? "met" : "MISSED");
  std::printf("  %-30s %.1f MiB\n", "coordinator peak RSS",
              static_cast<double>(r.peak_rss_bytes) / (1 << 20));
  std::printf(
      "  %-30s %lld stream errors, %lld unsolicited responses, %lld directives, "
      "%lld without a lease, %lld watch events\n",
      "other", static_cast<long long>(r.stream_errors), static_cast<long long>(r.unsolicited),
      static_cast<long long>(r.directives), static_cast<long long>(r.missing_lease),
      static_cast<long long>(r.watch_events));
  if (!r.coordinator_ok) std::printf("  coordinator: %s\n", r.coordinator_problem.c_str());
  std::printf(
      "{\"bench\": \"coordinator_load\", \"workers\": %d, \"connections\": %d, \"watchers\": %d, "
      "\"seconds\": %.3f, \"heartbeats_sent\": %lld, \"heartbeats_answered\": %lld, "
      "\"heartbeats_failed\": %lld, \"heartbeats_per_second\": %.3f, \"latency_p50_ms\": %.4f, "
      "\"latency_p90_ms\": %.4f, \"latency_p99_ms\": %.4f, \"latency_max_ms\": %.4f, "
      "\"coordinator_cpu_cores\": %.4f, \"coordinator_peak_rss_bytes\": %lld, "
      "\"stream_errors\": %lld, \"directives\": %lld, \"watch_events\": %lld, "
      "\"coordinator_ok\": %s}\n",
      r.workers, r.connections, r.watchers, r.seconds, static_cast<long long>(r.sent),
      static_cast<long long>(r.answered), static_cast<long long>(r.failed), r.heartbeats_per_second,
      r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms, r.cpu_cores, static_cast<long long>(r.peak_rss_bytes),
      static_cast<long long>(r.stream_errors), static_cast<long long>(r.directives),
      static_cast<long long>(r.watch_events), r.coordinator_ok ? "true" : "false");
  std::fflush(stdout);
}

// --- The run ------------------------------------------------------------------------------------

// A thousand connections need a thousand descriptors here and in the coordinator (inherited).
void RaiseDescriptorLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
  }
}

std::string DefaultCoordinatorBinary() {
  std::error_code error;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  return (error ? std::filesystem::path("qtrain-coordinator")
                : self.parent_path() / "qtrain-coordinator")
      .string();
}

absl::StatusOr<std::filesystem::path> MakeWorkDir(const Flags& flags) {
  if (!flags.work_dir.empty()) {
    std::error_code error;
    std::filesystem::create_directories(flags.work_dir, error);
    if (error) {
      return absl::FailedPreconditionError(
          absl::StrCat("--work-dir ", flags.work_dir, ": ", error.message()));
    }
    return std::filesystem::path(flags.work_dir);
  }
  const char* base = std::getenv("TMPDIR");
  std::string pattern =
      absl::StrCat(base != nullptr && *base != '\0' ? base : "/tmp", "/coordinator_load.XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("mkdtemp ", pattern, ": ", strerror(errno)));
  }
  return std::filesystem::path(pattern);
}

// Samples the coordinator's CPU time over the window; notes if it died.
absl::StatusOr<double> MeasureWindow(CoordinatorProcess& coordinator, LoadStats& stats,
                                     double seconds, Report& report) {
  QTRAIN_ASSIGN_OR_RETURN(ProcessUsage before, ReadUsage(coordinator.pid()));
  const int64_t start = NowNs();
  const int64_t end = start + static_cast<int64_t>(seconds * 1e9);
  stats.SetWindow(start, end);
  while (NowNs() < end) {
    if (!coordinator.Alive()) {
      report.coordinator_ok = false;
      report.coordinator_problem = absl::StrCat("died during the run (", coordinator.DescribeExit(),
                                                ")\n", coordinator.LogTail());
      return absl::InternalError(report.coordinator_problem);
    }
    absl::SleepFor(absl::Milliseconds(std::min<int64_t>(100, (end - NowNs()) / 1000000 + 1)));
  }
  QTRAIN_ASSIGN_OR_RETURN(ProcessUsage after, ReadUsage(coordinator.pid()));
  const double wall = static_cast<double>(NowNs() - start) / 1e9;
  report.peak_rss_bytes = after.peak_rss_bytes;
  return (after.cpu_seconds - before.cpu_seconds) / wall;
}

absl::Status Run(const Flags& flags, Report& report) {
  RaiseDescriptorLimit();
  QTRAIN_ASSIGN_OR_RETURN(std::filesystem::path dir, MakeWorkDir(flags));
  CoordinatorProcess coordinator;
  QTRAIN_RETURN_IF_ERROR(coordinator.Start(flags.coordinator, dir));
  QTRAIN_ASSIGN_OR_RETURN(std::string address, coordinator.WaitForAddress(absl::Seconds(30)));
  std::fprintf(stderr, "coordinator_load: coordinator pid %d serving at %s (files in %s)\n",
               coordinator.pid(), address.c_str(), dir.c_str());

  ChannelOptions options;
  options.address = address;
  QTRAIN_ASSIGN_OR_RETURN(RpcClient client, RpcClient::Create(options));
  QTRAIN_ASSIGN_OR_RETURN(std::string job, CreateJob(client, dir));
  const absl::Time register_start = absl::Now();
  QTRAIN_ASSIGN_OR_RETURN(std::vector<std::string> workers, RegisterWorkers(client, flags.workers));
  std::fprintf(stderr, "coordinator_load: created %s, registered %d workers in %s\n", job.c_str(),
               flags.workers, absl::FormatDuration(absl::Now() - register_start).c_str());

  LoadStats stats;
  LoadClients clients(&stats);
  clients.Open(client, address, job, workers, flags);
  report.connections = clients.connections();
  std::atomic<bool> stop{false};
  std::thread scheduler(RunScheduler, std::cref(clients.streams()),
                        std::chrono::milliseconds(flags.interval_ms), std::cref(stop));

  absl::SleepFor(absl::Seconds(flags.warmup_seconds));
  absl::StatusOr<double> cpu = MeasureWindow(coordinator, stats, flags.seconds, report);
  // No heartbeats after the window; its last ones get a second to be answered.
  stop.store(true);
  scheduler.join();
  absl::SleepFor(absl::Seconds(1));
  const bool all_done = clients.Close();
  FillCounters(stats, flags.seconds, report);
  for (const std::string& error : stats.first_errors()) {
    std::fprintf(stderr, "coordinator_load: %s\n", error.c_str());
  }
  if (!cpu.ok()) return cpu.status();
  report.cpu_cores = *cpu;
  if (!all_done) {
    // Streams still open would be destroyed under gRPC's feet: leave without tearing down.
    PrintReport(report);
    std::fprintf(stderr, "coordinator_load: streams did not finish after cancellation\n");
    std::_Exit(1);
  }
  if (absl::Status stopped = coordinator.Stop(absl::Seconds(10)); !stopped.ok()) {
    report.coordinator_ok = false;
    report.coordinator_problem = std::string(stopped.message());
  }
  if (!flags.keep_work_dir && flags.work_dir.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace qtrain::bench

int main(int argc, char** argv) {
  qtrain::bench::Flags flags;
  flags.coordinator = qtrain::bench::DefaultCoordinatorBinary();
  CLI::App app{"Heartbeat and watch load on a real qtrain-coordinator"};
  app.add_option("--coordinator", flags.coordinator, "qtrain-coordinator binary")
      ->capture_default_str();
  app.add_option("--workers", flags.workers, "simulated workers, one Heartbeat stream each")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--watchers", flags.watchers, "WatchJob streams on the job")
      ->check(CLI::Range(0, 10000))
      ->capture_default_str();
  app.add_option("--seconds", flags.seconds, "length of the measured window")
      ->check(CLI::Range(0.1, 86400.0))
      ->capture_default_str();
  app.add_option("--warmup-seconds", flags.warmup_seconds, "before measuring")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  app.add_option("--interval-ms", flags.interval_ms, "between one worker's heartbeats")
      ->check(CLI::Range(1, 60000))
      ->capture_default_str();
  app.add_option("--connections", flags.connections, "TCP connections (0: one per worker)")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  app.add_option("--work-dir", flags.work_dir,
                 "where the coordinator's state and log go (default: a temporary directory)");
  app.add_flag("--keep-work-dir", flags.keep_work_dir, "keep the temporary directory");
  CLI11_PARSE(app, argc, argv);

  qtrain::bench::Report report;
  report.workers = flags.workers;
  report.watchers = flags.watchers;
  absl::Status status = qtrain::bench::Run(flags, report);
  if (!status.ok()) {
    if (report.sent > 0) qtrain::bench::PrintReport(report);
    // A dead coordinator is already in the report.
    if (report.coordinator_ok) {
      std::fprintf(stderr, "coordinator_load: %s\n", std::string(status.message()).c_str());
    }
    return 1;
  }
  qtrain::bench::PrintReport(report);
  if (!report.coordinator_ok) return 1;
  if (qtrain::bench::FailureFraction(report) > 0.01) {
    std::fprintf(stderr, "coordinator_load: %.3f%% of the heartbeats failed (more than 1%%)\n",
                 qtrain::bench::FailureFraction(report) * 100);
    return 1;
  }
  return 0;
}
