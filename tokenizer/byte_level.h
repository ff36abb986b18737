// The byte-level alphabet (GPT-2's bytes_to_unicode): each byte is shown as one printable
// character, so that vocabulary entries are strings. Internally qtrain works on raw bytes and
// uses this mapping only when reading or writing tokenizer.json.
#ifndef QTRAIN_TOKENIZER_BYTE_LEVEL_H_
#define QTRAIN_TOKENIZER_BYTE_LEVEL_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace qtrain::tokenizer {

// The code point that stands for `byte`.
uint32_t ByteToCodePoint(uint8_t byte);
// The byte that `cp` stands for, or -1 if `cp` is not in the alphabet.
int CodePointToByte(uint32_t cp);
// The alphabet in the reference's order ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF, then the
// remaining bytes from U+0100): the byte at position i.
uint8_t ByteAtAlphabetPosition(int i);

// Raw bytes -> byte-level string (UTF-8).
std::string BytesToByteLevel(std::string_view bytes);
// Byte-level string (valid UTF-8) -> raw bytes; false if a character is not in the alphabet.
bool ByteLevelToBytes(std::string_view token, std::string* bytes);

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_BYTE_LEVEL_H_
