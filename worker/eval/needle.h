// Needle in a haystack: a passkey sentence hidden at a depth of a filler text of a given length.
#ifndef QTRAIN_WORKER_EVAL_NEEDLE_H_
#define QTRAIN_WORKER_EVAL_NEEDLE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/eval/eval.h"

namespace qtrain::eval {

struct Haystack {
  std::vector<int32_t> ids;     // exactly `length` tokens, ending with the question
  std::string passkey;          // five digits
  int64_t needle_position = 0;  // token index where the passkey sentence starts
};

// Deterministic from (seed, length, depth, trial): the passkey and the filler's sentence
// order. The filler is cut at the token level so that the prompt has exactly `length` tokens;
// the needle goes at the sentence boundary nearest depth x filler tokens.
absl::StatusOr<Haystack> BuildHaystack(const EvalContext& context, int64_t length, double depth,
                                       uint64_t seed, int64_t trial);

}  // namespace qtrain::eval

#endif  // QTRAIN_WORKER_EVAL_NEEDLE_H_
