// Byte-level BPE training with the same normalizer and pre-tokenizer as encoding.
//
// The vocabulary starts with the 256 byte symbols (in the byte-level alphabet's order, as in
// Qwen2). Each step merges the adjacent pair with the highest count over all pieces of the
// corpus (weighted by how often each piece occurs); ties go to the pair whose (left, right)
// byte strings sort first, so the result does not depend on hashing or threads. Special tokens
// follow the BPE tokens as added tokens. Training stops at the vocabulary size or when no pair
// occurs at least min_frequency times.
#ifndef QTRAIN_TOKENIZER_TRAINER_H_
#define QTRAIN_TOKENIZER_TRAINER_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tokenizer/tokenizer.h"

namespace qtrain::tokenizer {

struct BpeTrainerOptions {
  // All tokens: the 256 bytes, the merges, and the special tokens.
  uint32_t vocab_size = 32000;
  std::vector<std::string> special_tokens = {"<|endoftext|>"};
  uint64_t min_frequency = 2;
  bool nfc = true;
  int jobs = 1;
  bool progress = false;  // progress lines on stderr
};

// Piece counts of a corpus. Text is split around the special tokens, normalized and
// pre-tokenized exactly as Tokenizer::Encode does.
class PieceCounter {
 public:
  PieceCounter(std::vector<std::string> special_tokens, bool nfc);
  absl::Status Add(std::string_view text);
  void Merge(PieceCounter&& other);
  const absl::flat_hash_map<std::string, uint64_t>& counts() const { return counts_; }

 private:
  std::vector<std::string> special_tokens_;
  bool nfc_;
  absl::flat_hash_map<std::string, uint64_t> counts_;
};

// Learns merges from piece counts.
absl::StatusOr<Tokenizer> TrainBpe(const absl::flat_hash_map<std::string, uint64_t>& counts,
                                   const BpeTrainerOptions& options);

// Counts the pieces of the files (read as `qtrain tokenize` reads them) on options.jobs threads,
// then trains.
absl::StatusOr<Tokenizer> TrainBpeOnFiles(const std::vector<std::string>& paths,
                                          const BpeTrainerOptions& options);

// tokenizer_config.json for a trained tokenizer (Qwen2 style: eos and pad are the first
// special token, no bos).
std::string TrainedTokenizerConfig(const Tokenizer& tokenizer);

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_TRAINER_H_
