#include "worker/train/loss_scale.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace qtrain::train {

bool IsLossScale(double x) {
  int exponent = 0;
  return x >= LossScaler::kMinScale && x <= LossScaler::kMaxScale &&
         std::frexp(x, &exponent) == 0.5;
}

LossScaler::LossScaler(const LossScaleSettings& settings)
    : settings_(settings), scale_(settings.enabled ? settings.initial : 1.0) {}

bool LossScaler::Backoff() {
  good_steps_ = 0;
  if (!settings_.enabled || scale_ <= kMinScale) return false;
  scale_ /= 2;
  return true;
}

bool LossScaler::Grow() {
  if (!settings_.enabled) return false;
  if (++good_steps_ < settings_.growth_interval) return false;
  good_steps_ = 0;
  if (scale_ >= kMaxScale) return false;
  scale_ *= 2;
  return true;
}

absl::Status LossScaler::Restore(double scale, int64_t good_steps) {
  if (!settings_.enabled) {
    if (scale != 1.0 || good_steps != 0) {
      return absl::DataLossError(absl::StrCat("loss scale ", scale, " after ", good_steps,
                                              " steps, but this job does not scale its loss"));
    }
    return absl::OkStatus();
  }
  if (!IsLossScale(scale)) {
    return absl::DataLossError(
        absl::StrCat("loss scale ", scale, " is not a power of two in [1, 2^24]"));
  }
  if (good_steps < 0 || good_steps >= settings_.growth_interval) {
    return absl::DataLossError(absl::StrCat("loss scale good steps ", good_steps,
                                            " is outside [0, ", settings_.growth_interval, ")"));
  }
  scale_ = scale;
  good_steps_ = good_steps;
  return absl::OkStatus();
}

}  // namespace qtrain::train
