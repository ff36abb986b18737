// `qtrain watch`: follows a job's event stream, reconnecting (after the last sequence seen) when
// the stream breaks, prints one line per event and a live progress line, and ends with the
// job's exit code (0 SUCCEEDED, 1 FAILED, 2 CANCELLED).
#ifndef QTRAIN_CLI_WATCH_H_
#define QTRAIN_CLI_WATCH_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/rpc_channel.h"
#include "grpcpp/client_context.h"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain::cli {

// One line (no newline) for an event: its time, then what happened, e.g.
//   "2026-12-01T11:20:15Z jobs/demo-1 state QUEUED -> SCHEDULING"
//   "2026-12-01T11:20:16Z jobs/demo-1 stage 1 'long' started at step 256 (seq_len 512)"
// `stage_names` (the spec's curriculum) names stages by index where known.
std::string FormatEventLine(const v1::JobEvent& event, const std::vector<std::string>& stage_names);

// The progress line (no newline): "[short] step 120/400 loss 2.3456 1520 tok/s ETA 1m20s".
std::string FormatProgress(const v1::StepMetrics& metrics, absl::string_view stage_name);

// Draws the progress line on stderr: redrawn in place with '\r' on a terminal (at most 10 times
// a second), else a plain line at most once a second. Event lines printed meanwhile go through
// PrintEventLine, which clears the line on a terminal first and draws it again after.
class ProgressDisplay {
 public:
  using Writer = std::function<void(absl::string_view)>;
  ProgressDisplay(bool terminal, Writer write_stdout, Writer write_stderr);

  void Update(std::string line, absl::Time now);
  void PrintEventLine(absl::string_view line);
  // Ends the progress line (a newline after the last one drawn on a terminal; on a pipe the last
  // update not yet printed is printed).
  void Finish();

 private:
  void Draw();
  void Clear();

  bool terminal_;
  Writer write_stdout_, write_stderr_;
  std::string line_;      // the latest progress line
  bool drawn_ = false;    // line_ is on the terminal now
  bool pending_ = false;  // line_ has not been printed yet
  absl::Time last_draw_ = absl::InfinitePast();
};

// Cancels a running watch from another thread (a signal handler thread): the stream's context
// is cancelled and WatchJob returns CANCELLED.
class WatchCanceller {
 public:
  void Cancel();
  bool cancelled() const;
  // Registers the context of the stream being read (nullptr: none); cancels it at once when
  // Cancel() was called already.
  void SetContext(grpc::ClientContext* context);

 private:
  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  grpc::ClientContext* context_ ABSL_GUARDED_BY(mu_) = nullptr;
};

struct WatchOptions {
  bool json = false;           // one JobEvent JSON per line instead of event lines
  bool include_steps = false;  // step metrics too (json), or as event lines (table)
  absl::Duration call_timeout = absl::Seconds(10);
  // Give up after the coordinator has been unreachable this long.
  absl::Duration reconnect_timeout = absl::Seconds(60);
  WatchCanceller* canceller = nullptr;  // optional
};

// Watches `job` ("jobs/ID") until it ends. Returns the exit code of its final state; an error
// when the job does not exist, the coordinator stays unreachable or the watch was cancelled.
absl::StatusOr<int> WatchJob(const ChannelOptions& channel, const std::string& job,
                             const WatchOptions& options);

}  // namespace qtrain::cli

#endif  // QTRAIN_CLI_WATCH_H_
