#include "worker/train/device_accumulator.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace qtrain::train {

absl::StatusOr<model::Buffer<float>> DeviceTreeAccumulator::TakeSpare() {
  if (!spares_.empty()) {
    model::Buffer<float> spare = std::move(spares_.back());
    spares_.pop_back();
    return spare;
  }
  model::Buffer<float> fresh;
  QTRAIN_RETURN_IF_ERROR(fresh.Resize(*backend_, {size_}, "a partial sum of the gradients"));
  return fresh;
}

absl::Status DeviceTreeAccumulator::Add(const float* leaf) {
  if (size_ > 0 && leaf == nullptr) {
    return absl::InvalidArgumentError("device tree sum: a null leaf");
  }
  if (size_ == 0) {  // nothing to add
    ++count_;
    return absl::OkStatus();
  }
  QTRAIN_ASSIGN_OR_RETURN(model::Buffer<float> carry, TakeSpare());
  // carry = the leaf; while the last partial covers as many leaves, carry = earlier + carry (the
  // first merge reads the leaf directly instead of copying it first: the same sums).
  int64_t carry_size = 1;
  const float* source = leaf;
  while (!levels_.empty() && levels_.back().leaves == carry_size) {
    model::Buffer<float> earlier = std::move(levels_.back().sum);
    levels_.pop_back();
    QTRAIN_RETURN_IF_OP_ERROR(backend_->ResidualForward(earlier.get(), source, carry.get(), size_));
    source = carry.get();
    spares_.push_back(std::move(earlier));
    carry_size *= 2;
  }
  if (source == leaf) {
    QTRAIN_RETURN_IF_OP_ERROR(
        backend_->CopyWithinBackend(carry.get(), leaf, static_cast<size_t>(size_) * sizeof(float)));
  }
  levels_.push_back(Level{carry_size, std::move(carry)});
  ++count_;
  return absl::OkStatus();
}

absl::Status DeviceTreeAccumulator::Finish(float* out) {
  if (size_ > 0 && out == nullptr) {
    return absl::InvalidArgumentError("device tree sum: a null output");
  }
  if (size_ > 0) {
    if (levels_.empty()) {
      QTRAIN_RETURN_IF_OP_ERROR(backend_->Fill(out, size_, 0.0f));
    } else {
      // out = smallest; then out = larger + out, from the second smallest to the largest.
      const float* acc = levels_.back().sum.get();
      for (int d = static_cast<int>(levels_.size()) - 2; d >= 0; --d) {
        QTRAIN_RETURN_IF_OP_ERROR(backend_->ResidualForward(levels_[d].sum.get(), acc, out, size_));
        acc = out;
      }
      if (acc != out) {
        QTRAIN_RETURN_IF_OP_ERROR(
            backend_->CopyWithinBackend(out, acc, static_cast<size_t>(size_) * sizeof(float)));
      }
    }
  }
  for (Level& level : levels_) spares_.push_back(std::move(level.sum));
  levels_.clear();
  count_ = 0;
  return absl::OkStatus();
}

}  // namespace qtrain::train
