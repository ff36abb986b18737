// Test-only communicator: the collectives of a group over model::OpaqueMemoryBackend's memory,
// as NCCL's are over a GPU's. Each op takes backend pointers, turns them back into host ones and
// runs on an inner (host) communicator, e.g. one of comm::MakeInProcessGroup. It counts the
// gradient and parameter collectives, so tests see that a device-resident step used it.
#ifndef QTRAIN_WORKER_TRAIN_OPAQUE_COMMUNICATOR_TEST_UTIL_H_
#define QTRAIN_WORKER_TRAIN_OPAQUE_COMMUNICATOR_TEST_UTIL_H_

#include <atomic>
#include <memory>
#include <span>
#include <string_view>
#include <utility>

#include "worker/comm/communicator.h"
#include "worker/model/opaque_backend_test_util.h"

namespace qtrain::train::testing {

// Shared with the test, so that the counts outlive a communicator its user destroys.
struct DeviceOpCounts {
  std::atomic<int> reduce_scatters{0};
  std::atomic<int> all_gathers{0};
};

class OpaqueMemoryCommunicator final : public comm::Communicator {
 public:
  OpaqueMemoryCommunicator(std::unique_ptr<comm::Communicator> inner,
                           std::shared_ptr<DeviceOpCounts> counts)
      : inner_(std::move(inner)), counts_(std::move(counts)) {}
  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  std::string_view backend() const override { return "opaque-in-process"; }
  absl::Status Barrier() override { return inner_->Barrier(); }
  absl::Status Broadcast(std::span<std::byte> data, int root) override {
    return inner_->Broadcast(Real(data), root);
  }
  absl::Status AllReduceSum(std::span<float> data) override {
    return inner_->AllReduceSum(Real(data));
  }
  absl::Status AllReduceSum(std::span<double> data) override {
    return inner_->AllReduceSum(Real(data));
  }
  absl::Status ReduceScatterSum(std::span<const float> partial, std::span<float> shard,
                                const comm::ShardLayout& layout) override {
    ++counts_->reduce_scatters;
    return inner_->ReduceScatterSum(Real(partial), Real(shard), layout);
  }
  absl::Status AllGather(std::span<const float> shard, std::span<float> full,
                         const comm::ShardLayout& layout) override {
    ++counts_->all_gathers;
    return inner_->AllGather(Real(shard), Real(full), layout);
  }
  absl::Status AllGatherV(std::span<const double> mine, std::span<double> all,
                          std::span<const int64_t> counts) override {
    return inner_->AllGatherV(Real(mine), Real(all), counts);
  }
  void Abort() override { inner_->Abort(); }
  comm::CommStats stats() const override { return inner_->stats(); }

 private:
  template <typename T>
  static std::span<T> Real(std::span<T> s) {
    return {model::OpaqueMemoryBackend::Real(s.data()), s.size()};
  }
  std::unique_ptr<comm::Communicator> inner_;
  std::shared_ptr<DeviceOpCounts> counts_;
};

}  // namespace qtrain::train::testing

#endif  // QTRAIN_WORKER_TRAIN_OPAQUE_COMMUNICATOR_TEST_UTIL_H_
