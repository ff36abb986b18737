// `qtrain local SPEC [--workers N]`: the service on one machine for one job. Starts a
// coordinator and N workers as child processes (found beside the qtrain binary), submits the
// job, watches it as `qtrain watch` does (the progress line is rank 0's), stops everything (also
// on Ctrl-C or SIGTERM) and exits with the job's code: 0 SUCCEEDED, 1 FAILED, 2 CANCELLED. With
// N > 1 the workers train the job as one data-parallel group over the loopback interface, each
// with its share of the CPU threads.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "cli/command.h"
#include "cli/job_client.h"
#include "cli/local_cluster.h"
#include "cli/output.h"
#include "cli/watch.h"
#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/signal_pipe.h"
#include "common/status_macros.h"
#include "worker/model/model_source.h"

namespace qtrain::cli {
namespace {

namespace fs = std::filesystem;

constexpr absl::Duration kStartTimeout = absl::Seconds(60);
// After Ctrl-C the job is cancelled; this long is given to see it CANCELLED before stopping.
constexpr absl::Duration kCancelGrace = absl::Seconds(5);
constexpr int kLogTailLines = 20;
constexpr int kMaxLocalWorkers = 64;
// The address the local workers' collectives listen on.
constexpr char kLocalPeerHost[] = "127.0.0.1";

struct LocalArgs {
  std::string spec;
  int workers = 1;
  std::string run_root = "qtrain-local";
  int threads = 0;
  double lease_seconds = 0;
};

std::string Lines(const std::string& text) { return text.empty() ? "" : absl::StrCat("\n", text); }

// A sibling binary of the running qtrain.
absl::StatusOr<std::string> BesideSelf(const std::string& name) {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot find the qtrain binary: ", ec.message()));
  const fs::path path = self.parent_path() / name;
  if (::access(path.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "qtrain local needs ", name, " beside qtrain, and ", path.string(),
        " is missing or not executable (build it: cmake --build build --target ", name, ")"));
  }
  return path.string();
}

// What the monitor thread saw: signals and children that exited.
class Monitor {
 public:
  Monitor(ChildSet* children, WatchCanceller* canceller)
      : children_(children), canceller_(canceller) {}
  ~Monitor() { Join(); }

  void Start(SignalPipe* signals) {
    signals_ = signals;
    thread_ = std::thread([this] { Loop(); });
  }
  void Join() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // Once the job exists: Ctrl-C cancels it.
  void SetJob(std::string address, std::string job) {
    absl::MutexLock lock(&mu_);
    address_ = std::move(address);
    job_ = std::move(job);
  }
  // Why the run must stop (a signal, the coordinator or every worker gone); empty if none.
  std::string StopReason() const {
    absl::MutexLock lock(&mu_);
    return stop_reason_;
  }
  bool interrupted() const { return signals_seen_ > 0; }

 private:
  void Loop();
  void OnSignal(int signal);
  void OnExit(const ChildSet::Exit& exit);
  void SetStopReason(std::string reason) {
    absl::MutexLock lock(&mu_);
    if (stop_reason_.empty()) stop_reason_ = std::move(reason);
  }

  ChildSet* children_;
  WatchCanceller* canceller_;
  SignalPipe* signals_ = nullptr;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> signals_seen_{0};
  std::optional<absl::Time> cancel_deadline_;  // monitor thread only
  mutable absl::Mutex mu_;
  std::string address_ ABSL_GUARDED_BY(mu_);
  std::string job_ ABSL_GUARDED_BY(mu_);
  std::string stop_reason_ ABSL_GUARDED_BY(mu_);
};

void Monitor::Loop() {
  while (!stop_) {
    if (const std::optional<int> signal = signals_->Wait(absl::Milliseconds(100))) {
      OnSignal(*signal);
    }
    for (const ChildSet::Exit& exit : children_->Poll()) OnExit(exit);
    if (cancel_deadline_ && absl::Now() > *cancel_deadline_) {
      canceller_->Cancel();
      cancel_deadline_.reset();
    }
  }
}

void Monitor::OnSignal(int signal) {
  const int seen = ++signals_seen_;
  SetStopReason(absl::StrCat("interrupted (", strsignal(signal), ")"));
  std::string address, job;
  {
    absl::MutexLock lock(&mu_);
    address = address_;
    job = job_;
  }
  if (seen > 1 || job.empty()) {
    std::fprintf(stderr, "\nqtrain local: %s; stopping\n", strsignal(signal));
    canceller_->Cancel();
    return;
  }
  std::fprintf(stderr, "\nqtrain local: %s; cancelling %s (again to stop at once)\n",
               strsignal(signal), job.c_str());
  ChannelOptions options;
  options.address = address;
  absl::StatusOr<JobClient> client = JobClient::Connect(options, absl::Seconds(3));
  absl::Status cancelled =
      client.ok() ? client->CancelJob(job, "interrupted").status() : client.status();
  if (!cancelled.ok()) {
    std::fprintf(stderr, "qtrain local: cannot cancel %s: %s\n", job.c_str(),
                 std::string(cancelled.message()).c_str());
    canceller_->Cancel();
    return;
  }
  cancel_deadline_ = absl::Now() + kCancelGrace;
}

void Monitor::OnExit(const ChildSet::Exit& exit) {
  if (stop_) return;
  std::fprintf(stderr, "qtrain local: %s exited (%s); its log %s:%s\n", exit.name.c_str(),
               DescribeWaitStatus(exit.status).c_str(), exit.log.c_str(),
               Lines(LogTail(exit.log, kLogTailLines)).c_str());
  if (exit.name == "coordinator") {
    SetStopReason(absl::StrCat("the coordinator exited (", DescribeWaitStatus(exit.status),
                               "); see ", exit.log));
    canceller_->Cancel();
  } else if (!children_->Running("coordinator") || children_->running_count() <= 1) {
    SetStopReason("every worker exited; see the logs");
    canceller_->Cancel();
  }
}

// Waits for the coordinator's address file.
absl::StatusOr<std::string> WaitForAddress(const std::string& path, const Monitor& monitor,
                                           const ChildSet& children, const std::string& log) {
  const absl::Time deadline = absl::Now() + kStartTimeout;
  while (true) {
    absl::StatusOr<std::string> text = ReadFileToString(path, 4096);
    if (text.ok() && !text->empty() && text->back() == '\n') {
      return std::string(absl::StripAsciiWhitespace(*text));
    }
    if (const std::string reason = monitor.StopReason(); !reason.empty()) {
      return absl::AbortedError(reason);
    }
    if (!children.Running("coordinator")) {
      return absl::FailedPreconditionError(
          absl::StrCat("the coordinator exited before serving; its log ", log, ":",
                       Lines(LogTail(log, kLogTailLines))));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the coordinator did not write ", path, " within ", HumanDuration(kStartTimeout),
          "; its log ", log, ":", Lines(LogTail(log, kLogTailLines))));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

struct Layout {
  std::string root, state_dir, address_file, logs;
  std::string worker_dir(int i) const { return absl::StrCat(root, "/.workers/", i); }
  std::string worker_log(int i) const { return absl::StrCat(logs, "/worker-", i, ".log"); }
  std::string coordinator_log() const { return logs + "/coordinator.log"; }
};

absl::StatusOr<Layout> MakeLayout(const std::string& run_root, int workers) {
  if (run_root.empty()) return absl::InvalidArgumentError("--run-root is empty");
  std::error_code ec;
  Layout l;
  l.root = fs::absolute(run_root, ec).lexically_normal().string();
  if (ec)
    return absl::InvalidArgumentError(absl::StrCat("--run-root ", run_root, ": ", ec.message()));
  while (l.root.size() > 1 && l.root.back() == '/') l.root.pop_back();
  l.state_dir = l.root + "/.coordinator";
  l.address_file = l.state_dir + "/address";
  l.logs = l.root + "/.logs";
  std::vector<std::string> dirs = {l.state_dir, l.logs};
  for (int i = 0; i < workers; ++i) dirs.push_back(l.worker_dir(i));
  for (const std::string& dir : dirs) {
    fs::create_directories(dir, ec);
    if (ec) {
      return absl::FailedPreconditionError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
    }
  }
  fs::remove(l.address_file, ec);  // a previous run's
  return l;
}

// The job's world range must hold `workers`: every worker joins the job's group.
absl::Status CheckWorldRange(const std::string& spec_path, const v1::JobSpec& spec, int workers) {
  const int64_t min = spec.world().min_workers(), max = spec.world().max_workers();
  if (workers < min || workers > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(spec_path, ": --workers ", workers, " is outside the job's world range ", min,
                     "-", max, " (world.min_workers ", min, ", world.max_workers ", max,
                     "); change --workers or the spec's world"));
  }
  return absl::OkStatus();
}

// Each worker's --threads: the total (--threads, else every core) shared out, at least 1; 0
// (the worker's default: every core) for a single worker without --threads.
int ThreadsPerWorker(int threads, int workers) {
  if (threads <= 0 && workers == 1) return 0;
  const int total =
      threads > 0 ? threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  return std::max(1, total / workers);
}

std::vector<std::string> WorkerArgv(const std::string& worker_bin, const std::string& address,
                                    const Layout& layout, int i, const LocalArgs& args) {
  std::vector<std::string> argv = {
      worker_bin,
      "--coordinator",
      address,
      "--work-dir",
      layout.worker_dir(i),
      "--name",
      args.workers == 1 ? std::string("local") : absl::StrCat("local-", i),
      "--peer-host",
      kLocalPeerHost};
  if (const int threads = ThreadsPerWorker(args.threads, args.workers); threads > 0) {
    argv.push_back("--threads");
    argv.push_back(absl::StrCat(threads));
  }
  return argv;
}

absl::StatusOr<int> RunLocal(const LocalArgs& args) {
  if (args.workers < 1 || args.workers > kMaxLocalWorkers) {
    return absl::InvalidArgumentError(
        absl::StrCat("--workers: ", args.workers, " is not in 1-", kMaxLocalWorkers));
  }
  QTRAIN_ASSIGN_OR_RETURN(const v1::JobSpec spec,
                          LoadJobSpecFile(args.spec, model::ModelAwareJobSpecOptions()));
  QTRAIN_RETURN_IF_ERROR(CheckWorldRange(args.spec, spec, args.workers));
  QTRAIN_ASSIGN_OR_RETURN(const std::string coordinator_bin, BesideSelf("qtrain-coordinator"));
  QTRAIN_ASSIGN_OR_RETURN(const std::string worker_bin, BesideSelf("qtrain-worker"));
  QTRAIN_ASSIGN_OR_RETURN(const Layout layout, MakeLayout(args.run_root, args.workers));

  // SIGINT and SIGTERM go to the monitor thread (through SignalPipe's handler; exec gives the
  // children the default dispositions back).
  QTRAIN_ASSIGN_OR_RETURN(std::unique_ptr<SignalPipe> signals, SignalPipe::Install());

  WatchCanceller canceller;
  ChildSet children;  // declared before the monitor: stopped after it is joined
  Monitor monitor(&children, &canceller);

  std::vector<std::string> coordinator_argv = {coordinator_bin,  "--listen",          "127.0.0.1:0",
                                               "--address-file", layout.address_file, "--state-dir",
                                               layout.state_dir, "--run-root",        layout.root};
  if (args.lease_seconds > 0) {
    coordinator_argv.push_back("--lease-seconds");
    coordinator_argv.push_back(absl::StrCat(args.lease_seconds));
  }
  std::fprintf(stderr, "qtrain local: run root %s; logs in %s/\n", layout.root.c_str(),
               layout.logs.c_str());
  QTRAIN_ASSIGN_OR_RETURN(const pid_t coordinator,
                          SpawnLogged(coordinator_argv, layout.coordinator_log()));
  children.Add("coordinator", coordinator, layout.coordinator_log());
  monitor.Start(signals.get());
  QTRAIN_ASSIGN_OR_RETURN(
      const std::string address,
      WaitForAddress(layout.address_file, monitor, children, layout.coordinator_log()));
  for (int i = 0; i < args.workers; ++i) {
    QTRAIN_ASSIGN_OR_RETURN(
        const pid_t pid,
        SpawnLogged(WorkerArgv(worker_bin, address, layout, i, args), layout.worker_log(i)));
    children.Add(absl::StrCat("worker ", i), pid, layout.worker_log(i));
  }
  if (args.workers == 1) {
    std::fprintf(stderr, "qtrain local: coordinator at %s, 1 worker\n", address.c_str());
  } else {
    const int threads = ThreadsPerWorker(args.threads, args.workers);
    std::fprintf(stderr,
                 "qtrain local: coordinator at %s, %d workers (%d thread%s each; progress of "
                 "rank 0)\n",
                 address.c_str(), args.workers, threads, threads == 1 ? "" : "s");
  }

  ChannelOptions options;
  options.address = address;
  QTRAIN_ASSIGN_OR_RETURN(JobClient client, JobClient::Connect(options, absl::Seconds(10)));
  QTRAIN_ASSIGN_OR_RETURN(const v1::Job job, client.CreateJob(spec, NewRequestId()));
  monitor.SetJob(address, job.name());
  if (const std::string reason = monitor.StopReason(); !reason.empty()) {
    return absl::AbortedError(reason);
  }
  QTRAIN_RETURN_IF_ERROR(WriteStdout(JobDetails(job, absl::Now())));
  QTRAIN_RETURN_IF_ERROR(FlushStdout());

  WatchOptions watch;
  watch.call_timeout = absl::Seconds(10);
  watch.canceller = &canceller;
  absl::StatusOr<int> code = WatchJob(client.channel_options(), job.name(), watch);
  if (!code.ok()) {
    const std::string reason = monitor.StopReason();
    if (absl::IsCancelled(code.status()) && !reason.empty()) return absl::AbortedError(reason);
    return code.status();
  }
  if (*code == 0) {
    absl::StatusOr<v1::Job> done = client.GetJob(job.name());
    const std::string run_dir = done.ok() ? done->run_directory() : job.run_directory();
    QTRAIN_RETURN_IF_ERROR(WriteStdout(absl::StrCat("final model: ", run_dir, "/final\n")));
    QTRAIN_RETURN_IF_ERROR(FlushStdout());
  }
  return *code;
}

}  // namespace

void AddLocalCommand(CLI::App& app, CommandSelection& selection) {
  auto args = std::make_shared<LocalArgs>();
  CLI::App* cmd = app.add_subcommand(
      "local",
      "Run a job on this machine through a coordinator and workers started for it (exit 0 "
      "SUCCEEDED, 1 FAILED, 2 CANCELLED)");
  cmd->add_option("spec", args->spec, "Job spec (YAML or JSON)")->required();
  cmd->add_option("--workers", args->workers,
                  "Worker processes to start; more than one train the job as one data-parallel "
                  "group (within the spec's world.min_workers-max_workers)")
      ->check(CLI::Range(1, kMaxLocalWorkers))
      ->capture_default_str();
  cmd->add_option("--run-root", args->run_root,
                  "Directory of the job's run directory, the coordinator's state and the logs")
      ->capture_default_str();
  cmd->add_option("--threads", args->threads,
                  "CPU threads in all, shared out among the workers (each gets at least 1; "
                  "default: every core)")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--lease-seconds", args->lease_seconds,
                  "A worker silent this long is lost (the coordinator's default: 10)")
      ->check(CLI::Range(0.01, 86400.0));
  cmd->callback([&selection, args] {
    selection.coded_action = [args]() -> absl::StatusOr<int> {
      absl::StatusOr<int> code = RunLocal(*args);
      return code.ok() ? *code : ReportError(code.status());
    };
  });
}

}  // namespace qtrain::cli
