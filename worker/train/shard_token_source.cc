#include "worker/train/shard_token_source.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace qtrain::train {

absl::StatusOr<ShardTokenSource> ShardTokenSource::Open(
    const std::string& manifest_path, std::optional<std::string> tokenizer_sha256) {
  QTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(manifest_path, 64 << 20));
  ShardTokenSource source;
  QTRAIN_ASSIGN_OR_RETURN(source.manifest_, tokenizer::ShardManifest::FromJson(text));
  source.manifest_sha256_ = Sha256Hex(text);
  if (tokenizer_sha256 && *tokenizer_sha256 != source.manifest_.tokenizer_sha256) {
    return absl::FailedPreconditionError(absl::StrCat(
        manifest_path, ": the shards were made by another tokenizer (sha256 ",
        source.manifest_.tokenizer_sha256, ", the job's tokenizer is ", *tokenizer_sha256, ")"));
  }
  const std::string dir = std::filesystem::path(manifest_path).parent_path().string();
  for (const tokenizer::ShardInfo& info : source.manifest_.shards) {
    const std::string path = (dir.empty() ? "" : dir + "/") + info.file;
    QTRAIN_ASSIGN_OR_RETURN(tokenizer::ShardReader reader,
                            tokenizer::ShardReader::Open(path, source.manifest_.vocab_size));
    if (reader.header().num_tokens != info.num_tokens) {
      return absl::DataLossError(absl::StrCat(path, " holds ", reader.header().num_tokens,
                                              " tokens, the manifest says ", info.num_tokens));
    }
    source.starts_.push_back(source.total_);
    source.total_ += static_cast<int64_t>(info.num_tokens);
    source.shards_.push_back(std::move(reader));
  }
  source.starts_.push_back(source.total_);
  return source;
}

absl::Status ShardTokenSource::Read(int64_t begin, std::span<int32_t> out) const {
  const int64_t length = static_cast<int64_t>(out.size());
  if (begin < 0 || begin > total_ - length) {
    return absl::OutOfRangeError(absl::StrCat("tokens [", begin, ", ", begin + length,
                                              ") are outside the ", total_, "-token dataset"));
  }
  size_t shard = static_cast<size_t>(std::upper_bound(starts_.begin(), starts_.end(), begin) -
                                     starts_.begin() - 1);
  int64_t done = 0;
  while (done < length) {
    const auto tokens = shards_[shard].tokens();
    const int64_t offset = begin + done - starts_[shard];
    const int64_t take =
        std::min<int64_t>(length - done, static_cast<int64_t>(tokens.size()) - offset);
    // Ids were checked against the vocabulary (< 2^31) when the shard was opened.
    std::transform(tokens.begin() + offset, tokens.begin() + offset + take, out.begin() + done,
                   [](uint32_t id) { return static_cast<int32_t>(id); });
    done += take;
    ++shard;
  }
  return absl::OkStatus();
}

}  // namespace qtrain::train
