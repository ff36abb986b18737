// `qtrain train` as a real process: killed with SIGKILL at chosen points (mid-stage, on a stage
// boundary, inside a checkpoint write) and restarted, it must end with the same bytes as a run
// that was never interrupted.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cli_process.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

using testing_cli::CliResult;
using ProcessResult = CliResult;

// Runs `args` with extra environment entries, output captured to `log`, stdin from `stdin_path`
// when given; a hung run is killed after 5 minutes.
CliResult RunProcess(const std::vector<std::string>& args, const std::vector<std::string>& env,
                     const fs::path& log, const fs::path& stdin_path = {}) {
  testing_cli::CliOptions options;
  options.env = env;
  options.stdin_path = stdin_path;
  options.address_space_bytes = 4ull << 30;
  options.timeout_seconds = 300;
  return testing_cli::RunCli(args, log, options);
}

class TrainCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    qtrain_ = std::string(std::getenv("QTRAIN_BIN_DIR")) + "/qtrain";  // set by test_main.cc
    root_ = fs::path(::testing::TempDir()) / ("train_cli_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_ / "corpus");
    // A small corpus of repetitive sentences.
    ASSERT_TRUE(
        testing_cli::WriteWordCorpus(root_ / "corpus" / "text.txt",
                                     {"the", "model", "learns", "tokens", "from", "a", "small",
                                      "corpus", "and", "predicts", "what", "comes", "next"},
                                     6000, /*seed=*/7, /*sentence_every=*/9));
    ASSERT_EQ(RunProcess({qtrain_, "train-tokenizer", "--vocab-size", "300", "--out",
                          (root_ / "tok").string(), (root_ / "corpus" / "text.txt").string()},
                         {}, root_ / "tok.log")
                  .exit_code,
              0);
    ASSERT_EQ(
        RunProcess({qtrain_, "tokenize", "--tokenizer", (root_ / "tok" / "tokenizer.json").string(),
                    "--out", (root_ / "shards").string(), (root_ / "corpus" / "text.txt").string()},
                   {}, root_ / "tokenize.log")
            .exit_code,
        0);
    std::ofstream spec(root_ / "job.yaml");
    spec << "name: resume\nseed: 5\n"
         << "model: {config: {vocab_size: 320, hidden_size: 32, intermediate_size: 48, "
            "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
            "max_position_embeddings: 128}}\n"
         << "tokenizer: " << (root_ / "tok" / "tokenizer.json").string() << "\n"
         << "data: {manifest: " << (root_ / "shards" / "manifest.json").string()
         << ", validation_fraction: 0.1}\n"
         << "curriculum:\n"
         << "  - {name: short, seq_len: 16, tokens: 1024, micro_batch: 4}\n"
         << "  - {name: long, seq_len: 64, tokens: 768, micro_batch: 2, rope_theta: 100000}\n"
         << "optimizer: {lr: 1e-2, min_lr: 1e-3, warmup_steps: 2}\n"
         << "batch: {global_tokens: 256}\n"
         << "checkpoint: {every_steps: 2, keep_last: 2}\n"
         << "eval: {every_steps: 3, batches: 1}\n";
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  ProcessResult Train(const std::string& run, const std::vector<std::string>& env = {},
                      const std::string& spec = "job.yaml") {
    return RunProcess(
        {qtrain_, "train", (root_ / spec).string(), "--run-dir", (root_ / run).string()}, env,
        root_ / (run + ".log"));
  }
  std::string FinalHash(const std::string& run) {
    return Sha256File((root_ / run / "final" / "model.safetensors").string()).value_or("missing");
  }

  static std::string qtrain_;
  static fs::path root_;
};

std::string TrainCliTest::qtrain_;
fs::path TrainCliTest::root_;

TEST_F(TrainCliTest, KilledRunsResumeToIdenticalWeights) {
  const ProcessResult straight = Train("straight");
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  EXPECT_THAT(straight.output, HasSubstr("train: done: 7 steps"));
  EXPECT_THAT(straight.output, HasSubstr("unigram entropy"));
  ASSERT_TRUE(fs::exists(root_ / "straight" / "final" / "tokenizer.json"));
  const std::string expected = FinalHash("straight");

  // step 3: mid-stage; step 4: the last step of stage 0, killed after it ran and before its
  // checkpoint; and inside the write of the stage-boundary checkpoint.
  for (const std::string fault : {"step_done:3", "step_done:4", "checkpoint_written:4"}) {
    SCOPED_TRACE(fault);
    const std::string run =
        "killed_" + fault.substr(0, fault.find(':')) + fault.substr(fault.find(':') + 1);
    const ProcessResult killed = Train(run, {"QTRAIN_FAULT_INJECT=" + fault});
    EXPECT_EQ(killed.signal, SIGKILL) << killed.output;
    EXPECT_FALSE(fs::exists(root_ / run / "final"));
    const ProcessResult resumed = Train(run);
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    EXPECT_THAT(resumed.output, HasSubstr("resumed from"));
    EXPECT_EQ(FinalHash(run), expected);
  }
}

// A world.device cuda job: `qtrain train` loads the CUDA plugin. Without a GPU (or without the
// plugin, in a CPU build) it is refused naming the reason, before the run directory exists;
// with one, it trains.
TEST_F(TrainCliTest, ACudaJobTrainsThroughTheCudaPlugin) {
  std::ifstream base(root_ / "job.yaml");
  std::stringstream text;
  text << base.rdbuf() << "world: {device: cuda}\nprecision: bf16\n";
  std::ofstream(root_ / "cuda.yaml") << text.str();
  // The CUDA libraries need more address space than the CPU commands are held to.
  testing_cli::CliOptions options;
  options.address_space_bytes = 0;
  options.timeout_seconds = 300;
  const auto run = [&](const std::string& name, const std::vector<std::string>& env) {
    options.env = env;
    return testing_cli::RunCli(
        {qtrain_, "train", (root_ / "cuda.yaml").string(), "--run-dir", (root_ / name).string()},
        root_ / (name + ".log"), options);
  };
  const ProcessResult result = run("cuda", {});
  if (result.exit_code == 0) {  // a GPU and the plugin
    EXPECT_THAT(result.output, HasSubstr("train: on the cuda backend"));
    EXPECT_THAT(result.output, HasSubstr("train: done: 7 steps"));
  } else {
    EXPECT_EQ(result.exit_code, 1) << result.output;
#if QTRAIN_TEST_CUDA_PLUGIN
    EXPECT_THAT(result.output, HasSubstr("the CUDA driver sees no GPU")) << result.output;
    EXPECT_THAT(result.output, HasSubstr("libqtrain_cuda_plugin.so)"));
#else
    EXPECT_THAT(result.output, HasSubstr("no CUDA plugin")) << result.output;
#endif
    EXPECT_FALSE(fs::exists(root_ / "cuda")) << "a refused job touched its run directory";
  }
  // A plugin named on purpose and missing: the path in the message, nothing else tried.
  const ProcessResult missing =
      run("missing", {"QTRAIN_CUDA_PLUGIN=" + (root_ / "nowhere.so").string()});
  EXPECT_EQ(missing.exit_code, 1) << missing.output;
  EXPECT_THAT(missing.output, HasSubstr("tried " + (root_ / "nowhere.so").string() + " (absent)"));
  EXPECT_FALSE(fs::exists(root_ / "missing"));
}

// The CPU kernels' results do not depend on the thread count, so a run may resume with another.
// The model is wide enough (512-token micro-batches) that the ops split their work into several
// parallel blocks.
TEST_F(TrainCliTest, ResumesBitExactlyWithAnotherThreadCount) {
  std::ofstream spec(root_ / "wide.yaml");
  spec << "name: wide\nseed: 3\n"
       << "model: {config: {vocab_size: 320, hidden_size: 64, intermediate_size: 176, "
          "num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, "
          "max_position_embeddings: 256}}\n"
       << "tokenizer: " << (root_ / "tok" / "tokenizer.json").string() << "\n"
       << "data: {manifest: " << (root_ / "shards" / "manifest.json").string()
       << ", validation_fraction: 0.1}\n"
       << "curriculum:\n"
       << "  - {name: only, seq_len: 128, tokens: 4096, micro_batch: 4}\n"
       << "optimizer: {lr: 1e-2, min_lr: 1e-3, warmup_steps: 2}\n"
       << "batch: {global_tokens: 1024}\n"
       << "checkpoint: {every_steps: 1, keep_last: 2}\n";
  spec.close();
  const ProcessResult straight = Train("threads_straight", {"OMP_NUM_THREADS=2"}, "wide.yaml");
  ASSERT_EQ(straight.exit_code, 0) << straight.output;
  const ProcessResult killed = Train(
      "threads_resumed", {"OMP_NUM_THREADS=1", "QTRAIN_FAULT_INJECT=step_done:2"}, "wide.yaml");
  EXPECT_EQ(killed.signal, SIGKILL) << killed.output;
  const ProcessResult resumed = Train("threads_resumed", {"OMP_NUM_THREADS=3"}, "wide.yaml");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_THAT(resumed.output, HasSubstr("resumed from"));
  EXPECT_EQ(FinalHash("threads_resumed"), FinalHash("threads_straight"));
}

TEST_F(TrainCliTest, ContinuesFromATransformersDirectory) {
  const fs::path init = root_ / "init";
  ASSERT_EQ(RunProcess({qtrain_, "init", "--preset", "qwen2-tiny", "--vocab-size", "320", "--seed",
                        "9", "--out", init.string()},
                       {}, root_ / "init.log")
                .exit_code,
            0);
  std::string spec = ReadFileToString((root_ / "job.yaml").string()).value();
  const size_t begin = spec.find("model:"), end = spec.find('\n', begin);
  spec.replace(begin, end - begin, "model: {init_from: " + init.string() + "}");
  std::ofstream(root_ / "continue.yaml") << spec;
  const ProcessResult result = RunProcess({qtrain_, "train", (root_ / "continue.yaml").string(),
                                           "--run-dir", (root_ / "continued").string()},
                                          {}, root_ / "continued.log");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  // The run trained the given model: same architecture, weights moved away from the start.
  const std::string config =
      ReadFileToString((root_ / "continued" / "final" / "config.json").string()).value();
  EXPECT_THAT(config, HasSubstr("\"hidden_size\": 64"));
  EXPECT_NE(FinalHash("continued"), Sha256File((init / "model.safetensors").string()).value());

  // The exported directory works with the text interfaces of score and generate.
  const fs::path final_dir = root_ / "continued" / "final";
  std::ofstream(root_ / "score.jsonl") << "{\"text\": \"the model learns tokens\"}\n";
  const ProcessResult score = RunProcess({qtrain_, "score", "--model", final_dir.string(),
                                          "--tokenizer", (final_dir / "tokenizer.json").string()},
                                         {}, root_ / "score.log", root_ / "score.jsonl");
  ASSERT_EQ(score.exit_code, 0) << score.output;
  EXPECT_THAT(score.output, HasSubstr("\"logprobs\""));
  EXPECT_THAT(score.output, HasSubstr("\"tokens\""));
  const ProcessResult generate = RunProcess(
      {qtrain_, "generate", "--model", final_dir.string(), "--tokenizer",
       (final_dir / "tokenizer.json").string(), "--prompt", "the model", "--max-new-tokens", "5"},
      {}, root_ / "generate.log");
  EXPECT_EQ(generate.exit_code, 0) << generate.output;
}

TEST_F(TrainCliTest, BadSpecFailsWithTheFieldPath) {
  std::ofstream(root_ / "bad.yaml") << "name: bad\ncurriculum: [{name: a, seq_len: abc}]\n";
  const ProcessResult result = RunProcess(
      {qtrain_, "train", (root_ / "bad.yaml").string(), "--run-dir", (root_ / "bad").string()}, {},
      root_ / "bad.log");
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.output, HasSubstr("curriculum[0].seq_len: expected an integer"));
}

}  // namespace
}  // namespace qtrain
