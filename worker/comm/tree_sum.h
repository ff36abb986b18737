// The one summation order of qtrain's gradients: a binary counter over the leaves, in order.
//
// Leaves are pushed in order; two partial sums covering the same number of leaves are added
// as soon as both exist (earlier + later). At the end the remaining partials (one per set bit
// of the leaf count, largest first) are folded from the smallest: p_big + (p_mid + p_small).
//
// This is what makes a step's gradient independent of the worker count: with M = W x 2^j
// leaves, TreeSum over the M leaves equals TreeSum over W values, each the TreeSum of one
// rank's contiguous 2^j leaves (a complete subtree). So each rank sums its micro-batches with
// a TreeAccumulator, and each shard owner sums the ranks' partials with TreeSumOf in rank
// order. Float addition is commutative, so only the tree matters, not which side is which.
#ifndef QTRAIN_WORKER_COMM_TREE_SUM_H_
#define QTRAIN_WORKER_COMM_TREE_SUM_H_

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace qtrain::comm {

// TreeSum of values[0..n) (n >= 1), for one element; O(log n) stack.
template <typename T>
T TreeSumOf(std::span<const T> values) {
  T partial[64];
  int64_t size[64];
  int depth = 0;
  for (const T& v : values) {
    T carry = v;
    int64_t carry_size = 1;
    while (depth > 0 && size[depth - 1] == carry_size) {
      carry = partial[depth - 1] + carry;
      carry_size *= 2;
      --depth;
    }
    partial[depth] = carry;
    size[depth] = carry_size;
    ++depth;
  }
  if (depth == 0) return T{};
  T acc = partial[depth - 1];
  for (int d = depth - 2; d >= 0; --d) acc = partial[d] + acc;
  return acc;
}

// Element-wise TreeSum of equal-size buffers, given in order: out[i] = TreeSumOf({leaves[k][i]}).
template <typename T>
void TreeSumInto(std::span<const std::span<const T>> leaves, std::span<T> out) {
  std::vector<T> column(leaves.size());
  for (size_t i = 0; i < out.size(); ++i) {
    for (size_t k = 0; k < leaves.size(); ++k) column[k] = leaves[k][i];
    out[i] = TreeSumOf<T>(column);
  }
}

// The TreeSum of a sequence of large buffers, added one at a time, with at most
// floor(log2(count)) + 1 buffers held. Equal, element by element, to TreeSumOf.
template <typename T>
class TreeAccumulator {
 public:
  explicit TreeAccumulator(int64_t size) : size_(size) {}

  int64_t size() const { return size_; }
  int64_t count() const { return count_; }

  // Adds the next leaf.
  absl::Status Add(std::span<const T> leaf) {
    if (static_cast<int64_t>(leaf.size()) != size_) {
      return absl::InvalidArgumentError(
          absl::StrCat("tree sum: a leaf of ", leaf.size(), " elements, expected ", size_));
    }
    std::vector<T> carry = TakeSpare();
    std::copy(leaf.begin(), leaf.end(), carry.begin());
    int64_t carry_size = 1;
    while (!levels_.empty() && levels_.back().leaves == carry_size) {
      std::vector<T>& earlier = levels_.back().sum;
      for (int64_t i = 0; i < size_; ++i) carry[i] = earlier[i] + carry[i];
      spares_.push_back(std::move(earlier));
      levels_.pop_back();
      carry_size *= 2;
    }
    levels_.push_back(Level{carry_size, std::move(carry)});
    ++count_;
    return absl::OkStatus();
  }

  // Writes the sum of the leaves added so far (zeros when none) and starts over (buffers kept).
  absl::Status Finish(std::span<T> out) {
    if (static_cast<int64_t>(out.size()) != size_) {
      return absl::InvalidArgumentError(
          absl::StrCat("tree sum: an output of ", out.size(), " elements, expected ", size_));
    }
    if (levels_.empty()) {
      std::fill(out.begin(), out.end(), T{});
    } else {
      const std::vector<T>& smallest = levels_.back().sum;
      std::copy(smallest.begin(), smallest.end(), out.begin());
      for (int d = static_cast<int>(levels_.size()) - 2; d >= 0; --d) {
        const std::vector<T>& larger = levels_[d].sum;
        for (int64_t i = 0; i < size_; ++i) out[i] = larger[i] + out[i];
      }
    }
    for (Level& level : levels_) spares_.push_back(std::move(level.sum));
    levels_.clear();
    count_ = 0;
    return absl::OkStatus();
  }

  // Buffers currently held (partials and spares), for memory accounting.
  int64_t buffers_held() const { return static_cast<int64_t>(levels_.size() + spares_.size()); }

 private:
  struct Level {
    int64_t leaves;
    std::vector<T> sum;
  };
  std::vector<T> TakeSpare() {
    if (spares_.empty()) return std::vector<T>(static_cast<size_t>(size_));
    std::vector<T> spare = std::move(spares_.back());
    spares_.pop_back();
    return spare;
  }
  int64_t size_;
  int64_t count_ = 0;
  std::vector<Level> levels_;  // sizes strictly decreasing from front to back
  std::vector<std::vector<T>> spares_;
};

}  // namespace qtrain::comm

#endif  // QTRAIN_WORKER_COMM_TREE_SUM_H_
