// `qtrain init`, `score`, `generate` and `train` at the model's limits, as real processes under an
// address-space limit: a model too big for memory is RESOURCE_EXHAUSTED (never std::bad_alloc),
// generation is bounded by the model's context (not by --max-new-tokens), and non-finite weights
// or activations are refused with a message naming the tensor or the layer.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "common/safetensors.h"
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
using ::testing::Not;
using Json = nlohmann::json;

constexpr uint64_t kOneGiB = uint64_t{1} << 30;

class ModelLimitsCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::path(::testing::TempDir()) / (std::string("model_limits_") + info->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  CliResult Run(std::vector<std::string> args, const std::string& name, CliOptions options = {}) {
    args.insert(args.begin(), QtrainBinary());
    options.address_space_bytes = kOneGiB;
    options.timeout_seconds = 60;
    return RunCli(args, root_ / (name + ".log"), options);
  }

  // `qtrain init` of a preset into root_/name.
  std::string Init(const std::string& preset, const std::string& name,
                   std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"init", "--preset", preset, "--out", (root_ / name).string()};
    args.insert(args.end(), extra.begin(), extra.end());
    const CliResult r = Run(args, "init_" + name);
    EXPECT_TRUE(r.exited && r.exit_code == 0) << r;
    return (root_ / name).string();
  }

  void EditConfig(const std::string& dir, const Json& changes) {
    const std::string path = dir + "/config.json";
    Json config = Json::parse(ReadFileToString(path, 1 << 20).value());
    config.update(changes);
    ASSERT_TRUE(WriteFileAtomically(path, config.dump(2)).ok());
  }

  // Rewrites one tensor of dir/model.safetensors through `edit`.
  template <typename Edit>
  void EditTensor(const std::string& dir, const std::string& tensor, Edit edit) {
    const std::string path = dir + "/model.safetensors";
    auto file = SafetensorsFile::Open(path);
    ASSERT_TRUE(file.ok()) << file.status();
    SafetensorsWriter writer;
    writer.SetMetadata("format", "pt");
    bool found = false;
    for (const TensorInfo& info : file->tensors()) {
      auto values = file->ReadAsFloat(info.name, info.shape);
      ASSERT_TRUE(values.ok()) << values.status();
      if (info.name == tensor) {
        edit(*values);
        found = true;
      }
      ASSERT_TRUE(writer.AddFloat(info.name, info.shape, *values).ok());
    }
    ASSERT_TRUE(found) << tensor;
    ASSERT_TRUE(writer.WriteFile(path + ".new").ok());
    fs::rename(path + ".new", path);
  }

  CliResult Score(const std::string& dir, const std::string& input,
                  std::vector<std::string> extra = {}) {
    std::ofstream(root_ / "score.jsonl") << input;
    std::vector<std::string> args = {"score", "--model", dir};
    args.insert(args.end(), extra.begin(), extra.end());
    return Run(args, "score", {.stdin_path = root_ / "score.jsonl"});
  }

  CliResult Generate(const std::string& dir, const std::string& prompt_ids,
                     const std::string& max_new_tokens, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"generate",     "--model",  dir,
                                     "--prompt-ids", prompt_ids, "--max-new-tokens",
                                     max_new_tokens, "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    return Run(args, "generate", {.stdout_path = root_ / "generate.out"});
  }

  Json GenerateOutput() {
    return Json::parse(ReadFileToString((root_ / "generate.out").string(), 1 << 24).value());
  }

  static std::string IdList(int64_t n) {
    std::string ids;
    for (int64_t i = 0; i < n; ++i) {
      if (i > 0) ids.push_back(',');
      ids.append(std::to_string(i % 30));
    }
    return ids;
  }

  fs::path root_;
};

#define EXPECT_SUCCESS(result)                                         \
  do {                                                                 \
    const CliResult& s_ = (result);                                    \
    EXPECT_TRUE(s_.exited&& s_.exit_code == 0 && !s_.timed_out) << s_; \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Memory

TEST_F(ModelLimitsCliTest, InitOfAModelTooBigForTheMemoryLimitIsResourceExhausted) {
  // qwen2-0.5b's fp32 parameters alone are 2 GB.
  const CliResult r =
      Run({"init", "--preset", "qwen2-0.5b", "--out", (root_ / "big").string()}, "init_big");
  EXPECT_CLEAN_FAILURE(r, "RESOURCE_EXHAUSTED");
  EXPECT_THAT(r.output, HasSubstr("parameters"));
  EXPECT_THAT(r.output, HasSubstr("bytes"));
  EXPECT_THAT(r.output, Not(HasSubstr("bad_alloc")));
}

TEST_F(ModelLimitsCliTest, ScoreAndGenerateOfAModelTooBigAreResourceExhausted) {
  const std::string dir = Init("qwen2-test", "big");
  // hidden 4096, 24 layers: about 5 billion parameters, far over the 1 GiB limit. The weights
  // file does not match, but memory runs out before it is read.
  EditConfig(dir, {{"hidden_size", 4096},
                   {"intermediate_size", 11008},
                   {"num_hidden_layers", 24},
                   {"num_attention_heads", 32},
                   {"num_key_value_heads", 32},
                   {"head_dim", 128},
                   {"vocab_size", 151936}});
  const CliResult score = Score(dir, "{\"ids\": [1, 2, 3]}\n");
  EXPECT_CLEAN_FAILURE(score, "RESOURCE_EXHAUSTED");
  EXPECT_THAT(score.output, HasSubstr("the model parameters"));
  const CliResult gen = Generate(dir, "1,2,3", "4");
  EXPECT_CLEAN_FAILURE(gen, "RESOURCE_EXHAUSTED");
}

TEST_F(ModelLimitsCliTest, TrainingAModelTooBigForMemoryIsResourceExhausted) {
  // A corpus, a tokenizer and shards, then a job whose model (hidden 4096, 24 layers) cannot
  // fit under the limit.
  {
    std::ofstream corpus(root_ / "text.txt");
    const char* words[] = {"the", "model", "learns", "tokens", "from", "a", "small", "corpus"};
    for (int i = 0; i < 3000; ++i) corpus << words[(i * 7 + i / 3) % 8] << (i % 11 ? " " : ".\n");
  }
  const fs::path tok = root_ / "tok", shards = root_ / "shards";
  EXPECT_SUCCESS(Run({"train-tokenizer", "--vocab-size", "300", "--out", tok.string(),
                      (root_ / "text.txt").string()},
                     "tok"));
  EXPECT_SUCCESS(Run({"tokenize", "--tokenizer", (tok / "tokenizer.json").string(), "--out",
                      shards.string(), (root_ / "text.txt").string()},
                     "tokenize"));
  auto train = [&](const std::string& name, const std::string& model) {
    std::ofstream(root_ / (name + ".yaml"))
        << "name: " << name << "\nseed: 1\n"
        << "model: {config: {vocab_size: 320, max_position_embeddings: 128, " << model << "}}\n"
        << "tokenizer: " << (tok / "tokenizer.json").string() << "\n"
        << "data: {manifest: " << (shards / "manifest.json").string()
        << ", validation_fraction: 0.1}\n"
        << "curriculum:\n  - {name: a, seq_len: 16, tokens: 256, micro_batch: 4}\n"
        << "optimizer: {lr: 1e-3, min_lr: 1e-4, warmup_steps: 1}\n"
        << "batch: {global_tokens: 64}\n"
        << "checkpoint: {every_steps: 2, keep_last: 1}\n";
    return Run({"train", (root_ / (name + ".yaml")).string(), "--run-dir",
                (root_ / ("run_" + name)).string()},
               "train_" + name);
  };
  // Hidden 4096, 24 layers: 19 GB of weights.
  const CliResult big = train("big",
                              "hidden_size: 4096, intermediate_size: 11008, num_hidden_layers: 24, "
                              "num_attention_heads: 32, num_key_value_heads: 32");
  EXPECT_CLEAN_FAILURE(big, "RESOURCE_EXHAUSTED");
  EXPECT_THAT(big.output, HasSubstr("the model parameters"));
  EXPECT_THAT(big.output, HasSubstr("bytes"));
  EXPECT_THAT(big.output, Not(HasSubstr("bad_alloc")));
  // 134 million parameters: the weights (537 MB) fit, their AdamW moments do not.
  const CliResult medium =
      train("medium",
            "hidden_size: 1024, intermediate_size: 4096, num_hidden_layers: 8, "
            "num_attention_heads: 8, num_key_value_heads: 8");
  EXPECT_CLEAN_FAILURE(medium, "RESOURCE_EXHAUSTED");
  EXPECT_THAT(medium.output, HasSubstr("the optimizer state"));
}

// ---------------------------------------------------------------------------------------------
// Generation limits

TEST_F(ModelLimitsCliTest, HugeMaxNewTokensNeedsMemoryOnlyForTheTokensGenerated) {
  const std::string dir = Init("qwen2-tiny", "tiny");
  // The first greedy token becomes the end-of-sequence token, so generation stops after one.
  EXPECT_SUCCESS(Generate(dir, "1,2,3", "1"));
  const int32_t first = GenerateOutput()["ids"][0].get<int32_t>();
  EditConfig(dir, {{"eos_token_id", first}});
  // A cache for 70 million positions would need 36 GB.
  const CliResult r = Generate(dir, "1,2,3", "70000000");
  EXPECT_SUCCESS(r);
  EXPECT_EQ(GenerateOutput()["ids"], Json::array({first}));
  EXPECT_THAT(r.output, HasSubstr("capped at 32765"));
}

TEST_F(ModelLimitsCliTest, GenerationStopsAtTheModelsContext) {
  const std::string dir = Init("qwen2-test", "test");  // 256 positions
  const CliResult r = Generate(dir, IdList(250), "1000");
  EXPECT_SUCCESS(r);
  EXPECT_THAT(r.output, HasSubstr("capped at 6"));
  EXPECT_THAT(r.output, HasSubstr("context of 256 positions"));
  const Json out = GenerateOutput();
  EXPECT_LE(out["ids"].size(), 6u);
  // Exactly at the context: nothing more to generate, still a clean run.
  EXPECT_SUCCESS(Generate(dir, IdList(256), "5"));
  EXPECT_EQ(GenerateOutput()["ids"].size(), 0u);
}

TEST_F(ModelLimitsCliTest, PromptLongerThanTheContextIsRefused) {
  const std::string dir = Init("qwen2-test", "test");
  const CliResult r = Generate(dir, IdList(257), "1");
  EXPECT_CLEAN_FAILURE(r, "the prompt has 257 tokens, more than the model's context of 256");
}

TEST_F(ModelLimitsCliTest, YarnExtendsTheContextByItsFactor) {
  const std::string dir = Init("qwen2-test", "yarn", {"--yarn-factor", "2"});  // 512 positions
  const CliResult r = Generate(dir, IdList(300), "1000");
  EXPECT_SUCCESS(r);
  EXPECT_THAT(r.output, HasSubstr("capped at 212"));
  EXPECT_THAT(r.output, HasSubstr("YaRN factor 2"));
  EXPECT_CLEAN_FAILURE(Generate(dir, IdList(513), "1"), "context of 512 positions");
}

// ---------------------------------------------------------------------------------------------
// Non-finite values

TEST_F(ModelLimitsCliTest, NonFiniteWeightsAreRefusedNamingTheTensorAndIndex) {
  const std::string dir = Init("qwen2-test", "nan");
  const std::string tensor = "model.layers.1.mlp.up_proj.weight";
  EditTensor(dir, tensor, [](std::vector<float>& v) { v[37] = std::nanf(""); });
  for (const CliResult& r : {Score(dir, "{\"ids\": [1, 2, 3]}\n"), Generate(dir, "1,2,3", "3")}) {
    EXPECT_CLEAN_FAILURE(r, "tensor '" + tensor + "' holds a non-finite value (nan) at index 37");
    EXPECT_THAT(r.output, HasSubstr("--allow-nonfinite-weights"));
  }
  // Allowed, the weights load, and the NaN is caught where it reaches the activations.
  for (const CliResult& r : {Score(dir, "{\"ids\": [1, 2, 3]}\n", {"--allow-nonfinite-weights"}),
                             Generate(dir, "1,2,3", "3", {"--allow-nonfinite-weights"})}) {
    EXPECT_CLEAN_FAILURE(r, "non-finite value");
    EXPECT_THAT(r.output, HasSubstr("decoder layer 1 (model.layers.1"));
    EXPECT_THAT(r.output, Not(HasSubstr("null")));
  }
}

TEST_F(ModelLimitsCliTest, InfiniteEmbeddingRowIsCaughtInTheLogits) {
  const std::string dir = Init("qwen2-test", "inf");
  // Row 20 of the tied embedding: no input uses it, but every logit row reads it.
  EditTensor(dir, "model.embed_tokens.weight",
             [](std::vector<float>& v) { v[20 * 16] = INFINITY; });
  const CliResult r = Score(dir, "{\"ids\": [1, 2, 3]}\n", {"--allow-nonfinite-weights"});
  EXPECT_CLEAN_FAILURE(r, "the logits");
  EXPECT_THAT(r.output, HasSubstr("element 20"));
  EXPECT_CLEAN_FAILURE(Generate(dir, "1,2,3", "3", {"--allow-nonfinite-weights"}), "the logits");
}

TEST_F(ModelLimitsCliTest, FiniteWeightsThatOverflowAreCaughtInTheLayer) {
  const std::string dir = Init("qwen2-test", "overflow");
  // Every activation of layer 0's MLP is silu(16) * 16, and each output sums 24 of them times
  // 3e38: far past fp32's 3.4e38.
  auto fill = [](float value) {
    return [value](std::vector<float>& v) { std::fill(v.begin(), v.end(), value); };
  };
  EditTensor(dir, "model.embed_tokens.weight", fill(1.0f));
  EditTensor(dir, "model.layers.0.mlp.gate_proj.weight", fill(1.0f));
  EditTensor(dir, "model.layers.0.mlp.up_proj.weight", fill(1.0f));
  EditTensor(dir, "model.layers.0.mlp.down_proj.weight", fill(3e38f));
  const CliResult r = Score(dir, "{\"ids\": [1, 2, 3]}\n");
  EXPECT_CLEAN_FAILURE(r, "decoder layer 0 (model.layers.0");
  EXPECT_THAT(r.output, Not(HasSubstr("logprobs")));
  EXPECT_CLEAN_FAILURE(Generate(dir, "1,2,3", "3"), "decoder layer 0");
}

}  // namespace
}  // namespace qtrain
