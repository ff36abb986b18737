// A TokenSource over a token-shard dataset (tokenizer/shard_format.h): the shards of the
// manifest, memory-mapped and validated on open, read as one stream in manifest order.
#ifndef QTRAIN_WORKER_TRAIN_SHARD_TOKEN_SOURCE_H_
#define QTRAIN_WORKER_TRAIN_SHARD_TOKEN_SOURCE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tokenizer/shard_format.h"
#include "worker/train/token_source.h"

namespace qtrain::train {

class ShardTokenSource : public TokenSource {
 public:
  // `manifest_path` is the dataset's manifest.json. When `tokenizer_sha256` is given, the
  // manifest must say the shards were made by that tokenizer.
  static absl::StatusOr<ShardTokenSource> Open(const std::string& manifest_path,
                                               std::optional<std::string> tokenizer_sha256 = {});

  int64_t size() const override { return total_; }
  absl::Status Read(int64_t begin, std::span<int32_t> out) const override;
  std::string fingerprint() const override { return manifest_sha256_; }
  const tokenizer::ShardManifest& manifest() const { return manifest_; }

 private:
  ShardTokenSource() = default;
  tokenizer::ShardManifest manifest_;
  std::string manifest_sha256_;
  std::vector<tokenizer::ShardReader> shards_;
  std::vector<int64_t> starts_;  // first stream position of each shard; back() = total
  int64_t total_ = 0;
};

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_SHARD_TOKEN_SOURCE_H_
