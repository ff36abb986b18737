// The JSONL rows of the eval tasks' data files. Every problem is INVALID_ARGUMENT naming the
// file and the line: bad UTF-8, bad JSON, a missing or mistyped field, a label out of range.
// Blank lines are skipped; line numbers count them.
#ifndef QTRAIN_WORKER_EVAL_ROWS_H_
#define QTRAIN_WORKER_EVAL_ROWS_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace qtrain::eval {

// {"text": "..."} (perplexity).
struct TextRow {
  std::string text;
  int64_t line = 0;
};

// {"context": "...", "choices": ["...", ...], "label": i} (multiple-choice).
struct ChoiceRow {
  std::string context;
  std::vector<std::string> choices;
  int64_t label = 0;
  int64_t line = 0;
};

// {"prompt": "...", "answer": "...", "stop": ["...", ...]} (generation; "stop" optional).
struct GenerationRow {
  std::string prompt;
  std::string answer;
  std::vector<std::string> stop;
  int64_t line = 0;
};

// `content` is the file's text, `file` its name for messages. `limit` > 0 keeps the first
// `limit` rows (the lines after them are not parsed).
absl::StatusOr<std::vector<TextRow>> ParseTextRows(std::string_view content, std::string_view file,
                                                   int64_t limit = 0);
absl::StatusOr<std::vector<ChoiceRow>> ParseChoiceRows(std::string_view content,
                                                       std::string_view file, int64_t limit = 0);
absl::StatusOr<std::vector<GenerationRow>> ParseGenerationRows(std::string_view content,
                                                               std::string_view file,
                                                               int64_t limit = 0);

}  // namespace qtrain::eval

#endif  // QTRAIN_WORKER_EVAL_ROWS_H_
