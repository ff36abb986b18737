// How the remote commands print what the coordinator returns: protobuf JSON (proto field names,
// enums as names, default-valued fields included), the same object as YAML, or an aligned table.
#ifndef QTRAIN_CLI_OUTPUT_H_
#define QTRAIN_CLI_OUTPUT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/message.h"
#include "google/protobuf/timestamp.pb.h"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain::cli {

enum class OutputFormat { kTable, kJson, kYaml };

// "table", "json" or "yaml"; INVALID_ARGUMENT naming the value otherwise.
absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view text);

// The message's protobuf JSON: proto field names, enum names, primitive fields always printed.
// `pretty`: indented over several lines; otherwise one line (for JSON-lines streams).
absl::StatusOr<std::string> MessageToJson(const google::protobuf::Message& message, bool pretty);

// The JSON value as a YAML document (block style, keys in the JSON's order). Strings that YAML
// would read as something else ("true", "12", "", "null") are quoted.
absl::StatusOr<std::string> JsonToYaml(absl::string_view json);

// Enum names without their prefix: "RUNNING", "COMMITTED", "IDLE", "cpu".
std::string JobStateName(v1::JobState state);
std::string CheckpointStateName(v1::CheckpointState state);
std::string WorkerStateName(v1::WorkerState state);
std::string DeviceName(v1::DeviceKind device, int count);

// "RUNNING", "running" or "JOB_STATE_RUNNING"; INVALID_ARGUMENT listing the states otherwise.
absl::StatusOr<v1::JobState> ParseJobState(absl::string_view text);

// 0 SUCCEEDED, 1 FAILED, 2 CANCELLED; -1 for a state that is not final.
int ExitCodeForState(v1::JobState state);
bool IsFinalState(v1::JobState state);

// A duration as "42s", "5m03s", "3h07m" or "2d05h" (negative durations print as "0s").
std::string HumanDuration(absl::Duration d);
// How long before `now` the timestamp was ("-" when unset).
std::string FormatAge(const google::protobuf::Timestamp& time, absl::Time now);
absl::Time ToAbslTime(const google::protobuf::Timestamp& time);
bool IsSet(const google::protobuf::Timestamp& time);

// Left-aligned columns separated by three spaces; rows[0] is the header. No trailing spaces.
std::string RenderTable(const std::vector<std::vector<std::string>>& rows);

// Tables of the remote commands.
//   jobs:        NAME STATE STAGE STEP/TOTAL LOSS RESTARTS AGE
//   checkpoints: NAME STATE STEP STAGE TOKENS FILES
//   workers:     NAME STATE DEVICE JOB RANK LAST-HEARTBEAT
std::string JobsTable(const google::protobuf::RepeatedPtrField<v1::Job>& jobs, absl::Time now);
std::string CheckpointsTable(const google::protobuf::RepeatedPtrField<v1::Checkpoint>& checkpoints);
std::string WorkersTable(const google::protobuf::RepeatedPtrField<v1::Worker>& workers,
                         absl::Time now);
// One job: its table row, then its run directory and state message.
std::string JobDetails(const v1::Job& job, absl::Time now);

// `message` in `format`; `table` is the text printed for kTable.
absl::StatusOr<std::string> Render(const google::protobuf::Message& message, OutputFormat format,
                                   const std::string& table);

}  // namespace qtrain::cli

#endif  // QTRAIN_CLI_OUTPUT_H_
