// Hugging Face tokenizer.json / tokenizer_config.json reading. Tokenizer::FromJson and ToJson
// are declared in tokenizer.h; this header has the helpers that tools need beside them.
//
// Accepted tokenizer.json (anything else is refused with an error naming the field):
//   model           BPE; vocab object; merges as "a b" strings or ["a", "b"] arrays; dropout
//                   null; continuing_subword_prefix and end_of_word_suffix empty or null;
//                   ignore_merges honoured; all 256 byte-level symbols in the vocabulary
//   normalizer      null, NFC, or a Sequence of those
//   pre_tokenizer   Sequence [Split(Qwen2 regex, Isolated, invert false),
//                   ByteLevel(add_prefix_space false, use_regex false)]
//   decoder         ByteLevel
//   post_processor  null or ByteLevel (nothing is added to the ids)
//   truncation, padding  null
//   added_tokens    single_word, lstrip, rstrip and normalized false
#ifndef QTRAIN_TOKENIZER_TOKENIZER_JSON_H_
#define QTRAIN_TOKENIZER_TOKENIZER_JSON_H_

#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace qtrain::tokenizer {

// What qtrain uses from tokenizer_config.json.
struct TokenizerConfig {
  std::optional<std::string> eos_token;
  std::optional<std::string> bos_token;
  std::optional<std::string> pad_token;
  std::string tokenizer_class;
};

absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(std::string_view json);

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_TOKENIZER_JSON_H_
