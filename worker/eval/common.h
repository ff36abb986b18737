// What the eval tasks share: tokenizing, batched scoring with Model::Forward, greedy decoding
// with the KV cache, progress and cancellation.
#ifndef QTRAIN_WORKER_EVAL_COMMON_H_
#define QTRAIN_WORKER_EVAL_COMMON_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/eval/eval.h"

namespace qtrain::eval {

// CANCELLED once context.cancelled is set.
absl::Status CheckCancelled(const EvalContext& context);
void ReportProgress(const EvalContext& context, std::string_view task, int64_t done, int64_t total);

// The model's context (positions it computes), for windows and truncation.
int64_t ModelContextLength(const model::Model& model);

// The ids of `text`, checked against the model's vocabulary; errors are prefixed by `where`.
absl::StatusOr<std::vector<int32_t>> EncodeText(const EvalContext& context, std::string_view text,
                                                std::string_view where);
absl::StatusOr<std::string> DecodeIds(const EvalContext& context, std::span<const int32_t> ids);

// The token an empty context is scored after: the model's BOS token, else its first EOS token
// (lm-evaluation-harness's prefix_token_id: BOS, else EOS), else the tokenizer's
// <|endoftext|>. FAILED_PRECONDITION when there is none.
absl::StatusOr<int32_t> PrefixToken(const EvalContext& context);

// One Forward over the sequences (padded at the end to the longest; the padding is never a
// target): out[b][t] = log p(seqs[b][t + 1] | seqs[b][0..t]) for t + 1 < size (the last is 0).
absl::StatusOr<std::vector<std::vector<float>>> NextTokenLogprobs(
    model::Model& model, const std::vector<std::vector<int32_t>>& seqs);

struct Generation {
  std::vector<int32_t> ids;
  std::string text;      // decoded, cut before the first stop string
  bool stopped = false;  // a stop string or EOS ended it
};

// Greedy decoding of up to max_new_tokens after `prompt` (which must fit in the model's context
// with them) until a stop string appears in the decoded text (cut there) or an EOS token.
absl::StatusOr<Generation> GreedyGenerate(const EvalContext& context,
                                          std::span<const int32_t> prompt, int64_t max_new_tokens,
                                          const std::vector<std::string>& stops);

// `text` cut before the earliest occurrence of any stop string; whether one occurred.
bool CutAtStop(std::string& text, const std::vector<std::string>& stops);

// The result's skeleton: {"task", "name", "metrics": {}}.
nlohmann::json ResultSkeleton(const TaskOptions& options);

// Number of Unicode code points of UTF-8 text (Python's len of a str).
int64_t CodePointCount(std::string_view text);

}  // namespace qtrain::eval

#endif  // QTRAIN_WORKER_EVAL_COMMON_H_
