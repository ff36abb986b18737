#include "tokenizer/shard_format.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace qtrain::tokenizer {
namespace {

template <typename T>
void PutLe(std::string* out, T value) {
  for (size_t k = 0; k < sizeof(T); ++k)
    out->push_back(static_cast<char>((value >> (8 * k)) & 0xFF));
}

template <typename T>
T GetLe(const char* p) {
  T value = 0;
  for (size_t k = 0; k < sizeof(T); ++k) {
    value |= static_cast<T>(static_cast<unsigned char>(p[k])) << (8 * k);
  }
  return value;
}

}  // namespace

std::string EncodeShardHeader(const ShardHeader& header) {
  std::string out(kShardMagic, sizeof(kShardMagic));
  PutLe<uint32_t>(&out, kShardVersion);
  PutLe<uint32_t>(&out, kShardDtypeUint32);
  PutLe<uint64_t>(&out, header.num_tokens);
  PutLe<uint32_t>(&out, header.vocab_size);
  PutLe<uint32_t>(&out, 0);
  return out;
}

absl::StatusOr<ShardHeader> DecodeShardHeader(std::string_view bytes, uint64_t file_size,
                                              std::string_view source) {
  const std::string src(source);
  if (bytes.size() < kShardHeaderBytes) {
    return absl::DataLossError(
        absl::StrFormat("%s: %d bytes is too short for a token shard header (%d bytes)", src,
                        bytes.size(), kShardHeaderBytes));
  }
  if (std::memcmp(bytes.data(), kShardMagic, sizeof(kShardMagic)) != 0) {
    return absl::DataLossError(absl::StrCat(src, ": not a token shard (bad magic)"));
  }
  const uint32_t version = GetLe<uint32_t>(bytes.data() + 8);
  if (version != kShardVersion) {
    return absl::DataLossError(absl::StrFormat(
        "%s: unsupported token shard version %d (expected %d)", src, version, kShardVersion));
  }
  const uint32_t dtype = GetLe<uint32_t>(bytes.data() + 12);
  if (dtype != kShardDtypeUint32) {
    return absl::DataLossError(
        absl::StrFormat("%s: unsupported token dtype %d (only 1 = uint32)", src, dtype));
  }
  ShardHeader h;
  h.num_tokens = GetLe<uint64_t>(bytes.data() + 16);
  h.vocab_size = GetLe<uint32_t>(bytes.data() + 24);
  if (GetLe<uint32_t>(bytes.data() + 28) != 0) {
    return absl::DataLossError(absl::StrCat(src, ": reserved header field is not zero"));
  }
  if (h.num_tokens > (file_size - kShardHeaderBytes) / 4 ||
      kShardHeaderBytes + 4 * h.num_tokens != file_size) {
    return absl::DataLossError(
        absl::StrFormat("%s: header says %d tokens but the file has %d bytes (expected 32 + 4 "
                        "per token)",
                        src, h.num_tokens, file_size));
  }
  return h;
}

absl::StatusOr<ShardReader> ShardReader::Open(const std::string& path,
                                              std::optional<uint32_t> expected_vocab_size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return absl::Status(err == ENOENT ? absl::StatusCode::kNotFound : absl::StatusCode::kInternal,
                        absl::StrCat(path, ": ", std::strerror(err)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": fstat: ", std::strerror(err)));
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  ShardReader r;
  if (size > 0) {
    void* m = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat(path, ": mmap: ", std::strerror(err)));
    }
    r.mapping_ = m;
    r.mapping_size_ = size;
  }
  ::close(fd);
  const std::string_view bytes(static_cast<const char*>(r.mapping_), r.mapping_size_);
  QTRAIN_ASSIGN_OR_RETURN(r.header_, DecodeShardHeader(bytes, size, path));
  if (expected_vocab_size.has_value() && *expected_vocab_size != r.header_.vocab_size) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "%s: vocabulary size %d, expected %d", path, r.header_.vocab_size, *expected_vocab_size));
  }
  r.tokens_ = std::span<const uint32_t>(
      reinterpret_cast<const uint32_t*>(static_cast<const char*>(r.mapping_) + kShardHeaderBytes),
      r.header_.num_tokens);
  const uint32_t vocab = r.header_.vocab_size;
  for (size_t k = 0; k < r.tokens_.size(); ++k) {
    if (r.tokens_[k] >= vocab) {
      return absl::DataLossError(absl::StrFormat("%s: token %d is %d, not below vocab size %d",
                                                 path, k, r.tokens_[k], vocab));
    }
  }
  return r;
}

ShardReader::ShardReader(ShardReader&& other) noexcept { *this = std::move(other); }

ShardReader& ShardReader::operator=(ShardReader&& other) noexcept {
  if (this != &other) {
    Release();
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_size_ = std::exchange(other.mapping_size_, 0);
    header_ = other.header_;
    tokens_ = std::exchange(other.tokens_, {});
  }
  return *this;
}

ShardReader::~ShardReader() { Release(); }

void ShardReader::Release() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
  mapping_ = nullptr;
  mapping_size_ = 0;
  tokens_ = {};
}

std::string ShardManifest::ToJson() const {
  nlohmann::ordered_json j;
  j["format"] = "qtrain-token-shards";
  j["version"] = version;
  j["dtype"] = "uint32";
  j["tokenizer"] = {{"sha256", tokenizer_sha256},
                    {"vocab_size", vocab_size},
                    {"eos_token", eos_token},
                    {"eos_id", eos_id}};
  j["num_tokens"] = num_tokens;
  j["num_documents"] = num_documents;
  nlohmann::ordered_json shard_list = nlohmann::ordered_json::array();
  for (const ShardInfo& s : shards) {
    shard_list.push_back({{"file", s.file}, {"num_tokens", s.num_tokens}, {"sha256", s.sha256}});
  }
  j["shards"] = std::move(shard_list);
  j["inputs"] = inputs;
  return j.dump(2) + "\n";
}

absl::StatusOr<ShardManifest> ShardManifest::FromJson(std::string_view text) {
  ShardManifest m;
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    if (j.at("format").get<std::string>() != "qtrain-token-shards") {
      return absl::InvalidArgumentError("manifest: format is not qtrain-token-shards");
    }
    m.version = j.at("version").get<uint32_t>();
    if (m.version != 1) {
      return absl::InvalidArgumentError(absl::StrCat("manifest: unsupported version ", m.version));
    }
    if (j.at("dtype").get<std::string>() != "uint32") {
      return absl::InvalidArgumentError("manifest: dtype must be uint32");
    }
    const auto& t = j.at("tokenizer");
    m.tokenizer_sha256 = t.at("sha256").get<std::string>();
    m.vocab_size = t.at("vocab_size").get<uint32_t>();
    m.eos_token = t.at("eos_token").get<std::string>();
    m.eos_id = t.at("eos_id").get<uint32_t>();
    m.num_tokens = j.at("num_tokens").get<uint64_t>();
    m.num_documents = j.at("num_documents").get<uint64_t>();
    uint64_t sum = 0;
    for (const auto& s : j.at("shards")) {
      ShardInfo info;
      info.file = s.at("file").get<std::string>();
      if (info.file.empty() || info.file.find('/') != std::string::npos || info.file == "." ||
          info.file == "..") {
        return absl::InvalidArgumentError(
            absl::StrCat("manifest: shard file '", info.file, "' is not a plain file name"));
      }
      info.num_tokens = s.at("num_tokens").get<uint64_t>();
      info.sha256 = s.at("sha256").get<std::string>();
      sum += info.num_tokens;
      m.shards.push_back(std::move(info));
    }
    if (sum != m.num_tokens) {
      return absl::InvalidArgumentError(
          absl::StrFormat("manifest: num_tokens is %d but the shards hold %d", m.num_tokens, sum));
    }
    if (auto in = j.find("inputs"); in != j.end()) m.inputs = in->get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("manifest: ", e.what()));
  }
  return m;
}

absl::StatusOr<ShardManifest> ReadShardManifest(const std::string& dir) {
  const std::string path = absl::StrCat(dir, "/", kManifestName);
  QTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, size_t{1} << 30));
  absl::StatusOr<ShardManifest> m = ShardManifest::FromJson(text);
  if (!m.ok()) return Annotate(m.status(), path);
  return m;
}

absl::Status VerifyDataset(const std::string& dir, bool check_sha256,
                           std::optional<std::string> tokenizer_sha256) {
  QTRAIN_ASSIGN_OR_RETURN(ShardManifest m, ReadShardManifest(dir));
  if (tokenizer_sha256.has_value() && *tokenizer_sha256 != m.tokenizer_sha256) {
    return absl::FailedPreconditionError(
        absl::StrCat(dir, ": the shards were made by tokenizer sha256 ", m.tokenizer_sha256,
                     ", not by the given tokenizer (sha256 ", *tokenizer_sha256, ")"));
  }
  for (const ShardInfo& s : m.shards) {
    const std::string path = absl::StrCat(dir, "/", s.file);
    QTRAIN_ASSIGN_OR_RETURN(ShardReader r, ShardReader::Open(path, m.vocab_size));
    if (r.header().num_tokens != s.num_tokens) {
      return absl::DataLossError(absl::StrFormat("%s: %d tokens, the manifest says %d", path,
                                                 r.header().num_tokens, s.num_tokens));
    }
    if (check_sha256) {
      QTRAIN_ASSIGN_OR_RETURN(std::string sha, Sha256File(path));
      if (sha != s.sha256) {
        return absl::DataLossError(
            absl::StrCat(path, ": sha256 ", sha, ", the manifest says ", s.sha256));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace qtrain::tokenizer
