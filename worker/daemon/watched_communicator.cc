#include "worker/daemon/watched_communicator.h"

namespace qtrain::worker {

absl::Status WatchedCommunicator::first_error() const {
  absl::MutexLock lock(&mu_);
  return first_error_;
}

absl::Status WatchedCommunicator::Note(absl::Status status) {
  if (!status.ok()) {
    absl::MutexLock lock(&mu_);
    if (first_error_.ok()) first_error_ = status;
  }
  return status;
}

absl::Status WatchedCommunicator::Barrier() { return Note(inner_->Barrier()); }

absl::Status WatchedCommunicator::Broadcast(std::span<std::byte> data, int root) {
  return Note(inner_->Broadcast(data, root));
}

absl::Status WatchedCommunicator::AllReduceSum(std::span<float> data) {
  return Note(inner_->AllReduceSum(data));
}

absl::Status WatchedCommunicator::AllReduceSum(std::span<double> data) {
  return Note(inner_->AllReduceSum(data));
}

absl::Status WatchedCommunicator::ReduceScatterSum(std::span<const float> partial,
                                                   std::span<float> shard,
                                                   const comm::ShardLayout& layout) {
  return Note(inner_->ReduceScatterSum(partial, shard, layout));
}

absl::Status WatchedCommunicator::AllGather(std::span<const float> shard, std::span<float> full,
                                            const comm::ShardLayout& layout) {
  return Note(inner_->AllGather(shard, full, layout));
}

absl::Status WatchedCommunicator::AllGatherV(std::span<const double> mine, std::span<double> all,
                                             std::span<const int64_t> counts) {
  return Note(inner_->AllGatherV(mine, all, counts));
}

}  // namespace qtrain::worker
