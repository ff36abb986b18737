// The collectives of a data-parallel group: rank r of W, each op blocking until every rank has
// taken part or the op's timeout has passed.
//
// Every op is deterministic and its result does not depend on the transport's algorithm:
// sums over ranks are TreeSum (tree_sum.h) of the ranks' values in rank order, computed by one
// owner and sent on, so every rank holds the same bytes and a step's sum is the same for any
// W that splits the step evenly (see tree_sum.h).
//
// Errors: DEADLINE_EXCEEDED when the op did not complete within its timeout (a stopped or
// hung peer); UNAVAILABLE when a peer's connection failed (a dead or unreachable peer);
// INVALID_ARGUMENT for mismatched sizes; CANCELLED after Abort(). After any error the
// communicator is broken: every later op fails at once with FAILED_PRECONDITION naming the
// first error. A broken group is never repaired: the round is aborted and a new group formed.
//
// Ops are called from one thread (the trainer's). Abort() may be called from any thread and
// makes a blocked op return within a short time.
#ifndef QTRAIN_WORKER_COMM_COMMUNICATOR_H_
#define QTRAIN_WORKER_COMM_COMMUNICATOR_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "worker/comm/shard_layout.h"

namespace qtrain::comm {

// Traffic counters, for the benchmarks and the step report.
struct CommStats {
  int64_t bytes_sent = 0;
  int64_t bytes_received = 0;
  absl::Duration time_in_ops;  // wall time spent inside ops, waiting included
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // "local" (W = 1, no transport), "gloo", "nccl" (device memory: nccl_communicator.h),
  // "in-process" (threads of one process, tests).
  virtual std::string_view backend() const = 0;

  // Returns when every rank has called it.
  virtual absl::Status Barrier() = 0;

  // data (same size on every rank) becomes root's data on every rank.
  virtual absl::Status Broadcast(std::span<std::byte> data, int root) = 0;

  // data (same size on every rank) becomes, on every rank, the element-wise TreeSum of the
  // ranks' data in rank order.
  virtual absl::Status AllReduceSum(std::span<float> data) = 0;
  virtual absl::Status AllReduceSum(std::span<double> data) = 0;

  // partial: this rank's full-length buffer (layout.total() elements). shard: this rank's
  // range of layout (layout.ShardSize(rank()) elements) receives, element-wise, the TreeSum of
  // every rank's partial over that range, in rank order. Each rank sends (W-1)/W of its
  // partial, as a ring reduce-scatter does.
  virtual absl::Status ReduceScatterSum(std::span<const float> partial, std::span<float> shard,
                                        const ShardLayout& layout) = 0;

  // shard: this rank's range of layout; full (layout.total() elements) receives every rank's
  // shard at its range (this rank's included).
  virtual absl::Status AllGather(std::span<const float> shard, std::span<float> full,
                                 const ShardLayout& layout) = 0;
  // Variable-size gather of doubles: mine (any size, may differ per rank) is concatenated in
  // rank order into all, which must hold the sum of the sizes; counts[r] is rank r's size.
  virtual absl::Status AllGatherV(std::span<const double> mine, std::span<double> all,
                                  std::span<const int64_t> counts) = 0;

  // Closes the group: a blocked op returns CANCELLED soon, later ops fail. Idempotent.
  virtual void Abort() = 0;

  virtual CommStats stats() const = 0;
};

// The communicator of a group of one: every op is a copy (or nothing).
std::unique_ptr<Communicator> MakeLocalCommunicator();

}  // namespace qtrain::comm

#endif  // QTRAIN_WORKER_COMM_COMMUNICATOR_H_
