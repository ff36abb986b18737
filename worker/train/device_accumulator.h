// The TreeSum of a sequence of gradients in backend memory (comm/tree_sum.h's order, so the bits
// equal comm::TreeAccumulator's on the host): a device-resident step sums its micro-batches'
// gradients without leaving the GPU. Holds at most floor(log2(count)) + 1 buffers of `size`
// floats, allocated on first use and kept across steps.
#ifndef QTRAIN_WORKER_TRAIN_DEVICE_ACCUMULATOR_H_
#define QTRAIN_WORKER_TRAIN_DEVICE_ACCUMULATOR_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/ops.h"
#include "worker/model/buffer.h"

namespace qtrain::train {

class DeviceTreeAccumulator {
 public:
  DeviceTreeAccumulator(kernels::Backend& backend, int64_t size)
      : backend_(&backend), size_(size) {}

  int64_t size() const { return size_; }
  int64_t count() const { return count_; }

  // Adds the next leaf: `size` floats of backend memory (read before Add returns, so the caller
  // may overwrite it at once, e.g. the model's gradient buffer for the next micro-batch).
  absl::Status Add(const float* leaf);
  // Writes the sum of the leaves added so far (zeros when none) into `out` (backend memory;
  // it may be the buffer the leaves came from) and starts over, keeping the buffers.
  absl::Status Finish(float* out);

  int64_t buffers_held() const { return static_cast<int64_t>(levels_.size() + spares_.size()); }

 private:
  struct Level {
    int64_t leaves;
    model::Buffer<float> sum;
  };
  absl::StatusOr<model::Buffer<float>> TakeSpare();

  kernels::Backend* backend_;
  int64_t size_;
  int64_t count_ = 0;
  std::vector<Level> levels_;  // leaf counts strictly decreasing from front to back
  std::vector<model::Buffer<float>> spares_;
};

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_DEVICE_ACCUMULATOR_H_
