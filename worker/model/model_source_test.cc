#include "worker/model/model_source.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "common/job_spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::model {
namespace {

using ::testing::HasSubstr;

constexpr char kSpec[] = R"(
name: demo
model: {preset: qwen2-tiny}
tokenizer: tok.json
data: {manifest: shards/manifest.json}
curriculum:
  - {name: short, seq_len: 128, tokens: 4000000, micro_batch: 16}
optimizer: {lr: 6e-4}
batch: {global_tokens: 32768}
)";

std::string SpecWith(const std::string& from, const std::string& to) {
  std::string text = kSpec;
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return text.replace(at, from.size(), to);
}

std::string Problems(const std::string& text) {
  return std::string(ParseJobSpec(text, "job.yaml", ModelAwareJobSpecOptions()).status().message());
}

TEST(ModelSourceTest, ValidSpecResolves) {
  EXPECT_TRUE(ParseJobSpec(kSpec, "job.yaml", ModelAwareJobSpecOptions()).ok());
  v1::ModelSpec spec;
  spec.set_preset("qwen2-test");
  auto config = ResolveModelConfig(spec);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->max_position_embeddings, 256);
  EXPECT_EQ(LimitsOf(*config).vocab_size, 32);
}

TEST(ModelSourceTest, UnknownPresetIsReportedUnderItsField) {
  EXPECT_THAT(Problems(SpecWith("qwen2-tiny", "gpt5")),
              HasSubstr("job.yaml: model.preset: unknown model preset 'gpt5' (known: "));
}

TEST(ModelSourceTest, ExplicitConfigProblemsNameTheirFields) {
  const std::string config =
      "model: {config: {vocab_size: 1000, hidden_size: 64, intermediate_size: 128, "
      "num_hidden_layers: 4, num_attention_heads: 2, num_key_value_heads: 2, "
      "max_position_embeddings: 1024, rms_norm_eps: 1e-5, rope_theta: 10000}}";
  const std::string valid = SpecWith("model: {preset: qwen2-tiny}", config);
  EXPECT_TRUE(ParseJobSpec(valid, "job.yaml", ModelAwareJobSpecOptions()).ok());
  // seq_len above the config's positions is refused by validate as by train.
  std::string text = valid;
  text.replace(text.find("seq_len: 128"), 12, "seq_len: 2048");
  EXPECT_THAT(Problems(text),
              HasSubstr("job.yaml: curriculum[0].seq_len: 2048 exceeds the model's maximum of "
                        "1024 positions"));
  // Representable sizes whose parameter count is past the limit.
  text = valid;
  text.replace(text.find("vocab_size: 1000, hidden_size: 64"), 33,
               "vocab_size: 16777216, hidden_size: 16777216");
  EXPECT_THAT(Problems(text),
              HasSubstr("job.yaml: model.config: the parameter count 4785100726206464 is larger "
                        "than the limit of 1099511627776"));
  // An odd head size.
  text = valid;
  text.replace(text.find("hidden_size: 64"), 15, "hidden_size: 66");
  EXPECT_THAT(Problems(text), HasSubstr("job.yaml: model.config.num_attention_heads: "));
}

TEST(ModelSourceTest, SeqLenIsCheckedAgainstThePreset) {
  // qwen2-test has 256 positions.
  EXPECT_THAT(Problems(SpecWith("qwen2-tiny", "qwen2-test")), ::testing::Not(HasSubstr("exceeds")));
  std::string text = SpecWith("qwen2-tiny", "qwen2-test");
  text.replace(text.find("seq_len: 128, tokens: 4000000, micro_batch: 16"), 46,
               "seq_len: 512, tokens: 4000000, micro_batch: 4");
  EXPECT_THAT(Problems(text),
              HasSubstr("job.yaml: curriculum[0].seq_len: 512 exceeds the model's maximum of 256"));
  text.replace(text.find("micro_batch: 4"), 14, "micro_batch: 4, yarn_factor: 2");
  EXPECT_TRUE(ParseJobSpec(text, "job.yaml", ModelAwareJobSpecOptions()).ok());
}

TEST(ModelSourceTest, InitFromReadsTheDirectorysConfig) {
  const std::string dir = ::testing::TempDir() + "/model_source_init";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << R"({"vocab_size": 1099511627776, "hidden_size": 64})";
  const std::string message = Problems(SpecWith("preset: qwen2-tiny", "init_from: " + dir));
  EXPECT_THAT(message, HasSubstr("job.yaml: model.init_from: " + dir + "/config.json"));
  std::ofstream(dir + "/config.json") << R"({"rope_theta": NaN})";
  EXPECT_THAT(Problems(SpecWith("preset: qwen2-tiny", "init_from: " + dir)),
              HasSubstr("config.json:1:16: not JSON in the value of 'rope_theta'"));
  EXPECT_THAT(Problems(SpecWith("preset: qwen2-tiny", "init_from: " + dir + "/missing")),
              HasSubstr("job.yaml: model.init_from: "));
}

}  // namespace
}  // namespace qtrain::model
