// Shard dispatch: which shards of the dataset one rank reads while it trains steps
// [start_step, end_step) of one stage. It is a pure function of the spec, the dataset's
// manifest (not the shards: the coordinator plans without reading them), the stage, the step
// range, the rank and the world size, computed with the same data plan as the trainer's.
//
//   QTRAIN_ASSIGN_OR_RETURN(v1::DataAssignment data,
//                           PlanShardAssignment(spec, stage, start, end, rank, world_size));
//   // the worker: ShardTokenSource::OpenAssigned(spec.data().manifest(), data, options)
#ifndef QTRAIN_WORKER_TRAIN_SHARD_ASSIGNMENT_H_
#define QTRAIN_WORKER_TRAIN_SHARD_ASSIGNMENT_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "qtrain/v1/jobs.pb.h"
#include "qtrain/v1/worker.pb.h"
#include "worker/train/data_plan.h"

namespace qtrain::train {

// Most windows one assignment may cover (training and evaluation); a larger request is refused
// with RESOURCE_EXHAUSTED rather than planned window by window for minutes.
inline constexpr int64_t kMaxAssignmentWindows = int64_t{1} << 26;

// The data plan options of a job (the trainer's): its seed and validation fraction, and blocks
// of 8 windows of the longest stage. INVALID_ARGUMENT when the block size overflows int64.
absl::StatusOr<DataPlanOptions> JobDataPlanOptions(const v1::JobSpec& spec);

// Reads spec.data().manifest() (the manifest only) and lists, in manifest order, the shards
// that the training windows of `rank` (of `world_size`) over steps [start_step, end_step) of
// stage `stage` touch, and those of the validation windows the stage's evaluations read in
// that range (and the final one, when the range ends the job). `spec` has its defaults applied.
// INVALID_ARGUMENT for a stage, range, rank or world size that does not fit the spec;
// FAILED_PRECONDITION when the data holds too few windows; RESOURCE_EXHAUSTED above
// kMaxAssignmentWindows windows; the manifest's read or parse error otherwise.
absl::StatusOr<v1::DataAssignment> PlanShardAssignment(const v1::JobSpec& spec, int stage,
                                                       int64_t start_step, int64_t end_step,
                                                       int rank, int world_size);

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_SHARD_ASSIGNMENT_H_
