// Multiple-choice scoring as lm-evaluation-harness scores loglikelihood requests.
#ifndef QTRAIN_WORKER_EVAL_MULTIPLE_CHOICE_H_
#define QTRAIN_WORKER_EVAL_MULTIPLE_CHOICE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/eval/eval.h"

namespace qtrain::eval {

// The (context, continuation) token split of one request (the harness's _encode_pair):
// trailing whitespace of the context moves to the front of the continuation; then
// context_ids = tok(context), continuation_ids = tok(context + continuation)[len(context_ids):].
// An empty context gives context_ids = [prefix token] and continuation_ids = tok(continuation).
struct EncodedPair {
  std::vector<int32_t> context;
  std::vector<int32_t> continuation;
};
absl::StatusOr<EncodedPair> EncodePair(const EvalContext& context, const std::string& text,
                                       const std::string& continuation, std::string_view where);

// The summed log-probability of each pair's continuation, all pairs in one batch. Inputs longer
// than the model's context keep their last tokens (the harness's left truncation).
absl::StatusOr<std::vector<double>> ContinuationLogLikelihoods(
    const EvalContext& context, const std::vector<EncodedPair>& pairs, std::string_view where);

// The first index of the largest value.
int64_t ArgMax(const std::vector<double>& values);

}  // namespace qtrain::eval

#endif  // QTRAIN_WORKER_EVAL_MULTIPLE_CHOICE_H_
