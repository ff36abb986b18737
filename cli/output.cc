#include "cli/output.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/job_spec.h"
#include "common/status_macros.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"
#include "yaml-cpp/yaml.h"

namespace qtrain::cli {
namespace {

using ordered_json = nlohmann::ordered_json;

// The enum value's name without the enum's prefix ("JOB_STATE_RUNNING" -> "RUNNING").
std::string ShortEnumName(const google::protobuf::EnumDescriptor* descriptor, int value,
                          absl::string_view prefix) {
  const google::protobuf::EnumValueDescriptor* v = descriptor->FindValueByNumber(value);
  if (v == nullptr) return absl::StrCat(value);
  std::string name = v->name();
  if (absl::StartsWith(name, prefix)) name = name.substr(prefix.size());
  return name;
}

// True when YAML would read the plain scalar `s` as something other than this string.
bool NeedsQuotes(const std::string& s) {
  if (s.empty()) return true;
  const std::string lower = absl::AsciiStrToLower(s);
  static constexpr absl::string_view kSpecial[] = {"true", "false", "yes",   "no",   "on",
                                                   "off",  "y",     "n",     "null", "~",
                                                   ".nan", ".inf",  "-.inf", "+.inf"};
  for (absl::string_view special : kSpecial) {
    if (lower == special) return true;
  }
  double number;
  if (absl::SimpleAtod(s, &number)) return true;
  // Leading or trailing space, or characters with a meaning in YAML: let the emitter quote.
  return absl::ascii_isspace(s.front()) || absl::ascii_isspace(s.back());
}

void EmitYaml(YAML::Emitter& out, const ordered_json& value) {
  switch (value.type()) {
    case ordered_json::value_t::object:
      if (value.empty()) {
        out << YAML::Flow << YAML::BeginMap << YAML::EndMap;
        return;
      }
      out << YAML::BeginMap;
      for (const auto& [key, item] : value.items()) {
        out << YAML::Key;
        if (NeedsQuotes(key)) out << YAML::DoubleQuoted;
        out << key << YAML::Value;
        EmitYaml(out, item);
      }
      out << YAML::EndMap;
      return;
    case ordered_json::value_t::array:
      if (value.empty()) {
        out << YAML::Flow << YAML::BeginSeq << YAML::EndSeq;
        return;
      }
      out << YAML::BeginSeq;
      for (const ordered_json& item : value) EmitYaml(out, item);
      out << YAML::EndSeq;
      return;
    case ordered_json::value_t::string: {
      const std::string& s = value.get_ref<const std::string&>();
      // A literal block keeps line breaks readable but always ends with one; other multi-line
      // text is double-quoted with escapes.
      if (absl::StrContains(s, '\n')) {
        out << (s.back() == '\n' ? YAML::Literal : YAML::DoubleQuoted);
      } else if (NeedsQuotes(s)) {
        out << YAML::DoubleQuoted;
      }
      out << s;
      return;
    }
    case ordered_json::value_t::boolean:
      out << (value.get<bool>() ? "true" : "false");
      return;
    case ordered_json::value_t::null:
      out << YAML::Null;
      return;
    default:
      // Numbers: JSON's shortest round-trip text is valid YAML.
      out << value.dump();
      return;
  }
}

std::string OrDash(const std::string& s) { return s.empty() ? "-" : s; }

std::vector<std::string> JobRow(const v1::Job& job, absl::Time now) {
  const v1::JobProgress& p = job.progress();
  std::string stage = "-";
  if (p.stage() >= 0 && p.stage() < job.spec().curriculum_size()) {
    stage = OrDash(job.spec().curriculum(static_cast<int>(p.stage())).name());
  }
  int64_t total = p.total_steps();
  if (total <= 0) total = TotalSteps(job.spec()).value_or(0);
  return {job.name(),
          JobStateName(job.state()),
          stage,
          absl::StrCat(p.step(), "/", total),
          p.step() > 0 ? absl::StrFormat("%.4f", p.loss()) : "-",
          absl::StrCat(job.restarts()),
          FormatAge(job.create_time(), now)};
}

const std::vector<std::string> kJobHeader = {"NAME", "STATE",    "STAGE", "STEP/TOTAL",
                                             "LOSS", "RESTARTS", "AGE"};

}  // namespace

absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view text) {
  if (text == "table") return OutputFormat::kTable;
  if (text == "json") return OutputFormat::kJson;
  if (text == "yaml") return OutputFormat::kYaml;
  return absl::InvalidArgumentError(
      absl::StrCat("-o: unknown output format '", text, "' (expected table, json or yaml)"));
}

absl::StatusOr<std::string> MessageToJson(const google::protobuf::Message& message, bool pretty) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = pretty;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  if (auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
      !status.ok()) {
    return absl::InternalError(
        absl::StrCat("cannot print ", message.GetTypeName(), " as JSON: ", status.ToString()));
  }
  // Pretty output ends with a newline already; one-line output gets none.
  if (!pretty) json += "\n";
  return json;
}

absl::StatusOr<std::string> JsonToYaml(absl::string_view json) {
  ordered_json value = ordered_json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) return absl::InvalidArgumentError("JsonToYaml: input is not JSON");
  YAML::Emitter out;
  out.SetIndent(2);
  EmitYaml(out, value);
  if (!out.good()) {
    return absl::InternalError(absl::StrCat("cannot write YAML: ", out.GetLastError()));
  }
  return absl::StrCat(out.c_str(), "\n");
}

std::string JobStateName(v1::JobState state) {
  return ShortEnumName(v1::JobState_descriptor(), state, "JOB_STATE_");
}
std::string CheckpointStateName(v1::CheckpointState state) {
  return ShortEnumName(v1::CheckpointState_descriptor(), state, "CHECKPOINT_STATE_");
}
std::string WorkerStateName(v1::WorkerState state) {
  return ShortEnumName(v1::WorkerState_descriptor(), state, "WORKER_STATE_");
}
std::string DeviceName(v1::DeviceKind device, int count) {
  std::string name = device == v1::DEVICE_KIND_CUDA ? "cuda" : "cpu";
  if (count > 1) absl::StrAppend(&name, "(", count, ")");
  return name;
}

absl::StatusOr<v1::JobState> ParseJobState(absl::string_view text) {
  std::string upper = absl::AsciiStrToUpper(text);
  if (!absl::StartsWith(upper, "JOB_STATE_")) upper = absl::StrCat("JOB_STATE_", upper);
  v1::JobState state;
  if (upper != "JOB_STATE_UNSPECIFIED" && v1::JobState_Parse(upper, &state)) return state;
  std::vector<std::string> names;
  for (int i = 1; i < v1::JobState_descriptor()->value_count(); ++i) {
    names.push_back(
        JobStateName(static_cast<v1::JobState>(v1::JobState_descriptor()->value(i)->number())));
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown job state '", text, "' (expected one of ",
                                                 absl::StrJoin(names, ", "), ")"));
}

int ExitCodeForState(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_SUCCEEDED:
      return 0;
    case v1::JOB_STATE_FAILED:
      return 1;
    case v1::JOB_STATE_CANCELLED:
      return 2;
    default:
      return -1;
  }
}

bool IsFinalState(v1::JobState state) { return ExitCodeForState(state) >= 0; }

std::string HumanDuration(absl::Duration d) {
  const int64_t s = std::max<int64_t>(0, absl::ToInt64Seconds(d));
  if (s < 60) return absl::StrFormat("%ds", s);
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  if (s < 86400) return absl::StrFormat("%dh%02dm", s / 3600, s % 3600 / 60);
  return absl::StrFormat("%dd%02dh", s / 86400, s % 86400 / 3600);
}

bool IsSet(const google::protobuf::Timestamp& time) {
  return time.seconds() != 0 || time.nanos() != 0;
}

absl::Time ToAbslTime(const google::protobuf::Timestamp& time) {
  return absl::FromUnixSeconds(time.seconds()) + absl::Nanoseconds(time.nanos());
}

std::string FormatAge(const google::protobuf::Timestamp& time, absl::Time now) {
  if (!IsSet(time)) return "-";
  return HumanDuration(now - ToAbslTime(time));
}

std::string RenderTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      absl::StrAppend(&line, row[i]);
      if (i + 1 < row.size()) line.append(widths[i] - row[i].size() + 3, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::string JobsTable(const google::protobuf::RepeatedPtrField<v1::Job>& jobs, absl::Time now) {
  std::vector<std::vector<std::string>> rows = {kJobHeader};
  for (const v1::Job& job : jobs) rows.push_back(JobRow(job, now));
  return RenderTable(rows);
}

std::string JobDetails(const v1::Job& job, absl::Time now) {
  std::string out = RenderTable({kJobHeader, JobRow(job, now)});
  if (!job.run_directory().empty())
    absl::StrAppend(&out, "run directory: ", job.run_directory(), "\n");
  if (!job.latest_checkpoint().empty()) {
    absl::StrAppend(&out, "latest checkpoint: ", job.latest_checkpoint(), "\n");
  }
  if (!job.workers().empty()) {
    absl::StrAppend(&out, "workers: ", absl::StrJoin(job.workers(), ", "), "\n");
  }
  if (!job.state_message().empty()) absl::StrAppend(&out, "message: ", job.state_message(), "\n");
  return out;
}

std::string CheckpointsTable(
    const google::protobuf::RepeatedPtrField<v1::Checkpoint>& checkpoints) {
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "STATE", "STEP", "STAGE", "TOKENS", "FILES"}};
  for (const v1::Checkpoint& c : checkpoints) {
    rows.push_back({c.name(), CheckpointStateName(c.state()), absl::StrCat(c.step()),
                    absl::StrCat(c.stage()), absl::StrCat(c.tokens_seen()),
                    absl::StrCat(c.files_size())});
  }
  return RenderTable(rows);
}

std::string WorkersTable(const google::protobuf::RepeatedPtrField<v1::Worker>& workers,
                         absl::Time now) {
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "STATE", "DEVICE", "JOB", "RANK", "LAST-HEARTBEAT"}};
  for (const v1::Worker& w : workers) {
    rows.push_back({w.name(), WorkerStateName(w.state()), DeviceName(w.device(), w.device_count()),
                    OrDash(w.job()), w.job().empty() ? "-" : absl::StrCat(w.rank()),
                    FormatAge(w.last_heartbeat_time(), now)});
  }
  return RenderTable(rows);
}

absl::StatusOr<std::string> Render(const google::protobuf::Message& message, OutputFormat format,
                                   const std::string& table) {
  switch (format) {
    case OutputFormat::kTable:
      return table;
    case OutputFormat::kJson:
      return MessageToJson(message, /*pretty=*/true);
    case OutputFormat::kYaml: {
      QTRAIN_ASSIGN_OR_RETURN(const std::string json, MessageToJson(message, /*pretty=*/false));
      return JsonToYaml(json);
    }
  }
  return absl::InternalError("unknown output format");
}

}  // namespace qtrain::cli
