// What a resumed run may change in its job spec. A checkpoint stores the spec it was trained
// with (as JSON, every field printed); on resume the current spec is compared with it field by
// field. Fields that only affect bookkeeping (BookkeepingSpecFields) may change freely; any
// other change is refused, naming the fields, unless the caller explicitly allows it (the
// `--allow-spec-change FIELD` flag of `qtrain train`). Fields that the weights or the data order
// depend on (NeverChangeableSpecFields) cannot be allowed at all.
//
// Field paths are written as in error messages: "optimizer.lr", "curriculum[1].micro_batch",
// "labels.team"; in an allowed path "[*]" matches any index, and a path also covers the fields
// inside it ("optimizer" covers "optimizer.lr").
#ifndef QTRAIN_WORKER_TRAIN_SPEC_CHANGE_H_
#define QTRAIN_WORKER_TRAIN_SPEC_CHANGE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain::train {

// The spec as a JSON object: proto field names, fields at their default values included.
nlohmann::json JobSpecToJson(const v1::JobSpec& spec);

// May change between a checkpoint and its resume without being allowed by name.
const std::vector<std::string>& BookkeepingSpecFields();
// Can never change within a run, allowed or not.
const std::vector<std::string>& NeverChangeableSpecFields();

// sha256 of the spec JSON without the bookkeeping fields: equal for two specs that train alike.
std::string TrainingSpecSha256(const nlohmann::json& spec);

struct SpecChange {
  std::string path;
  std::string before;  // JSON text, "(unset)" when absent
  std::string after;
  std::string Describe() const { return path + ": " + before + " -> " + after; }
};

// Every leaf field whose value differs, in path order. Arrays of different lengths are one
// change of the array itself.
std::vector<SpecChange> DiffSpecJson(const nlohmann::json& before, const nlohmann::json& after);

// Whether `path` is covered by `pattern` (equal, inside it, "[*]" for any index).
bool SpecPathCovers(const std::string& pattern, const std::string& path);

// Checks the fields a caller wants to allow: each names a field of the job spec and is not
// (and does not cover) a never-changeable one. INVALID_ARGUMENT naming the entry otherwise.
absl::Status ValidateAllowedSpecChanges(const std::vector<std::string>& allowed);

// The changes from `before` (a checkpoint's spec) to `after`, all of them allowed (bookkeeping,
// or covered by `allowed`); FAILED_PRECONDITION listing the others ("field: old -> new").
absl::StatusOr<std::vector<SpecChange>> CheckSpecChanges(const nlohmann::json& before,
                                                         const nlohmann::json& after,
                                                         const std::vector<std::string>& allowed);

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_SPEC_CHANGE_H_
