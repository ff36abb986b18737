// How `qtrain` subcommands are registered.
//
// Each module adds its subcommands in its own file (cli/<area>_commands.cc) through one
// Add<Area>Commands(CLI::App&, CommandSelection&) function. A subcommand's parse callback stores
// the action to run; main() runs the selected action after parsing and turns its Status into the
// exit code and a one-line error on stderr. A command with exit codes of its own (`watch`: 0, 1
// or 2 by the job's end) sets coded_action instead, which returns the exit code.
#ifndef QTRAIN_CLI_COMMAND_H_
#define QTRAIN_CLI_COMMAND_H_

#include <functional>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace qtrain::cli {

struct CommandSelection {
  std::function<absl::Status()> action;
  std::function<absl::StatusOr<int>()> coded_action;
};

// Local tools that need no server: validate, safetensors (cli/foundation_commands.cc).
void AddFoundationCommands(CLI::App& app, CommandSelection& selection);
// encode, decode, train-tokenizer, tokenize (cli/tokenizer_commands.cc).
void AddTokenizerCommands(CLI::App& app, CommandSelection& selection);
// score, generate, init (cli/model_commands.cc).
void AddModelCommands(CLI::App& app, CommandSelection& selection);
// eval: perplexity, multiple-choice, generation and needle tasks (cli/eval_command.cc).
void AddEvalCommand(CLI::App& app, CommandSelection& selection);
// train (cli/train_commands.cc).
void AddTrainCommands(CLI::App& app, CommandSelection& selection);
// submit, get, list, cancel, watch, checkpoints, workers and their global flags
// (cli/remote_commands.cc).
void AddRemoteCommands(CLI::App& app, CommandSelection& selection);
// local: a coordinator and workers as child processes for one job (cli/local_command.cc).
void AddLocalCommand(CLI::App& app, CommandSelection& selection);

}  // namespace qtrain::cli

#endif  // QTRAIN_CLI_COMMAND_H_
