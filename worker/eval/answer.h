// Answer extraction and comparison for the generation task.
#ifndef QTRAIN_WORKER_EVAL_ANSWER_H_
#define QTRAIN_WORKER_EVAL_ANSWER_H_

#include <memory>
#include <regex>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace qtrain::eval {

inline constexpr std::string_view kDefaultAnswerRegex = R"(#### (\S+))";

class AnswerExtractor {
 public:
  // ECMAScript syntax (std::regex); empty: kDefaultAnswerRegex. INVALID_ARGUMENT naming the
  // pattern when it does not compile.
  static absl::StatusOr<AnswerExtractor> Create(std::string_view pattern);

  // The first match's group 1 (the whole match when the pattern has no group); without a
  // match, the last number in the text; else "". Normalized (see NormalizeAnswer).
  std::string Extract(const std::string& text) const;
  // The reference: extracted the same way when it contains "####", else the whole answer,
  // normalized.
  std::string Reference(const std::string& answer) const;

 private:
  explicit AnswerExtractor(std::shared_ptr<const std::regex> re) : re_(std::move(re)) {}
  std::shared_ptr<const std::regex> re_;
};

// Trimmed of whitespace, commas removed, one trailing "." removed.
std::string NormalizeAnswer(std::string_view text);

// The last number of `text` ("-1,234.5"), or "".
std::string LastNumber(const std::string& text);

}  // namespace qtrain::eval

#endif  // QTRAIN_WORKER_EVAL_ANSWER_H_
