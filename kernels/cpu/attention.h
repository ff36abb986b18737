// Tiled causal GQA attention on the CPU (FlashAttention-2 style), with the tile size exposed
// for tests. Backend::AttentionForward/Backward call these with kAttentionTile.
#ifndef QTRAIN_KERNELS_CPU_ATTENTION_H_
#define QTRAIN_KERNELS_CPU_ATTENTION_H_

#include <cstdint>

#include "kernels/ops.h"

namespace qtrain::kernels::cpu {

inline constexpr int64_t kAttentionTile = 64;  // query and key rows per tile

// Same contract as Backend::AttentionForward; `tile` is the number of query rows and key rows
// per tile (any positive value; results agree across tiles up to rounding).
OpStatus AttentionForwardTiled(const float* q, const float* k, const float* v, float* o, float* lse,
                               const AttentionShape& shape, int64_t tile);

// How the backward splits its work over threads (attention.cc); both give bitwise-equal
// results. kAuto takes kFused when there are enough (batch, kv head) pairs for the threads.
enum class AttentionBackwardSchedule { kAuto, kFused, kSplit };

// Same contract as Backend::AttentionBackward.
OpStatus AttentionBackwardTiled(
    const float* q, const float* k, const float* v, const float* o, const float* lse,
    const float* dout, float* dq, float* dk, float* dv, const AttentionShape& shape, int64_t tile,
    AttentionBackwardSchedule schedule = AttentionBackwardSchedule::kAuto);

}  // namespace qtrain::kernels::cpu

#endif  // QTRAIN_KERNELS_CPU_ATTENTION_H_
