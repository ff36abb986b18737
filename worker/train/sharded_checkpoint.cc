#include "worker/train/sharded_checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;

constexpr char kStagingPrefix[] = ".shards-step-";

absl::Status FsError(const std::error_code& ec, absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", ec.message()));
}

// metadata[key] as a non-negative integer.
absl::StatusOr<int64_t> Count(const nlohmann::json& object, const char* key,
                              absl::string_view where) {
  const auto it = object.find(key);
  if (it == object.end() || !it->is_number_integer() || it->get<int64_t>() < 0 ||
      (it->is_number_unsigned() && it->get<uint64_t>() > uint64_t{INT64_MAX})) {
    return absl::DataLossError(absl::StrCat(where, key, " is missing or not a count"));
  }
  return it->get<int64_t>();
}

bool Listed(const CheckpointInfo& info, const std::string& file) {
  return std::any_of(info.files.begin(), info.files.end(),
                     [&](const CheckpointFileEntry& e) { return e.path == file; });
}

}  // namespace

std::string OptimizerShardFileName(int rank, int world_size) {
  return absl::StrFormat("optimizer-%05d-of-%05d.safetensors", rank, world_size);
}

std::string ShardStagingDirectory(const std::string& checkpoints_root, int64_t step) {
  return absl::StrCat(checkpoints_root, "/", kStagingPrefix, absl::StrFormat("%012d", step));
}

absl::Status RemoveShardStaging(const std::string& checkpoints_root) {
  std::error_code ec;
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(checkpoints_root, ec)) {
    if (absl::StartsWith(entry.path().filename().string(), kStagingPrefix)) {
      stale.push_back(entry.path());
    }
  }
  if (ec) return FsError(ec, "cannot list", checkpoints_root);
  for (const fs::path& path : stale) {
    fs::remove_all(path, ec);
    if (ec) return FsError(ec, "cannot remove", path.string());
  }
  return absl::OkStatus();
}

absl::Status StageOptimizerShard(const Optimizer& optimizer, const std::string& checkpoints_root,
                                 int64_t step, int rank, int world_size) {
  const std::string dir = ShardStagingDirectory(checkpoints_root, step);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return FsError(ec, "cannot create", dir);
  // Save writes a temporary file, fsyncs and renames it.
  QTRAIN_RETURN_IF_ERROR(optimizer.Save(dir + "/" + OptimizerShardFileName(rank, world_size)));
  return SyncDirectory(dir);
}

absl::Status AdoptStagedShards(const std::string& checkpoints_root, int64_t step, int world_size,
                               const std::string& directory) {
  const std::string staging = ShardStagingDirectory(checkpoints_root, step);
  for (int rank = 1; rank < world_size; ++rank) {
    const std::string name = OptimizerShardFileName(rank, world_size);
    std::error_code ec;
    fs::rename(staging + "/" + name, directory + "/" + name, ec);
    if (ec) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint ", step, ": the optimizer shard of rank ", rank, " (", staging,
                       "/", name, ") cannot be moved into the checkpoint: ", ec.message()));
    }
  }
  std::error_code ec;
  fs::remove_all(staging, ec);
  if (ec) return FsError(ec, "cannot remove", staging);
  return absl::OkStatus();
}

nlohmann::json ShardMetadata(const comm::ShardLayout& layout, int64_t updates) {
  nlohmann::json shards = nlohmann::json::array();
  for (int rank = 0; rank < layout.world_size(); ++rank) {
    shards.push_back({{"rank", rank},
                      {"file", OptimizerShardFileName(rank, layout.world_size())},
                      {"begin", layout.ShardBegin(rank)},
                      {"end", layout.ShardEnd(rank)}});
  }
  return {{"world_size", layout.world_size()},
          {"shard_block_elements", layout.block_elements()},
          {"optimizer_updates", updates},
          {"optimizer_shards", std::move(shards)}};
}

bool HasShardedOptimizer(const CheckpointInfo& info) {
  return info.metadata.contains("world_size");
}

absl::Status ValidateShardMetadata(const CheckpointInfo& info, int64_t total, int64_t updates) {
  const nlohmann::json& m = info.metadata;
  if (!HasShardedOptimizer(info)) {
    if (!Listed(info, kSingleFileOptimizer)) {
      return absl::DataLossError(
          absl::StrCat("manifest does not list ", kSingleFileOptimizer,
                       " (and its metadata has no world_size for a sharded optimizer state)"));
    }
    return absl::OkStatus();
  }
  QTRAIN_ASSIGN_OR_RETURN(const int64_t world_size, Count(m, "world_size", "metadata."));
  QTRAIN_ASSIGN_OR_RETURN(const int64_t block, Count(m, "shard_block_elements", "metadata."));
  QTRAIN_ASSIGN_OR_RETURN(const int64_t recorded, Count(m, "optimizer_updates", "metadata."));
  if (world_size < 1 || block < 1) {
    return absl::DataLossError(absl::StrCat("metadata.world_size ", world_size,
                                            " and shard_block_elements ", block,
                                            " must be positive"));
  }
  if (recorded != updates) {
    return absl::DataLossError(absl::StrCat("metadata.optimizer_updates ", recorded,
                                            " is not the trainer state's ", updates,
                                            " (steps less skipped steps)"));
  }
  const auto shards_it = m.find("optimizer_shards");
  if (shards_it == m.end() || !shards_it->is_array() ||
      static_cast<int64_t>(shards_it->size()) != world_size) {
    return absl::DataLossError(absl::StrCat("metadata.optimizer_shards is not a list of ",
                                            world_size, " shards (metadata.world_size)"));
  }
  int64_t next = 0;
  std::vector<std::string> seen;
  for (int64_t i = 0; i < world_size; ++i) {
    const nlohmann::json& shard = (*shards_it)[static_cast<size_t>(i)];
    const std::string where = absl::StrCat("metadata.optimizer_shards[", i, "].");
    if (!shard.is_object()) return absl::DataLossError(absl::StrCat(where, " is not an object"));
    QTRAIN_ASSIGN_OR_RETURN(const int64_t rank, Count(shard, "rank", where));
    QTRAIN_ASSIGN_OR_RETURN(const int64_t begin, Count(shard, "begin", where));
    QTRAIN_ASSIGN_OR_RETURN(const int64_t end, Count(shard, "end", where));
    const auto file_it = shard.find("file");
    if (rank != i) {
      return absl::DataLossError(absl::StrCat(where, "rank is ", rank, ", not ", i));
    }
    if (file_it == shard.end() || !file_it->is_string()) {
      return absl::DataLossError(absl::StrCat(where, "file is missing or not a string"));
    }
    const std::string& file = file_it->get_ref<const std::string&>();
    if (!Listed(info, file)) {
      return absl::DataLossError(
          absl::StrCat(where, "file ", file, " is not among the manifest's files"));
    }
    if (std::find(seen.begin(), seen.end(), file) != seen.end()) {
      return absl::DataLossError(absl::StrCat(where, "file ", file, " is listed twice"));
    }
    seen.push_back(file);
    if (begin != next || end < begin || end > total) {
      return absl::DataLossError(absl::StrCat(where, "range [", begin, ", ", end,
                                              ") does not continue the shards at ", next,
                                              " within the model's ", total, " parameters"));
    }
    next = end;
  }
  if (next != total) {
    return absl::DataLossError(absl::StrCat("metadata.optimizer_shards cover [0, ", next,
                                            ") of the model's ", total, " parameters"));
  }
  return absl::OkStatus();
}

std::vector<OptimizerShardFile> OptimizerShardFiles(const CheckpointInfo& info) {
  std::vector<OptimizerShardFile> files;
  for (const nlohmann::json& shard : info.metadata["optimizer_shards"]) {
    files.push_back({info.directory + "/" + shard["file"].get<std::string>(),
                     shard["begin"].get<int64_t>(), shard["end"].get<int64_t>()});
  }
  return files;
}

std::vector<CheckpointFileEntry> FilesWrittenBy(const std::vector<CheckpointFileEntry>& files,
                                                int rank, int world_size) {
  std::vector<CheckpointFileEntry> mine;
  for (const CheckpointFileEntry& entry : files) {
    bool other_shard = false;
    for (int r = 0; r < world_size; ++r) {
      if (r != rank && entry.path == OptimizerShardFileName(r, world_size)) other_shard = true;
    }
    const bool own_shard = entry.path == OptimizerShardFileName(rank, world_size);
    if (rank == 0 ? !other_shard : own_shard) mine.push_back(entry);
  }
  return mine;
}

}  // namespace qtrain::train
