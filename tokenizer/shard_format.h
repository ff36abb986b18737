// Token shards: the files `qtrain tokenize` writes and training reads.
//
// A shard file, all integers little-endian:
//
//   offset  size  field
//        0     8  magic "QTRNTOKS"
//        8     4  format version, 1
//       12     4  dtype, 1 = uint32 (the only one)
//       16     8  token count N
//       24     4  vocabulary size V (every token is < V)
//       28     4  reserved, 0
//       32    4N  the tokens, uint32 each
//
// and the file is exactly 32 + 4N bytes. A dataset is a directory with the shards and
// manifest.json (see ShardManifest and docs/tokenizer.md), which lists every shard with its token
// count and sha256, and the sha256 and vocabulary size of the tokenizer that made them.
#ifndef QTRAIN_TOKENIZER_SHARD_FORMAT_H_
#define QTRAIN_TOKENIZER_SHARD_FORMAT_H_

#include <bit>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace qtrain::tokenizer {

static_assert(std::endian::native == std::endian::little,
              "token shards are mapped directly; big-endian hosts are not supported");

inline constexpr char kShardMagic[8] = {'Q', 'T', 'R', 'N', 'T', 'O', 'K', 'S'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr uint32_t kShardDtypeUint32 = 1;
inline constexpr size_t kShardHeaderBytes = 32;
inline constexpr char kManifestName[] = "manifest.json";

// Limits of what a dataset may claim; anything past them is refused before it is used.
// Ids are handed to the model as int32, so the vocabulary holds at most 2^31 tokens.
inline constexpr uint32_t kMaxVocabSize = uint32_t{1} << 31;
// 2^32 tokens (a 16 GiB file) per shard; `tokenize --shard-tokens` has the same bound.
inline constexpr uint64_t kMaxShardTokens = uint64_t{1} << 32;
inline constexpr uint64_t kMaxShardFileBytes = kShardHeaderBytes + 4 * kMaxShardTokens;
inline constexpr size_t kMaxManifestBytes = size_t{64} << 20;
inline constexpr size_t kMaxManifestShards = size_t{1} << 20;
// Nesting of arrays and objects in manifest.json (the format itself needs 3).
inline constexpr int kMaxManifestDepth = 16;
inline constexpr size_t kMaxShardPathBytes = 1024;

struct ShardHeader {
  uint64_t num_tokens = 0;
  uint32_t vocab_size = 0;
};

// What a shard must match: its manifest entry and the dataset's vocabulary size. Unset fields
// are not checked.
struct ShardExpectation {
  std::optional<uint32_t> vocab_size;
  std::optional<uint64_t> num_tokens;
  std::optional<std::string> sha256;  // lowercase hex of the whole file
};

// The 32 header bytes.
std::string EncodeShardHeader(const ShardHeader& header);
// Parses and checks a header against the file size; the error names `source`.
absl::StatusOr<ShardHeader> DecodeShardHeader(std::string_view bytes, uint64_t file_size,
                                              std::string_view source);
// Checks a header against what the manifest says of the shard.
absl::Status CheckShardHeader(const ShardHeader& header, const ShardExpectation& expect,
                              std::string_view source);
// Checks the bytes of a whole shard whose header is `header`: the sha256 (when expected) and
// that every id is below the vocabulary size.
absl::Status CheckShardContents(std::string_view bytes, const ShardHeader& header,
                                const ShardExpectation& expect, std::string_view source);
// All three: a whole shard file held in memory.
absl::StatusOr<ShardHeader> ParseShard(std::string_view bytes, std::string_view source,
                                       const ShardExpectation& expect = {});

// A memory-mapped shard, validated on open: a regular file (FIFOs, devices and directories are
// refused without blocking) of at most kMaxShardFileBytes, its header, exact size, the
// expectations, and every id < vocab size. A file that passed these checks in this process
// (same path, device, inode, size and mtime, same expectations) is not read through again.
class ShardReader {
 public:
  static absl::StatusOr<ShardReader> Open(const std::string& path,
                                          const ShardExpectation& expect = {});
  ShardReader(ShardReader&& other) noexcept;
  ShardReader& operator=(ShardReader&& other) noexcept;
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;
  ~ShardReader();

  std::span<const uint32_t> tokens() const { return tokens_; }
  const ShardHeader& header() const { return header_; }

 private:
  ShardReader() = default;
  void Release();
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  ShardHeader header_;
  std::span<const uint32_t> tokens_;
};

struct ShardInfo {
  std::string file;  // relative path inside the dataset directory
  uint64_t num_tokens = 0;
  std::string sha256;
};

// manifest.json of a dataset directory.
struct ShardManifest {
  uint32_t version = 1;
  std::string tokenizer_sha256;
  uint32_t vocab_size = 0;
  std::string eos_token;
  uint32_t eos_id = 0;
  uint64_t num_tokens = 0;
  uint64_t num_documents = 0;
  std::vector<ShardInfo> shards;
  std::vector<std::string> inputs;

  std::string ToJson() const;
  // Parses and checks a manifest: every key present with the right type and range, sha256s of
  // 64 hex digits, shard paths relative and inside the dataset directory, no shard listed
  // twice, token counts that add up to num_tokens without overflow. Errors name `source` and
  // the key ("shards[2].sha256").
  static absl::StatusOr<ShardManifest> FromJson(std::string_view json,
                                                std::string_view source = kManifestName);
};

// Reads and parses `dir`/manifest.json (at most kMaxManifestBytes).
absl::StatusOr<ShardManifest> ReadShardManifest(const std::string& dir);

struct DatasetOptions {
  // When set, the manifest must say the shards were made by this tokenizer (its sha256) ...
  std::optional<std::string> tokenizer_sha256;
  // ... and with this vocabulary size.
  std::optional<uint32_t> vocab_size;
  // Compare every shard with its manifest sha256.
  bool check_sha256 = true;
  // When set, the manifest file's sha256 must be this one, the manifest a job was scheduled
  // with (FAILED_PRECONDITION otherwise).
  std::optional<std::string> manifest_sha256;
  // When set, only these shards (indices into the manifest's list, increasing) are resolved,
  // opened and verified; Dataset::shards holds them in this order.
  std::optional<std::vector<size_t>> only_shards;
};

// A dataset opened for reading: the manifest and every shard mapped and verified.
struct Dataset {
  ShardManifest manifest;
  std::string manifest_sha256;
  std::vector<ShardReader> shards;  // in manifest order
  // The manifest index of each of `shards` (all of them unless DatasetOptions::only_shards).
  std::vector<size_t> shard_indices;
};

// Opens the dataset whose manifest is `manifest_path` and checks every shard against it (see
// ShardReader and ShardManifest::FromJson). A shard must resolve, symlinks followed, to a file
// inside the manifest's directory, and no two entries may be the same file.
absl::StatusOr<Dataset> OpenDataset(const std::string& manifest_path,
                                    const DatasetOptions& options = {});

// OpenDataset on `dir`/manifest.json, for `qtrain tokenize` and tests.
absl::Status VerifyDataset(const std::string& dir, bool check_sha256,
                           std::optional<std::string> tokenizer_sha256 = {});

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_SHARD_FORMAT_H_
