// The model's causal GQA attention as cuDNN SDPA graphs (forward, and the deterministic
// backward), built through the cuDNN frontend: bf16 q/k/v/o and gradients, fp32 softmax
// statistics, the [B, T, H, D] layout of kernels/ops.h.
//
// Status: the graphs are built and checked by the frontend for a given GPU architecture without
// a GPU (ValidateSdpa); executing them (plans, a handle, workspace) is not written yet
// (docs/cuda.md). Compiled by the host compiler: the frontend's headers are far slower through
// nvcc.
#ifndef QTRAIN_KERNELS_CUDA_SDPA_GRAPH_H_
#define QTRAIN_KERNELS_CUDA_SDPA_GRAPH_H_

#include <cstdint>

#include "kernels/status.h"

namespace qtrain::kernels::cuda {

struct SdpaShape {
  int64_t batch = 1;
  int64_t seq_len = 0;  // queries = keys (training: no KV cache)
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  float softmax_scale = 0.0f;  // 0 means 1/sqrt(head_dim)
};

enum class SdpaPass { kForward, kBackward };

// Builds the graph of `pass` for `shape` and runs the frontend's support checks for compute
// capability `sm_version` (80: A100, 90: H100): ok, or an error with the frontend's reason
// ("SDPA forward (sm_90, B=1 T=32768 H=14/3 D=64): ...").
OpStatus ValidateSdpa(const SdpaShape& shape, SdpaPass pass, int sm_version);

}  // namespace qtrain::kernels::cuda

#endif  // QTRAIN_KERNELS_CUDA_SDPA_GRAPH_H_
