// Test data for the trainer's tests: a learnable token stream over a 32-token vocabulary, in
// memory. Each token is mostly the previous one's fixed successor ((t * 5 + 3) mod 32), and one
// time in 16 a random token, so a model's loss falls well below the unigram entropy.
#ifndef QTRAIN_WORKER_TRAIN_SYNTHETIC_TOKENS_TEST_UTIL_H_
#define QTRAIN_WORKER_TRAIN_SYNTHETIC_TOKENS_TEST_UTIL_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "worker/train/token_source.h"

namespace qtrain::train::testing {

inline InMemoryTokenSource SyntheticTokens(int64_t n, uint64_t seed = 12345,
                                           std::string name = "synthetic-v1") {
  std::vector<int32_t> tokens(static_cast<size_t>(n));
  uint64_t rng = seed;
  int32_t previous = 0;
  for (int32_t& t : tokens) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    t = (rng >> 60) == 0 ? static_cast<int32_t>((rng >> 40) % 32) : (previous * 5 + 3) % 32;
    previous = t;
  }
  return InMemoryTokenSource(std::move(tokens), std::move(name));
}

}  // namespace qtrain::train::testing

#endif  // QTRAIN_WORKER_TRAIN_SYNTHETIC_TOKENS_TEST_UTIL_H_
