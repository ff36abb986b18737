// A byte-level BPE tokenizer with Qwen2's exact semantics (see docs/tokenizer.md):
//   added tokens are matched first in the raw text and never split; the text between them is
//   NFC-normalized (when configured), split by the Qwen2 pre-tokenizer, and each piece is
//   BPE-encoded over its UTF-8 bytes.
//
// A Tokenizer is immutable after loading and safe to use from many threads at once. Each thread
// keeps a cache of recently encoded pieces (cleared when the thread switches tokenizers).
#ifndef QTRAIN_TOKENIZER_TOKENIZER_H_
#define QTRAIN_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tokenizer/added_tokens.h"
#include "tokenizer/bpe_model.h"

namespace qtrain::tokenizer {

// The largest tokenizer.json FromFile reads (Qwen2's is about 7 MB).
inline constexpr size_t kMaxTokenizerFileBytes = size_t{256} << 20;

class Tokenizer {
 public:
  struct Options {
    bool nfc = true;  // normalizer: NFC (true) or none (false)
  };

  // `added` ids must not collide with BPE ids of other tokens (an added token may repeat a
  // vocabulary entry with the same id).
  static absl::StatusOr<Tokenizer> Create(BpeModel model, std::vector<AddedToken> added,
                                          Options options);
  // Loads a Hugging Face tokenizer.json (tokenizer_json.cc).
  static absl::StatusOr<Tokenizer> FromJson(std::string_view json);
  // Reads a tokenizer.json of at most kMaxTokenizerFileBytes; a FIFO, device or directory is
  // refused without blocking (see OpenRegularFile).
  static absl::StatusOr<Tokenizer> FromFile(const std::string& path);
  // Serializes to tokenizer.json in the layout of Qwen2's file (tokenizer_json.cc).
  std::string ToJson() const;

  Tokenizer(Tokenizer&&) noexcept = default;
  Tokenizer& operator=(Tokenizer&&) noexcept = default;

  // Appends the ids of `text` (valid UTF-8, else INVALID_ARGUMENT naming the byte offset; ids
  // already appended for the text before the bad byte are left in place).
  absl::Status Encode(std::string_view text, std::vector<uint32_t>* ids) const;
  absl::StatusOr<std::vector<uint32_t>> Encode(std::string_view text) const;

  // Streams the ids of `text` to `sink`, in order, in spans of about kStreamIds ids (one long
  // piece comes whole), so that memory does not grow with the text. Stops at the first error of
  // the text (as Encode; ids before it may have been passed on) or of the sink.
  using IdSink = absl::FunctionRef<absl::Status(std::span<const uint32_t>)>;
  static constexpr size_t kStreamIds = size_t{1} << 16;
  absl::Status EncodeTo(std::string_view text, IdSink sink) const;

  // Decodes ids to text. Bytes are joined before conversion, so a character split across
  // tokens comes back whole; ill-formed UTF-8 (a cut in the middle of a character) becomes
  // U+FFFD as with errors="replace". Unknown ids are INVALID_ARGUMENT.
  absl::StatusOr<std::string> Decode(std::span<const uint32_t> ids,
                                     bool skip_special_tokens = false) const;
  // The raw bytes of one token (for streaming decoders); INVALID_ARGUMENT for unknown ids.
  absl::StatusOr<std::string> TokenBytes(uint32_t id) const;

  // One past the largest id (the size of an embedding table for this tokenizer).
  uint32_t vocab_size() const { return vocab_size_; }
  std::optional<uint32_t> TokenToId(std::string_view token) const;
  // The tokenizer.json spelling of `id` (byte-level string or added token content).
  std::optional<std::string> IdToToken(uint32_t id) const;
  bool IsSpecial(uint32_t id) const;
  const BpeModel& model() const { return model_; }
  const std::vector<AddedToken>& added_tokens() const { return added_; }
  const Options& options() const { return options_; }

 private:
  Tokenizer() = default;
  // Hands the ids gathered so far on (and clears them) once there are kStreamIds of them;
  // false stops the encoding.
  using Spill = absl::FunctionRef<bool(std::vector<uint32_t>*)>;
  absl::Status EncodeImpl(std::string_view text, std::vector<uint32_t>* ids,
                          const Spill* spill) const;
  absl::Status EncodeSegment(std::string_view text, std::vector<uint32_t>* ids,
                             const Spill* spill) const;

  BpeModel model_;
  std::vector<AddedToken> added_;
  AddedTokenMatcher matcher_;
  Options options_;
  uint32_t vocab_size_ = 0;
  std::vector<int32_t> added_index_;  // by id: index into added_, or -1
  std::vector<std::string> decode_bytes_;
  uint64_t instance_id_ = 0;  // keys the per-thread piece cache
};

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_TOKENIZER_H_
