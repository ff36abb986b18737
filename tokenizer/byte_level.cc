#include "tokenizer/byte_level.h"

#include <array>

#include "tokenizer/utf8.h"

namespace qtrain::tokenizer {
namespace {

struct Tables {
  std::array<uint32_t, 256> byte_to_cp;
  std::array<uint8_t, 256> order;
  std::array<int16_t, 512> cp_to_byte;  // every alphabet code point is below U+0200

  Tables() {
    cp_to_byte.fill(-1);
    int pos = 0;
    auto printable = [](int b) {
      return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    };
    for (int b = 0; b < 256; ++b) {
      if (printable(b)) {
        byte_to_cp[b] = static_cast<uint32_t>(b);
        order[pos++] = static_cast<uint8_t>(b);
      }
    }
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      if (!printable(b)) {
        byte_to_cp[b] = next++;
        order[pos++] = static_cast<uint8_t>(b);
      }
    }
    for (int b = 0; b < 256; ++b) cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
  }
};

const Tables& GetTables() {
  static const Tables tables;
  return tables;
}

}  // namespace

uint32_t ByteToCodePoint(uint8_t byte) { return GetTables().byte_to_cp[byte]; }

int CodePointToByte(uint32_t cp) { return cp < 512 ? GetTables().cp_to_byte[cp] : -1; }

uint8_t ByteAtAlphabetPosition(int i) { return GetTables().order[i]; }

std::string BytesToByteLevel(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) AppendUtf8(ByteToCodePoint(b), &out);
  return out;
}

bool ByteLevelToBytes(std::string_view token, std::string* bytes) {
  bytes->clear();
  const auto* p = reinterpret_cast<const unsigned char*>(token.data());
  size_t i = 0;
  while (i < token.size()) {
    size_t len = WellFormedPrefixLength(token.substr(i));
    if (len == 0) return false;
    const int b = CodePointToByte(DecodeValidUtf8(p + i, &len));
    if (b < 0) return false;
    bytes->push_back(static_cast<char>(b));
    i += len;
  }
  return true;
}

}  // namespace qtrain::tokenizer
