#include "worker/train/checkpoint_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

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

std::string StepName(int64_t step) { return absl::StrFormat("%s%012d", kStepPrefix, step); }

bool ParseStepName(const std::string& name, int64_t* step) {
  if (name.size() != 5 + 12 || name.rfind(kStepPrefix, 0) != 0) return false;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return false;
  }
  return absl::SimpleAtoi(name.substr(5), step);
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
      step_(other.step_) {}

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
  if (fs::exists(final_dir, ec)) {
    // A checkpoint of this step exists already (e.g. written before a crash and found damaged):
    // move it aside first, since a directory cannot be renamed over a non-empty one.
    const std::string aside =
        absl::StrCat(root_, "/", kTempPrefix, "replaced-", ::getpid(), "-", StepName(step_));
    fs::rename(final_dir, aside, ec);
    if (ec) return FsError(ec, "cannot move aside", final_dir);
    fs::remove_all(aside, ec);
  }
  fs::rename(temp_dir_, final_dir, ec);
  if (ec) return FsError(ec, "cannot rename onto", final_dir);
  temp_dir_.clear();
  QTRAIN_RETURN_IF_ERROR(SyncDirectory(root_));
  info.directory = final_dir;
  return info;
}

// ---------------------------------------------------------------------------------------------
// CheckpointStore

absl::StatusOr<CheckpointStore> CheckpointStore::Open(const std::string& root) {
  if (root.empty()) return absl::InvalidArgumentError("checkpoint store: empty directory name");
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return FsError(ec, "cannot create checkpoint directory", root);
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    if (entry.path().filename().string().rfind(kTempPrefix, 0) == 0) {
      std::error_code ignored;
      fs::remove_all(entry.path(), ignored);
    }
  }
  if (ec) return FsError(ec, "cannot list", root);
  return CheckpointStore(root);
}

std::string CheckpointStore::DirectoryFor(int64_t step) const {
  return root_ + "/" + StepName(step);
}

absl::StatusOr<CheckpointWriter> CheckpointStore::Begin(int64_t step) const {
  if (step < 0) return absl::InvalidArgumentError("checkpoint step must be >= 0");
  static std::atomic<int> counter{0};
  const std::string temp_dir = absl::StrCat(root_, "/", kTempPrefix, absl::StrFormat("%012d", step),
                                            "-", ::getpid(), "-", counter.fetch_add(1));
  std::error_code ec;
  if (!fs::create_directory(temp_dir, ec) || ec) {
    return FsError(ec, "cannot create checkpoint directory", temp_dir);
  }
  return CheckpointWriter(root_, temp_dir, step);
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

absl::StatusOr<CheckpointInfo> CheckpointStore::Verify(int64_t step) const {
  const std::string dir = DirectoryFor(step);
  auto text = ReadFileToString(dir + "/" + kManifestName, 16 << 20);
  if (!text.ok())
    return DataLoss(dir, absl::StrCat("manifest unreadable: ", text.status().message()));
  const nlohmann::json manifest = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (manifest.is_discarded() || !manifest.is_object())
    return DataLoss(dir, "manifest is not a JSON object");
  if (manifest.value("format", "") != kFormat)
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
  CheckpointInfo info;
  info.step = step;
  info.directory = dir;
  info.metadata = *metadata_it;
  for (const nlohmann::json& file : *files_it) {
    if (!file.is_object() || !file.contains("path") || !file["path"].is_string() ||
        !file.contains("sha256") || !file["sha256"].is_string() || !file.contains("size") ||
        !file["size"].is_number_unsigned()) {
      return DataLoss(dir, "manifest has a malformed file entry");
    }
    CheckpointFileEntry entry{file["path"].get<std::string>(), file["sha256"].get<std::string>(),
                              file["size"].get<uint64_t>()};
    if (!IsPlainFileName(entry.path) || entry.path == kManifestName) {
      return DataLoss(dir, absl::StrCat("manifest names an invalid file '", entry.path, "'"));
    }
    const std::string path = dir + "/" + entry.path;
    std::error_code ec;
    const uint64_t size = fs::file_size(path, ec);
    if (ec) return DataLoss(dir, absl::StrCat(entry.path, " is missing"));
    if (size != entry.size) {
      return DataLoss(
          dir, absl::StrCat(entry.path, " has ", size, " bytes, the manifest says ", entry.size));
    }
    QTRAIN_ASSIGN_OR_RETURN(std::string digest, Sha256File(path));
    if (digest != entry.sha256)
      return DataLoss(dir, absl::StrCat(entry.path, " fails its sha256 check"));
    info.files.push_back(std::move(entry));
  }
  return info;
}

absl::StatusOr<CheckpointInfo> CheckpointStore::LatestGood(
    std::vector<std::string>* skipped) const {
  QTRAIN_ASSIGN_OR_RETURN(std::vector<int64_t> steps, ListSteps());
  for (int64_t step : steps) {
    absl::StatusOr<CheckpointInfo> info = Verify(step);
    if (info.ok()) return info;
    if (skipped != nullptr) skipped->push_back(std::string(info.status().message()));
  }
  return absl::NotFoundError(absl::StrCat("no usable checkpoint in ", root_));
}

absl::Status CheckpointStore::ApplyRetention(int64_t keep_last) const {
  if (keep_last <= 0) return absl::OkStatus();
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
