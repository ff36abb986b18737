#include "worker/daemon/work_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace qtrain::worker {
namespace {

absl::Status CreateDirectory(const std::string& dir, absl::string_view what) {
  std::error_code ec;
  if (std::filesystem::exists(dir, ec) && !std::filesystem::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " ", dir, " is ", DescribeFileType(dir), ", not a directory"));
  }
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create ", what, " ", dir, ": ", ec.message()));
  }
  if (!std::filesystem::is_directory(dir, ec)) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, " ", dir, " is ", DescribeFileType(dir), ", not a directory"));
  }
  return absl::OkStatus();
}

// The pid the holder wrote into the lock file (it writes it right after locking).
std::string HolderOf(int fd) {
  for (int attempt = 0; attempt < 50; ++attempt) {
    char buf[32] = {};
    const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
    int64_t pid = 0;
    if (n > 0 && absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::string_view(buf, n)), &pid) &&
        pid > 0) {
      return absl::StrCat("qtrain-worker process ", pid);
    }
    ::usleep(10000);
  }
  return "another qtrain-worker";
}

}  // namespace

bool IsValidWorkerId(absl::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '-')) return false;
  }
  return true;
}

absl::StatusOr<WorkDir> WorkDir::Open(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("work directory: empty name");
  if (absl::Status s = CreateDirectory(dir, "work directory"); !s.ok()) return s;
  const std::string lock_path = absl::StrCat(dir, "/", kLockFileName);
  ScopedFd fd(
      ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644));
  if (fd.get() < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open lock file ", lock_path, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("lock file ", lock_path, " is not a regular file"));
  }
  int rc;
  while ((rc = ::flock(fd.get(), LOCK_EX | LOCK_NB)) != 0 && errno == EINTR) {
  }
  if (rc != 0) {
    if (errno == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat("work directory ", dir, " is in use by ",
                                                        HolderOf(fd.get()), " (it holds ",
                                                        lock_path, ")"));
    }
    return absl::InternalError(absl::StrCat("cannot lock ", lock_path, ": ", std::strerror(errno)));
  }
  const std::string pid = absl::StrCat(::getpid(), "\n");
  if (::ftruncate(fd.get(), 0) != 0 ||
      ::pwrite(fd.get(), pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    return absl::InternalError(
        absl::StrCat("cannot write lock file ", lock_path, ": ", std::strerror(errno)));
  }
  if (absl::Status s =
          CreateDirectory(absl::StrCat(dir, "/", kAssignmentsDirName), "assignments directory");
      !s.ok()) {
    return s;
  }
  return WorkDir(dir, std::move(fd));
}

absl::StatusOr<std::optional<std::string>> WorkDir::ReadWorkerId() const {
  const std::string path = absl::StrCat(dir_, "/", kWorkerIdFileName);
  absl::StatusOr<std::string> content = ReadFileToString(path, 4096);
  if (absl::IsNotFound(content.status())) return std::optional<std::string>();
  if (!content.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read ", path, ": ", content.status().message()));
  }
  const std::string id(absl::StripAsciiWhitespace(*content));
  if (!IsValidWorkerId(id)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path,
                     " does not hold a worker id (expected 1 to 128 characters of "
                     "[a-z0-9-]); remove it to register as a new worker"));
  }
  return std::optional<std::string>(id);
}

absl::Status WorkDir::WriteWorkerId(const std::string& id) const {
  if (!IsValidWorkerId(id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the coordinator assigned an invalid worker id '", absl::CEscape(id), "'"));
  }
  return WriteFileAtomically(absl::StrCat(dir_, "/", kWorkerIdFileName), id + "\n");
}

std::string WorkDir::AssignmentPath(const std::string& file_name) const {
  return absl::StrCat(dir_, "/", kAssignmentsDirName, "/", file_name);
}

}  // namespace qtrain::worker
