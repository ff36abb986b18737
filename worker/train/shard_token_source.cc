#include "worker/train/shard_token_source.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace qtrain::train {
namespace {

// The assignment must describe the manifest it claims to come from (same sha256): a shard it
// lists with another path, size or position is a planning error, not a changed dataset.
absl::Status CheckAssignedShards(const tokenizer::ShardManifest& manifest,
                                 const std::vector<int64_t>& starts,
                                 const v1::DataAssignment& assignment,
                                 const std::string& manifest_path) {
  if (assignment.total_tokens() != starts.back()) {
    return absl::InvalidArgumentError(absl::StrCat("data assignment: total_tokens ",
                                                   assignment.total_tokens(), " but ",
                                                   manifest_path, " holds ", starts.back()));
  }
  for (const v1::AssignedShard& shard : assignment.shards()) {
    if (shard.index() < 0 || static_cast<size_t>(shard.index()) >= manifest.shards.size()) {
      return absl::InvalidArgumentError(absl::StrCat("data assignment: shard index ", shard.index(),
                                                     " is not among the ", manifest.shards.size(),
                                                     " shards of ", manifest_path));
    }
    const auto k = static_cast<size_t>(shard.index());
    const tokenizer::ShardInfo& info = manifest.shards[k];
    if (shard.path() != info.file || shard.tokens() != static_cast<int64_t>(info.num_tokens) ||
        shard.sha256() != info.sha256 || shard.first_token() != starts[k]) {
      return absl::InvalidArgumentError(
          absl::StrCat("data assignment: shard ", k, " (", shard.path(), ", ", shard.tokens(),
                       " tokens from position ", shard.first_token(), ") does not match shards[", k,
                       "] of ", manifest_path, " (", info.file, ", ", info.num_tokens,
                       " tokens from position ", starts[k], ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ShardTokenSource> ShardTokenSource::Open(const std::string& manifest_path,
                                                        const tokenizer::DatasetOptions& options) {
  ShardTokenSource source;
  QTRAIN_ASSIGN_OR_RETURN(source.data_, tokenizer::OpenDataset(manifest_path, options));
  for (const tokenizer::ShardInfo& shard : source.data_.manifest.shards) {
    source.starts_.push_back(source.total_);
    // The manifest parser bounds the sum of the token counts by 2^63 - 1.
    source.total_ += static_cast<int64_t>(shard.num_tokens);
  }
  source.starts_.push_back(source.total_);
  source.opened_.assign(source.data_.manifest.shards.size(), -1);
  for (size_t i = 0; i < source.data_.shard_indices.size(); ++i) {
    source.opened_[source.data_.shard_indices[i]] = static_cast<int64_t>(i);
  }
  return source;
}

absl::StatusOr<ShardTokenSource> ShardTokenSource::OpenAssigned(
    const std::string& manifest_path, const v1::DataAssignment& assignment,
    tokenizer::DatasetOptions options) {
  if (assignment.manifest_sha256().empty()) {
    return absl::InvalidArgumentError("data assignment: manifest_sha256 is empty");
  }
  options.manifest_sha256 = assignment.manifest_sha256();
  std::vector<size_t> indices;
  for (const v1::AssignedShard& shard : assignment.shards()) {
    if (shard.index() < 0 ||
        (!indices.empty() && static_cast<size_t>(shard.index()) <= indices.back())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "data assignment: shard indices must increase (", shard.index(), " follows ",
          indices.empty() ? std::string("nothing") : absl::StrCat(indices.back()), ")"));
    }
    indices.push_back(static_cast<size_t>(shard.index()));
  }
  // OpenDataset checks the manifest's sha256 before it opens any shard.
  options.only_shards = std::move(indices);
  QTRAIN_ASSIGN_OR_RETURN(ShardTokenSource source, Open(manifest_path, options));
  QTRAIN_RETURN_IF_ERROR(
      CheckAssignedShards(source.data_.manifest, source.starts_, assignment, manifest_path));
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
    const int64_t position = begin + done;
    const int64_t offset = position - starts_[shard];
    const int64_t take = std::min<int64_t>(length - done, starts_[shard + 1] - position);
    if (take > 0 && opened_[shard] < 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "token position ", position, " is in shard ", shard, " (",
          data_.manifest.shards[shard].file, "), which is not assigned to this worker"));
    }
    if (take > 0) {
      const auto tokens = data_.shards[static_cast<size_t>(opened_[shard])].tokens();
      // Ids were checked against the vocabulary (at most 2^31) when the shard was opened.
      std::transform(tokens.begin() + offset, tokens.begin() + offset + take, out.begin() + done,
                     [](uint32_t id) { return static_cast<int32_t>(id); });
      done += take;
    }
    ++shard;
  }
  return absl::OkStatus();
}

}  // namespace qtrain::train
