#include "worker/train/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/run_dir_lock.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/model/checkpoint_io.h"
#include "worker/model/config.h"
#include "worker/train/metrics_log.h"
#include "worker/train/synthetic_tokens_test_util.h"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

InMemoryTokenSource MakeData(int64_t n) {
  return testing::SyntheticTokens(n, 12345, "synthetic-v1");
}

// Two stages (seq_len 16 then 32), 4 + 3 steps of 256 tokens.
std::string SpecText(const std::string& optimizer = "{lr: 1e-2, min_lr: 1e-3, warmup_steps: 2}") {
  return R"(
name: trainer-test
seed: 3
model: {preset: qwen2-test}
tokenizer: unused.json
data: {manifest: unused.json, validation_fraction: 0.1}
curriculum:
  - {name: short, seq_len: 16, tokens: 1024, micro_batch: 4}
  - {name: long, seq_len: 32, tokens: 768, micro_batch: 2, rope_theta: 20000}
batch: {global_tokens: 256}
checkpoint: {every_steps: 2, keep_last: 2}
eval: {every_steps: 3, batches: 2}
optimizer: )" +
         optimizer + "\n";
}

class TrainerTest : public ::testing::Test {
 protected:
  TrainerTest() : data_(MakeData(70000)) {}
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("trainer_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  absl::StatusOr<TrainerSummary> Train(const std::string& run, const std::string& spec_text,
                                       TrainerOptions options = {}) {
    auto spec = ParseJobSpec(spec_text, "spec.yaml");
    if (!spec.ok()) return spec.status();
    auto config = model::PresetConfig("qwen2-test");
    options.run_dir = (root_ / run).string();
    auto trainer = Trainer::Create(*spec, *config, std::nullopt, data_, std::move(options));
    if (!trainer.ok()) return trainer.status();
    return (*trainer)->Run();
  }
  std::string FinalHash(const std::string& run) {
    auto digest = Sha256File((root_ / run / "final" / "model.safetensors").string());
    return digest.ok() ? *digest : "missing: " + std::string(digest.status().message());
  }

  InMemoryTokenSource data_;
  fs::path root_;
};

TEST_F(TrainerTest, RunsTheCurriculumAndLearns) {
  std::vector<StepReport> reports;
  TrainerOptions options;
  options.on_step = [&](const StepReport& r) { reports.push_back(r); };
  auto summary = Train("run", SpecText(), options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_TRUE(summary->completed);
  EXPECT_EQ(summary->steps, 7);
  EXPECT_EQ(summary->tokens_seen, 7 * 256);
  // The synthetic stream is mostly a successor function: context helps a lot.
  ASSERT_TRUE(summary->final_eval_loss && summary->validation_unigram_entropy);
  EXPECT_GT(*summary->validation_unigram_entropy, 3.0);  // ~log(32) for near-uniform tokens
  EXPECT_LT(*summary->final_eval_loss, *summary->validation_unigram_entropy);
  ASSERT_EQ(reports.size(), 7u);
  EXPECT_EQ(reports[3].stage, 0);
  EXPECT_EQ(reports[4].stage_name, "long");
  EXPECT_LT(reports.back().loss, reports.front().loss);
  EXPECT_TRUE(reports[2].eval_loss.has_value());  // every 3 steps, and at the end
  EXPECT_TRUE(reports[6].eval_loss.has_value());
  EXPECT_FALSE(reports[3].eval_loss.has_value());
  // Warmup then decay.
  EXPECT_DOUBLE_EQ(reports[0].learning_rate, 5e-3);
  EXPECT_DOUBLE_EQ(reports[1].learning_rate, 1e-2);
  EXPECT_DOUBLE_EQ(reports[6].learning_rate, 1e-3);

  auto records = MetricsLog::ReadAll((root_ / "run" / "metrics.jsonl").string());
  ASSERT_TRUE(records.ok());
  EXPECT_EQ(records->size(), 7u);
  EXPECT_TRUE(fs::exists(root_ / "run" / "loss.svg"));
  // The export loads as a transformers checkpoint with the last stage's RoPE base.
  auto exported = model::LoadCheckpoint((root_ / "run" / "final").string());
  ASSERT_TRUE(exported.ok()) << exported.status();
  EXPECT_EQ(exported->config.rope_theta, 20000.0);
  // keep_last: 2 newest checkpoints remain.
  EXPECT_EQ(std::distance(fs::directory_iterator(root_ / "run" / "checkpoints"),
                          fs::directory_iterator()),
            2);
}

TEST_F(TrainerTest, ResumeIsExactMidStageAndOnTheStageBoundary) {
  ASSERT_TRUE(Train("straight", SpecText()).ok());
  const std::string expected = FinalHash("straight");
  for (int64_t stop : {3, 4}) {  // step 4 ends stage 0
    const std::string run = absl::StrCat("stopped_at_", stop);
    TrainerOptions first;
    first.stop_after_step = stop;
    auto partial = Train(run, SpecText(), first);
    ASSERT_TRUE(partial.ok()) << partial.status();
    EXPECT_FALSE(partial->completed);
    EXPECT_EQ(partial->steps, stop);
    std::vector<std::string> events;
    TrainerOptions second;
    second.on_event = [&](const std::string& e) { events.push_back(e); };
    auto resumed = Train(run, SpecText(), second);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    EXPECT_TRUE(resumed->completed);
    EXPECT_THAT(events.front(), HasSubstr(absl::StrCat("(step ", stop, " of 7)")));
    EXPECT_EQ(FinalHash(run), expected) << "stopped at " << stop;
    auto records = MetricsLog::ReadAll((root_ / run / "metrics.jsonl").string());
    EXPECT_EQ(records->size(), 7u);
  }
}

// Recomputing the long stage's activations in backward trains the same bytes, and a run may
// switch it on or off when it resumes.
TEST_F(TrainerTest, RecomputationTrainsTheSameBytesAndMayChangeOnResume) {
  ASSERT_TRUE(Train("straight", SpecText()).ok());
  std::string recompute = SpecText();
  const std::string long_stage = "micro_batch: 2, rope_theta: 20000}";
  recompute.replace(recompute.find(long_stage), long_stage.size(),
                    "micro_batch: 2, rope_theta: 20000, recompute_activations: true}");
  std::vector<std::string> events;
  TrainerOptions logged;
  logged.on_event = [&](const std::string& e) { events.push_back(e); };
  ASSERT_TRUE(Train("recompute", recompute, logged).ok());
  EXPECT_EQ(FinalHash("recompute"), FinalHash("straight"));
  EXPECT_THAT(events, ::testing::Contains(HasSubstr("stage 1 'long': seq_len 32, steps 5-7, "
                                                    "recomputing activations")));
  EXPECT_THAT(events, ::testing::Contains(HasSubstr("stage 0 'short': seq_len 16, steps 1-4")));
  EXPECT_THAT(events, ::testing::Not(::testing::Contains(HasSubstr("steps 1-4, recomputing"))));
  TrainerOptions first;
  first.stop_after_step = 5;  // one step into the long stage, without recomputation
  ASSERT_TRUE(Train("switched", SpecText(), first).ok());
  auto resumed = Train("switched", recompute);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(FinalHash("switched"), FinalHash("straight"));
}

TEST_F(TrainerTest, DamagedNewestCheckpointFallsBackAndStillEndsIdentically) {
  ASSERT_TRUE(Train("straight", SpecText()).ok());
  TrainerOptions first;
  first.stop_after_step = 5;
  ASSERT_TRUE(Train("damaged", SpecText(), first).ok());
  // Flip a byte of the newest checkpoint's weights.
  const fs::path newest = root_ / "damaged" / "checkpoints" / "step-000000000005";
  {
    std::fstream f(newest / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('\x7f');
  }
  std::vector<std::string> events;
  TrainerOptions second;
  second.on_event = [&](const std::string& e) { events.push_back(e); };
  ASSERT_TRUE(Train("damaged", SpecText(), second).ok());
  EXPECT_THAT(events[0], HasSubstr("skipping damaged"));
  EXPECT_THAT(events[1], HasSubstr("(step 4 of 7)"));
  EXPECT_EQ(FinalHash("damaged"), FinalHash("straight"));
}

TEST_F(TrainerTest, AccumulationMatchesOneLargeMicroBatch) {
  // One step of 8 sequences: as one micro-batch, and as four micro-batches of 2. The gradients
  // themselves are compared (the first AdamW step after clipping hardly depends on their scale).
  const std::string base = R"(
name: accumulate
model: {preset: qwen2-test}
tokenizer: t
data: {manifest: m}
optimizer: {lr: 1e-2}
batch: {global_tokens: 128}
)";
  const auto capture = [](std::vector<float>& out) {
    TrainerOptions options;
    options.gradient_hook = [&out](int64_t step, std::span<float> grads) {
      if (step == 0) out.assign(grads.begin(), grads.end());
    };
    return options;
  };
  std::vector<float> one_grads, four_grads;
  ASSERT_TRUE(Train("one",
                    base + "curriculum: [{name: s, seq_len: 16, tokens: 128, micro_batch: 8}]",
                    capture(one_grads))
                  .ok());
  ASSERT_TRUE(Train("four",
                    base + "curriculum: [{name: s, seq_len: 16, tokens: 128, micro_batch: 2}]",
                    capture(four_grads))
                  .ok());
  ASSERT_EQ(one_grads.size(), four_grads.size());
  ASSERT_FALSE(one_grads.empty());
  double max_abs = 0, max_grad_diff = 0;
  for (size_t i = 0; i < one_grads.size(); ++i) {
    max_abs = std::max(max_abs, static_cast<double>(std::abs(one_grads[i])));
    max_grad_diff =
        std::max(max_grad_diff, static_cast<double>(std::abs(one_grads[i] - four_grads[i])));
  }
  ASSERT_GT(max_abs, 0.0);
  // Rounding only: a wrong scale (x2, /4, ...) is off by the size of the gradients themselves.
  EXPECT_LT(max_grad_diff, 1e-4 * max_abs);
  double norm_one = 0, norm_four = 0;
  for (size_t i = 0; i < one_grads.size(); ++i) {
    norm_one += static_cast<double>(one_grads[i]) * one_grads[i];
    norm_four += static_cast<double>(four_grads[i]) * four_grads[i];
  }
  EXPECT_NEAR(std::sqrt(norm_four) / std::sqrt(norm_one), 1.0, 1e-4);

  auto one = model::LoadCheckpoint((root_ / "one" / "final").string());
  auto four = model::LoadCheckpoint((root_ / "four" / "final").string());
  ASSERT_TRUE(one.ok() && four.ok());
  double max_diff = 0;
  for (size_t i = 0; i < one->params.size(); ++i) {
    max_diff = std::max(max_diff, static_cast<double>(std::abs(one->params[i] - four->params[i])));
  }
  EXPECT_LT(max_diff, 1e-5);  // an lr of 1e-2 moves weights by ~1e-2: this is rounding only
}

TEST_F(TrainerTest, NonFiniteStepsAreSkippedThenStopTheRun) {
  TrainerOptions options;
  options.gradient_hook = [](int64_t step, std::span<float> grads) {
    if (step == 1 || step == 2) grads[0] = std::numeric_limits<float>::quiet_NaN();
  };
  auto summary = Train("skips", SpecText(), options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->skipped_steps, 2);
  EXPECT_TRUE(summary->completed);

  TrainerOptions always;
  always.gradient_hook = [](int64_t, std::span<float> grads) {
    grads[0] = std::numeric_limits<float>::infinity();
  };
  auto failed = Train("stops", SpecText("{lr: 1e-2, max_consecutive_nonfinite_steps: 3}"), always);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(failed.status().message()), HasSubstr("3 steps in a row"));
}

TEST_F(TrainerTest, ResumeWithAnotherDataPlanIsRefused) {
  TrainerOptions first;
  first.stop_after_step = 2;
  ASSERT_TRUE(Train("run", SpecText(), first).ok());
  const std::string spec = SpecText();
  const size_t at = spec.find("seed: 3");
  auto refused = Train("run", spec.substr(0, at) + "seed: 4" + spec.substr(at + 7));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("another data plan"));
}

TEST_F(TrainerTest, TooLittleDataIsAClearError) {
  std::string spec = SpecText();
  spec.replace(spec.find("batches: 2"), 10, "batches: 500");
  auto result = Train("few_validation", spec);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("eval.batches: stage 'short' needs 2000 validation windows of 16 tokens"));
  data_ = MakeData(100);
  spec = SpecText();
  spec = spec.substr(0, spec.find("eval:")) + spec.substr(spec.find("optimizer:"));
  result = Train("smaller", spec);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("fewer than one global batch"));
}

// Rewrites the manifest of `checkpoint_dir` through `edit`.
void EditManifest(const fs::path& checkpoint_dir,
                  const std::function<void(nlohmann::json&)>& edit) {
  const fs::path path = checkpoint_dir / "manifest.json";
  nlohmann::json manifest = nlohmann::json::parse(ReadFileToString(path.string()).value());
  edit(manifest);
  std::ofstream(path, std::ios::trunc) << manifest.dump();
}

TEST_F(TrainerTest, ALockedRunDirectoryIsRefusedBeforeAnythingIsWritten) {
  auto held = RunDirLock::Acquire((root_ / "locked").string());
  ASSERT_TRUE(held.ok()) << held.status();
  auto refused = Train("locked", SpecText());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr(absl::StrCat("is in use by process ", ::getpid())));
  EXPECT_FALSE(fs::exists(root_ / "locked" / "job.json"));
  EXPECT_FALSE(fs::exists(root_ / "locked" / "checkpoints"));
  EXPECT_FALSE(fs::exists(root_ / "locked" / "metrics.jsonl"));

  // The holder may hand its lock to the trainer; the trainer takes and drops its own otherwise.
  TrainerOptions with_lock;
  with_lock.run_dir_lock = std::make_shared<const RunDirLock>(std::move(*held));
  with_lock.stop_after_step = 1;
  auto trained = Train("locked", SpecText(), with_lock);
  ASSERT_TRUE(trained.ok()) << trained.status();
  EXPECT_EQ(RunDirLock::HolderPid((root_ / "locked").string()), ::getpid());
  with_lock.run_dir_lock.reset();
  auto resumed = Train("locked", SpecText());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(RunDirLock::HolderPid((root_ / "locked").string()), std::nullopt);

  TrainerOptions wrong;
  auto other = RunDirLock::Acquire((root_ / "other").string());
  ASSERT_TRUE(other.ok());
  wrong.run_dir_lock = std::make_shared<const RunDirLock>(std::move(*other));
  EXPECT_EQ(Train("locked", SpecText(), wrong).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(TrainerTest, CheckpointStateThatDisagreesIsDamagedAndThePreviousOneIsUsed) {
  ASSERT_TRUE(Train("straight", SpecText()).ok());
  const std::string expected = FinalHash("straight");
  struct Lie {
    std::string name;
    std::function<void(nlohmann::json&)> edit;
    std::string reason;
  };
  const Lie lies[] = {
      {"step 5 -> 7", [](nlohmann::json& m) { m["metadata"]["step"] = 7; }, "metadata.step 7"},
      {"tokens_seen -100", [](nlohmann::json& m) { m["metadata"]["tokens_seen"] = -100; },
       "metadata.tokens_seen -100 is not step 5 x batch.global_tokens 256 = 1280"},
      {"tokens_seen a string", [](nlohmann::json& m) { m["metadata"]["tokens_seen"] = "1280"; },
       "metadata.tokens_seen is \"1280\", not an integer"},
      {"tokens_seen huge",
       [](nlohmann::json& m) { m["metadata"]["tokens_seen"] = 18446744073709551615ull; },
       "out of range"},
      {"stage", [](nlohmann::json& m) { m["metadata"]["stage"] = 0; },
       "metadata.stage 0 is not the stage of step 5 (1)"},
      {"skipped past the step", [](nlohmann::json& m) { m["metadata"]["skipped_steps"] = 6; },
       "metadata.skipped_steps 6 is outside 0-5"},
      {"skipped without the optimizer",
       [](nlohmann::json& m) { m["metadata"]["skipped_steps"] = 1; },
       "metadata.optimizer_updates 5 is not the trainer state's 4"},
      {"in a row past skipped",
       [](nlohmann::json& m) { m["metadata"]["consecutive_nonfinite_steps"] = 2; },
       "metadata.consecutive_nonfinite_steps 2 is outside 0-0"},
      {"no files", [](nlohmann::json& m) { m["files"] = nlohmann::json::array(); },
       "manifest does not list config.json"},
      {"optimizer unlisted",
       [](nlohmann::json& m) {
         auto& files = m["files"];
         for (size_t i = 0; i < files.size(); ++i) {
           if (files[i]["path"] == "optimizer-00000-of-00001.safetensors") files.erase(i);
         }
       },
       "file optimizer-00000-of-00001.safetensors is not among the manifest's files"},
      {"no spec", [](nlohmann::json& m) { m["metadata"].erase("spec"); }, "lacks the job spec"},
      {"spec edited", [](nlohmann::json& m) { m["metadata"]["spec"]["optimizer"]["lr"] = 1; },
       "metadata.spec does not match metadata.spec_sha256"},
      {"plan hash not hex", [](nlohmann::json& m) { m["metadata"]["data_plan_sha256"] = "abc"; },
       "metadata.data_plan_sha256 is missing or not a sha256"},
  };
  TrainerOptions first;
  first.stop_after_step = 5;
  ASSERT_TRUE(Train("base", SpecText(), first).ok());
  int n = 0;
  for (const Lie& lie : lies) {
    SCOPED_TRACE(lie.name);
    const std::string run = absl::StrCat("lie", n++);
    fs::copy(root_ / "base", root_ / run, fs::copy_options::recursive);
    EditManifest(root_ / run / "checkpoints" / "step-000000000005", lie.edit);
    std::vector<std::string> events;
    TrainerOptions second;
    second.on_event = [&](const std::string& e) { events.push_back(e); };
    // Only the first run goes to the end (the others stop once step 5 is trained again).
    if (n > 1) second.stop_after_step = 5;
    auto resumed = Train(run, SpecText(), second);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    EXPECT_EQ(resumed->steps, n > 1 ? 5 : 7);
    ASSERT_GE(events.size(), 2u);
    EXPECT_THAT(events[0], HasSubstr("skipping damaged checkpoint"));
    EXPECT_THAT(events[0], HasSubstr(lie.reason));
    EXPECT_THAT(events[1], HasSubstr("(step 4 of 7)"));
    if (n == 1) {
      EXPECT_EQ(FinalHash(run), expected);
    }
    fs::remove_all(root_ / run);
  }
}

TEST_F(TrainerTest, ResumeWithAnotherSpecIsRefusedUnlessTheChangeIsSafe) {
  TrainerOptions first;
  first.stop_after_step = 3;
  ASSERT_TRUE(Train("run", SpecText(), first).ok());
  const std::string job_json = ReadFileToString((root_ / "run" / "job.json").string()).value();
  EXPECT_THAT(job_json, HasSubstr("\"name\": \"trainer-test\""));
  const auto edited = [](std::string spec, const std::string& from, const std::string& to) {
    spec.replace(spec.find(from), from.size(), to);
    return spec;
  };
  for (const auto& [from, to, field] :
       {std::tuple{"lr: 1e-2", "lr: 2e-2", "optimizer.lr: 0.01 -> 0.02"},
        std::tuple{"micro_batch: 4", "micro_batch: 2", "curriculum[0].micro_batch: 4 -> 2"},
        std::tuple{"name: trainer-test", "name: renamed", "name: \"trainer-test\" -> \"renamed\""},
        std::tuple{"micro_batch: 2, rope", "micro_batch: 1, rope",
                   "curriculum[1].micro_batch: 2 -> 1"}}) {
    SCOPED_TRACE(field);
    auto refused = Train("run", edited(SpecText(), from, to));
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(refused.status().message()), HasSubstr(field));
    // The record of the run is untouched, and so are its checkpoints.
    EXPECT_EQ(ReadFileToString((root_ / "run" / "job.json").string()).value(), job_json);
  }
  // Bookkeeping fields change freely, and job.json records the change.
  std::vector<std::string> events;
  TrainerOptions second;
  second.on_event = [&](const std::string& e) { events.push_back(e); };
  second.stop_after_step = 5;
  auto resumed = Train("run", edited(SpecText(), "keep_last: 2", "keep_last: 3"), second);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_THAT(events, ::testing::Contains(HasSubstr(
                          "spec changed since the checkpoint: checkpoint.keep_last: 2 -> 3")));
  EXPECT_THAT(ReadFileToString((root_ / "run" / "job.json").string()).value(),
              HasSubstr("\"keep_last\": \"3\""));
  // A training field changes only when allowed by name.
  TrainerOptions allowed;
  allowed.allowed_spec_changes = {"optimizer.lr"};
  const std::string new_lr =
      edited(edited(SpecText(), "keep_last: 2", "keep_last: 3"), "lr: 1e-2", "lr: 2e-2");
  auto finished = Train("run", new_lr, allowed);
  ASSERT_TRUE(finished.ok()) << finished.status();
  EXPECT_TRUE(finished->completed);
  EXPECT_THAT(ReadFileToString((root_ / "run" / "job.json").string()).value(),
              HasSubstr("\"lr\": 0.02"));
  // Fields the data order depends on cannot be allowed.
  TrainerOptions never;
  never.allowed_spec_changes = {"seed"};
  EXPECT_EQ(Train("run", SpecText(), never).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TrainerTest, SizesThatOverflowAreErrorsNotWraparound) {
  const std::string base = R"(
name: huge
model: {preset: qwen2-test}
tokenizer: t
data: {manifest: m}
optimizer: {lr: 1e-2}
)";
  // Steps of two stages that do not add up in int64.
  auto steps = Train("steps", base + R"(batch: {global_tokens: 1}
curriculum:
  - {name: a, seq_len: 1, tokens: 9223372036854775807, micro_batch: 1}
  - {name: b, seq_len: 1, tokens: 9223372036854775807, micro_batch: 1}
)");
  EXPECT_EQ(steps.status().code(), absl::StatusCode::kInvalidArgument);
  // (The spec validator may refuse such sizes first, naming the field; either way it is a clear
  // INVALID_ARGUMENT about the tokens, never a wrapped step count.)
  EXPECT_THAT(std::string(steps.status().message()), HasSubstr("tokens"));
  // Steps that fit, tokens seen that do not.
  auto tokens = Train("tokens", base + R"(batch: {global_tokens: 16}
curriculum:
  - {name: a, seq_len: 16, tokens: 9223372036854775807, micro_batch: 1}
  - {name: b, seq_len: 16, tokens: 9223372036854775807, micro_batch: 1}
)");
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(tokens.status().message()), HasSubstr("tokens"));
  // A window of 2^62 tokens (YaRN makes room for it): its data-plan block, 8 windows, does not fit.
  auto block = Train("block", base + R"(batch: {global_tokens: 4611686018427387904}
curriculum:
  - {name: a, seq_len: 4611686018427387904, tokens: 4611686018427387904, micro_batch: 1,
     yarn_factor: 18014398509481984}
)");
  EXPECT_EQ(block.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(block.status().message()), HasSubstr("seq_len"));
  // Positions x YaRN factor past int64.
  v1::CurriculumStage stage;
  stage.set_name("long");
  stage.set_yarn_factor(1e300);
  auto config = Trainer::StageConfig(*model::PresetConfig("qwen2-test"), stage);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(config.status().message()), HasSubstr("yarn_factor"));
  stage.set_yarn_factor(4);
  config = Trainer::StageConfig(*model::PresetConfig("qwen2-test"), stage);
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->max_position_embeddings,
            4 * model::PresetConfig("qwen2-test")->max_position_embeddings);
}

// Every file of every checkpoint of `run`, by "step-N/file", with its sha256.
std::map<std::string, std::string> CheckpointHashes(const fs::path& run) {
  std::map<std::string, std::string> hashes;
  for (const auto& dir : fs::directory_iterator(run / "checkpoints")) {
    for (const auto& file : fs::directory_iterator(dir.path())) {
      hashes[dir.path().filename().string() + "/" + file.path().filename().string()] =
          Sha256File(file.path().string()).value();
    }
  }
  return hashes;
}

TEST_F(TrainerTest, AStageAtATimeFromNamedCheckpointsEndsIdentically) {
  TrainerOptions keep_all;
  keep_all.apply_retention = false;
  ASSERT_TRUE(Train("straight", SpecText(), keep_all).ok());
  // Stage 0 alone (steps 1-4) from the initialization, then stage 1 from checkpoint 4.
  std::vector<int64_t> committed;
  TrainerOptions stage0;
  stage0.resume_from_step = -1;
  stage0.stop_after_step = 4;
  stage0.apply_retention = false;
  stage0.on_checkpoint = [&](const CheckpointInfo& info) {
    EXPECT_TRUE(fs::exists(fs::path(info.directory) / "model.safetensors"));
    EXPECT_EQ(info.metadata["step"], info.step);
    EXPECT_GT(info.write_seconds, 0);  // the time rank 0 spent writing it
    committed.push_back(info.step);
    return absl::OkStatus();
  };
  auto first = Train("staged", SpecText(), stage0);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_FALSE(first->completed);
  EXPECT_EQ(first->steps, 4);
  EXPECT_EQ(committed, (std::vector<int64_t>{2, 4}));
  TrainerOptions stage1;
  stage1.resume_from_step = 4;
  stage1.stop_after_step = 7;
  stage1.apply_retention = false;
  std::vector<std::string> events;
  stage1.on_event = [&](const std::string& e) { events.push_back(e); };
  auto second = Train("staged", SpecText(), stage1);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(second->completed);
  EXPECT_THAT(events.front(), HasSubstr("(step 4 of 7)"));
  EXPECT_EQ(FinalHash("staged"), FinalHash("straight"));
  const auto staged = CheckpointHashes(root_ / "staged");
  EXPECT_EQ(staged, CheckpointHashes(root_ / "straight"));
  // Steps 2, 4, 6 and 7, nothing deleted.
  EXPECT_TRUE(staged.count("step-000000000002/optimizer-00000-of-00001.safetensors"));
  EXPECT_TRUE(staged.count("step-000000000007/model.safetensors"));
}

TEST_F(TrainerTest, ResumeFromStepIsExactOrRefused) {
  TrainerOptions first;
  first.stop_after_step = 4;
  first.apply_retention = false;
  ASSERT_TRUE(Train("run", SpecText(), first).ok());
  // -1 ignores the checkpoints on disk: it trains steps 1-2 again.
  std::vector<StepReport> reports;
  TrainerOptions fresh;
  fresh.resume_from_step = -1;
  fresh.stop_after_step = 2;
  fresh.on_step = [&](const StepReport& r) { reports.push_back(r); };
  auto again = Train("run", SpecText(), fresh);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(reports.size(), 2u);
  EXPECT_EQ(reports.front().step, 1);
  // An absent step.
  TrainerOptions absent;
  absent.resume_from_step = 3;
  auto missing = Train("run", SpecText(), absent);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("step-000000000003"));
  // A damaged one is not replaced by an older one.
  {
    std::fstream f(root_ / "run" / "checkpoints" / "step-000000000004" / "model.safetensors",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('\x7f');
  }
  TrainerOptions damaged;
  damaged.resume_from_step = 4;
  auto refused = Train("run", SpecText(), damaged);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss) << refused.status();
  TrainerOptions bad;
  bad.resume_from_step = -2;
  EXPECT_EQ(Train("run", SpecText(), bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TrainerTest, CancelledStopsBetweenSteps) {
  int64_t steps_done = 0;
  bool cancel = false;
  TrainerOptions options;
  options.on_step = [&](const StepReport& r) {
    steps_done = r.step;
    if (r.step == 3) cancel = true;
  };
  options.cancelled = [&] { return cancel; };
  auto result = Train("run", SpecText(), options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("training cancelled at step 3"));
  EXPECT_EQ(steps_done, 3);
  // Cancelled before anything: no step at all.
  TrainerOptions at_once;
  at_once.cancelled = [] { return true; };
  at_once.on_step = [](const StepReport&) { ADD_FAILURE() << "trained a step"; };
  EXPECT_EQ(Train("other", SpecText(), at_once).status().code(), absl::StatusCode::kCancelled);
}

TEST_F(TrainerTest, ACheckpointCallbackErrorStopsTheRun) {
  std::vector<int64_t> steps;
  TrainerOptions options;
  options.on_step = [&](const StepReport& r) { steps.push_back(r.step); };
  options.on_checkpoint = [](const CheckpointInfo& info) {
    return info.step == 2 ? absl::AbortedError("not committed") : absl::OkStatus();
  };
  auto result = Train("run", SpecText(), options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("not committed"));
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2}));
}

TEST_F(TrainerTest, WithoutRetentionEveryCheckpointStays) {
  std::vector<TrainerPhase> phases;
  TrainerOptions options;
  options.apply_retention = false;
  options.on_phase = [&](TrainerPhase p) { phases.push_back(p); };
  ASSERT_TRUE(Train("run", SpecText(), options).ok());
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root_ / "run" / "checkpoints")) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"step-000000000002", "step-000000000004",
                                             "step-000000000006", "step-000000000007"}));
  EXPECT_EQ(std::count(phases.begin(), phases.end(), TrainerPhase::kCheckpointing), 4);
  EXPECT_EQ(std::count(phases.begin(), phases.end(), TrainerPhase::kEvaluating), 3);  // 3, 6, 7
  EXPECT_EQ(phases.back(), TrainerPhase::kTraining);
}

TEST_F(TrainerTest, AGroupNeedsAMatchingCommunicator) {
  TrainerOptions two;
  two.world_size = 2;
  two.rank = 1;
  auto result =
      Train("run", SpecText("{lr: 1e-2}") + "world: {min_workers: 1, max_workers: 2}\n", two);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("rank 1 of 2 workers needs a communicator"));
  EXPECT_FALSE(fs::exists(root_ / "run"));
  auto local = comm::MakeLocalCommunicator();
  two.communicator = local.get();
  result = Train("run", SpecText("{lr: 1e-2}") + "world: {min_workers: 1, max_workers: 2}\n", two);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr("given the local communicator of rank 0 of 1"));
  TrainerOptions bad_rank;
  bad_rank.rank = 1;
  EXPECT_EQ(Train("run", SpecText(), bad_rank).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace qtrain::train
