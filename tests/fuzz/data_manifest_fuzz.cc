// Feeds arbitrary bytes to the dataset parsers, as manifest.json text and as a token shard's
// bytes: each must accept or refuse with a status, never crash or hang. A manifest it accepts
// keeps the parser's promises (ranges, sha256s, paths inside the directory, counts that add
// up) and serializes back to itself; a shard it accepts is 32 + 4N bytes of ids below its
// vocabulary size.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <string_view>

#include "tokenizer/shard_format.h"

namespace {

using qtrain::tokenizer::ShardManifest;

bool IsLowerHexSha256(const std::string& s) {
  if (s.size() != 64) return false;
  for (const char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool PathStaysInside(const std::string& file) {
  if (file.empty() || file.front() == '/' || file.find('\0') != std::string::npos) return false;
  size_t start = 0;
  while (start <= file.size()) {
    const size_t end = std::min(file.find('/', start), file.size());
    const std::string_view part(file.data() + start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  return true;
}

void CheckManifest(std::string_view text) {
  absl::StatusOr<ShardManifest> m = ShardManifest::FromJson(text, "fuzz/manifest.json");
  if (!m.ok()) {
    if (m.status().code() != absl::StatusCode::kInvalidArgument) __builtin_trap();
    return;
  }
  if (m->vocab_size == 0 || m->vocab_size > qtrain::tokenizer::kMaxVocabSize) __builtin_trap();
  if (m->eos_id >= m->vocab_size) __builtin_trap();
  if (!IsLowerHexSha256(m->tokenizer_sha256)) __builtin_trap();
  if (m->shards.size() > qtrain::tokenizer::kMaxManifestShards) __builtin_trap();
  uint64_t sum = 0;
  std::set<std::string> files;
  for (const qtrain::tokenizer::ShardInfo& s : m->shards) {
    if (s.num_tokens > qtrain::tokenizer::kMaxShardTokens) __builtin_trap();
    if (!IsLowerHexSha256(s.sha256) || !PathStaysInside(s.file)) __builtin_trap();
    if (!files.insert(s.file).second) __builtin_trap();
    sum += s.num_tokens;  // <= 2^20 shards of <= 2^32 tokens: no wrap
  }
  if (sum != m->num_tokens) __builtin_trap();
  const std::string json = m->ToJson();
  absl::StatusOr<ShardManifest> again = ShardManifest::FromJson(json);
  if (!again.ok() || again->ToJson() != json) __builtin_trap();
}

void CheckShard(std::string_view bytes) {
  absl::StatusOr<qtrain::tokenizer::ShardHeader> h =
      qtrain::tokenizer::ParseShard(bytes, "fuzz.bin");
  if (!h.ok()) {
    if (h.status().code() != absl::StatusCode::kDataLoss) __builtin_trap();
    return;
  }
  if (bytes.size() != qtrain::tokenizer::kShardHeaderBytes + 4 * h->num_tokens) __builtin_trap();
  for (uint64_t k = 0; k < h->num_tokens; ++k) {
    uint32_t id;
    std::memcpy(&id, bytes.data() + qtrain::tokenizer::kShardHeaderBytes + 4 * k, sizeof(id));
    if (id >= h->vocab_size) __builtin_trap();
  }
  // What the header says is what a manifest would have to say.
  if (!qtrain::tokenizer::ParseShard(bytes, "fuzz.bin",
                                     {.vocab_size = h->vocab_size, .num_tokens = h->num_tokens})
           .ok()) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > (1 << 20)) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  CheckManifest(bytes);
  CheckShard(bytes);
  return 0;
}
