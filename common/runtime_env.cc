#include "common/runtime_env.h"

#include <unistd.h>

#include <cstdlib>
#include <string_view>

namespace qtrain {
namespace {

const char* OpenBlasCoreType() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return "SkylakeX";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return nullptr;
}

}  // namespace

void ConfigureRuntimeEnvironment(char** argv) {
  // Set once: a restarted process (or a user's explicit choice) is left alone.
  if (std::getenv("QTRAIN_RUNTIME_CONFIGURED") != nullptr) return;
  setenv("QTRAIN_RUNTIME_CONFIGURED", "1", 1);
  bool changed = false;
  if (std::getenv("OPENBLAS_CORETYPE") == nullptr) {
    if (const char* core = OpenBlasCoreType()) {
      setenv("OPENBLAS_CORETYPE", core, 1);
      changed = true;
    }
  }
  // Always 1: the kernels run single-threaded GEMMs on OpenMP threads (kernels/cpu/gemm.h), and
  // a pool of idle OpenBLAS threads would only take memory.
  const char* blas_threads = std::getenv("OPENBLAS_NUM_THREADS");
  if (blas_threads == nullptr || std::string_view(blas_threads) != "1") {
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    changed = true;
  }
  if (changed) execv("/proc/self/exe", argv);  // returns only on failure: carry on as we are
}

}  // namespace qtrain
