// NFC normalization (the Qwen2 normalizer) with a fast path for text that is already NFC.
#ifndef QTRAIN_TOKENIZER_NORMALIZER_H_
#define QTRAIN_TOKENIZER_NORMALIZER_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace qtrain::tokenizer {

// Validates `text` as UTF-8 (INVALID_ARGUMENT naming the offset otherwise) and returns its NFC
// form: `text` itself when nothing changes (the common case), else a view of *scratch.
//
// Only the stretches around characters that may change under NFC (see kNfcUnsafe) are handed
// to utf8proc: each stretch starts at the last character that is a normalization boundary and
// ends before the next one, so the result equals NFC of the whole text.
absl::StatusOr<std::string_view> NormalizeNfc(std::string_view text, std::string* scratch);

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_NORMALIZER_H_
