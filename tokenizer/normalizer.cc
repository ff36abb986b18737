#include "tokenizer/normalizer.h"

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_format.h"
#include "tokenizer/unicode_class.h"
#include "tokenizer/utf8.h"
#include "utf8proc.h"

namespace qtrain::tokenizer {
namespace {

absl::Status InvalidUtf8At(std::string_view text, size_t i) {
  return absl::InvalidArgumentError(absl::StrFormat("invalid UTF-8 at byte offset %d (byte 0x%02X)",
                                                    i, static_cast<unsigned char>(text[i])));
}

}  // namespace

absl::StatusOr<std::string_view> NormalizeNfc(std::string_view text, std::string* scratch) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  size_t last_boundary = 0;  // start of the latest character with no kNfcUnsafe bit
  size_t copied = 0;         // text[0, copied) is accounted for in *scratch (when changed)
  bool changed = false;
  while (i < n) {
    if (i + 8 <= n) {
      uint64_t word;
      std::memcpy(&word, p + i, 8);
      if ((word & 0x8080808080808080ull) == 0) {
        last_boundary = i + 7;
        i += 8;
        continue;
      }
    }
    if (p[i] < 0x80) {
      last_boundary = i++;
      continue;
    }
    size_t len = WellFormedPrefixLength(text.substr(i));
    if (len == 0) return InvalidUtf8At(text, i);
    uint32_t cp = DecodeValidUtf8(p + i, &len);
    const uint8_t props = CodePointProps(cp);
    if ((props & kNfcInert) != 0) {  // a boundary on both sides, never changed
      i += len;
      last_boundary = i;
      continue;
    }
    if ((props & kNfcUnsafe) == 0) {
      last_boundary = i;
      i += len;
      continue;
    }
    // Extend to the next boundary character (or the end).
    const size_t start = last_boundary > copied ? last_boundary : copied;
    size_t end = i + len;
    while (end < n) {
      if (p[end] < 0x80) break;
      size_t l = WellFormedPrefixLength(text.substr(end));
      if (l == 0) return InvalidUtf8At(text, end);
      cp = DecodeValidUtf8(p + end, &l);
      if ((CodePointProps(cp) & kNfcUnsafe) == 0) break;  // boundary or inert
      end += l;
    }
    utf8proc_uint8_t* out = nullptr;
    const utf8proc_ssize_t m =
        utf8proc_map(p + start, static_cast<utf8proc_ssize_t>(end - start), &out,
                     static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (m < 0) {
      std::free(out);
      return absl::InternalError(absl::StrFormat("NFC normalization failed at byte offset %d: %s",
                                                 start, utf8proc_errmsg(m)));
    }
    const std::string_view normalized(reinterpret_cast<const char*>(out), static_cast<size_t>(m));
    if (normalized != text.substr(start, end - start)) {
      if (!changed) {
        scratch->assign(text.data(), start);
        changed = true;
      } else {
        scratch->append(text.data() + copied, start - copied);
      }
      scratch->append(normalized);
      copied = end;
    }
    std::free(out);
    i = end;
  }
  if (!changed) return text;
  scratch->append(text.data() + copied, n - copied);
  return std::string_view(*scratch);
}

}  // namespace qtrain::tokenizer
