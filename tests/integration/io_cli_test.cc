// File inputs, stdin and stdout of the real `qtrain` binary: a FIFO or device given as a file is
// refused at once (never waited on, never read forever), the tokenizer file is size-bounded,
// stdin read errors are errors (not the end of the input), and output that cannot be written
// makes the command fail.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
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

class IoCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::path(::testing::TempDir()) / ("io_cli_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    std::string corpus;
    for (int i = 0; i < 300; ++i) corpus += "the model reads a small corpus and writes tokens\n";
    ASSERT_TRUE(WriteFileAtomically(Path("corpus.txt"), corpus).ok());
    CliResult tok = RunCli({QtrainBinary(), "train-tokenizer", "--vocab-size", "300", "--quiet",
                            "--out", Path("tok"), Path("corpus.txt")},
                           root_ / "setup_tok.log");
    ASSERT_EQ(tok.exit_code, 0) << tok;
    CliResult init = RunCli({QtrainBinary(), "init", "--preset", "qwen2-test", "--vocab-size",
                             "320", "--out", Path("model")},
                            root_ / "setup_init.log");
    ASSERT_EQ(init.exit_code, 0) << init;
    ASSERT_EQ(::mkfifo(Path("fifo").c_str(), 0644), 0);
    ASSERT_EQ(::mkfifo(Path("fifo.jsonl").c_str(), 0644), 0);
    {  // a sparse file over the tokenizer limit (256 MiB): no disk space used
      ScopedFd fd(::open(Path("huge.json").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644));
      ASSERT_GE(fd.get(), 0);
      ASSERT_EQ(::ftruncate(fd.get(), off_t{300} << 20), 0);
    }
    ASSERT_TRUE(WriteFileAtomically(Path("encode.jsonl"), "{\"text\": \"the model\"}\n").ok());
    ASSERT_TRUE(WriteFileAtomically(Path("decode.jsonl"), "{\"ids\": [1, 2, 3]}\n").ok());
    ASSERT_TRUE(WriteFileAtomically(Path("score.jsonl"), "{\"ids\": [1, 2, 3]}\n").ok());
    std::string many;
    for (int i = 0; i < 20000; ++i) many += "{\"text\": \"the model reads\"}\n";
    ASSERT_TRUE(WriteFileAtomically(Path("many.jsonl"), many).ok());
    ASSERT_TRUE(WriteFileAtomically(Path("job.yaml"), JobSpec(Path("tok/tokenizer.json"))).ok());
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static std::string Path(const std::string& name) { return (root_ / name).string(); }

  static std::string JobSpec(const std::string& tokenizer) {
    return "name: io\nseed: 1\n"
           "model: {config: {vocab_size: 320, hidden_size: 16, intermediate_size: 24, "
           "num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, "
           "max_position_embeddings: 64}}\n"
           "tokenizer: " +
           tokenizer + "\ndata: {manifest: " + Path("shards/manifest.json") +
           "}\ncurriculum:\n  - {name: s, seq_len: 16, tokens: 256, micro_batch: 2}\n"
           "optimizer: {lr: 1e-3, min_lr: 1e-4, warmup_steps: 1}\nbatch: {global_tokens: 32}\n";
  }

  // Runs qtrain with `args`, a 1 GiB address-space limit and a 30 s timeout.
  static CliResult Run(const std::vector<std::string>& args, CliOptions options = {}) {
    std::vector<std::string> argv = {QtrainBinary()};
    argv.insert(argv.end(), args.begin(), args.end());
    options.address_space_bytes = 1ull << 30;
    options.timeout_seconds = 30;
    static int n = 0;
    return RunCli(argv, root_ / ("run" + std::to_string(n++) + ".log"), options);
  }
  static CliOptions Stdin(const std::string& path, const std::string& stdout_path = "") {
    CliOptions options;
    options.stdin_path = path;
    options.stdout_path = stdout_path;
    return options;
  }

  static fs::path root_;
};

fs::path IoCliTest::root_;

// Every command that reads a tokenizer: a device (which never ends), a FIFO (which blocks) and a
// file over the limit are refused, within the memory limit and at once.
TEST_F(IoCliTest, TokenizerFileIsRegularAndBounded) {
  for (const auto& [tokenizer, needle] : std::vector<std::pair<std::string, std::string>>{
           {"/dev/zero", "/dev/zero is a character device, not a regular file"},
           {Path("fifo"), "fifo is a FIFO, not a regular file"},
           {Path("huge.json"), "more than the limit of 268435456 bytes (256 MiB)"}}) {
    SCOPED_TRACE(tokenizer);
    const bool huge = needle.find("limit") != std::string::npos;
    // encode, decode and tokenize check the kind of file when parsing their flags.
    const std::string parse_needle = huge ? needle : needle.substr(needle.find(" is "));
    EXPECT_CLEAN_FAILURE(Run({"encode", "--tokenizer", tokenizer}, Stdin(Path("encode.jsonl"))),
                         parse_needle);
    EXPECT_CLEAN_FAILURE(Run({"decode", "--tokenizer", tokenizer}, Stdin(Path("decode.jsonl"))),
                         parse_needle);
    EXPECT_CLEAN_FAILURE(
        Run({"tokenize", "--tokenizer", tokenizer, "--out", Path("out"), Path("corpus.txt")}),
        parse_needle);
    EXPECT_CLEAN_FAILURE(Run({"score", "--model", Path("model"), "--tokenizer", tokenizer},
                             Stdin(Path("score.jsonl"))),
                         needle);
    EXPECT_CLEAN_FAILURE(
        Run({"generate", "--model", Path("model"), "--tokenizer", tokenizer, "--prompt", "the"}),
        needle);
    const std::string spec = Path("job_bad_tokenizer.yaml");
    ASSERT_TRUE(WriteFileAtomically(spec, JobSpec(tokenizer)).ok());
    EXPECT_CLEAN_FAILURE(Run({"train", spec, "--run-dir", Path("run_bad_tokenizer")}), needle);
  }
}

// A FIFO named as any file input is refused without waiting for a writer.
TEST_F(IoCliTest, FifoFileInputsAreRefusedWithoutBlocking) {
  const std::string kFifo = "is a FIFO, not a regular file";
  EXPECT_CLEAN_FAILURE(Run({"validate", Path("fifo")}), kFifo);
  EXPECT_CLEAN_FAILURE(Run({"train", Path("fifo"), "--run-dir", Path("run_fifo")}), kFifo);
  EXPECT_CLEAN_FAILURE(Run({"safetensors", Path("fifo")}), kFifo);
  EXPECT_CLEAN_FAILURE(Run({"tokenize", "--tokenizer", Path("tok/tokenizer.json"), "--out",
                            Path("out_fifo"), Path("corpus.txt"), Path("fifo.jsonl")}),
                       kFifo);
  EXPECT_CLEAN_FAILURE(Run({"train-tokenizer", "--vocab-size", "300", "--out", Path("tok_fifo"),
                            Path("fifo.jsonl")}),
                       kFifo);
  // A model directory whose files are FIFOs.
  for (const std::string name : {"config.json", "model.safetensors"}) {
    SCOPED_TRACE(name);
    const std::string dir = Path("model_fifo_" + name);
    fs::create_directories(dir);
    fs::copy(Path("model"), dir,
             fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    fs::remove(dir + "/" + name);
    ASSERT_EQ(::mkfifo((dir + "/" + name).c_str(), 0644), 0);
    EXPECT_CLEAN_FAILURE(Run({"score", "--model", dir}, Stdin(Path("score.jsonl"))), kFifo);
    EXPECT_CLEAN_FAILURE(Run({"generate", "--model", dir, "--prompt-ids", "1,2"}), kFifo);
  }
}

// `train` exports tokenizer_config.json from beside tokenizer.json with the final model; one that
// cannot be read fails the run before the first step, not after the last.
TEST_F(IoCliTest, TokenizerConfigThatIsNotAFileFailsBeforeTraining) {
  const std::string dir = Path("tok_config_fifo");
  fs::create_directories(dir);
  fs::copy_file(Path("tok/tokenizer.json"), dir + "/tokenizer.json",
                fs::copy_options::overwrite_existing);
  ASSERT_EQ(::mkfifo((dir + "/tokenizer_config.json").c_str(), 0644), 0);
  ASSERT_TRUE(
      WriteFileAtomically(Path("job_config_fifo.yaml"), JobSpec(dir + "/tokenizer.json")).ok());
  const CliResult train =
      Run({"train", Path("job_config_fifo.yaml"), "--run-dir", Path("run_config_fifo")});
  EXPECT_CLEAN_FAILURE(train, "tokenizer_config.json is a FIFO, not a regular file");
  EXPECT_FALSE(fs::exists(Path("run_config_fifo") + "/metrics.jsonl")) << train;
}

// `/dev/zero` as a corpus input is named as the character device it is, not as a missing file.
TEST_F(IoCliTest, DeviceCorpusInputIsNamedByKind) {
  for (const std::string device : {"/dev/zero", "/dev/null"}) {
    SCOPED_TRACE(device);
    const CliResult tokenize = Run(
        {"tokenize", "--tokenizer", Path("tok/tokenizer.json"), "--out", Path("out_dev"), device});
    EXPECT_CLEAN_FAILURE(tokenize, device + " is a character device, not a regular file");
    EXPECT_THAT(tokenize.output, Not(HasSubstr("no such file")));
    EXPECT_CLEAN_FAILURE(
        Run({"train-tokenizer", "--vocab-size", "300", "--out", Path("tok_dev"), device}),
        "is a character device");
  }
  EXPECT_CLEAN_FAILURE(Run({"tokenize", "--tokenizer", Path("tok/tokenizer.json"), "--out",
                            Path("out_dev"), Path("missing.txt")}),
                       "missing.txt: no such file");
}

// stdin redirected from a directory fails to read (EISDIR); that is an error, not an empty input.
TEST_F(IoCliTest, StdinReadErrorIsAnError) {
  const std::string dir = root_.string();
  const std::string tok = Path("tok/tokenizer.json");
  EXPECT_CLEAN_FAILURE(Run({"encode", "--tokenizer", tok}, Stdin(dir)),
                       "cannot read stdin: Is a directory");
  EXPECT_CLEAN_FAILURE(Run({"decode", "--tokenizer", tok}, Stdin(dir)),
                       "cannot read stdin: Is a directory");
  EXPECT_CLEAN_FAILURE(Run({"score", "--model", Path("model")}, Stdin(dir)),
                       "cannot read stdin: Is a directory");
}

// A line without end is refused at the limit, within the memory limit.
TEST_F(IoCliTest, StdinLineLengthIsBounded) {
  const std::string path = Path("long_line.jsonl");
  {
    ScopedFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644));
    ASSERT_GE(fd.get(), 0);
    const std::string block(1 << 20, ' ');
    for (int i = 0; i < 80; ++i) {
      ASSERT_EQ(::write(fd.get(), block.data(), block.size()), static_cast<ssize_t>(block.size()));
    }
  }
  const std::string needle = "stdin line 1 is longer than the limit of 67108864 bytes (64 MiB)";
  EXPECT_CLEAN_FAILURE(Run({"encode", "--tokenizer", Path("tok/tokenizer.json")}, Stdin(path)),
                       needle);
  EXPECT_CLEAN_FAILURE(Run({"score", "--model", Path("model")}, Stdin(path)), needle);
  fs::remove(path);
}

// Output that cannot be written (a full disk) makes every command fail, naming stdout.
TEST_F(IoCliTest, StdoutWriteErrorsFailTheCommand) {
  const std::string kFull = "cannot write to stdout: No space left on device";
  const std::string tok = Path("tok/tokenizer.json");
  EXPECT_CLEAN_FAILURE(
      Run({"encode", "--tokenizer", tok}, Stdin(Path("encode.jsonl"), "/dev/full")), kFull);
  EXPECT_CLEAN_FAILURE(Run({"encode", "--tokenizer", tok}, Stdin(Path("many.jsonl"), "/dev/full")),
                       kFull);
  EXPECT_CLEAN_FAILURE(
      Run({"decode", "--tokenizer", tok}, Stdin(Path("decode.jsonl"), "/dev/full")), kFull);
  EXPECT_CLEAN_FAILURE(
      Run({"score", "--model", Path("model")}, Stdin(Path("score.jsonl"), "/dev/full")), kFull);
  EXPECT_CLEAN_FAILURE(
      Run({"generate", "--model", Path("model"), "--prompt-ids", "1,2", "--max-new-tokens", "2"},
          Stdin("", "/dev/full")),
      kFull);
  const CliResult validate = Run({"validate", Path("job.yaml")}, Stdin("", "/dev/full"));
  EXPECT_CLEAN_FAILURE(validate, kFull);
  EXPECT_THAT(validate.output, Not(HasSubstr("valid job spec")));
  EXPECT_CLEAN_FAILURE(
      Run({"safetensors", Path("model/model.safetensors"), "--sha256"}, Stdin("", "/dev/full")),
      kFull);
  EXPECT_CLEAN_FAILURE(Run({"--help"}, Stdin("", "/dev/full")), "cannot write to stdout");
  // The same commands succeed when stdout can be written.
  EXPECT_EQ(Run({"encode", "--tokenizer", tok}, Stdin(Path("encode.jsonl"), "/dev/null")).exit_code,
            0);
  EXPECT_EQ(Run({"validate", Path("job.yaml")}, Stdin("", "/dev/null")).exit_code, 0);
}

// A closed stdout pipe (`qtrain encode ... | head -c 1`) is a reported write error, not a death
// by SIGPIPE without a word, nor a success.
TEST_F(IoCliTest, ClosedStdoutPipeIsAReportedError) {
  const std::string err = Path("pipe.err"), rc = Path("pipe.rc");
  const std::string script =
      "{ \"$0\" encode --tokenizer \"$1\" < \"$2\" 2> \"$3\"; echo $? > \"$4\"; } | "
      "head -c 1 > /dev/null";
  CliOptions options;
  options.address_space_bytes = 1ull << 30;
  options.timeout_seconds = 30;
  const CliResult shell = RunCli({"/bin/sh", "-c", script, QtrainBinary(),
                                  Path("tok/tokenizer.json"), Path("many.jsonl"), err, rc},
                                 root_ / "pipe.log", options);
  ASSERT_TRUE(shell.exited && shell.exit_code == 0) << shell;
  EXPECT_EQ(ReadFileToString(rc).value_or("missing"), "1\n");
  EXPECT_THAT(ReadFileToString(err).value_or(""), HasSubstr("cannot write to stdout: Broken pipe"));
}

// stdin or stdout closed by the caller: an error, not an empty input or lost output.
TEST_F(IoCliTest, ClosedStdinOrStdoutIsAnError) {
  const std::string err = Path("closed.err"), rc = Path("closed.rc");
  CliOptions options;
  options.address_space_bytes = 1ull << 30;
  options.timeout_seconds = 30;
  for (const auto& [redirect, needle] : std::vector<std::pair<std::string, std::string>>{
           {"< \"$2\" >&-", "cannot write to stdout: Bad file descriptor"},
           {"<&- > /dev/null", "cannot read stdin: Bad file descriptor"}}) {
    SCOPED_TRACE(redirect);
    const std::string script =
        "\"$0\" encode --tokenizer \"$1\" " + redirect + " 2> \"$3\"; echo $? > \"$4\"";
    const CliResult shell = RunCli({"/bin/sh", "-c", script, QtrainBinary(),
                                    Path("tok/tokenizer.json"), Path("encode.jsonl"), err, rc},
                                   root_ / "closed.log", options);
    ASSERT_TRUE(shell.exited && shell.exit_code == 0) << shell;
    EXPECT_EQ(ReadFileToString(rc).value_or("missing"), "1\n");
    EXPECT_THAT(ReadFileToString(err).value_or(""), HasSubstr(needle));
  }
}

TEST_F(IoCliTest, UnclearInputsAreNamed) {
  const std::string bad_utf8 = Path("bad_utf8.jsonl");
  ASSERT_TRUE(WriteFileAtomically(bad_utf8, "{\"ids\": [1, 2]}\n{\"text\": \"ab\xFF\"}\n").ok());
  const CliResult score =
      Run({"score", "--model", Path("model"), "--tokenizer", Path("tok/tokenizer.json")},
          Stdin(bad_utf8));
  EXPECT_CLEAN_FAILURE(score, "stdin line 2: not valid UTF-8");
  EXPECT_THAT(score.output, HasSubstr("byte offset 12"));
  const std::string bad_text = Path("bad_text.jsonl");
  ASSERT_TRUE(WriteFileAtomically(bad_text, "{\"text\": \"ok\"}\n{\"text\": \"ab\xFF\"}\n").ok());
  EXPECT_CLEAN_FAILURE(Run({"encode", "--tokenizer", Path("tok/tokenizer.json")}, Stdin(bad_text)),
                       "stdin line 2: not valid UTF-8");
  EXPECT_CLEAN_FAILURE(Run({"generate", "--model", Path("model"), "--tokenizer",
                            Path("tok/tokenizer.json"), "--prompt", ""}),
                       "--prompt is empty");
  EXPECT_CLEAN_FAILURE(Run({"generate", "--model", Path("model"), "--prompt-ids", ""}),
                       "--prompt-ids is empty");
  EXPECT_CLEAN_FAILURE(Run({"train", Path("job.yaml"), "--run-dir", ""}), "--run-dir is empty");
  EXPECT_CLEAN_FAILURE(Run({"encode", "--tokenizer", ""}, Stdin(Path("encode.jsonl"))),
                       "--tokenizer: the file name is empty");
  EXPECT_CLEAN_FAILURE(
      Run({"score", "--model", Path("model"), "--tokenizer", ""}, Stdin(Path("encode.jsonl"))),
      "--tokenizer: the file name is empty");
  // An empty --model is not the current directory.
  EXPECT_CLEAN_FAILURE(Run({"score", "--model", ""}, Stdin(Path("score.jsonl"))),
                       "--model: the value is empty");
  EXPECT_CLEAN_FAILURE(Run({"generate", "--model", "", "--prompt-ids", "1"}),
                       "--model: the value is empty");
}

}  // namespace
}  // namespace qtrain
