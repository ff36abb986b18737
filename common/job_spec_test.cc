#include "common/job_spec.h"

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

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

TEST(JobSpecTest, BatchMustDivideIntoMicroBatches) {
  ExpectInvalid(ValidWith("micro_batch: 4,", "micro_batch: 3,"), "curriculum[1].micro_batch",
                "batch.global_tokens 32768 is not a multiple of seq_len x micro_batch = "
                "512 x 3 = 1536");
}

// kValid's stages are 2048 tokens per micro-batch each; `global` sets M = global / 2048.
std::string WithBatchAndWorld(int64_t global, int64_t min_workers, int64_t max_workers) {
  return ValidWith("global_tokens: 32768", absl::StrCat("global_tokens: ", global)) +
         absl::StrCat("world: {min_workers: ", min_workers, ", max_workers: ", max_workers, "}\n");
}

TEST(JobSpecTest, EveryWorldSizeGivesEachRankAPowerOfTwoMicroBatches) {
  const struct {
    int64_t m, lo, hi;
  } accepted[] = {{16, 1, 2}, {16, 2, 2}, {4, 4, 4},  {4, 2, 2},   {4, 1, 2},
                  {12, 3, 3}, {12, 6, 6}, {1, 1, 1},  {2, 1, 2},   {16, 16, 16},
                  {16, 1, 1}, {8, 8, 8},  {24, 3, 3}, {24, 12, 12}};
  for (const auto& c : accepted) {
    auto spec = ParseJobSpec(WithBatchAndWorld(c.m * 2048, c.lo, c.hi), "job.yaml");
    EXPECT_TRUE(spec.ok()) << "M = " << c.m << ", W in [" << c.lo << ", " << c.hi
                           << "]: " << spec.status();
  }
  // W does not divide M.
  ExpectInvalid(WithBatchAndWorld(16 * 2048, 1, 3), "curriculum[0].micro_batch",
                "stage 'short': 16 micro-batches per step over 3 workers is 16/3, not a power of "
                "two per worker (world sizes 1-3 must each give every rank 2^k micro-batches)");
  ExpectInvalid(WithBatchAndWorld(12 * 2048, 5, 5), "curriculum[0].micro_batch",
                "stage 'short': 12 micro-batches per step over 5 workers is 12/5, not a power of "
                "two per worker (world size 5 must give every rank 2^k micro-batches)");
  // W divides M but the share is not a power of two; the first bad W is named.
  ExpectInvalid(WithBatchAndWorld(12 * 2048, 3, 6), "curriculum[1].micro_batch",
                "stage 'long': 12 micro-batches per step over 4 workers is 12/4 = 3, not a power "
                "of two per worker (world sizes 3-6 must each give every rank 2^k micro-batches)");
  ExpectInvalid(WithBatchAndWorld(12 * 2048, 1, 1), "curriculum[0].micro_batch",
                "stage 'short': 12 micro-batches per step over 1 worker is 12/1 = 12, not a power "
                "of two per worker (world size 1 must give every rank 2^k micro-batches)");
  ExpectInvalid(WithBatchAndWorld(4 * 2048, 4, 8), "curriculum[0].micro_batch",
                "stage 'short': 4 micro-batches per step over 5 workers is 4/5");
  ExpectInvalid(kValid + std::string("world: {min_workers: 2, max_workers: 3}\n"),
                "curriculum[0].micro_batch",
                "stage 'short': 16 micro-batches per step over 3 workers is 16/3");
}

TEST(JobSpecTest, OneWorldSizeProblemPerStage) {
  const auto spec = ParseJobSpec(WithBatchAndWorld(12 * 2048, 1, 5), "job.yaml");
  ASSERT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(spec.status().message());
  const std::vector<std::string> lines = absl::StrSplit(message, '\n');
  ASSERT_EQ(lines.size(), 2u) << message;
  EXPECT_THAT(lines[0], HasSubstr("job.yaml: curriculum[0].micro_batch: stage 'short': 12 "
                                  "micro-batches per step over 1 worker is 12/1 = 12"));
  EXPECT_THAT(lines[1], HasSubstr("job.yaml: curriculum[1].micro_batch: stage 'long': 12 "
                                  "micro-batches per step over 1 worker is 12/1 = 12"));
}

TEST(JobSpecTest, MultiWorkerExampleRangesAreValid) {
  // The 0.5B example trains on 8 workers: 128 and 64 micro-batches per step.
  auto spec = LoadJobSpecFile("examples/qwen2-0.5b-long-context.json");
  ASSERT_TRUE(spec.ok()) << spec.status();
  for (int64_t w : {1, 2, 4, 8, 16, 32, 64}) {
    v1::JobSpec copy = *spec;
    copy.mutable_world()->set_min_workers(w);
    copy.mutable_world()->set_max_workers(w);
    EXPECT_TRUE(ValidateJobSpec(copy).ok()) << w;
  }
  v1::JobSpec copy = *spec;
  copy.mutable_world()->set_min_workers(1);
  copy.mutable_world()->set_max_workers(128);
  EXPECT_THAT(std::string(ValidateJobSpec(copy).message()),
              HasSubstr("curriculum[0].micro_batch: stage '4k': 128 micro-batches per step over "
                        "3 workers is 128/3"));
}

TEST(JobSpecTest, RegroupSecondsHasADefaultAndBounds) {
  auto spec = ParseJobSpec(kValid, "job.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(spec->world().has_regroup_seconds());
  EXPECT_EQ(spec->world().regroup_seconds(), 30);
  for (const char* ok : {"0", "0.5", "86400", "120"}) {
    auto given = ParseJobSpec(kValid + absl::StrCat("world: {regroup_seconds: ", ok, "}\n"), "j");
    ASSERT_TRUE(given.ok()) << ok << ": " << given.status();
    EXPECT_EQ(given->world().regroup_seconds(), std::stod(ok));
  }
  ExpectInvalid(kValid + std::string("world: {regroup_seconds: -1}\n"), "world.regroup_seconds",
                "must be in [0, 86400] seconds, got -1");
  ExpectInvalid(kValid + std::string("world: {regroup_seconds: 86400.5}\n"),
                "world.regroup_seconds", "must be in [0, 86400] seconds, got 86400.5");
  // Not finite (a spec built in code; YAML refuses these before validation).
  for (double bad : {std::nan(""), double{INFINITY}, -double{INFINITY}}) {
    v1::JobSpec copy = *spec;
    copy.mutable_world()->set_regroup_seconds(bad);
    const absl::Status status = ValidateJobSpec(copy);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(status.message()),
                HasSubstr("world.regroup_seconds: must be in [0, 86400] seconds"));
  }
}

TEST(JobSpecTest, WorkerInvariantDefaultsToTrueAndFalseIsRefused) {
  auto spec = ParseJobSpec(kValid, "job.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(spec->batch().has_worker_invariant());
  EXPECT_TRUE(spec->batch().worker_invariant());
  EXPECT_TRUE(ParseJobSpec(ValidWith("{global_tokens: 32768}",
                                     "{global_tokens: 32768, "
                                     "worker_invariant: true}"),
                           "j")
                  .ok());
  ExpectInvalid(
      ValidWith("{global_tokens: 32768}", "{global_tokens: 32768, worker_invariant: false}"),
      "batch.worker_invariant", "false (a ring all-reduce) is not available; use true");
  // Without invariance the world sizes are only checked for an even split.
  const auto uneven = ParseJobSpec(
      ValidWith("{global_tokens: 32768}", "{global_tokens: 24576, worker_invariant: false}") +
          "world: {min_workers: 1, max_workers: 5}\n",
      "job.yaml");
  const std::string message(uneven.status().message());
  EXPECT_THAT(message, HasSubstr("curriculum[0].micro_batch: batch.global_tokens 24576 is not a "
                                 "multiple of seq_len x micro_batch x workers = 128 x 16 x 5"));
  EXPECT_THAT(message, Not(HasSubstr("power of two")));
  // A spec built in code without defaults is worker-invariant.
  v1::JobSpec unset = *spec;
  unset.mutable_batch()->clear_worker_invariant();
  EXPECT_TRUE(ValidateJobSpec(unset).ok());
  unset.mutable_world()->set_max_workers(3);
  EXPECT_THAT(std::string(ValidateJobSpec(unset).message()), HasSubstr("16/3, not a power of two"));
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

TEST(JobSpecTest, ProductsThatWouldOverflowAreRefusedWithTheLimit) {
  // seq_len x micro_batch x workers wrapped to 0 and was used in %.
  ExpectInvalid(ValidWith("seq_len: 512, tokens: 1000000, micro_batch: 4",
                          "seq_len: 2147483648, tokens: 1000000, micro_batch: 8589934592"),
                "curriculum[1].seq_len", "2147483648 is larger than the limit of 16777216");
  ExpectInvalid(ValidWith("seq_len: 512, tokens: 1000000, micro_batch: 4",
                          "seq_len: 512, tokens: 1000000, micro_batch: 8589934592"),
                "curriculum[1].micro_batch", "8589934592 is larger than the limit of 65536");
  ExpectInvalid(ValidWith("seq_len: 512, tokens: 1000000, micro_batch: 4",
                          "seq_len: 16777216, tokens: 1000000, micro_batch: 65536"),
                "curriculum[1].micro_batch",
                "seq_len x micro_batch = 1099511627776 tokens is larger than the limit of "
                "4294967296");
  ExpectInvalid(ValidWith("tokens: 4000000", "tokens: 9223372036854775807"), "curriculum[0].tokens",
                "9223372036854775807 is larger than the limit of 1125899906842624");
  ExpectInvalid(ValidWith("global_tokens: 32768", "global_tokens: 4611686018427387904"),
                "batch.global_tokens",
                "4611686018427387904 is larger than the limit of 1125899906842624");
  ExpectInvalid(kValid + std::string("world: {min_workers: 9223372036854775000, "
                                     "max_workers: 9223372036854775807}\n"),
                "world.min_workers", "9223372036854775000 is larger than the limit of 65536");
  ExpectInvalid(ValidWith("warmup_steps: 100", "warmup_steps: 9223372036854775807"),
                "optimizer.warmup_steps",
                "9223372036854775807 is larger than the limit of 1125899906842624");
  ExpectInvalid(ValidWith("micro_batch: 4,", "micro_batch: 4, yarn_factor: 3.6e16,"),
                "curriculum[1].yarn_factor", "must be 0 (off) or >= 1 and <= 1024, got 3.6e+16");
  ExpectInvalid(ValidWith("micro_batch: 16}", "micro_batch: 16, rope_theta: 1e300}"),
                "curriculum[0].rope_theta", "must be 0 (the model's) or in (1, 1e+12]");
  ExpectInvalid(ValidWith("micro_batch: 16}", "micro_batch: 16, rope_theta: 0.5}"),
                "curriculum[0].rope_theta", "must be 0 (the model's) or in (1, 1e+12], got 0.5");
  ExpectInvalid(ValidWith("every_steps: 100, batches: 8", "every_steps: 100, batches: 9e18"),
                "eval.batches", "9000000000000000000 is larger than the limit of 1048576");
  ExpectInvalid(kValid + std::string("checkpoint: {every_steps: 9e18, keep_last: 9e18}\n"),
                "checkpoint.keep_last", "9000000000000000000 is larger than the limit of 1048576");
  ExpectInvalid(kValid + std::string("world: {max_restarts: 9e18}\n"), "world.max_restarts",
                "9000000000000000000 is larger than the limit of 1000000");
  ExpectInvalid(kValid + std::string("checkpoint: {every_steps: -1}\n"), "checkpoint.every_steps",
                "must be >= 0 (got -1)");
}

TEST(JobSpecTest, ManyStagesAreBounded) {
  std::string text = ValidWith("curriculum:\n", "curriculum:\n");
  std::string stages;
  for (int i = 0; i < 1100; ++i) {
    stages += absl::StrCat("  - {name: s", i, ", seq_len: 128, tokens: 32768, micro_batch: 16}\n");
  }
  text = ValidWith("curriculum:\n", "curriculum:\n" + stages);
  ExpectInvalid(text, "curriculum", "1102 stages is more than the limit of 1024");
}

TEST(JobSpecTest, StepArithmeticIsChecked) {
  auto spec = ParseJobSpec(kValid, "job.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(*TotalSteps(*spec), 154);
  EXPECT_THAT(*StageStartSteps(*spec), ::testing::ElementsAre(0, 123, 154));
  EXPECT_EQ(*AccumulationSteps(*spec, 0, 1), 16);  // 32768 / (128 x 16)
  EXPECT_EQ(*AccumulationSteps(*spec, 1, 2), 8);   // 32768 / (512 x 4 x 2)
  EXPECT_EQ(AccumulationSteps(*spec, 1, 3).status().code(), absl::StatusCode::kInvalidArgument);
  // Past the bounds (as a spec built in code may be), nothing wraps.
  v1::JobSpec big = *spec;
  big.mutable_batch()->set_global_tokens(1);
  big.mutable_curriculum(0)->set_tokens(INT64_MAX);
  big.mutable_curriculum(1)->set_tokens(INT64_MAX);
  EXPECT_EQ(StageSteps(big, 0), INT64_MAX);
  EXPECT_THAT(std::string(TotalSteps(big).status().message()),
              HasSubstr("curriculum[1].tokens: the job's total steps overflow int64"));
  big.mutable_curriculum(0)->set_seq_len(int64_t{1} << 31);
  big.mutable_curriculum(0)->set_micro_batch(int64_t{1} << 33);
  EXPECT_THAT(std::string(AccumulationSteps(big, 0, 1).status().message()),
              HasSubstr("is not a positive int64"));
  EXPECT_EQ(ScaledPositions(32768, 4), 131072);
  EXPECT_EQ(ScaledPositions(32768, 1), 32768);
  EXPECT_EQ(ScaledPositions(32768, 0), 32768);
  EXPECT_EQ(ScaledPositions(int64_t{1} << 40, 3.6e16), std::nullopt);
  EXPECT_EQ(ScaledPositions(1, std::nan("")), std::nullopt);
}

TEST(JobSpecTest, WarmupLongerThanTheJobIsRefused) {
  ExpectInvalid(ValidWith("warmup_steps: 100", "warmup_steps: 155"), "optimizer.warmup_steps",
                "155 is more than the job's 154 optimizer steps");
  EXPECT_TRUE(ParseJobSpec(ValidWith("warmup_steps: 100", "warmup_steps: 154"), "j").ok());
}

TEST(JobSpecTest, ExplicitZeroWorkersAreRefused) {
  ExpectInvalid(kValid + std::string("world: {min_workers: 0}\n"), "world.min_workers",
                "must be >= 1 (got 0)");
  ExpectInvalid(kValid + std::string("world: {max_workers: 0}\n"), "world.max_workers",
                "must be >= 1 (got 0)");
  auto spec = ParseJobSpec(kValid + std::string("world: {min_workers: 2, max_workers: null}\n"),
                           "job.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->world().max_workers(), 2);
}

TEST(JobSpecTest, ActivationSizesOfTheModelMustFit) {
  JobSpecOptions options;
  options.resolve_model = [](const v1::ModelSpec&) -> absl::StatusOr<ModelLimits> {
    return ModelLimits{.max_position_embeddings = 1 << 24,
                       .vocab_size = 1 << 24,
                       .hidden_size = 1 << 24,
                       .intermediate_size = 1 << 24,
                       .num_layers = 1 << 24,
                       .num_heads = 1 << 24};
  };
  ExpectInvalid(kValid, "curriculum[0].micro_batch",
                "seq_len 128 x micro_batch 16: the layer activations (tokens x layers x width) "
                "exceed the limit of 72057594037927936 elements",
                options);
}

TEST(JobSpecTest, ResolverProblemsKeepTheirFieldPaths) {
  JobSpecOptions options;
  options.resolve_model = [](const v1::ModelSpec&) -> absl::StatusOr<ModelLimits> {
    return absl::InvalidArgumentError(
        "model.config.vocab_size: 1099511627776 is larger than the limit of 16777216\n"
        "something else");
  };
  const auto spec = ParseJobSpec(kValid, "job.yaml", options);
  EXPECT_THAT(std::string(spec.status().message()),
              HasSubstr("job.yaml: model.config.vocab_size: 1099511627776 is larger"));
  EXPECT_THAT(std::string(spec.status().message()), HasSubstr("job.yaml: model: something else"));
}

TEST(JobSpecTest, ExplicitModelConfigSizesAreBounded) {
  const std::string config =
      "model: {config: {vocab_size: 1099511627776, hidden_size: 64, intermediate_size: 128, "
      "num_hidden_layers: 1000000000, num_attention_heads: 4, num_key_value_heads: 4, "
      "max_position_embeddings: 1024, rope_theta: -5}}";
  const std::string text = ValidWith("model: {preset: qwen2-tiny}", config);
  ExpectInvalid(text, "model.config.vocab_size",
                "1099511627776 is larger than the limit of 16777216");
  ExpectInvalid(text, "model.config.num_hidden_layers",
                "1000000000 is larger than the limit of 16777216");
  ExpectInvalid(text, "model.config.rope_theta", "must be 0 (the default, 1e6) or in (1, 1e+12]");
}

TEST(JobSpecTest, SpecFilesAreBounded) {
  const std::string path = ::testing::TempDir() + "/big.yaml";
  {
    std::FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    const std::string line(1023, '#');
    for (int i = 0; i < 1100; ++i) std::fprintf(f, "%s\n", line.c_str());
    std::fclose(f);
  }
  EXPECT_THAT(std::string(LoadJobSpecFile(path).status().message()),
              HasSubstr("more than the limit of 1048576 bytes"));
}

}  // namespace
}  // namespace qtrain
