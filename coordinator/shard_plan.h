// The default DataPlanner: train::PlanShardAssignment (reads the job's data manifest).
#ifndef QTRAIN_COORDINATOR_SHARD_PLAN_H_
#define QTRAIN_COORDINATOR_SHARD_PLAN_H_

#include "coordinator/coordinator.h"

namespace qtrain::coordinator {

DataPlanner DefaultDataPlanner();

}  // namespace qtrain::coordinator

#endif  // QTRAIN_COORDINATOR_SHARD_PLAN_H_
