// The Qwen2 golden file: every line's ids, and decode(ids) == NFC(text) where roundtrip holds.
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/test_util.h"
#include "tokenizer/tokenizer.h"

namespace qtrain::tokenizer {
namespace {

TEST(GoldenTest, EveryLineEncodesToItsIdsAndRoundTrips) {
  const Tokenizer& tok = Qwen2Tokenizer();
  std::ifstream in(TestDataPath("qwen2/golden_dev.jsonl"));
  ASSERT_TRUE(in.good());
  std::string line;
  int lines = 0, roundtrips = 0;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    const std::string text = j["text"];
    const std::vector<uint32_t> expected = j["ids"].get<std::vector<uint32_t>>();
    absl::StatusOr<std::vector<uint32_t>> ids = tok.Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status() << " line " << lines + 1;
    EXPECT_EQ(*ids, expected) << "line " << lines + 1 << ": " << text;
    if (j["roundtrip"].get<bool>()) {
      absl::StatusOr<std::string> decoded = tok.Decode(*ids);
      ASSERT_TRUE(decoded.ok()) << decoded.status();
      EXPECT_EQ(*decoded, Nfc(text)) << "line " << lines + 1;
      ++roundtrips;
    }
    ++lines;
  }
  EXPECT_EQ(lines, 312);
  EXPECT_GT(roundtrips, 0);
}

}  // namespace
}  // namespace qtrain::tokenizer
