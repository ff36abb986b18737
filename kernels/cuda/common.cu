// DType helpers and the CUDA error conversion of the launchers.
#include <string>

#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "fp32";
    case DType::kBfloat16:
      return "bf16";
  }
  return "unknown";
}

size_t DTypeBytes(DType dtype) { return dtype == DType::kBfloat16 ? 2 : 4; }

OpStatus CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return OpStatus::Ok();
  return OpStatus::Error(std::string(what) + ": " + cudaGetErrorString(error));
}

}  // namespace qtrain::kernels::cuda
