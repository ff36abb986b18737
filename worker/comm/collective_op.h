// The ops of communicator.h as codes, shared by the transports: the code goes into the header
// each rank sends before an op (so ranks calling different ops fail instead of mixing their
// bytes), and errors name the op. Also the one error of a broken group.
#ifndef QTRAIN_WORKER_COMM_COLLECTIVE_OP_H_
#define QTRAIN_WORKER_COMM_COLLECTIVE_OP_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace qtrain::comm {

enum class CollectiveOp : uint32_t {
  kBarrier = 1,
  kBroadcast,
  kAllReduceFloat,
  kAllReduceDouble,
  kReduceScatter,
  kAllGather,
  kAllGatherV,
};

inline const char* CollectiveOpName(CollectiveOp op) {
  switch (op) {
    case CollectiveOp::kBarrier:
      return "Barrier";
    case CollectiveOp::kBroadcast:
      return "Broadcast";
    case CollectiveOp::kAllReduceFloat:
      return "AllReduceSum(float)";
    case CollectiveOp::kAllReduceDouble:
      return "AllReduceSum(double)";
    case CollectiveOp::kReduceScatter:
      return "ReduceScatterSum";
    case CollectiveOp::kAllGather:
      return "AllGather";
    case CollectiveOp::kAllGatherV:
      return "AllGatherV";
  }
  return "unknown op";
}

// What every op of a group returns after its first error (communicator.h).
inline absl::Status BrokenGroupError(const absl::Status& first_error) {
  return absl::FailedPreconditionError(
      absl::StrCat("collectives: the group is broken by an earlier error (",
                   absl::StatusCodeToString(first_error.code()), ": ", first_error.message(), ")"));
}

}  // namespace qtrain::comm

#endif  // QTRAIN_WORKER_COMM_COLLECTIVE_OP_H_
