// The optimizer state of a data-parallel group in a checkpoint: one file per rank, the AdamW
// moments of its ZeRO-1 shard, and the manifest metadata that lists them.
//
//   optimizer-RRRRR-of-WWWWW.safetensors   rank R of W (Optimizer::Save)
//   metadata: "world_size", "shard_block_elements", "optimizer_updates",
//             "optimizer_shards": [{"rank", "file", "begin", "end"}, ...] tiling [0, total)
//
// Ranks > 0 stage their file under checkpoints/.shards-step-NNNNNNNNNNNN/ and rank 0 moves it
// into the checkpoint it commits. Checkpoints older than the sharded layout hold one
// optimizer.safetensors (a tensor per parameter) and no "world_size".
#ifndef QTRAIN_WORKER_TRAIN_SHARDED_CHECKPOINT_H_
#define QTRAIN_WORKER_TRAIN_SHARDED_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/comm/shard_layout.h"
#include "worker/train/checkpoint_store.h"
#include "worker/train/optimizer.h"

namespace qtrain::train {

// The single-file optimizer state of earlier checkpoints.
inline constexpr char kSingleFileOptimizer[] = "optimizer.safetensors";

// "optimizer-00001-of-00004.safetensors".
std::string OptimizerShardFileName(int rank, int world_size);
// Where ranks > 0 stage their shard of checkpoint `step`: <root>/.shards-step-NNNNNNNNNNNN.
std::string ShardStagingDirectory(const std::string& checkpoints_root, int64_t step);
// Removes every staging directory under `checkpoints_root` (left by an interrupted group).
absl::Status RemoveShardStaging(const std::string& checkpoints_root);

// Writes `optimizer`'s shard into the staging directory of `step` (created if needed).
absl::Status StageOptimizerShard(const Optimizer& optimizer, const std::string& checkpoints_root,
                                 int64_t step, int rank, int world_size);
// Moves the staged shards of ranks 1..W-1 into `directory` (a checkpoint being written) and
// removes the staging directory. FAILED_PRECONDITION naming a shard that is missing.
absl::Status AdoptStagedShards(const std::string& checkpoints_root, int64_t step, int world_size,
                               const std::string& directory);

// The metadata entries describing the shards of `layout` after `updates` AdamW updates.
nlohmann::json ShardMetadata(const comm::ShardLayout& layout, int64_t updates);

// Whether the checkpoint's optimizer state is sharded (its metadata has "world_size").
bool HasShardedOptimizer(const CheckpointInfo& info);

// Checks the optimizer part of a checkpoint's metadata against its files: the single file is
// listed (earlier checkpoints), or the shard list is well formed, names files the manifest
// lists, and its ranges tile [0, total); optimizer_updates == `updates`. DATA_LOSS naming the
// problem.
absl::Status ValidateShardMetadata(const CheckpointInfo& info, int64_t total, int64_t updates);

// The shard files of a validated sharded checkpoint, with their paths.
std::vector<OptimizerShardFile> OptimizerShardFiles(const CheckpointInfo& info);

// The files of the checkpoint that `rank` of `world_size` wrote: rank 0 everything but the other
// ranks' shards, rank r > 0 its shard.
std::vector<CheckpointFileEntry> FilesWrittenBy(const std::vector<CheckpointFileEntry>& files,
                                                int rank, int world_size);

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_SHARDED_CHECKPOINT_H_
