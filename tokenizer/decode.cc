// Tokenizer::Decode and TokenBytes: ids -> bytes -> text (the byte-level decoder).
#include "absl/strings/str_format.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace qtrain::tokenizer {

absl::StatusOr<std::string> Tokenizer::TokenBytes(uint32_t id) const {
  if (id >= vocab_size_ || (!model_.HasId(id) && added_index_[id] < 0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("token id %d is not in the vocabulary (size %d)", id, vocab_size_));
  }
  return decode_bytes_[id];
}

absl::StatusOr<std::string> Tokenizer::Decode(std::span<const uint32_t> ids,
                                              bool skip_special_tokens) const {
  std::string bytes;
  for (size_t k = 0; k < ids.size(); ++k) {
    const uint32_t id = ids[k];
    if (id >= vocab_size_ || (!model_.HasId(id) && added_index_[id] < 0)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "ids[%d]: token id %d is not in the vocabulary (size %d)", k, id, vocab_size_));
    }
    if (skip_special_tokens && IsSpecial(id)) continue;
    bytes += decode_bytes_[id];
  }
  if (ValidateUtf8(bytes).ok()) return bytes;
  return ToValidUtf8Lossy(bytes);
}

}  // namespace qtrain::tokenizer
