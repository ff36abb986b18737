// Process-wide settings of the math runtimes, which they read from the environment when their
// libraries load (before main()). Call ConfigureRuntimeEnvironment(argv) first thing in main():
// if a setting is missing it sets it and restarts the process once (execv of itself).
//
// - OPENBLAS_CORETYPE: Debian 12's OpenBLAS (0.3.21) does not recognise recent x86 CPUs and falls
//   back to its SSE3 ("Prescott") GEMM kernels, 3-4x slower than its AVX-512 or AVX2 ones. It is
//   set from the CPU's features.
// - OMP_WAIT_POLICY=PASSIVE: Debian's OpenBLAS runs GEMMs on its own pthreads while qtrain's
//   kernels use OpenMP; OpenMP threads spinning between parallel regions starve the GEMM threads
//   (measured on 2 cores, training qwen2-tiny: 6.1K tokens/s with neither setting, 8.9K with
//   the core type only, 26.2K with both).
// Values already in the environment are respected.
#ifndef QTRAIN_COMMON_RUNTIME_ENV_H_
#define QTRAIN_COMMON_RUNTIME_ENV_H_

namespace qtrain {

void ConfigureRuntimeEnvironment(char** argv);

}  // namespace qtrain

#endif  // QTRAIN_COMMON_RUNTIME_ENV_H_
