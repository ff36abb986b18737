// The GPU collectives: NCCL, one rank per GPU, every op built from NCCL's grouped sends and
// receives in a fixed pattern (not NCCL's ring or tree reductions, whose sum order depends on
// W and the topology) plus the TreeSumRows kernel, so the results are the deterministic ones
// communicator.h defines, bit for bit those of the CPU collectives.
//
// The spans the ops take are DEVICE memory on options.device (AllGatherV's counts excepted:
// host sizes); each op runs on the communicator's own stream and returns once it is complete.
// Before each op the ranks exchange a small header (op, sequence number, sizes), so mismatched
// calls fail with INVALID_ARGUMENT instead of hanging or reading the wrong bytes.
//
// No rank hangs: the communicator is non-blocking (ncclConfig_t::blocking = 0) and every wait
// polls the op's deadline, Abort() and NCCL's asynchronous error; any of them calls
// ncclCommAbort, which makes the peers' pending operations fail too.
//
// Status: compiled and linked in CI; never yet run on a GPU (docs/cuda.md).
#ifndef QTRAIN_WORKER_COMM_NCCL_COMMUNICATOR_H_
#define QTRAIN_WORKER_COMM_NCCL_COMMUNICATOR_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "worker/comm/communicator.h"
#include "worker/comm/rendezvous_store.h"

namespace qtrain::comm {

struct NcclOptions {
  int rank = 0;
  int world_size = 1;
  // Where rank 0 publishes NCCL's unique id (nccl_id.h); the key is under `prefix`.
  std::shared_ptr<RendezvousStore> store;
  std::string prefix;
  int device = 0;  // the CUDA device of this rank
  // How long Connect waits for the id and for ncclCommInitRank.
  absl::Duration connect_timeout = absl::Seconds(60);
  // Every op fails with DEADLINE_EXCEEDED (and aborts the communicator) past this.
  absl::Duration op_timeout = absl::Seconds(60);
  // When set, a Connect still waiting gives up with CANCELLED soon after it turns true.
  const std::atomic<bool>* cancel = nullptr;
  // ReduceScatterSum receives at most this many elements per peer at a time, so its device
  // staging is W x chunk_elements x 4 bytes (8 for doubles) whatever the model's size.
  int64_t chunk_elements = int64_t{1} << 21;
};

class NcclCommunicator {
 public:
  // UNAVAILABLE when CUDA or NCCL fails (no device, a peer that cannot be reached);
  // DEADLINE_EXCEEDED / CANCELLED as above; INVALID_ARGUMENT for bad options.
  static absl::StatusOr<std::unique_ptr<Communicator>> Connect(const NcclOptions& options);
};

}  // namespace qtrain::comm

#endif  // QTRAIN_WORKER_COMM_NCCL_COMMUNICATOR_H_
