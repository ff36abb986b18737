#include "common/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace qtrain {
namespace {

absl::Status ErrnoStatus(int err, absl::string_view what, absl::string_view path) {
  const absl::StatusCode code = err == ENOENT   ? absl::StatusCode::kNotFound
                                : err == EACCES ? absl::StatusCode::kPermissionDenied
                                : err == ENOSPC ? absl::StatusCode::kResourceExhausted
                                                : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat(what, " ", path, ": ", std::strerror(err)));
}

std::string DirectoryOf(const std::string& path) {
  const std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

}  // namespace

ScopedFd& ScopedFd::operator=(ScopedFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.release();
  }
  return *this;
}

ScopedFd::~ScopedFd() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {

const char* FileTypeName(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "not a regular file";
}

}  // namespace

std::string DescribeFileType(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return errno == ENOENT ? "missing" : std::strerror(errno);
  return FileTypeName(st.st_mode);
}

absl::StatusOr<RegularFile> OpenRegularFile(const std::string& path, uint64_t max_bytes) {
  if (path.empty()) return absl::InvalidArgumentError("empty file name");
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It does not change
  // reads of regular files, and the type is checked on the open descriptor (no race with a
  // rename between a stat and the open).
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (fd.get() < 0) return ErrnoStatus(errno, "cannot open", path);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, "cannot stat", path);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " is ", FileTypeName(st.st_mode), ", not a regular file"));
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, " is ", st.st_size, " bytes, more than the limit of ", FormatByteLimit(max_bytes)));
  }
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags >= 0) ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
  return RegularFile{std::move(fd), static_cast<uint64_t>(st.st_size)};
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path, size_t max_bytes) {
  QTRAIN_ASSIGN_OR_RETURN(RegularFile file, OpenRegularFile(path, max_bytes));
  std::string content;
  content.reserve(static_cast<size_t>(file.size));
  char chunk[1 << 16];
  while (true) {
    const ssize_t n = ::read(file.fd.get(), chunk, sizeof(chunk));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "cannot read", path);
    }
    if (n == 0) break;
    content.append(chunk, static_cast<size_t>(n));
    // The file may grow while it is read.
    if (content.size() > max_bytes) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, " is larger than the limit of ", FormatByteLimit(max_bytes)));
    }
  }
  return content;
}

absl::StatusOr<size_t> ReadFully(int fd, void* buffer, size_t size, std::string_view name) {
  char* out = static_cast<char*>(buffer);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::read(fd, out + done, size - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "cannot read", absl::string_view(name.data(), name.size()));
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

std::string FormatByteLimit(uint64_t bytes) {
  std::string text = absl::StrCat(bytes, " bytes");
  constexpr uint64_t kMiB = uint64_t{1} << 20;
  if (bytes >= (uint64_t{1} << 40) && bytes % (uint64_t{1} << 40) == 0) {
    absl::StrAppend(&text, " (", bytes >> 40, " TiB)");
  } else if (bytes >= (uint64_t{1} << 30) && bytes % (uint64_t{1} << 30) == 0) {
    absl::StrAppend(&text, " (", bytes >> 30, " GiB)");
  } else if (bytes >= kMiB && bytes % kMiB == 0) {
    absl::StrAppend(&text, " (", bytes / kMiB, " MiB)");
  }
  return text;
}

namespace {

// The errno of the first failed write to stdout; -1 when the cause is unknown (a write through
// printf or std::cout that failed); 0 while all is well.
std::atomic<int> stdout_error{0};

void NoteStdoutError(int err) {
  int expected = 0;
  stdout_error.compare_exchange_strong(expected, err != 0 ? err : -1);
}

absl::Status StdoutError() {
  const int err = stdout_error.load();
  if (err <= 0) return absl::DataLossError("cannot write to stdout (output was lost)");
  const absl::StatusCode code =
      err == ENOSPC ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kDataLoss;
  return absl::Status(code, absl::StrCat("cannot write to stdout: ", std::strerror(err)));
}

}  // namespace

absl::Status WriteStdout(std::string_view data) {
  if (stdout_error.load() != 0) return StdoutError();
  if (std::ferror(stdout)) {
    NoteStdoutError(0);
    return StdoutError();
  }
  errno = 0;
  if (std::fwrite(data.data(), 1, data.size(), stdout) != data.size() || std::ferror(stdout)) {
    NoteStdoutError(errno);
    return StdoutError();
  }
  return absl::OkStatus();
}

absl::Status FlushStdout() {
  // std::cout shares stdout's buffer unless sync_with_stdio(false) was called; flush both.
  errno = 0;
  std::cout.flush();
  if (!std::cout.good()) NoteStdoutError(errno);
  errno = 0;
  if (std::fflush(stdout) != 0) NoteStdoutError(errno);
  if (std::ferror(stdout)) NoteStdoutError(0);
  if (stdout_error.load() != 0) return StdoutError();
  return absl::OkStatus();
}

absl::Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, "cannot open directory", dir);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) return ErrnoStatus(err, "cannot fsync directory", dir);
  return absl::OkStatus();
}

absl::StatusOr<AtomicFileWriter> AtomicFileWriter::Open(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("atomic write: empty path");
  static std::atomic<uint64_t> counter{0};
  // Unique among processes (pid) and among writers of this process (counter).
  const std::string temp_path = absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
  const int fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus(errno, "cannot create", temp_path);
  return AtomicFileWriter(path, temp_path, fd);
}

AtomicFileWriter::AtomicFileWriter(AtomicFileWriter&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      fd_(std::exchange(other.fd_, -1)),
      bytes_written_(other.bytes_written_) {}

AtomicFileWriter& AtomicFileWriter::operator=(AtomicFileWriter&& other) noexcept {
  if (this != &other) {
    Abort();
    path_ = std::move(other.path_);
    temp_path_ = std::move(other.temp_path_);
    fd_ = std::exchange(other.fd_, -1);
    bytes_written_ = other.bytes_written_;
  }
  return *this;
}

AtomicFileWriter::~AtomicFileWriter() { Abort(); }

void AtomicFileWriter::Abort() {
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  ::unlink(temp_path_.c_str());
}

absl::Status AtomicFileWriter::Append(std::string_view data) {
  if (fd_ < 0) return absl::FailedPreconditionError("atomic write: writer is closed");
  while (!data.empty()) {
    const ssize_t n = ::write(fd_, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "cannot write", temp_path_);
    }
    data.remove_prefix(static_cast<size_t>(n));
    bytes_written_ += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::Commit() {
  if (fd_ < 0) return absl::FailedPreconditionError("atomic write: writer is closed");
  if (::fsync(fd_) != 0) {
    const absl::Status status = ErrnoStatus(errno, "cannot fsync", temp_path_);
    Abort();
    return status;
  }
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) {
    const absl::Status status = ErrnoStatus(errno, "cannot close", temp_path_);
    ::unlink(temp_path_.c_str());
    return status;
  }
  if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const absl::Status status = ErrnoStatus(errno, "cannot rename onto", path_);
    ::unlink(temp_path_.c_str());
    return status;
  }
  return SyncDirectory(DirectoryOf(path_));
}

absl::Status WriteFileAtomically(const std::string& path, std::string_view content) {
  QTRAIN_ASSIGN_OR_RETURN(AtomicFileWriter writer, AtomicFileWriter::Open(path));
  QTRAIN_RETURN_IF_ERROR(writer.Append(content));
  return writer.Commit();
}

}  // namespace qtrain
