#include "worker/train/spec_change.h"

#include <algorithm>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/sha256.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/json_util.h"

namespace qtrain::train {
namespace {

// "curriculum[1].micro_batch" -> {"curriculum", "[1]", "micro_batch"}.
std::vector<std::string> SplitPath(const std::string& path) {
  std::vector<std::string> tokens;
  std::string current;
  const auto flush = [&] {
    if (!current.empty()) tokens.push_back(current);
    current.clear();
  };
  for (char c : path) {
    if (c == '.') {
      flush();
    } else if (c == '[') {
      flush();
      current.push_back('[');
    } else if (c == ']') {
      current.push_back(c);
      flush();
    } else {
      current.push_back(c);
    }
  }
  flush();
  return tokens;
}

bool IsIndexToken(const std::string& token) {
  if (token.size() < 3 || token.front() != '[' || token.back() != ']') return false;
  const std::string inside = token.substr(1, token.size() - 2);
  return inside == "*" || std::all_of(inside.begin(), inside.end(), absl::ascii_isdigit);
}

std::string Text(const nlohmann::json& value) {
  // Proto JSON prints 64-bit integers as strings; show those as the numbers they are.
  if (value.is_string()) {
    const std::string& s = value.get_ref<const std::string&>();
    int64_t number;
    if (!s.empty() && absl::SimpleAtoi(s, &number) && absl::StrCat(number) == s) return s;
  }
  return value.dump();
}

void Diff(const nlohmann::json& before, const nlohmann::json& after, const std::string& path,
          std::vector<SpecChange>& out) {
  if (before.is_object() && after.is_object()) {
    std::set<std::string> keys;
    for (const auto& [key, value] : before.items()) keys.insert(key);
    for (const auto& [key, value] : after.items()) keys.insert(key);
    for (const std::string& key : keys) {
      const std::string child = path.empty() ? key : absl::StrCat(path, ".", key);
      const auto b = before.find(key);
      const auto a = after.find(key);
      if (b == before.end()) {
        out.push_back({child, "(unset)", Text(*a)});
      } else if (a == after.end()) {
        out.push_back({child, Text(*b), "(unset)"});
      } else {
        Diff(*b, *a, child, out);
      }
    }
    return;
  }
  if (before.is_array() && after.is_array() && before.size() == after.size()) {
    for (size_t i = 0; i < before.size(); ++i) {
      Diff(before[i], after[i], absl::StrCat(path, "[", i, "]"), out);
    }
    return;
  }
  if (before != after) out.push_back({path, Text(before), Text(after)});
}

// Removes the field at `path` (no indices) from `spec`, if present.
// Erases tokens[i...] under node; "[*]" descends into every element of an array.
void ErasePathFrom(nlohmann::json& node, const std::vector<std::string>& tokens, size_t i) {
  const std::string& token = tokens[i];
  if (token == "[*]") {
    if (!node.is_array() || i + 1 == tokens.size()) return;
    for (nlohmann::json& element : node) ErasePathFrom(element, tokens, i + 1);
    return;
  }
  if (!node.is_object() || !node.contains(token)) return;
  if (i + 1 == tokens.size()) {
    node.erase(token);
  } else {
    ErasePathFrom(node[token], tokens, i + 1);
  }
}

void ErasePath(nlohmann::json& spec, const std::string& path) {
  const std::vector<std::string> tokens = SplitPath(path);
  if (!tokens.empty()) ErasePathFrom(spec, tokens, 0);
}

absl::Status CheckFieldPath(const std::string& entry) {
  const std::vector<std::string> tokens = SplitPath(entry);
  const google::protobuf::Descriptor* message = v1::JobSpec::descriptor();
  const google::protobuf::FieldDescriptor* field = nullptr;
  bool index_allowed = false;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& token = tokens[i];
    if (IsIndexToken(token)) {
      if (!index_allowed) return absl::InvalidArgumentError("an index where none belongs");
      index_allowed = false;
      continue;
    }
    if (field != nullptr && field->is_map()) return absl::OkStatus();  // a key: anything
    if (message == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", tokens[i - 1], "' has no fields inside it"));
    }
    field = message->FindFieldByName(token);
    if (field == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", token, "' is not a field of ", message->name()));
    }
    index_allowed = field->is_repeated() && !field->is_map();
    message =
        field->message_type() != nullptr && !field->is_map() ? field->message_type() : nullptr;
  }
  return absl::OkStatus();
}

}  // namespace

nlohmann::json JobSpecToJson(const v1::JobSpec& spec) {
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  print.always_print_primitive_fields = true;
  print.always_print_enums_as_ints = false;
  std::string text;
  (void)google::protobuf::util::MessageToJsonString(spec, &text, print);
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  return json.is_object() ? json : nlohmann::json::object();
}

const std::vector<std::string>& BookkeepingSpecFields() {
  static const auto* fields = new std::vector<std::string>{
      "checkpoint.every_steps", "checkpoint.keep_last", "eval.every_steps", "labels",
      // Benchmarks of the weights: they never change them.
      "eval.tasks",
      "world.max_restarts", "world.regroup_seconds",
      // Recomputing a layer's activations in backward gives the same bits (model_test.cc).
      "curriculum[*].recompute_activations",
      // The weights do not depend on the worker count (the sums are worker-invariant), so a
      // job may be resumed with another world range.
      "world.min_workers", "world.max_workers"};
  return *fields;
}

const std::vector<std::string>& NeverChangeableSpecFields() {
  static const auto* fields = new std::vector<std::string>{"model",
                                                           "seed",
                                                           "data.validation_fraction",
                                                           "batch.global_tokens",
                                                           "curriculum[*].seq_len",
                                                           "curriculum[*].tokens"};
  return *fields;
}

std::string TrainingSpecSha256(const nlohmann::json& spec) {
  nlohmann::json training = spec;
  for (const std::string& path : BookkeepingSpecFields()) ErasePath(training, path);
  return Sha256Hex(training.dump());
}

std::vector<SpecChange> DiffSpecJson(const nlohmann::json& before, const nlohmann::json& after) {
  std::vector<SpecChange> out;
  Diff(before, after, "", out);
  return out;
}

bool SpecPathCovers(const std::string& pattern, const std::string& path) {
  const std::vector<std::string> p = SplitPath(pattern);
  const std::vector<std::string> q = SplitPath(path);
  if (p.size() > q.size()) return false;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == q[i]) continue;
    if (p[i] == "[*]" && IsIndexToken(q[i])) continue;
    if (q[i] == "[*]" && IsIndexToken(p[i])) continue;
    return false;
  }
  return true;
}

absl::Status ValidateAllowedSpecChanges(const std::vector<std::string>& allowed) {
  for (const std::string& entry : allowed) {
    if (entry.empty() || entry.front() == '.' || entry.back() == '.' ||
        entry.find("..") != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("allowed spec change '", entry, "': not a field path"));
    }
    if (absl::Status path = CheckFieldPath(entry); !path.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "allowed spec change '", entry, "': not a job spec field (", path.message(), ")"));
    }
    for (const std::string& never : NeverChangeableSpecFields()) {
      if (SpecPathCovers(entry, never) || SpecPathCovers(never, entry)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "allowed spec change '", entry, "': ", never,
            " cannot change within a run (the weights or the data order depend on it); use a "
            "new run directory"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<SpecChange>> CheckSpecChanges(const nlohmann::json& before,
                                                         const nlohmann::json& after,
                                                         const std::vector<std::string>& allowed) {
  std::vector<SpecChange> accepted;
  std::vector<std::string> refused;
  for (SpecChange& change : DiffSpecJson(before, after)) {
    const auto covers = [&](const std::string& pattern) {
      return SpecPathCovers(pattern, change.path);
    };
    const bool never =
        std::any_of(NeverChangeableSpecFields().begin(), NeverChangeableSpecFields().end(), covers);
    const bool ok = !never && (std::any_of(BookkeepingSpecFields().begin(),
                                           BookkeepingSpecFields().end(), covers) ||
                               std::any_of(allowed.begin(), allowed.end(), covers));
    if (ok) {
      accepted.push_back(std::move(change));
    } else {
      refused.push_back(change.Describe());
    }
  }
  if (!refused.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the job spec differs from the one the checkpoint was trained with: ",
        absl::StrJoin(refused, "; "),
        ". Resume with the spec of the run (see job.json), use a new run directory, or allow a "
        "change that is safe explicitly (qtrain train --allow-spec-change FIELD)"));
  }
  return accepted;
}

}  // namespace qtrain::train
