// The backend a training process runs a job's world.device on: the CPU backend for cpu, a CUDA
// backend on one GPU for cuda (where the build has one: QTRAIN_CUDA, see docs/cuda.md), for
// TrainerOptions::backend. qtrain-worker links it (the daemon checks --device, its training child
// makes the backend); the `qtrain` CLI does not, as the CUDA libraries (cuBLASLt, cuDNN, NVRTC)
// would add about a gigabyte of mapped address space to every one of its commands; it loads the
// CUDA backend as a plugin instead (cuda_plugin.h).
#ifndef QTRAIN_WORKER_TRAIN_TRAINING_BACKEND_H_
#define QTRAIN_WORKER_TRAIN_TRAINING_BACKEND_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "qtrain/v1/jobs.pb.h"

namespace qtrain::train {

// Whether this build has the CUDA backend.
bool BuiltWithCuda();

// OK when this build and machine can train on `device`: always for cpu; for cuda, a build with
// the CUDA backend on a machine where the CUDA driver sees at least one GPU. FAILED_PRECONDITION
// saying which is missing otherwise (it does not start a CUDA context).
absl::Status CheckTrainingDevice(v1::DeviceKind device);

// What a worker registers for `device`: the GPU's name and memory for cuda (GPU `cuda_device`),
// nothing for cpu or when the GPU cannot be described.
struct TrainingDeviceInfo {
  std::string name;
  int64_t memory_bytes = 0;
};
std::optional<TrainingDeviceInfo> DescribeTrainingDevice(v1::DeviceKind device,
                                                         int cuda_device = 0);

// A backend for `device` that the caller owns: nullptr for cpu (the trainer then uses
// kernels::CpuBackend()), a CUDA backend on GPU `cuda_device` for cuda. The process sees the
// GPUs CUDA_VISIBLE_DEVICES leaves it (one worker per GPU: give each its own). UNAVAILABLE
// naming the cause when the GPU cannot be used, FAILED_PRECONDITION as CheckTrainingDevice.
absl::StatusOr<std::unique_ptr<kernels::Backend>> CreateTrainingBackend(v1::DeviceKind device,
                                                                        int cuda_device = 0);

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_TRAINING_BACKEND_H_
