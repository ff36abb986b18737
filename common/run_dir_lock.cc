#include "common/run_dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace qtrain {
namespace {

std::string LockPath(const std::string& dir) {
  return absl::StrCat(dir, "/", RunDirLock::kLockFileName);
}

absl::Status Errno(int err, absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(err)));
}

// flock() that retries when a signal interrupts it. Returns 0 or the errno.
int Flock(int fd, int operation) {
  while (::flock(fd, operation) != 0) {
    if (errno != EINTR) return errno;
  }
  return 0;
}

// The pid written in an open lock file, if it holds one.
std::optional<int64_t> ReadPid(int fd) {
  char buf[32] = {};
  const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
  if (n <= 0) return std::nullopt;
  int64_t pid = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::string_view(buf, n)), &pid) || pid <= 0)
    return std::nullopt;
  return pid;
}

// The holder writes its pid right after taking the lock: give it a moment to do so.
std::optional<int64_t> WaitForPid(int fd) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    if (std::optional<int64_t> pid = ReadPid(fd)) return pid;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return std::nullopt;
}

// Opens (creating) the lock file: a regular file, never following a symlink to something else.
absl::StatusOr<ScopedFd> OpenLockFile(const std::string& path, bool create) {
  const int flags =
      O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | (create ? O_CREAT : 0);
  ScopedFd fd(::open(path.c_str(), flags, 0644));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ELOOP) {
      return absl::FailedPreconditionError(
          absl::StrCat("lock file ", path, " is a symbolic link, not a regular file"));
    }
    if (err == EISDIR) {
      return absl::FailedPreconditionError(
          absl::StrCat("lock file ", path, " is a directory, not a regular file"));
    }
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat("no lock file ", path));
    return Errno(err, "cannot open lock file", path);
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Errno(errno, "cannot stat", path);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("lock file ", path, " is ", DescribeFileType(path), ", not a regular file"));
  }
  return fd;
}

}  // namespace

absl::StatusOr<RunDirLock> RunDirLock::Acquire(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("run directory: empty name");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create run directory ", dir, ": ", ec.message()));
  }
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat("run directory ", dir, " is ", DescribeFileType(dir), ", not a directory"));
  }
  const std::string path = LockPath(dir);
  absl::StatusOr<ScopedFd> fd = OpenLockFile(path, /*create=*/true);
  if (!fd.ok()) return fd.status();
  const int err = Flock(fd->get(), LOCK_EX | LOCK_NB);
  if (err == EWOULDBLOCK) {
    const std::optional<int64_t> pid = WaitForPid(fd->get());
    return absl::FailedPreconditionError(
        absl::StrCat("run directory ", dir, " is in use by ",
                     pid ? absl::StrCat("process ", *pid) : std::string("another process"),
                     " (it holds ", path, "); wait for it to finish or use another run directory"));
  }
  if (err != 0) return Errno(err, "cannot lock", path);
  const std::string pid = absl::StrCat(::getpid(), "\n");
  if (::ftruncate(fd->get(), 0) != 0) return Errno(errno, "cannot truncate", path);
  if (::pwrite(fd->get(), pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size()))
    return Errno(errno, "cannot write", path);
  return RunDirLock(dir, std::move(*fd));
}

RunDirLock& RunDirLock::operator=(RunDirLock&& other) noexcept {
  if (this != &other) {
    Release();
    dir_ = std::move(other.dir_);
    fd_ = std::move(other.fd_);
  }
  return *this;
}

RunDirLock::~RunDirLock() { Release(); }

void RunDirLock::Release() {
  if (fd_.get() < 0) return;
  // No stale pid for the next reader; the lock itself goes with the descriptor.
  (void)::ftruncate(fd_.get(), 0);
  fd_ = ScopedFd();
}

std::optional<int64_t> RunDirLock::HolderPid(const std::string& dir) {
  absl::StatusOr<ScopedFd> fd = OpenLockFile(LockPath(dir), /*create=*/false);
  if (!fd.ok()) return std::nullopt;
  // A lock we can share is one nobody holds exclusively.
  if (Flock(fd->get(), LOCK_SH | LOCK_NB) == 0) return std::nullopt;
  return WaitForPid(fd->get());
}

}  // namespace qtrain
