// Dynamic loss scaling for fp16 training (precision fp16): the loss, and so every gradient, is
// multiplied by a power of two S before the backward pass, so that the small gradients of fp16
// activations stay above fp16's underflow; the optimizer divides S out again (exactly: a power
// of two). A step whose gradients overflow (a non-finite norm) is skipped and halves S, down to 1;
// `growth_interval` overflow-free steps in a row double it, up to 2^24 (torch's GradScaler rule,
// with its defaults). Without fp16 the scaler is off and S stays 1, which changes no bits.
#ifndef QTRAIN_WORKER_TRAIN_LOSS_SCALE_H_
#define QTRAIN_WORKER_TRAIN_LOSS_SCALE_H_

#include <cstdint>

#include "absl/status/status.h"

namespace qtrain::train {

struct LossScaleSettings {
  bool enabled = false;
  double initial = 65536.0;        // 2^16
  int64_t growth_interval = 2000;  // overflow-free steps before S doubles
};

class LossScaler {
 public:
  static constexpr double kMinScale = 1.0;
  static constexpr double kMaxScale = 16777216.0;  // 2^24

  // `settings.initial` must be a power of two in [kMinScale, kMaxScale] (the job spec checks it).
  explicit LossScaler(const LossScaleSettings& settings = {});

  bool enabled() const { return settings_.enabled; }
  double scale() const { return scale_; }
  // Overflow-free steps since S last changed (or since the start).
  int64_t good_steps() const { return good_steps_; }

  // After an overflow: halves S and returns true, or returns false when S is already kMinScale
  // (the overflow is then a real non-finite gradient, not the scale's).
  bool Backoff();
  // After an update: counts it, and doubles S after growth_interval of them; true when it did.
  bool Grow();
  // The state a checkpoint saved: DATA_LOSS when `scale` is not a power of two in range or
  // `good_steps` is outside [0, growth_interval). A disabled scaler accepts only (1, 0).
  absl::Status Restore(double scale, int64_t good_steps);

 private:
  LossScaleSettings settings_;
  double scale_;
  int64_t good_steps_ = 0;
};

// Whether x is a power of two in [LossScaler::kMinScale, LossScaler::kMaxScale].
bool IsLossScale(double x);

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_LOSS_SCALE_H_
