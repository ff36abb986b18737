// An exclusive lock on a run directory, held for the life of a run, so that two processes never
// train into (or clean up) the same directory at once.
//
//   QTRAIN_ASSIGN_OR_RETURN(RunDirLock lock, RunDirLock::Acquire(run_dir));
//   ... everything that writes into run_dir ...
//   // released when `lock` is destroyed (or the process dies)
//
// The lock is flock(2) on `<dir>/qtrain.lock`, which also holds the holder's pid so that a
// refused process can say who has the directory. The kernel drops the lock when the holder
// exits, however it exits, so a crashed run never leaves the directory locked. The lock file
// itself stays (removing it would let two processes lock two different files of one name).
#ifndef QTRAIN_COMMON_RUN_DIR_LOCK_H_
#define QTRAIN_COMMON_RUN_DIR_LOCK_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/file_util.h"

namespace qtrain {

class RunDirLock {
 public:
  static constexpr char kLockFileName[] = "qtrain.lock";

  // Creates `dir` if needed and takes its lock without waiting. FAILED_PRECONDITION "run
  // directory DIR is in use by process N" when another holder (another process, or another
  // RunDirLock of this one) has it; the lock file must be a regular file.
  static absl::StatusOr<RunDirLock> Acquire(const std::string& dir);

  RunDirLock(RunDirLock&&) noexcept = default;
  RunDirLock& operator=(RunDirLock&&) noexcept;
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  ~RunDirLock();

  const std::string& directory() const { return dir_; }
  bool held() const { return fd_.get() >= 0; }

  // Releases the lock now (otherwise the destructor does). Idempotent.
  void Release();

  // The pid recorded by the current holder of `dir`'s lock; nullopt when nobody holds it (or
  // the file names no pid).
  static std::optional<int64_t> HolderPid(const std::string& dir);

 private:
  RunDirLock(std::string dir, ScopedFd fd) : dir_(std::move(dir)), fd_(std::move(fd)) {}
  std::string dir_;
  ScopedFd fd_;
};

}  // namespace qtrain

#endif  // QTRAIN_COMMON_RUN_DIR_LOCK_H_
