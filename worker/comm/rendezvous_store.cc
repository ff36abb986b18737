// The in-memory and directory rendezvous stores.
#include "worker/comm/rendezvous_store.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace qtrain::comm {
namespace {

// Values are addresses; anything larger is a mistake, not a rendezvous.
constexpr size_t kMaxValueBytes = size_t{1} << 20;
constexpr absl::Duration kPollInterval = absl::Milliseconds(10);

absl::Status NotSetBy(const std::string& key, absl::Time deadline) {
  return absl::DeadlineExceededError(absl::StrCat("rendezvous key '", key, "' was not set by ",
                                                  absl::FormatTime(deadline, absl::UTCTimeZone())));
}

class InMemoryStore final : public RendezvousStore {
 public:
  absl::Status Set(const std::string& key, const std::string& value) override {
    absl::MutexLock lock(&mu_);
    values_[key] = value;
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Get(const std::string& key, absl::Time deadline) override {
    absl::MutexLock lock(&mu_);
    auto is_set = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return values_.contains(key); };
    mu_.AwaitWithDeadline(absl::Condition(&is_set), deadline);
    auto it = values_.find(key);
    if (it == values_.end()) return NotSetBy(key, deadline);
    return it->second;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
};

// A key as a file name: letters, digits, '-' and '_' kept, every other byte as %XX, behind a
// "k-" that no temporary file name starts with.
std::string FileNameOf(const std::string& key) {
  std::string name = "k-";
  for (unsigned char c : key) {
    if (std::isalnum(c) || c == '-' || c == '_') {
      name.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&name, "%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  return name;
}

class DirectoryStore final : public RendezvousStore {
 public:
  explicit DirectoryStore(std::string directory) : directory_(std::move(directory)) {}

  absl::Status Set(const std::string& key, const std::string& value) override {
    QTRAIN_ASSIGN_OR_RETURN(std::string path, PathOf(key));
    if (value.size() > kMaxValueBytes) {
      return absl::InvalidArgumentError(absl::StrCat("rendezvous key '", key, "': a value of ",
                                                     value.size(), " bytes (at most ",
                                                     kMaxValueBytes, ")"));
    }
    absl::Status written = WriteFileAtomically(path, value);
    if (!written.ok()) {
      return absl::Status(written.code(),
                          absl::StrCat("rendezvous key '", key, "': ", written.message()));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Get(const std::string& key, absl::Time deadline) override {
    QTRAIN_ASSIGN_OR_RETURN(std::string path, PathOf(key));
    while (true) {
      absl::StatusOr<std::string> value = ReadFileToString(path, kMaxValueBytes);
      if (value.ok()) return value;
      if (value.status().code() != absl::StatusCode::kNotFound) {
        return absl::Status(value.status().code(),
                            absl::StrCat("rendezvous key '", key, "': ", value.status().message()));
      }
      const absl::Time now = absl::Now();
      if (now >= deadline) return NotSetBy(key, deadline);
      absl::SleepFor(std::min(kPollInterval, deadline - now));
    }
  }

 private:
  absl::StatusOr<std::string> PathOf(const std::string& key) const {
    std::string name = FileNameOf(key);
    if (key.empty() || name.size() > 240) {
      return absl::InvalidArgumentError(absl::StrCat(
          "rendezvous key '", key, "': ", key.empty() ? "empty" : "too long for a file name"));
    }
    return absl::StrCat(directory_, "/", name);
  }

  const std::string directory_;
};

// mkdir -p.
absl::Status MakeDirectories(const std::string& directory) {
  for (size_t slash = directory.find('/', 1);; slash = directory.find('/', slash + 1)) {
    const std::string prefix = directory.substr(0, slash);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::FailedPreconditionError(
          absl::StrCat("rendezvous directory ", prefix, ": ", std::strerror(errno)));
    }
    if (slash == std::string::npos) break;
  }
  struct stat info;
  if (::stat(directory.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat("rendezvous directory ", directory, " is ",
                                                      DescribeFileType(directory),
                                                      ", not a directory"));
  }
  return absl::OkStatus();
}

}  // namespace

std::shared_ptr<RendezvousStore> MakeInMemoryStore() { return std::make_shared<InMemoryStore>(); }

absl::StatusOr<std::shared_ptr<RendezvousStore>> MakeDirectoryStore(const std::string& directory) {
  if (directory.empty()) {
    return absl::InvalidArgumentError("rendezvous directory: empty path");
  }
  QTRAIN_RETURN_IF_ERROR(MakeDirectories(directory));
  return std::make_shared<DirectoryStore>(directory);
}

}  // namespace qtrain::comm
