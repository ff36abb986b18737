// Feeds arbitrary bytes to the Qwen2 tokenizer's Encode: invalid UTF-8 must be refused with
// INVALID_ARGUMENT; valid text must give ids in range, and text that is already NFC and holds
// no special token must decode back to itself byte for byte.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "tokenizer/normalizer.h"
#include "tokenizer/tokenizer.h"

namespace {

const qtrain::tokenizer::Tokenizer& Qwen2() {
  static const qtrain::tokenizer::Tokenizer* tok = [] {
    absl::StatusOr<qtrain::tokenizer::Tokenizer> t = qtrain::tokenizer::Tokenizer::FromFile(
        std::string(QTRAIN_TOKENIZER_TESTDATA) + "/qwen2/tokenizer.json");
    if (!t.ok()) {
      std::fprintf(stderr, "%s\n", t.status().ToString().c_str());
      std::abort();
    }
    return new qtrain::tokenizer::Tokenizer(std::move(*t));
  }();
  return *tok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const qtrain::tokenizer::Tokenizer& tok = Qwen2();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<uint32_t> ids;
  const absl::Status s = tok.Encode(text, &ids);
  if (!s.ok()) {
    if (s.code() != absl::StatusCode::kInvalidArgument) __builtin_trap();
    return 0;
  }
  for (uint32_t id : ids) {
    if (id >= tok.vocab_size()) __builtin_trap();
  }
  absl::StatusOr<std::string> back = tok.Decode(ids);
  if (!back.ok()) __builtin_trap();
  std::string scratch;
  absl::StatusOr<std::string_view> nfc = qtrain::tokenizer::NormalizeNfc(text, &scratch);
  if (!nfc.ok()) __builtin_trap();
  if (nfc->data() == text.data() && *back != text) __builtin_trap();
  return 0;
}
