// Checkpoint directories: written under a temporary name, hashed, fsynced and renamed, so a
// checkpoint is either complete and verifiable or absent; found again by verifying hashes, with
// a damaged one skipped in favour of the one before it.
//
// Layout under the store's root:
//   step-000000000100/            a committed checkpoint (12-digit step)
//     manifest.json               {"format", "step", "files": [{"path", "sha256", "size"}],
//                                  "metadata": {...}}
//     <files written by the caller>
//   .tmp-step-000000000100-<pid>-<n>/   being written (removed on abort; stale ones are removed
//                                        when a store is opened)
//
// One process writes to a store at a time.
#ifndef QTRAIN_WORKER_TRAIN_CHECKPOINT_STORE_H_
#define QTRAIN_WORKER_TRAIN_CHECKPOINT_STORE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace qtrain::train {

struct CheckpointFileEntry {
  std::string path;  // relative to the checkpoint directory, no '/'
  std::string sha256;
  uint64_t size = 0;
};

struct CheckpointInfo {
  int64_t step = 0;
  std::string directory;
  std::vector<CheckpointFileEntry> files;
  nlohmann::json metadata;  // the caller's object (trainer state, data-plan hash, ...)
};

// A checkpoint being written. Write files into directory(), then Commit(). Destroying it
// without Commit() removes the temporary directory.
class CheckpointWriter {
 public:
  CheckpointWriter(CheckpointWriter&& other) noexcept;
  CheckpointWriter& operator=(CheckpointWriter&&) = delete;
  CheckpointWriter(const CheckpointWriter&) = delete;
  ~CheckpointWriter();

  const std::string& directory() const { return temp_dir_; }
  std::string PathFor(const std::string& file_name) const { return temp_dir_ + "/" + file_name; }
  int64_t step() const { return step_; }

  // Hashes and fsyncs every file in directory(), writes manifest.json with `metadata` (an
  // object), renames the directory to its final name and fsyncs the root.
  absl::StatusOr<CheckpointInfo> Commit(const nlohmann::json& metadata);

 private:
  friend class CheckpointStore;
  CheckpointWriter(std::string root, std::string temp_dir, int64_t step)
      : root_(std::move(root)), temp_dir_(std::move(temp_dir)), step_(step) {}
  std::string root_;
  std::string temp_dir_;  // empty once committed or moved from
  int64_t step_;
};

class CheckpointStore {
 public:
  static constexpr char kManifestName[] = "manifest.json";

  // Creates `root` if needed and removes stale temporary directories.
  static absl::StatusOr<CheckpointStore> Open(const std::string& root);

  const std::string& root() const { return root_; }

  // Starts checkpoint `step` (>= 0).
  absl::StatusOr<CheckpointWriter> Begin(int64_t step) const;

  // Steps of the committed checkpoint directories, newest first (unverified).
  absl::StatusOr<std::vector<int64_t>> ListSteps() const;
  std::string DirectoryFor(int64_t step) const;

  // Reads the manifest of checkpoint `step` and checks every file's size and sha256.
  // DATA_LOSS naming the file and the problem when it does not verify.
  absl::StatusOr<CheckpointInfo> Verify(int64_t step) const;

  // The newest checkpoint that verifies; each newer one that did not is described in
  // `skipped` (when non-null). NOT_FOUND when there is none.
  absl::StatusOr<CheckpointInfo> LatestGood(std::vector<std::string>* skipped = nullptr) const;

  // Deletes all but the newest `keep_last` checkpoints (0: keep all), never deleting the newest
  // one that verifies.
  absl::Status ApplyRetention(int64_t keep_last) const;

 private:
  explicit CheckpointStore(std::string root) : root_(std::move(root)) {}
  std::string root_;
};

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_CHECKPOINT_STORE_H_
