// Feeds arbitrary text to the checkpoint-manifest parser (ParseCheckpointManifest): it must
// accept or return DATA_LOSS, never crash or hang, and whatever it accepts must satisfy the
// checks that Verify relies on before it opens any file.
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>

#include "worker/train/checkpoint_store.h"

namespace {

bool IsLowerHex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 256 * 1024) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  // The seeds are manifests of step 4.
  auto info = qtrain::train::ParseCheckpointManifest(text, "fuzz/step-000000000004", 4);
  if (!info.ok()) {
    if (info.status().code() != absl::StatusCode::kDataLoss) __builtin_trap();
    return 0;
  }
  if (info->step != 4 || !info->metadata.is_object()) __builtin_trap();
  std::set<std::string> seen;
  for (const auto& file : info->files) {
    if (file.path.empty() || file.path == "." || file.path == ".." ||
        file.path.find('/') != std::string::npos || file.path.find('\0') != std::string::npos ||
        file.path == qtrain::train::CheckpointStore::kManifestName) {
      __builtin_trap();
    }
    if (!IsLowerHex64(file.sha256) || !seen.insert(file.path).second) __builtin_trap();
  }
  return 0;
}
