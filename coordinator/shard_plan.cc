#include "coordinator/shard_plan.h"

#include "worker/train/shard_assignment.h"

namespace qtrain::coordinator {

DataPlanner DefaultDataPlanner() {
  return [](const v1::JobSpec& spec, int stage, int64_t start_step, int64_t end_step, int rank,
            int world_size) {
    return train::PlanShardAssignment(spec, stage, start_step, end_step, rank, world_size);
  };
}

}  // namespace qtrain::coordinator
