// Token shards: the files `qtrain tokenize` writes and training reads (DESIGN.md section 5).
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

struct ShardHeader {
  uint64_t num_tokens = 0;
  uint32_t vocab_size = 0;
};

// The 32 header bytes.
std::string EncodeShardHeader(const ShardHeader& header);
// Parses and checks a header against the file size; the error names `source`.
absl::StatusOr<ShardHeader> DecodeShardHeader(std::string_view bytes, uint64_t file_size,
                                              std::string_view source);

// A memory-mapped shard, validated on open: header, exact size, and every id < vocab size.
class ShardReader {
 public:
  // `expected_vocab_size`, when set, must equal the header's.
  static absl::StatusOr<ShardReader> Open(const std::string& path,
                                          std::optional<uint32_t> expected_vocab_size = {});
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
  std::string file;  // name inside the dataset directory
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
  static absl::StatusOr<ShardManifest> FromJson(std::string_view json);
};

absl::StatusOr<ShardManifest> ReadShardManifest(const std::string& dir);

// Opens every shard of the dataset in `dir` and checks it against the manifest (token count,
// vocabulary size, ids; and the sha256 when `check_sha256`). `tokenizer_sha256`, when set, must
// equal the manifest's: the shards were made by that tokenizer.
absl::Status VerifyDataset(const std::string& dir, bool check_sha256,
                           std::optional<std::string> tokenizer_sha256 = {});

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_SHARD_FORMAT_H_
