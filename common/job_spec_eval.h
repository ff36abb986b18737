// Checks of a job spec's eval.tasks (the benchmark tasks run at each stage's end), kept apart
// from job_spec.cc, which calls them. The trainer converts each task with the eval library
// (worker/eval/eval.h) and checks its data files before training starts.
#ifndef QTRAIN_COMMON_JOB_SPEC_EVAL_H_
#define QTRAIN_COMMON_JOB_SPEC_EVAL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain {

inline constexpr int64_t kMaxEvalTasks = 64;
inline constexpr int64_t kMaxEvalTaskCount = int64_t{1} << 40;  // lengths, limits, tokens
inline constexpr int64_t kMaxNeedleCells = 1024;                // lengths x depths

// The task names of eval.tasks[i].task.
const std::vector<absl::string_view>& EvalTaskNames();

// The name a task's results are reported under: its name, else its task.
std::string EvalTaskReportedName(const v1::EvalTaskSpec& task);

// One "eval.tasks[i].field: problem" line per problem found.
std::vector<std::string> EvalTaskProblems(const v1::EvalSpec& eval);

}  // namespace qtrain

#endif  // QTRAIN_COMMON_JOB_SPEC_EVAL_H_
