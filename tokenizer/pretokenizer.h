// The Qwen2 pre-tokenizer: splits (normalized, valid UTF-8) text into pieces exactly as the
// reference's Split pre-tokenizer does with the regex
//
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
//
// (leftmost-first alternation, each match starting where the previous ended; every character
// is covered by some alternative, so the pieces tile the text). It is written out by hand for
// speed; the comments in SplitQwen2 follow the alternatives in order.
#ifndef QTRAIN_TOKENIZER_PRETOKENIZER_H_
#define QTRAIN_TOKENIZER_PRETOKENIZER_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "tokenizer/unicode_class.h"
#include "tokenizer/utf8.h"

namespace qtrain::tokenizer {

// The regex above, as it appears in tokenizer.json.
inline constexpr std::string_view kQwen2SplitPattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

namespace internal {

struct Cursor {
  const unsigned char* p;
  size_t n;
  const UnicodeTable& table;

  // Class and length of the character at i (< n).
  CharClass At(size_t i, uint32_t* cp, size_t* len) const {
    const unsigned char b = p[i];
    if (b < 0x80) {
      *cp = b;
      *len = 1;
      return kAsciiClass[b];
    }
    *cp = DecodeValidUtf8(p + i, len);
    return static_cast<CharClass>(
        table.stage2[(static_cast<uint32_t>(table.stage1[*cp >> 8]) << 8) | (*cp & 0xFF)] &
        kClassMask);
  }
  bool IsLetterAt(size_t i) const {
    uint32_t cp;
    size_t len;
    return i < n && At(i, &cp, &len) == kLetter;
  }
  // End of the run of characters of class `cls` starting at i.
  size_t SkipClass(size_t i, CharClass cls) const {
    while (i < n) {
      uint32_t cp;
      size_t len;
      if (At(i, &cp, &len) != cls) break;
      i += len;
    }
    return i;
  }
  size_t SkipCrLf(size_t i) const {
    while (i < n && (p[i] == '\r' || p[i] == '\n')) ++i;
    return i;
  }
  // End of the contraction ('s 't 're 've 'm 'll 'd in any case) at i (just after the
  // apostrophe), or 0 if there is none. U+017F LATIN SMALL LETTER LONG S case-folds to 's'.
  size_t Contraction(size_t i) const {
    if (i >= n) return 0;
    const unsigned char c = p[i] | 0x20;
    if (c == 's' || c == 't' || c == 'm' || c == 'd') return i + 1;
    if (p[i] == 0xC5 && i + 1 < n && p[i + 1] == 0xBF) return i + 2;
    if (i + 1 < n) {
      const unsigned char d = p[i + 1] | 0x20;
      if ((c == 'r' && d == 'e') || (c == 'v' && d == 'e') || (c == 'l' && d == 'l')) {
        return i + 2;
      }
    }
    return 0;
  }

  static const CharClass kAsciiClass[128];
};

// End of the piece that starts at i (< n).
inline size_t NextPieceEnd(const Cursor& c, size_t i) {
  uint32_t cp;
  size_t len;
  const CharClass cls = c.At(i, &cp, &len);
  const size_t next = i + len;
  if (cls == kLetter) return c.SkipClass(next, kLetter);  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (cls == kNumber) return next;                        // \p{N}
  if (cp == '\'') {                                       // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    const size_t end = c.Contraction(next);
    if (end != 0) return end;
  }
  if (cp != '\r' && cp != '\n' && c.IsLetterAt(next)) {  // [^\r\n\p{L}\p{N}]\p{L}+
    return c.SkipClass(next, kLetter);
  }
  if (cls == kOther) {  // [^\s\p{L}\p{N}]+[\r\n]*
    return c.SkipCrLf(c.SkipClass(next, kOther));
  }
  if (cp == ' ' && next < c.n) {  // ' '[^\s\p{L}\p{N}]+[\r\n]*
    uint32_t cp2;
    size_t len2;
    if (c.At(next, &cp2, &len2) == kOther) return c.SkipCrLf(c.SkipClass(next, kOther));
  }
  // A whitespace run [i, run_end).
  size_t run_end = i;
  size_t last_start = i;
  size_t crlf_end = 0;
  while (run_end < c.n) {
    uint32_t w;
    size_t l;
    if (c.At(run_end, &w, &l) != kSpace) break;
    last_start = run_end;
    run_end += l;
    if (w == '\r' || w == '\n') crlf_end = run_end;
  }
  if (crlf_end != 0) return crlf_end;     // \s*[\r\n]+ : up to the last CR/LF of the run
  if (run_end == c.n) return run_end;     // \s+(?!\S) at the end of the text
  if (last_start > i) return last_start;  // \s+(?!\S) : all but the last space
  return run_end;                         // \s+
}

}  // namespace internal

// Calls emit(std::string_view piece) for each piece of `text`, in order; an `emit` that returns
// bool stops the split by returning false. `text` must be valid UTF-8 (NormalizeNfc or
// ValidateUtf8 checks it).
template <typename Emit>
void SplitQwen2(std::string_view text, Emit&& emit) {
  const internal::Cursor c{reinterpret_cast<const unsigned char*>(text.data()), text.size(),
                           internal::GetUnicodeTable()};
  size_t i = 0;
  while (i < c.n) {
    const size_t end = internal::NextPieceEnd(c, i);
    if constexpr (std::is_same_v<decltype(emit(text)), bool>) {
      if (!emit(text.substr(i, end - i))) return;
    } else {
      emit(text.substr(i, end - i));
    }
    i = end;
  }
}

// Convenience form for tests and tools.
std::vector<std::string> SplitQwen2ToVector(std::string_view text);

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_PRETOKENIZER_H_
