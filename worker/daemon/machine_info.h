// What a worker tells the coordinator about its machine, and whether it can train on a device.
#ifndef QTRAIN_WORKER_DAEMON_MACHINE_INFO_H_
#define QTRAIN_WORKER_DAEMON_MACHINE_INFO_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain::worker {

struct MachineInfo {
  std::string hostname;
  std::string cpu_model;  // "/proc/cpuinfo" model name; empty when unknown
  int64_t memory_bytes = 0;
};

MachineInfo DescribeMachine();

// OK when this build and machine can train on `device`; FAILED_PRECONDITION saying why not.
absl::Status CheckDevice(v1::DeviceKind device);

}  // namespace qtrain::worker

#endif  // QTRAIN_WORKER_DAEMON_MACHINE_INFO_H_
