// Per-code-point properties used by the Qwen2 pre-tokenizer and the NFC fast path, built once
// per process.
//
// The classes are those of the reference's regex engine (Oniguruma, Unicode 16) in Unicode mode:
//   \p{L}  general categories Lu Ll Lt Lm Lo
//   \p{N}  general categories Nd Nl No
//   \s     U+0009..U+000D, U+0085 and categories Zs Zl Zp (the White_Space property)
// Every other code point is kOther. They come from unicode_data.inc, generated from the
// reference, so that tokenization does not change with the installed utf8proc; they equal
// utf8proc's categories wherever utf8proc's (older) Unicode version has the code point assigned
// (unicode_class_test checks both). The NFC bits come from utf8proc.
#ifndef QTRAIN_TOKENIZER_UNICODE_CLASS_H_
#define QTRAIN_TOKENIZER_UNICODE_CLASS_H_

#include <cstdint>

namespace qtrain::tokenizer {

enum CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

// Bits of a code point's entry in the table.
inline constexpr uint8_t kClassMask = 0x03;
// Set when a character might change under NFC or interact with its neighbours (non-zero
// combining class, not NFC itself, or the second half of a canonical composition). Text made
// only of characters without this bit is already NFC.
inline constexpr uint8_t kNfcUnsafe = 0x04;
// Set for the few code points whose normalization the reference's older Unicode data does not
// know (marks added after Unicode 9, and the Dives Akuru composition): they stay as they are and
// nothing composes or reorders across them, as in the reference.
inline constexpr uint8_t kNfcInert = 0x08;

namespace internal {
struct CodePointRange {
  uint32_t first;
  uint32_t last;
  uint8_t value;
};
struct UnicodeTable {
  uint16_t stage1[0x110000 >> 8];  // block index per 256 code points
  const uint8_t* stage2;           // 256 entries per distinct block
};
const UnicodeTable& GetUnicodeTable();
}  // namespace internal

// Properties of `cp` (must be <= U+10FFFF).
inline uint8_t CodePointProps(uint32_t cp) {
  const internal::UnicodeTable& t = internal::GetUnicodeTable();
  return t.stage2[(static_cast<uint32_t>(t.stage1[cp >> 8]) << 8) | (cp & 0xFF)];
}
inline CharClass ClassOf(uint32_t cp) {
  return static_cast<CharClass>(CodePointProps(cp) & kClassMask);
}

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_UNICODE_CLASS_H_
