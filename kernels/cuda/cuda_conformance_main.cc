// The backend conformance suite (kernels/conformance) on the CUDA backend: every op of ops.h on
// GPU 0 against the reference. Without a GPU it says so and exits 0 (tests/gpu/run.sh runs it on
// a machine with one).
//   cuda_conformance [--attention=auto|cudnn|kernel] [--quick] [--filter=<op>] [--seed=<n>]
//                    [--dtype=fp32|bf16|fp16|all] [--failures-only]
// --attention picks the backend's bf16/fp16 training attention (CudaAttention; auto by default).
#include <cstdio>
#include <memory>
#include <string_view>
#include <vector>

#include "kernels/conformance/conformance.h"
#include "kernels/cuda/cuda_backend.h"

int main(int argc, char** argv) {
  using namespace qtrain::kernels;
  cuda::CudaBackendOptions options;
  std::vector<char*> rest = {argv[0]};  // the suite's own flags
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.rfind("--attention=", 0) != 0) {
      rest.push_back(argv[i]);
      continue;
    }
    const std::string_view value = arg.substr(12);
    if (value == "auto") {
      options.attention = cuda::CudaAttention::kAuto;
    } else if (value == "cudnn") {
      options.attention = cuda::CudaAttention::kCudnn;
    } else if (value == "kernel") {
      options.attention = cuda::CudaAttention::kKernel;
    } else {
      std::fprintf(stderr, "cuda_conformance: --attention wants auto, cudnn or kernel\n");
      return 2;
    }
  }
  if (cuda::CudaDeviceCount() == 0) {
    std::printf("cuda_conformance: no GPU here; nothing checked\n");
    return 0;
  }
  std::unique_ptr<Backend> backend;
  const OpStatus created = cuda::CreateCudaBackend(options, &backend);
  if (!created.ok()) {
    std::fprintf(stderr, "cuda_conformance: %s\n", created.message().c_str());
    return 1;
  }
  std::printf("cuda_conformance: bf16/fp16 training attention through %s\n",
              cuda::UsesCudnnAttention(*backend) ? "cuDNN SDPA" : "attention.cu");
  return RunConformanceMain(*backend, static_cast<int>(rest.size()), rest.data());
}
