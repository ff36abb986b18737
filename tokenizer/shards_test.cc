// Token shards: format, writer, reader, and the tokenize pipeline end to end.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/file_util.h"
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

void WriteFile(const std::string& path, const std::string& content) {
  std::ofstream(path, std::ios::binary) << content;
}

std::vector<uint32_t> ReadAllTokens(const std::string& dir) {
  absl::StatusOr<ShardManifest> m = ReadShardManifest(dir);
  EXPECT_TRUE(m.ok()) << m.status();
  std::vector<uint32_t> all;
  for (const ShardInfo& s : m->shards) {
    absl::StatusOr<ShardReader> r = ShardReader::Open(dir + "/" + s.file, m->vocab_size);
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
  absl::StatusOr<ShardReader> ok = ShardReader::Open(path, 10);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_THAT(std::vector<uint32_t>(ok->tokens().begin(), ok->tokens().end()),
              testing::ElementsAre(3, 9));
  EXPECT_EQ(ShardReader::Open(path, 11).status().code(), absl::StatusCode::kFailedPrecondition);
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
                                                       .tokenizer_sha256 = "abc",
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
  EXPECT_EQ(m->tokenizer_sha256, "abc");
  EXPECT_EQ(m->vocab_size, 100u);
  EXPECT_THAT(ReadAllTokens(dir), testing::ElementsAre(1, 2, 3, 4, 5, 6, 7, 8, 9));
  EXPECT_TRUE(VerifyDataset(dir, true, "abc").ok());
  EXPECT_EQ(VerifyDataset(dir, true, "other").code(), absl::StatusCode::kFailedPrecondition);
  // A flipped token byte is caught by the sha256 (the id stays below the vocabulary size).
  {
    std::fstream f(dir + "/shard-000001.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(32);
    f.put(7);
  }
  EXPECT_EQ(VerifyDataset(dir, false).code(), absl::StatusCode::kOk);
  EXPECT_EQ(VerifyDataset(dir, true).code(), absl::StatusCode::kDataLoss);
  // The directory now holds a dataset: a second writer refuses it.
  EXPECT_EQ(ShardWriter::Create({.dir = dir, .vocab_size = 100}).status().code(),
            absl::StatusCode::kAlreadyExists);
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
    o.tokenizer_sha256 = "feed";
    o.progress = false;
    absl::StatusOr<TokenizeCorpusResult> r = TokenizeCorpus(tok, o);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->manifest.num_documents, 5u);
    EXPECT_EQ(r->manifest.num_tokens, expected.size());
    EXPECT_GT(r->manifest.shards.size(), 5u);
    EXPECT_EQ(ReadAllTokens(o.out_dir), expected);
    EXPECT_TRUE(VerifyDataset(o.out_dir, true, "feed").ok());
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
