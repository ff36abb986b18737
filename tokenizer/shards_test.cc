// Token shards: format, writer, reader, and the tokenize pipeline end to end.
#include <fcntl.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/corpus_reader.h"
#include "tokenizer/shard_format.h"
#include "tokenizer/shard_writer.h"
#include "tokenizer/test_util.h"
#include "tokenizer/tokenize_corpus.h"

namespace qtrain::tokenizer {
namespace {

namespace fs = std::filesystem;

// Well-formed tokenizer sha256s for manifests.
const std::string kSha(64, 'a');
const std::string kOtherSha(64, 'b');

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary) << content;
}

std::vector<uint32_t> ReadAllTokens(const std::string& dir) {
  absl::StatusOr<ShardManifest> m = ReadShardManifest(dir);
  EXPECT_TRUE(m.ok()) << m.status();
  std::vector<uint32_t> all;
  for (const ShardInfo& s : m->shards) {
    absl::StatusOr<ShardReader> r =
        ShardReader::Open(dir + "/" + s.file, {.vocab_size = m->vocab_size});
    EXPECT_TRUE(r.ok()) << r.status();
    all.insert(all.end(), r->tokens().begin(), r->tokens().end());
  }
  return all;
}

TEST(ShardFormatTest, HeaderLayoutIsExact) {
  const std::string h = EncodeShardHeader({.num_tokens = 3, .vocab_size = 151646});
  ASSERT_EQ(h.size(), 32u);
  EXPECT_EQ(h.substr(0, 8), "QTRNTOKS");
  EXPECT_EQ(h.substr(8, 8), std::string("\x01\0\0\0\x01\0\0\0", 8));
  EXPECT_EQ(h.substr(16, 8), std::string("\x03\0\0\0\0\0\0\0", 8));
  EXPECT_EQ(h.substr(24, 8), std::string("\x5E\x50\x02\0\0\0\0\0", 8));  // 151646
  absl::StatusOr<ShardHeader> back = DecodeShardHeader(h, 32 + 12, "x");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->num_tokens, 3u);
  EXPECT_EQ(back->vocab_size, 151646u);
  EXPECT_FALSE(DecodeShardHeader(h, 32 + 8, "x").ok());
  EXPECT_FALSE(DecodeShardHeader(h.substr(0, 20), 20, "x").ok());
  std::string bad = h;
  bad[0] = 'X';
  EXPECT_THAT(DecodeShardHeader(bad, 44, "x").status().message(), testing::HasSubstr("magic"));
  bad = h;
  bad[8] = 2;
  EXPECT_THAT(DecodeShardHeader(bad, 44, "x").status().message(), testing::HasSubstr("version"));
}

TEST(ShardReaderTest, RejectsCorruptFiles) {
  const ScopedTempDir tmp("reader");
  const std::string& dir = tmp.path();
  const std::string path = dir + "/s.bin";
  std::string file = EncodeShardHeader({.num_tokens = 2, .vocab_size = 10});
  const uint32_t ids[2] = {3, 9};
  file.append(reinterpret_cast<const char*>(ids), sizeof(ids));
  WriteFile(path, file);
  absl::StatusOr<ShardReader> ok = ShardReader::Open(path, {.vocab_size = 10});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_THAT(std::vector<uint32_t>(ok->tokens().begin(), ok->tokens().end()),
              testing::ElementsAre(3, 9));
  EXPECT_EQ(ShardReader::Open(path, {.vocab_size = 11}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  WriteFile(path, file.substr(0, file.size() - 1));  // truncated
  EXPECT_EQ(ShardReader::Open(path).status().code(), absl::StatusCode::kDataLoss);
  std::string big_id = file;
  big_id[32 + 4] = 10;  // second id becomes 10 == vocab size
  WriteFile(path, big_id);
  absl::StatusOr<ShardReader> r = ShardReader::Open(path);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(r.status().message(), testing::HasSubstr("token 1 is 10"));
  EXPECT_EQ(ShardReader::Open(dir + "/missing.bin").status().code(), absl::StatusCode::kNotFound);
  WriteFile(path, "");
  EXPECT_EQ(ShardReader::Open(path).status().code(), absl::StatusCode::kDataLoss);
}

TEST(ShardWriterTest, SplitsAtShardSizeAndRecordsManifest) {
  const ScopedTempDir tmp("writer");
  const std::string& dir = tmp.path();
  absl::StatusOr<ShardWriter> w = ShardWriter::Create({.dir = dir,
                                                       .shard_tokens = 4,
                                                       .tokenizer_sha256 = kSha,
                                                       .vocab_size = 100,
                                                       .eos_token = "<e>",
                                                       .eos_id = 99});
  ASSERT_TRUE(w.ok()) << w.status();
  const std::vector<uint32_t> a = {1, 2, 3}, b = {4, 5, 6, 7, 8, 9};
  ASSERT_TRUE(w->Append(a).ok());
  ASSERT_TRUE(w->Append(b).ok());
  const std::vector<uint32_t> too_big = {100};
  EXPECT_EQ(w->Append(too_big).code(), absl::StatusCode::kInvalidArgument);
  w->CountDocuments(2);
  ASSERT_TRUE(w->Finish().ok());
  absl::StatusOr<ShardManifest> m = ReadShardManifest(dir);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->shards.size(), 3u);
  EXPECT_EQ(m->shards[0].num_tokens, 4u);
  EXPECT_EQ(m->shards[2].num_tokens, 1u);
  EXPECT_EQ(m->num_tokens, 9u);
  EXPECT_EQ(m->num_documents, 2u);
  EXPECT_EQ(m->tokenizer_sha256, kSha);
  EXPECT_EQ(m->vocab_size, 100u);
  EXPECT_THAT(ReadAllTokens(dir), testing::ElementsAre(1, 2, 3, 4, 5, 6, 7, 8, 9));
  EXPECT_TRUE(VerifyDataset(dir, true, kSha).ok());
  EXPECT_EQ(VerifyDataset(dir, true, kOtherSha).code(), absl::StatusCode::kFailedPrecondition);
  // A flipped token byte is caught by the sha256 (the id stays below the vocabulary size).
  {
    std::fstream f(dir + "/shard-000001.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(32);
    f.put(7);
  }
  EXPECT_EQ(VerifyDataset(dir, false).code(), absl::StatusCode::kOk);
  EXPECT_EQ(VerifyDataset(dir, true).code(), absl::StatusCode::kDataLoss);
  // The directory now holds a dataset: a second writer refuses it.
  EXPECT_EQ(ShardWriter::Create({.dir = dir, .tokenizer_sha256 = kSha, .vocab_size = 100})
                .status()
                .code(),
            absl::StatusCode::kAlreadyExists);
}

// A manifest that parses, for the mutation tests below.
nlohmann::json GoodManifestJson() {
  ShardManifest m;
  m.tokenizer_sha256 = kSha;
  m.vocab_size = 100;
  m.eos_token = "<e>";
  m.eos_id = 99;
  m.num_tokens = 7;
  m.num_documents = 1;
  m.shards = {{"shard-000000.bin", 4, std::string(64, 'c')},
              {"shard-000001.bin", 3, std::string(64, 'd')}};
  return nlohmann::json::parse(m.ToJson());
}

std::string ManifestError(const nlohmann::json& j) {
  absl::StatusOr<ShardManifest> m = ShardManifest::FromJson(j.dump(), "ds/manifest.json");
  if (m.ok()) return "OK";
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
  return std::string(m.status().message());
}

TEST(ShardManifestTest, RoundTripsAndNormalizesSha256) {
  nlohmann::json j = GoodManifestJson();
  j["tokenizer"]["sha256"] = std::string(64, 'A');
  absl::StatusOr<ShardManifest> m = ShardManifest::FromJson(j.dump());
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->tokenizer_sha256, std::string(64, 'a'));
  EXPECT_EQ(m->vocab_size, 100u);
  ASSERT_EQ(m->shards.size(), 2u);
  EXPECT_EQ(m->shards[1].num_tokens, 3u);
  absl::StatusOr<ShardManifest> again = ShardManifest::FromJson(m->ToJson());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->ToJson(), m->ToJson());
}

TEST(ShardManifestTest, InputPathsThatAreNotUtf8AreWrittenReadably) {
  ShardManifest m = *ShardManifest::FromJson(GoodManifestJson().dump());
  m.inputs = {"caf\xE9.txt"};  // Latin-1
  absl::StatusOr<ShardManifest> back = ShardManifest::FromJson(m.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->inputs, std::vector<std::string>{"caf\xEF\xBF\xBD.txt"});
}

TEST(ShardManifestTest, BadJsonIsNamedWithoutLibraryTags) {
  for (const std::string text : {"{", "", "[1, 2", "{\"format\": qtrain}", "\xFF"}) {
    absl::StatusOr<ShardManifest> m = ShardManifest::FromJson(text, "ds/manifest.json");
    ASSERT_FALSE(m.ok()) << text;
    EXPECT_THAT(m.status().message(), testing::HasSubstr("ds/manifest.json: not valid JSON"));
    EXPECT_THAT(m.status().message(), testing::Not(testing::HasSubstr("json.exception")));
  }
  std::string twice = GoodManifestJson().dump();
  twice.insert(1, "\"num_tokens\": 0, ");
  EXPECT_THAT(ShardManifest::FromJson(twice, "m").status().message(),
              testing::HasSubstr("m: key \"num_tokens\" appears twice in one object"));
  EXPECT_THAT(ShardManifest::FromJson("[1]", "m").status().message(),
              testing::HasSubstr("must hold a JSON object"));
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_THAT(ShardManifest::FromJson(deep, "m").status().message(),
              testing::HasSubstr("nested more than 16 deep"));
  // Brackets inside strings are not nesting.
  nlohmann::json j = GoodManifestJson();
  j["inputs"] = {std::string(100, '['), "\"" + std::string(100, '{')};  // escaped quote
  EXPECT_EQ(ManifestError(j), "OK");
}

TEST(ShardManifestTest, TooManyShardsAreRefused) {
  nlohmann::json j = GoodManifestJson();
  j["shards"] = nlohmann::json::array();
  for (size_t k = 0; k <= kMaxManifestShards; ++k) j["shards"].push_back(nullptr);
  EXPECT_THAT(ManifestError(j), testing::HasSubstr("\"shards\" lists 1048577 shards, more than "
                                                   "the 1048576 a dataset may have"));
}

TEST(ShardManifestTest, EveryKeyIsCheckedAndNamed) {
  struct Case {
    std::string pointer;  // JSON pointer of the value to change
    nlohmann::json value;
    std::string expected;
  };
  const std::string big = "must be an integer";
  const std::vector<Case> cases = {
      {"/format", "other", "\"format\" is \"other\", expected \"qtrain-token-shards\""},
      {"/version", 2, "\"version\" must be an integer from 1 to 1, not 2"},
      {"/dtype", "uint16", "\"dtype\" is \"uint16\", expected \"uint32\""},
      {"/tokenizer", 5, "\"tokenizer\" must be an object, not 5"},
      {"/tokenizer/vocab_size", "512", "\"tokenizer.vocab_size\" " + big},
      {"/tokenizer/vocab_size", -1, "\"tokenizer.vocab_size\" " + big},
      {"/tokenizer/vocab_size", 1.5, "\"tokenizer.vocab_size\" " + big},
      {"/tokenizer/vocab_size", 0, "\"tokenizer.vocab_size\" " + big + " from 1 to 2147483648"},
      {"/tokenizer/vocab_size", 2147483649ull, "\"tokenizer.vocab_size\" " + big},
      {"/tokenizer/vocab_size", 4294967396ull, "\"tokenizer.vocab_size\" " + big},
      {"/tokenizer/eos_id", 100, "\"tokenizer.eos_id\" must be an integer from 0 to 99"},
      {"/tokenizer/eos_token", nullptr, "\"tokenizer.eos_token\" must be a string, not null"},
      {"/tokenizer/sha256", "000", "\"tokenizer.sha256\" is \"000\": a sha256 must be 64 hex"},
      {"/tokenizer/sha256", std::string(64, 'x'), "\"tokenizer.sha256\" is \"xxx"},
      {"/tokenizer/sha256", std::string(65, '0'), "a sha256 must be 64 hex digits"},
      {"/shards/1/sha256", "xyz", "\"shards[1].sha256\" is \"xyz\": a sha256 must be 64 hex"},
      {"/shards/0/sha256", 7, "\"shards[0].sha256\" must be a string, not 7"},
      {"/num_tokens", -7, "\"num_tokens\" " + big},
      {"/num_tokens", 8, "\"num_tokens\" is 8 but the shards hold 7 tokens"},
      {"/num_documents", "1", "\"num_documents\" " + big},
      {"/shards", nlohmann::json::object(), "\"shards\" must be an array"},
      {"/shards/1", "x.bin", "\"shards[1]\" must be an object, not \"x.bin\""},
      {"/shards/1/num_tokens", 4294967297ull,
       "\"shards[1].num_tokens\" must be an integer from 0 to 4294967296"},
      {"/shards/1/file", "../x.bin", "\"shards[1].file\" is \"../x.bin\": shard paths must stay"},
      {"/shards/1/file", "sub/../../x.bin", "must stay inside the manifest's directory"},
      {"/shards/1/file", "a//b.bin", "must stay inside"},
      {"/shards/1/file", "./b.bin", "must stay inside"},
      {"/shards/1/file", "/etc/passwd", "\"shards[1].file\" is \"/etc/passwd\": absolute"},
      {"/shards/1/file", "", "\"shards[1].file\" is empty"},
      {"/shards/1/file", std::string("a\0b", 3), "may not hold a NUL byte"},
      {"/shards/1/file", std::string(2000, 'a'), "longer than 1024 bytes"},
      {"/shards/1/file", "shard-000000.bin",
       "\"shards[1].file\" is \"shard-000000.bin\", already listed as shards[0]"},
      {"/inputs", {"a", 3}, "\"inputs[1]\" must be a string, not 3"},
  };
  for (const Case& c : cases) {
    nlohmann::json j = GoodManifestJson();
    j[nlohmann::json::json_pointer(c.pointer)] = c.value;
    const std::string error = ManifestError(j);
    EXPECT_THAT(error, testing::HasSubstr(c.expected)) << c.pointer << " = " << c.value.dump();
    EXPECT_THAT(error, testing::StartsWith("ds/manifest.json: ")) << c.pointer;
  }
  for (const std::string key :
       {"format", "version", "dtype", "tokenizer", "num_tokens", "num_documents", "shards"}) {
    nlohmann::json j = GoodManifestJson();
    j.erase(key);
    EXPECT_THAT(ManifestError(j), testing::HasSubstr("missing key \"" + key + "\""));
  }
  nlohmann::json j = GoodManifestJson();
  j["tokenizer"].erase("vocab_size");
  EXPECT_THAT(ManifestError(j), testing::HasSubstr("missing key \"tokenizer.vocab_size\""));
  j = GoodManifestJson();
  j["shards"][1].erase("sha256");
  EXPECT_THAT(ManifestError(j), testing::HasSubstr("missing key \"shards[1].sha256\""));
  // A shard path inside a subdirectory stays inside the dataset.
  j = GoodManifestJson();
  j["shards"][1]["file"] = "part/b.bin";
  EXPECT_EQ(ManifestError(j), "OK");
}

TEST(ShardManifestTest, TokenCountsCannotWrapAround) {
  // 2^63 + 2^63 wraps to 0 in uint64: the old parser accepted this manifest of 0 tokens.
  nlohmann::json j = GoodManifestJson();
  j["shards"][0]["num_tokens"] = uint64_t{1} << 63;
  j["shards"][1]["num_tokens"] = uint64_t{1} << 63;
  j["num_tokens"] = 0;
  EXPECT_THAT(ManifestError(j), testing::HasSubstr("\"shards[0].num_tokens\" must be an integer"));
  // A count past uint64 parses as a float and is refused, not converted.
  std::string text = GoodManifestJson().dump();
  const std::string from = "\"num_tokens\":7";
  ASSERT_NE(text.find(from), std::string::npos);
  text.replace(text.find(from), from.size(), "\"num_tokens\":18446744073709551623");
  EXPECT_THAT(
      ShardManifest::FromJson(text, "m").status().message(),
      testing::HasSubstr("\"num_tokens\" must be an integer from 0 to 9223372036854775807"));
}

TEST(ShardFormatTest, HeaderFieldsOutOfRangeAreRefused) {
  const auto decode = [](const ShardHeader& h, uint64_t file_size) {
    return DecodeShardHeader(EncodeShardHeader(h), file_size, "s.bin").status();
  };
  EXPECT_THAT(decode({.num_tokens = 0, .vocab_size = 0}, 32).message(),
              testing::HasSubstr("vocabulary size 0 is outside 1..2147483648"));
  EXPECT_THAT(decode({.num_tokens = 0, .vocab_size = 0x80000001u}, 32).message(),
              testing::HasSubstr("outside 1..2147483648"));
  // 32 + 4 * 2^62 wraps to 32: the count alone must be refused.
  EXPECT_THAT(decode({.num_tokens = uint64_t{1} << 62, .vocab_size = 5}, 32).message(),
              testing::HasSubstr("more than the 4294967296 a shard may hold"));
  // A file size below the header must not underflow into a match.
  EXPECT_FALSE(decode({.num_tokens = 0, .vocab_size = 5}, 0).ok());
  std::string bad = EncodeShardHeader({.num_tokens = 0, .vocab_size = 5});
  bad[12] = 2;
  EXPECT_THAT(DecodeShardHeader(bad, 32, "s.bin").status().message(),
              testing::HasSubstr("unsupported token dtype 2"));
}

// The bytes of a shard holding `ids`.
std::string ShardBytes(const std::vector<uint32_t>& ids, uint32_t vocab) {
  std::string file = EncodeShardHeader({.num_tokens = ids.size(), .vocab_size = vocab});
  file.append(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(uint32_t));
  return file;
}

TEST(ShardFormatTest, ParseShardChecksExpectations) {
  const std::string bytes = ShardBytes({1, 2, 3}, 10);
  const std::string sha = Sha256Hex(bytes);
  EXPECT_TRUE(ParseShard(bytes, "s", {.vocab_size = 10, .num_tokens = 3, .sha256 = sha}).ok());
  // Unaligned bytes parse the same.
  const std::string shifted = "x" + bytes;
  EXPECT_TRUE(ParseShard(std::string_view(shifted).substr(1), "s", {.sha256 = sha}).ok());
  EXPECT_THAT(ParseShard(bytes, "s", {.num_tokens = 4}).status().message(),
              testing::HasSubstr("s: the header says 3 tokens, the manifest says 4"));
  EXPECT_THAT(ParseShard(bytes, "s", {.vocab_size = 512}).status().message(),
              testing::HasSubstr("s: vocabulary size 10 in the header, the manifest says 512"));
  const absl::Status changed = ParseShard(bytes, "s", {.sha256 = std::string(64, '0')}).status();
  EXPECT_EQ(changed.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(changed.message(), testing::HasSubstr("the manifest says 0000"));
  EXPECT_THAT(ParseShard(ShardBytes({1, 10, 3}, 10), "s").status().message(),
              testing::HasSubstr("token 1 is 10, not below vocab size 10"));
}

TEST(ShardReaderTest, RefusesWhatIsNotARegularFileWithoutBlocking) {
  const ScopedTempDir tmp("reader_kinds");
  const std::string dir = tmp.path();
  fs::create_directory(dir + "/dir.bin");
  absl::StatusOr<ShardReader> r = ShardReader::Open(dir + "/dir.bin");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), testing::HasSubstr("is a directory, not a regular file"));
  ASSERT_EQ(::mkfifo((dir + "/fifo.bin").c_str(), 0600), 0);
  r = ShardReader::Open(dir + "/fifo.bin");  // would block forever in open() without O_NONBLOCK
  EXPECT_THAT(r.status().message(), testing::HasSubstr("is a FIFO"));
  r = ShardReader::Open("/dev/zero");
  EXPECT_THAT(r.status().message(), testing::HasSubstr("not a regular file"));
  // Past the size limit: refused before mapping (a sparse file costs no disk).
  const std::string huge = dir + "/huge.bin";
  WriteFile(huge, ShardBytes({}, 10));
  fs::resize_file(huge, kMaxShardFileBytes + 1);
  r = ShardReader::Open(huge);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().message(), testing::HasSubstr(std::to_string(kMaxShardFileBytes)));
}

TEST(ShardReaderTest, ChangedShardIsCaughtAgainAfterAnEarlierCheckPassed) {
  const ScopedTempDir tmp("reader_cache");
  const std::string path = tmp.path() + "/s.bin";
  const std::string bytes = ShardBytes({1, 2, 3}, 10);
  const ShardExpectation expect{.sha256 = Sha256Hex(bytes)};
  WriteFile(path, bytes);
  ASSERT_TRUE(ShardReader::Open(path, expect).ok());
  ASSERT_TRUE(ShardReader::Open(path, expect).ok());  // from the cache
  std::string changed = bytes;
  changed[32] = 4;
  WriteFile(path, changed);
  // Same size; set an mtime that differs from the first write's, whatever the clock's grain.
  const struct timespec times[2] = {{0, UTIME_OMIT}, {12345, 678}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
  EXPECT_EQ(ShardReader::Open(path, expect).status().code(), absl::StatusCode::kDataLoss);
}

// A dataset of 3 shards (4 + 4 + 1 tokens, vocabulary 100) written by ShardWriter.
std::string WriteDataset(const std::string& dir) {
  absl::StatusOr<ShardWriter> w = ShardWriter::Create(
      {.dir = dir, .shard_tokens = 4, .tokenizer_sha256 = kSha, .vocab_size = 100, .eos_id = 99});
  EXPECT_TRUE(w.ok()) << w.status();
  const std::vector<uint32_t> ids = {1, 2, 3, 4, 5, 6, 7, 8, 99};
  EXPECT_TRUE(w->Append(ids).ok());
  EXPECT_TRUE(w->Finish().ok());
  return dir + "/manifest.json";
}

void EditManifest(const std::string& path, const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = nlohmann::json::parse(*ReadFileToString(path));
  edit(j);
  WriteFile(path, j.dump());
}

TEST(OpenDatasetTest, OpensAVerifiedDataset) {
  const ScopedTempDir tmp("open_ok");
  const std::string manifest = WriteDataset(tmp.path());
  absl::StatusOr<Dataset> d = OpenDataset(manifest, {.tokenizer_sha256 = kSha, .vocab_size = 100});
  ASSERT_TRUE(d.ok()) << d.status();
  ASSERT_EQ(d->shards.size(), 3u);
  EXPECT_EQ(d->shards[2].tokens()[0], 99u);
  EXPECT_EQ(d->manifest_sha256, Sha256Hex(*ReadFileToString(manifest)));
}

TEST(OpenDatasetTest, RefusesADatasetOfAnotherTokenizer) {
  const ScopedTempDir tmp("open_vocab");
  const std::string manifest = WriteDataset(tmp.path());
  absl::Status s = OpenDataset(manifest, {.vocab_size = 512}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), testing::HasSubstr("tokenizer.vocab_size is 100 but the tokenizer has "
                                              "512 tokens"));
  s = OpenDataset(manifest, {.tokenizer_sha256 = kOtherSha}).status();
  EXPECT_THAT(s.message(), testing::HasSubstr("made by another tokenizer"));
  // A manifest claiming a bigger vocabulary than its shards' headers.
  EditManifest(manifest, [](nlohmann::json& j) { j["tokenizer"]["vocab_size"] = 200000; });
  s = OpenDataset(manifest, {.vocab_size = 200000}).status();
  EXPECT_THAT(s.message(), testing::HasSubstr("vocabulary size 100 in the header, the manifest "
                                              "says 200000"));
}

TEST(OpenDatasetTest, Sha256IsCheckedBeforeUse) {
  const ScopedTempDir tmp("open_sha");
  const std::string manifest = WriteDataset(tmp.path());
  // A well-formed but wrong sha256.
  EditManifest(manifest,
               [](nlohmann::json& j) { j["shards"][1]["sha256"] = std::string(64, '0'); });
  absl::Status s = OpenDataset(manifest).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), testing::HasSubstr("shard-000001.bin: sha256 is"));
  EXPECT_TRUE(OpenDataset(manifest, {.check_sha256 = false}).ok());
  // A changed token, the id still in range.
  const ScopedTempDir tmp2("open_sha_token");
  const std::string manifest2 = WriteDataset(tmp2.path());
  {
    std::fstream f(tmp2.path() + "/shard-000002.bin",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(32);
    f.put(5);
  }
  s = OpenDataset(manifest2).status();
  EXPECT_THAT(s.message(), testing::HasSubstr("shard-000002.bin: sha256 is"));
  EXPECT_THAT(s.message(), testing::HasSubstr("the shard changed after it was written"));
}

TEST(OpenDatasetTest, HeaderMustMatchTheManifest) {
  const ScopedTempDir tmp("open_header");
  const std::string manifest = WriteDataset(tmp.path());
  EditManifest(manifest, [](nlohmann::json& j) {
    j["shards"][2]["num_tokens"] = 2;
    j["num_tokens"] = 10;
  });
  EXPECT_THAT(
      OpenDataset(manifest).status().message(),
      testing::HasSubstr("shard-000002.bin: the header says 1 tokens, the manifest says 2"));
  const ScopedTempDir tmp2("open_header_version");
  const std::string manifest2 = WriteDataset(tmp2.path());
  {
    std::fstream f(tmp2.path() + "/shard-000000.bin",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);
    f.put(2);
  }
  EXPECT_THAT(OpenDataset(manifest2).status().message(),
              testing::HasSubstr("shard-000000.bin: unsupported token shard version 2"));
}

TEST(OpenDatasetTest, ShardsMustBeDistinctRegularFilesInsideTheDirectory) {
  const ScopedTempDir tmp("open_paths");
  const std::string dir = tmp.path() + "/ds";
  const std::string manifest = WriteDataset(dir);
  const std::string original = *ReadFileToString(manifest);
  // A symlink that leaves the directory.
  fs::copy_file(dir + "/shard-000001.bin", tmp.path() + "/outside.bin");
  fs::create_symlink(tmp.path() + "/outside.bin", dir + "/link.bin");
  EditManifest(manifest, [](nlohmann::json& j) { j["shards"][1]["file"] = "link.bin"; });
  EXPECT_THAT(OpenDataset(manifest).status().message(),
              testing::HasSubstr("outside the dataset directory"));
  // Two entries naming one file.
  fs::create_symlink("shard-000000.bin", dir + "/alias.bin");
  WriteFile(manifest, original);
  EditManifest(manifest, [](nlohmann::json& j) { j["shards"][1]["file"] = "alias.bin"; });
  EXPECT_THAT(OpenDataset(manifest).status().message(),
              testing::HasSubstr("shards[1] and shards[0] are the same file"));
  // A directory, a FIFO, a missing file.
  fs::remove(dir + "/shard-000001.bin");
  fs::create_directory(dir + "/shard-000001.bin");
  WriteFile(manifest, original);
  EXPECT_THAT(OpenDataset(manifest).status().message(),
              testing::HasSubstr("shard-000001.bin is a directory, not a regular file"));
  fs::remove(dir + "/shard-000001.bin");
  ASSERT_EQ(::mkfifo((dir + "/shard-000001.bin").c_str(), 0600), 0);
  EXPECT_THAT(OpenDataset(manifest).status().message(), testing::HasSubstr("is a FIFO"));
  fs::remove(dir + "/shard-000001.bin");
  const absl::Status missing = OpenDataset(manifest).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), testing::HasSubstr("shard-000001.bin (shards[1] of"));
}

TEST(OpenDatasetTest, ReportsTheFirstBadShardWhateverTheThreads) {
  const ScopedTempDir tmp("open_many");
  absl::StatusOr<ShardWriter> w = ShardWriter::Create(
      {.dir = tmp.path(), .shard_tokens = 1, .tokenizer_sha256 = kSha, .vocab_size = 100});
  ASSERT_TRUE(w.ok()) << w.status();
  std::vector<uint32_t> ids(40);
  for (uint32_t k = 0; k < ids.size(); ++k) ids[k] = k;
  ASSERT_TRUE(w->Append(ids).ok());
  ASSERT_TRUE(w->Finish().ok());
  const std::string manifest = tmp.path() + "/manifest.json";
  absl::StatusOr<Dataset> d = OpenDataset(manifest);
  ASSERT_TRUE(d.ok()) << d.status();
  for (size_t k = 0; k < ids.size(); ++k) EXPECT_EQ(d->shards[k].tokens()[0], ids[k]);
  for (const char* bad : {"/shard-000031.bin", "/shard-000017.bin", "/shard-000033.bin"}) {
    std::fstream f(tmp.path() + bad, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(32);
    f.put(50);
  }
  for (int run = 0; run < 5; ++run) {
    EXPECT_THAT(OpenDataset(manifest).status().message(),
                testing::HasSubstr("shard-000017.bin: sha256 is"));
  }
}

TEST(OpenDatasetTest, ManifestMustBeASmallRegularFile) {
  const ScopedTempDir tmp("open_manifest");
  const std::string dir = tmp.path();
  ASSERT_EQ(::mkfifo((dir + "/fifo.json").c_str(), 0600), 0);
  EXPECT_THAT(OpenDataset(dir + "/fifo.json").status().message(), testing::HasSubstr("FIFO"));
  EXPECT_THAT(OpenDataset(dir).status().message(), testing::HasSubstr("is a directory"));
  WriteFile(dir + "/big.json", "{}");
  fs::resize_file(dir + "/big.json", kMaxManifestBytes + 1);
  EXPECT_THAT(OpenDataset(dir + "/big.json").status().message(),
              testing::HasSubstr(std::to_string(kMaxManifestBytes)));
}

TEST(ShardWriterTest, RefusesWhatTheReaderWouldRefuse) {
  const ScopedTempDir tmp("writer_limits");
  const std::string dir = tmp.path();
  EXPECT_THAT(ShardWriter::Create({.dir = dir, .tokenizer_sha256 = "abc", .vocab_size = 10})
                  .status()
                  .message(),
              testing::HasSubstr("not 64 lowercase hex digits"));
  EXPECT_FALSE(ShardWriter::Create({.dir = dir,
                                    .shard_tokens = kMaxShardTokens + 1,
                                    .tokenizer_sha256 = kSha,
                                    .vocab_size = 10})
                   .ok());
  EXPECT_FALSE(
      ShardWriter::Create({.dir = dir, .tokenizer_sha256 = kSha, .vocab_size = kMaxVocabSize + 1})
          .ok());
  EXPECT_FALSE(
      ShardWriter::Create({.dir = dir, .tokenizer_sha256 = kSha, .vocab_size = 10, .eos_id = 10})
          .ok());
}

TEST(CorpusReaderTest, PlainFilesAreCutOnlyWhereEncodingIsUnaffected) {
  const ScopedTempDir tmp("reader_cut");
  const std::string& dir = tmp.path();
  std::string text;
  for (int k = 0; k < 200; ++k) {
    text += "line " + std::to_string(k) + "  \n\n  indented\r\n\t\ttab \xE4\xB8\xAD\n";
    text += (k % 3 == 0) ? " leading space\n" : "x\xCC\x81 y\n";
  }
  WriteFile(dir + "/a.txt", text);
  absl::StatusOr<CorpusReader> r = CorpusReader::Open({dir + "/a.txt"}, 100);
  ASSERT_TRUE(r.ok());
  const Tokenizer& tok = Qwen2Tokenizer();
  std::string joined;
  std::vector<uint32_t> ids;
  int chunks = 0, ends = 0;
  TextChunk c;
  while (true) {
    absl::StatusOr<bool> more = r->Next(&c);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    joined += c.text;
    ASSERT_TRUE(tok.Encode(c.text, &ids).ok());
    ++chunks;
    ends += c.ends_document;
  }
  EXPECT_EQ(joined, text);
  EXPECT_GT(chunks, 20);
  EXPECT_EQ(ends, 1);
  EXPECT_EQ(ids, *tok.Encode(text));
  EXPECT_EQ(r->bytes_read(), text.size());
}

TEST(TokenizeCorpusTest, ShardsHoldDocumentsWithEndOfTextAndDoNotDependOnThreads) {
  const ScopedTempDir tmp("pipeline");
  const std::string& dir = tmp.path();
  const std::vector<std::string> docs = {"Hello world.", "", "\xE4\xBD\xA0\xE5\xA5\xBD<|im_end|>",
                                         "tabs\tand\nnewlines\n\n"};
  std::string jsonl;
  for (const std::string& d : docs) jsonl += nlohmann::json{{"text", d}}.dump() + "\n\n";
  WriteFile(dir + "/docs.jsonl", jsonl);
  std::string plain;
  for (int k = 0; k < 30000; ++k) plain += "Plain file line " + std::to_string(k) + ".\n";
  WriteFile(dir + "/book.txt", plain);

  const Tokenizer& tok = Qwen2Tokenizer();
  std::vector<uint32_t> expected;
  for (const std::string& d : docs) {
    ASSERT_TRUE(tok.Encode(d, &expected).ok());
    expected.push_back(151643);
  }
  ASSERT_TRUE(tok.Encode(plain, &expected).ok());
  expected.push_back(151643);

  std::vector<std::string> manifests;
  for (int jobs : {1, 3}) {
    TokenizeCorpusOptions o;
    o.inputs = {dir + "/docs.jsonl", dir + "/book.txt"};
    o.out_dir = dir + "/out" + std::to_string(jobs);
    o.shard_tokens = 10007;
    o.jobs = jobs;
    o.tokenizer_sha256 = kSha;
    o.progress = false;
    absl::StatusOr<TokenizeCorpusResult> r = TokenizeCorpus(tok, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->manifest.num_documents, 5u);
    EXPECT_EQ(r->manifest.num_tokens, expected.size());
    EXPECT_GT(r->manifest.shards.size(), 5u);
    EXPECT_EQ(ReadAllTokens(o.out_dir), expected);
    EXPECT_TRUE(VerifyDataset(o.out_dir, true, kSha).ok());
    absl::StatusOr<std::string> m = ReadFileToString(o.out_dir + "/manifest.json");
    ASSERT_TRUE(m.ok());
    // Paths of inputs and outputs aside, the manifests are identical.
    manifests.push_back(nlohmann::json::parse(*m)["shards"].dump());
  }
  EXPECT_EQ(manifests[0], manifests[1]);
}

// Chunks of stream_bytes or more (a long JSONL document, a plain file with no place to cut) are
// encoded alone and streamed to the shards; the token stream is the same as for any other chunk
// and does not depend on the number of threads.
TEST(TokenizeCorpusTest, LongDocumentsAreStreamedInOrder) {
  const ScopedTempDir tmp("long_docs");
  const std::string& dir = tmp.path();
  std::string long_doc;
  while (long_doc.size() < 300000) long_doc += "many short words, ";
  const std::vector<std::string> docs = {"first", long_doc, "after the long one", long_doc + "!"};
  std::string jsonl;
  for (const std::string& d : docs) jsonl += nlohmann::json{{"text", d}}.dump() + "\n";
  WriteFile(dir + "/docs.jsonl", jsonl);
  const std::string one_line = "x" + long_doc;  // no newline: the reader cannot cut it
  WriteFile(dir + "/line.txt", one_line);
  WriteFile(dir + "/tail.txt", "the end");

  const Tokenizer& tok = Qwen2Tokenizer();
  std::vector<uint32_t> expected;
  for (const std::string& d : docs) {
    ASSERT_TRUE(tok.Encode(d, &expected).ok());
    expected.push_back(151643);
  }
  for (const std::string& d : {one_line, std::string("the end")}) {
    ASSERT_TRUE(tok.Encode(d, &expected).ok());
    expected.push_back(151643);
  }
  for (int jobs : {1, 3}) {
    TokenizeCorpusOptions o;
    o.inputs = {dir + "/docs.jsonl", dir + "/line.txt", dir + "/tail.txt"};
    o.out_dir = dir + "/out" + std::to_string(jobs);
    o.shard_tokens = 10007;
    o.tokenizer_sha256 = kSha;
    o.jobs = jobs;
    o.progress = false;
    o.stream_bytes = 100000;
    absl::StatusOr<TokenizeCorpusResult> r = TokenizeCorpus(tok, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->manifest.num_documents, 6u);
    EXPECT_EQ(ReadAllTokens(o.out_dir), expected) << "jobs " << jobs;
  }
  // Bad text in a streamed chunk is named like anywhere else.
  WriteFile(dir + "/bad.txt", one_line + "\xFF");
  TokenizeCorpusOptions o;
  o.inputs = {dir + "/bad.txt"};
  o.out_dir = dir + "/out_bad";
  o.tokenizer_sha256 = kSha;
  o.progress = false;
  o.stream_bytes = 100000;
  absl::StatusOr<TokenizeCorpusResult> r = TokenizeCorpus(tok, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), testing::HasSubstr("bad.txt"));
  EXPECT_THAT(r.status().message(), testing::HasSubstr("invalid UTF-8"));
}

TEST(TokenizeCorpusTest, BadInputIsNamed) {
  const ScopedTempDir tmp("bad_input");
  const std::string& dir = tmp.path();
  WriteFile(dir + "/bad.jsonl", "{\"text\": \"ok\"}\n{\"txt\": 1}\n");
  TokenizeCorpusOptions o;
  o.inputs = {dir + "/bad.jsonl"};
  o.out_dir = dir + "/out";
  o.tokenizer_sha256 = kSha;
  o.progress = false;
  absl::StatusOr<TokenizeCorpusResult> r = TokenizeCorpus(Qwen2Tokenizer(), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), testing::HasSubstr("bad.jsonl:2"));
  WriteFile(dir + "/bad.txt", "fine\n\xFF");
  o.inputs = {dir + "/bad.txt"};
  o.out_dir = dir + "/out2";
  r = TokenizeCorpus(Qwen2Tokenizer(), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), testing::HasSubstr("bad.txt"));
  EXPECT_THAT(r.status().message(), testing::HasSubstr("invalid UTF-8"));
  o.inputs = {dir + "/missing.txt"};
  EXPECT_EQ(TokenizeCorpus(Qwen2Tokenizer(), o).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace qtrain::tokenizer
