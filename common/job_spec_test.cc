#include "common/job_spec.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain {
namespace {

using ::testing::HasSubstr;

constexpr char kValid[] = R"(
name: demo
model: {preset: qwen2-tiny}
tokenizer: tok.json
data: {manifest: shards/manifest.json, validation_fraction: 0.01}
curriculum:
  - {name: short, seq_len: 128, tokens: 4000000, micro_batch: 16}
  - {name: long, seq_len: 512, tokens: 1000000, micro_batch: 4, rope_theta: 1000000}
optimizer: {lr: 6e-4, min_lr: 6e-5, warmup_steps: 100}
batch: {global_tokens: 32768}
eval: {every_steps: 100, batches: 8}
)";

// Replaces the first occurrence of `from` in the valid spec.
std::string ValidWith(const std::string& from, const std::string& to) {
  std::string text = kValid;
  const size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return text.replace(at, from.size(), to);
}

void ExpectInvalid(const std::string& text, const std::string& field_path,
                   const std::string& problem, const JobSpecOptions& options = {}) {
  const auto spec = ParseJobSpec(text, "job.yaml", options);
  ASSERT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument) << text;
  EXPECT_THAT(std::string(spec.status().message()),
              HasSubstr("job.yaml: " + field_path + ": " + problem));
}

TEST(JobSpecTest, ValidSpecGetsDefaults) {
  auto spec = ParseJobSpec(kValid, "job.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_DOUBLE_EQ(spec->optimizer().weight_decay(), 0.1);
  EXPECT_DOUBLE_EQ(spec->optimizer().beta2(), 0.95);
  EXPECT_DOUBLE_EQ(spec->optimizer().grad_clip(), 1.0);
  EXPECT_EQ(spec->optimizer().schedule(), v1::LR_SCHEDULE_COSINE);
  EXPECT_EQ(spec->precision(), v1::PRECISION_FP32);
  EXPECT_EQ(spec->world().min_workers(), 1);
  EXPECT_EQ(spec->world().max_workers(), 1);
  EXPECT_EQ(spec->world().device(), v1::DEVICE_KIND_CPU);
  EXPECT_EQ(StageSteps(*spec, 0), 123);  // ceil(4e6 / 32768)
  EXPECT_EQ(StageSteps(*spec, 1), 31);
}

TEST(JobSpecTest, ExplicitZeroIsNotReplacedByTheDefault) {
  auto spec = ParseJobSpec(ValidWith("warmup_steps: 100", "warmup_steps: 100, weight_decay: 0"),
                           "job.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->optimizer().weight_decay(), 0.0);
}

TEST(JobSpecTest, ExamplesInTheRepositoryAreValid) {
  for (const char* path : {"examples/tiny.yaml", "examples/qwen2-0.5b-long-context.json"}) {
    auto spec = LoadJobSpecFile(path);
    EXPECT_TRUE(spec.ok()) << path << ": " << spec.status();
  }
}

TEST(JobSpecTest, MissingRequiredFields) {
  ExpectInvalid(ValidWith("name: demo", ""), "name", "required");
  ExpectInvalid(ValidWith("model: {preset: qwen2-tiny}", ""), "model", "required");
  ExpectInvalid(ValidWith("tokenizer: tok.json", ""), "tokenizer", "required");
  ExpectInvalid(ValidWith("manifest: shards/manifest.json, ", ""), "data.manifest", "required");
  ExpectInvalid(ValidWith("batch: {global_tokens: 32768}", ""), "batch.global_tokens", "required");
  ExpectInvalid(ValidWith("lr: 6e-4, min_lr: 6e-5", "min_lr: 0"), "optimizer.lr", "required");
  ExpectInvalid(ValidWith("seq_len: 128, ", ""), "curriculum[0].seq_len", "required");
  ExpectInvalid(ValidWith("name: long, ", ""), "curriculum[1].name", "required");
}

TEST(JobSpecTest, OutOfRangeValues) {
  ExpectInvalid(ValidWith("validation_fraction: 0.01", "validation_fraction: 0.7"),
                "data.validation_fraction", "must be in [0, 0.5)");
  ExpectInvalid(ValidWith("min_lr: 6e-5", "min_lr: 1e-3"), "optimizer.min_lr",
                "must be in [0, lr]");
  ExpectInvalid(ValidWith("warmup_steps: 100", "warmup_steps: 100, beta2: 1.0"), "optimizer.beta2",
                "must be in [0, 1)");
  ExpectInvalid(ValidWith("micro_batch: 4,", "micro_batch: 4, yarn_factor: 0.5,"),
                "curriculum[1].yarn_factor", "must be 0 (off) or >= 1");
  ExpectInvalid(ValidWith("name: demo", "name: \"has space\""), "name", "use 1-63 letters");
  ExpectInvalid(kValid + std::string("world: {min_workers: 2, max_workers: 1}\n"),
                "world.max_workers", "must be >= world.min_workers");
  ExpectInvalid(kValid + std::string("precision: bf16\n"), "precision",
                "PRECISION_BF16 needs world.device: cuda");
}

TEST(JobSpecTest, BatchMustDivideForEveryWorldSize) {
  ExpectInvalid(ValidWith("micro_batch: 4,", "micro_batch: 3,"), "curriculum[1].micro_batch",
                "batch.global_tokens 32768 is not a multiple of seq_len x micro_batch x workers = "
                "512 x 3 x 1 = 1536");
  ExpectInvalid(kValid + std::string("world: {min_workers: 2, max_workers: 3}\n"),
                "curriculum[0].micro_batch",
                "batch.global_tokens 32768 is not a multiple of seq_len x micro_batch x workers = "
                "128 x 16 x 3 = 6144");
}

TEST(JobSpecTest, StageNamesAreUniqueAndTokensCoverABatch) {
  ExpectInvalid(ValidWith("name: long", "name: short"), "curriculum[1].name", "duplicate");
  ExpectInvalid(ValidWith("tokens: 1000000", "tokens: 1000"), "curriculum[1].tokens",
                "1000 is less than one global batch (32768 tokens)");
}

TEST(JobSpecTest, SeqLenIsCheckedAgainstTheResolvedModel) {
  JobSpecOptions options;
  options.resolve_model = [](const v1::ModelSpec& model) -> absl::StatusOr<ModelLimits> {
    if (model.preset() != "qwen2-tiny") return absl::NotFoundError("unknown preset");
    return ModelLimits{256};
  };
  ExpectInvalid(kValid, "curriculum[1].seq_len", "512 exceeds the model's maximum of 256", options);
  // With YaRN factor 2 the long stage fits.
  EXPECT_TRUE(
      ParseJobSpec(ValidWith("micro_batch: 4,", "micro_batch: 4, yarn_factor: 2,"), "j", options)
          .ok());
  ExpectInvalid(ValidWith("qwen2-tiny", "qwen2-huge"), "model", "unknown preset", options);
}

TEST(JobSpecTest, ExplicitModelConfigIsChecked) {
  const std::string config =
      "model: {config: {vocab_size: 1000, hidden_size: 64, intermediate_size: 128, "
      "num_hidden_layers: 2, num_attention_heads: 6, num_key_value_heads: 4, "
      "max_position_embeddings: 1024}}";
  const std::string text = ValidWith("model: {preset: qwen2-tiny}", config);
  ExpectInvalid(text, "model.config.num_attention_heads", "must divide hidden_size 64");
  ExpectInvalid(text, "model.config.num_key_value_heads", "must divide num_attention_heads 6");
}

TEST(JobSpecTest, AllProblemsAreReported) {
  const auto spec2 =
      ParseJobSpec(ValidWith("tokenizer: tok.json", "tokenizer: ''\nprecision: fp16"), "job.yaml");
  ASSERT_FALSE(spec2.ok());
  EXPECT_THAT(std::string(spec2.status().message()), HasSubstr("tokenizer: required"));
  EXPECT_THAT(std::string(spec2.status().message()), HasSubstr("precision: PRECISION_FP16"));
}

TEST(JobSpecTest, MissingFileIsNotFound) {
  EXPECT_EQ(LoadJobSpecFile("examples/none.yaml").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace qtrain
