// Tiled causal GQA attention on the CPU (FlashAttention-2 style), with the tile size exposed
// for tests. Backend::AttentionForward/Backward call these with the tiles below.
#ifndef QTRAIN_KERNELS_CPU_ATTENTION_H_
#define QTRAIN_KERNELS_CPU_ATTENTION_H_

#include <cstdint>

#include "kernels/ops.h"

namespace qtrain::kernels::cpu {

// Query and key rows per tile. The forward's per-row softmax bookkeeping is amortised over more
// keys with wide tiles; the backward wastes less on the causal diagonal with narrow ones.
// Measured with kernels_bench (BM_Attention*, head_dim 16 and 64, T 512 and 2048): forward 128
// is 8-10% faster than 64 at head_dim 16 and equal at 64; backward 32 is 7-17% faster than 64 at
// head_dim 16 and equal at 64.
inline constexpr int64_t kAttentionForwardTile = 128;
inline constexpr int64_t kAttentionBackwardTile = 32;

// The checks every attention op makes of its shape; errors name `op` and the field.
OpStatus ValidateAttention(const char* op, const AttentionShape& shape);

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

// Same contract as Backend::DcaAttentionForward (dca_attention.cc), with the tile exposed.
OpStatus DcaAttentionForwardTiled(const float* q_intra, const float* q_succ, const float* q_inter,
                                  const float* k, const float* v, float* o, float* lse,
                                  const DcaAttentionShape& shape, int64_t tile);

}  // namespace qtrain::kernels::cpu

#endif  // QTRAIN_KERNELS_CPU_ATTENTION_H_
