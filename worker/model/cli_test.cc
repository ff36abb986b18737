// End-to-end checks of `qtrain init`, `score` and `generate` (cli/model_commands.cc) against the
// library: the binary's numbers must be the model's numbers.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/model/checkpoint_io.h"
#include "worker/model/model.h"
#include "worker/model/sampler.h"

namespace qtrain::model {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

std::string Qtrain() {
  const char* bin = std::getenv("QTRAIN_BIN_DIR");
  return std::string(bin ? bin : "build/bin") + "/qtrain";
}

// Runs a shell command; returns its stdout, or fails the test on a non-zero exit.
std::string RunCommand(const std::string& command, int expected_exit = 0) {
  FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr) << command;
  if (pipe == nullptr) return "";
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  const int status = pclose(pipe);
  EXPECT_EQ(WEXITSTATUS(status), expected_exit) << command;
  return out;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (fs::path(::testing::TempDir()) / "model_cli_test").string();
    fs::remove_all(dir_);
    RunCommand(Qtrain() + " init --preset qwen2-test --seed 3 --out " + dir_ + " 2>/dev/null");
    auto loaded = LoadCheckpoint(dir_);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto model = Model::Create(loaded->config);
    ASSERT_TRUE(model.ok());
    std::copy(loaded->params.begin(), loaded->params.end(), model->params().begin());
    model_ = std::make_unique<Model>(std::move(*model));
  }
  std::string dir_;
  std::unique_ptr<Model> model_;
};

TEST_F(CliTest, ScoreMatchesTheLibrary) {
  const std::vector<int32_t> ids = {4, 9, 1, 30, 7, 7, 2};
  const std::string input = dir_ + "/input.jsonl";
  std::ofstream(input) << Json({{"ids", ids}}).dump() << "\n"
                       << R"({"ids": [5]})"
                       << "\n";
  const std::string out = RunCommand(Qtrain() + " score --model " + dir_ + " < " + input);
  const auto newline = out.find('\n');
  ASSERT_NE(newline, std::string::npos) << out;
  const Json first = Json::parse(out.substr(0, newline));
  const Json second = Json::parse(out.substr(newline + 1));
  std::vector<int32_t> targets(ids.begin() + 1, ids.end());
  targets.push_back(kIgnoreIndex);
  std::vector<float> logprobs;
  const int64_t n = static_cast<int64_t>(ids.size());
  ASSERT_TRUE(model_
                  ->Forward({.batch_size = 1, .seq_len = n, .ids = ids, .targets = targets},
                            {.target_logprobs = &logprobs})
                  .ok());
  ASSERT_EQ(first["tokens"], n);
  ASSERT_EQ(first["logprobs"].size(), ids.size() - 1);
  double sum = 0;
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    EXPECT_FLOAT_EQ(first["logprobs"][i].get<float>(), logprobs[i]);
    sum += logprobs[i];
  }
  EXPECT_NEAR(first["sum"].get<double>(), sum, 1e-5);
  EXPECT_EQ(second["tokens"], 1);
  EXPECT_TRUE(second["logprobs"].empty());

  // A bad line is an error naming the line.
  std::ofstream(input) << R"({"ids": [1, 2]})"
                       << "\n"
                       << R"({"ids": [1, 999]})"
                       << "\n";
  RunCommand(Qtrain() + " score --model " + dir_ + " < " + input + " 2>/dev/null", 1);
}

TEST_F(CliTest, GreedyGenerateMatchesTheLibrary) {
  const std::vector<int32_t> prompt = {3, 1, 4, 1, 5};
  const Json out = Json::parse(RunCommand(Qtrain() + " generate --model " + dir_ +
                                          " --prompt-ids 3,1,4,1,5 --max-new-tokens 6 --json"));
  auto cache = KvCache::Create(*model_, 11);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits(model_->config().vocab_size);
  ASSERT_TRUE(model_->Decode(prompt, *cache, logits).ok());
  std::vector<int32_t> expected;
  for (int step = 0; step < 6; ++step) {
    const int32_t next = static_cast<int32_t>(Argmax(logits));
    expected.push_back(next);
    ASSERT_TRUE(model_->Decode(std::span<const int32_t>(&next, 1), *cache, logits).ok());
  }
  EXPECT_EQ(out["ids"].get<std::vector<int32_t>>(), expected);
  EXPECT_EQ(out["prompt_ids"].get<std::vector<int32_t>>(), prompt);
  // Sampling is reproducible from the seed.
  const std::string sample =
      " generate --model " + dir_ + " --prompt-ids 3,1 --max-new-tokens 8 --temperature 1 --seed 9";
  EXPECT_EQ(RunCommand(Qtrain() + sample), RunCommand(Qtrain() + sample));
}

TEST(CliErrorsTest, InitRefusesUnknownPreset) {
  RunCommand(
      Qtrain() + " init --preset qwen2-huge --out " + ::testing::TempDir() + "/x 2>/dev/null", 1);
}

}  // namespace
}  // namespace qtrain::model
