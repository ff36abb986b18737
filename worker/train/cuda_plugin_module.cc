// libqtrain_cuda_plugin.so: the CUDA backend behind the C entry points of cuda_plugin.h.
#include <cstdio>
#include <memory>
#include <string>

#include "kernels/cuda/cuda_backend.h"
#include "worker/train/cuda_plugin.h"

namespace {

void SetError(char* error, size_t size, const std::string& text) {
  if (error == nullptr || size == 0) return;
  std::snprintf(error, size, "%s", text.c_str());
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int qtrain_cuda_plugin_abi() {
  return qtrain::train::kCudaPluginAbi;
}

extern "C" __attribute__((visibility("default"))) qtrain::kernels::Backend*
qtrain_cuda_plugin_create_backend(int device, char* error, size_t error_size) {
  namespace cuda = qtrain::kernels::cuda;
  try {
    if (cuda::CudaDeviceCount() < 1) {
      SetError(error, error_size,
               "the CUDA driver sees no GPU on this machine (check nvidia-smi and "
               "CUDA_VISIBLE_DEVICES)");
      return nullptr;
    }
    std::unique_ptr<qtrain::kernels::Backend> backend;
    const qtrain::kernels::OpStatus created = cuda::CreateCudaBackend({.device = device}, &backend);
    if (!created.ok()) {
      SetError(error, error_size, created.message());
      return nullptr;
    }
    return backend.release();
  } catch (const std::exception& e) {  // nothing may unwind through the C boundary
    SetError(error, error_size, std::string("creating the CUDA backend: ") + e.what());
    return nullptr;
  }
}
