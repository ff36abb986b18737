// Opening corpus inputs: only regular files, never blocking, read errors and overlong .jsonl
// lines named.
#include "tokenizer/corpus_reader.h"

#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "common/file_util.h"
#include "common/line_reader.h"
#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tokenizer/test_util.h"

namespace qtrain::tokenizer {
namespace {

using ::testing::HasSubstr;

// All chunks' text, or the error that stopped the reading.
absl::StatusOr<std::vector<std::string>> ReadAll(std::vector<std::string> paths) {
  QTRAIN_ASSIGN_OR_RETURN(CorpusReader reader, CorpusReader::Open(std::move(paths), 16));
  std::vector<std::string> texts;
  TextChunk chunk;
  while (true) {
    QTRAIN_ASSIGN_OR_RETURN(const bool more, reader.Next(&chunk));
    if (!more) break;
    texts.push_back(chunk.text);
  }
  EXPECT_EQ(reader.bytes_read(), reader.total_bytes());
  return texts;
}

TEST(CorpusReaderTest, ReadsPlainAndJsonlFiles) {
  const ScopedTempDir tmp("corpus_read");
  ASSERT_TRUE(WriteFileAtomically(tmp.path() + "/a.txt", "plain\ntext\n").ok());
  ASSERT_TRUE(
      WriteFileAtomically(tmp.path() + "/b.jsonl", "{\"text\": \"one\"}\n\n{\"text\": \"two\"}")
          .ok());
  ASSERT_TRUE(WriteFileAtomically(tmp.path() + "/empty.txt", "").ok());
  auto texts = ReadAll({tmp.path() + "/a.txt", tmp.path() + "/b.jsonl", tmp.path() + "/empty.txt"});
  ASSERT_TRUE(texts.ok()) << texts.status();
  EXPECT_EQ(*texts, (std::vector<std::string>{"plain\ntext\n", "one", "two", ""}));
}

// A FIFO input would block a plain open forever and /dev/zero never ends: both are named, with
// what they are, before anything is read.
TEST(CorpusReaderTest, NonRegularInputsAreRefusedByKind) {
  const ScopedTempDir tmp("corpus_kinds");
  const std::string fifo = tmp.path() + "/corpus.jsonl";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  ::alarm(20);  // a blocked open fails the test instead of hanging it
  const absl::Status fifo_status = CorpusReader::Open({fifo}).status();
  ::alarm(0);
  EXPECT_EQ(fifo_status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(fifo_status.message(), HasSubstr("corpus.jsonl is a FIFO, not a regular file"));
  EXPECT_THAT(CorpusReader::Open({"/dev/zero"}).status().message(),
              HasSubstr("/dev/zero is a character device, not a regular file"));
  EXPECT_THAT(CorpusReader::Open({tmp.path()}).status().message(),
              HasSubstr("is a directory, not a regular file"));
  const absl::Status missing = CorpusReader::Open({tmp.path() + "/missing.txt"}).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("missing.txt"));
}

TEST(CorpusReaderTest, OverlongJsonlLineIsNamedWithTheLimit) {
  const ScopedTempDir tmp("corpus_long");
  const std::string path = tmp.path() + "/long.jsonl";
  ASSERT_TRUE(
      WriteFileAtomically(path, "{\"text\": \"ok\"}\n" + std::string(kMaxLineBytes + 1, ' ')).ok());
  auto texts = ReadAll({path});
  EXPECT_EQ(texts.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(texts.status().message(),
              HasSubstr("long.jsonl line 2 is longer than the limit of 67108864 bytes"));
}

}  // namespace
}  // namespace qtrain::tokenizer
