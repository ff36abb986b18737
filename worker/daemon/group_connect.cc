#include "worker/daemon/group_connect.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/comm/coordinator_store.h"
#include "worker/comm/gloo_communicator.h"
#include "worker/daemon/cancellable_store.h"

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

absl::StatusOr<std::unique_ptr<comm::Communicator>> ConnectGlooGroup(const GroupMember& member) {
  if (member.coordinator.address.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--coordinator: a rank of a group of ",
                                                   member.world_size,
                                                   " needs the coordinator (its rendezvous)"));
  }
  if (member.worker.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--worker: a rank of a group of ",
                                                   member.world_size, " needs its worker's name"));
  }
  QTRAIN_ASSIGN_OR_RETURN(std::shared_ptr<comm::RendezvousStore> store,
                          comm::MakeCoordinatorStore({.channel = member.coordinator,
                                                      .worker = member.worker,
                                                      .job = member.job,
                                                      .round = member.round}));
  return ConnectGlooGroupOver(member, std::move(store));
}

}  // namespace qtrain::worker
