// How `qtrain` subcommands are registered.
//
// Each module adds its subcommands in its own file (cli/<area>_commands.cc) through one
// Add<Area>Commands(CLI::App&, CommandSelection&) function. A subcommand's parse callback stores
// the action to run; main() runs the selected action after parsing and turns its Status into the
// exit code and a one-line error on stderr.
#ifndef QTRAIN_CLI_COMMAND_H_
#define QTRAIN_CLI_COMMAND_H_

#include <functional>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"

namespace qtrain::cli {

struct CommandSelection {
  std::function<absl::Status()> action;
};

// Local tools that need no server: validate, safetensors (cli/foundation_commands.cc).
void AddFoundationCommands(CLI::App& app, CommandSelection& selection);
// encode, decode, train-tokenizer, tokenize (cli/tokenizer_commands.cc).
void AddTokenizerCommands(CLI::App& app, CommandSelection& selection);
// score, generate, init (cli/model_commands.cc).
void AddModelCommands(CLI::App& app, CommandSelection& selection);
// train (cli/train_commands.cc).
void AddTrainCommands(CLI::App& app, CommandSelection& selection);

}  // namespace qtrain::cli

#endif  // QTRAIN_CLI_COMMAND_H_
