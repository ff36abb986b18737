#include "cli/json_lines.h"

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/line_reader.h"
#include "common/status_macros.h"
#include "tokenizer/utf8.h"

namespace qtrain::cli {

absl::StatusOr<nlohmann::json> ParseJsonObjectLine(std::string_view line, uint64_t line_number) {
  const std::string where = absl::StrCat("stdin line ", line_number);
  // Checked first: the JSON parser's message for a bad byte does not say what is wrong.
  if (absl::Status utf8 = tokenizer::ValidateUtf8(line); !utf8.ok()) {
    return Annotate(utf8, absl::StrCat(where, ": not valid UTF-8"));
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": not valid JSON: ", e.what()));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": expected a JSON object, got ", j.type_name()));
  }
  return j;
}

absl::Status ForEachStdinLine(
    absl::FunctionRef<absl::StatusOr<std::string>(const std::string& line, uint64_t line_number)>
        fn,
    StdinLineOptions options) {
  LineReader lines = LineReader::Stdin();
  std::string line;
  while (true) {
    QTRAIN_ASSIGN_OR_RETURN(const bool more, lines.Next(&line));
    if (!more) break;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (options.skip_blank_lines && line.find_first_not_of(" \t\r") == std::string::npos) {
      continue;
    }
    QTRAIN_ASSIGN_OR_RETURN(std::string out, fn(line, lines.line_number()));
    out.push_back('\n');
    QTRAIN_RETURN_IF_ERROR(WriteStdout(out));
    if (options.flush_each_line) QTRAIN_RETURN_IF_ERROR(FlushStdout());
  }
  return FlushStdout();
}

}  // namespace qtrain::cli
