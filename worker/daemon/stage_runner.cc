#include "worker/daemon/stage_runner.h"

#include <signal.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"

namespace qtrain::worker {
namespace {

constexpr absl::Duration kWriteTimeout = absl::Milliseconds(200);

absl::StatusOr<std::string> ToJson(const google::protobuf::Message& message,
                                   bool print_defaults = false) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = print_defaults;
  std::string json;
  const auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("cannot encode ", message.GetTypeName(),
                                            " as JSON: ", std::string(status.message())));
  }
  return json;
}

}  // namespace

std::string AssignmentFileName(const v1::Assignment& assignment) {
  std::string id(absl::StripPrefix(assignment.job(), "jobs/"));
  // The job id comes from the coordinator; keep the file inside assignments/ whatever it is.
  std::replace(id.begin(), id.end(), '/', '_');
  return absl::StrCat(id, "-r", assignment.round(), "-rank", assignment.rank(), ".json");
}

std::vector<std::string> StageChildArgv(const std::string& assignment_path,
                                        const StageRunnerOptions& options) {
  std::vector<std::string> argv = options.command;
  const auto add = [&argv](const char* flag, const std::string& value) {
    if (!value.empty()) argv.insert(argv.end(), {flag, value});
  };
  add("--assignment", assignment_path);
  if (options.threads > 0) add("--threads", absl::StrCat(options.threads));
  add("--parent-timeout-ms", absl::StrCat(absl::ToInt64Milliseconds(options.parent_timeout)));
  const ChannelOptions& c = options.coordinator;
  add("--coordinator", c.address);
  add("--cluster-token-file", c.token_file);
  add("--tls-ca", c.tls_ca);
  add("--tls-cert", c.tls_cert);
  add("--tls-key", c.tls_key);
  add("--tls-server-name", c.tls_server_name);
  add("--worker", options.worker);
  add("--peer-host", options.peer_host);
  add("--collective-timeout-ms",
      absl::StrCat(absl::ToInt64Milliseconds(options.collective_timeout)));
  return argv;
}

absl::StatusOr<std::unique_ptr<StageRunner>> StageRunner::Start(const v1::Assignment& assignment,
                                                                const std::string& assignment_path,
                                                                const StageRunnerOptions& options) {
  QTRAIN_ASSIGN_OR_RETURN(std::string json, ToJson(assignment));
  QTRAIN_RETURN_IF_ERROR(
      Annotate(WriteFileAtomically(assignment_path, json + "\n"), "writing the assignment file"));
  ChildSpec spec;
  spec.argv = StageChildArgv(assignment_path, options);
  QTRAIN_ASSIGN_OR_RETURN(std::unique_ptr<ChildProcess> child, ChildProcess::Spawn(spec));
  return std::unique_ptr<StageRunner>(
      new StageRunner(assignment, std::move(child), options.ping_interval));
}

absl::StatusOr<std::vector<v1::StageChildEvent>> StageRunner::ReadEvents() {
  std::vector<std::string> lines;
  absl::StatusOr<bool> open = child_->ReadLines(&lines);
  std::vector<v1::StageChildEvent> events;
  google::protobuf::util::JsonParseOptions parse;
  parse.ignore_unknown_fields = true;  // a newer child may say more
  for (const std::string& line : lines) {
    if (line.empty()) continue;
    v1::StageChildEvent event;
    const auto status = google::protobuf::util::JsonStringToMessage(line, &event, parse);
    if (!status.ok() || event.event_case() == v1::StageChildEvent::EVENT_NOT_SET) {
      QTRAIN_LOG(WARNING) << "training child " << child_->pid()
                          << " wrote a line that is not an event (" << line.size() << " bytes)";
      continue;
    }
    events.push_back(std::move(event));
  }
  if (!open.ok()) return open.status();
  return events;
}

void StageRunner::Tick(absl::Time now) {
  if (kill_at_ && now >= *kill_at_) child_->SignalGroup(SIGKILL);
  if (now >= next_ping_ && !child_->reaped()) {
    // A child that stopped reading is handled by its exit, not here.
    (void)child_->WriteLine(R"({"ping":{}})", kWriteTimeout);
    next_ping_ = now + ping_interval_;
  }
}

absl::Time StageRunner::next_tick() const {
  return kill_at_ ? std::min(next_ping_, *kill_at_) : next_ping_;
}

absl::Status StageRunner::Ack(bool ok, const std::string& message) {
  v1::StageParentMessage reply;
  reply.mutable_checkpoint_ack()->set_ok(ok);
  if (!ok) reply.mutable_checkpoint_ack()->set_message(message);
  QTRAIN_ASSIGN_OR_RETURN(std::string json, ToJson(reply, /*print_defaults=*/true));
  return child_->WriteLine(json, absl::Seconds(1));
}

void StageRunner::Stop(absl::Duration grace) {
  if (kill_at_) return;
  child_->SignalGroup(SIGTERM);
  kill_at_ = absl::Now() + grace;
}

std::optional<ExitStatus> StageRunner::TryWait() {
  // Events written just before the exit must still be read.
  if (child_->stdout_fd() >= 0 && !kill_at_) return std::nullopt;
  return child_->TryWait();
}

}  // namespace qtrain::worker
