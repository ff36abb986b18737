// ShardTokenSource: the shards of a dataset read as one stream, verified on open.
#include "worker/train/shard_token_source.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tokenizer/shard_writer.h"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;

const std::string kSha(64, 'e');

class ShardTokenSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("shard_source_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    absl::StatusOr<tokenizer::ShardWriter> w = tokenizer::ShardWriter::Create(
        {.dir = dir_.string(), .shard_tokens = 3, .tokenizer_sha256 = kSha, .vocab_size = 50});
    ASSERT_TRUE(w.ok()) << w.status();
    std::vector<uint32_t> ids;
    for (uint32_t k = 0; k < 8; ++k) ids.push_back(k * 6 + 1);  // 1, 7, ..., 43
    ASSERT_TRUE(w->Append(ids).ok());
    ASSERT_TRUE(w->Finish().ok());
    manifest_ = (dir_ / "manifest.json").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path dir_;
  std::string manifest_;
};

TEST_F(ShardTokenSourceTest, ReadsAcrossShardBoundaries) {
  absl::StatusOr<ShardTokenSource> s =
      ShardTokenSource::Open(manifest_, {.tokenizer_sha256 = kSha, .vocab_size = 50});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->size(), 8);
  std::vector<int32_t> out(5);
  ASSERT_TRUE(s->Read(2, out).ok());
  EXPECT_THAT(out, testing::ElementsAre(13, 19, 25, 31, 37));
  EXPECT_EQ(s->Read(4, out).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(s->Read(-1, out).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(s->fingerprint().size(), 64u);
}

TEST_F(ShardTokenSourceTest, RefusesATokenizerWithAnotherVocabularySize) {
  absl::StatusOr<ShardTokenSource> s = ShardTokenSource::Open(manifest_, {.vocab_size = 512});
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.status().message(), testing::HasSubstr("tokenizer.vocab_size is 50"));
}

TEST_F(ShardTokenSourceTest, RefusesAChangedShard) {
  {
    std::fstream f(dir_ / "shard-000001.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(32);
    f.put(2);  // 19 -> 2: still a valid id
  }
  absl::StatusOr<ShardTokenSource> s = ShardTokenSource::Open(manifest_);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.status().message(), testing::HasSubstr("shard-000001.bin: sha256 is"));
}

}  // namespace
}  // namespace qtrain::train
