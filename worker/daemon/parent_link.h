// The training child's two pipes to its daemon (stage.proto): StageChildEvent lines out, and a
// reader of StageParentMessage lines in, which watches for the parent going silent.
#ifndef QTRAIN_WORKER_DAEMON_PARENT_LINK_H_
#define QTRAIN_WORKER_DAEMON_PARENT_LINK_H_

#include <atomic>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "qtrain/v1/stage.pb.h"

namespace qtrain::worker {

// Writes events as proto JSON (proto field names), one line per write(), from any thread.
class EventWriter {
 public:
  explicit EventWriter(int fd) : fd_(fd) {}
  // UNAVAILABLE when the pipe is gone (the parent stopped reading).
  absl::Status Write(const v1::StageChildEvent& event);

 private:
  absl::Mutex mu_;
  const int fd_;
};

// Reads the parent's messages on a thread of its own. The parent is gone ("orphaned") when its
// stream ends, fails, or stays silent (no line at all) for longer than `silence`.
class ParentLink {
 public:
  ParentLink(int control_fd, absl::Duration silence) : fd_(control_fd), silence_(silence) {}
  ~ParentLink() { Stop(); }
  ParentLink(const ParentLink&) = delete;
  ParentLink& operator=(const ParentLink&) = delete;

  void Start();
  // Stops and joins the reader. Idempotent.
  void Stop();

  bool orphaned() const;
  std::string orphan_reason() const;
  // The parent is gone (e.g. its end of the events pipe is closed). The first reason stays.
  void MarkOrphaned(std::string reason);

  // Forgets an ack that arrived unasked for, before a checkpoint event is written.
  void ExpectAck();
  // Waits for the CheckpointAck of the checkpoint just reported. UNAVAILABLE when the parent is
  // gone meanwhile, CANCELLED when `cancelled` turns true.
  absl::StatusOr<v1::CheckpointAck> WaitForAck(const std::function<bool()>& cancelled);

 private:
  void Loop();
  void HandleLine(const std::string& line);

  const int fd_;
  const absl::Duration silence_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable absl::Mutex mu_;
  bool orphaned_ ABSL_GUARDED_BY(mu_) = false;
  std::string orphan_reason_ ABSL_GUARDED_BY(mu_);
  std::optional<v1::CheckpointAck> ack_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_PARENT_LINK_H_
