// `qtrain train` and its run directory as real processes: the directory's lock, the checks a
// checkpoint's manifest must pass before a resume trusts it, and a spec changed between a run
// and its resume.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/run_dir_lock.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/cli_process.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using testing_cli::CliOptions;
using testing_cli::CliResult;
using testing_cli::QtrainBinary;
using testing_cli::RunCli;

constexpr uint64_t kMemoryLimit = 2ull << 30;

class RunDirCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::path(::testing::TempDir()) / absl::StrCat("run_dir_cli_", ::getpid());
    fs::remove_all(root_);
    fs::create_directories(root_ / "corpus");
    ASSERT_TRUE(
        testing_cli::WriteWordCorpus(root_ / "corpus" / "text.txt",
                                     {"a", "run", "directory", "holds", "checkpoints", "and",
                                      "metrics", "of", "one", "job", "at", "a", "time"},
                                     5000, /*seed=*/11, /*sentence_every=*/9));
    ASSERT_EQ(Run({"train-tokenizer", "--vocab-size", "300", "--out", (root_ / "tok").string(),
                   (root_ / "corpus" / "text.txt").string()},
                  "tok")
                  .exit_code,
              0);
    ASSERT_EQ(Run({"tokenize", "--tokenizer", (root_ / "tok" / "tokenizer.json").string(), "--out",
                   (root_ / "shards").string(), (root_ / "corpus" / "text.txt").string()},
                  "tokenize")
                  .exit_code,
              0);
    WriteSpec("job.yaml", "lr: 1e-2", "keep_last: 3");
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  // A two-stage job of 6 steps (4 + 2), checkpoints every 2 steps and at the stage boundary.
  static void WriteSpec(const std::string& name, const std::string& lr,
                        const std::string& keep_last, const std::string& job_name = "run-dir") {
    std::ofstream(root_ / name)
        << "name: " << job_name << "\nseed: 5\n"
        << "model: {config: {vocab_size: 320, hidden_size: 32, intermediate_size: 48, "
           "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
           "max_position_embeddings: 128}}\n"
        << "tokenizer: " << (root_ / "tok" / "tokenizer.json").string() << "\n"
        << "data: {manifest: " << (root_ / "shards" / "manifest.json").string()
        << ", validation_fraction: 0.1}\n"
        << "curriculum:\n"
        << "  - {name: short, seq_len: 16, tokens: 1024, micro_batch: 4}\n"
        << "  - {name: long, seq_len: 32, tokens: 512, micro_batch: 2}\n"
        << "optimizer: {" << lr << ", min_lr: 1e-3, warmup_steps: 2}\n"
        << "batch: {global_tokens: 256}\n"
        << "checkpoint: {every_steps: 2, " << keep_last << "}\n";
  }

  static CliResult Run(std::vector<std::string> args, const std::string& log,
                       std::vector<std::string> env = {}) {
    args.insert(args.begin(), QtrainBinary());
    CliOptions options;
    options.env = std::move(env);
    options.address_space_bytes = kMemoryLimit;
    options.timeout_seconds = 120;
    return RunCli(args, root_ / (log + ".log"), options);
  }
  static CliResult Train(const std::string& run, const std::string& spec = "job.yaml",
                         std::vector<std::string> extra = {}, std::vector<std::string> env = {}) {
    std::vector<std::string> args = {"train", (root_ / spec).string(), "--run-dir",
                                     (root_ / run).string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return Run(args, run, std::move(env));
  }
  // A run killed (SIGKILL) right after step `step` was logged.
  static void TrainKilledAfter(const std::string& run, int step) {
    const CliResult killed =
        Train(run, "job.yaml", {}, {absl::StrCat("QTRAIN_FAULT_INJECT=step_done:", step)});
    ASSERT_EQ(killed.signal, SIGKILL) << killed;
  }
  static std::string FinalHash(const std::string& run) {
    return Sha256File((root_ / run / "final" / "model.safetensors").string()).value_or("missing");
  }
  static std::string Read(const fs::path& path) {
    return ReadFileToString(path.string()).value_or("(unreadable)");
  }
  static void EditManifest(const fs::path& dir, const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json manifest = nlohmann::json::parse(Read(dir / "manifest.json"));
    edit(manifest);
    std::ofstream(dir / "manifest.json", std::ios::trunc) << manifest.dump();
  }

  static fs::path root_;
};

fs::path RunDirCliTest::root_;

TEST_F(RunDirCliTest, ASecondProcessOnALockedRunDirectoryIsRefusedAndTouchesNothing) {
  const fs::path run = root_ / "locked";
  auto held = RunDirLock::Acquire(run.string());  // this test process plays the first run
  ASSERT_TRUE(held.ok()) << held.status();
  std::ofstream(run / "job.json") << "the first run's record";
  std::ofstream(run / "metrics.jsonl") << "{\"step\": 1}\n{\"step\": 2}\n";
  const CliResult refused = Train("locked");
  EXPECT_CLEAN_FAILURE(
      refused, absl::StrCat("run directory ", run.string(), " is in use by process ", ::getpid()));
  EXPECT_EQ(Read(run / "job.json"), "the first run's record");
  EXPECT_EQ(Read(run / "metrics.jsonl"), "{\"step\": 1}\n{\"step\": 2}\n");
  EXPECT_FALSE(fs::exists(run / "checkpoints"));

  held->Release();
  const CliResult trained = Train("locked");
  ASSERT_EQ(trained.exit_code, 0) << trained;
  EXPECT_THAT(trained.output, HasSubstr("train: done: 6 steps"));
  // The lock file names no holder once the run is over.
  EXPECT_EQ(RunDirLock::HolderPid(run.string()), std::nullopt);
}

TEST_F(RunDirCliTest, AKilledRunLeavesNoLockBehind) {
  TrainKilledAfter("killed", 3);
  const CliResult resumed = Train("killed");
  ASSERT_EQ(resumed.exit_code, 0) << resumed;
  EXPECT_THAT(resumed.output, HasSubstr("resumed from"));
}

TEST_F(RunDirCliTest, ManifestsThatLieAreSkippedForThePreviousCheckpoint) {
  const CliResult straight = Train("straight");
  ASSERT_EQ(straight.exit_code, 0) << straight;
  TrainKilledAfter("lied_base", 5);  // checkpoints at steps 2 and 4
  struct Lie {
    std::string name;
    std::function<void(nlohmann::json&)> edit;
    std::string reason;
  };
  const Lie lies[] = {
      {"step", [](nlohmann::json& m) { m["metadata"]["step"] = 6; },
       "metadata.step 6 does not match the checkpoint's step 4"},
      {"tokens_seen", [](nlohmann::json& m) { m["metadata"]["tokens_seen"] = -100; },
       "metadata.tokens_seen -100 is not step 4 x batch.global_tokens 256"},
      {"files", [](nlohmann::json& m) { m["files"] = nlohmann::json::array(); },
       "manifest does not list"},
  };
  for (const Lie& lie : lies) {
    SCOPED_TRACE(lie.name);
    const std::string run = "lied_" + lie.name;
    fs::copy(root_ / "lied_base", root_ / run, fs::copy_options::recursive);
    EditManifest(root_ / run / "checkpoints" / "step-000000000004", lie.edit);
    const CliResult resumed = Train(run);
    ASSERT_EQ(resumed.exit_code, 0) << resumed;
    EXPECT_THAT(resumed.output, HasSubstr("skipping damaged checkpoint"));
    EXPECT_THAT(resumed.output, HasSubstr(lie.reason));
    EXPECT_THAT(resumed.output, HasSubstr("(step 2 of 6)"));
    EXPECT_EQ(FinalHash(run), FinalHash("straight"));
  }
  // A listed file that is a FIFO is named as such (and does not block the resume).
  fs::copy(root_ / "lied_base", root_ / "lied_fifo", fs::copy_options::recursive);
  const fs::path weights =
      root_ / "lied_fifo" / "checkpoints" / "step-000000000004" / "model.safetensors";
  fs::remove(weights);
  ASSERT_EQ(::mkfifo(weights.c_str(), 0644), 0);
  const CliResult fifo = Train("lied_fifo");
  ASSERT_EQ(fifo.exit_code, 0) << fifo;
  EXPECT_THAT(fifo.output, HasSubstr("model.safetensors is a FIFO"));
  EXPECT_EQ(FinalHash("lied_fifo"), FinalHash("straight"));
}

TEST_F(RunDirCliTest, ResumeWithAChangedSpecIsRefusedUnlessTheChangeIsSafe) {
  TrainKilledAfter("changed", 3);
  const std::string job_json = Read(root_ / "changed" / "job.json");
  ASSERT_THAT(job_json, HasSubstr("\"lr\": 0.01"));

  WriteSpec("faster.yaml", "lr: 2e-2", "keep_last: 3");
  const CliResult refused = Train("changed", "faster.yaml");
  EXPECT_CLEAN_FAILURE(refused, "optimizer.lr: 0.01 -> 0.02");
  EXPECT_THAT(refused.output, HasSubstr("--allow-spec-change"));
  EXPECT_EQ(Read(root_ / "changed" / "job.json"), job_json);

  WriteSpec("renamed.yaml", "lr: 1e-2", "keep_last: 3", "other-name");
  EXPECT_CLEAN_FAILURE(Train("changed", "renamed.yaml"), "name: \"run-dir\" -> \"other-name\"");
  EXPECT_EQ(Read(root_ / "changed" / "job.json"), job_json);

  EXPECT_CLEAN_FAILURE(Train("changed", "faster.yaml", {"--allow-spec-change", "seed"}),
                       "seed cannot change within a run");
  EXPECT_CLEAN_FAILURE(Train("changed", "faster.yaml", {"--allow-spec-change", "optimizer.rate"}),
                       "not a job spec field");
  // The flag repeats: every occurrence counts.
  for (const auto& [first, second] :
       {std::pair{"optimizer.lr", "seed"}, std::pair{"seed", "optimizer.lr"}}) {
    EXPECT_CLEAN_FAILURE(Train("changed", "faster.yaml",
                               {"--allow-spec-change", first, "--allow-spec-change", second}),
                         "seed cannot change within a run");
  }

  // Bookkeeping fields may change without a flag; job.json records the new spec.
  WriteSpec("keep_more.yaml", "lr: 1e-2", "keep_last: 5");
  CliResult resumed = Train("changed", "keep_more.yaml", {}, {"QTRAIN_FAULT_INJECT=step_done:5"});
  EXPECT_EQ(resumed.signal, SIGKILL) << resumed;
  EXPECT_THAT(resumed.output, HasSubstr("checkpoint.keep_last: 3 -> 5"));
  EXPECT_THAT(Read(root_ / "changed" / "job.json"), HasSubstr("\"keep_last\": \"5\""));

  // A named field may change when allowed explicitly.
  WriteSpec("faster_keep_more.yaml", "lr: 2e-2", "keep_last: 5");
  resumed = Train("changed", "faster_keep_more.yaml", {"--allow-spec-change", "optimizer.lr"});
  ASSERT_EQ(resumed.exit_code, 0) << resumed;
  EXPECT_THAT(resumed.output, HasSubstr("spec changed since the checkpoint: optimizer.lr"));
  EXPECT_THAT(Read(root_ / "changed" / "job.json"), HasSubstr("\"lr\": 0.02"));
  EXPECT_THAT(resumed.output, Not(HasSubstr("skipping damaged")));
}

}  // namespace
}  // namespace qtrain
