// Real service processes for the end-to-end tests: a `qtrain-coordinator` on an ephemeral port of
// 127.0.0.1, `qtrain-worker` daemons and their training children, and the `qtrain` client.
//
// Every process is started with OMP_NUM_THREADS=1, its stdout and stderr in a log file, and
// PR_SET_PDEATHSIG=SIGKILL (a test runner that dies takes them along). The objects that own them
// SIGKILL and reap them in their destructors, training children first, so that nothing outlives
// a test, also when an assertion fails half-way.
#ifndef QTRAIN_TESTS_INTEGRATION_SERVICE_HARNESS_H_
#define QTRAIN_TESTS_INTEGRATION_SERVICE_HARNESS_H_

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "tests/integration/cli_process.h"

namespace qtrain::testing_service {

// The binaries of this build (QTRAIN_BIN_DIR).
std::string CoordinatorBinary();
std::string WorkerBinary();

// A process identity that survives pid reuse: the pid and its start time (/proc/PID/stat).
struct ProcessId {
  pid_t pid = 0;
  uint64_t start_ticks = 0;
};
// True while the process runs (a zombie or a reused pid counts as gone).
bool IsAlive(const ProcessId& id);
// The live processes whose parent is `parent`.
std::vector<ProcessId> ChildrenOf(pid_t parent);

// One started process, SIGKILLed and reaped when destroyed.
class Process {
 public:
  // Starts `args` (args[0] is the program) with `env` (NAME=VALUE) added to this process's
  // environment; stdout and stderr go to `log` (truncated).
  static absl::StatusOr<std::unique_ptr<Process>> Spawn(const std::vector<std::string>& args,
                                                        const std::vector<std::string>& env,
                                                        const std::filesystem::path& log);
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  const std::filesystem::path& log_path() const { return log_; }
  std::string Log() const;
  // False once the process has been reaped.
  bool Signal(int signal);
  // Reaps it if it has ended; true when it has.
  bool Poll();
  // Waits up to `timeout` for it to end; its wait status, or nullopt when it still runs.
  std::optional<int> Wait(absl::Duration timeout);
  // SIGKILL and reap (a no-op once reaped).
  void Kill();
  bool exited() const { return reaped_; }
  int wait_status() const { return status_; }
  // "exit code N" / "killed by signal N" / "running".
  std::string DescribeStatus() const;

 private:
  Process(pid_t pid, std::filesystem::path log) : pid_(pid), log_(std::move(log)) {}
  pid_t pid_;
  std::filesystem::path log_;
  bool reaped_ = false;
  int status_ = 0;
};

struct CoordinatorOptions {
  std::filesystem::path state_dir;
  std::filesystem::path run_root;
  double lease_seconds = 10;
  double settle_seconds = 0.2;
  // The host of --listen: "0.0.0.0" serves every interface (workers in other network
  // namespaces); address() then names 127.0.0.1.
  std::string listen_host = "127.0.0.1";
  std::vector<std::string> extra_flags;
  std::filesystem::path log_dir;  // logs: coordinator-<n>.log
};

// `qtrain-coordinator --listen 127.0.0.1:0 --address-file ...`.
class Coordinator {
 public:
  // Returns once the address file is written (the store is loaded and it serves).
  static absl::StatusOr<std::unique_ptr<Coordinator>> Start(const CoordinatorOptions& options);

  const std::string& address() const { return address_; }  // "127.0.0.1:PORT"
  int port() const { return port_; }
  pid_t pid() const { return process_ ? process_->pid() : 0; }
  bool running() const { return process_ != nullptr; }
  const CoordinatorOptions& options() const { return options_; }

  // SIGKILL and reap.
  void Kill();
  // SIGTERM; OK when it exits 0 within `timeout`.
  absl::Status Stop(absl::Duration timeout = absl::Seconds(10));
  // Starts it again on the same state dir and the same port (retrying the bind for a while).
  absl::Status Restart();

 private:
  explicit Coordinator(CoordinatorOptions options) : options_(std::move(options)) {}
  absl::Status Launch(const std::string& listen, absl::Duration timeout);
  CoordinatorOptions options_;
  std::unique_ptr<Process> process_;
  int starts_ = 0;
  std::string address_;
  int port_ = 0;
};

struct WorkerOptions {
  std::string coordinator;  // HOST:PORT
  std::filesystem::path work_dir;
  std::string name;  // --name (the worker id is "<name>-<n>")
  int threads = 1;
  std::vector<std::string> env;  // e.g. QTRAIN_TEST_STEP_DELAY_MS=100
  std::vector<std::string> extra_flags;
  // Runs the daemon under this command, e.g. {"/usr/sbin/ip", "netns", "exec", "NS"} (it must
  // exec the daemon in its own process, so that pid() stays the daemon's).
  std::vector<std::string> command_prefix;
  std::filesystem::path log;
};

// `qtrain-worker --coordinator ... --work-dir ...`.
class Worker {
 public:
  static absl::StatusOr<std::unique_ptr<Worker>> Start(const WorkerOptions& options);
  // Kills its training children, then the daemon.
  ~Worker();

  pid_t pid() const { return process_->pid(); }
  Process& process() { return *process_; }
  const WorkerOptions& options() const { return options_; }
  bool Signal(int signal) { return process_->Signal(signal); }
  // The id the coordinator assigned ("<name>-<n>", from <work-dir>/worker_id), once registered.
  absl::StatusOr<std::string> WaitForId(absl::Duration timeout);
  // Its running training children (normally zero or one).
  std::vector<ProcessId> TrainingChildren() const;
  // Waits until it has a training child; the child.
  absl::StatusOr<ProcessId> WaitForTrainingChild(absl::Duration timeout) const;
  // SIGKILL the children and the daemon, and reap the daemon.
  void Kill();
  std::string Log() const { return process_->Log(); }

 private:
  Worker(WorkerOptions options, std::unique_ptr<Process> process)
      : options_(std::move(options)), process_(std::move(process)) {}
  WorkerOptions options_;
  std::unique_ptr<Process> process_;
};

// What one `qtrain` run printed.
struct CliOutput {
  testing_cli::CliResult result;  // result.output: stderr only
  std::string out;                // stdout
  bool ok() const { return result.exited && result.exit_code == 0; }
  std::string Describe() const;
};

// The `qtrain` client pointed at a coordinator.
class Client {
 public:
  Client(std::string address, std::filesystem::path log_dir)
      : address_(std::move(address)), log_dir_(std::move(log_dir)) {}
  void set_address(std::string address) { address_ = std::move(address); }
  // Flags every run gets after --coordinator, e.g. {"--auth-token-file", PATH}.
  void set_flags(std::vector<std::string> flags) { flags_ = std::move(flags); }
  const std::string& address() const { return address_; }

  // Runs `qtrain --coordinator ADDRESS args...`.
  CliOutput Run(const std::vector<std::string>& args, double timeout_seconds = 30);
  // Runs it with `-o json` and parses stdout; an error carries what it printed.
  absl::StatusOr<nlohmann::json> Json(const std::vector<std::string>& args,
                                      double timeout_seconds = 30);
  // `get JOB -o json`.
  absl::StatusOr<nlohmann::json> GetJob(const std::string& job);
  // Starts `qtrain --coordinator ADDRESS args...` in the background (stdout and stderr to its
  // log).
  absl::StatusOr<std::unique_ptr<Process>> Spawn(const std::vector<std::string>& args);

 private:
  std::filesystem::path NextLog(const std::string& what);
  std::string address_;
  std::vector<std::string> flags_;
  std::filesystem::path log_dir_;
  int runs_ = 0;
};

// Polls `done` every `interval` until it returns true or `timeout` passes; its last value.
bool WaitFor(const std::function<bool()>& done, absl::Duration timeout,
             absl::Duration interval = absl::Milliseconds(100));

// Polls `get JOB` until `done(job)` holds; the job, or DEADLINE_EXCEEDED with the last one seen.
absl::StatusOr<nlohmann::json> WaitForJob(Client& client, const std::string& job,
                                          const std::function<bool(const nlohmann::json&)>& done,
                                          absl::Duration timeout);

// Proto-JSON helpers: int64 fields are strings in the protobuf JSON mapping, numbers otherwise.
int64_t JsonInt(const nlohmann::json& value, const std::string& field);
std::string JsonString(const nlohmann::json& value, const std::string& field);
// The job's state name ("JOB_STATE_RUNNING"), "" when absent.
std::string JobState(const nlohmann::json& job);
// A state that no longer changes.
bool IsTerminal(const std::string& state);
// The ID of "jobs/ID".
std::string JobId(const nlohmann::json& job);

// Every log file written by the processes of this harness (service processes and client runs)
// since the last ForgetLogs(), oldest first, each with its last `max_bytes`: what a failed test
// prints.
std::string AllLogs(size_t max_bytes = 6000);
void ForgetLogs();

// SIGKILLs every process of this harness that still runs (training children first).
void KillAllProcesses();

// When `limit` passes before it is destroyed: prints AllLogs(), kills every process and exits
// the test binary with status 1, so a hung test fails with its logs instead of a bare timeout.
class Watchdog {
 public:
  explicit Watchdog(absl::Duration limit);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// In a test: asserts that an absl::Status or StatusOr is OK, printing the status otherwise.
#define ASSERT_OK(expr)                                                        \
  do {                                                                         \
    const auto& status_ = (expr);                                              \
    ASSERT_TRUE(status_.ok()) << ::qtrain::testing_service::StatusOf(status_); \
  } while (0)

inline absl::Status StatusOf(const absl::Status& status) { return status; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& value) {
  return value.status();
}

// The sha256 of a file, "missing" when it cannot be read.
std::string Hash(const std::filesystem::path& path);

// "jobs/x/checkpoints/step-000000000006" -> 6; -1 when it is not one.
int64_t CheckpointStep(const std::string& name);

// The job's progress.step (0 when it has none).
int64_t ProgressStep(const nlohmann::json& job);

// The last `max_bytes` of a file ("" when unreadable).
std::string Tail(const std::filesystem::path& path, size_t max_bytes);

}  // namespace qtrain::testing_service

#endif  // QTRAIN_TESTS_INTEGRATION_SERVICE_HARNESS_H_
