// Writes a token stream into shards of a fixed number of tokens (the last may be shorter) and,
// at Finish(), the dataset's manifest.json. Each shard is written atomically with its header,
// so a crash leaves no partial shard and no manifest.
#ifndef QTRAIN_TOKENIZER_SHARD_WRITER_H_
#define QTRAIN_TOKENIZER_SHARD_WRITER_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tokenizer/shard_format.h"

namespace qtrain::tokenizer {

class ShardWriter {
 public:
  struct Options {
    std::string dir;  // created if missing; must not hold a manifest
    uint64_t shard_tokens = uint64_t{1} << 24;
    // Copied into the manifest.
    std::string tokenizer_sha256;
    uint32_t vocab_size = 0;
    std::string eos_token;
    uint32_t eos_id = 0;
    std::vector<std::string> inputs;
  };

  static absl::StatusOr<ShardWriter> Create(Options options);

  // Ids must be < vocab_size (checked).
  absl::Status Append(std::span<const uint32_t> tokens);
  void CountDocuments(uint64_t n) { manifest_.num_documents += n; }
  // Writes the last shard and the manifest.
  absl::Status Finish();

  uint64_t num_tokens() const { return manifest_.num_tokens + buffer_.size(); }
  const ShardManifest& manifest() const { return manifest_; }

 private:
  ShardWriter() = default;
  absl::Status Flush();

  Options options_;
  ShardManifest manifest_;
  std::vector<uint32_t> buffer_;
};

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_SHARD_WRITER_H_
