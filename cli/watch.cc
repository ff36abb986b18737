#include "cli/watch.h"

#include <unistd.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/output.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "qtrain/v1/jobs.grpc.pb.h"

namespace qtrain::cli {
namespace {

std::string EventTime(const v1::JobEvent& event) {
  if (!IsSet(event.time())) return "-";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", ToAbslTime(event.time()), absl::UTCTimeZone());
}

std::string StageLabel(int64_t stage, const std::vector<std::string>& names,
                       absl::string_view name = {}) {
  std::string label = absl::StrCat("stage ", stage);
  if (name.empty() && stage >= 0 && stage < static_cast<int64_t>(names.size())) {
    name = names[static_cast<size_t>(stage)];
  }
  if (!name.empty()) absl::StrAppend(&label, " '", name, "'");
  return label;
}

// The last component of a resource name ("jobs/a/checkpoints/step-1" -> "step-1").
absl::string_view BaseName(absl::string_view name) {
  const size_t slash = name.rfind('/');
  return slash == absl::string_view::npos ? name : name.substr(slash + 1);
}

// "eval hellaswag (multiple-choice) at step 12, stage 0 'short': acc 0.5, acc_norm 0.75,
// count 40": the metrics by name; a needle's cells ("accuracy/L1024/D0.5") are only counted.
std::string DescribeEvalTask(const v1::EvalTaskResult& e, const std::vector<std::string>& names) {
  std::vector<std::pair<std::string, double>> metrics(e.metrics().begin(), e.metrics().end());
  std::sort(metrics.begin(), metrics.end());
  std::vector<std::string> parts;
  int cells = 0;
  for (const auto& [name, value] : metrics) {
    if (absl::StrContains(name, '/')) {
      ++cells;
      continue;
    }
    parts.push_back(absl::StrFormat("%s %.4g", name, value));
  }
  if (cells > 0) parts.push_back(absl::StrCat(cells, " cells"));
  return absl::StrCat("eval ", e.name(), " (", e.task(), ") at step ", e.step(),
                      e.final() ? " (final), " : ", ", StageLabel(e.stage(), names), ": ",
                      parts.empty() ? "no metrics" : absl::StrJoin(parts, ", "));
}

std::string DescribeEvent(const v1::JobEvent& event, const std::vector<std::string>& names) {
  switch (event.event_case()) {
    case v1::JobEvent::kStateChanged: {
      const v1::StateChanged& e = event.state_changed();
      std::string line =
          absl::StrCat("state ", JobStateName(e.from()), " -> ", JobStateName(e.to()));
      if (!e.message().empty()) absl::StrAppend(&line, ": ", e.message());
      return line;
    }
    case v1::JobEvent::kStageStarted: {
      const v1::StageStarted& e = event.stage_started();
      std::string line = absl::StrCat(StageLabel(e.stage(), names, e.spec().name()),
                                      " started at step ", e.step());
      if (e.spec().seq_len() > 0) absl::StrAppend(&line, " (seq_len ", e.spec().seq_len(), ")");
      return line;
    }
    case v1::JobEvent::kStepMetrics: {
      const v1::StepMetrics& e = event.step_metrics();
      return absl::StrFormat("step %d/%d %s loss %.4f lr %.3g grad_norm %.3g %.0f tok/s", e.step(),
                             e.total_steps(), StageLabel(e.stage(), names), e.loss(),
                             e.learning_rate(), e.grad_norm(), e.tokens_per_second());
    }
    case v1::JobEvent::kCheckpoint: {
      const v1::Checkpoint& c = event.checkpoint();
      return absl::StrCat("checkpoint ", BaseName(c.name()), " ",
                          absl::AsciiStrToLower(CheckpointStateName(c.state())), ": step ",
                          c.step(), ", ", StageLabel(c.stage(), names), ", ", c.tokens_seen(),
                          " tokens");
    }
    case v1::JobEvent::kRestarted: {
      const v1::Restarted& e = event.restarted();
      std::string line = absl::StrCat("restart ", e.restarts(), " (round ", e.round(), ")");
      if (!e.reason().empty()) absl::StrAppend(&line, ": ", e.reason());
      absl::StrAppend(&line,
                      e.resume_checkpoint().empty()
                          ? "; starting from scratch"
                          : absl::StrCat("; resuming from ", BaseName(e.resume_checkpoint())));
      return line;
    }
    case v1::JobEvent::kEvalMetrics: {
      const v1::EvalMetrics& e = event.eval_metrics();
      return absl::StrFormat("eval at step %d (%s): loss %.4f, %d tokens seen", e.step(),
                             StageLabel(e.stage(), names), e.loss(), e.tokens());
    }
    case v1::JobEvent::kEvalTask:
      return DescribeEvalTask(event.eval_task(), names);
    case v1::JobEvent::EVENT_NOT_SET:
      break;
  }
  return "event of an unknown kind";
}

// Errors after which a new stream may work: the coordinator restarting, the network, a
// server-side cancel while it shuts down.
bool Retryable(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::ABORTED:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNKNOWN:
      return true;
    default:
      return false;
  }
}

// Reads one stream until it ends or the job reaches a final state.
class Watcher {
 public:
  Watcher(RpcClient client, ChannelOptions channel, std::string job, const WatchOptions& options)
      : client_(std::move(client)),
        channel_(std::move(channel)),
        stub_(v1::JobService::NewStub(client_.channel())),
        job_(std::move(job)),
        options_(options),
        display_(
            !options.json && ::isatty(2) == 1, [this](absl::string_view s) { WriteOut(s); },
            [](absl::string_view s) {
              std::fwrite(s.data(), 1, s.size(), stderr);
              std::fflush(stderr);
            }) {}

  absl::StatusOr<int> Run();

 private:
  // `probe`: while reconnecting, wait up to the timeout for the channel to connect instead of
  // failing at once with the channel's last error (gRPC does not always retry a channel in
  // TRANSIENT_FAILURE on its own).
  absl::StatusOr<v1::Job> GetJob(bool probe = false) {
    v1::GetJobRequest request;
    request.set_name(job_);
    v1::Job job;
    const absl::Duration timeout =
        probe ? std::min(options_.call_timeout, absl::Seconds(2)) : options_.call_timeout;
    std::unique_ptr<grpc::ClientContext> context = client_.NewContext(timeout);
    if (probe) context->set_wait_for_ready(true);
    const grpc::Status status = stub_->GetJob(context.get(), request, &job);
    if (!status.ok()) return client_.Describe(status, "GetJob", timeout);
    return job;
  }

  void WriteOut(absl::string_view s) {
    if (!write_status_.ok()) return;
    write_status_ = WriteStdout(std::string_view(s.data(), s.size()));
    if (write_status_.ok()) write_status_ = FlushStdout();
  }

  bool Cancelled() const {
    return options_.canceller != nullptr && options_.canceller->cancelled();
  }

  // Handles one event; returns the exit code once the job is final.
  std::optional<int> Handle(const v1::JobEvent& event);
  // One stream from after last_sequence_; the exit code if the job ended, else how it broke.
  std::optional<int> ReadStream(grpc::Status* status, bool* got_events);
  // Sleeps, waking early when cancelled.
  void Sleep(absl::Duration d) {
    const absl::Time end = absl::Now() + d;
    while (absl::Now() < end && !Cancelled()) {
      absl::SleepFor(std::min(end - absl::Now(), absl::Milliseconds(50)));
    }
  }

  // A new channel: one that failed for a while may stay in TRANSIENT_FAILURE even after the
  // coordinator is back.
  void NewChannel() {
    absl::StatusOr<RpcClient> client = RpcClient::Create(channel_);
    if (!client.ok()) return;  // the options were valid once; keep the old channel
    client_ = *std::move(client);
    stub_ = v1::JobService::NewStub(client_.channel());
  }

  // After "lost the event stream": says so once the coordinator answers again.
  void AnnounceReconnected() {
    if (!announced_) return;
    std::fprintf(stderr, "qtrain: reconnected to %s\n", client_.address().c_str());
    announced_ = false;
  }

  RpcClient client_;
  ChannelOptions channel_;
  bool announced_ = false;  // the loss of the stream was reported
  std::unique_ptr<v1::JobService::Stub> stub_;
  std::string job_;
  WatchOptions options_;
  ProgressDisplay display_;
  std::vector<std::string> stage_names_;
  int64_t last_sequence_ = 0;
  absl::Status write_status_;
};

std::optional<int> Watcher::Handle(const v1::JobEvent& event) {
  if (options_.json) {
    absl::StatusOr<std::string> json = MessageToJson(event, /*pretty=*/false);
    WriteOut(json.ok() ? *json : absl::StrCat(R"({"error": "cannot print an event"})", "\n"));
  } else if (event.has_step_metrics()) {
    const v1::StepMetrics& m = event.step_metrics();
    const int64_t stage = m.stage();
    const std::string name = stage >= 0 && stage < static_cast<int64_t>(stage_names_.size())
                                 ? stage_names_[static_cast<size_t>(stage)]
                                 : absl::StrCat(stage);
    display_.Update(FormatProgress(m, name), absl::Now());
    if (options_.include_steps) display_.PrintEventLine(FormatEventLine(event, stage_names_));
  } else {
    display_.PrintEventLine(FormatEventLine(event, stage_names_));
  }
  if (event.has_state_changed() && IsFinalState(event.state_changed().to())) {
    return ExitCodeForState(event.state_changed().to());
  }
  return std::nullopt;
}

std::optional<int> Watcher::ReadStream(grpc::Status* status, bool* got_events) {
  std::unique_ptr<grpc::ClientContext> context = client_.NewStreamContext();
  if (options_.canceller != nullptr) options_.canceller->SetContext(context.get());
  v1::WatchJobRequest request;
  request.set_name(job_);
  request.set_after_sequence(last_sequence_);
  // The progress line of the table output is drawn from the step metrics.
  request.set_include_step_metrics(options_.json ? options_.include_steps : true);
  std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader =
      stub_->WatchJob(context.get(), request);
  std::optional<int> code;
  v1::JobEvent event;
  while (reader->Read(&event)) {
    *got_events = true;
    AnnounceReconnected();
    if (event.sequence() <= last_sequence_) continue;  // already seen before a reconnect
    last_sequence_ = event.sequence();
    code = Handle(event);
    if (code || !write_status_.ok()) {
      context->TryCancel();
      break;
    }
  }
  *status = reader->Finish();
  if (options_.canceller != nullptr) options_.canceller->SetContext(nullptr);
  return code;
}

absl::StatusOr<int> Watcher::Run() {
  // The job must exist, and its stages name the progress line.
  QTRAIN_ASSIGN_OR_RETURN(const v1::Job job, GetJob());
  for (const v1::CurriculumStage& stage : job.spec().curriculum()) {
    stage_names_.push_back(stage.name());
  }
  absl::Time outage_start = absl::InfiniteFuture();
  absl::Duration backoff = absl::Milliseconds(100);
  while (true) {
    if (Cancelled()) return absl::CancelledError("the watch was interrupted");
    grpc::Status status;
    bool got_events = false;
    const std::optional<int> code = ReadStream(&status, &got_events);
    QTRAIN_RETURN_IF_ERROR(write_status_);
    if (code) {
      display_.Finish();
      return *code;
    }
    if (Cancelled()) return absl::CancelledError("the watch was interrupted");
    if (!status.ok() && !Retryable(status.error_code())) {
      display_.Finish();
      return client_.Describe(status, "WatchJob");
    }
    if (got_events) {
      outage_start = absl::InfiniteFuture();
      backoff = absl::Milliseconds(100);
    }
    // The stream ended without the final state: if the coordinator answers and says the job is
    // over, that is the end; otherwise reconnect after the last event seen.
    absl::StatusOr<v1::Job> now = GetJob(/*probe=*/true);
    if (now.ok()) {
      if (IsFinalState(now->state()) && status.ok()) {
        display_.Finish();
        return ExitCodeForState(now->state());
      }
      outage_start = absl::InfiniteFuture();
      AnnounceReconnected();
    } else {
      QTRAIN_LOG(DEBUG) << "watch: " << job_ << ": " << now.status().message();
      if (!absl::IsUnavailable(now.status()) && !absl::IsDeadlineExceeded(now.status())) {
        display_.Finish();
        return now.status();
      }
      const absl::Time t = absl::Now();
      if (outage_start == absl::InfiniteFuture()) outage_start = t;
      if (t - outage_start >= options_.reconnect_timeout) {
        display_.Finish();
        return absl::UnavailableError(
            absl::StrCat(now.status().message(), "; gave up watching ", job_, " after ",
                         HumanDuration(options_.reconnect_timeout), " without the coordinator"));
      }
      NewChannel();
      if (!announced_) {
        std::fprintf(stderr, "qtrain: lost the event stream of %s (%s); reconnecting\n",
                     job_.c_str(), std::string(now.status().message()).c_str());
        announced_ = true;
      }
    }
    Sleep(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(2));
  }
}

}  // namespace

std::string FormatEventLine(const v1::JobEvent& event,
                            const std::vector<std::string>& stage_names) {
  return absl::StrCat(EventTime(event), " ", DescribeEvent(event, stage_names));
}

std::string FormatProgress(const v1::StepMetrics& m, absl::string_view stage_name) {
  return absl::StrFormat(
      "[%s] step %d/%d loss %.4f %.0f tok/s ETA %s", stage_name, m.step(), m.total_steps(),
      m.loss(), m.tokens_per_second(),
      m.eta_seconds() > 0 ? HumanDuration(absl::Seconds(m.eta_seconds())) : std::string("-"));
}

ProgressDisplay::ProgressDisplay(bool terminal, Writer write_stdout, Writer write_stderr)
    : terminal_(terminal),
      write_stdout_(std::move(write_stdout)),
      write_stderr_(std::move(write_stderr)) {}

void ProgressDisplay::Draw() {
  write_stderr_(absl::StrCat("\r", line_, "\x1b[K"));
  drawn_ = true;
  pending_ = false;
}

void ProgressDisplay::Clear() {
  if (drawn_) write_stderr_("\r\x1b[K");
}

void ProgressDisplay::Update(std::string line, absl::Time now) {
  line_ = std::move(line);
  pending_ = true;
  if (terminal_) {
    if (now - last_draw_ < absl::Milliseconds(100)) return;
    Draw();
  } else {
    if (now - last_draw_ < absl::Seconds(1)) return;
    write_stderr_(absl::StrCat(line_, "\n"));
    pending_ = false;
  }
  last_draw_ = now;
}

void ProgressDisplay::PrintEventLine(absl::string_view line) {
  if (terminal_) Clear();
  write_stdout_(absl::StrCat(line, "\n"));
  if (terminal_ && drawn_) Draw();
}

void ProgressDisplay::Finish() {
  if (terminal_) {
    if (pending_) Draw();
    if (drawn_) write_stderr_("\n");
    drawn_ = false;
  } else if (pending_) {
    write_stderr_(absl::StrCat(line_, "\n"));
  }
  pending_ = false;
}

void WatchCanceller::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  if (context_ != nullptr) context_->TryCancel();
}

bool WatchCanceller::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

void WatchCanceller::SetContext(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  context_ = context;
  if (cancelled_ && context_ != nullptr) context_->TryCancel();
}

absl::StatusOr<int> WatchJob(const ChannelOptions& channel, const std::string& job,
                             const WatchOptions& options) {
  QTRAIN_ASSIGN_OR_RETURN(RpcClient client, RpcClient::Create(channel));
  Watcher watcher(std::move(client), channel, job, options);
  return watcher.Run();
}

}  // namespace qtrain::cli
