#include "tests/integration/cli_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"

extern char** environ;

namespace qtrain::testing_cli {

std::string CliResult::Describe() const {
  std::string what = timed_out ? "timed out"
                     : signal
                         ? absl::StrCat("killed by signal ", signal, " (", strsignal(signal), ")")
                     : exited ? absl::StrCat("exit code ", exit_code)
                              : "did not run";
  return absl::StrCat(what, "; output:\n", output.size() > 4000 ? output.substr(0, 4000) : output);
}

std::string QtrainBinary() {
  const char* dir = std::getenv("QTRAIN_BIN_DIR");  // set by tests/test_main.cc
  return std::string(dir != nullptr ? dir : ".") + "/qtrain";
}

CliResult RunCli(const std::vector<std::string>& args, const std::filesystem::path& log,
                 const CliOptions& options) {
  CliResult result;
  std::vector<std::string> env_strings(options.env);
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  std::vector<char*> argv, envp;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : env_strings) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const std::string in = options.stdin_path.empty() ? "/dev/null" : options.stdin_path.string();
  const std::string out = options.stdout_path.string();
  const std::string log_path = log.string();

  const pid_t pid = ::fork();
  if (pid < 0) {
    result.output = absl::StrCat("fork: ", std::strerror(errno));
    return result;
  }
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec. Its own process group, so that a
    // timeout also ends what it started (a shell's commands).
    ::setpgid(0, 0);
    const int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int out_fd = log_fd;
    if (!out.empty()) out_fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int in_fd = ::open(in.c_str(), O_RDONLY | O_NONBLOCK);
    if (log_fd < 0 || out_fd < 0 || in_fd < 0) ::_exit(127);
    // A FIFO opened without blocking: make reads block again, as for a shell redirection.
    ::fcntl(in_fd, F_SETFL, ::fcntl(in_fd, F_GETFL) & ~O_NONBLOCK);
    ::dup2(in_fd, 0);
    ::dup2(out_fd, 1);
    ::dup2(log_fd, 2);
    if (options.address_space_bytes > 0) {
      struct rlimit limit = {options.address_space_bytes, options.address_space_bytes};
      ::setrlimit(RLIMIT_AS, &limit);
    }
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(options.timeout_seconds);
  int status = 0;
  while (true) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) break;
    if (std::chrono::steady_clock::now() > deadline) {
      result.timed_out = true;
      ::kill(-pid, SIGKILL);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  result.exited = !result.timed_out && WIFEXITED(status);
  result.exit_code = result.exited ? WEXITSTATUS(status) : -1;
  result.signal = !result.timed_out && WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  result.output = ReadFileToString(log_path, 64 << 20).value_or("");
  return result;
}

bool WriteWordCorpus(const std::filesystem::path& path, const std::vector<std::string>& words,
                     int count, uint32_t seed, uint32_t sentence_every) {
  std::string text;
  uint32_t rng = seed;
  for (int i = 0; i < count; ++i) {
    rng = rng * 1103515245u + 12345u;
    text += words[(rng >> 16) % words.size()];
    text += (rng >> 8) % sentence_every == 0 ? ".\n" : " ";
  }
  return WriteFileAtomically(path.string(), text).ok();
}

absl::StatusOr<TrainingData> PrepareTrainingData(const std::filesystem::path& root,
                                                 const TrainingDataOptions& options) {
  TrainingData data{.corpus = root / "corpus" / "text.txt",
                    .tokenizer = root / "tok" / "tokenizer.json",
                    .manifest = root / "shards" / "manifest.json"};
  std::error_code error;
  std::filesystem::create_directories(data.corpus.parent_path(), error);
  if (error || !WriteWordCorpus(data.corpus, options.words, options.word_count, options.seed,
                                options.sentence_every)) {
    return absl::InternalError(absl::StrCat("cannot write the corpus ", data.corpus.string()));
  }
  CliOptions run;
  run.address_space_bytes = 4ull << 30;
  run.timeout_seconds = 120;
  const CliResult tok = RunCli({QtrainBinary(), "train-tokenizer", "--quiet", "--vocab-size",
                                std::to_string(options.vocab_size), "--out",
                                data.tokenizer.parent_path().string(), data.corpus.string()},
                               root / "train_tokenizer.log", run);
  if (!tok.exited || tok.exit_code != 0) {
    return absl::InternalError(absl::StrCat("qtrain train-tokenizer: ", tok.Describe()));
  }
  std::vector<std::string> tokenize = {QtrainBinary(),
                                       "tokenize",
                                       "--quiet",
                                       "--tokenizer",
                                       data.tokenizer.string(),
                                       "--out",
                                       data.manifest.parent_path().string()};
  if (options.shard_tokens > 0) {
    tokenize.insert(tokenize.end(), {"--shard-tokens", std::to_string(options.shard_tokens)});
  }
  tokenize.push_back(data.corpus.string());
  const CliResult shards = RunCli(tokenize, root / "tokenize.log", run);
  if (!shards.exited || shards.exit_code != 0) {
    return absl::InternalError(absl::StrCat("qtrain tokenize: ", shards.Describe()));
  }
  return data;
}

}  // namespace qtrain::testing_cli
