// Exponential backoff with jitter for reconnecting and retrying calls.
#ifndef QTRAIN_WORKER_DAEMON_BACKOFF_H_
#define QTRAIN_WORKER_DAEMON_BACKOFF_H_

#include <algorithm>
#include <random>

#include "absl/time/time.h"

namespace qtrain::worker {

class Backoff {
 public:
  Backoff(absl::Duration initial, absl::Duration max)
      : initial_(initial),
        max_(std::max(initial, max)),
        current_(initial),
        rng_(std::random_device{}()) {}

  // The next wait: the current delay, jittered by +-20% (workers that lost the same coordinator
  // do not all come back at once), never above the maximum. The delay then doubles.
  absl::Duration Next() {
    std::uniform_real_distribution<double> jitter(0.8, 1.2);
    const absl::Duration wait = std::min(max_, current_ * jitter(rng_));
    current_ = std::min(max_, current_ * 2);
    return wait;
  }
  void Reset() { current_ = initial_; }

 private:
  absl::Duration initial_, max_, current_;
  std::mt19937_64 rng_;
};

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_BACKOFF_H_
