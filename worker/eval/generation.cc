// generation: greedy continuation of each prompt, exact match of the extracted answer.
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "worker/eval/answer.h"
#include "worker/eval/common.h"
#include "worker/eval/rows.h"
#include "worker/eval/tasks.h"

namespace qtrain::eval {

absl::StatusOr<nlohmann::json> RunGeneration(const TaskOptions& options, EvalContext& context) {
  QTRAIN_ASSIGN_OR_RETURN(const AnswerExtractor extractor,
                          AnswerExtractor::Create(options.answer_regex));
  QTRAIN_ASSIGN_OR_RETURN(const std::string content, ReadFileToString(options.data));
  QTRAIN_ASSIGN_OR_RETURN(const std::vector<GenerationRow> rows,
                          ParseGenerationRows(content, options.data, options.limit));
  const int64_t max_new = options.max_new_tokens > 0 ? options.max_new_tokens : 256;
  const int64_t context_length = ModelContextLength(*context.model);
  if (max_new >= context_length) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens: ", max_new,
                                                   " leaves no room for a prompt in the model's "
                                                   "context of ",
                                                   context_length, " positions"));
  }
  nlohmann::json result = ResultSkeleton(options);
  const std::string name = result["name"];
  nlohmann::json examples = nlohmann::json::array();
  int64_t correct = 0;
  const auto total = static_cast<int64_t>(rows.size());
  for (int64_t r = 0; r < total; ++r) {
    QTRAIN_RETURN_IF_ERROR(CheckCancelled(context));
    const GenerationRow& row = rows[r];
    const std::string where = absl::StrCat(options.data, ":", row.line);
    QTRAIN_ASSIGN_OR_RETURN(std::vector<int32_t> prompt, EncodeText(context, row.prompt, where));
    if (prompt.empty()) return absl::InvalidArgumentError(where + ": the prompt has no tokens");
    // Prompts longer than the room left by max_new_tokens keep their last tokens (the
    // harness's left truncation for generate_until).
    const int64_t room = context_length - max_new;
    if (static_cast<int64_t>(prompt.size()) > room) {
      prompt.erase(prompt.begin(), prompt.end() - room);
    }
    absl::StatusOr<Generation> g = GreedyGenerate(context, prompt, max_new, row.stop);
    if (!g.ok()) return Annotate(g.status(), where);
    const std::string pred = extractor.Extract(g->text);
    const std::string ref = extractor.Reference(row.answer);
    const bool match = !ref.empty() && pred == ref;
    correct += match;
    if (options.per_example) {
      examples.push_back(
          {{"output", g->text}, {"prediction", pred}, {"reference", ref}, {"exact_match", match}});
    }
    ReportProgress(context, name, r + 1, total);
  }
  result["metrics"] = {{"exact_match", static_cast<double>(correct) / static_cast<double>(total)},
                       {"count", total}};
  if (options.per_example) result["examples"] = std::move(examples);
  return result;
}

}  // namespace qtrain::eval
