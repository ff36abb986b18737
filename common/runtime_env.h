// Process-wide settings of the math runtimes, which they read from the environment when their
// libraries load (before main()). Call ConfigureRuntimeEnvironment(argv) first thing in main():
// if a setting is missing it sets it and restarts the process once (execv of itself).
//
// - OPENBLAS_CORETYPE: Debian 12's OpenBLAS (0.3.21) does not recognise recent x86 CPUs and falls
//   back to its SSE3 ("Prescott") GEMM kernels, 3-4x slower than its AVX-512 or AVX2 ones. It is
//   set from the CPU's features.
// - OPENBLAS_NUM_THREADS=1, always: the CPU kernels split GEMMs over OpenMP threads themselves
//   and call OpenBLAS single-threaded (kernels/cpu/gemm.h). The thread count is OMP_NUM_THREADS.
//   (Before that, OpenBLAS's pthreads and the kernels' spinning OpenMP threads fought over the
//   cores.)
// An OPENBLAS_CORETYPE already in the environment is respected.
#ifndef QTRAIN_COMMON_RUNTIME_ENV_H_
#define QTRAIN_COMMON_RUNTIME_ENV_H_

namespace qtrain {

void ConfigureRuntimeEnvironment(char** argv);

}  // namespace qtrain

#endif  // QTRAIN_COMMON_RUNTIME_ENV_H_
