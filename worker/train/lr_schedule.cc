#include "worker/train/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace qtrain::train {

double LearningRate(const LrScheduleParams& p, int64_t step) {
  if (step < p.warmup_steps) {
    return p.lr * static_cast<double>(step + 1) / static_cast<double>(p.warmup_steps);
  }
  if (p.decay == DecayKind::kConstant) return p.lr;
  const int64_t decay_steps = p.total_steps - p.warmup_steps - 1;
  if (decay_steps <= 0) return p.lr;  // no room to decay: at most one step after warmup
  const double progress = std::clamp(
      static_cast<double>(step - p.warmup_steps) / static_cast<double>(decay_steps), 0.0, 1.0);
  const double fraction = p.decay == DecayKind::kCosine
                              ? 0.5 * (1.0 + std::cos(std::numbers::pi * progress))
                              : 1.0 - progress;
  return p.min_lr + fraction * (p.lr - p.min_lr);
}

}  // namespace qtrain::train
