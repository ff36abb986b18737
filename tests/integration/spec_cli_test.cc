// `qtrain validate`, `qtrain train` and `qtrain init` fed hostile specs, configs and flags: each
// must be refused cleanly (no signal, no hang) with a message naming the field and the limit,
// and `validate` must refuse whatever `train` refuses.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cli_process.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing_cli::CliOptions;
using testing_cli::CliResult;
using testing_cli::QtrainBinary;
using testing_cli::RunCli;

constexpr char kValid[] = R"(name: demo
model: {preset: qwen2-tiny}
tokenizer: tok.json
data: {manifest: shards/manifest.json, validation_fraction: 0.01}
curriculum:
  - {name: short, seq_len: 128, tokens: 4000000, micro_batch: 16}
  - {name: long, seq_len: 512, tokens: 1000000, micro_batch: 4}
optimizer: {lr: 6e-4, min_lr: 6e-5, warmup_steps: 100}
batch: {global_tokens: 32768}
)";

class SpecCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) / ("spec_cli_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // The valid spec with `from` replaced by `to`, written to a file.
  fs::path SpecWith(const std::string& from, const std::string& to) {
    std::string text = kValid;
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
    return Write("job" + std::to_string(++files_) + ".yaml", text);
  }
  fs::path Write(const std::string& name, const std::string& content) {
    const fs::path path = root_ / name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }
  CliResult Run(std::vector<std::string> args) {
    args.insert(args.begin(), QtrainBinary());
    CliOptions options;
    options.address_space_bytes = 1ull << 30;
    options.timeout_seconds = 30;
    return RunCli(args, root_ / ("run" + std::to_string(++files_) + ".log"), options);
  }
  CliResult Validate(const fs::path& spec) { return Run({"validate", spec.string()}); }
  CliResult Train(const fs::path& spec) {
    return Run({"train", spec.string(), "--run-dir", (root_ / "run").string()});
  }

  fs::path root_;
  int files_ = 0;
};

TEST_F(SpecCliTest, ValidSpecPrintsCheckedStepCounts) {
  const CliResult r = Validate(Write("ok.yaml", kValid));
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r;
  EXPECT_THAT(r.output, HasSubstr("16 accumulation steps per worker with 1 workers"));
  EXPECT_THAT(r.output, HasSubstr("valid job spec 'demo', 154 optimizer steps in 2 stages"));
}

TEST_F(SpecCliTest, ProductsThatWouldOverflowAreRefused) {
  EXPECT_CLEAN_FAILURE(
      Validate(SpecWith("seq_len: 512, tokens: 1000000, micro_batch: 4",
                        "seq_len: 2147483648, tokens: 1000000, micro_batch: 8589934592")),
      "curriculum[1].seq_len: 2147483648 is larger than the limit of 16777216");
  EXPECT_CLEAN_FAILURE(Validate(SpecWith("global_tokens: 32768", "global_tokens: 9e18")),
                       "batch.global_tokens: 9000000000000000000 is larger than the limit of");
  EXPECT_CLEAN_FAILURE(
      Validate(SpecWith("tokens: 4000000", "tokens: 9223372036854775807")),
      "curriculum[0].tokens: 9223372036854775807 is larger than the limit of 1125899906842624");
  EXPECT_CLEAN_FAILURE(
      Validate(SpecWith("\nbatch:", "\nworld: {min_workers: 4611686018427387904}\nbatch:")),
      "world.min_workers: 4611686018427387904 is larger than the limit of 65536");
  EXPECT_CLEAN_FAILURE(
      Validate(SpecWith("micro_batch: 4}", "micro_batch: 4, yarn_factor: 3.6e16}")),
      "curriculum[1].yarn_factor: must be 0 (off) or >= 1 and <= 1024, got 3.6e+16");
}

// Whatever `train` refuses about the spec, `validate` refuses with the same message.
TEST_F(SpecCliTest, ValidateRefusesWhatTrainRefuses) {
  const std::string config =
      "model: {config: {vocab_size: 1000, hidden_size: 64, intermediate_size: 128, "
      "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
      "max_position_embeddings: 1024}}";
  // The explicit config with `from` replaced by `to`.
  auto config_with = [&](const std::string& from, const std::string& to) {
    std::string c = config;
    c.replace(c.find(from), from.size(), to);
    return c;
  };
  const std::string model = "model: {preset: qwen2-tiny}";
  const std::vector<std::pair<fs::path, std::string>> specs = {
      {SpecWith("qwen2-tiny", "gpt5"), "model.preset: unknown model preset 'gpt5'"},
      {SpecWith(model, config_with("vocab_size: 1000", "vocab_size: 1099511627776")),
       "model.config.vocab_size: 1099511627776 is larger than the limit of 16777216"},
      {SpecWith(model, config_with("num_hidden_layers: 2", "num_hidden_layers: 1000000000")),
       "model.config.num_hidden_layers: 1000000000 is larger than the limit of 16777216"},
      {SpecWith(model, config_with("hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2",
                                   "hidden_size: 4096, intermediate_size: 16777216, "
                                   "num_hidden_layers: 8")),
       "model.config: the parameter count"},
      {SpecWith("seq_len: 512, tokens: 1000000, micro_batch: 4",
                "seq_len: 65536, tokens: 1000000, micro_batch: 4"),
       "curriculum[1].seq_len: 65536 exceeds the model's maximum of 32768 positions"},
  };
  for (const auto& [spec, message] : specs) {
    EXPECT_CLEAN_FAILURE(Validate(spec), message);
    EXPECT_CLEAN_FAILURE(Train(spec), message);
  }
}

TEST_F(SpecCliTest, LooseYamlIsRefused) {
  EXPECT_CLEAN_FAILURE(Validate(Write("two.yaml", std::string(kValid) + "---\nname: other\n")),
                       "a second YAML document starts here (after --- or the end of the first)");
  EXPECT_CLEAN_FAILURE(Validate(SpecWith("name: demo", "name: demo\nseed: !!str 7")),
                       "seed: expected an integer, got \"7\" tagged !!str");
  EXPECT_CLEAN_FAILURE(Validate(SpecWith("name: demo", "name: demo\nseed: 0x10")),
                       "seed: expected an integer, got \"0x10\"");
  EXPECT_CLEAN_FAILURE(Validate(SpecWith("name: demo", "name: demo\nlabels: {a: 1}")),
                       "labels.a: expected a string, got the number 1");
  EXPECT_CLEAN_FAILURE(Validate(SpecWith("\nbatch:", "\nworld: {min_workers: 0}\nbatch:")),
                       "world.min_workers: must be >= 1 (got 0)");
  EXPECT_CLEAN_FAILURE(Validate(SpecWith("warmup_steps: 100", "warmup_steps: 1000")),
                       "optimizer.warmup_steps: 1000 is more than the job's 154 optimizer steps");
}

TEST_F(SpecCliTest, UnclearInputsGetClearMessages) {
  EXPECT_CLEAN_FAILURE(Validate(SpecWith("lr: 6e-4", "lr: 1e-310")),
                       "optimizer.lr: value 1e-310 is too small: it is subnormal");
  EXPECT_CLEAN_FAILURE(Validate(SpecWith("lr: 6e-4", "lr: 1e999")),
                       "optimizer.lr: value 1e999 is out of range");
  EXPECT_CLEAN_FAILURE(Validate(SpecWith("name: demo", "name: demo\nseed: -1")),
                       "seed: value -1 is out of range [0, 18446744073709551615]");
  EXPECT_CLEAN_FAILURE(Validate(Write("deep.yaml", "labels: " + std::string(60000, '['))),
                       "nested deeper than 32 levels");
  std::string utf16 = "\xFF\xFE";
  for (char c : std::string(kValid)) utf16 += std::string{c, '\0'};
  EXPECT_CLEAN_FAILURE(Validate(Write("utf16.yaml", utf16)),
                       "the file is UTF-16 (little-endian, with a byte-order mark); a spec must "
                       "be UTF-8");
  EXPECT_CLEAN_FAILURE(
      Validate(Write("big.yaml", std::string(kValid) + "#" + std::string(2 << 20, 'x') + "\n")),
      "more than the limit of 1048576 bytes");
  // A config.json with NaN in init_from: the position and the key.
  fs::create_directories(root_ / "nan_model");
  std::ofstream(root_ / "nan_model" / "config.json") << "{\n  \"rope_theta\": NaN\n}\n";
  EXPECT_CLEAN_FAILURE(
      Validate(SpecWith("preset: qwen2-tiny", "init_from: " + (root_ / "nan_model").string())),
      "config.json:2:17: not JSON in the value of 'rope_theta' (NaN and Infinity are not JSON "
      "numbers)");
}

TEST_F(SpecCliTest, InitRefusesBadOverridesNamingTheFlag) {
  const std::string out = (root_ / "m").string();
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--vocab-size", "0"}, "--vocab-size: must be in [1, 16777216], got 0"},
      {{"--vocab-size", "-1"}, "--vocab-size: must be in [1, 16777216], got -1"},
      {{"--vocab-size", "1099511627776"}, "--vocab-size: must be in [1, 16777216]"},
      {{"--rope-theta", "-5"}, "--rope-theta: must be in (1, 1e+12], got -5"},
      {{"--rope-theta", "nan"}, "--rope-theta: must be a finite number, got nan"},
      {{"--rope-theta", "inf"}, "--rope-theta: must be a finite number, got inf"},
      {{"--yarn-factor", "0.5"}, "--yarn-factor: must be in [1, 1024], got 0.5"},
      {{"--yarn-original-max-position-embeddings", "64"}, "needs --yarn-factor"},
      {{"--seed", "-1"}, "--seed: '-1' is not an integer in [0, 18446744073709551615]"},
      {{"--seed", "18446744073709551616"}, "--seed: '18446744073709551616' is not an integer"},
  };
  for (const auto& [flags, message] : cases) {
    std::vector<std::string> args = {"init", "--preset", "qwen2-test", "--out", out};
    args.insert(args.end(), flags.begin(), flags.end());
    EXPECT_CLEAN_FAILURE(Run(args), message);
    EXPECT_FALSE(fs::exists(fs::path(out) / "config.json")) << message;
  }
}

// generate's --seed is checked as init's is: CLI11 alone would wrap "-1" to 2^64 - 1.
TEST_F(SpecCliTest, GenerateRefusesANegativeSeed) {
  const std::string out = (root_ / "seed_model").string();
  const CliResult init = Run({"init", "--preset", "qwen2-test", "--out", out});
  ASSERT_TRUE(init.exited && init.exit_code == 0) << init;
  EXPECT_CLEAN_FAILURE(Run({"generate", "--model", out, "--prompt-ids", "1,2", "--seed", "-1"}),
                       "--seed: '-1' is not an integer in [0, 18446744073709551615]");
  const CliResult ok = Run(
      {"generate", "--model", out, "--prompt-ids", "1,2", "--seed", "7", "--max-new-tokens", "2"});
  EXPECT_TRUE(ok.exited && ok.exit_code == 0) << ok;
}

TEST_F(SpecCliTest, InitDoesNotOverwriteAModelWithoutForce) {
  const std::string out = (root_ / "m").string();
  const CliResult first = Run({"init", "--preset", "qwen2-test", "--out", out, "--seed", "1"});
  ASSERT_TRUE(first.exited && first.exit_code == 0) << first;
  const auto written = fs::last_write_time(fs::path(out) / "model.safetensors");
  EXPECT_CLEAN_FAILURE(Run({"init", "--preset", "qwen2-test", "--out", out, "--seed", "2"}),
                       "already holds a model (config.json); pass --force to overwrite it");
  EXPECT_EQ(fs::last_write_time(fs::path(out) / "model.safetensors"), written);
  const CliResult forced =
      Run({"init", "--preset", "qwen2-test", "--out", out, "--seed", "2", "--force"});
  EXPECT_TRUE(forced.exited && forced.exit_code == 0) << forced;
}

}  // namespace
}  // namespace qtrain
