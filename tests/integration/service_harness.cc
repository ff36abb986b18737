#include "tests/integration/service_harness.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"

extern char** environ;

namespace qtrain::testing_service {
namespace fs = std::filesystem;

namespace {

// The processes this harness started and still has to reap, and every log it wrote.
struct Registry {
  std::mutex mu;
  std::set<pid_t> live;
  std::vector<fs::path> logs;
};
Registry& GlobalRegistry() {
  static Registry* registry = new Registry;
  return *registry;
}
void RegisterLog(const fs::path& log) {
  Registry& r = GlobalRegistry();
  std::lock_guard lock(r.mu);
  r.logs.push_back(log);
}

std::string BinDir() {
  const char* dir = std::getenv("QTRAIN_BIN_DIR");  // set by tests/test_main.cc
  return dir != nullptr ? dir : ".";
}

// Fields of /proc/PID/stat after the command name: state is [0], ppid [1], starttime [19].
std::optional<std::vector<std::string>> StatFields(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  return absl::StrSplit(line.substr(close + 2), ' ', absl::SkipEmpty());
}

// The environment of a child: this process's, with `overrides` (NAME=VALUE) replacing or adding
// entries, and OMP_NUM_THREADS=1 unless overridden.
std::vector<std::string> ChildEnvironment(const std::vector<std::string>& overrides) {
  std::vector<std::string> all = {"OMP_NUM_THREADS=1"};
  all.insert(all.end(), overrides.begin(), overrides.end());
  std::vector<std::string> env;
  std::set<std::string> names;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {  // the last setting of a name wins
    const std::string name = it->substr(0, it->find('='));
    if (names.insert(name).second) env.push_back(*it);
  }
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    if (!names.count(entry.substr(0, entry.find('=')))) env.push_back(entry);
  }
  return env;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exit code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return absl::StrCat("killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)),
                        ")");
  }
  return absl::StrCat("wait status ", status);
}

// Stops the process before its children are killed, so that it cannot see them end and exit on
// its own (a shell's `wait`, a daemon reaping its child) before its own SIGKILL arrives.
void KillTree(pid_t pid) {
  ::kill(pid, SIGSTOP);
  for (const ProcessId& child : ChildrenOf(pid)) KillTree(child.pid);
  ::kill(pid, SIGKILL);
}

}  // namespace

std::string CoordinatorBinary() { return BinDir() + "/qtrain-coordinator"; }
std::string WorkerBinary() { return BinDir() + "/qtrain-worker"; }

bool IsAlive(const ProcessId& id) {
  const auto fields = StatFields(id.pid);
  if (!fields || fields->size() < 20) return false;
  const std::string& state = (*fields)[0];
  if (state == "Z" || state == "X" || state == "x") return false;
  uint64_t start = 0;
  return absl::SimpleAtoi((*fields)[19], &start) && start == id.start_ticks;
}

std::vector<ProcessId> ChildrenOf(pid_t parent) {
  std::vector<ProcessId> children;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return children;
  while (const dirent* entry = ::readdir(proc)) {
    int pid = 0;
    if (!absl::SimpleAtoi(entry->d_name, &pid)) continue;
    const auto fields = StatFields(pid);
    if (!fields || fields->size() < 20) continue;
    const std::string& state = (*fields)[0];
    int ppid = 0;
    uint64_t start = 0;
    if (state == "Z" || state == "X" || !absl::SimpleAtoi((*fields)[1], &ppid) || ppid != parent ||
        !absl::SimpleAtoi((*fields)[19], &start)) {
      continue;
    }
    children.push_back({.pid = pid, .start_ticks = start});
  }
  ::closedir(proc);
  return children;
}

std::string Tail(const fs::path& path, size_t max_bytes) {
  std::string text = ReadFileToString(path.string(), 64 << 20).value_or("");
  if (text.size() > max_bytes) text = "..." + text.substr(text.size() - max_bytes);
  return text;
}

// --- Process ---

absl::StatusOr<std::unique_ptr<Process>> Process::Spawn(const std::vector<std::string>& args,
                                                        const std::vector<std::string>& env,
                                                        const fs::path& log) {
  const std::vector<std::string> env_strings = ChildEnvironment(env);
  std::vector<char*> argv, envp;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : env_strings) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const std::string log_path = log.string();
  RegisterLog(log);
  const pid_t parent = ::getpid();

  Registry& registry = GlobalRegistry();
  std::lock_guard lock(registry.mu);  // the watchdog never sees a pid it cannot kill yet
  const pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int in_fd = ::open("/dev/null", O_RDONLY);
    if (log_fd < 0 || in_fd < 0) ::_exit(127);
    ::dup2(in_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  registry.live.insert(pid);
  return std::unique_ptr<Process>(new Process(pid, log));
}

Process::~Process() { Kill(); }

std::string Process::Log() const { return ReadFileToString(log_.string(), 64 << 20).value_or(""); }

bool Process::Signal(int signal) { return !reaped_ && ::kill(pid_, signal) == 0; }

bool Process::Poll() {
  if (reaped_) return true;
  int status = 0;
  const pid_t done = ::waitpid(pid_, &status, WNOHANG);
  if (done != pid_) return false;
  reaped_ = true;
  status_ = status;
  Registry& registry = GlobalRegistry();
  std::lock_guard lock(registry.mu);
  registry.live.erase(pid_);
  return true;
}

std::optional<int> Process::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!Poll()) {
    if (absl::Now() > deadline) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return status_;
}

void Process::Kill() {
  if (reaped_) return;
  ::kill(pid_, SIGKILL);
  ::kill(pid_, SIGCONT);  // a stopped process dies of SIGKILL too; this only makes it prompt
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
  status_ = status;
  Registry& registry = GlobalRegistry();
  std::lock_guard lock(registry.mu);
  registry.live.erase(pid_);
}

std::string Process::DescribeStatus() const {
  return reaped_ ? DescribeWaitStatus(status_) : "running";
}

// --- Coordinator ---

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Start(const CoordinatorOptions& options) {
  std::unique_ptr<Coordinator> coordinator(new Coordinator(options));
  std::error_code error;
  fs::create_directories(options.state_dir, error);
  fs::create_directories(options.run_root, error);
  fs::create_directories(options.log_dir, error);
  QTRAIN_RETURN_IF_ERROR(
      coordinator->Launch(absl::StrCat(options.listen_host, ":0"), absl::Seconds(30)));
  return coordinator;
}

absl::Status Coordinator::Launch(const std::string& listen, absl::Duration timeout) {
  const fs::path address_file = options_.log_dir / "coordinator.address";
  std::error_code error;
  fs::remove(address_file, error);
  std::vector<std::string> args = {CoordinatorBinary(),
                                   "--listen",
                                   listen,
                                   "--address-file",
                                   address_file.string(),
                                   "--state-dir",
                                   options_.state_dir.string(),
                                   "--run-root",
                                   options_.run_root.string(),
                                   "--lease-seconds",
                                   absl::StrCat(options_.lease_seconds),
                                   "--settle-seconds",
                                   absl::StrCat(options_.settle_seconds)};
  args.insert(args.end(), options_.extra_flags.begin(), options_.extra_flags.end());
  const fs::path log = options_.log_dir / absl::StrCat("coordinator-", ++starts_, ".log");
  QTRAIN_ASSIGN_OR_RETURN(process_, Process::Spawn(args, {}, log));
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    const std::string text = ReadFileToString(address_file.string(), 1024).value_or("");
    if (!text.empty() && text.back() == '\n') {
      const std::string address(absl::StripTrailingAsciiWhitespace(text));
      const size_t colon = address.rfind(':');
      int port = 0;
      if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) ||
          port <= 0) {
        return absl::InternalError(absl::StrCat("bad address file: '", text, "'"));
      }
      // A wildcard listener is reached through the loopback address.
      const std::string host = address.substr(0, colon);
      address_ = host == "0.0.0.0" || host == "[::]" ? absl::StrCat("127.0.0.1:", port) : address;
      port_ = port;
      return absl::OkStatus();
    }
    if (process_->Poll()) {
      const std::string status = process_->DescribeStatus();
      process_.reset();
      return absl::UnavailableError(absl::StrCat("qtrain-coordinator ended (", status,
                                                 ") before serving:\n", Tail(log, 4000)));
    }
    if (absl::Now() > deadline) {
      process_.reset();
      return absl::DeadlineExceededError(
          absl::StrCat("qtrain-coordinator wrote no address file in ",
                       absl::FormatDuration(timeout), ":\n", Tail(log, 4000)));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

void Coordinator::Kill() { process_.reset(); }

absl::Status Coordinator::Stop(absl::Duration timeout) {
  if (process_ == nullptr) return absl::OkStatus();
  process_->Signal(SIGTERM);
  const std::optional<int> status = process_->Wait(timeout);
  const std::string described = process_->DescribeStatus();
  process_.reset();
  if (!status) {
    return absl::DeadlineExceededError(absl::StrCat("qtrain-coordinator did not exit within ",
                                                    absl::FormatDuration(timeout), " of SIGTERM"));
  }
  if (!WIFEXITED(*status) || WEXITSTATUS(*status) != 0) {
    return absl::InternalError(absl::StrCat("qtrain-coordinator after SIGTERM: ", described));
  }
  return absl::OkStatus();
}

absl::Status Coordinator::Restart() {
  Kill();
  const std::string listen = absl::StrCat(options_.listen_host, ":", port_);
  // The old socket may linger a moment; a failed bind ends the process, so try again.
  const absl::Time deadline = absl::Now() + absl::Seconds(15);
  absl::Status status;
  while (absl::Now() < deadline) {
    status = Launch(listen, absl::Seconds(30));
    if (status.ok() || !absl::IsUnavailable(status)) return status;
    absl::SleepFor(absl::Milliseconds(200));
  }
  return status;
}

// --- Worker ---

absl::StatusOr<std::unique_ptr<Worker>> Worker::Start(const WorkerOptions& options) {
  std::error_code error;
  fs::create_directories(options.work_dir, error);
  std::vector<std::string> args = options.command_prefix;
  args.insert(args.end(),
              {WorkerBinary(), "--coordinator", options.coordinator, "--work-dir",
               options.work_dir.string(), "--threads", std::to_string(options.threads)});
  if (!options.name.empty()) args.insert(args.end(), {"--name", options.name});
  args.insert(args.end(), options.extra_flags.begin(), options.extra_flags.end());
  const fs::path log =
      options.log.empty() ? options.work_dir.parent_path() / (options.name + ".log") : options.log;
  QTRAIN_ASSIGN_OR_RETURN(std::unique_ptr<Process> process, Process::Spawn(args, options.env, log));
  return std::unique_ptr<Worker>(new Worker(options, std::move(process)));
}

Worker::~Worker() { Kill(); }

void Worker::Kill() {
  if (!process_->exited()) {
    for (const ProcessId& child : ChildrenOf(process_->pid())) ::kill(child.pid, SIGKILL);
  }
  process_->Kill();
}

absl::StatusOr<std::string> Worker::WaitForId(absl::Duration timeout) {
  const fs::path file = options_.work_dir / "worker_id";
  std::string id;
  const bool found = WaitFor(
      [&] {
        id = std::string(
            absl::StripAsciiWhitespace(ReadFileToString(file.string(), 1024).value_or("")));
        return !id.empty() || process_->Poll();
      },
      timeout, absl::Milliseconds(20));
  if (found && id.empty()) {
    return absl::UnavailableError(
        absl::StrCat("worker ", options_.name, " ended (", process_->DescribeStatus(),
                     ") before registering:\n", Tail(process_->log_path(), 4000)));
  }
  if (!found) {
    return absl::DeadlineExceededError(absl::StrCat(
        "worker ", options_.name, " (", process_->DescribeStatus(), ") wrote no ", file.string(),
        " in ", absl::FormatDuration(timeout), ":\n", Tail(process_->log_path(), 4000)));
  }
  return id;
}

std::vector<ProcessId> Worker::TrainingChildren() const {
  if (process_->exited()) return {};
  return ChildrenOf(process_->pid());
}

absl::StatusOr<ProcessId> Worker::WaitForTrainingChild(absl::Duration timeout) const {
  std::vector<ProcessId> children;
  if (!WaitFor(
          [&] {
            children = TrainingChildren();
            return !children.empty();
          },
          timeout, absl::Milliseconds(20))) {
    return absl::DeadlineExceededError(absl::StrCat(
        "worker ", options_.name, " started no training child in ", absl::FormatDuration(timeout)));
  }
  return children.front();
}

// --- Client ---

std::string CliOutput::Describe() const {
  return absl::StrCat(result.Describe(), "\nstdout:\n",
                      out.size() > 4000 ? out.substr(0, 4000) : out);
}

fs::path Client::NextLog(const std::string& what) {
  std::error_code error;
  fs::create_directories(log_dir_, error);
  return log_dir_ / absl::StrCat("qtrain-", ++runs_, "-", what, ".log");
}

CliOutput Client::Run(const std::vector<std::string>& args, double timeout_seconds) {
  std::vector<std::string> argv = {testing_cli::QtrainBinary(), "--coordinator", address_};
  argv.insert(argv.end(), flags_.begin(), flags_.end());
  argv.insert(argv.end(), args.begin(), args.end());
  const fs::path log = NextLog(args.empty() ? "none" : args[0]);
  RegisterLog(log);  // Spawn() registers the logs of the processes it starts
  testing_cli::CliOptions options;
  options.env = {"OMP_NUM_THREADS=1"};
  options.stdout_path = fs::path(log.string() + ".out");
  options.address_space_bytes = 0;  // gRPC's thread stacks need more than RLIMIT_AS of 2 GiB
  options.timeout_seconds = timeout_seconds;
  CliOutput output;
  output.result = testing_cli::RunCli(argv, log, options);
  output.out = ReadFileToString(options.stdout_path.string(), 64 << 20).value_or("");
  // The stdout of the run goes to the log too, so that AllLogs() shows it.
  std::ofstream(log, std::ios::app) << "--- stdout ---\n" << output.out;
  return output;
}

absl::StatusOr<nlohmann::json> Client::Json(const std::vector<std::string>& args,
                                            double timeout_seconds) {
  std::vector<std::string> with_format(args);
  with_format.insert(with_format.end(), {"-o", "json"});
  const CliOutput output = Run(with_format, timeout_seconds);
  if (!output.ok()) {
    return absl::UnknownError(
        absl::StrCat("qtrain ", args.empty() ? "" : args[0], ": ", output.Describe()));
  }
  nlohmann::json parsed = nlohmann::json::parse(output.out, nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    return absl::DataLossError(absl::StrCat("qtrain ", args.empty() ? "" : args[0],
                                            " -o json printed no JSON: ", output.Describe()));
  }
  return parsed;
}

absl::StatusOr<nlohmann::json> Client::GetJob(const std::string& job) {
  return Json({"get", job}, 10);
}

absl::StatusOr<std::unique_ptr<Process>> Client::Spawn(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {testing_cli::QtrainBinary(), "--coordinator", address_};
  argv.insert(argv.end(), flags_.begin(), flags_.end());
  argv.insert(argv.end(), args.begin(), args.end());
  return Process::Spawn(argv, {}, NextLog(args.empty() ? "none" : args[0]));
}

// --- waiting ---

bool WaitFor(const std::function<bool()>& done, absl::Duration timeout, absl::Duration interval) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (done()) return true;
    if (absl::Now() > deadline) return false;
    absl::SleepFor(interval);
  }
}

absl::StatusOr<nlohmann::json> WaitForJob(Client& client, const std::string& job,
                                          const std::function<bool(const nlohmann::json&)>& done,
                                          absl::Duration timeout) {
  nlohmann::json last;
  std::string last_error;
  const bool reached = WaitFor(
      [&] {
        absl::StatusOr<nlohmann::json> got = client.GetJob(job);
        if (!got.ok()) {
          last_error = got.status().ToString();
          return false;
        }
        last = *std::move(got);
        return done(last);
      },
      timeout);
  if (reached) return last;
  return absl::DeadlineExceededError(
      absl::StrCat("waited ", absl::FormatDuration(timeout), " for ", job,
                   "; last seen: ", last.is_null() ? "nothing" : last.dump(),
                   last_error.empty() ? "" : "; last error: ", last_error));
}

// --- JSON ---

int64_t JsonInt(const nlohmann::json& value, const std::string& field) {
  if (!value.is_object() || !value.contains(field)) return 0;
  const nlohmann::json& v = value.at(field);
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number()) return static_cast<int64_t>(v.get<double>());
  int64_t parsed = 0;
  if (v.is_string() && absl::SimpleAtoi(v.get<std::string>(), &parsed)) return parsed;
  return 0;
}

std::string JsonString(const nlohmann::json& value, const std::string& field) {
  if (!value.is_object() || !value.contains(field) || !value.at(field).is_string()) return "";
  return value.at(field).get<std::string>();
}

std::string JobState(const nlohmann::json& job) { return JsonString(job, "state"); }

bool IsTerminal(const std::string& state) {
  return state == "JOB_STATE_SUCCEEDED" || state == "JOB_STATE_FAILED" ||
         state == "JOB_STATE_CANCELLED";
}

std::string JobId(const nlohmann::json& job) {
  std::string name = JsonString(job, "name");
  return std::string(absl::StripPrefix(name, "jobs/"));
}

// --- logs, cleanup, watchdog ---

std::string AllLogs(size_t max_bytes) {
  std::vector<fs::path> logs;
  {
    Registry& r = GlobalRegistry();
    std::lock_guard lock(r.mu);
    logs = r.logs;
  }
  std::string text;
  for (const fs::path& log : logs) {
    absl::StrAppend(&text, "===== ", log.filename().string(), " =====\n", Tail(log, max_bytes),
                    "\n");
  }
  return text;
}

void ForgetLogs() {
  Registry& r = GlobalRegistry();
  std::lock_guard lock(r.mu);
  r.logs.clear();
}

void KillAllProcesses() {
  Registry& r = GlobalRegistry();
  std::lock_guard lock(r.mu);
  for (const pid_t pid : r.live) KillTree(pid);
}

struct Watchdog::State {
  std::mutex mu;
  std::condition_variable cv;
  bool cancelled = false;
};

Watchdog::Watchdog(absl::Duration limit) : state_(std::make_shared<State>()) {
  std::thread([state = state_, limit] {
    std::unique_lock lock(state->mu);
    if (state->cv.wait_for(lock, absl::ToChronoMilliseconds(limit),
                           [&] { return state->cancelled; })) {
      return;
    }
    std::fprintf(stderr, "\nTEST TIMED OUT after %s; the logs:\n%s\n",
                 absl::FormatDuration(limit).c_str(), AllLogs().c_str());
    std::fflush(stderr);
    KillAllProcesses();
    ::_exit(1);
  }).detach();
}

Watchdog::~Watchdog() {
  std::lock_guard lock(state_->mu);
  state_->cancelled = true;
  state_->cv.notify_all();
}

std::string Hash(const std::filesystem::path& path) {
  return Sha256File(path.string()).value_or("missing");
}

int64_t CheckpointStep(const std::string& name) {
  const size_t dash = name.rfind("step-");
  int64_t step = -1;
  if (dash == std::string::npos || !absl::SimpleAtoi(name.substr(dash + 5), &step)) return -1;
  return step;
}

int64_t ProgressStep(const nlohmann::json& job) {
  return job.contains("progress") ? JsonInt(job["progress"], "step") : 0;
}

}  // namespace qtrain::testing_service
