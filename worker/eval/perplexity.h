// Perplexity over a token stream with strided windows (transformers' "perplexity of
// fixed-length models" recipe): each token is scored once, with the most context the windows
// give it.
#ifndef QTRAIN_WORKER_EVAL_PERPLEXITY_H_
#define QTRAIN_WORKER_EVAL_PERPLEXITY_H_

#include <cstdint>
#include <vector>

namespace qtrain::eval {

// Window w covers stream positions [begin, end) and scores the targets [first_target, end)
// (predicted from window positions first_target - begin - 1 ... end - begin - 2).
struct Window {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t first_target = 0;
};

// begin = 0, stride, 2 stride, ...; end = min(begin + seq_len, n); the targets are the tokens
// after the previous window's end (from 1 for the first); stops after the window reaching n.
// `limit` > 0: at most that many windows.
std::vector<Window> PlanWindows(int64_t n, int64_t seq_len, int64_t stride, int64_t limit);

// The bucket of window position t: [0,1), [1,2), [2,4), [4,8), ...; its index.
int64_t PositionBucket(int64_t t);

}  // namespace qtrain::eval

#endif  // QTRAIN_WORKER_EVAL_PERPLEXITY_H_
