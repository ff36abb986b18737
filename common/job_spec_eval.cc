#include "common/job_spec_eval.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace qtrain {
namespace {

constexpr absl::string_view kPerplexity = "perplexity";
constexpr absl::string_view kNeedle = "needle";

void Add(std::vector<std::string>& problems, const std::string& path, absl::string_view field,
         absl::string_view problem) {
  problems.push_back(absl::StrCat(path, ".", field, ": ", problem));
}

void CheckCount(std::vector<std::string>& problems, const std::string& path,
                absl::string_view field, int64_t value, absl::string_view zero_means) {
  if (value < 0) {
    Add(problems, path, field, absl::StrCat("must be >= 0 (0: ", zero_means, "), got ", value));
  } else if (value > kMaxEvalTaskCount) {
    Add(problems, path, field,
        absl::StrCat(value, " is larger than the limit of ", kMaxEvalTaskCount));
  }
}

// A reported name becomes a label value and a metrics.jsonl key: printable, no spaces.
bool IsReportedName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '/';
  });
}

void CheckNeedle(const v1::EvalTaskSpec& task, const std::string& path,
                 std::vector<std::string>& problems) {
  if (task.lengths().empty()) Add(problems, path, "lengths", "required for needle");
  for (int i = 0; i < task.lengths_size(); ++i) {
    const int64_t length = task.lengths(i);
    if (length <= 0 || length > kMaxEvalTaskCount) {
      Add(problems, path, absl::StrCat("lengths[", i, "]"),
          absl::StrCat("must be in [1, ", kMaxEvalTaskCount, "] tokens, got ", length));
    }
  }
  if (task.depths().empty()) Add(problems, path, "depths", "required for needle");
  for (int i = 0; i < task.depths_size(); ++i) {
    const double depth = task.depths(i);
    if (!(depth >= 0 && depth <= 1)) {  // also NaN
      Add(problems, path, absl::StrCat("depths[", i, "]"),
          absl::StrCat("must be in [0, 1], got ", depth));
    }
  }
  if (static_cast<int64_t>(task.lengths_size()) * task.depths_size() > kMaxNeedleCells) {
    Add(problems, path, "depths",
        absl::StrCat(task.lengths_size(), " lengths x ", task.depths_size(),
                     " depths is more than the limit of ", kMaxNeedleCells, " cells"));
  }
}

void CheckTask(const v1::EvalTaskSpec& task, const std::string& path,
               std::vector<std::string>& problems) {
  const std::vector<absl::string_view>& names = EvalTaskNames();
  const bool known = std::find(names.begin(), names.end(), task.task()) != names.end();
  if (task.task().empty()) {
    Add(problems, path, "task", absl::StrCat("required: one of ", absl::StrJoin(names, ", ")));
  } else if (!known) {
    Add(problems, path, "task",
        absl::StrCat("unknown task '", task.task(), "' (one of ", absl::StrJoin(names, ", "), ")"));
  }
  const bool needle = task.task() == kNeedle;
  if (known && !needle && task.data().empty()) {
    Add(problems, path, "data", absl::StrCat("required for ", task.task()));
  }
  if (needle) {
    CheckNeedle(task, path, problems);
  } else if (known && (!task.lengths().empty() || !task.depths().empty())) {
    Add(problems, path, task.lengths().empty() ? "depths" : "lengths",
        absl::StrCat("only needle takes lengths and depths, not ", task.task()));
  }
  CheckCount(problems, path, "seq_len", task.seq_len(), "the stage's seq_len");
  CheckCount(problems, path, "stride", task.stride(), "the window length");
  CheckCount(problems, path, "max_new_tokens", task.max_new_tokens(), "the task's default");
  CheckCount(problems, path, "limit", task.limit(), "all");
  if (known && task.task() != kPerplexity && (task.seq_len() != 0 || task.stride() != 0)) {
    Add(problems, path, task.seq_len() != 0 ? "seq_len" : "stride",
        absl::StrCat("only perplexity takes seq_len and stride, not ", task.task()));
  }
}

}  // namespace

const std::vector<absl::string_view>& EvalTaskNames() {
  static const auto* names =
      new std::vector<absl::string_view>{"perplexity", "multiple-choice", "generation", "needle"};
  return *names;
}

std::string EvalTaskReportedName(const v1::EvalTaskSpec& task) {
  return task.name().empty() ? task.task() : task.name();
}

std::vector<std::string> EvalTaskProblems(const v1::EvalSpec& eval) {
  std::vector<std::string> problems;
  if (eval.tasks_size() > kMaxEvalTasks) {
    problems.push_back(absl::StrCat("eval.tasks: ", eval.tasks_size(),
                                    " tasks is more than the limit of ", kMaxEvalTasks));
    return problems;
  }
  std::set<std::string> reported;
  for (int i = 0; i < eval.tasks_size(); ++i) {
    const v1::EvalTaskSpec& task = eval.tasks(i);
    const std::string path = absl::StrCat("eval.tasks[", i, "]");
    CheckTask(task, path, problems);
    const std::string name = EvalTaskReportedName(task);
    if (name.empty()) continue;  // the missing task is reported
    const absl::string_view field = task.name().empty() ? "task" : "name";
    if (!IsReportedName(name)) {
      Add(problems, path, field, absl::StrCat("'", name, "': use 1-63 of A-Z a-z 0-9 - _ . /"));
    } else if (!reported.insert(name).second) {
      Add(problems, path, field,
          absl::StrCat("duplicate reported name '", name,
                       "' (give each task of the same kind its own name)"));
    }
  }
  return problems;
}

}  // namespace qtrain
