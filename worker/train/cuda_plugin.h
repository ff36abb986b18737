// The CUDA backend as a plugin that a process without the CUDA libraries loads when it needs one:
// `qtrain train` on a world.device cuda job. The CLI does not link cuBLASLt, cuDNN and NVRTC
// (they would add about a gigabyte of mapped address space to every command, see
// training_backend.h); the shared module libqtrain_cuda_plugin.so does, and exports a C entry
// point that makes a CUDA backend. The module links only kernels/ (no protobuf), so loading it
// registers nothing twice.
//
// Where it is looked for: $QTRAIN_CUDA_PLUGIN (a path) alone when it is set; otherwise beside the
// executable (<dir of /proc/self/exe>/libqtrain_cuda_plugin.so: the build's bin/), then
// <dir>/../lib/qtrain/libqtrain_cuda_plugin.so (an installed layout, e.g. the CUDA image).
#ifndef QTRAIN_WORKER_TRAIN_CUDA_PLUGIN_H_
#define QTRAIN_WORKER_TRAIN_CUDA_PLUGIN_H_

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/ops.h"

// The module's entry points (C linkage, so that dlsym finds them by name).
extern "C" {
// kCudaPluginAbi of the module's build; the loader refuses another.
int qtrain_cuda_plugin_abi();
// A CUDA backend on GPU `device` that the caller owns (delete it through Backend's virtual
// destructor), or nullptr with the reason in `error` (NUL-terminated, at most error_size bytes).
qtrain::kernels::Backend* qtrain_cuda_plugin_create_backend(int device, char* error,
                                                            size_t error_size);
}

namespace qtrain::train {

// Bumped whenever kernels::Backend (kernels/ops.h) or the entry points change.
inline constexpr int kCudaPluginAbi = 1;

// The paths LoadCudaPluginBackend tries, in order.
std::vector<std::string> CudaPluginCandidates();

// Loads the module (once per process; it stays loaded) and makes a CUDA backend on GPU
// `device`. FAILED_PRECONDITION naming every path tried when no module is found, or the
// module's reason when it cannot make one (no GPU, no driver); INTERNAL for a module of another
// ABI.
absl::StatusOr<std::unique_ptr<kernels::Backend>> LoadCudaPluginBackend(int device = 0);

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_CUDA_PLUGIN_H_
