// tokenizer.json loading: both merge spellings, and refusal (naming the field) of every
// configuration this tokenizer does not implement.
#include "tokenizer/tokenizer_json.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/test_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/trainer.h"

namespace qtrain::tokenizer {
namespace {

using json = nlohmann::json;
using testing::HasSubstr;

// A small valid tokenizer.json (a few merges over "hello world" style text).
json SmallTokenizerJson() {
  const absl::flat_hash_map<std::string, uint64_t> counts = {
      {"hello", 5}, {" world", 4}, {" hello", 3}, {"lo", 2}};
  BpeTrainerOptions o;
  o.vocab_size = 270;
  absl::StatusOr<Tokenizer> t = TrainBpe(counts, o);
  EXPECT_TRUE(t.ok()) << t.status();
  return json::parse(t->ToJson());
}

absl::Status LoadError(const json& j) { return Tokenizer::FromJson(j.dump()).status(); }

TEST(TokenizerJsonTest, StringAndArrayMergesLoadTheSame) {
  json j = SmallTokenizerJson();
  json strings = json::array();
  for (const json& m : j["model"]["merges"]) {
    strings.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
  }
  absl::StatusOr<Tokenizer> arrays = Tokenizer::FromJson(j.dump());
  j["model"]["merges"] = strings;
  absl::StatusOr<Tokenizer> from_strings = Tokenizer::FromJson(j.dump());
  ASSERT_TRUE(arrays.ok()) << arrays.status();
  ASSERT_TRUE(from_strings.ok()) << from_strings.status();
  EXPECT_EQ(arrays->ToJson(), from_strings->ToJson());
  EXPECT_EQ(*arrays->Encode("hello world"), *from_strings->Encode("hello world"));
  EXPECT_EQ(arrays->Encode("hello world")->size(), 2u);
}

TEST(TokenizerJsonTest, RefusesWhatItDoesNotImplement) {
  const json base = SmallTokenizerJson();
  ASSERT_TRUE(LoadError(base).ok()) << LoadError(base);
  struct Case {
    const char* what;
    std::function<void(json&)> edit;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"NFKC",
       [](json& j) {
         j["normalizer"] = {{"type", "NFKC"}};
       },
       "normalizer: type 'NFKC'"},
      {"Lowercase in a sequence",
       [](json& j) {
         j["normalizer"] = {{"type", "Sequence"},
                            {"normalizers", {{{"type", "NFC"}}, {{"type", "Lowercase"}}}}};
       },
       "normalizer.normalizers[1]"},
      {"GPT-2 regex",
       [](json& j) {
         j["pre_tokenizer"] = {
             {"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
       },
       "pre_tokenizer: type 'ByteLevel'"},
      {"other split pattern",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+"; },
       "pretokenizers[0].pattern"},
      {"split behaviour",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; },
       "pretokenizers[0].behavior"},
      {"prefix space",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true; },
       "pretokenizers[1]: add_prefix_space"},
      {"no decoder", [](json& j) { j["decoder"] = nullptr; }, "decoder: type '(not an object)'"},
      {"template post-processor",
       [](json& j) {
         j["post_processor"] = {{"type", "TemplateProcessing"}};
       },
       "post_processor: type 'TemplateProcessing'"},
      {"truncation",
       [](json& j) {
         j["truncation"] = {{"max_length", 8}};
       },
       "truncation"},
      {"padding",
       [](json& j) {
         j["padding"] = {{"strategy", "BatchLongest"}};
       },
       "padding"},
      {"lstrip", [](json& j) { j["added_tokens"][0]["lstrip"] = true; }, "added_tokens[0].lstrip"},
      {"normalized added token", [](json& j) { j["added_tokens"][0]["normalized"] = true; },
       "added_tokens[0].normalized"},
      {"WordPiece", [](json& j) { j["model"]["type"] = "WordPiece"; }, "model.type"},
      {"dropout", [](json& j) { j["model"]["dropout"] = 0.1; }, "model.dropout"},
      {"suffix", [](json& j) { j["model"]["end_of_word_suffix"] = "</w>"; },
       "model.end_of_word_suffix"},
      {"merge of unknown token",
       [](json& j) {
         j["model"]["merges"].push_back({"zz", "q"});
       },
       "token 'zz'"},
      {"bad merge string", [](json& j) { j["model"]["merges"] = {"a b c"}; }, "model.merges[0]"},
      {"bad merge pair", [](json& j) { j["model"]["merges"] = {{"a"}}; }, "model.merges[0]"},
      {"merges not an array", [](json& j) { j["model"]["merges"] = 3; }, "model.merges"},
      {"missing byte", [](json& j) { j["model"]["vocab"].erase("a"); }, "byte 0x61"},
      {"negative id", [](json& j) { j["model"]["vocab"]["a"] = -1; }, "model.vocab['a']"},
      {"no vocab", [](json& j) { j["model"].erase("vocab"); }, "model.vocab"},
      {"id clash", [](json& j) { j["added_tokens"][0]["id"] = j["model"]["vocab"]["a"]; },
       "added_tokens"},
  };
  for (const Case& c : cases) {
    json j = base;
    c.edit(j);
    const absl::Status s = LoadError(j);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.what << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.message)) << c.what;
  }
  EXPECT_THAT(std::string(Tokenizer::FromJson("{\"model\": [").status().message()),
              HasSubstr("not valid JSON"));
  EXPECT_THAT(std::string(Tokenizer::FromJson("[]").status().message()),
              HasSubstr("not a JSON object"));
}

TEST(TokenizerJsonTest, NormalizerNullSkipsNfcAndSequenceOfNfcApplies) {
  json j = SmallTokenizerJson();
  const std::string decomposed = "e\xCC\x81";  // e + COMBINING ACUTE ACCENT
  j["normalizer"] = nullptr;
  absl::StatusOr<Tokenizer> raw = Tokenizer::FromJson(j.dump());
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ(*raw->Decode(*raw->Encode(decomposed)), decomposed);
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}}}};
  absl::StatusOr<Tokenizer> nfc = Tokenizer::FromJson(j.dump());
  ASSERT_TRUE(nfc.ok()) << nfc.status();
  EXPECT_EQ(*nfc->Decode(*nfc->Encode(decomposed)), "\xC3\xA9");
}

TEST(TokenizerJsonTest, IgnoreMergesTakesWholePiecesFromTheVocabulary) {
  // "lo" is a token; with ignore_merges a piece equal to a token is that token even when the
  // merges alone would not produce it.
  json j = SmallTokenizerJson();
  j["model"]["vocab"]["xyz"] = 270;
  absl::StatusOr<Tokenizer> plain = Tokenizer::FromJson(j.dump());
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(plain->Encode("xyz")->size(), 3u);
  j["model"]["ignore_merges"] = true;
  absl::StatusOr<Tokenizer> ignore = Tokenizer::FromJson(j.dump());
  ASSERT_TRUE(ignore.ok()) << ignore.status();
  EXPECT_EQ(*ignore->Encode("xyz"), std::vector<uint32_t>{270});
}

TEST(TokenizerJsonTest, Qwen2FilesRoundTripAndConfigParses) {
  const Tokenizer& tok = Qwen2Tokenizer();
  absl::StatusOr<Tokenizer> again = Tokenizer::FromJson(tok.ToJson());
  ASSERT_TRUE(again.ok()) << again.status();
  const std::string text = "Round trip: \xE4\xBD\xA0\xE5\xA5\xBD <|im_start|>x";
  EXPECT_EQ(*again->Encode(text), *tok.Encode(text));
  absl::StatusOr<TokenizerConfig> config = ParseTokenizerConfig(R"({"eos_token": "<|endoftext|>",
      "pad_token": {"content": "<|endoftext|>"}, "bos_token": null,
      "tokenizer_class": "Qwen2Tokenizer"})");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->eos_token, "<|endoftext|>");
  EXPECT_EQ(config->pad_token, "<|endoftext|>");
  EXPECT_FALSE(config->bos_token.has_value());
  EXPECT_EQ(config->tokenizer_class, "Qwen2Tokenizer");
}

// A tokenizer file is read whole: its size is bounded, and a FIFO or device (which would block or
// never end) is refused before anything is read.
TEST(TokenizerJsonTest, FromFileRefusesHugeFilesFifosAndDevices) {
  const std::string dir = ::testing::TempDir();
  const std::string huge = dir + "/huge_tokenizer_" + std::to_string(::getpid()) + ".json";
  {
    ScopedFd fd(::open(huge.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644));
    ASSERT_GE(fd.get(), 0);
    // Sparse: takes no disk space.
    ASSERT_EQ(::ftruncate(fd.get(), static_cast<off_t>(kMaxTokenizerFileBytes + 1)), 0);
  }
  const absl::Status huge_status = Tokenizer::FromFile(huge).status();
  ::unlink(huge.c_str());
  EXPECT_EQ(huge_status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(huge_status.message(), HasSubstr("more than the limit of 268435456 bytes (256 MiB)"));

  const std::string fifo = dir + "/fifo_tokenizer_" + std::to_string(::getpid()) + ".json";
  ::unlink(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  ::alarm(20);  // a blocked open fails the test instead of hanging it
  const absl::Status fifo_status = Tokenizer::FromFile(fifo).status();
  const absl::Status zero_status = Tokenizer::FromFile("/dev/zero").status();
  ::alarm(0);
  ::unlink(fifo.c_str());
  EXPECT_THAT(fifo_status.message(), HasSubstr("is a FIFO, not a regular file"));
  EXPECT_THAT(zero_status.message(), HasSubstr("/dev/zero is a character device"));
}

}  // namespace
}  // namespace qtrain::tokenizer
