#include "tokenizer/shard_format.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/checked_math.h"
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
  if (h.vocab_size == 0 || h.vocab_size > kMaxVocabSize) {
    return absl::DataLossError(absl::StrFormat("%s: header vocabulary size %d is outside 1..%d",
                                               src, h.vocab_size, kMaxVocabSize));
  }
  if (h.num_tokens > kMaxShardTokens) {
    return absl::DataLossError(
        absl::StrFormat("%s: header says %d tokens, more than the %d a "
                        "shard may hold",
                        src, h.num_tokens, kMaxShardTokens));
  }
  // Cannot overflow: num_tokens <= 2^32.
  if (kShardHeaderBytes + 4 * h.num_tokens != file_size) {
    return absl::DataLossError(
        absl::StrFormat("%s: header says %d tokens but the file has %d bytes (expected 32 + 4 "
                        "per token)",
                        src, h.num_tokens, file_size));
  }
  return h;
}

absl::Status CheckShardHeader(const ShardHeader& header, const ShardExpectation& expect,
                              std::string_view source) {
  if (expect.vocab_size.has_value() && *expect.vocab_size != header.vocab_size) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: vocabulary size %d in the header, the manifest says %d", source,
                        header.vocab_size, *expect.vocab_size));
  }
  if (expect.num_tokens.has_value() && *expect.num_tokens != header.num_tokens) {
    return absl::DataLossError(
        absl::StrFormat("%s: the header says %d tokens, the manifest says %d", source,
                        header.num_tokens, *expect.num_tokens));
  }
  return absl::OkStatus();
}

absl::Status CheckShardContents(std::string_view bytes, const ShardHeader& header,
                                const ShardExpectation& expect, std::string_view source) {
  const char* ids = bytes.data() + kShardHeaderBytes;
  for (uint64_t k = 0; k < header.num_tokens; ++k) {
    uint32_t id;
    std::memcpy(&id, ids + 4 * k, sizeof(id));  // `bytes` need not be aligned
    if (id >= header.vocab_size) {
      return absl::DataLossError(absl::StrFormat("%s: token %d is %d, not below vocab size %d",
                                                 source, k, id, header.vocab_size));
    }
  }
  if (expect.sha256.has_value()) {
    const std::string sha = Sha256Hex(bytes);
    if (sha != *expect.sha256) {
      return absl::DataLossError(absl::StrCat(std::string(source), ": sha256 is ", sha,
                                              " but the manifest says ", *expect.sha256,
                                              ": the shard changed after it was written"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ShardHeader> ParseShard(std::string_view bytes, std::string_view source,
                                       const ShardExpectation& expect) {
  QTRAIN_ASSIGN_OR_RETURN(ShardHeader header, DecodeShardHeader(bytes, bytes.size(), source));
  QTRAIN_RETURN_IF_ERROR(CheckShardHeader(header, expect, source));
  QTRAIN_RETURN_IF_ERROR(CheckShardContents(bytes, header, expect, source));
  return header;
}

namespace {

// Shards whose contents passed CheckShardContents in this process, keyed by what identifies
// the file's version and by the expectations checked, so a dataset opened again is not re-read.
class VerifiedShards {
 public:
  static std::string Key(const std::string& path, const struct stat& st,
                         const ShardExpectation& expect, uint32_t vocab_size) {
    return absl::StrCat(path, "|", st.st_dev, "|", st.st_ino, "|", st.st_size, "|",
                        st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec, "|", vocab_size, "|",
                        expect.sha256.value_or("-"));
  }
  static bool Contains(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex());
    return keys().contains(key);
  }
  static void Insert(std::string key) {
    std::lock_guard<std::mutex> lock(mutex());
    keys().insert(std::move(key));
  }

 private:
  static std::mutex& mutex() {
    static std::mutex* m = new std::mutex;
    return *m;
  }
  static std::unordered_set<std::string>& keys() {
    static auto* k = new std::unordered_set<std::string>;
    return *k;
  }
};

}  // namespace

absl::StatusOr<ShardReader> ShardReader::Open(const std::string& path,
                                              const ShardExpectation& expect) {
  QTRAIN_ASSIGN_OR_RETURN(RegularFile file, OpenRegularFile(path, kMaxShardFileBytes));
  struct stat st;
  if (::fstat(file.fd.get(), &st) != 0) {
    return absl::InternalError(absl::StrCat(path, ": fstat: ", std::strerror(errno)));
  }
  ShardReader r;
  if (file.size > 0) {
    void* m = ::mmap(nullptr, file.size, PROT_READ, MAP_PRIVATE, file.fd.get(), 0);
    if (m == MAP_FAILED) {
      return absl::InternalError(absl::StrCat(path, ": mmap: ", std::strerror(errno)));
    }
    r.mapping_ = m;
    r.mapping_size_ = file.size;
  }
  const std::string_view bytes(static_cast<const char*>(r.mapping_), r.mapping_size_);
  QTRAIN_ASSIGN_OR_RETURN(r.header_, DecodeShardHeader(bytes, file.size, path));
  QTRAIN_RETURN_IF_ERROR(CheckShardHeader(r.header_, expect, path));
  std::string key = VerifiedShards::Key(path, st, expect, r.header_.vocab_size);
  if (!VerifiedShards::Contains(key)) {
    QTRAIN_RETURN_IF_ERROR(CheckShardContents(bytes, r.header_, expect, path));
    VerifiedShards::Insert(std::move(key));
  }
  r.tokens_ = std::span<const uint32_t>(
      reinterpret_cast<const uint32_t*>(static_cast<const char*>(r.mapping_) + kShardHeaderBytes),
      r.header_.num_tokens);
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
  // Input paths are bytes, not necessarily UTF-8: replace what JSON cannot hold instead of
  // throwing.
  return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

namespace {

using Json = nlohmann::json;

// Whether arrays and objects in `text` nest at most `limit` deep (brackets inside strings do
// not count). Checked before parsing, so a hostile manifest cannot make the parser recurse.
bool NestingWithin(std::string_view text, int limit) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return false;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return true;
}

// nlohmann's message without its "[json.exception.parse_error.101] " tag.
std::string WithoutExceptionTag(const std::string& what) {
  if (what.starts_with("[json.exception.")) {
    const size_t end = what.find("] ");
    if (end != std::string::npos) return what.substr(end + 2);
  }
  return what;
}

absl::StatusOr<Json> ParseJson(std::string_view text, const std::string& source) {
  if (!NestingWithin(text, kMaxManifestDepth)) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": arrays and objects are nested more than ", kMaxManifestDepth, " deep"));
  }
  // A key given twice would silently take its last value; refuse it instead.
  std::vector<std::unordered_set<std::string>> keys;
  std::optional<std::string> duplicate;
  const auto callback = [&](int, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == Json::parse_event_t::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (event == Json::parse_event_t::key && !keys.empty() && !duplicate &&
               !keys.back().insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  Json root;
  try {
    root = Json::parse(text, callback);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": not valid JSON: ", WithoutExceptionTag(e.what())));
  }
  if (duplicate.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": key \"", absl::CEscape(*duplicate),
                                                   "\" appears twice in one object"));
  }
  return root;
}

// A JSON value for an error message, cut short.
std::string Shown(const Json& value) {
  std::string text = value.dump(-1, ' ', true, Json::error_handler_t::replace);
  if (text.size() > 48) text = text.substr(0, 45) + "...";
  return text;
}

// Typed access to the keys of manifest.json; every error names the file and the key's path
// ("shards[2].num_tokens") instead of surfacing a JSON library exception.
class ManifestFields {
 public:
  explicit ManifestFields(std::string source) : source_(std::move(source)) {}

  absl::Status Error(absl::string_view key, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": \"", key, "\" ", what));
  }

  absl::StatusOr<const Json*> Find(const Json& object, absl::string_view key) const {
    const auto it = object.find(std::string(Leaf(key)));
    if (it == object.end()) {
      return absl::InvalidArgumentError(absl::StrCat(source_, ": missing key \"", key, "\""));
    }
    return &*it;
  }

  absl::StatusOr<const Json*> Object(const Json& object, absl::string_view key) const {
    QTRAIN_ASSIGN_OR_RETURN(const Json* v, Find(object, key));
    if (!v->is_object()) return Error(key, absl::StrCat("must be an object, not ", Shown(*v)));
    return v;
  }

  absl::StatusOr<const Json*> Array(const Json& object, absl::string_view key) const {
    QTRAIN_ASSIGN_OR_RETURN(const Json* v, Find(object, key));
    if (!v->is_array()) return Error(key, absl::StrCat("must be an array, not ", Shown(*v)));
    return v;
  }

  absl::StatusOr<std::string> String(const Json& object, absl::string_view key) const {
    QTRAIN_ASSIGN_OR_RETURN(const Json* v, Find(object, key));
    if (!v->is_string()) return Error(key, absl::StrCat("must be a string, not ", Shown(*v)));
    return v->get<std::string>();
  }

  // A string that must equal `expected`.
  absl::Status Literal(const Json& object, absl::string_view key,
                       absl::string_view expected) const {
    QTRAIN_ASSIGN_OR_RETURN(std::string v, String(object, key));
    if (v != expected) {
      return Error(key, absl::StrCat("is \"", absl::CEscape(v), "\", expected \"", expected, "\""));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<uint64_t> Uint(const Json& object, absl::string_view key, uint64_t min,
                                uint64_t max) const {
    QTRAIN_ASSIGN_OR_RETURN(const Json* v, Find(object, key));
    std::optional<uint64_t> value;
    if (v->is_number_unsigned()) {
      value = v->get<uint64_t>();
    } else if (v->is_number_integer() && v->get<int64_t>() >= 0) {
      value = static_cast<uint64_t>(v->get<int64_t>());
    }
    if (!value.has_value() || *value < min || *value > max) {
      return Error(key,
                   absl::StrCat("must be an integer from ", min, " to ", max, ", not ", Shown(*v)));
    }
    return *value;
  }

  // 64 hex digits, returned in lowercase.
  absl::StatusOr<std::string> Sha256(const Json& object, absl::string_view key) const {
    QTRAIN_ASSIGN_OR_RETURN(std::string v, String(object, key));
    const bool hex = v.size() == 64 && std::all_of(v.begin(), v.end(), [](char c) {
                       return absl::ascii_isxdigit(static_cast<unsigned char>(c));
                     });
    if (!hex) {
      return Error(key, absl::StrCat("is \"", absl::CEscape(v.substr(0, 80)),
                                     "\": a sha256 must be 64 hex digits"));
    }
    return absl::AsciiStrToLower(v);
  }

 private:
  // "shards[2].sha256" -> "sha256".
  static absl::string_view Leaf(absl::string_view key) {
    const size_t dot = key.rfind('.');
    return dot == absl::string_view::npos ? key : key.substr(dot + 1);
  }

  std::string source_;
};

// A shard path is relative to the manifest's directory and may not leave it: no leading '/',
// no "..", "." or empty components, no NUL.
absl::Status CheckShardPath(const ManifestFields& fields, absl::string_view key,
                            const std::string& file) {
  const std::string shown = absl::StrCat("is \"", absl::CEscape(file.substr(0, 80)), "\": ");
  if (file.empty()) return fields.Error(key, "is empty");
  if (file.size() > kMaxShardPathBytes) {
    return fields.Error(key, absl::StrCat(shown, "longer than ", kMaxShardPathBytes, " bytes"));
  }
  if (file.find('\0') != std::string::npos) {
    return fields.Error(key, absl::StrCat(shown, "a shard path may not hold a NUL byte"));
  }
  if (file.front() == '/') {
    return fields.Error(key, absl::StrCat(shown,
                                          "absolute; shard paths are relative to the "
                                          "manifest's directory"));
  }
  for (absl::string_view part : absl::StrSplit(file, '/')) {
    if (part.empty() || part == "." || part == "..") {
      return fields.Error(key,
                          absl::StrCat(shown,
                                       "shard paths must stay inside the manifest's directory (no "
                                       "\"..\", \".\" or empty components)"));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseTokenizerSection(const ManifestFields& fields, const Json& root,
                                   ShardManifest* m) {
  QTRAIN_ASSIGN_OR_RETURN(const Json* t, fields.Object(root, "tokenizer"));
  QTRAIN_ASSIGN_OR_RETURN(m->tokenizer_sha256, fields.Sha256(*t, "tokenizer.sha256"));
  QTRAIN_ASSIGN_OR_RETURN(const uint64_t vocab,
                          fields.Uint(*t, "tokenizer.vocab_size", 1, kMaxVocabSize));
  m->vocab_size = static_cast<uint32_t>(vocab);
  QTRAIN_ASSIGN_OR_RETURN(m->eos_token, fields.String(*t, "tokenizer.eos_token"));
  QTRAIN_ASSIGN_OR_RETURN(const uint64_t eos, fields.Uint(*t, "tokenizer.eos_id", 0, vocab - 1));
  m->eos_id = static_cast<uint32_t>(eos);
  return absl::OkStatus();
}

absl::Status ParseShardList(const ManifestFields& fields, const Json& root, ShardManifest* m) {
  QTRAIN_ASSIGN_OR_RETURN(const Json* list, fields.Array(root, "shards"));
  if (list->size() > kMaxManifestShards) {
    return fields.Error("shards", absl::StrCat("lists ", list->size(), " shards, more than the ",
                                               kMaxManifestShards, " a dataset may have"));
  }
  std::unordered_map<std::string, size_t> seen;
  int64_t sum = 0;
  for (size_t k = 0; k < list->size(); ++k) {
    const std::string key = absl::StrCat("shards[", k, "]");
    const Json& s = (*list)[k];
    if (!s.is_object()) return fields.Error(key, absl::StrCat("must be an object, not ", Shown(s)));
    ShardInfo info;
    QTRAIN_ASSIGN_OR_RETURN(info.file, fields.String(s, key + ".file"));
    QTRAIN_RETURN_IF_ERROR(CheckShardPath(fields, key + ".file", info.file));
    if (const auto [it, added] = seen.emplace(info.file, k); !added) {
      return fields.Error(key + ".file", absl::StrCat("is \"", absl::CEscape(info.file),
                                                      "\", already listed as shards[", it->second,
                                                      "]: a shard may be listed only once"));
    }
    QTRAIN_ASSIGN_OR_RETURN(info.num_tokens,
                            fields.Uint(s, key + ".num_tokens", 0, kMaxShardTokens));
    QTRAIN_ASSIGN_OR_RETURN(info.sha256, fields.Sha256(s, key + ".sha256"));
    // Each count is <= 2^32, but a million of them could still overflow without the check.
    const std::optional<int64_t> next = CheckedAdd(sum, static_cast<int64_t>(info.num_tokens));
    if (!next.has_value()) {
      return fields.Error("shards", "token counts add up to more than 2^63 - 1");
    }
    sum = *next;
    m->shards.push_back(std::move(info));
  }
  if (static_cast<uint64_t>(sum) != m->num_tokens) {
    return fields.Error(
        "num_tokens", absl::StrCat("is ", m->num_tokens, " but the shards hold ", sum, " tokens"));
  }
  return absl::OkStatus();
}

absl::Status ParseInputs(const ManifestFields& fields, const Json& root, ShardManifest* m) {
  if (!root.contains("inputs")) return absl::OkStatus();
  QTRAIN_ASSIGN_OR_RETURN(const Json* inputs, fields.Array(root, "inputs"));
  for (size_t k = 0; k < inputs->size(); ++k) {
    if (!(*inputs)[k].is_string()) {
      return fields.Error(absl::StrCat("inputs[", k, "]"),
                          absl::StrCat("must be a string, not ", Shown((*inputs)[k])));
    }
    m->inputs.push_back((*inputs)[k].get<std::string>());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ShardManifest> ShardManifest::FromJson(std::string_view text,
                                                      std::string_view source) {
  const std::string src(source);
  QTRAIN_ASSIGN_OR_RETURN(const Json root, ParseJson(text, src));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(src, ": must hold a JSON object, not ", Shown(root)));
  }
  const ManifestFields fields(src);
  ShardManifest m;
  QTRAIN_RETURN_IF_ERROR(fields.Literal(root, "format", "qtrain-token-shards"));
  QTRAIN_ASSIGN_OR_RETURN(const uint64_t version,
                          fields.Uint(root, "version", kShardVersion, kShardVersion));
  m.version = static_cast<uint32_t>(version);
  QTRAIN_RETURN_IF_ERROR(fields.Literal(root, "dtype", "uint32"));
  QTRAIN_RETURN_IF_ERROR(ParseTokenizerSection(fields, root, &m));
  QTRAIN_ASSIGN_OR_RETURN(m.num_tokens,
                          fields.Uint(root, "num_tokens", 0, std::numeric_limits<int64_t>::max()));
  QTRAIN_ASSIGN_OR_RETURN(
      m.num_documents, fields.Uint(root, "num_documents", 0, std::numeric_limits<int64_t>::max()));
  QTRAIN_RETURN_IF_ERROR(ParseShardList(fields, root, &m));
  QTRAIN_RETURN_IF_ERROR(ParseInputs(fields, root, &m));
  return m;
}

absl::StatusOr<ShardManifest> ReadShardManifest(const std::string& dir) {
  const std::string path = absl::StrCat(dir, "/", kManifestName);
  QTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, kMaxManifestBytes));
  return ShardManifest::FromJson(text, path);
}

namespace {

absl::Status CheckManifestMatches(const ShardManifest& m, const DatasetOptions& options,
                                  const std::string& manifest_path) {
  if (options.tokenizer_sha256.has_value() && *options.tokenizer_sha256 != m.tokenizer_sha256) {
    return absl::FailedPreconditionError(absl::StrCat(
        manifest_path, ": the shards were made by another tokenizer (sha256 ", m.tokenizer_sha256,
        ", the given tokenizer is ", *options.tokenizer_sha256, ")"));
  }
  if (options.vocab_size.has_value() && *options.vocab_size != m.vocab_size) {
    return absl::FailedPreconditionError(absl::StrCat(manifest_path, ": tokenizer.vocab_size is ",
                                                      m.vocab_size, " but the tokenizer has ",
                                                      *options.vocab_size, " tokens"));
  }
  return absl::OkStatus();
}

// The path of every shard, joined to the manifest's directory; each must resolve (symlinks
// followed) to a distinct file inside that directory.
absl::StatusOr<std::vector<std::string>> ResolveShardPaths(const ShardManifest& m,
                                                           const std::vector<size_t>& indices,
                                                           const std::string& manifest_path) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(manifest_path).parent_path();
  std::error_code ec;
  const fs::path real_dir = fs::canonical(dir.empty() ? fs::path(".") : dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat(dir.string(), ": ", ec.message()));
  }
  std::vector<std::string> paths;
  std::unordered_map<std::string, size_t> seen;
  for (const size_t k : indices) {
    const std::string path = (dir / m.shards[k].file).string();
    const fs::path real = fs::canonical(path, ec);
    if (ec) {
      return absl::NotFoundError(
          absl::StrCat(path, " (shards[", k, "] of ", manifest_path, "): ", ec.message()));
    }
    const fs::path inside = real.lexically_relative(real_dir);
    if (inside.empty() || *inside.begin() == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat(path, " (shards[", k, "] of ", manifest_path, ") resolves to ",
                       real.string(), ", outside the dataset directory ", real_dir.string()));
    }
    if (const auto [it, added] = seen.emplace(real.string(), k); !added) {
      return absl::InvalidArgumentError(absl::StrCat(manifest_path, ": shards[", k, "] and shards[",
                                                     it->second, "] are the same file (",
                                                     real.string(), ")"));
    }
    paths.push_back(path);
  }
  return paths;
}

// Opens (and so verifies) the shards on up to 8 threads: hashing is most of a load's time.
// The error returned is that of the first bad shard in manifest order, as if opened one by one:
// indices are claimed in order and every claimed one is opened, so once a shard fails every
// shard before it has been opened too.
absl::StatusOr<std::vector<ShardReader>> OpenShards(const std::vector<std::string>& paths,
                                                    const std::vector<ShardExpectation>& expect) {
  std::vector<std::optional<absl::StatusOr<ShardReader>>> results(paths.size());
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  const auto work = [&] {
    while (!failed) {
      const size_t k = next.fetch_add(1);
      if (k >= paths.size()) return;
      results[k].emplace(ShardReader::Open(paths[k], expect[k]));
      if (!results[k]->ok()) failed = true;
    }
  };
  const size_t threads =
      std::min<size_t>(paths.size(), std::clamp(std::thread::hardware_concurrency(), 1u, 8u));
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) {
    try {
      pool.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // no more threads: fewer do the same work
    }
  }
  work();
  for (std::thread& t : pool) t.join();
  std::vector<ShardReader> shards;
  for (std::optional<absl::StatusOr<ShardReader>>& r : results) {
    // Every index below the first failure was claimed and opened, so this returns that failure
    // before reaching an index nobody claimed.
    if (!r.has_value()) return absl::InternalError("a shard was not opened");
    if (!r->ok()) return r->status();
    shards.push_back(*std::move(*r));
  }
  return shards;
}

}  // namespace

absl::StatusOr<Dataset> OpenDataset(const std::string& manifest_path,
                                    const DatasetOptions& options) {
  QTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(manifest_path, kMaxManifestBytes));
  Dataset d;
  QTRAIN_ASSIGN_OR_RETURN(d.manifest, ShardManifest::FromJson(text, manifest_path));
  d.manifest_sha256 = Sha256Hex(text);
  if (options.manifest_sha256.has_value() && *options.manifest_sha256 != d.manifest_sha256) {
    return absl::FailedPreconditionError(absl::StrCat(
        manifest_path,
        ": the dataset manifest changed since the job was scheduled "
        "(its sha256 is ",
        d.manifest_sha256, ", the job was scheduled with ", *options.manifest_sha256, ")"));
  }
  QTRAIN_RETURN_IF_ERROR(CheckManifestMatches(d.manifest, options, manifest_path));
  if (options.only_shards.has_value()) {
    for (size_t i = 0; i < options.only_shards->size(); ++i) {
      const size_t k = (*options.only_shards)[i];
      if (k >= d.manifest.shards.size() || (i > 0 && k <= (*options.only_shards)[i - 1])) {
        return absl::InvalidArgumentError(absl::StrCat(
            manifest_path, ": shard index ", k, " is out of order or not among the manifest's ",
            d.manifest.shards.size(), " shards"));
      }
    }
    d.shard_indices = *options.only_shards;
  } else {
    for (size_t k = 0; k < d.manifest.shards.size(); ++k) d.shard_indices.push_back(k);
  }
  QTRAIN_ASSIGN_OR_RETURN(const std::vector<std::string> paths,
                          ResolveShardPaths(d.manifest, d.shard_indices, manifest_path));
  std::vector<ShardExpectation> expect;
  for (const size_t k : d.shard_indices) {
    const ShardInfo& info = d.manifest.shards[k];
    expect.push_back({.vocab_size = d.manifest.vocab_size, .num_tokens = info.num_tokens});
    if (options.check_sha256) expect.back().sha256 = info.sha256;
  }
  QTRAIN_ASSIGN_OR_RETURN(d.shards, OpenShards(paths, expect));
  return d;
}

absl::Status VerifyDataset(const std::string& dir, bool check_sha256,
                           std::optional<std::string> tokenizer_sha256) {
  DatasetOptions options;
  options.tokenizer_sha256 = std::move(tokenizer_sha256);
  options.check_sha256 = check_sha256;
  return OpenDataset(absl::StrCat(dir, "/", kManifestName), options).status();
}

}  // namespace qtrain::tokenizer
