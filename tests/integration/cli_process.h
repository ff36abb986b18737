// Runs a real `qtrain` process for the CLI-level tests: stdin from a file (or nothing), stdout
// and stderr captured to a file, under an address-space limit and a wall-clock timeout, so a
// crash, a runaway allocation or a hang shows up as a test failure instead of taking the test
// runner down with it.
#ifndef QTRAIN_TESTS_INTEGRATION_CLI_PROCESS_H_
#define QTRAIN_TESTS_INTEGRATION_CLI_PROCESS_H_

#include <cstdint>
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace qtrain::testing_cli {

struct CliOptions {
  std::vector<std::string> env;               // extra NAME=VALUE entries
  std::filesystem::path stdin_path;           // empty: /dev/null
  std::filesystem::path stdout_path;          // empty: captured with stderr into the log
  uint64_t address_space_bytes = 2ull << 30;  // RLIMIT_AS of the child; 0: unlimited
  double timeout_seconds = 60;                // then SIGKILL, and timed_out is set
};

struct CliResult {
  bool exited = false;  // exited normally (not by a signal)
  int exit_code = -1;   // when exited
  int signal = 0;       // the signal that ended it, if any
  bool timed_out = false;
  std::string output;  // stderr, and stdout unless it went to stdout_path
  std::string Describe() const;
};

// The `qtrain` binary of this build (QTRAIN_BIN_DIR/qtrain).
std::string QtrainBinary();

// Runs `args` (args[0] is the program), writing the combined log to `log`.
CliResult RunCli(const std::vector<std::string>& args, const std::filesystem::path& log,
                 const CliOptions& options = {});

// Writes a small, repetitive corpus that a tokenizer and a tiny model learn quickly: `count`
// words drawn from `words` by a seeded linear congruential generator, a sentence ending (".\n")
// about once in `sentence_every` words. Returns false when the file cannot be written.
bool WriteWordCorpus(const std::filesystem::path& path, const std::vector<std::string>& words,
                     int count, uint32_t seed, uint32_t sentence_every);

// A word corpus, a byte-level BPE tokenizer trained on it and the corpus tokenized into shards,
// made with the `qtrain` binary: the inputs of a training job.
struct TrainingDataOptions {
  std::vector<std::string> words;
  int word_count = 6000;
  uint32_t seed = 7;
  uint32_t sentence_every = 9;
  int vocab_size = 300;
  int64_t shard_tokens = 0;  // 0: the tool's default
};
struct TrainingData {
  std::filesystem::path corpus;     // <root>/corpus/text.txt
  std::filesystem::path tokenizer;  // <root>/tok/tokenizer.json
  std::filesystem::path manifest;   // <root>/shards/manifest.json
};
// Writes them under `root` (logs in <root>/*.log); an error names the step that failed.
absl::StatusOr<TrainingData> PrepareTrainingData(const std::filesystem::path& root,
                                                 const TrainingDataOptions& options);

// gtest-friendly printing.
inline std::ostream& operator<<(std::ostream& os, const CliResult& r) { return os << r.Describe(); }

}  // namespace qtrain::testing_cli

// Asserts a clean refusal: the process exited on its own (no signal, no timeout) with a non-zero
// code, and its output names the problem.
#define EXPECT_CLEAN_FAILURE(result, needle)                    \
  do {                                                          \
    const ::qtrain::testing_cli::CliResult& r_ = (result);      \
    EXPECT_FALSE(r_.timed_out) << r_;                           \
    EXPECT_EQ(r_.signal, 0) << r_;                              \
    EXPECT_TRUE(r_.exited&& r_.exit_code != 0) << r_;           \
    EXPECT_THAT(r_.output, ::testing::HasSubstr(needle)) << r_; \
  } while (0)

#endif  // QTRAIN_TESTS_INTEGRATION_CLI_PROCESS_H_
