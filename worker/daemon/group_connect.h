// How a training child joins its group: the coordinator's rendezvous (PutKey/GetKey, scoped to
// the assignment's job and round) and a Gloo full mesh listening on the worker's peer host; on
// GPUs, also NCCL over the same rendezvous, for the gradient and parameter collectives.
#ifndef QTRAIN_WORKER_DAEMON_GROUP_CONNECT_H_
#define QTRAIN_WORKER_DAEMON_GROUP_CONNECT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "worker/comm/communicator.h"
#include "worker/comm/rendezvous_store.h"
#include "worker/daemon/stage_child.h"

namespace qtrain::worker {

// The production GroupConnector: MakeCoordinatorStore + GlooCommunicator::Connect, with
// member.timeout as the connect and op timeout; the rendezvous gives up when
// member.cancelled() turns true.
absl::StatusOr<std::unique_ptr<comm::Communicator>> ConnectGlooGroup(const GroupMember& member);

// The same over `store` instead of the coordinator (tests: an in-memory store).
absl::StatusOr<std::unique_ptr<comm::Communicator>> ConnectGlooGroupOver(
    const GroupMember& member, std::shared_ptr<comm::RendezvousStore> store);

// The production device GroupConnector (world.device cuda): MakeCoordinatorStore +
// NcclCommunicator::Connect on the first visible GPU (one worker per GPU), rank 0's NCCL id
// under the assignment's rendezvous prefix, member.timeout as the connect and op timeout.
// UNIMPLEMENTED where the build has no NCCL.
absl::StatusOr<std::unique_ptr<comm::Communicator>> ConnectNcclGroup(const GroupMember& member);
absl::StatusOr<std::unique_ptr<comm::Communicator>> ConnectNcclGroupOver(
    const GroupMember& member, std::shared_ptr<comm::RendezvousStore> store);
// Whether this build has NCCL (ConnectNcclGroup can connect).
bool BuiltWithNccl();

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_GROUP_CONNECT_H_
