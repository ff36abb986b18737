// Positions in a text for error messages: "line:column" of a byte offset, both 1-based, as
// editors count them (a column counts bytes).
#ifndef QTRAIN_COMMON_TEXT_POSITION_H_
#define QTRAIN_COMMON_TEXT_POSITION_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace qtrain {

inline std::string LineColumn(std::string_view text, size_t offset) {
  size_t line = 1, column = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return absl::StrCat(line, ":", column);
}

}  // namespace qtrain

#endif  // QTRAIN_COMMON_TEXT_POSITION_H_
