#include "tokenizer/unicode_class.h"

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "utf8proc.h"

namespace qtrain::tokenizer::internal {
namespace {

#include "tokenizer/unicode_data.inc"

// Full canonical decomposition of `cp`; empty when it has none.
std::vector<utf8proc_int32_t> CanonicalDecomposition(uint32_t cp) {
  utf8proc_int32_t buf[16];
  int last_boundclass = 0;
  const utf8proc_ssize_t n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(cp), buf, 16,
                                                     UTF8PROC_DECOMPOSE, &last_boundclass);
  if (n <= 0 || n > 16 || (n == 1 && buf[0] == static_cast<utf8proc_int32_t>(cp))) return {};
  return std::vector<utf8proc_int32_t>(buf, buf + n);
}

bool IsNfcOfItself(uint32_t cp) {
  // utf8proc_normalize_utf32 recomposes an already decomposed buffer in place.
  const std::vector<utf8proc_int32_t> d = CanonicalDecomposition(cp);
  if (d.empty()) return true;
  utf8proc_int32_t tmp[16];
  std::memcpy(tmp, d.data(), d.size() * sizeof(utf8proc_int32_t));
  const utf8proc_ssize_t m =
      utf8proc_normalize_utf32(tmp, static_cast<utf8proc_ssize_t>(d.size()),
                               static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  return m == 1 && tmp[0] == static_cast<utf8proc_int32_t>(cp);
}

struct Builder {
  UnicodeTable table;
  std::vector<uint8_t> blocks;

  Builder() {
    std::vector<uint8_t> props(0x110000);
    for (const CodePointRange& r : kClassRanges) {
      for (uint32_t cp = r.first; cp <= r.last; ++cp) props[cp] = r.value;
    }
    for (uint32_t cp = 0; cp < 0x110000; ++cp) {
      uint8_t p = 0;
      if (cp >= 0x80) {
        const utf8proc_property_t* prop = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
        if (prop->combining_class != 0) p |= kNfcUnsafe;
        if (prop->decomp_seqindex != UINT16_MAX || (cp >= 0xAC00 && cp <= 0xD7A3)) {
          const std::vector<utf8proc_int32_t> d = CanonicalDecomposition(cp);
          // The last character of a composite's decomposition may compose with what precedes
          // it (this covers Hangul V and T jamo through the syllables).
          if (d.size() >= 2) props[static_cast<uint32_t>(d.back())] |= kNfcUnsafe;
          if (!d.empty() && !IsNfcOfItself(cp)) p |= kNfcUnsafe;
        }
      }
      props[cp] |= p;
    }
    for (const CodePointRange& r : kNfcReferenceInert) {
      for (uint32_t cp = r.first; cp <= r.last; ++cp) {
        props[cp] = static_cast<uint8_t>((props[cp] & ~kNfcUnsafe) | kNfcInert);
      }
    }
    // Two-stage table: identical 256-entry blocks are stored once.
    std::map<std::string, uint16_t> seen;
    for (uint32_t b = 0; b < (0x110000 >> 8); ++b) {
      std::string key(reinterpret_cast<const char*>(&props[b << 8]), 256);
      auto [it, inserted] = seen.emplace(key, static_cast<uint16_t>(seen.size()));
      if (inserted) blocks.insert(blocks.end(), key.begin(), key.end());
      table.stage1[b] = it->second;
    }
    table.stage2 = blocks.data();
  }
};

}  // namespace

const UnicodeTable& GetUnicodeTable() {
  static const Builder* builder = new Builder();
  return builder->table;
}

}  // namespace qtrain::tokenizer::internal
