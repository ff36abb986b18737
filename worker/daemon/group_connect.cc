#include "worker/daemon/group_connect.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/comm/coordinator_store.h"
#include "worker/comm/gloo_communicator.h"
#include "worker/daemon/cancellable_store.h"
#if QTRAIN_STAGE_NCCL
#include "worker/comm/nccl_communicator.h"
#endif

namespace qtrain::worker {

absl::StatusOr<std::unique_ptr<comm::Communicator>> ConnectGlooGroupOver(
    const GroupMember& member, std::shared_ptr<comm::RendezvousStore> store) {
  comm::GlooOptions options;
  options.rank = member.rank;
  options.world_size = member.world_size;
  options.store = member.cancelled ? MakeCancellableStore(std::move(store), member.cancelled)
                                   : std::move(store);
  options.prefix = member.rendezvous_prefix;
  options.listen_host = member.peer_host;
  options.connect_timeout = member.timeout;
  options.op_timeout = member.timeout;
  return comm::GlooCommunicator::Connect(options);
}

namespace {

// The member's own view of the coordinator's rendezvous, checked.
absl::StatusOr<std::shared_ptr<comm::RendezvousStore>> CoordinatorStoreOf(
    const GroupMember& member) {
  if (member.coordinator.address.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--coordinator: a rank of a group of ",
                                                   member.world_size,
                                                   " needs the coordinator (its rendezvous)"));
  }
  if (member.worker.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--worker: a rank of a group of ",
                                                   member.world_size, " needs its worker's name"));
  }
  return comm::MakeCoordinatorStore({.channel = member.coordinator,
                                     .worker = member.worker,
                                     .job = member.job,
                                     .round = member.round});
}

}  // namespace

absl::StatusOr<std::unique_ptr<comm::Communicator>> ConnectGlooGroup(const GroupMember& member) {
  QTRAIN_ASSIGN_OR_RETURN(std::shared_ptr<comm::RendezvousStore> store, CoordinatorStoreOf(member));
  return ConnectGlooGroupOver(member, std::move(store));
}

bool BuiltWithNccl() { return QTRAIN_STAGE_NCCL != 0; }

absl::StatusOr<std::unique_ptr<comm::Communicator>> ConnectNcclGroupOver(
    const GroupMember& member, std::shared_ptr<comm::RendezvousStore> store) {
#if QTRAIN_STAGE_NCCL
  comm::NcclOptions options;
  options.rank = member.rank;
  options.world_size = member.world_size;
  options.store = member.cancelled ? MakeCancellableStore(std::move(store), member.cancelled)
                                   : std::move(store);
  options.prefix = member.rendezvous_prefix;
  options.device = 0;  // the first visible GPU: the one the training backend runs on
  options.connect_timeout = member.timeout;
  options.op_timeout = member.timeout;
  return comm::NcclCommunicator::Connect(options);
#else
  (void)member;
  (void)store;
  return absl::UnimplementedError("this build of qtrain-worker has no NCCL");
#endif
}

absl::StatusOr<std::unique_ptr<comm::Communicator>> ConnectNcclGroup(const GroupMember& member) {
  if (!BuiltWithNccl()) return ConnectNcclGroupOver(member, nullptr);
  QTRAIN_ASSIGN_OR_RETURN(std::shared_ptr<comm::RendezvousStore> store, CoordinatorStoreOf(member));
  return ConnectNcclGroupOver(member, std::move(store));
}

}  // namespace qtrain::worker
