// `qtrain eval` on a model trained for a few steps by `qtrain train`: perplexity against the
// log-probabilities of `qtrain score` over the same windows, generation against `qtrain
// generate`, with answers built from what the model actually writes, and the needle grid and
// heatmap with and without Dual Chunk Attention.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <regex>
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
using Json = nlohmann::json;

// The last number of a text, as the generation task's fallback finds it.
std::string LastNumber(const std::string& text) {
  static const std::regex kNumber("-?[0-9][0-9,]*(\\.[0-9]+)?");
  std::string last;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), kNumber);
       it != std::sregex_iterator(); ++it) {
    last = it->str();
  }
  last.erase(std::remove(last.begin(), last.end(), ','), last.end());
  return last;
}

class EvalTrainedTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::path(::testing::TempDir()) /
                         ("eval_trained_" + std::to_string(::getpid())));
    fs::remove_all(*root_);
    fs::create_directories(*root_);
    // Numbers among the words, so that some greedy continuations contain one.
    testing_cli::TrainingDataOptions data_options;
    data_options.words = {"the", "model",  "learns", "7",    "tokens",   "from", "a",     "small",
                          "42",  "corpus", "and",    "1250", "predicts", "what", "comes", "next"};
    data_options.word_count = 4000;
    const absl::StatusOr<testing_cli::TrainingData> data =
        testing_cli::PrepareTrainingData(*root_, data_options);
    ASSERT_TRUE(data.ok()) << data.status();
    std::ofstream(*root_ / "job.yaml")
        << "name: eval-e2e\nseed: 5\n"
        << "model: {config: {vocab_size: 320, hidden_size: 32, intermediate_size: 48, "
           "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
           "max_position_embeddings: 512}}\n"
        << "tokenizer: " << data->tokenizer.string() << "\n"
        << "data: {manifest: " << data->manifest.string() << "}\n"
        << "curriculum:\n"
        << "  - {name: short, seq_len: 32, tokens: 16384, micro_batch: 4}\n"
        << "optimizer: {lr: 1e-2, min_lr: 1e-3, warmup_steps: 2}\n"
        << "batch: {global_tokens: 256}\n";
    const CliResult train = Run(
        {"train", (*root_ / "job.yaml").string(), "--run-dir", (*root_ / "run").string()}, "train");
    ASSERT_TRUE(train.exited && train.exit_code == 0) << train;
    model_ = new std::string((*root_ / "run" / "final").string());
    tokenizer_ = new std::string((*root_ / "run" / "final" / "tokenizer.json").string());
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
    delete model_;
    delete tokenizer_;
  }

  void SetUp() override {
    if (model_ == nullptr) GTEST_SKIP() << "the model was not trained (see SetUpTestSuite)";
  }

  // A qtrain command (stdout and stderr to <name>.log, or stdout alone to `stdout_path`).
  static CliResult Run(std::vector<std::string> args, const std::string& name,
                       const fs::path& stdin_path = {}, const fs::path& stdout_path = {}) {
    args.insert(args.begin(), QtrainBinary());
    CliOptions options;
    options.address_space_bytes = uint64_t{4} << 30;
    options.timeout_seconds = 120;
    options.stdin_path = stdin_path;
    options.stdout_path = stdout_path;
    return RunCli(args, *root_ / (name + ".log"), options);
  }

  static std::string Write(const std::string& name, const std::string& content) {
    const fs::path p = *root_ / name;
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }

  // qtrain eval on the trained model; the result parsed from --out (null on failure).
  static Json Eval(std::vector<std::string> args, const std::string& name) {
    const std::string out = (*root_ / (name + ".json")).string();
    std::vector<std::string> full = {"eval",      "--model", *model_, "--tokenizer",
                                     *tokenizer_, "--out",   out};
    full.insert(full.end(), args.begin(), args.end());
    const CliResult r = Run(full, name);
    EXPECT_TRUE(r.exited && r.exit_code == 0) << r;
    auto text = ReadFileToString(out);
    if (!text.ok()) return Json();
    return Json::parse(*text, nullptr, false);
  }

  // A command's stdout as JSON lines (empty on failure).
  static std::vector<Json> JsonLines(std::vector<std::string> args, const std::string& name,
                                     const std::string& input) {
    const std::string in = Write(name + ".in.jsonl", input);
    const fs::path out = *root_ / (name + ".out.jsonl");
    const CliResult r = Run(std::move(args), name, in, out);
    EXPECT_TRUE(r.exited && r.exit_code == 0) << r;
    std::vector<Json> lines;
    std::ifstream f(out);
    for (std::string line; std::getline(f, line);) {
      if (!line.empty()) lines.push_back(Json::parse(line, nullptr, false));
    }
    return lines;
  }

  // The token ids of a text under the model's tokenizer (qtrain encode).
  static std::vector<int32_t> Encode(const std::string& text) {
    const std::vector<Json> lines = JsonLines({"encode", "--tokenizer", *tokenizer_}, "encode",
                                              Json({{"text", text}}).dump() + "\n");
    if (lines.size() != 1) return {};
    return lines[0]["ids"].get<std::vector<int32_t>>();
  }

  // qtrain generate --json's text (greedy).
  static std::string Generate(const std::string& prompt, int max_new, const std::string& name) {
    const fs::path out = *root_ / (name + ".out.json");
    const CliResult r = Run({"generate", "--model", *model_, "--tokenizer", *tokenizer_, "--prompt",
                             prompt, "--max-new-tokens", std::to_string(max_new), "--json"},
                            name, {}, out);
    EXPECT_TRUE(r.exited && r.exit_code == 0) << r;
    auto text = ReadFileToString(out.string());
    if (!text.ok()) return "";
    const Json j = Json::parse(*text, nullptr, false);
    return j.is_object() ? j.value("text", "") : "";
  }

  static fs::path* root_;
  static std::string* model_;
  static std::string* tokenizer_;
};
fs::path* EvalTrainedTest::root_ = nullptr;
std::string* EvalTrainedTest::model_ = nullptr;
std::string* EvalTrainedTest::tokenizer_ = nullptr;

// Perplexity over JSONL data is the text's tokens after the prefix token (config.json names no
// BOS or EOS here, so it is the tokenizer's <|endoftext|>), in windows
// ids[k*stride, min(k*stride + seq_len, n - 1)), each scoring the targets no earlier window
// scored. `qtrain score` of ids[begin..end] gives log p(ids[begin + t + 1] | ids[begin..begin+t]),
// so the same windows give the expected sum.
TEST_F(EvalTrainedTest, PerplexityIsExpOfTheMeanOfScoreLogprobs) {
  const std::string text =
      "the model learns tokens from a small corpus and predicts what comes next. a small model "
      "learns 42 tokens and 7 more.\nwhat comes next from the corpus predicts the model";
  const std::string data = Write("ppl.jsonl", Json({{"text", text}}).dump() + "\n");
  std::vector<int32_t> ids = Encode("<|endoftext|>");
  ASSERT_EQ(ids.size(), 1u) << "the tokenizer has no <|endoftext|> token";
  const std::vector<int32_t> body = Encode(text);
  ASSERT_GT(body.size(), 60u);
  ids.insert(ids.end(), body.begin(), body.end());
  const auto n = static_cast<int64_t>(ids.size());

  struct Case {
    int64_t seq_len, stride;
    std::string dca;  // --dca of both commands; empty: none
  };
  // With --dca 24,8 positions fold into chunks of 16, so windows of 40 cross chunks.
  for (const Case& c : {Case{16, 16, ""}, Case{24, 8, ""}, Case{20, 7, ""}, Case{40, 40, "24,8"},
                        Case{40, 16, "24,8"}}) {
    SCOPED_TRACE(::testing::Message()
                 << "seq_len " << c.seq_len << " stride " << c.stride << " dca '" << c.dca << "'");
    std::vector<std::string> dca_flag;
    if (!c.dca.empty()) dca_flag = {"--dca", c.dca};
    // The windows (as score inputs, target `end` included) and their first scored target.
    std::string input;
    std::vector<std::pair<int64_t, int64_t>> windows;  // {begin, first_target}
    int64_t scored_through = 0;
    for (int64_t begin = 0; begin + 1 < n; begin += c.stride) {
      const int64_t end = std::min(begin + c.seq_len, n - 1);
      if (end > scored_through) {
        windows.push_back({begin, scored_through + 1});
        input += Json({{"ids", std::vector<int32_t>(ids.begin() + begin, ids.begin() + end + 1)}})
                     .dump() +
                 "\n";
      }
      scored_through = std::max(scored_through, end);
      if (end == n - 1) break;
    }
    const std::string name = "score_" + std::to_string(c.seq_len) + "_" + std::to_string(c.stride) +
                             (c.dca.empty() ? "" : "_dca");
    std::vector<std::string> score = {"score", "--model", *model_, "--tokenizer", *tokenizer_};
    score.insert(score.end(), dca_flag.begin(), dca_flag.end());
    const std::vector<Json> scores = JsonLines(score, name, input);
    ASSERT_EQ(scores.size(), windows.size());
    double sum = 0;
    int64_t tokens = 0;
    for (size_t w = 0; w < windows.size(); ++w) {
      const auto [begin, first_target] = windows[w];
      const std::vector<double> lp = scores[w]["logprobs"].get<std::vector<double>>();
      for (int64_t target = first_target; target < begin + static_cast<int64_t>(lp.size()) + 1;
           ++target) {
        sum += lp[target - begin - 1];
        ++tokens;
      }
    }
    EXPECT_EQ(tokens, n - 1);  // every token after the prefix, once
    std::vector<std::string> eval = {"--task",    "perplexity",
                                     "--data",    data,
                                     "--seq-len", std::to_string(c.seq_len),
                                     "--stride",  std::to_string(c.stride)};
    eval.insert(eval.end(), dca_flag.begin(), dca_flag.end());
    const Json r = Eval(eval, "ppl_" + name);
    ASSERT_TRUE(r.is_object());
    EXPECT_EQ(r["metrics"]["windows"], static_cast<int64_t>(windows.size()));
    EXPECT_EQ(r["metrics"]["tokens"], tokens);
    const double expected = std::exp(-sum / static_cast<double>(tokens));
    // Both sum the same float log-probabilities in double; only the last bits may differ.
    EXPECT_NEAR(r["metrics"]["perplexity"].get<double>(), expected, 1e-6 * expected);
    EXPECT_NEAR(r["metrics"]["loglikelihood"].get<double>(), sum, 1e-6 * std::abs(sum));
    EXPECT_GT(expected, 1.0);
  }
  // Past the model's 512 positions only with DCA.
  std::string repeated;
  for (int i = 0; i < 12; ++i) repeated += text + " ";
  const std::string long_text = Write("long.jsonl", Json({{"text", repeated}}).dump() + "\n");
  const CliResult refused = Run({"eval", "--model", *model_, "--tokenizer", *tokenizer_, "--task",
                                 "perplexity", "--data", long_text, "--seq-len", "1024"},
                                "ppl_long_refused");
  EXPECT_CLEAN_FAILURE(refused, "is more than the model's context of 512");
  const Json long_dca =
      Eval({"--task", "perplexity", "--data", long_text, "--seq-len", "1024", "--dca", "256,64"},
           "ppl_long_dca");
  ASSERT_TRUE(long_dca.is_object());
  EXPECT_GT(long_dca["metrics"]["tokens"].get<int64_t>(), 512);
  EXPECT_EQ(long_dca["metrics"]["windows"], 1);
}

TEST_F(EvalTrainedTest, GenerationMatchesGenerateAndScoresKnownAnswers) {
  constexpr int kMaxNew = 12;
  const std::vector<std::string> candidates = {
      "the model",  "a small corpus", "what comes", "predicts", "42 tokens", "7 tokens and",
      "the corpus", "learns 1,250",   "next",       "and 42",   "from a",    "comes next 7"};
  std::vector<std::string> outputs;
  std::string rows;
  for (size_t i = 0; i < candidates.size(); ++i) {
    outputs.push_back(Generate(candidates[i], kMaxNew, "generate_" + std::to_string(i)));
    rows += Json({{"prompt", candidates[i]}, {"answer", "x"}}).dump() + "\n";
  }
  // Without stop strings (and no EOS in config.json) eval writes what generate writes.
  const Json all = Eval({"--task", "generation", "--data", Write("all.jsonl", rows),
                         "--max-new-tokens", std::to_string(kMaxNew), "--per-example"},
                        "gen_all");
  ASSERT_TRUE(all.is_object());
  ASSERT_EQ(all["examples"].size(), candidates.size());
  for (size_t i = 0; i < candidates.size(); ++i) {
    EXPECT_EQ(all["examples"][i]["output"], outputs[i]) << "prompt '" << candidates[i] << "'";
  }

  // Rows whose answers come from those outputs. The model writes no "####", so the default
  // pattern finds nothing and the prediction is the last number; a stop string equal to the
  // continuation's first character leaves an empty text, so nothing is found.
  std::vector<size_t> with_number;
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!LastNumber(outputs[i]).empty()) with_number.push_back(i);
  }
  ASSERT_GE(with_number.size(), 2u)
      << "too few continuations with a number: " << Json(outputs).dump();
  const size_t a = with_number[0], b = with_number[1];
  const std::string na = LastNumber(outputs[a]), nb = LastNumber(outputs[b]);
  struct Row {
    size_t prompt;
    std::string answer;
    std::string stop;  // empty: none
    bool match;
    std::string reference;
  };
  const std::vector<Row> known = {
      {a, "The answer.\n#### " + na, "", true, na},  // "####" reference, fallback prediction
      {b, nb + ".", "", true, nb},                   // plain reference, trailing '.' dropped
      {a, "#### 99999", "", false, "99999"},         // wrong
      {b, nb, outputs[b].substr(0, 1), false, nb},   // cut by the stop string: no number
      {b, "Thus:\n#### " + nb, "", true, nb},        // the same row, GSM8K style
  };
  std::string known_rows;
  for (const Row& row : known) {
    Json j = {{"prompt", candidates[row.prompt]}, {"answer", row.answer}};
    if (!row.stop.empty()) j["stop"] = {row.stop};
    known_rows += j.dump() + "\n";
  }
  const Json r = Eval({"--task", "generation", "--data", Write("known.jsonl", known_rows),
                       "--max-new-tokens", std::to_string(kMaxNew), "--per-example"},
                      "gen_known");
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["metrics"]["count"], 5);
  EXPECT_DOUBLE_EQ(r["metrics"]["exact_match"].get<double>(), 3.0 / 5.0);
  ASSERT_EQ(r["examples"].size(), known.size());
  for (size_t i = 0; i < known.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "row " << i);
    const Json& e = r["examples"][i];
    const std::string output = known[i].stop.empty() ? outputs[known[i].prompt] : "";
    EXPECT_EQ(e["output"], output);
    EXPECT_EQ(e["prediction"], LastNumber(output));
    EXPECT_EQ(e["reference"], known[i].reference);
    EXPECT_EQ(e["exact_match"], known[i].match);
  }

  // A custom pattern without a group (the whole match is the answer): two numbers in a row.
  // Outputs without such a pair fall back to their last number; "####" references are
  // extracted by the same pattern.
  const std::string pattern = "[0-9]+ [0-9]+";
  const std::regex re(pattern);
  std::vector<std::string> expected;
  int pattern_hits = 0;
  for (const std::string& out : outputs) {
    std::smatch m;
    const bool hit = std::regex_search(out, m, re);
    pattern_hits += hit;
    expected.push_back(hit ? m.str(0) : LastNumber(out));
  }
  EXPECT_GT(pattern_hits, 0) << Json(outputs).dump();
  std::string custom_rows;
  int expected_matches = 0;
  for (size_t i = 0; i < outputs.size(); ++i) {
    // Every third row gets a wrong answer; the others alternate plain and "####" answers.
    const bool right = i % 3 != 2;
    std::string answer = right ? expected[i] : "1 2 3";
    if (i % 2 == 1) answer = "#### " + answer;
    expected_matches += right && !expected[i].empty();
    custom_rows += Json({{"prompt", candidates[i]}, {"answer", answer}}).dump() + "\n";
  }
  const Json custom = Eval(
      {"--task", "generation", "--data", Write("custom.jsonl", custom_rows), "--max-new-tokens",
       std::to_string(kMaxNew), "--answer-regex", pattern, "--per-example"},
      "gen_custom");
  ASSERT_TRUE(custom.is_object());
  EXPECT_DOUBLE_EQ(custom["metrics"]["exact_match"].get<double>(),
                   static_cast<double>(expected_matches) / static_cast<double>(outputs.size()));
  ASSERT_EQ(custom["examples"].size(), outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) {
    EXPECT_EQ(custom["examples"][i]["prediction"], expected[i])
        << "prompt '" << candidates[i] << "'";
  }
}

// Checks the needle result's grid and its heatmap (well-formed XML, one cell per grid entry).
void CheckNeedle(const Json& r, const std::vector<int64_t>& lengths,
                 const std::vector<double>& depths, const fs::path& svg) {
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["task"], "needle");
  const Json& grid = r["grid"];
  EXPECT_EQ(grid["lengths"].get<std::vector<int64_t>>(), lengths);
  EXPECT_EQ(grid["depths"].get<std::vector<double>>(), depths);
  ASSERT_EQ(grid["accuracy"].size(), depths.size());
  double sum = 0;
  for (const Json& row : grid["accuracy"]) {
    ASSERT_EQ(row.size(), lengths.size());
    for (const Json& v : row) {
      EXPECT_GE(v.get<double>(), 0.0);
      EXPECT_LE(v.get<double>(), 1.0);
      sum += v.get<double>();
    }
  }
  EXPECT_EQ(r["metrics"]["count"], static_cast<int64_t>(lengths.size() * depths.size()));
  EXPECT_NEAR(r["metrics"]["accuracy"].get<double>(),
              sum / static_cast<double>(lengths.size() * depths.size()), 1e-12);
  auto text = ReadFileToString(svg.string());
  ASSERT_TRUE(text.ok()) << svg;
  // One cell rectangle (with a position) per grid entry, besides the background.
  const size_t cells = lengths.size() * depths.size();
  size_t rects = 0;
  for (size_t at = text->find("<rect x="); at != std::string::npos;
       at = text->find("<rect x=", at + 1)) {
    ++rects;
  }
  EXPECT_EQ(rects, cells);
  EXPECT_EQ(text->rfind("<?xml", 0), 0u);
  EXPECT_NE(text->find("</svg>"), std::string::npos);
  // Well-formed XML, where Python is there to parse it.
  if (!fs::exists("/usr/bin/python3")) return;
  CliOptions options;
  options.timeout_seconds = 30;
  const CliResult xml =
      RunCli({"/usr/bin/python3", "-c",
              "import sys, xml.dom.minidom\n"
              "d = xml.dom.minidom.parse(sys.argv[1])\n"
              "cells = [r for r in d.getElementsByTagName('rect') if r.hasAttribute('x')]\n"
              "print('cells', len(cells))\n",
              svg.string()},
             svg.string() + ".check.log", options);
  ASSERT_TRUE(xml.exited && xml.exit_code == 0) << xml;
  EXPECT_THAT(xml.output, ::testing::HasSubstr("cells " + std::to_string(cells)));
}

TEST_F(EvalTrainedTest, NeedleWithAndWithoutDca) {
  const std::vector<double> depths = {0, 0.5, 1};
  // Inside the 512 positions of the model's context.
  const Json plain = Eval(
      {"--task", "needle", "--lengths", "256,384", "--depths", "0,0.5,1", "--max-new-tokens", "8"},
      "needle_plain");
  CheckNeedle(plain, {256, 384}, depths, *root_ / "needle_plain.svg");
  // Past it, only with Dual Chunk Attention.
  const CliResult refused = Run({"eval", "--model", *model_, "--tokenizer", *tokenizer_, "--task",
                                 "needle", "--lengths", "1024", "--max-new-tokens", "8"},
                                "needle_refused");
  EXPECT_CLEAN_FAILURE(refused, "do not fit in the model's context");
  const fs::path svg = *root_ / "dca_heatmap.svg";
  const Json dca = Eval({"--task", "needle", "--lengths", "256,512,1k", "--depths", "0,0.5,1",
                         "--dca", "128,32", "--max-new-tokens", "8", "--heatmap", svg.string()},
                        "needle_dca");
  CheckNeedle(dca, {256, 512, 1024}, depths, svg);
}

}  // namespace
}  // namespace qtrain
