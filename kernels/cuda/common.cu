// The CUDA error conversion of the launchers.
#include <string>

#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {

OpStatus CudaStatus(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return OpStatus::Ok();
  return OpStatus::Error(std::string(what) + ": " + cudaGetErrorString(error));
}

}  // namespace qtrain::kernels::cuda
