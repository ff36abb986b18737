// Feeds arbitrary bytes to the tokenizer.json loader: it must refuse or load, never crash or
// hang; a tokenizer it loads must encode, decode and serialize consistently.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using qtrain::tokenizer::Tokenizer;
  absl::StatusOr<Tokenizer> tok =
      Tokenizer::FromJson(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!tok.ok()) return 0;
  const std::string_view sample = "Hello, world! 123 \xE4\xBD\xA0\xE5\xA5\xBD\n\n  e\xCC\x81 <|x|>";
  absl::StatusOr<std::vector<uint32_t>> ids = tok->Encode(sample);
  if (!ids.ok()) __builtin_trap();  // valid UTF-8 always encodes
  for (uint32_t id : *ids) {
    if (id >= tok->vocab_size()) __builtin_trap();
  }
  if (!tok->Decode(*ids).ok()) __builtin_trap();
  // What it writes, it reads back the same.
  absl::StatusOr<Tokenizer> again = Tokenizer::FromJson(tok->ToJson());
  if (!again.ok()) __builtin_trap();
  absl::StatusOr<std::vector<uint32_t>> ids2 = again->Encode(sample);
  if (!ids2.ok() || *ids2 != *ids) __builtin_trap();
  return 0;
}
