// The tasks behind RunTask (one file each), with options already defaulted and checked.
#ifndef QTRAIN_WORKER_EVAL_TASKS_H_
#define QTRAIN_WORKER_EVAL_TASKS_H_

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/eval/eval.h"

namespace qtrain::eval {

absl::StatusOr<nlohmann::json> RunPerplexity(const TaskOptions& options, EvalContext& context);
absl::StatusOr<nlohmann::json> RunMultipleChoice(const TaskOptions& options, EvalContext& context);
absl::StatusOr<nlohmann::json> RunGeneration(const TaskOptions& options, EvalContext& context);
absl::StatusOr<nlohmann::json> RunNeedle(const TaskOptions& options, EvalContext& context);

}  // namespace qtrain::eval

#endif  // QTRAIN_WORKER_EVAL_TASKS_H_
