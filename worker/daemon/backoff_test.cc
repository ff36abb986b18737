#include "worker/daemon/backoff.h"

#include "gtest/gtest.h"

namespace qtrain::worker {
namespace {

TEST(BackoffTest, DoublesWithJitterUpToTheMaximum) {
  Backoff backoff(absl::Milliseconds(100), absl::Seconds(2));
  absl::Duration expected = absl::Milliseconds(100);
  for (int i = 0; i < 10; ++i) {
    const absl::Duration wait = backoff.Next();
    EXPECT_GE(wait, expected * 0.8) << i;
    EXPECT_LE(wait, std::min(absl::Seconds(2), expected * 1.2)) << i;
    expected = std::min(absl::Seconds(2), expected * 2);
  }
  backoff.Reset();
  EXPECT_LE(backoff.Next(), absl::Milliseconds(120));
}

}  // namespace
}  // namespace qtrain::worker
