// Files: whole-file reads, crash-safe (atomic) writes, and checked writes to stdout.
//
// An atomic write goes to a temporary file beside the target, is fsynced, renamed over the
// target, and the directory is fsynced, so that after a crash the target holds either the old
// or the new content, never a mix.
#ifndef QTRAIN_COMMON_FILE_UTIL_H_
#define QTRAIN_COMMON_FILE_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace qtrain {

// An open file descriptor, closed on destruction.
class ScopedFd {
 public:
  ScopedFd() = default;
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(ScopedFd&& other) noexcept : fd_(other.release()) {}
  ScopedFd& operator=(ScopedFd&& other) noexcept;
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd();
  int get() const { return fd_; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

// A regular file opened for reading, with its size at open time.
struct RegularFile {
  ScopedFd fd;
  uint64_t size = 0;
};

// Opens `path` for reading and checks that it is a regular file, without ever blocking: a FIFO,
// socket, device or directory is refused with FAILED_PRECONDITION naming what it is ("s.yaml is
// a FIFO, not a regular file"), and so is a file larger than `max_bytes`. NOT_FOUND if missing.
// Every reader of a file named by a user goes through this (or ReadFileToString).
absl::StatusOr<RegularFile> OpenRegularFile(const std::string& path,
                                            uint64_t max_bytes = UINT64_MAX);

// What kind of file `path` is, for messages: "a regular file", "a directory", "a FIFO", ...;
// follows symlinks; "missing" when it does not exist.
std::string DescribeFileType(const std::string& path);

// Reads a whole regular file (see OpenRegularFile). NOT_FOUND if missing; FAILED_PRECONDITION if
// not a regular file or larger than max_bytes (the message names the limit).
absl::StatusOr<std::string> ReadFileToString(const std::string& path,
                                             size_t max_bytes = size_t{1} << 34);

// Reads from `fd` until `size` bytes are in `buffer` or the input ends; returns the count (less
// than `size` only at the end). A read error is an error naming `name`, never an early end.
absl::StatusOr<size_t> ReadFully(int fd, void* buffer, size_t size, std::string_view name);

// "268435456 bytes (256 MiB)": a byte count for messages about limits.
std::string FormatByteLimit(uint64_t bytes);

// Writes `data` to stdout (through stdio's buffer, as printf and std::cout do). A failed write (a
// full disk, a closed pipe) is an error here and in every later call, so that a command writing
// many lines stops at the first one that cannot be written.
absl::Status WriteStdout(std::string_view data);

// Flushes std::cout and stdout and reports any write error either of them met since the start.
// main() calls it after every command: output that was lost is never a success.
absl::Status FlushStdout();

// Writes `content` to `path` atomically (see above).
absl::Status WriteFileAtomically(const std::string& path, std::string_view content);

// fsyncs a directory so that renames and creations inside it are durable.
absl::Status SyncDirectory(const std::string& dir);

// Streaming form of WriteFileAtomically for large files:
//   QTRAIN_ASSIGN_OR_RETURN(auto w, AtomicFileWriter::Open(path));
//   QTRAIN_RETURN_IF_ERROR(w.Append(chunk)); ...
//   QTRAIN_RETURN_IF_ERROR(w.Commit());
// Destroying the writer without Commit() removes the temporary file and leaves the target as it
// was.
class AtomicFileWriter {
 public:
  static absl::StatusOr<AtomicFileWriter> Open(const std::string& path);
  AtomicFileWriter(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter& operator=(AtomicFileWriter&& other) noexcept;
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  ~AtomicFileWriter();

  absl::Status Append(std::string_view data);
  absl::Status Append(const void* data, size_t size) {
    return Append(std::string_view(static_cast<const char*>(data), size));
  }
  // Flushes, fsyncs, renames over the target and fsyncs the directory.
  absl::Status Commit();
  // Removes the temporary file; the target is untouched. Idempotent.
  void Abort();

  const std::string& path() const { return path_; }
  const std::string& temp_path() const { return temp_path_; }
  size_t bytes_written() const { return bytes_written_; }

 private:
  AtomicFileWriter(std::string path, std::string temp_path, int fd)
      : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd) {}
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  size_t bytes_written_ = 0;
};

}  // namespace qtrain

#endif  // QTRAIN_COMMON_FILE_UTIL_H_
