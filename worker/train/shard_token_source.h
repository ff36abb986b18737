// A TokenSource over a token-shard dataset (tokenizer/shard_format.h): the shards of the
// manifest, memory-mapped and verified on open (tokenizer::OpenDataset: manifest keys, header,
// size, sha256, every id below the vocabulary size), read as one stream in manifest order.
#ifndef QTRAIN_WORKER_TRAIN_SHARD_TOKEN_SOURCE_H_
#define QTRAIN_WORKER_TRAIN_SHARD_TOKEN_SOURCE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "qtrain/v1/worker.pb.h"
#include "tokenizer/shard_format.h"
#include "worker/train/token_source.h"

namespace qtrain::train {

class ShardTokenSource : public TokenSource {
 public:
  // `manifest_path` is the dataset's manifest.json. `options` names the tokenizer the shards
  // must have been made by (its sha256 and vocabulary size); sha256s are checked by default.
  static absl::StatusOr<ShardTokenSource> Open(const std::string& manifest_path,
                                               const tokenizer::DatasetOptions& options = {});

  // Opens only the shards of `assignment` (shard_assignment.h): the manifest must be the one
  // the assignment was planned from (its sha256; FAILED_PRECONDITION "the dataset manifest
  // changed since the job was scheduled" otherwise) and agree with every assigned shard. The
  // source has the size and fingerprint of the whole dataset; a Read that touches a shard
  // outside the assignment is FAILED_PRECONDITION naming the position and the shard.
  static absl::StatusOr<ShardTokenSource> OpenAssigned(const std::string& manifest_path,
                                                       const v1::DataAssignment& assignment,
                                                       tokenizer::DatasetOptions options = {});

  int64_t size() const override { return total_; }
  absl::Status Read(int64_t begin, std::span<int32_t> out) const override;
  std::string fingerprint() const override { return data_.manifest_sha256; }
  const tokenizer::ShardManifest& manifest() const { return data_.manifest; }

 private:
  ShardTokenSource() = default;
  tokenizer::Dataset data_;
  // First stream position of each manifest shard; back() = total.
  std::vector<int64_t> starts_;
  // Index into data_.shards of each manifest shard, -1 for one that is not open.
  std::vector<int64_t> opened_;
  int64_t total_ = 0;
};

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_SHARD_TOKEN_SOURCE_H_
