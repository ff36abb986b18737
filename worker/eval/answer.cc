#include "worker/eval/answer.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace qtrain::eval {

absl::StatusOr<AnswerExtractor> AnswerExtractor::Create(std::string_view pattern) {
  const std::string p(pattern.empty() ? kDefaultAnswerRegex : pattern);
  try {
    return AnswerExtractor(std::make_shared<const std::regex>(p, std::regex::ECMAScript));
  } catch (const std::regex_error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("answer_regex: '", p, "' is not a valid regular expression: ", e.what()));
  }
}

std::string NormalizeAnswer(std::string_view text) {
  std::string s = absl::StrReplaceAll(absl::StripAsciiWhitespace(std::string(text)), {{",", ""}});
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

std::string LastNumber(const std::string& text) {
  static const std::regex* const kNumber = new std::regex(R"(-?[0-9][0-9,]*(\.[0-9]+)?)");
  std::string last;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), *kNumber);
       it != std::sregex_iterator(); ++it) {
    last = it->str();
  }
  return last;
}

std::string AnswerExtractor::Extract(const std::string& text) const {
  std::smatch m;
  try {
    if (std::regex_search(text, m, *re_)) {
      return NormalizeAnswer(m.size() > 1 && m[1].matched ? m[1].str() : m[0].str());
    }
  } catch (const std::regex_error&) {
    // Too complex for this text (std::regex's backtracking limit): fall back.
  }
  return NormalizeAnswer(LastNumber(text));
}

std::string AnswerExtractor::Reference(const std::string& answer) const {
  if (answer.find("####") != std::string::npos) return Extract(answer);
  return NormalizeAnswer(answer);
}

}  // namespace qtrain::eval
