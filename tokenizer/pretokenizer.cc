#include "tokenizer/pretokenizer.h"

namespace qtrain::tokenizer {
namespace internal {

// ASCII classes, the same as the Unicode table gives (kept inline for speed).
const CharClass Cursor::kAsciiClass[128] = {
    kOther,  kOther,  kOther,  kOther,  kOther,  kOther,  kOther,  kOther,   // 0x00
    kOther,  kSpace,  kSpace,  kSpace,  kSpace,  kSpace,  kOther,  kOther,   // 0x08
    kOther,  kOther,  kOther,  kOther,  kOther,  kOther,  kOther,  kOther,   // 0x10
    kOther,  kOther,  kOther,  kOther,  kOther,  kOther,  kOther,  kOther,   // 0x18
    kSpace,  kOther,  kOther,  kOther,  kOther,  kOther,  kOther,  kOther,   // 0x20
    kOther,  kOther,  kOther,  kOther,  kOther,  kOther,  kOther,  kOther,   // 0x28
    kNumber, kNumber, kNumber, kNumber, kNumber, kNumber, kNumber, kNumber,  // 0x30
    kNumber, kNumber, kOther,  kOther,  kOther,  kOther,  kOther,  kOther,   // 0x38
    kOther,  kLetter, kLetter, kLetter, kLetter, kLetter, kLetter, kLetter,  // 0x40
    kLetter, kLetter, kLetter, kLetter, kLetter, kLetter, kLetter, kLetter,  // 0x48
    kLetter, kLetter, kLetter, kLetter, kLetter, kLetter, kLetter, kLetter,  // 0x50
    kLetter, kLetter, kLetter, kOther,  kOther,  kOther,  kOther,  kOther,   // 0x58
    kOther,  kLetter, kLetter, kLetter, kLetter, kLetter, kLetter, kLetter,  // 0x60
    kLetter, kLetter, kLetter, kLetter, kLetter, kLetter, kLetter, kLetter,  // 0x68
    kLetter, kLetter, kLetter, kLetter, kLetter, kLetter, kLetter, kLetter,  // 0x70
    kLetter, kLetter, kLetter, kOther,  kOther,  kOther,  kOther,  kOther,   // 0x78
};

}  // namespace internal

std::vector<std::string> SplitQwen2ToVector(std::string_view text) {
  std::vector<std::string> pieces;
  SplitQwen2(text, [&](std::string_view piece) { pieces.emplace_back(piece); });
  return pieces;
}

}  // namespace qtrain::tokenizer
