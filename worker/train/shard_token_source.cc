#include "worker/train/shard_token_source.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace qtrain::train {

absl::StatusOr<ShardTokenSource> ShardTokenSource::Open(const std::string& manifest_path,
                                                        const tokenizer::DatasetOptions& options) {
  ShardTokenSource source;
  QTRAIN_ASSIGN_OR_RETURN(source.data_, tokenizer::OpenDataset(manifest_path, options));
  for (const tokenizer::ShardReader& shard : source.data_.shards) {
    source.starts_.push_back(source.total_);
    // The manifest parser bounds the sum of the token counts by 2^63 - 1.
    source.total_ += static_cast<int64_t>(shard.header().num_tokens);
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
    const auto tokens = data_.shards[shard].tokens();
    const int64_t offset = begin + done - starts_[shard];
    const int64_t take =
        std::min<int64_t>(length - done, static_cast<int64_t>(tokens.size()) - offset);
    // Ids were checked against the vocabulary (at most 2^31) when the shard was opened.
    std::transform(tokens.begin() + offset, tokens.begin() + offset + take, out.begin() + done,
                   [](uint32_t id) { return static_cast<int32_t>(id); });
    done += take;
    ++shard;
  }
  return absl::OkStatus();
}

}  // namespace qtrain::train
