// qtrain: the command-line tool. See `qtrain --help` and docs/.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli/command.h"
#include "common/logging.h"
#include "common/runtime_env.h"

int main(int argc, char** argv) {
  qtrain::ConfigureRuntimeEnvironment(argv);
  CLI::App app{"qtrain: train Qwen2-architecture language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("qtrain 0.1.0"));
  std::string log_level = "INFO";
  app.add_option("--log-level", log_level, "DEBUG, INFO, WARNING or ERROR")->capture_default_str();

  qtrain::cli::CommandSelection selection;
  qtrain::cli::AddFoundationCommands(app, selection);
  qtrain::cli::AddTokenizerCommands(app, selection);
  qtrain::cli::AddModelCommands(app, selection);
  qtrain::cli::AddTrainCommands(app, selection);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; usage errors exit 2, as is customary.
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  qtrain::LogLevel level;
  if (!qtrain::ParseLogLevel(log_level, &level)) {
    std::fprintf(stderr, "qtrain: --log-level: unknown level '%s'\n", log_level.c_str());
    return 2;
  }
  qtrain::SetMinLogLevel(level);
  if (!selection.action) return 2;
  const absl::Status status = selection.action();
  if (!status.ok()) {
    std::fprintf(stderr, "qtrain: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
