// Perplexity over a token stream with strided windows (transformers' "perplexity of
// fixed-length models" recipe): each token is scored once, with the most context the windows
// give it.
#ifndef QTRAIN_WORKER_EVAL_PERPLEXITY_H_
#define QTRAIN_WORKER_EVAL_PERPLEXITY_H_

#include <cstdint>
#include <vector>

namespace qtrain::eval {

// A window is the model input ids[begin, end) (at most seq_len tokens); input position t
// predicts token begin + t + 1. It scores the tokens [first_target, end] (those no earlier
// window scored), each with begin..token-1 as context.
struct Window {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t first_target = 0;
};

// begin = 0, stride, 2 stride, ...; end = min(begin + seq_len, n - 1); stops after the window
// that reaches the last token. Every token but the first is scored exactly once; with stride ==
// seq_len the windows do not overlap (the last input token of one predicts the first of the
// next). `limit` > 0: at most that many windows.
std::vector<Window> PlanWindows(int64_t n, int64_t seq_len, int64_t stride, int64_t limit);

// The bucket of window position t: [0,1), [1,2), [2,4), [4,8), ...; its index.
int64_t PositionBucket(int64_t t);

}  // namespace qtrain::eval

#endif  // QTRAIN_WORKER_EVAL_PERPLEXITY_H_
