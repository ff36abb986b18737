#include "worker/train/token_source.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace qtrain::train {

absl::Status InMemoryTokenSource::Read(int64_t begin, std::span<int32_t> out) const {
  const int64_t length = static_cast<int64_t>(out.size());
  if (begin < 0 || begin > size() - length) {
    return absl::OutOfRangeError(absl::StrCat("tokens [", begin, ", ", begin + length,
                                              ") are outside the ", size(), "-token stream"));
  }
  std::copy_n(tokens_.begin() + begin, out.size(), out.begin());
  return absl::OkStatus();
}

}  // namespace qtrain::train
