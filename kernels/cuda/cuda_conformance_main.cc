// The backend conformance suite (kernels/conformance) on the CUDA backend: every op of ops.h on
// GPU 0 against the reference. Without a GPU it says so and exits 0 (tests/gpu/run.sh runs it on
// a machine with one).
//   cuda_conformance [--quick] [--filter=<op>] [--seed=<n>] [--dtype=fp32|bf16|all]
//                    [--failures-only]
#include <cstdio>
#include <memory>

#include "kernels/conformance/conformance.h"
#include "kernels/cuda/cuda_backend.h"

int main(int argc, char** argv) {
  using namespace qtrain::kernels;
  if (cuda::CudaDeviceCount() == 0) {
    std::printf("cuda_conformance: no GPU here; nothing checked\n");
    return 0;
  }
  std::unique_ptr<Backend> backend;
  const OpStatus created = cuda::CreateCudaBackend({.device = 0}, &backend);
  if (!created.ok()) {
    std::fprintf(stderr, "cuda_conformance: %s\n", created.message().c_str());
    return 1;
  }
  return RunConformanceMain(*backend, argc, argv);
}
