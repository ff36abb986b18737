// Checkpoint directories: written under a temporary name, hashed, fsynced and renamed, so a
// checkpoint is either complete and verifiable or absent; found again by verifying hashes, with
// a damaged one skipped in favour of the one before it.
//
// Layout under the store's root:
//   step-000000000100/            a committed checkpoint (12-digit step)
//     manifest.json               {"format", "step", "files": [{"path", "sha256", "size"}],
//                                  "metadata": {...}}
//     <files written by the caller>
//   .tmp-step-000000000100-<pid>-<n>/   being written (removed on abort; left-overs of a process
//                                        that is gone are removed when a store is opened)
//   .old-step-000000000100-<pid>/       a replaced checkpoint on its way out (see Commit)
//
// One process writes to a store at a time: the caller holds the run directory's lock
// (common/run_dir_lock.h) while a store is open.
#ifndef QTRAIN_WORKER_TRAIN_CHECKPOINT_STORE_H_
#define QTRAIN_WORKER_TRAIN_CHECKPOINT_STORE_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
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
  // Seconds this process spent writing its files of the checkpoint (set by the trainer on what
  // it hands to on_checkpoint; metrics only).
  double write_seconds = 0;
};

// Largest manifest.json read back.
inline constexpr uint64_t kMaxManifestBytes = 16 << 20;

// Parses and checks the text of checkpoint `step`'s manifest (`dir` names it in messages):
// the format, the step (== `step`, and == metadata.step when the metadata has one), every file
// entry (a plain file name other than the manifest, listed once, a 64-digit lowercase hex
// sha256, a size in bytes) and the metadata object. Touches no file. DATA_LOSS naming the
// problem otherwise.
absl::StatusOr<CheckpointInfo> ParseCheckpointManifest(std::string_view text,
                                                       const std::string& dir, int64_t step);

struct CheckpointStoreOptions {
  // Files every checkpoint must list in its manifest (and so hold, hashed); one that lacks any
  // is damaged.
  std::vector<std::string> required_files;
  // Checks a manifest's metadata against what the caller knows (optional). DATA_LOSS: the
  // checkpoint is damaged (skipped in favour of an older one); any other error stops the search.
  std::function<absl::Status(const CheckpointInfo&)> validate_metadata;
  // A reader beside the process that writes the store (the other ranks of a data-parallel
  // group): Open neither creates the root nor removes anything, Begin and ApplyRetention refuse.
  bool read_only = false;
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
  // object), renames the directory to its final name and fsyncs the root. FAILED_PRECONDITION
  // when one of the store's required files was not written. A checkpoint of the
  // same step that exists already is replaced without an instant at which neither is in place
  // (the two directories are exchanged atomically, then the old one is deleted).
  absl::StatusOr<CheckpointInfo> Commit(const nlohmann::json& metadata);

 private:
  friend class CheckpointStore;
  CheckpointWriter(std::string root, std::string temp_dir, int64_t step,
                   std::vector<std::string> required_files)
      : root_(std::move(root)),
        temp_dir_(std::move(temp_dir)),
        step_(step),
        required_files_(std::move(required_files)) {}
  absl::Status MoveIntoPlace(const std::string& final_dir);
  std::string root_;
  std::string temp_dir_;  // empty once committed or moved from
  int64_t step_;
  std::vector<std::string> required_files_;  // the store's: Commit refuses without them
};

class CheckpointStore {
 public:
  static constexpr char kManifestName[] = "manifest.json";

  // Creates `root` if needed and removes the temporary directories of writers that are gone
  // (never those of a live process); finishes an interrupted replacement of a checkpoint.
  // Read-only: NOT_FOUND when `root` does not exist, nothing changed.
  static absl::StatusOr<CheckpointStore> Open(const std::string& root,
                                              CheckpointStoreOptions options = {});

  const std::string& root() const { return root_; }

  // Starts checkpoint `step` (>= 0).
  absl::StatusOr<CheckpointWriter> Begin(int64_t step) const;

  // Steps of the committed checkpoint directories, newest first (unverified).
  absl::StatusOr<std::vector<int64_t>> ListSteps() const;
  std::string DirectoryFor(int64_t step) const;

  // Reads the manifest of checkpoint `step` (ParseCheckpointManifest), checks that it lists
  // every one of `required_files`, that each listed file is a regular file (not a directory,
  // FIFO, device or symlink) of the listed size and sha256, then the store's
  // validate_metadata. DATA_LOSS naming the file and the problem when it does not verify.
  absl::StatusOr<CheckpointInfo> Verify(int64_t step,
                                        const std::vector<std::string>& required_files) const;
  // With the store's required_files.
  absl::StatusOr<CheckpointInfo> Verify(int64_t step) const {
    return Verify(step, options_.required_files);
  }

  // The newest checkpoint that verifies; each newer one that was damaged (DATA_LOSS) is
  // described in `skipped` (when non-null). NOT_FOUND when there is none; any other error of
  // Verify (e.g. a validate_metadata refusal) is returned as is.
  absl::StatusOr<CheckpointInfo> LatestGood(std::vector<std::string>* skipped = nullptr) const;

  // Deletes all but the newest `keep_last` checkpoints (0: keep all), never deleting the newest
  // one that verifies.
  absl::Status ApplyRetention(int64_t keep_last) const;

 private:
  CheckpointStore(std::string root, CheckpointStoreOptions options)
      : root_(std::move(root)), options_(std::move(options)) {}
  absl::Status RemoveLeftovers() const;
  std::string root_;
  CheckpointStoreOptions options_;
};

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_CHECKPOINT_STORE_H_
