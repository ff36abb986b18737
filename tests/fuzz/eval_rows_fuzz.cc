// Feeds arbitrary bytes to the eval tasks' row parsers (worker/eval/rows.h) as a JSONL file:
// each must accept or refuse with a status naming the file, never crash or hang. Rows it accepts
// keep the parser's promises (a label inside the choices, non-empty choices and stop strings).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "worker/eval/rows.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view content(reinterpret_cast<const char*>(data), size);
  if (auto rows = qtrain::eval::ParseChoiceRows(content, "fuzz.jsonl"); rows.ok()) {
    for (const auto& row : *rows) {
      if (row.choices.empty() || row.label < 0 ||
          row.label >= static_cast<int64_t>(row.choices.size()) || row.line < 1) {
        std::abort();
      }
    }
  } else if (rows.status().message().find("fuzz.jsonl") == std::string_view::npos) {
    std::abort();
  }
  if (auto rows = qtrain::eval::ParseGenerationRows(content, "fuzz.jsonl"); rows.ok()) {
    for (const auto& row : *rows) {
      for (const auto& stop : row.stop) {
        if (stop.empty()) std::abort();
      }
    }
  }
  (void)qtrain::eval::ParseTextRows(content, "fuzz.jsonl", 2);
  return 0;
}
