// Learning-rate schedules: linear warmup, then cosine / linear decay to min_lr, or constant.
#ifndef QTRAIN_WORKER_TRAIN_LR_SCHEDULE_H_
#define QTRAIN_WORKER_TRAIN_LR_SCHEDULE_H_

#include <cstdint>

namespace qtrain::train {

enum class DecayKind { kCosine, kLinear, kConstant };

struct LrScheduleParams {
  double lr = 0;      // peak, reached at the end of warmup
  double min_lr = 0;  // end of the decay
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;  // of the whole job, all stages
  DecayKind decay = DecayKind::kCosine;
};

// The learning rate of optimizer step `step` (0-based). Warmup is linear from lr/warmup at step
// 0 to lr at step warmup-1, so no step trains with a zero rate; the decay then goes from lr
// right after warmup to min_lr at the last step (total_steps - 1); with at most one step after
// warmup there is nothing to decay and it trains at lr. Steps past the end keep min_lr.
double LearningRate(const LrScheduleParams& params, int64_t step);

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_LR_SCHEDULE_H_
