// A group of W communicators in one process, one per thread (tests of the trainer's ranks):
// the ranks meet in shared memory, read each other's buffers directly, and compute the same
// results as every other communicator (sums are TreeSumOf in rank order).
//
//   std::vector<std::unique_ptr<Communicator>> group = MakeInProcessGroup(4, absl::Seconds(5));
//   // thread r uses *group[r]
//
// An op waits at most op_timeout for the other ranks (DEADLINE_EXCEEDED naming those that did
// not arrive). Abort() on one rank closes the whole group, as a closed connection would: its own
// blocked op returns CANCELLED, the others' UNAVAILABLE naming the rank. The communicators share
// one state that lives as long as any of them.
#ifndef QTRAIN_WORKER_COMM_IN_PROCESS_COMMUNICATOR_H_
#define QTRAIN_WORKER_COMM_IN_PROCESS_COMMUNICATOR_H_

#include <memory>
#include <vector>

#include "absl/time/time.h"
#include "worker/comm/communicator.h"

namespace qtrain::comm {

// world_size >= 1; element r is rank r.
std::vector<std::unique_ptr<Communicator>> MakeInProcessGroup(int world_size,
                                                              absl::Duration op_timeout);

}  // namespace qtrain::comm

#endif  // QTRAIN_WORKER_COMM_IN_PROCESS_COMMUNICATOR_H_
