// How the ranks of a CUDA group agree on NCCL's unique id: rank 0 makes it (ncclGetUniqueId)
// and sets it in the group's rendezvous store, the others wait for it there. The store is the
// coordinator's (scoped to the job and round, so a new round never reads an old round's id),
// keys under the group's prefix as with Gloo.
//
// The value is text: "nccl-id v1 world=<W> <256 hex digits>". The world size in it lets a rank
// started with a different W fail with a clear error instead of hanging in ncclCommInitRank.
//
// Nothing here calls NCCL, so it builds and is tested without CUDA.
#ifndef QTRAIN_WORKER_COMM_NCCL_ID_H_
#define QTRAIN_WORKER_COMM_NCCL_ID_H_

#include <array>
#include <atomic>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/comm/rendezvous_store.h"

namespace qtrain::comm {

// NCCL_UNIQUE_ID_BYTES (nccl.h); nccl_communicator.cc checks that they agree.
inline constexpr size_t kNcclUniqueIdBytes = 128;
using NcclUniqueIdBytes = std::array<char, kNcclUniqueIdBytes>;

// The store key of a group's id: prefix + "nccl-unique-id".
std::string NcclIdKey(absl::string_view prefix);

std::string EncodeNcclId(const NcclUniqueIdBytes& id, int world_size);
// INVALID_ARGUMENT naming what is wrong: not this format, a bad hex digit, the wrong length, or
// a world size other than `world_size`.
absl::StatusOr<NcclUniqueIdBytes> DecodeNcclId(absl::string_view value, int world_size);

struct NcclIdExchange {
  int rank = 0;
  int world_size = 1;
  RendezvousStore* store = nullptr;
  std::string prefix;
  // Ranks other than 0 give up with DEADLINE_EXCEEDED (naming the key) at this time...
  absl::Time deadline = absl::InfiniteFuture();
  // ...or with CANCELLED within about a quarter of a second of this turning true (when set).
  const std::atomic<bool>* cancel = nullptr;
};

// Rank 0: make_id() and Set; others: Get and decode. Every rank returns the same id.
absl::StatusOr<NcclUniqueIdBytes> ExchangeNcclId(
    const NcclIdExchange& exchange, absl::FunctionRef<absl::StatusOr<NcclUniqueIdBytes>()> make_id);

}  // namespace qtrain::comm

#endif  // QTRAIN_WORKER_COMM_NCCL_ID_H_
