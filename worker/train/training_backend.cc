#include "worker/train/training_backend.h"

#include "absl/strings/str_cat.h"

#if QTRAIN_TRAINING_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace qtrain::train {

bool BuiltWithCuda() { return QTRAIN_TRAINING_CUDA != 0; }

absl::Status CheckTrainingDevice(v1::DeviceKind device) {
  switch (device) {
    case v1::DEVICE_KIND_UNSPECIFIED:
    case v1::DEVICE_KIND_CPU:
      return absl::OkStatus();
    case v1::DEVICE_KIND_CUDA:
#if QTRAIN_TRAINING_CUDA
      if (kernels::cuda::CudaDeviceCount() < 1) {
        return absl::FailedPreconditionError(
            "device cuda: the CUDA driver sees no GPU on this machine (check nvidia-smi and "
            "CUDA_VISIBLE_DEVICES)");
      }
      return absl::OkStatus();
#else
      return absl::FailedPreconditionError(
          "device cuda: this build has no CUDA backend (it was built with QTRAIN_CUDA=OFF or "
          "without a CUDA toolkit); use a CUDA build such as the qtrain-cuda image");
#endif
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown device kind ", device));
  }
}

std::optional<TrainingDeviceInfo> DescribeTrainingDevice(v1::DeviceKind device, int cuda_device) {
  if (device != v1::DEVICE_KIND_CUDA) return std::nullopt;
#if QTRAIN_TRAINING_CUDA
  TrainingDeviceInfo info;
  size_t bytes = 0;
  if (!kernels::cuda::DescribeCudaDevice(cuda_device, &info.name, &bytes)) return std::nullopt;
  info.memory_bytes = static_cast<int64_t>(bytes);
  return info;
#else
  (void)cuda_device;
  return std::nullopt;
#endif
}

absl::StatusOr<std::unique_ptr<kernels::Backend>> CreateTrainingBackend(v1::DeviceKind device,
                                                                        int cuda_device) {
  if (absl::Status usable = CheckTrainingDevice(device); !usable.ok()) return usable;
  if (device != v1::DEVICE_KIND_CUDA) return std::unique_ptr<kernels::Backend>();
  if (cuda_device < 0) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", cuda_device, " is negative"));
  }
#if QTRAIN_TRAINING_CUDA
  std::unique_ptr<kernels::Backend> backend;
  const kernels::OpStatus created =
      kernels::cuda::CreateCudaBackend({.device = cuda_device}, &backend);
  if (!created.ok()) return absl::UnavailableError(created.message());
  return backend;
#else
  return absl::InternalError("unreachable: CheckTrainingDevice refuses cuda in this build");
#endif
}

}  // namespace qtrain::train
