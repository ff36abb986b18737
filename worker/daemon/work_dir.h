// The daemon's work directory: one daemon per directory (flock on `worker.lock`, which holds
// the holder's pid), the worker id the coordinator assigned (`worker_id`, kept across restarts),
// and the assignment files handed to training children (`assignments/`).
#ifndef QTRAIN_WORKER_DAEMON_WORK_DIR_H_
#define QTRAIN_WORKER_DAEMON_WORK_DIR_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/file_util.h"

namespace qtrain::worker {

class WorkDir {
 public:
  static constexpr char kLockFileName[] = "worker.lock";
  static constexpr char kWorkerIdFileName[] = "worker_id";
  static constexpr char kAssignmentsDirName[] = "assignments";

  // Creates `dir` (and assignments/) if needed and locks it without waiting;
  // FAILED_PRECONDITION "work directory DIR is in use by qtrain-worker process N" when another
  // daemon holds it. The lock is released when the WorkDir is destroyed or the process ends.
  static absl::StatusOr<WorkDir> Open(const std::string& dir);

  WorkDir(WorkDir&&) noexcept = default;
  WorkDir& operator=(WorkDir&&) noexcept = default;

  const std::string& path() const { return dir_; }

  // The id saved by an earlier run; nullopt when there is none. An unreadable file, or one
  // holding something that is not a worker id, is an error naming the file.
  absl::StatusOr<std::optional<std::string>> ReadWorkerId() const;
  // Saves `id` (atomically); INVALID_ARGUMENT when it is not a worker id.
  absl::Status WriteWorkerId(const std::string& id) const;

  // `<dir>/assignments/<file_name>`.
  std::string AssignmentPath(const std::string& file_name) const;

 private:
  WorkDir(std::string dir, ScopedFd lock) : dir_(std::move(dir)), lock_(std::move(lock)) {}
  std::string dir_;
  ScopedFd lock_;
};

// A worker id as the coordinator makes them: [a-z0-9-], 1 to 128 characters.
bool IsValidWorkerId(absl::string_view id);

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_WORK_DIR_H_
