// The model a job spec names (a preset, an explicit config, or a transformers directory),
// resolved to a validated ModelConfig. `qtrain validate`, `qtrain train` and the coordinator
// all resolve models here, so a spec valid in one is valid in all:
//
//   QTRAIN_ASSIGN_OR_RETURN(v1::JobSpec spec,
//                           LoadJobSpecFile(path, model::ModelAwareJobSpecOptions()));
//   QTRAIN_ASSIGN_OR_RETURN(model::ModelConfig config, model::ResolveModelConfig(spec.model()));
#ifndef QTRAIN_WORKER_MODEL_MODEL_SOURCE_H_
#define QTRAIN_WORKER_MODEL_MODEL_SOURCE_H_

#include "absl/status/statusor.h"
#include "common/job_spec.h"
#include "qtrain/v1/jobs.pb.h"
#include "worker/model/config.h"

namespace qtrain::model {

// The spec's model as a validated config. Errors hold one problem per line, each under its
// field path: "model.preset: unknown model preset 'gpt5' (known: ...)",
// "model.config.vocab_size: must be in [1, 16777216], got 1099511627776",
// "model.init_from: ckpt/config.json: key 'rope_theta': ...". init_from reads only the
// directory's config.json (bounded in size), not the weights.
absl::StatusOr<ModelConfig> ResolveModelConfig(const v1::ModelSpec& spec);

// What job-spec validation checks stages against.
ModelLimits LimitsOf(const ModelConfig& config);

// Options for ValidateJobSpec / LoadJobSpecFile that resolve the model with
// ResolveModelConfig, so seq_len and activation sizes are checked against the real model.
JobSpecOptions ModelAwareJobSpecOptions();

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_MODEL_SOURCE_H_
