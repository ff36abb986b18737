// absl::Time <-> google.protobuf.Timestamp.
#ifndef QTRAIN_COORDINATOR_TIME_UTIL_H_
#define QTRAIN_COORDINATOR_TIME_UTIL_H_

#include "absl/time/time.h"
#include "google/protobuf/timestamp.pb.h"

namespace qtrain::coordinator {

inline google::protobuf::Timestamp ToProto(absl::Time t) {
  google::protobuf::Timestamp ts;
  const int64_t nanos = absl::ToUnixNanos(t);
  int64_t seconds = nanos / 1000000000;
  int64_t rem = nanos % 1000000000;
  if (rem < 0) {
    rem += 1000000000;
    --seconds;
  }
  ts.set_seconds(seconds);
  ts.set_nanos(static_cast<int32_t>(rem));
  return ts;
}

inline absl::Time FromProto(const google::protobuf::Timestamp& ts) {
  return absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos());
}

}  // namespace qtrain::coordinator

#endif  // QTRAIN_COORDINATOR_TIME_UTIL_H_
