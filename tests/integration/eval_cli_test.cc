// `qtrain eval` end to end: every task on a tiny random model with the Qwen2 tokenizer, the JSON
// result and the heatmap on disk, and clean failures for bad input.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/cli_process.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using ::qtrain::testing_cli::CliOptions;
using ::qtrain::testing_cli::CliResult;
using ::qtrain::testing_cli::QtrainBinary;
using ::qtrain::testing_cli::RunCli;
using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr char kTokenizer[] = "tokenizer/testdata/qwen2/tokenizer.json";

class EvalCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::path(::testing::TempDir()) / "eval_cli");
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    const CliResult r = Run({"init", "--preset", "qwen2-test", "--vocab-size", "151646", "--out",
                             (*root_ / "model").string()},
                            "init");
    ASSERT_TRUE(r.exited && r.exit_code == 0) << r;
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }

  static CliResult Run(std::vector<std::string> args, const std::string& name) {
    args.insert(args.begin(), QtrainBinary());
    CliOptions options;
    options.address_space_bytes = uint64_t{4} << 30;
    options.timeout_seconds = 120;
    return RunCli(args, *root_ / (name + ".log"), options);
  }

  static std::string Write(const std::string& name, const std::string& content) {
    const fs::path p = *root_ / name;
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }

  // qtrain eval with the model and tokenizer; the result parsed from --out.
  static Json Eval(std::vector<std::string> args, const std::string& name) {
    const std::string out = (*root_ / (name + ".json")).string();
    std::vector<std::string> full = {
        "eval", "--model", (*root_ / "model").string(), "--tokenizer", kTokenizer, "--out", out};
    full.insert(full.end(), args.begin(), args.end());
    const CliResult r = Run(full, name);
    EXPECT_TRUE(r.exited && r.exit_code == 0) << r;
    EXPECT_THAT(r.output, HasSubstr("metric"));  // the table on stderr
    auto text = ReadFileToString(out);
    if (!text.ok()) return Json();
    return Json::parse(*text, nullptr, false);
  }

  static CliResult EvalFails(std::vector<std::string> args, const std::string& name) {
    std::vector<std::string> full = {"eval", "--model", (*root_ / "model").string(), "--tokenizer",
                                     kTokenizer};
    full.insert(full.end(), args.begin(), args.end());
    CliResult r = Run(full, name);
    EXPECT_TRUE(r.exited) << r;  // no crash
    EXPECT_NE(r.exit_code, 0) << r;
    return r;
  }

  static fs::path* root_;
};
fs::path* EvalCliTest::root_ = nullptr;

TEST_F(EvalCliTest, Perplexity) {
  const std::string data = Write("ppl.jsonl",
                                 "{\"text\": \"The quick brown fox jumps over the lazy dog.\"}\n"
                                 "{\"text\": \"A second line of text to score.\"}\n");
  const Json r =
      Eval({"--task", "perplexity", "--data", data, "--seq-len", "8", "--stride", "4"}, "ppl");
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["task"], "perplexity");
  EXPECT_GT(r["metrics"]["tokens"].get<int64_t>(), 10);
  EXPECT_GT(r["metrics"]["perplexity"].get<double>(), 1.0);
  EXPECT_TRUE(r["metrics"].contains("bits_per_byte"));
  EXPECT_EQ(r["buckets"].size(), 4u);  // [0,1) [1,2) [2,4) [4,8)
}

TEST_F(EvalCliTest, MultipleChoiceToStdoutAndFile) {
  const std::string data =
      Write("mc.jsonl",
            "{\"context\": \"The sky is\", \"choices\": [\"blue\", \"green\"], \"label\": 0}\n"
            "{\"context\": \"\", \"choices\": [\"yes\", \"no\"], \"label\": 1}\n");
  const Json r = Eval(
      {"--task", "multiple-choice", "--data", data, "--per-example", "--name", "tiny-mc"}, "mc");
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["name"], "tiny-mc");
  EXPECT_EQ(r["metrics"]["count"], 2);
  ASSERT_EQ(r["examples"].size(), 2u);
  EXPECT_EQ(r["examples"][1]["loglikelihoods"].size(), 2u);
  // Without --out the JSON is stdout.
  CliOptions options;
  options.stdout_path = *root_ / "mc_stdout.json";
  options.timeout_seconds = 120;
  const CliResult s =
      RunCli({QtrainBinary(), "eval", "--model", (*root_ / "model").string(), "--tokenizer",
              kTokenizer, "--task", "multiple-choice", "--data", data, "--limit", "1"},
             *root_ / "mc_stdout.log", options);
  ASSERT_TRUE(s.exited && s.exit_code == 0) << s;
  auto text = ReadFileToString((*root_ / "mc_stdout.json").string());
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(Json::parse(*text)["metrics"]["count"], 1);
}

TEST_F(EvalCliTest, Generation) {
  const std::string data =
      Write("gen.jsonl",
            "{\"prompt\": \"Q: 2 + 2?\\nA:\", \"answer\": \"#### 4\", \"stop\": "
            "[\"\\n\"]}\n");
  const Json r = Eval(
      {"--task", "generation", "--data", data, "--max-new-tokens", "4", "--per-example"}, "gen");
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["metrics"]["count"], 1);
  EXPECT_EQ(r["examples"][0]["reference"], "4");
}

TEST_F(EvalCliTest, NeedleWithHeatmap) {
  const Json r = Eval(
      {"--task", "needle", "--lengths", "100,200", "--depths", "0,0.5,1", "--max-new-tokens", "4"},
      "nih");
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["grid"]["accuracy"].size(), 3u);
  EXPECT_EQ(r["grid"]["accuracy"][0].size(), 2u);
  auto svg = ReadFileToString((*root_ / "nih.svg").string());
  ASSERT_TRUE(svg.ok()) << svg.status();
  EXPECT_THAT(*svg, HasSubstr("<svg"));
  EXPECT_THAT(*svg, HasSubstr("</svg>"));
}

TEST_F(EvalCliTest, BadInputFailsCleanly) {
  const std::string bad_label =
      Write("bad.jsonl", "{\"context\": \"x\", \"choices\": [\"a\"], \"label\": 2}\n");
  EXPECT_THAT(EvalFails({"--task", "multiple-choice", "--data", bad_label}, "bad_label").output,
              HasSubstr("bad.jsonl:1: \"label\" 2 is out of range"));
  const std::string bad_json = Write("badjson.jsonl", "{\"context\": \n");
  EXPECT_THAT(EvalFails({"--task", "multiple-choice", "--data", bad_json}, "bad_json").output,
              HasSubstr("badjson.jsonl:1: not valid JSON"));
  EXPECT_THAT(EvalFails({"--task", "bogus"}, "bogus").output, HasSubstr("unknown eval task"));
  EXPECT_THAT(EvalFails({"--task", "needle", "--lengths", "4k"}, "too_long").output,
              HasSubstr("context"));
  EXPECT_THAT(EvalFails({"--task", "needle", "--depths", "2"}, "depth").output,
              HasSubstr("--depths"));
  EXPECT_THAT(EvalFails({"--task", "perplexity"}, "no_data").output, HasSubstr("--data"));
  const std::string gen = Write("g.jsonl", "{\"prompt\": \"p\", \"answer\": \"1\"}\n");
  EXPECT_THAT(
      EvalFails({"--task", "generation", "--data", gen, "--answer-regex", "(["}, "regex").output,
      HasSubstr("answer_regex"));
  EXPECT_THAT(EvalFails({"--task", "generation", "--data", gen, "--dca", "x"}, "dca").output,
              HasSubstr("--dca"));
}

}  // namespace
}  // namespace qtrain
