#include "worker/train/checkpoint_store.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;

constexpr char kFormat[] = "qtrain-checkpoint-v1";
constexpr char kStepPrefix[] = "step-";
constexpr char kTempPrefix[] = ".tmp-step-";
constexpr char kOldPrefix[] = ".old-step-";
constexpr int kStepDigits = 12;

std::string StepName(int64_t step) { return absl::StrFormat("%s%012d", kStepPrefix, step); }

bool AllDigits(absl::string_view text) {
  return !text.empty() &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

bool ParseStepName(const std::string& name, int64_t* step) {
  const size_t prefix = sizeof(kStepPrefix) - 1;
  if (name.size() != prefix + kStepDigits || name.rfind(kStepPrefix, 0) != 0) return false;
  return AllDigits(absl::string_view(name).substr(prefix)) &&
         absl::SimpleAtoi(name.substr(prefix), step);
}

// "<prefix><12-digit step>-<pid>[-...]": the step and the pid of the process that made it.
bool ParseWorkName(const std::string& name, absl::string_view prefix, int64_t* step, int64_t* pid) {
  if (!absl::StartsWith(name, prefix)) return false;
  absl::string_view rest = absl::string_view(name).substr(prefix.size());
  if (rest.size() < kStepDigits + 2 || rest[kStepDigits] != '-') return false;
  absl::string_view digits = rest.substr(0, kStepDigits);
  absl::string_view pid_text = rest.substr(kStepDigits + 1);
  pid_text = pid_text.substr(0, pid_text.find('-'));
  return AllDigits(digits) && AllDigits(pid_text) && absl::SimpleAtoi(digits, step) &&
         absl::SimpleAtoi(pid_text, pid);
}

// Whether `pid` may still be writing: another live process. (Our own pid's left-overs are from
// an earlier process that had the same pid, e.g. pid 1 of a container.)
bool WriterMayBeAlive(int64_t pid) {
  if (pid <= 0 || pid > INT32_MAX || pid == ::getpid()) return false;
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

bool IsLowerHexDigest(const std::string& text) {
  return text.size() == 64 && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// Swaps two directory entries atomically. false (errno set) when the file system cannot.
bool ExchangePaths(const std::string& a, const std::string& b) {
  return ::renameat2(AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE) == 0;
}

absl::Status FsError(const std::error_code& ec, absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", ec.message()));
}

absl::Status SyncFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return absl::InternalError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0)
    return absl::InternalError(absl::StrCat("cannot fsync ", path, ": ", std::strerror(err)));
  return absl::OkStatus();
}

bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

absl::Status DataLoss(const std::string& dir, absl::string_view what) {
  return absl::DataLossError(absl::StrCat("checkpoint ", dir, ": ", what));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// CheckpointWriter

CheckpointWriter::CheckpointWriter(CheckpointWriter&& other) noexcept
    : root_(std::move(other.root_)),
      temp_dir_(std::exchange(other.temp_dir_, std::string())),
      step_(other.step_),
      required_files_(std::move(other.required_files_)) {}

CheckpointWriter::~CheckpointWriter() {
  if (temp_dir_.empty()) return;
  std::error_code ec;
  fs::remove_all(temp_dir_, ec);
}

absl::StatusOr<CheckpointInfo> CheckpointWriter::Commit(const nlohmann::json& metadata) {
  if (temp_dir_.empty()) return absl::FailedPreconditionError("checkpoint already committed");
  if (!metadata.is_object())
    return absl::InvalidArgumentError("checkpoint metadata must be an object");
  CheckpointInfo info;
  info.step = step_;
  info.metadata = metadata;
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(temp_dir_, ec)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_regular_file()) {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint ", temp_dir_, ": '", name, "' is not a regular file"));
    }
    if (name == CheckpointStore::kManifestName) {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint ", temp_dir_, ": '", name, "' is reserved for the manifest"));
    }
    names.push_back(name);
  }
  if (ec) return FsError(ec, "cannot list", temp_dir_);
  std::sort(names.begin(), names.end());
  for (const std::string& required : required_files_) {
    if (!std::binary_search(names.begin(), names.end(), required)) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint ", temp_dir_, ": ", required, " was not written"));
    }
  }
  nlohmann::json files = nlohmann::json::array();
  for (const std::string& name : names) {
    const std::string path = temp_dir_ + "/" + name;
    QTRAIN_RETURN_IF_ERROR(SyncFile(path));
    QTRAIN_ASSIGN_OR_RETURN(std::string digest, Sha256File(path));
    const uint64_t size = fs::file_size(path, ec);
    if (ec) return FsError(ec, "cannot stat", path);
    info.files.push_back({name, digest, size});
    files.push_back({{"path", name}, {"sha256", digest}, {"size", size}});
  }
  const nlohmann::json manifest = {
      {"format", kFormat}, {"step", step_}, {"files", files}, {"metadata", metadata}};
  QTRAIN_RETURN_IF_ERROR(
      WriteFileAtomically(temp_dir_ + "/" + CheckpointStore::kManifestName, manifest.dump(1)));
  QTRAIN_RETURN_IF_ERROR(SyncDirectory(temp_dir_));

  const std::string final_dir = root_ + "/" + StepName(step_);
  QTRAIN_RETURN_IF_ERROR(MoveIntoPlace(final_dir));
  temp_dir_.clear();
  QTRAIN_RETURN_IF_ERROR(SyncDirectory(root_));
  info.directory = final_dir;
  return info;
}

absl::Status CheckpointWriter::MoveIntoPlace(const std::string& final_dir) {
  std::error_code ec;
  if (!fs::exists(final_dir, ec)) {
    fs::rename(temp_dir_, final_dir, ec);
    if (ec) return FsError(ec, "cannot rename onto", final_dir);
    return absl::OkStatus();
  }
  // A checkpoint of this step exists already (e.g. written before a crash and found damaged).
  // A directory cannot be renamed over a non-empty one, and deleting the old one first would
  // leave neither after a crash: exchange the two, then delete the old one under the temporary
  // name (a crash in between leaves a left-over that the next Open removes).
  if (ExchangePaths(temp_dir_, final_dir)) {
    QTRAIN_RETURN_IF_ERROR(SyncDirectory(root_));
    fs::remove_all(temp_dir_, ec);
    return absl::OkStatus();
  }
  // No RENAME_EXCHANGE on this file system: move the old one aside, the new one in, then delete
  // the old one. A crash between the two renames leaves the old one aside, and the next Open
  // puts it back.
  const std::string aside =
      absl::StrCat(root_, "/", kOldPrefix, absl::StrFormat("%012d", step_), "-", ::getpid());
  fs::remove_all(aside, ec);
  fs::rename(final_dir, aside, ec);
  if (ec) return FsError(ec, "cannot move aside", final_dir);
  fs::rename(temp_dir_, final_dir, ec);
  if (ec) {
    std::error_code ignored;
    fs::rename(aside, final_dir, ignored);
    return FsError(ec, "cannot rename onto", final_dir);
  }
  QTRAIN_RETURN_IF_ERROR(SyncDirectory(root_));
  fs::remove_all(aside, ec);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// CheckpointStore

absl::StatusOr<CheckpointStore> CheckpointStore::Open(const std::string& root,
                                                      CheckpointStoreOptions options) {
  if (root.empty()) return absl::InvalidArgumentError("checkpoint store: empty directory name");
  std::error_code ec;
  if (options.read_only) {
    if (!fs::is_directory(root, ec)) {
      return absl::NotFoundError(absl::StrCat("checkpoint directory ", root, " does not exist"));
    }
    return CheckpointStore(root, std::move(options));
  }
  fs::create_directories(root, ec);
  if (ec) return FsError(ec, "cannot create checkpoint directory", root);
  CheckpointStore store(root, std::move(options));
  QTRAIN_RETURN_IF_ERROR(store.RemoveLeftovers());
  return store;
}

absl::Status CheckpointStore::RemoveLeftovers() const {
  std::error_code ec;
  std::vector<fs::path> entries;
  for (const auto& entry : fs::directory_iterator(root_, ec)) entries.push_back(entry.path());
  if (ec) return FsError(ec, "cannot list", root_);
  for (const fs::path& path : entries) {
    const std::string name = path.filename().string();
    int64_t step = 0, pid = 0;
    std::error_code ignored;
    if (ParseWorkName(name, kTempPrefix, &step, &pid)) {
      if (!WriterMayBeAlive(pid)) fs::remove_all(path, ignored);
    } else if (ParseWorkName(name, kOldPrefix, &step, &pid)) {
      if (WriterMayBeAlive(pid)) continue;
      // An interrupted replacement: the old checkpoint goes back if the new one never arrived.
      if (fs::exists(DirectoryFor(step), ignored)) {
        fs::remove_all(path, ignored);
      } else {
        fs::rename(path, DirectoryFor(step), ec);
        if (ec) return FsError(ec, "cannot restore", DirectoryFor(step));
      }
    }
  }
  return absl::OkStatus();
}

std::string CheckpointStore::DirectoryFor(int64_t step) const {
  return root_ + "/" + StepName(step);
}

absl::StatusOr<CheckpointWriter> CheckpointStore::Begin(int64_t step) const {
  if (step < 0) return absl::InvalidArgumentError("checkpoint step must be >= 0");
  if (options_.read_only) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint store ", root_, " is open read-only"));
  }
  static std::atomic<int> counter{0};
  const std::string temp_dir = absl::StrCat(root_, "/", kTempPrefix, absl::StrFormat("%012d", step),
                                            "-", ::getpid(), "-", counter.fetch_add(1));
  std::error_code ec;
  if (!fs::create_directory(temp_dir, ec) || ec) {
    return FsError(ec, "cannot create checkpoint directory", temp_dir);
  }
  return CheckpointWriter(root_, temp_dir, step, options_.required_files);
}

absl::StatusOr<std::vector<int64_t>> CheckpointStore::ListSteps() const {
  std::vector<int64_t> steps;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root_, ec)) {
    int64_t step;
    if (entry.is_directory() && ParseStepName(entry.path().filename().string(), &step)) {
      steps.push_back(step);
    }
  }
  if (ec) return FsError(ec, "cannot list", root_);
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

absl::StatusOr<CheckpointInfo> ParseCheckpointManifest(std::string_view text,
                                                       const std::string& dir, int64_t step) {
  const nlohmann::json manifest = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (manifest.is_discarded() || !manifest.is_object())
    return DataLoss(dir, "manifest is not a JSON object");
  const auto format_it = manifest.find("format");
  if (format_it == manifest.end() || !format_it->is_string() || *format_it != kFormat)
    return DataLoss(dir, "manifest has an unknown format");
  const auto step_it = manifest.find("step");
  if (step_it == manifest.end() || !step_it->is_number_integer() ||
      step_it->get<int64_t>() != step) {
    return DataLoss(dir, "manifest step does not match the directory name");
  }
  const auto files_it = manifest.find("files");
  const auto metadata_it = manifest.find("metadata");
  if (files_it == manifest.end() || !files_it->is_array() || metadata_it == manifest.end() ||
      !metadata_it->is_object()) {
    return DataLoss(dir, "manifest lacks 'files' or 'metadata'");
  }
  // The trainer's own copy of the step must agree with the manifest's and the directory's.
  const auto meta_step = metadata_it->find("step");
  if (meta_step != metadata_it->end() &&
      (!meta_step->is_number_integer() || meta_step->get<int64_t>() != step)) {
    return DataLoss(dir, absl::StrCat("metadata.step ", meta_step->dump(),
                                      " does not match the checkpoint's step ", step));
  }
  CheckpointInfo info;
  info.step = step;
  info.directory = dir;
  info.metadata = *metadata_it;
  std::set<std::string> seen;
  for (size_t i = 0; i < files_it->size(); ++i) {
    const nlohmann::json& file = (*files_it)[i];
    const std::string where = absl::StrCat("manifest files[", i, "]");
    if (!file.is_object() || file.size() != 3 || !file.contains("path") ||
        !file["path"].is_string() || !file.contains("sha256") || !file["sha256"].is_string() ||
        !file.contains("size") || !file["size"].is_number_unsigned()) {
      return DataLoss(dir, absl::StrCat(where, " is malformed (want exactly a string 'path', a ",
                                        "string 'sha256' and a non-negative integer 'size')"));
    }
    CheckpointFileEntry entry{file["path"].get<std::string>(), file["sha256"].get<std::string>(),
                              file["size"].get<uint64_t>()};
    if (!IsPlainFileName(entry.path) || entry.path == CheckpointStore::kManifestName) {
      return DataLoss(dir, absl::StrCat("manifest names an invalid file '", entry.path, "'"));
    }
    if (!IsLowerHexDigest(entry.sha256)) {
      return DataLoss(
          dir, absl::StrCat(where, ".sha256 of ", entry.path, " is not 64 lowercase hex digits"));
    }
    if (!seen.insert(entry.path).second) {
      return DataLoss(dir, absl::StrCat("manifest lists ", entry.path, " twice"));
    }
    info.files.push_back(std::move(entry));
  }
  return info;
}

namespace {

// Checks one listed file: a regular file (never followed through a symlink, never blocking on a
// FIFO) of the listed size and digest.
absl::Status VerifyFile(const std::string& dir, const CheckpointFileEntry& entry) {
  const std::string path = dir + "/" + entry.path;
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return DataLoss(dir, absl::StrCat(entry.path, " is missing"));
    return DataLoss(dir, absl::StrCat(entry.path, ": ", std::strerror(errno)));
  }
  if (S_ISLNK(st.st_mode)) {
    return DataLoss(dir, absl::StrCat(entry.path, " is a symbolic link (to ",
                                      DescribeFileType(path), "), not a regular file"));
  }
  absl::StatusOr<RegularFile> file = OpenRegularFile(path);
  if (!file.ok()) {
    if (absl::IsNotFound(file.status())) {
      return DataLoss(dir, absl::StrCat(entry.path, " is missing"));
    }
    return DataLoss(dir, file.status().message());
  }
  if (file->size != entry.size) {
    return DataLoss(dir, absl::StrCat(entry.path, " has ", file->size, " bytes, the manifest says ",
                                      entry.size));
  }
  Sha256 hash;
  std::vector<char> chunk(1 << 20);
  uint64_t total = 0;
  while (true) {
    const ssize_t n = ::read(file->fd.get(), chunk.data(), chunk.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return DataLoss(dir, absl::StrCat("cannot read ", entry.path, ": ", std::strerror(errno)));
    }
    if (n == 0) break;
    hash.Update(chunk.data(), static_cast<size_t>(n));
    total += static_cast<uint64_t>(n);
  }
  if (total != entry.size) {
    return DataLoss(
        dir, absl::StrCat(entry.path, " has ", total, " bytes, the manifest says ", entry.size));
  }
  if (hash.FinishHex() != entry.sha256)
    return DataLoss(dir, absl::StrCat(entry.path, " fails its sha256 check"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<CheckpointInfo> CheckpointStore::Verify(
    int64_t step, const std::vector<std::string>& required_files) const {
  const std::string dir = DirectoryFor(step);
  const std::string manifest_path = dir + "/" + kManifestName;
  auto text = ReadFileToString(manifest_path, kMaxManifestBytes);
  if (!text.ok()) {
    return DataLoss(
        dir, absl::StrCat("manifest unreadable: ",
                          absl::IsNotFound(text.status()) ? "missing" : text.status().message()));
  }
  QTRAIN_ASSIGN_OR_RETURN(CheckpointInfo info, ParseCheckpointManifest(*text, dir, step));
  for (const std::string& required : required_files) {
    const bool listed =
        std::any_of(info.files.begin(), info.files.end(),
                    [&](const CheckpointFileEntry& e) { return e.path == required; });
    if (!listed) {
      return DataLoss(dir, absl::StrCat("manifest does not list ", required, " (",
                                        DescribeFileType(dir + "/" + required), " on disk)"));
    }
  }
  for (const CheckpointFileEntry& entry : info.files) {
    QTRAIN_RETURN_IF_ERROR(VerifyFile(dir, entry));
  }
  if (options_.validate_metadata) {
    absl::Status valid = options_.validate_metadata(info);
    if (absl::IsDataLoss(valid)) return DataLoss(dir, valid.message());
    QTRAIN_RETURN_IF_ERROR(valid);
  }
  return info;
}

absl::StatusOr<CheckpointInfo> CheckpointStore::LatestGood(
    std::vector<std::string>* skipped) const {
  QTRAIN_ASSIGN_OR_RETURN(std::vector<int64_t> steps, ListSteps());
  for (int64_t step : steps) {
    absl::StatusOr<CheckpointInfo> info = Verify(step);
    if (info.ok() || !absl::IsDataLoss(info.status())) return info;
    if (skipped != nullptr) skipped->push_back(std::string(info.status().message()));
  }
  return absl::NotFoundError(absl::StrCat("no usable checkpoint in ", root_));
}

absl::Status CheckpointStore::ApplyRetention(int64_t keep_last) const {
  if (keep_last <= 0) return absl::OkStatus();
  if (options_.read_only) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint store ", root_, " is open read-only"));
  }
  QTRAIN_ASSIGN_OR_RETURN(std::vector<int64_t> steps, ListSteps());
  // The newest checkpoint that verifies survives whatever keep_last says.
  int64_t newest_good = -1;
  for (int64_t step : steps) {
    if (Verify(step).ok()) {
      newest_good = step;
      break;
    }
  }
  for (size_t i = static_cast<size_t>(keep_last); i < steps.size(); ++i) {
    if (steps[i] == newest_good) continue;
    std::error_code ec;
    fs::remove_all(DirectoryFor(steps[i]), ec);
    if (ec) return FsError(ec, "cannot delete", DirectoryFor(steps[i]));
  }
  return absl::OkStatus();
}

}  // namespace qtrain::train
