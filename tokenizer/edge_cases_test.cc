// Cases that trip tokenizers up, with expectations from the reference implementation
// (testdata/edge_cases.jsonl, made by testdata/make_edge_cases.py).
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/normalizer.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/test_util.h"
#include "tokenizer/tokenizer.h"

namespace qtrain::tokenizer {
namespace {

std::vector<nlohmann::json> LoadCases() {
  std::vector<nlohmann::json> cases;
  std::ifstream in(TestDataPath("edge_cases.jsonl"));
  std::string line;
  while (std::getline(in, line)) cases.push_back(nlohmann::json::parse(line));
  return cases;
}

TEST(EdgeCasesTest, IdsPiecesAndDecodeMatchReference) {
  const Tokenizer& tok = Qwen2Tokenizer();
  const std::vector<nlohmann::json> cases = LoadCases();
  ASSERT_GT(cases.size(), 500u);
  int with_pieces = 0, with_prefixes = 0;
  for (const nlohmann::json& c : cases) {
    const std::string text = c["text"];
    SCOPED_TRACE(testing::Message() << "text: " << nlohmann::json(text).dump());
    absl::StatusOr<std::vector<uint32_t>> ids = tok.Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(*ids, c["ids"].get<std::vector<uint32_t>>());
    if (c.contains("pieces")) {
      std::string scratch;
      absl::StatusOr<std::string_view> nfc = NormalizeNfc(text, &scratch);
      ASSERT_TRUE(nfc.ok());
      EXPECT_EQ(SplitQwen2ToVector(*nfc), c["pieces"].get<std::vector<std::string>>());
      ++with_pieces;
    }
    absl::StatusOr<std::string> decoded = tok.Decode(*ids);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, c["decoded"].get<std::string>());
    if (c.contains("prefix_decoded")) {
      const auto& prefixes = c["prefix_decoded"];
      for (size_t k = 0; k <= ids->size(); ++k) {
        absl::StatusOr<std::string> d = tok.Decode(std::span<const uint32_t>(ids->data(), k));
        ASSERT_TRUE(d.ok());
        EXPECT_EQ(*d, prefixes[k].get<std::string>()) << "prefix " << k;
      }
      ++with_prefixes;
    }
  }
  EXPECT_GT(with_pieces, 300);
  EXPECT_GT(with_prefixes, 3);
}

TEST(EncodeTest, EmptyInputGivesNoIds) {
  absl::StatusOr<std::vector<uint32_t>> ids = Qwen2Tokenizer().Encode("");
  ASSERT_TRUE(ids.ok());
  EXPECT_TRUE(ids->empty());
}

TEST(EncodeTest, SpecialTokensAreSingleIdsAndPartialOnesAreText) {
  const Tokenizer& tok = Qwen2Tokenizer();
  absl::StatusOr<std::vector<uint32_t>> ids = tok.Encode("a<|endoftext|>b<|endof");
  ASSERT_TRUE(ids.ok());
  EXPECT_THAT(*ids, testing::Contains(151643u).Times(1));
  EXPECT_EQ((*ids)[1], 151643u);
  absl::StatusOr<std::vector<uint32_t>> partial = tok.Encode("<|endof");
  ASSERT_TRUE(partial.ok());
  EXPECT_THAT(*partial, testing::Not(testing::Contains(151643u)));
  EXPECT_GT(partial->size(), 1u);
}

TEST(EncodeTest, InvalidUtf8IsRefusedWithTheOffset) {
  const Tokenizer& tok = Qwen2Tokenizer();
  absl::StatusOr<std::vector<uint32_t>> ids = tok.Encode("ok<|endoftext|>bad\xFF");
  ASSERT_FALSE(ids.ok());
  EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ids.status().message().find("byte offset 3"), std::string::npos) << ids.status();
  EXPECT_NE(ids.status().message().find("segment starting at byte 15"), std::string::npos);
}

TEST(EncodeTest, OneMegabyteSingleLine) {
  // One 1 MiB piece (a single letter run) takes the heap merge path; a 1 MiB line of words
  // takes the cached path. Both must agree with the piece-wise encoding.
  const Tokenizer& tok = Qwen2Tokenizer();
  const std::string letters(1 << 20, 'a');
  absl::StatusOr<std::vector<uint32_t>> ids = tok.Encode(letters);
  ASSERT_TRUE(ids.ok());
  absl::StatusOr<std::string> back = tok.Decode(*ids);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, letters);
  // Every 'a' run of the same length encodes the same way: check against a 4096-byte run.
  absl::StatusOr<std::vector<uint32_t>> small = tok.Encode(std::string(4096, 'a'));
  ASSERT_TRUE(small.ok());
  EXPECT_LT(ids->size(), letters.size() / 4);
  std::string words;
  while (words.size() < (1u << 20)) words += "the quick brown fox, 42 jumps\tover ";
  absl::StatusOr<std::vector<uint32_t>> word_ids = tok.Encode(words);
  ASSERT_TRUE(word_ids.ok());
  absl::StatusOr<std::string> words_back = tok.Decode(*word_ids);
  ASSERT_TRUE(words_back.ok());
  EXPECT_EQ(*words_back, words);
}

TEST(DecodeTest, SkipsSpecialTokensOnRequestAndRefusesUnknownIds) {
  const Tokenizer& tok = Qwen2Tokenizer();
  const std::vector<uint32_t> ids = {151644, 9707, 151645};
  absl::StatusOr<std::string> kept = tok.Decode(ids);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, "<|im_start|>Hello<|im_end|>");
  absl::StatusOr<std::string> skipped = tok.Decode(ids, /*skip_special_tokens=*/true);
  ASSERT_TRUE(skipped.ok());
  EXPECT_EQ(*skipped, "Hello");
  const std::vector<uint32_t> bad = {9707, 151646};
  absl::StatusOr<std::string> r = tok.Decode(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("ids[1]"), std::string::npos) << r.status();
}

TEST(TokenizerTest, Qwen2VocabularyShape) {
  const Tokenizer& tok = Qwen2Tokenizer();
  EXPECT_EQ(tok.vocab_size(), 151646u);
  EXPECT_EQ(tok.model().vocab_count(), 151643u);
  EXPECT_EQ(tok.model().merge_count(), 151387u);
  EXPECT_EQ(tok.added_tokens().size(), 3u);
  EXPECT_EQ(tok.TokenToId("<|im_end|>"), 151645u);
  EXPECT_EQ(tok.IdToToken(9707), "Hello");
  EXPECT_TRUE(tok.IsSpecial(151643));
  EXPECT_FALSE(tok.IsSpecial(9707));
}

}  // namespace
}  // namespace qtrain::tokenizer
