// UTF-8 helpers shared by the normalizer, the pre-tokenizer and the decoder.
//
// Encode input must be valid UTF-8 (the reference tokenizers take Unicode strings, so there is
// no byte-exact behaviour to match for anything else): ValidateUtf8 names the first bad byte.
// Decode output may cut a multi-byte character; ToValidUtf8Lossy then replaces each maximal
// ill-formed subsequence with U+FFFD, exactly as Python's errors="replace" and Rust's
// String::from_utf8_lossy do.
#ifndef QTRAIN_TOKENIZER_UTF8_H_
#define QTRAIN_TOKENIZER_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace qtrain::tokenizer {

// Length of the well-formed UTF-8 sequence at the start of `s` (1..4), or 0 if the bytes there
// do not start one (bad lead byte, bad continuation, overlong form, surrogate, > U+10FFFF, or
// truncated). `s` must not be empty.
size_t WellFormedPrefixLength(std::string_view s);

// OK, or INVALID_ARGUMENT naming the byte offset and value of the first ill-formed sequence.
absl::Status ValidateUtf8(std::string_view s);

// Replaces each maximal ill-formed subsequence with U+FFFD (EF BF BD).
std::string ToValidUtf8Lossy(std::string_view s);

// Appends the UTF-8 encoding of `cp` (must be a Unicode scalar value).
void AppendUtf8(uint32_t cp, std::string* out);

// Decodes the character at `p`; the bytes must be valid UTF-8 (checked earlier).
inline uint32_t DecodeValidUtf8(const unsigned char* p, size_t* len) {
  const unsigned char b0 = p[0];
  if (b0 < 0x80) {
    *len = 1;
    return b0;
  }
  if (b0 < 0xE0) {
    *len = 2;
    return ((b0 & 0x1Fu) << 6) | (p[1] & 0x3Fu);
  }
  if (b0 < 0xF0) {
    *len = 3;
    return ((b0 & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
  }
  *len = 4;
  return ((b0 & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
}

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_UTF8_H_
