// eval.tasks in training: run at each stage's end and the job's end with the eval library, one
// metrics.jsonl record per result, bad data refused before the first step, cancellation while
// evaluating, and exact resume.
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/comm/in_process_communicator.h"
#include "worker/model/model_source.h"
#include "worker/model/opaque_backend_test_util.h"
#include "worker/train/metrics_log.h"
#include "worker/train/synthetic_tokens_test_util.h"
#include "worker/train/test_dataset.h"
#include "worker/train/trainer.h"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

InMemoryTokenSource MakeData(int64_t n) {
  return testing::SyntheticTokens(n, 777, "eval-synthetic-v1");
}

class TrainerEvalTest : public ::testing::Test {
 protected:
  TrainerEvalTest() : data_(MakeData(40000)) {}
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("trainer_eval_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
    auto dataset = testing::WriteTestDataset((root_ / "fixture").string(), 2000, 1000);
    ASSERT_TRUE(dataset.ok()) << dataset.status();
    tokenizer_ = dataset->tokenizer_path;
    choices_ = (root_ / "choices.jsonl").string();
    ASSERT_TRUE(WriteFileAtomically(
                    choices_,
                    R"({"context": "the token", "choices": [" then", " shard", " the"], "label": 0}
{"context": "then the", "choices": [" tokens", " token"], "label": 1}
{"context": "shard the", "choices": [" token", " then", " the", " shard"], "label": 2}
)")
                    .ok());
    text_ = (root_ / "text.jsonl").string();
    std::string text;
    for (int i = 0; i < 2; ++i) {
      std::string line;
      for (int j = 0; j < 12; ++j) line += j % 3 == i ? "the token then " : "shard tokens the ";
      text += nlohmann::json({{"text", line}}).dump() + "\n";
    }
    ASSERT_TRUE(WriteFileAtomically(text_, text).ok());
  }
  void TearDown() override { fs::remove_all(root_); }

  // Two stages (4 + 3 steps), a checkpoint every 2 steps, and `tasks` (YAML flow list).
  std::string Spec(const std::string& tasks) const {
    return absl::StrCat(R"(
name: trainer-eval
seed: 4
model: {config: {vocab_size: 320, hidden_size: 32, intermediate_size: 48, num_hidden_layers: 2,
                 num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64}}
tokenizer: )",
                        tokenizer_, R"(
data: {manifest: unused.json, validation_fraction: 0.1}
curriculum:
  - {name: short, seq_len: 16, tokens: 1024, micro_batch: 4}
  - {name: long, seq_len: 32, tokens: 768, micro_batch: 2, rope_theta: 20000}
batch: {global_tokens: 256}
checkpoint: {every_steps: 2}
optimizer: {lr: 1e-2, min_lr: 1e-3, warmup_steps: 2}
eval: {tasks: )",
                        tasks, "}\n");
  }
  std::string DefaultTasks() const {
    return absl::StrCat("[{task: multiple-choice, name: mc, data: ", choices_,
                        "}, {task: perplexity, data: ", text_, ", limit: 2}]");
  }

  absl::StatusOr<std::unique_ptr<Trainer>> Make(const std::string& run, const std::string& text,
                                                TrainerOptions options = {}) {
    QTRAIN_ASSIGN_OR_RETURN(v1::JobSpec spec, ParseJobSpec(text, "spec.yaml"));
    QTRAIN_ASSIGN_OR_RETURN(model::ModelConfig config, model::ResolveModelConfig(spec.model()));
    options.run_dir = (root_ / run).string();
    return Trainer::Create(spec, config, std::nullopt, data_, std::move(options));
  }
  absl::StatusOr<TrainerSummary> Train(const std::string& run, const std::string& text,
                                       TrainerOptions options = {}) {
    QTRAIN_ASSIGN_OR_RETURN(std::unique_ptr<Trainer> trainer, Make(run, text, std::move(options)));
    return trainer->Run();
  }
  std::vector<nlohmann::json> EvalRecords(const std::string& run) {
    std::vector<nlohmann::json> out;
    auto records = MetricsLog::ReadAll((root_ / run / "metrics.jsonl").string());
    EXPECT_TRUE(records.ok()) << records.status();
    if (!records.ok()) return out;
    for (const nlohmann::json& r : *records) {
      if (r.value("event", "") == "eval_task") out.push_back(r);
    }
    return out;
  }
  std::string FinalHash(const std::string& run) {
    auto digest = Sha256File((root_ / run / "final" / "model.safetensors").string());
    return digest.ok() ? *digest : "missing";
  }

  InMemoryTokenSource data_;
  fs::path root_;
  std::string tokenizer_, choices_, text_;
};

TEST_F(TrainerEvalTest, TasksRunAtEachStageEndAndTheEnd) {
  std::vector<std::vector<v1::EvalTaskResult>> calls;
  std::vector<std::string> events;
  TrainerOptions options;
  options.on_eval_tasks = [&](const std::vector<v1::EvalTaskResult>& r) { calls.push_back(r); };
  options.on_event = [&](const std::string& e) { events.push_back(e); };
  auto summary = Train("run", Spec(DefaultTasks()), options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  ASSERT_TRUE(summary->completed);

  ASSERT_EQ(calls.size(), 2u);  // stage 0's end (step 4) and the job's end (step 7)
  for (size_t c = 0; c < 2; ++c) {
    ASSERT_EQ(calls[c].size(), 2u);
    EXPECT_EQ(calls[c][0].name(), "mc");
    EXPECT_EQ(calls[c][0].task(), "multiple-choice");
    EXPECT_EQ(calls[c][1].name(), "perplexity");
    EXPECT_EQ(calls[c][0].stage(), static_cast<int64_t>(c));
    EXPECT_EQ(calls[c][0].step(), c == 0 ? 4 : 7);
    EXPECT_EQ(calls[c][0].final(), c == 1);
    const auto& mc = calls[c][0].metrics();
    ASSERT_TRUE(mc.contains("acc"));
    EXPECT_GE(mc.at("acc"), 0.0);
    EXPECT_LE(mc.at("acc"), 1.0);
    ASSERT_TRUE(mc.contains("count"));
    EXPECT_EQ(mc.at("count"), 3);
    ASSERT_TRUE(calls[c][1].metrics().contains("perplexity"));
    EXPECT_GT(calls[c][1].metrics().at("perplexity"), 1.0);
  }
  const std::vector<nlohmann::json> records = EvalRecords("run");
  ASSERT_EQ(records.size(), 4u);
  EXPECT_EQ(records[0]["step"], 4);
  EXPECT_EQ(records[0]["stage"], 0);
  EXPECT_EQ(records[0]["name"], "mc");
  EXPECT_EQ(records[0]["task"], "multiple-choice");
  EXPECT_EQ(records[0]["final"], false);
  EXPECT_EQ(records[0]["metrics"]["acc"], calls[0][0].metrics().at("acc"));
  EXPECT_EQ(records[3]["step"], 7);
  EXPECT_EQ(records[3]["final"], true);
  EXPECT_TRUE(records[3]["metrics"].contains("perplexity"));
  // A line per result for `qtrain train`.
  int lines = 0;
  for (const std::string& e : events)
    lines += e.rfind("eval mc (multiple-choice) at step ", 0) == 0;
  EXPECT_EQ(lines, 2);
}

// On a device backend (memory the host cannot read) the tasks score the device model: in fp32
// the same results, bit for bit, as on the CPU.
TEST_F(TrainerEvalTest, TasksOnADeviceBackendScoreAsOnTheCpu) {
  ASSERT_TRUE(Train("cpu", Spec(DefaultTasks())).ok());
  model::OpaqueMemoryBackend device;
  TrainerOptions options;
  options.backend = &device;
  auto summary = Train("device", Spec(DefaultTasks()) + "world: {device: cuda}\n", options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  const std::vector<nlohmann::json> cpu = EvalRecords("cpu"), on_device = EvalRecords("device");
  ASSERT_EQ(on_device.size(), 4u);
  ASSERT_EQ(cpu.size(), 4u);
  for (size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_EQ(on_device[i]["metrics"], cpu[i]["metrics"]) << on_device[i].dump();
  }
  EXPECT_EQ(FinalHash("device"), FinalHash("cpu"));
}

TEST_F(TrainerEvalTest, ResumeEvaluatesEachStageOnceAndEndsWithTheSameBytes) {
  ASSERT_TRUE(Train("straight", Spec(DefaultTasks())).ok());
  const std::vector<nlohmann::json> straight = EvalRecords("straight");
  for (int64_t stop : {3, 4, 5}) {
    const std::string run = absl::StrCat("stopped_", stop);
    TrainerOptions first;
    first.stop_after_step = stop;
    ASSERT_TRUE(Train(run, Spec(DefaultTasks()), first).ok());
    ASSERT_TRUE(Train(run, Spec(DefaultTasks())).ok());
    EXPECT_EQ(FinalHash(run), FinalHash("straight")) << run;
    EXPECT_EQ(EvalRecords(run), straight) << run;
  }
  // Without tasks the weights are the same: evaluating never changes them.
  ASSERT_TRUE(Train("no_tasks", Spec("[]")).ok());
  EXPECT_EQ(FinalHash("no_tasks"), FinalHash("straight"));
}

TEST_F(TrainerEvalTest, ACancelWhileEvaluatingStopsBeforeTheCheckpointAndResumeEvaluatesAgain) {
  ASSERT_TRUE(Train("straight", Spec(DefaultTasks())).ok());
  std::atomic<bool> evaluating{false};
  TrainerOptions options;
  options.on_phase = [&](TrainerPhase phase) {
    if (phase == TrainerPhase::kEvaluating) evaluating = true;
  };
  options.cancelled = [&] { return evaluating.load(); };
  auto cancelled = Train("run", Spec(DefaultTasks()), options);
  EXPECT_EQ(cancelled.status().code(), absl::StatusCode::kCancelled) << cancelled.status();
  EXPECT_THAT(std::string(cancelled.status().message()), HasSubstr("eval tasks"));
  EXPECT_TRUE(EvalRecords("run").empty());
  EXPECT_FALSE(fs::exists(root_ / "run" / "checkpoints" / "step-000000000004"));
  ASSERT_TRUE(Train("run", Spec(DefaultTasks())).ok());
  EXPECT_EQ(FinalHash("run"), FinalHash("straight"));
  EXPECT_EQ(EvalRecords("run"), EvalRecords("straight"));
}

// Rank 0 evaluates while rank 1 waits for it; the group ends with one rank's bytes and results.
TEST_F(TrainerEvalTest, InAGroupRankZeroEvaluatesAndTheOthersWait) {
  ASSERT_TRUE(Train("single", Spec(DefaultTasks())).ok());
  std::string text = Spec(DefaultTasks());
  text += "world: {min_workers: 2, max_workers: 2}\n";
  auto group = comm::MakeInProcessGroup(2, absl::Seconds(20));
  std::vector<absl::StatusOr<TrainerSummary>> summaries(2, absl::UnknownError("not run"));
  std::vector<int> calls(2, 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      TrainerOptions options;
      options.rank = r;
      options.world_size = 2;
      options.communicator = group[r].get();
      options.on_eval_tasks = [&calls, r](const std::vector<v1::EvalTaskResult>&) { ++calls[r]; };
      auto trainer = Make("group", text, std::move(options));
      summaries[r] = trainer.ok() ? (*trainer)->Run() : trainer.status();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < 2; ++r) ASSERT_TRUE(summaries[r].ok()) << r << ": " << summaries[r].status();
  EXPECT_EQ(calls[0], 2);
  EXPECT_EQ(calls[1], 0);
  EXPECT_EQ(FinalHash("group"), FinalHash("single"));
  EXPECT_EQ(EvalRecords("group"), EvalRecords("single"));
}

TEST_F(TrainerEvalTest, BadDataFailsBeforeTheFirstStep) {
  const auto refused = [&](const std::string& tasks) {
    auto trainer = Make("run", Spec(tasks));
    EXPECT_FALSE(fs::exists(root_ / "run" / "metrics.jsonl"));
    return trainer.status();
  };
  absl::Status missing = refused(
      absl::StrCat("[{task: multiple-choice, data: ", (root_ / "nope.jsonl").string(), "}]"));
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound) << missing;
  EXPECT_THAT(std::string(missing.message()), HasSubstr("eval.tasks[0].data"));

  const std::string bad = (root_ / "bad.jsonl").string();
  ASSERT_TRUE(WriteFileAtomically(bad,
                                  "{\"context\": \"a\", \"choices\": [\"b\"], \"label\": 0}\n"
                                  "not json\n")
                  .ok());
  absl::Status malformed = refused(absl::StrCat("[{task: multiple-choice, data: ", bad, "}]"));
  EXPECT_EQ(malformed.code(), absl::StatusCode::kInvalidArgument) << malformed;
  EXPECT_THAT(std::string(malformed.message()),
              HasSubstr(absl::StrCat("eval.tasks[0].data: ", bad, ":2: not valid JSON")));

  ASSERT_TRUE(
      WriteFileAtomically(bad, "{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"label\": 2}\n")
          .ok());
  EXPECT_THAT(
      std::string(refused(absl::StrCat("[{task: multiple-choice, data: ", bad, "}]")).message()),
      HasSubstr(":1: \"label\" 2 is out of range for 2 choices"));
  ASSERT_TRUE(WriteFileAtomically(bad, "{\"prompt\": \"a\"}\n").ok());
  EXPECT_THAT(std::string(refused(absl::StrCat("[{task: generation, data: ", bad, "}]")).message()),
              HasSubstr(":1: missing \"answer\""));
  ASSERT_TRUE(WriteFileAtomically(bad, "\n\n").ok());
  EXPECT_THAT(std::string(refused(absl::StrCat("[{task: generation, data: ", bad, "}]")).message()),
              HasSubstr(": no rows"));
  // The spec's own problems are refused with their field paths, as `qtrain validate` does.
  EXPECT_THAT(std::string(refused("[{task: needle, lengths: [64], depths: [2]}]").message()),
              HasSubstr("eval.tasks[0].depths[0]: must be in [0, 1], got 2"));
}

}  // namespace
}  // namespace qtrain::train
