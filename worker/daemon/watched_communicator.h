// The training child's view of its group's communicator: every op forwarded, the first failed
// one remembered, so that a training error caused by a collective (a peer that died, hung or
// was cut off) is told apart from one the same input would cause again.
#ifndef QTRAIN_WORKER_DAEMON_WATCHED_COMMUNICATOR_H_
#define QTRAIN_WORKER_DAEMON_WATCHED_COMMUNICATOR_H_

#include <memory>
#include <span>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "worker/comm/communicator.h"

namespace qtrain::worker {

class WatchedCommunicator final : public comm::Communicator {
 public:
  explicit WatchedCommunicator(std::unique_ptr<comm::Communicator> inner)
      : inner_(std::move(inner)) {}

  // OK while every op succeeded; else the first failure.
  absl::Status first_error() const;

  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  std::string_view backend() const override { return inner_->backend(); }
  absl::Status Barrier() override;
  absl::Status Broadcast(std::span<std::byte> data, int root) override;
  absl::Status AllReduceSum(std::span<float> data) override;
  absl::Status AllReduceSum(std::span<double> data) override;
  absl::Status ReduceScatterSum(std::span<const float> partial, std::span<float> shard,
                                const comm::ShardLayout& layout) override;
  absl::Status AllGather(std::span<const float> shard, std::span<float> full,
                         const comm::ShardLayout& layout) override;
  absl::Status AllGatherV(std::span<const double> mine, std::span<double> all,
                          std::span<const int64_t> counts) override;
  void Abort() override { inner_->Abort(); }
  comm::CommStats stats() const override { return inner_->stats(); }

 private:
  absl::Status Note(absl::Status status);

  const std::unique_ptr<comm::Communicator> inner_;
  mutable absl::Mutex mu_;
  absl::Status first_error_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_WATCHED_COMMUNICATOR_H_
