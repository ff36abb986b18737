// Job specs: YAML or JSON onto the qtrain.v1.JobSpec proto, defaults, and validation.
//
//   QTRAIN_ASSIGN_OR_RETURN(qtrain::v1::JobSpec spec, LoadJobSpecFile("job.yaml"));
//
// Every problem is reported as INVALID_ARGUMENT naming the field path, e.g.
//   "job.yaml: curriculum[1].micro_batch: batch.global_tokens 32768 is not a multiple of ..."
// docs/job-spec.md describes every field; keep it in step with this file.
#ifndef QTRAIN_COMMON_JOB_SPEC_H_
#define QTRAIN_COMMON_JOB_SPEC_H_

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain {

// What validation needs to know about the model a spec names. Supplied by the layer that knows
// the presets and can read checkpoints; without it, model-dependent checks are skipped.
struct ModelLimits {
  int64_t max_position_embeddings = 0;
};
using ModelResolver = std::function<absl::StatusOr<ModelLimits>(const v1::ModelSpec&)>;

struct JobSpecOptions {
  ModelResolver resolve_model;  // optional
};

// Fills unset fields with their documented defaults (see jobs.proto).
void ApplyJobSpecDefaults(v1::JobSpec* spec);

// Checks a spec with defaults applied. Reports every problem found, one per line, each line
// prefixed with `source` when given.
absl::Status ValidateJobSpec(const v1::JobSpec& spec, const JobSpecOptions& options = {},
                             std::string_view source = {});

// Parse + defaults + validation. `source` names the input in errors.
absl::StatusOr<v1::JobSpec> ParseJobSpec(std::string_view text, std::string_view source,
                                         const JobSpecOptions& options = {});
absl::StatusOr<v1::JobSpec> LoadJobSpecFile(const std::string& path,
                                            const JobSpecOptions& options = {});

// Optimizer steps of one stage: its tokens / batch.global_tokens, rounded up.
int64_t StageSteps(const v1::JobSpec& spec, int stage);

}  // namespace qtrain

#endif  // QTRAIN_COMMON_JOB_SPEC_H_
