// BPE training: exact merges on small inputs, determinism, and round trip through
// tokenizer.json.
#include "tokenizer/trainer.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/test_util.h"

namespace qtrain::tokenizer {
namespace {

std::vector<std::string> Merges(const Tokenizer& t) {
  std::vector<std::string> out;
  for (const auto& [a, b] : t.model().merges()) {
    out.push_back(t.model().Token(a) + " " + t.model().Token(b));
  }
  return out;
}

TEST(TrainerTest, MergesMostFrequentPairFirst) {
  // Pairs: (a,b) 3+2 = 5, (b,c) 2: a+b first, then ab+c.
  const absl::flat_hash_map<std::string, uint64_t> counts = {{"ab", 3}, {"abc", 2}};
  BpeTrainerOptions o;
  o.vocab_size = 256 + 2 + 1;
  absl::StatusOr<Tokenizer> t = TrainBpe(counts, o);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(Merges(*t), testing::ElementsAre("a b", "ab c"));
  EXPECT_EQ(t->vocab_size(), 259u);
  EXPECT_EQ(t->TokenToId("<|endoftext|>"), 258u);
  EXPECT_EQ(t->TokenToId("abc"), 257u);
  // " " is the byte-level "\u0120", id 220 in the alphabet order (as in Qwen2).
  EXPECT_EQ(*t->Encode("abc ab"), (std::vector<uint32_t>{257, 220, 256}));
}

TEST(TrainerTest, TiesGoToTheSmallestBytesAndMinFrequencyStops) {
  const absl::flat_hash_map<std::string, uint64_t> counts = {{"xy", 1}, {"ab", 1}, {"qq", 1}};
  BpeTrainerOptions o;
  o.vocab_size = 300;
  o.min_frequency = 1;
  o.special_tokens = {};
  absl::StatusOr<Tokenizer> t = TrainBpe(counts, o);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(Merges(*t), testing::ElementsAre("a b", "q q", "x y"));
  o.min_frequency = 2;
  t = TrainBpe(counts, o);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(Merges(*t).empty());
}

TEST(TrainerTest, RefusesBadOptions) {
  BpeTrainerOptions o;
  o.vocab_size = 256;
  EXPECT_EQ(TrainBpe({}, o).status().code(), absl::StatusCode::kInvalidArgument);
  o.vocab_size = 300;
  o.special_tokens = {"<s>", "<s>"};
  EXPECT_EQ(TrainBpe({}, o).status().code(), absl::StatusCode::kInvalidArgument);
}

std::string GoldenTexts(int parity) {
  std::ifstream in(TestDataPath("qwen2/golden_dev.jsonl"));
  std::string line, all;
  for (int k = 0; std::getline(in, line); ++k) {
    if (k % 4 == parity) all += nlohmann::json::parse(line)["text"].get<std::string>() + "\n";
  }
  return all;
}

TEST(TrainerTest, TrainedTokenizerRoundTripsThroughJsonAndIsDeterministic) {
  const ScopedTempDir tmp("trainer");
  const std::string& dir = tmp.path();
  const std::string corpus = dir + "/corpus.txt";
  std::ofstream(corpus) << GoldenTexts(0) << GoldenTexts(1) << GoldenTexts(2);
  BpeTrainerOptions o;
  o.vocab_size = 1000;
  o.special_tokens = {"<|endoftext|>", "<|pad|>"};
  absl::StatusOr<Tokenizer> one = TrainBpeOnFiles({corpus}, o);
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_EQ(one->vocab_size(), 1000u);
  o.jobs = 2;
  absl::StatusOr<Tokenizer> two = TrainBpeOnFiles({corpus}, o);
  ASSERT_TRUE(two.ok());
  const std::string json = one->ToJson();
  EXPECT_EQ(json, two->ToJson());

  absl::StatusOr<Tokenizer> reloaded = Tokenizer::FromJson(json);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  EXPECT_EQ(reloaded->ToJson(), json);
  const std::string held_out = GoldenTexts(3) + "<|pad|>tail<|endoftext|>";
  absl::StatusOr<std::vector<uint32_t>> a = one->Encode(held_out);
  absl::StatusOr<std::vector<uint32_t>> b = reloaded->Encode(held_out);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_LT(a->size(), held_out.size() / 2);  // it learned something
  EXPECT_EQ(*reloaded->Decode(*b), Nfc(held_out));

  const nlohmann::json config = nlohmann::json::parse(TrainedTokenizerConfig(*one));
  EXPECT_EQ(config["eos_token"], "<|endoftext|>");
  EXPECT_EQ(config["added_tokens_decoder"]["999"]["content"], "<|pad|>");
}

}  // namespace
}  // namespace qtrain::tokenizer
