#include "tokenizer/utf8.h"

#include "absl/strings/str_format.h"

namespace qtrain::tokenizer {

namespace {

// Table 3-7 of the Unicode standard: the sequence length a lead byte starts, and the allowed
// range of the second byte, which rules out overlong forms, surrogates and values above
// U+10FFFF. False for bytes that cannot start a multi-byte sequence.
bool MultiByteLead(unsigned char b0, size_t* len, unsigned char* lo, unsigned char* hi) {
  *lo = 0x80;
  *hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    *len = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    *len = 3;
    if (b0 == 0xE0) *lo = 0xA0;
    if (b0 == 0xED) *hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    *len = 4;
    if (b0 == 0xF0) *lo = 0x90;
    if (b0 == 0xF4) *hi = 0x8F;
  } else {
    return false;
  }
  return true;
}

}  // namespace

size_t WellFormedPrefixLength(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  const unsigned char b0 = p[0];
  if (b0 < 0x80) return 1;
  size_t len;
  unsigned char lo, hi;
  if (!MultiByteLead(b0, &len, &lo, &hi)) return 0;
  if (n < 2 || p[1] < lo || p[1] > hi) return 0;
  for (size_t k = 2; k < len; ++k) {
    if (k >= n || (p[k] & 0xC0) != 0x80) return 0;
  }
  return len;
}

absl::Status ValidateUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= s.size()) {
      uint64_t word;
      __builtin_memcpy(&word, s.data() + i, 8);
      if (word & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= s.size()) break;
    const size_t len = WellFormedPrefixLength(s.substr(i));
    if (len == 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "invalid UTF-8 at byte offset %d (byte 0x%02X)", i, static_cast<unsigned char>(s[i])));
    }
    i += len;
  }
  return absl::OkStatus();
}

// The maximal subpart of an ill-formed sequence: the longest prefix that could still have
// started a well-formed sequence (at least one byte).
static size_t MaximalSubpartLength(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t len;
  unsigned char lo, hi;
  if (!MultiByteLead(p[0], &len, &lo, &hi)) return 1;
  size_t k = 1;
  if (k < s.size() && p[k] >= lo && p[k] <= hi) {
    ++k;
    while (k < len && k < s.size() && (p[k] & 0xC0) == 0x80) ++k;
  }
  return k;
}

std::string ToValidUtf8Lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const size_t len = WellFormedPrefixLength(s.substr(i));
    if (len > 0) {
      out.append(s.data() + i, len);
      i += len;
    } else {
      out.append("\xEF\xBF\xBD");
      i += MaximalSubpartLength(s.substr(i));
    }
  }
  return out;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace qtrain::tokenizer
