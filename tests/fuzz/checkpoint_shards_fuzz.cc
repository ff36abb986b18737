// Feeds arbitrary manifests to the checks of a checkpoint's optimizer shards
// (ValidateShardMetadata after ParseCheckpointManifest): they must accept or return DATA_LOSS,
// never crash or hang, and a sharded state they accept must list files of the manifest whose
// ranges tile [0, total) in rank order, as the resume that reads them relies on.
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>

#include "worker/train/checkpoint_store.h"
#include "worker/train/sharded_checkpoint.h"

namespace {

// The seeds describe a model of this many parameters after 4 updates.
constexpr int64_t kTotal = 40000;
constexpr int64_t kUpdates = 4;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 256 * 1024) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto info = qtrain::train::ParseCheckpointManifest(text, "fuzz/step-000000000004", 4);
  if (!info.ok()) return 0;
  const absl::Status valid = qtrain::train::ValidateShardMetadata(*info, kTotal, kUpdates);
  if (!valid.ok()) {
    if (valid.code() != absl::StatusCode::kDataLoss) __builtin_trap();
    return 0;
  }
  if (!qtrain::train::HasShardedOptimizer(*info)) return 0;
  std::set<std::string> listed;
  for (const auto& file : info->files) listed.insert(file.path);
  int64_t next = 0;
  for (const auto& shard : qtrain::train::OptimizerShardFiles(*info)) {
    if (shard.begin != next || shard.end < shard.begin) __builtin_trap();
    const std::string prefix = info->directory + "/";
    if (shard.path.compare(0, prefix.size(), prefix) != 0) __builtin_trap();
    if (listed.count(shard.path.substr(prefix.size())) == 0) __builtin_trap();
    next = shard.end;
  }
  if (next != kTotal) __builtin_trap();
  return 0;
}
