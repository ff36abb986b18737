// qtrain: the command-line tool. See `qtrain --help` and docs/.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>
#include <string>

#include "cli/command.h"
#include "common/file_util.h"
#include "common/logging.h"
#include "common/runtime_env.h"

namespace {

// A standard descriptor the caller closed (`qtrain encode >&-`) would be reused by the next
// open(), and output meant for stdout would land in that file. Each closed one is held with
// /dev/null opened the other way round, so that its use still fails (EBADF) and is reported.
void HoldClosedStandardDescriptors() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    const int held = ::open("/dev/null", (fd == 1 ? O_RDONLY : O_WRONLY) | O_CLOEXEC);
    if (held >= 0 && held != fd) {
      ::dup2(held, fd);
      ::close(held);
    }
  }
}

// Run from the executable's .preinit_array, before the initializers of the shared libraries:
// libgrpc opens an eventfd in its own, which would otherwise take a closed descriptor 0.
void HoldClosedStandardDescriptorsAtLoad(int, char**, char**) { HoldClosedStandardDescriptors(); }
[[gnu::section(".preinit_array"),
  gnu::used]] void (*hold_standard_descriptors)(int, char**,
                                                char**) = &HoldClosedStandardDescriptorsAtLoad;

}  // namespace

int main(int argc, char** argv) {
  qtrain::ConfigureRuntimeEnvironment(argv);
  // A closed stdout pipe (`qtrain encode ... | head -1`) is then a write error (EPIPE) that the
  // command reports, instead of a signal that kills it without a word.
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"qtrain: train Qwen2-architecture language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("qtrain 0.1.0"));
  std::string log_level = "INFO";
  app.add_option("--log-level", log_level, "DEBUG, INFO, WARNING or ERROR")->capture_default_str();

  qtrain::cli::CommandSelection selection;
  qtrain::cli::AddFoundationCommands(app, selection);
  qtrain::cli::AddTokenizerCommands(app, selection);
  qtrain::cli::AddModelCommands(app, selection);
  qtrain::cli::AddEvalCommand(app, selection);
  qtrain::cli::AddTrainCommands(app, selection);
  qtrain::cli::AddRemoteCommands(app, selection);
  qtrain::cli::AddLocalCommand(app, selection);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; usage errors exit 2, as is customary.
    const int rc = app.exit(e);
    if (rc == 0) {
      // --help or --version: their text is the output.
      if (const absl::Status flushed = qtrain::FlushStdout(); !flushed.ok()) {
        std::fprintf(stderr, "qtrain: %s\n", flushed.ToString().c_str());
        return 1;
      }
      return 0;
    }
    return 2;
  }
  qtrain::LogLevel level;
  if (!qtrain::ParseLogLevel(log_level, &level)) {
    std::fprintf(stderr, "qtrain: --log-level: unknown level '%s'\n", log_level.c_str());
    return 2;
  }
  qtrain::SetMinLogLevel(level);
  if (!selection.action && !selection.coded_action) return 2;
  absl::Status status;
  int code = 0;
  // Library code reports failures as Status; these catches are the last line for an exception
  // from a dependency (an allocation in a parser, say), so that it still ends with a message and
  // exit code 1 rather than std::terminate.
  try {
    if (selection.coded_action) {
      absl::StatusOr<int> result = selection.coded_action();
      if (result.ok()) {
        code = *result;
      } else {
        status = result.status();
      }
    } else {
      status = selection.action();
    }
  } catch (const std::bad_alloc&) {
    status = absl::ResourceExhaustedError("out of memory");
  } catch (const std::exception& e) {
    status = absl::InternalError(std::string("unexpected error: ") + e.what());
  }
  // Every command's output goes to stdout; if any of it could not be written, the command failed
  // (its own error, when it has one, says more).
  if (const absl::Status flushed = qtrain::FlushStdout(); status.ok()) status = flushed;
  if (!status.ok()) {
    std::fprintf(stderr, "qtrain: %s\n", status.ToString().c_str());
    return 1;
  }
  return code;
}
