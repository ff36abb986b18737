#include "coordinator/names.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"

namespace qtrain::coordinator {
namespace {

bool IsIdChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
}

absl::StatusOr<std::string> ParseId(absl::string_view id, absl::string_view full,
                                    absl::string_view field, absl::string_view what) {
  if (id.empty() || id.size() > kMaxIdBytes || !std::all_of(id.begin(), id.end(), IsIdChar) ||
      id == "." || id == "..") {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": \"", absl::CHexEscape(full.substr(0, 200)), "\" is not a ", what, " name (", what,
        "s/ID, ID of at most ", kMaxIdBytes, " letters, digits, '-', '_' or '.')"));
  }
  return std::string(id);
}

}  // namespace

absl::StatusOr<std::string> ParseJobName(absl::string_view name, absl::string_view field) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": required"));
  absl::string_view id = name;
  if (!absl::ConsumePrefix(&id, "jobs/")) id = absl::string_view();
  return ParseId(id, name, field, "job");
}

absl::StatusOr<std::string> ParseWorkerName(absl::string_view name, absl::string_view field) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": required"));
  absl::string_view id = name;
  absl::ConsumePrefix(&id, "workers/");
  return ParseId(id, name, field, "worker");
}

std::string JobName(absl::string_view id) { return absl::StrCat("jobs/", id); }
std::string WorkerName(absl::string_view id) { return absl::StrCat("workers/", id); }
std::string CheckpointDirName(int64_t step) { return absl::StrFormat("step-%012d", step); }
std::string CheckpointName(absl::string_view job_id, int64_t step) {
  return absl::StrCat("jobs/", job_id, "/checkpoints/", CheckpointDirName(step));
}

std::string SanitizeWorkerPrefix(absl::string_view name) {
  std::string out;
  for (char c : name) {
    const char l = absl::ascii_tolower(static_cast<unsigned char>(c));
    if (absl::ascii_isalnum(static_cast<unsigned char>(l))) {
      out.push_back(l);
    } else if (!out.empty() && out.back() != '-') {
      out.push_back('-');
    }
    if (out.size() >= 48) break;
  }
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out.empty() ? "worker" : out;
}

bool IsValidUtf8(absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    int extra = 0;
    uint32_t code = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1;
      code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      code = c & 0x07;
    } else {
      return false;
    }
    if (i + extra >= text.size()) return false;
    for (int k = 1; k <= extra; ++k) {
      const unsigned char next = static_cast<unsigned char>(text[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      code = (code << 6) | (next & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF.
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (code < kMin[extra] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

absl::Status CheckLength(absl::string_view value, size_t max, absl::string_view field) {
  if (!IsValidUtf8(value)) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": not valid UTF-8"));
  }
  if (value.size() > max) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": at most ", max, " bytes (got ", value.size(), ")"));
  }
  return absl::OkStatus();
}

std::string EncodePageToken(absl::string_view kind, int64_t position) {
  return absl::WebSafeBase64Escape(absl::StrCat(kind, ":", position));
}

absl::StatusOr<int64_t> DecodePageToken(absl::string_view token, absl::string_view kind,
                                        absl::string_view field) {
  std::string raw;
  int64_t position = 0;
  absl::string_view rest;
  const bool ok = token.size() <= 128 && absl::WebSafeBase64Unescape(token, &raw) &&
                  (rest = raw, absl::ConsumePrefix(&rest, kind)) &&
                  absl::ConsumePrefix(&rest, ":") && absl::SimpleAtoi(rest, &position) &&
                  position >= 0;
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": not a page token of this list (pass next_page_token unchanged)"));
  }
  return position;
}

absl::StatusOr<int> CheckPageSize(int32_t page_size, absl::string_view field) {
  if (page_size < 0) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must be >= 0 (got ", page_size, ")"));
  }
  if (page_size == 0) return kDefaultPageSize;
  return std::min<int>(page_size, kMaxPageSize);
}

}  // namespace qtrain::coordinator
