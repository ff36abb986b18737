// When an OpenMP loop is worth its fork/join cost. Small ops (decode steps, tiny test shapes)
// run on the calling thread; the result is the same either way, since every parallel loop
// partitions work into fixed items whose results do not depend on which thread runs them.
#ifndef QTRAIN_KERNELS_CPU_PARALLEL_H_
#define QTRAIN_KERNELS_CPU_PARALLEL_H_

#include <cstdint>

namespace qtrain::kernels::cpu {

// Roughly the number of scalar multiply-adds below which one thread is faster.
inline constexpr int64_t kMinParallelWork = int64_t{1} << 15;

inline bool WorthParallel(int64_t work) { return work >= kMinParallelWork; }

}  // namespace qtrain::kernels::cpu

#endif  // QTRAIN_KERNELS_CPU_PARALLEL_H_
