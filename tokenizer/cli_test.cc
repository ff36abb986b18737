// The `qtrain` tokenizer subcommands, run as a process: encode, decode, tokenize,
// train-tokenizer.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tokenizer/shard_format.h"
#include "tokenizer/test_util.h"

namespace qtrain::tokenizer {
namespace {

class CliTest : public testing::Test {
 protected:
  void SetUp() override {
    // tests/test_main.cc sets QTRAIN_BIN_DIR to this build's binaries.
    qtrain_ = std::string(std::getenv("QTRAIN_BIN_DIR")) + "/qtrain";
    ASSERT_TRUE(std::filesystem::exists(qtrain_)) << qtrain_ << " is not built";
    tmp_ = std::make_unique<ScopedTempDir>(
        std::string("cli_") + testing::UnitTest::GetInstance()->current_test_info()->name());
    dir_ = tmp_->path();
  }

  // Runs `qtrain ARGS < stdin`; returns the exit status, fills stdout/stderr.
  int Run(const std::string& args, const std::string& input, std::string* out, std::string* err) {
    const std::string in_path = dir_ + "/stdin", out_path = dir_ + "/stdout",
                      err_path = dir_ + "/stderr";
    std::ofstream(in_path, std::ios::binary) << input;
    const std::string cmd = "'" + qtrain_ + "' " + args + " < '" + in_path + "' > '" + out_path +
                            "' 2> '" + err_path + "'";
    const int rc = std::system(cmd.c_str());
    auto slurp = [](const std::string& p) {
      std::ifstream f(p, std::ios::binary);
      std::stringstream s;
      s << f.rdbuf();
      return s.str();
    };
    *out = slurp(out_path);
    *err = slurp(err_path);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  }

  std::string qtrain_;
  std::unique_ptr<ScopedTempDir> tmp_;
  std::string dir_;
};

TEST_F(CliTest, EncodeGivesGoldenIdsOneLinePerInputAndDecodeInverts) {
  std::ifstream golden(TestDataPath("qwen2/golden_dev.jsonl"));
  std::string line, input;
  std::vector<nlohmann::json> expected;
  while (std::getline(golden, line) && expected.size() < 40) {
    const nlohmann::json j = nlohmann::json::parse(line);
    input += nlohmann::json{{"text", j["text"]}}.dump() + "\n";
    expected.push_back(j);
  }
  const std::string tok = "--tokenizer '" + TestDataPath("qwen2/tokenizer.json") + "'";
  std::string out, err;
  ASSERT_EQ(Run("encode " + tok, input, &out, &err), 0) << err;
  std::istringstream lines(out);
  std::string ids_input;
  for (const nlohmann::json& e : expected) {
    ASSERT_TRUE(std::getline(lines, line));
    const nlohmann::json got = nlohmann::json::parse(line);
    EXPECT_EQ(got["ids"], e["ids"]) << e["text"];
    ids_input += got.dump() + "\n";
  }
  EXPECT_FALSE(std::getline(lines, line)) << "extra output: " << line;

  ASSERT_EQ(Run("decode " + tok, ids_input, &out, &err), 0) << err;
  std::istringstream texts(out);
  for (const nlohmann::json& e : expected) {
    ASSERT_TRUE(std::getline(texts, line));
    if (e["roundtrip"].get<bool>()) {
      EXPECT_EQ(nlohmann::json::parse(line)["text"], Nfc(e["text"].get<std::string>()));
    }
  }
  ASSERT_EQ(Run("decode --skip-special-tokens " + tok, "{\"ids\": [151643, 9707]}\n", &out, &err),
            0);
  EXPECT_EQ(out, "{\"text\":\"Hello\"}\n");
}

TEST_F(CliTest, BadInputFailsNamingTheLine) {
  const std::string tok = "--tokenizer '" + TestDataPath("qwen2/tokenizer.json") + "'";
  std::string out, err;
  EXPECT_EQ(Run("encode " + tok, "{\"text\": \"ok\"}\n{\"text\": 5}\n", &out, &err), 1);
  EXPECT_THAT(err, testing::HasSubstr("stdin line 2"));
  EXPECT_EQ(Run("decode " + tok, "{\"ids\": [1, 999999]}\n", &out, &err), 1);
  EXPECT_THAT(err, testing::HasSubstr("999999"));
}

TEST_F(CliTest, TokenizeWritesVerifiableShards) {
  std::ofstream(dir_ + "/a.jsonl") << "{\"text\": \"first document\"}\n{\"text\": \"second\"}\n";
  std::ofstream(dir_ + "/b.txt") << "A plain text file.\nTwo lines.\n";
  const std::string tok_path = TestDataPath("qwen2/tokenizer.json");
  std::string out, err;
  ASSERT_EQ(Run("tokenize --tokenizer '" + tok_path + "' --out '" + dir_ +
                    "/ds' --shard-tokens 5 "
                    "--jobs 2 '" +
                    dir_ + "/a.jsonl' '" + dir_ + "/b.txt'",
                "", &out, &err),
            0)
      << err;
  EXPECT_THAT(err, testing::HasSubstr("3 documents"));
  absl::StatusOr<std::string> sha = Sha256File(tok_path);
  ASSERT_TRUE(sha.ok());
  EXPECT_TRUE(VerifyDataset(dir_ + "/ds", true, *sha).ok());
  absl::StatusOr<ShardManifest> m = ReadShardManifest(dir_ + "/ds");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->vocab_size, 151646u);
  EXPECT_EQ(m->eos_id, 151643u);
  EXPECT_GT(m->shards.size(), 2u);
  // A second run into the same directory refuses to overwrite the dataset.
  EXPECT_EQ(Run("tokenize --quiet --tokenizer '" + tok_path + "' --out '" + dir_ + "/ds' '" + dir_ +
                    "/b.txt'",
                "", &out, &err),
            1);
  EXPECT_THAT(err, testing::HasSubstr("already holds a dataset"));
}

TEST_F(CliTest, TrainTokenizerWritesLoadableFiles) {
  std::ofstream corpus(dir_ + "/corpus.txt");
  for (int k = 0; k < 200; ++k) corpus << "the cat sat on the mat " << k << "\n";
  corpus.close();
  std::string out, err;
  ASSERT_EQ(Run("train-tokenizer --quiet --vocab-size 300 --out '" + dir_ + "/tok' '" + dir_ +
                    "/corpus.txt'",
                "", &out, &err),
            0)
      << err;
  absl::StatusOr<Tokenizer> t = Tokenizer::FromFile(dir_ + "/tok/tokenizer.json");
  ASSERT_TRUE(t.ok()) << t.status();
  // The corpus runs out of pairs seen twice before 300 tokens; the special token comes last.
  EXPECT_GT(t->vocab_size(), 260u);
  EXPECT_LE(t->vocab_size(), 300u);
  EXPECT_EQ(t->TokenToId("<|endoftext|>"), t->vocab_size() - 1);
  EXPECT_EQ(t->Encode(" the mat")->size(), 2u);
  EXPECT_TRUE(std::filesystem::exists(dir_ + "/tok/tokenizer_config.json"));
}

}  // namespace
}  // namespace qtrain::tokenizer
