// The remote commands: submit, get, list, cancel, watch, checkpoints, workers. Each talks to a
// coordinator's JobService (--coordinator, else $QTRAIN_COORDINATOR, else 127.0.0.1:7070), with
// a deadline on every call.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cli/command.h"
#include "cli/job_client.h"
#include "cli/output.h"
#include "cli/remote_flags.h"
#include "cli/watch.h"
#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/status_macros.h"
#include "worker/model/model_source.h"

namespace qtrain::cli {
namespace {

// How long `watch` (and `submit --watch`) keeps reconnecting to an unreachable coordinator.
constexpr double kDefaultReconnectSeconds = 60;

absl::Status Print(const google::protobuf::Message& message, OutputFormat format,
                   const std::string& table) {
  QTRAIN_ASSIGN_OR_RETURN(const std::string text, Render(message, format, table));
  QTRAIN_RETURN_IF_ERROR(WriteStdout(text));
  return FlushStdout();
}

// Runs a command that either succeeds (exit 0) or fails with a one-line error (exit 1).
absl::StatusOr<int> ExitCodeOf(const absl::Status& status) {
  return status.ok() ? 0 : ReportError(status);
}

absl::StatusOr<int> ExitCodeOf(const absl::StatusOr<int>& code) {
  return code.ok() ? *code : ReportError(code.status());
}

absl::StatusOr<int> RunWatch(JobClient& client, const std::string& name, bool json,
                             bool include_steps, double reconnect_seconds) {
  WatchOptions options;
  options.json = json;
  options.include_steps = include_steps;
  options.call_timeout = client.timeout();
  options.reconnect_timeout = absl::Seconds(reconnect_seconds);
  return WatchJob(client.channel_options(), name, options);
}

struct SubmitArgs {
  std::string spec;
  std::string request_id;
  bool watch = false;
  std::string output = "table";
};

absl::StatusOr<int> RunSubmit(const RemoteFlags& flags, const SubmitArgs& args) {
  QTRAIN_ASSIGN_OR_RETURN(const OutputFormat format, ParseOutputFormat(args.output));
  QTRAIN_ASSIGN_OR_RETURN(v1::JobSpec spec,
                          LoadJobSpecFile(args.spec, model::ModelAwareJobSpecOptions()));
  QTRAIN_ASSIGN_OR_RETURN(JobClient client, ConnectFromFlags(flags));
  const std::string request_id = args.request_id.empty() ? NewRequestId() : args.request_id;
  QTRAIN_ASSIGN_OR_RETURN(const v1::Job job, client.CreateJob(spec, request_id));
  QTRAIN_RETURN_IF_ERROR(Print(job, format, JobDetails(job, absl::Now())));
  if (!args.watch) {
    if (format == OutputFormat::kTable) {
      std::fprintf(stderr,
                   "qtrain: submitted %s (request id %s); follow it with: qtrain watch %s\n",
                   job.name().c_str(), request_id.c_str(), job.name().c_str());
    }
    return 0;
  }
  return RunWatch(client, job.name(), format == OutputFormat::kJson, /*include_steps=*/false,
                  kDefaultReconnectSeconds);
}

struct ListArgs {
  std::vector<std::string> states;
  int page_size = 0;
  std::string page_token;
  bool all = false;
  std::string output = "table";
};

absl::Status RunList(const RemoteFlags& flags, const ListArgs& args) {
  QTRAIN_ASSIGN_OR_RETURN(const OutputFormat format, ParseOutputFormat(args.output));
  v1::ListJobsRequest request;
  for (const std::string& s : args.states) {
    QTRAIN_ASSIGN_OR_RETURN(const v1::JobState state, ParseJobState(s));
    request.add_states(state);
  }
  request.set_page_size(args.page_size);
  request.set_page_token(args.page_token);
  QTRAIN_ASSIGN_OR_RETURN(JobClient client, ConnectFromFlags(flags));
  QTRAIN_ASSIGN_OR_RETURN(const v1::ListJobsResponse response, client.ListJobs(request, args.all));
  QTRAIN_RETURN_IF_ERROR(Print(response, format, JobsTable(response.jobs(), absl::Now())));
  if (format == OutputFormat::kTable && !response.next_page_token().empty()) {
    std::fprintf(stderr, "qtrain: more jobs: --page-token %s, or --all\n",
                 response.next_page_token().c_str());
  }
  return absl::OkStatus();
}

// A validator for CLI11 from a parser that returns a status.
template <typename F>
CLI::Validator StatusValidator(F parse, std::string name) {
  return CLI::Validator(
      [parse](std::string& value) -> std::string {
        const auto result = parse(value);
        return result.ok() ? std::string() : std::string(result.status().message());
      },
      "", std::move(name));
}

CLI::Option* AddOutputFlag(CLI::App* cmd, std::string* output, bool with_yaml = true) {
  return cmd
      ->add_option(
          "-o,--output", *output,
          with_yaml ? "Output format: table, json or yaml" : "Output format: table or json")
      ->check(with_yaml ? CLI::IsMember({"table", "json", "yaml"})
                        : CLI::IsMember({"table", "json"}))
      ->capture_default_str();
}

CLI::Option* AddJobArg(CLI::App* cmd, std::string* job) {
  return cmd->add_option("job", *job, "The job: its ID or jobs/ID")
      ->required()
      ->check(StatusValidator([](const std::string& s) { return JobResourceName(s); }, "JOB"));
}

// Remote subcommands take the global flags after their own arguments too.
CLI::App* AddRemoteSubcommand(CLI::App& app, const std::string& name, const std::string& help) {
  CLI::App* cmd = app.add_subcommand(name, help);
  cmd->fallthrough();
  return cmd;
}

}  // namespace

void AddRemoteCommands(CLI::App& app, CommandSelection& selection) {
  auto flags = std::make_shared<RemoteFlags>();
  AddRemoteFlags(app, flags.get());
  {
    auto args = std::make_shared<SubmitArgs>();
    CLI::App* cmd = AddRemoteSubcommand(app, "submit", "Submit a job spec to the coordinator");
    cmd->add_option("spec", args->spec, "Job spec (YAML or JSON)")->required();
    cmd->add_option("--request-id", args->request_id,
                    "Idempotency key: a retry with the same one returns the same job "
                    "(default: a random UUID)")
        ->check(CLI::Validator(
            [](std::string& s) { return s.empty() ? std::string("must not be empty") : ""; }, "",
            "NONEMPTY"));
    cmd->add_flag("--watch", args->watch, "Then watch the job (exit code as `qtrain watch`)");
    AddOutputFlag(cmd, &args->output);
    cmd->callback([&selection, flags, args] {
      selection.coded_action = [flags, args] { return ExitCodeOf(RunSubmit(*flags, *args)); };
    });
  }
  {
    auto job = std::make_shared<std::string>();
    auto output = std::make_shared<std::string>("table");
    CLI::App* cmd = AddRemoteSubcommand(app, "get", "Show a job");
    AddJobArg(cmd, job.get());
    AddOutputFlag(cmd, output.get());
    cmd->callback([&selection, flags, job, output] {
      selection.coded_action = [flags, job, output]() -> absl::StatusOr<int> {
        return ExitCodeOf([&]() -> absl::Status {
          QTRAIN_ASSIGN_OR_RETURN(const OutputFormat format, ParseOutputFormat(*output));
          QTRAIN_ASSIGN_OR_RETURN(const std::string name, JobResourceName(*job));
          QTRAIN_ASSIGN_OR_RETURN(JobClient client, ConnectFromFlags(*flags));
          QTRAIN_ASSIGN_OR_RETURN(const v1::Job result, client.GetJob(name));
          return Print(result, format, JobDetails(result, absl::Now()));
        }());
      };
    });
  }
  {
    auto args = std::make_shared<ListArgs>();
    CLI::App* cmd = AddRemoteSubcommand(app, "list", "List jobs, newest first");
    cmd->add_option("--state", args->states,
                    "Only jobs in this state (RUNNING, running or JOB_STATE_RUNNING); repeatable")
        ->expected(1)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
        ->check(StatusValidator([](const std::string& s) { return ParseJobState(s); }, "STATE"));
    cmd->add_option("--page-size", args->page_size, "Jobs per page (1 to 1000; default 50)")
        ->check(CLI::Range(1, 1000));
    cmd->add_option("--page-token", args->page_token, "The page after a previous listing's");
    cmd->add_flag("--all", args->all, "Every page");
    AddOutputFlag(cmd, &args->output);
    cmd->callback([&selection, flags, args] {
      selection.coded_action = [flags, args] { return ExitCodeOf(RunList(*flags, *args)); };
    });
  }
  {
    auto job = std::make_shared<std::string>();
    auto reason = std::make_shared<std::string>();
    auto output = std::make_shared<std::string>("table");
    CLI::App* cmd = AddRemoteSubcommand(app, "cancel", "Cancel a job");
    AddJobArg(cmd, job.get());
    cmd->add_option("--reason", *reason, "Why (kept in the job's state message)");
    AddOutputFlag(cmd, output.get());
    cmd->callback([&selection, flags, job, reason, output] {
      selection.coded_action = [flags, job, reason, output]() -> absl::StatusOr<int> {
        return ExitCodeOf([&]() -> absl::Status {
          QTRAIN_ASSIGN_OR_RETURN(const OutputFormat format, ParseOutputFormat(*output));
          QTRAIN_ASSIGN_OR_RETURN(const std::string name, JobResourceName(*job));
          QTRAIN_ASSIGN_OR_RETURN(JobClient client, ConnectFromFlags(*flags));
          QTRAIN_ASSIGN_OR_RETURN(const v1::Job result, client.CancelJob(name, *reason));
          return Print(result, format, JobDetails(result, absl::Now()));
        }());
      };
    });
  }
  {
    auto job = std::make_shared<std::string>();
    auto include_steps = std::make_shared<bool>(false);
    auto output = std::make_shared<std::string>("table");
    auto reconnect = std::make_shared<double>(kDefaultReconnectSeconds);
    CLI::App* cmd = AddRemoteSubcommand(
        app, "watch",
        "Follow a job's events until it ends; exit 0 SUCCEEDED, 1 FAILED, 2 CANCELLED");
    AddJobArg(cmd, job.get());
    cmd->add_flag("--include-steps", *include_steps, "Also one line (or JSON) per step");
    AddOutputFlag(cmd, output.get(), /*with_yaml=*/false);
    cmd->add_option("--reconnect-timeout", *reconnect,
                    "Give up after the coordinator has been unreachable this many seconds")
        ->check(CLI::Range(0.1, 86400.0))
        ->capture_default_str();
    cmd->callback([&selection, flags, job, include_steps, output, reconnect] {
      selection.coded_action = [flags, job, include_steps, output,
                                reconnect]() -> absl::StatusOr<int> {
        return ExitCodeOf([&]() -> absl::StatusOr<int> {
          QTRAIN_ASSIGN_OR_RETURN(const std::string name, JobResourceName(*job));
          QTRAIN_ASSIGN_OR_RETURN(JobClient client, ConnectFromFlags(*flags));
          return RunWatch(client, name, *output == "json", *include_steps, *reconnect);
        }());
      };
    });
  }
  {
    auto job = std::make_shared<std::string>();
    auto output = std::make_shared<std::string>("table");
    CLI::App* cmd = AddRemoteSubcommand(app, "checkpoints", "List a job's checkpoints");
    AddJobArg(cmd, job.get());
    AddOutputFlag(cmd, output.get());
    cmd->callback([&selection, flags, job, output] {
      selection.coded_action = [flags, job, output]() -> absl::StatusOr<int> {
        return ExitCodeOf([&]() -> absl::Status {
          QTRAIN_ASSIGN_OR_RETURN(const OutputFormat format, ParseOutputFormat(*output));
          QTRAIN_ASSIGN_OR_RETURN(const std::string name, JobResourceName(*job));
          QTRAIN_ASSIGN_OR_RETURN(JobClient client, ConnectFromFlags(*flags));
          QTRAIN_ASSIGN_OR_RETURN(const v1::ListCheckpointsResponse result,
                                  client.ListCheckpoints(name));
          return Print(result, format, CheckpointsTable(result.checkpoints()));
        }());
      };
    });
  }
  {
    auto output = std::make_shared<std::string>("table");
    CLI::App* cmd = AddRemoteSubcommand(app, "workers", "List the registered workers");
    AddOutputFlag(cmd, output.get());
    cmd->callback([&selection, flags, output] {
      selection.coded_action = [flags, output]() -> absl::StatusOr<int> {
        return ExitCodeOf([&]() -> absl::Status {
          QTRAIN_ASSIGN_OR_RETURN(const OutputFormat format, ParseOutputFormat(*output));
          QTRAIN_ASSIGN_OR_RETURN(JobClient client, ConnectFromFlags(*flags));
          QTRAIN_ASSIGN_OR_RETURN(const v1::ListWorkersResponse result, client.ListWorkers());
          return Print(result, format, WorkersTable(result.workers(), absl::Now()));
        }());
      };
    });
  }
}

}  // namespace qtrain::cli
