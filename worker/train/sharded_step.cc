#include "worker/train/sharded_step.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/comm/tree_sum.h"
#include "worker/train/optimizer.h"

namespace qtrain::train {

absl::StatusOr<double> GroupGradientNorm(comm::Communicator& comm,
                                         std::span<const float> grad_shard,
                                         const comm::ShardLayout& layout) {
  const int rank = comm.rank();
  if (static_cast<int64_t>(grad_shard.size()) != layout.ShardSize(rank)) {
    return absl::InvalidArgumentError(absl::StrCat("gradient norm: a shard of ", grad_shard.size(),
                                                   " elements, rank ", rank, " owns ",
                                                   layout.ShardSize(rank)));
  }
  return GroupNormOfBlockSums(comm, BlockSumsOfSquares(grad_shard, layout.block_elements()),
                              layout);
}

absl::StatusOr<double> GroupNormOfBlockSums(comm::Communicator& comm,
                                            std::span<const double> block_sums,
                                            const comm::ShardLayout& layout) {
  const int rank = comm.rank();
  if (static_cast<int64_t>(block_sums.size()) != layout.BlockCount(rank)) {
    return absl::InvalidArgumentError(absl::StrCat("gradient norm: ", block_sums.size(),
                                                   " block sums, rank ", rank, " owns ",
                                                   layout.BlockCount(rank), " blocks"));
  }
  std::vector<int64_t> counts(static_cast<size_t>(layout.world_size()));
  for (int r = 0; r < layout.world_size(); ++r) counts[r] = layout.BlockCount(r);
  std::vector<double> all(static_cast<size_t>(layout.num_blocks()));
  QTRAIN_RETURN_IF_ERROR(comm.AllGatherV(block_sums, all, counts));
  return NormOfBlockSums(all);
}

absl::StatusOr<double> GroupLossSum(comm::Communicator& comm,
                                    std::span<const double> micro_batch_loss_sums) {
  const double mine = comm::TreeSumOf<double>(micro_batch_loss_sums);
  std::vector<int64_t> counts(static_cast<size_t>(comm.world_size()), 1);
  std::vector<double> all(counts.size());
  QTRAIN_RETURN_IF_ERROR(comm.AllGatherV(std::span(&mine, 1), all, counts));
  return comm::TreeSumOf<double>(all);
}

}  // namespace qtrain::train
