// Job specs: YAML or JSON onto the qtrain.v1.JobSpec proto, defaults, and validation.
//
//   QTRAIN_ASSIGN_OR_RETURN(qtrain::v1::JobSpec spec, LoadJobSpecFile("job.yaml"));
//
// Every problem is reported as INVALID_ARGUMENT naming the field path, e.g.
//   "job.yaml: curriculum[1].micro_batch: batch.global_tokens 32768 is not a multiple of ..."
// docs/job-spec.md describes every field; keep it in step with this file.
#ifndef QTRAIN_COMMON_JOB_SPEC_H_
#define QTRAIN_COMMON_JOB_SPEC_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain {

// The largest values a valid spec may hold. They keep every product the trainer forms
// (seq_len x micro_batch x workers, the sum of the stages' tokens and steps, positions x YaRN
// factor, activation sizes) far inside int64; docs/job-spec.md lists them.
inline constexpr int64_t kMaxSeqLen = int64_t{1} << 24;            // 16,777,216 positions
inline constexpr int64_t kMaxMicroBatch = int64_t{1} << 16;        // 65,536 sequences
inline constexpr int64_t kMaxMicroBatchTokens = int64_t{1} << 32;  // seq_len x micro_batch
inline constexpr int64_t kMaxTokens = int64_t{1} << 50;            // per stage, global batch
inline constexpr int64_t kMaxStages = 1024;
inline constexpr int64_t kMaxWorkers = int64_t{1} << 16;    // 65,536
inline constexpr int64_t kMaxWorkerSpan = 4096;             // max - min workers
inline constexpr int64_t kMaxStepCount = int64_t{1} << 50;  // warmup, every_steps, ...
inline constexpr int64_t kMaxKeepLast = int64_t{1} << 20;
inline constexpr int64_t kMaxEvalBatches = int64_t{1} << 20;
inline constexpr int64_t kMaxRestarts = 1000000;
inline constexpr double kDefaultRegroupSeconds = 30;  // world.regroup_seconds
inline constexpr double kMaxRegroupSeconds = 86400;   // one day
inline constexpr double kMaxYarnFactor = 1024;
inline constexpr double kMaxRopeTheta = 1e12;
// Model sizes (vocab_size, hidden_size, ...) and max_position_embeddings.
inline constexpr int64_t kMaxModelDim = int64_t{1} << 24;
// Activations of one micro-batch, in elements, must stay below this (with room for the
// buffers of a layer).
inline constexpr int64_t kMaxActivationElements = int64_t{1} << 56;
// A spec file is at most this large (proto_yaml.h bounds its nesting depth).
inline constexpr size_t kMaxJobSpecBytes = size_t{1} << 20;

// What validation needs to know about the model a spec names. Supplied by the layer that knows
// the presets and can read checkpoints; without it, model-dependent checks are skipped.
// Sizes left at 0 are not checked.
struct ModelLimits {
  int64_t max_position_embeddings = 0;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
};
// An error's message holds one problem per line, each starting with its field path under
// `model` ("model.config.vocab_size: must be <= 16777216"); a line without one is reported
// under `model`.
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

// Optimizer steps of one stage: its tokens / batch.global_tokens, rounded up (0 when
// global_tokens is not positive). Never overflows.
int64_t StageSteps(const v1::JobSpec& spec, int stage);

// The job step at which each stage starts, and the job's total steps as the last element
// (curriculum_size() + 1 values). INVALID_ARGUMENT when a sum leaves int64.
absl::StatusOr<std::vector<int64_t>> StageStartSteps(const v1::JobSpec& spec);
absl::StatusOr<int64_t> TotalSteps(const v1::JobSpec& spec);

// Gradient accumulation steps of a stage on each of `workers` workers:
// global_tokens / (seq_len x micro_batch x workers). INVALID_ARGUMENT when that product
// overflows, is not positive or does not divide global_tokens.
absl::StatusOr<int64_t> AccumulationSteps(const v1::JobSpec& spec, int stage, int64_t workers);

// floor(positions x yarn_factor) when yarn_factor > 1, else positions; nullopt when the
// factor is not finite or the result does not fit in int64.
std::optional<int64_t> ScaledPositions(int64_t positions, double yarn_factor);

}  // namespace qtrain

#endif  // QTRAIN_COMMON_JOB_SPEC_H_
