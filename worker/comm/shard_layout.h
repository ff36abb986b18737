// How a flat buffer of `total` elements (the model's parameters, gradients, AdamW moments) is
// split across the W ranks of a group for ZeRO-1, and the fixed blocks of the gradient norm.
//
// The buffer is cut into blocks of block_elements (the last one shorter). Rank r owns the
// blocks [floor(r * B / W), floor((r + 1) * B / W)) of the B blocks, a contiguous element range
// (empty when B < W and r gets none). Shard boundaries are block boundaries, so a sum over
// blocks (the norm: one fp64 partial per block, in element order, then the partials in block
// order) is the same for every W.
#ifndef QTRAIN_WORKER_COMM_SHARD_LAYOUT_H_
#define QTRAIN_WORKER_COMM_SHARD_LAYOUT_H_

#include <algorithm>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace qtrain::comm {

// 16384 floats (64 KiB) per block: small enough to balance the shards, large enough that the
// per-block partials are a negligible gather.
inline constexpr int64_t kDefaultBlockElements = int64_t{1} << 14;

class ShardLayout {
 public:
  static absl::StatusOr<ShardLayout> Create(int64_t total, int world_size,
                                            int64_t block_elements = kDefaultBlockElements) {
    if (total < 0 || world_size < 1 || block_elements < 1) {
      return absl::InvalidArgumentError(absl::StrCat("shard layout: ", total, " elements, ",
                                                     world_size, " ranks, blocks of ",
                                                     block_elements));
    }
    ShardLayout layout;
    layout.total_ = total;
    layout.world_size_ = world_size;
    layout.block_elements_ = block_elements;
    layout.num_blocks_ = total / block_elements + (total % block_elements != 0 ? 1 : 0);
    return layout;
  }

  int64_t total() const { return total_; }
  int world_size() const { return world_size_; }
  int64_t block_elements() const { return block_elements_; }
  int64_t num_blocks() const { return num_blocks_; }

  // Blocks [FirstBlock(r), FirstBlock(r + 1)) belong to rank r; FirstBlock(W) == num_blocks().
  int64_t FirstBlock(int rank) const { return rank * num_blocks_ / world_size_; }
  int64_t BlockCount(int rank) const { return FirstBlock(rank + 1) - FirstBlock(rank); }
  int64_t BlockBegin(int64_t block) const { return std::min(total_, block * block_elements_); }
  int64_t BlockEnd(int64_t block) const { return std::min(total_, (block + 1) * block_elements_); }

  int64_t ShardBegin(int rank) const { return BlockBegin(FirstBlock(rank)); }
  int64_t ShardEnd(int rank) const { return BlockBegin(FirstBlock(rank + 1)); }
  int64_t ShardSize(int rank) const { return ShardEnd(rank) - ShardBegin(rank); }

  bool operator==(const ShardLayout&) const = default;

 private:
  ShardLayout() = default;
  int64_t total_ = 0;
  int world_size_ = 1;
  int64_t block_elements_ = kDefaultBlockElements;
  int64_t num_blocks_ = 0;
};

}  // namespace qtrain::comm

#endif  // QTRAIN_WORKER_COMM_SHARD_LAYOUT_H_
