// The parts of an optimizer step that a data-parallel group computes together, in the order
// that makes the result the same for every world size (see comm/tree_sum.h and
// comm/shard_layout.h).
#ifndef QTRAIN_WORKER_TRAIN_SHARDED_STEP_H_
#define QTRAIN_WORKER_TRAIN_SHARDED_STEP_H_

#include <span>

#include "absl/status/statusor.h"
#include "worker/comm/communicator.h"
#include "worker/comm/shard_layout.h"

namespace qtrain::train {

// The norm of the whole gradient from each rank's reduced shard: the rank's per-block fp64 sums
// of squares (optimizer.h), gathered from every rank, added in block order.
absl::StatusOr<double> GroupGradientNorm(comm::Communicator& comm,
                                         std::span<const float> grad_shard,
                                         const comm::ShardLayout& layout);

// The same from the rank's block sums already computed (a device-resident step computes them on
// the GPU: Backend::BlockSumsOfSquares): `block_sums` has layout.BlockCount(rank) entries.
absl::StatusOr<double> GroupNormOfBlockSums(comm::Communicator& comm,
                                            std::span<const double> block_sums,
                                            const comm::ShardLayout& layout);

// The step's loss sum: each rank's micro-batch loss sums (in order) as a TreeSum, then the
// TreeSum of the ranks' partials in rank order, which is the TreeSum of all micro-batches.
absl::StatusOr<double> GroupLossSum(comm::Communicator& comm,
                                    std::span<const double> micro_batch_loss_sums);

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_SHARDED_STEP_H_
