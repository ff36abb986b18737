#include "tokenizer/shard_writer.h"

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace qtrain::tokenizer {

absl::StatusOr<ShardWriter> ShardWriter::Create(Options options) {
  // The same bounds the reader enforces: whatever is written can be read back.
  if (options.shard_tokens == 0 || options.shard_tokens > kMaxShardTokens) {
    return absl::InvalidArgumentError(absl::StrFormat("shard size %d tokens is outside 1..%d",
                                                      options.shard_tokens, kMaxShardTokens));
  }
  if (options.vocab_size == 0 || options.vocab_size > kMaxVocabSize) {
    return absl::InvalidArgumentError(
        absl::StrFormat("vocabulary size %d is outside 1..%d", options.vocab_size, kMaxVocabSize));
  }
  if (options.eos_id >= options.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrFormat("end-of-text id %d is not below the vocabulary size %d", options.eos_id,
                        options.vocab_size));
  }
  const std::string& sha = options.tokenizer_sha256;
  if (sha.size() != 64 || !std::all_of(sha.begin(), sha.end(), [](char c) {
        return absl::ascii_isdigit(static_cast<unsigned char>(c)) || (c >= 'a' && c <= 'f');
      })) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer sha256 '", absl::CEscape(sha), "' is not 64 lowercase hex digits"));
  }
  std::error_code ec;
  std::filesystem::create_directories(options.dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("creating ", options.dir, ": ", ec.message()));
  }
  const std::string manifest_path = absl::StrCat(options.dir, "/", kManifestName);
  if (std::filesystem::exists(manifest_path, ec)) {
    return absl::AlreadyExistsError(absl::StrCat(
        manifest_path, " exists: the directory already holds a dataset; choose another one"));
  }
  ShardWriter w;
  w.options_ = std::move(options);
  w.manifest_.tokenizer_sha256 = w.options_.tokenizer_sha256;
  w.manifest_.vocab_size = w.options_.vocab_size;
  w.manifest_.eos_token = w.options_.eos_token;
  w.manifest_.eos_id = w.options_.eos_id;
  w.manifest_.inputs = w.options_.inputs;
  return w;
}

absl::Status ShardWriter::Append(std::span<const uint32_t> tokens) {
  for (size_t k = 0; k < tokens.size(); ++k) {
    if (tokens[k] >= options_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "token %d is not below the vocabulary size %d", tokens[k], options_.vocab_size));
    }
  }
  while (!tokens.empty()) {
    const size_t room = options_.shard_tokens - buffer_.size();
    const size_t take = std::min(room, tokens.size());
    buffer_.insert(buffer_.end(), tokens.begin(), tokens.begin() + static_cast<ptrdiff_t>(take));
    tokens = tokens.subspan(take);
    if (buffer_.size() == options_.shard_tokens) QTRAIN_RETURN_IF_ERROR(Flush());
  }
  return absl::OkStatus();
}

absl::Status ShardWriter::Flush() {
  if (buffer_.empty()) return absl::OkStatus();
  if (manifest_.shards.size() >= kMaxManifestShards) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("more than %d shards of %d tokens: use larger shards", kMaxManifestShards,
                        options_.shard_tokens));
  }
  ShardInfo info;
  info.file = absl::StrFormat("shard-%06d.bin", manifest_.shards.size());
  info.num_tokens = buffer_.size();
  const std::string path = absl::StrCat(options_.dir, "/", info.file);
  ShardHeader header;
  header.num_tokens = buffer_.size();
  header.vocab_size = options_.vocab_size;
  const std::string head = EncodeShardHeader(header);
  Sha256 sha;
  sha.Update(head);
  sha.Update(buffer_.data(), buffer_.size() * sizeof(uint32_t));
  info.sha256 = sha.FinishHex();
  QTRAIN_ASSIGN_OR_RETURN(AtomicFileWriter file, AtomicFileWriter::Open(path));
  QTRAIN_RETURN_IF_ERROR(file.Append(head));
  QTRAIN_RETURN_IF_ERROR(file.Append(buffer_.data(), buffer_.size() * sizeof(uint32_t)));
  QTRAIN_RETURN_IF_ERROR(file.Commit());
  manifest_.num_tokens += buffer_.size();
  manifest_.shards.push_back(std::move(info));
  buffer_.clear();
  return absl::OkStatus();
}

absl::Status ShardWriter::Finish() {
  QTRAIN_RETURN_IF_ERROR(Flush());
  return WriteFileAtomically(absl::StrCat(options_.dir, "/", kManifestName), manifest_.ToJson());
}

}  // namespace qtrain::tokenizer
