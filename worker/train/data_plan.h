// The data plan: which tokens every rank trains on at every step, as a pure function of
// (token count of the dataset, seed, validation fraction, stage, step). Nothing about the data
// position lives in a worker, so a resumed run reads exactly the windows it would have read.
//
// 1. The dataset is one stream of N tokens (the shards of the manifest, in order), cut into
//    blocks of `block_tokens`. A seeded hash of each block's index puts a `validation_fraction`
//    of the blocks aside for validation (at least one when the fraction is > 0 and there are at
//    least two blocks). Validation tokens never appear in any training window of any stage.
// 2. Maximal runs of consecutive training blocks are cut into windows of seq_len + 1 tokens at
//    a stride of seq_len (inputs are tokens 0..L-1, targets 1..L; every token but a run's first
//    is predicted once). Windows never cross a validation block.
// 3. The stage's windows are visited in a seeded pseudo-random order (a keyed bijection on the
//    window indices, new for every stage and every epoch), `windows_per_step` per step; rank r
//    of W takes the r-th contiguous share of a step's windows.
#ifndef QTRAIN_WORKER_TRAIN_DATA_PLAN_H_
#define QTRAIN_WORKER_TRAIN_DATA_PLAN_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace qtrain::train {

struct DataPlanOptions {
  uint64_t seed = 0;
  double validation_fraction = 0;
  // Must exceed the longest seq_len of the job, so that every run holds a window.
  int64_t block_tokens = int64_t{1} << 17;
};

// A token range [begin, begin + length) of the dataset's stream.
struct Window {
  int64_t begin = 0;
  int64_t length = 0;
  bool operator==(const Window&) const = default;
};

// A keyed pseudo-random bijection on [0, n): a Feistel network on the next even number of bits,
// with cycle walking. O(1) memory, whatever n.
class IndexPermutation {
 public:
  IndexPermutation(uint64_t n, uint64_t key);
  uint64_t operator()(uint64_t index) const;

 private:
  uint64_t Round(uint64_t half, int round) const;
  uint64_t n_;
  uint64_t key_;
  int half_bits_;
};

class DataPlan {
 public:
  static absl::StatusOr<DataPlan> Create(int64_t total_tokens, const DataPlanOptions& options);

  int64_t total_tokens() const { return total_tokens_; }
  int64_t training_tokens() const { return training_tokens_; }
  int64_t validation_tokens() const { return total_tokens_ - training_tokens_; }
  bool IsValidationBlock(int64_t block) const;

  // Windows of seq_len + 1 tokens available for training / validation.
  int64_t TrainingWindowCount(int64_t seq_len) const;
  int64_t ValidationWindowCount(int64_t seq_len) const;

  // The windows of `rank` (of `world_size`) at optimizer step `step` of stage `stage`, where a
  // step takes `windows_per_step` windows over all ranks (global_tokens / seq_len).
  // windows_per_step must be a multiple of world_size.
  absl::StatusOr<std::vector<Window>> TrainingWindows(int stage, int64_t seq_len,
                                                      int64_t windows_per_step, int64_t step,
                                                      int rank, int world_size) const;
  // The windows of `rank` at every step in [begin_step, end_step) of stage `stage`, in order,
  // handed to `fn` (TrainingWindows of each step, without a vector per step).
  absl::Status ForEachTrainingWindow(int stage, int64_t seq_len, int64_t windows_per_step,
                                     int64_t begin_step, int64_t end_step, int rank, int world_size,
                                     const std::function<void(const Window&)>& fn) const;

  // The first `count` validation windows, in stream order (the same every evaluation).
  absl::StatusOr<std::vector<Window>> ValidationWindows(int64_t seq_len, int64_t count) const;

 private:
  struct Run {
    int64_t begin;
    int64_t end;
  };
  DataPlan() = default;
  // The window with index `index` among the windows of `runs`.
  static Window WindowAt(const std::vector<Run>& runs, int64_t seq_len, int64_t index);
  static int64_t WindowCount(const std::vector<Run>& runs, int64_t seq_len);

  int64_t total_tokens_ = 0;
  int64_t training_tokens_ = 0;
  DataPlanOptions options_;
  std::vector<Run> training_runs_;
  std::vector<Run> validation_runs_;
};

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_DATA_PLAN_H_
