#include "worker/train/data_plan.h"

#include <algorithm>
#include <bit>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace qtrain::train {
namespace {

// SplitMix64's finalizer: a fast, well-mixing 64-bit hash.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t BlockHash(uint64_t seed, int64_t block) {
  return Mix(Mix(seed ^ 0x76616c6964617465ull) ^ static_cast<uint64_t>(block));
}

}  // namespace

IndexPermutation::IndexPermutation(uint64_t n, uint64_t key) : n_(n), key_(key) {
  int bits = n <= 1 ? 2 : std::bit_width(n - 1);
  bits += bits % 2;
  half_bits_ = std::max(bits / 2, 1);
}

uint64_t IndexPermutation::Round(uint64_t half, int round) const {
  const uint64_t mask = (uint64_t{1} << half_bits_) - 1;
  return Mix(key_ ^ Mix(half * 4 + static_cast<uint64_t>(round))) & mask;
}

uint64_t IndexPermutation::operator()(uint64_t index) const {
  const uint64_t mask = (uint64_t{1} << half_bits_) - 1;
  uint64_t x = index;
  do {  // cycle walking: stays in [0, n) because the network permutes [0, 2^(2*half_bits))
    uint64_t left = x >> half_bits_, right = x & mask;
    for (int round = 0; round < 4; ++round) {
      const uint64_t next = left ^ Round(right, round);
      left = right;
      right = next;
    }
    x = (left << half_bits_) | right;
  } while (x >= n_);
  return x;
}

absl::StatusOr<DataPlan> DataPlan::Create(int64_t total_tokens, const DataPlanOptions& options) {
  if (total_tokens <= 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("data plan: the dataset has ", total_tokens, " tokens, need at least 2"));
  }
  if (options.block_tokens < 2) {
    return absl::InvalidArgumentError("data plan: block_tokens must be >= 2");
  }
  if (!(options.validation_fraction >= 0 && options.validation_fraction < 0.5)) {
    return absl::InvalidArgumentError("data plan: validation_fraction must be in [0, 0.5)");
  }
  DataPlan plan;
  plan.total_tokens_ = total_tokens;
  plan.options_ = options;
  const int64_t blocks = (total_tokens + options.block_tokens - 1) / options.block_tokens;
  std::vector<bool> validation(static_cast<size_t>(blocks), false);
  if (options.validation_fraction > 0 && blocks >= 2) {
    const long double threshold = options.validation_fraction * 18446744073709551616.0L;
    int64_t chosen = 0, lowest = 0, highest = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      const uint64_t h = BlockHash(options.seed, b);
      validation[b] = static_cast<long double>(h) < threshold;
      chosen += validation[b];
      if (h < BlockHash(options.seed, lowest)) lowest = b;
      if (h > BlockHash(options.seed, highest)) highest = b;
    }
    if (chosen == 0) validation[lowest] = true;  // a fraction > 0 always holds something out
    if (chosen == blocks) validation[highest] = false;
  }
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t begin = b * options.block_tokens;
    const int64_t end = std::min(total_tokens, begin + options.block_tokens);
    std::vector<Run>& runs = validation[b] ? plan.validation_runs_ : plan.training_runs_;
    if (!runs.empty() && runs.back().end == begin) {
      runs.back().end = end;
    } else {
      runs.push_back({begin, end});
    }
    if (!validation[b]) plan.training_tokens_ += end - begin;
  }
  return plan;
}

bool DataPlan::IsValidationBlock(int64_t block) const {
  const int64_t begin = block * options_.block_tokens;
  for (const Run& run : validation_runs_) {
    if (begin >= run.begin && begin < run.end) return true;
  }
  return false;
}

int64_t DataPlan::WindowCount(const std::vector<Run>& runs, int64_t seq_len) {
  int64_t count = 0;
  for (const Run& run : runs) count += std::max<int64_t>(0, (run.end - run.begin - 1) / seq_len);
  return count;
}

Window DataPlan::WindowAt(const std::vector<Run>& runs, int64_t seq_len, int64_t index) {
  for (const Run& run : runs) {
    const int64_t in_run = std::max<int64_t>(0, (run.end - run.begin - 1) / seq_len);
    if (index < in_run) return {run.begin + index * seq_len, seq_len + 1};
    index -= in_run;
  }
  return {};
}

int64_t DataPlan::TrainingWindowCount(int64_t seq_len) const {
  return seq_len > 0 ? WindowCount(training_runs_, seq_len) : 0;
}

int64_t DataPlan::ValidationWindowCount(int64_t seq_len) const {
  return seq_len > 0 ? WindowCount(validation_runs_, seq_len) : 0;
}

absl::StatusOr<std::vector<Window>> DataPlan::TrainingWindows(int stage, int64_t seq_len,
                                                              int64_t windows_per_step,
                                                              int64_t step, int rank,
                                                              int world_size) const {
  std::vector<Window> windows;
  if (world_size > 0 && windows_per_step > 0) {
    windows.reserve(static_cast<size_t>(windows_per_step / world_size));
  }
  QTRAIN_RETURN_IF_ERROR(ForEachTrainingWindow(stage, seq_len, windows_per_step, step, step + 1,
                                               rank, world_size,
                                               [&](const Window& w) { windows.push_back(w); }));
  return windows;
}

absl::Status DataPlan::ForEachTrainingWindow(int stage, int64_t seq_len, int64_t windows_per_step,
                                             int64_t begin_step, int64_t end_step, int rank,
                                             int world_size,
                                             const std::function<void(const Window&)>& fn) const {
  if (seq_len <= 0 || windows_per_step <= 0 || begin_step < 0 || end_step < begin_step ||
      world_size <= 0 || rank < 0 || rank >= world_size || windows_per_step % world_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data plan: invalid request (seq_len ", seq_len, ", windows_per_step ", windows_per_step,
        ", step ", begin_step, end_step == begin_step + 1 ? "" : absl::StrCat("-", end_step),
        ", rank ", rank, " of ", world_size, ")"));
  }
  const int64_t count = TrainingWindowCount(seq_len);
  if (count == 0) {
    return absl::FailedPreconditionError(absl::StrCat("data plan: no training window of ",
                                                      seq_len + 1, " tokens fits in the ",
                                                      training_tokens_, " training tokens"));
  }
  // Cumulative window counts per run, for a binary search per window.
  std::vector<int64_t> first_window(training_runs_.size() + 1, 0);
  for (size_t i = 0; i < training_runs_.size(); ++i) {
    const Run& run = training_runs_[i];
    first_window[i + 1] =
        first_window[i] + std::max<int64_t>(0, (run.end - run.begin - 1) / seq_len);
  }
  const int64_t per_rank = windows_per_step / world_size;
  for (int64_t step = begin_step; step < end_step; ++step) {
    for (int64_t i = 0; i < per_rank; ++i) {
      const int64_t position = step * windows_per_step + rank * per_rank + i;
      const int64_t epoch = position / count;
      const uint64_t key = Mix(Mix(options_.seed) ^ Mix(static_cast<uint64_t>(stage) << 32 ^
                                                        static_cast<uint64_t>(epoch)));
      const int64_t index = static_cast<int64_t>(IndexPermutation(
          static_cast<uint64_t>(count), key)(static_cast<uint64_t>(position % count)));
      const size_t run =
          static_cast<size_t>(std::upper_bound(first_window.begin(), first_window.end(), index) -
                              first_window.begin() - 1);
      fn({training_runs_[run].begin + (index - first_window[run]) * seq_len, seq_len + 1});
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Window>> DataPlan::ValidationWindows(int64_t seq_len,
                                                                int64_t count) const {
  if (seq_len <= 0 || count < 0) return absl::InvalidArgumentError("data plan: invalid request");
  const int64_t available = ValidationWindowCount(seq_len);
  if (count > available) {
    return absl::FailedPreconditionError(absl::StrCat(
        "data plan: ", count, " validation windows of ", seq_len + 1, " tokens requested, only ",
        available, " fit in the ", validation_tokens(), " validation tokens"));
  }
  std::vector<Window> windows;
  for (int64_t i = 0; i < count; ++i) windows.push_back(WindowAt(validation_runs_, seq_len, i));
  return windows;
}

}  // namespace qtrain::train
