#include "worker/eval/rows.h"

#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "tokenizer/utf8.h"

namespace qtrain::eval {
namespace {

using Json = nlohmann::json;

// Calls `row` with each non-blank line parsed as a JSON object and its "file:line" prefix.
absl::Status ForEachRow(
    std::string_view content, std::string_view file, int64_t limit,
    const std::function<absl::Status(const Json&, const std::string& where, int64_t line)>& row) {
  int64_t line_number = 0;
  int64_t rows = 0;
  size_t pos = 0;
  while (pos < content.size() && (limit <= 0 || rows < limit)) {
    size_t end = content.find('\n', pos);
    if (end == std::string_view::npos) end = content.size();
    std::string_view line = content.substr(pos, end - pos);
    pos = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.find_first_not_of(" \t") == std::string_view::npos) continue;
    const std::string where = absl::StrCat(std::string(file), ":", line_number);
    if (absl::Status utf8 = tokenizer::ValidateUtf8(line); !utf8.ok()) {
      return Annotate(utf8, absl::StrCat(where, ": not valid UTF-8"));
    }
    Json j = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return absl::InvalidArgumentError(where + ": not valid JSON");
    if (!j.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": expected a JSON object, got ", j.type_name()));
    }
    QTRAIN_RETURN_IF_ERROR(row(j, where, line_number));
    ++rows;
  }
  if (rows == 0) return absl::InvalidArgumentError(absl::StrCat(std::string(file), ": no rows"));
  return absl::OkStatus();
}

absl::StatusOr<std::string> StringField(const Json& j, const std::string& where, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing \"", key, "\""));
  }
  if (!it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"", key, "\" must be a string, got ", it->type_name()));
  }
  return it->get<std::string>();
}

// A list of strings; `required` false: a missing key is an empty list.
absl::StatusOr<std::vector<std::string>> StringListField(const Json& j, const std::string& where,
                                                         const char* key, bool required) {
  std::vector<std::string> out;
  auto it = j.find(key);
  if (it == j.end()) {
    if (!required) return out;
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing \"", key, "\""));
  }
  if (!it->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": \"", key, "\" must be a list of strings, got ", it->type_name()));
  }
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& v = (*it)[i];
    if (!v.is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": \"", key, "\"[", i, "] must be a string, got ", v.type_name()));
    }
    out.push_back(v.get<std::string>());
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<TextRow>> ParseTextRows(std::string_view content, std::string_view file,
                                                   int64_t limit) {
  std::vector<TextRow> rows;
  QTRAIN_RETURN_IF_ERROR(
      ForEachRow(content, file, limit, [&](const Json& j, const std::string& where, int64_t line) {
        QTRAIN_ASSIGN_OR_RETURN(std::string text, StringField(j, where, "text"));
        rows.push_back({std::move(text), line});
        return absl::OkStatus();
      }));
  return rows;
}

absl::StatusOr<std::vector<ChoiceRow>> ParseChoiceRows(std::string_view content,
                                                       std::string_view file, int64_t limit) {
  std::vector<ChoiceRow> rows;
  QTRAIN_RETURN_IF_ERROR(
      ForEachRow(content, file, limit, [&](const Json& j, const std::string& where, int64_t line) {
        ChoiceRow row;
        row.line = line;
        QTRAIN_ASSIGN_OR_RETURN(row.context, StringField(j, where, "context"));
        QTRAIN_ASSIGN_OR_RETURN(row.choices,
                                StringListField(j, where, "choices", /*required=*/true));
        if (row.choices.empty()) {
          return absl::InvalidArgumentError(where + ": \"choices\" is empty");
        }
        auto it = j.find("label");
        if (it == j.end()) return absl::InvalidArgumentError(where + ": missing \"label\"");
        if (!it->is_number_integer()) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": \"label\" must be an integer, got ", it->type_name()));
        }
        if (it->is_number_unsigned()
                ? it->get<uint64_t>() >= row.choices.size()
                : (it->get<int64_t>() < 0 || it->get<int64_t>() >= std::ssize(row.choices))) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": \"label\" ", it->dump(),
                                                         " is out of range for ",
                                                         row.choices.size(), " choices"));
        }
        row.label = it->get<int64_t>();
        rows.push_back(std::move(row));
        return absl::OkStatus();
      }));
  return rows;
}

absl::StatusOr<std::vector<GenerationRow>> ParseGenerationRows(std::string_view content,
                                                               std::string_view file,
                                                               int64_t limit) {
  std::vector<GenerationRow> rows;
  QTRAIN_RETURN_IF_ERROR(
      ForEachRow(content, file, limit, [&](const Json& j, const std::string& where, int64_t line) {
        GenerationRow row;
        row.line = line;
        QTRAIN_ASSIGN_OR_RETURN(row.prompt, StringField(j, where, "prompt"));
        QTRAIN_ASSIGN_OR_RETURN(row.answer, StringField(j, where, "answer"));
        QTRAIN_ASSIGN_OR_RETURN(row.stop, StringListField(j, where, "stop", /*required=*/false));
        for (const std::string& s : row.stop) {
          if (s.empty()) return absl::InvalidArgumentError(where + ": a \"stop\" string is empty");
        }
        rows.push_back(std::move(row));
        return absl::OkStatus();
      }));
  return rows;
}

}  // namespace qtrain::eval
