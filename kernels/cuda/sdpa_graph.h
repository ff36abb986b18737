// The model's causal GQA attention as cuDNN SDPA graphs (forward, and the deterministic
// backward), built through the cuDNN frontend: bf16 or fp16 q/k/v/o and gradients, fp32
// softmax statistics, the [B, T, H, D] layout of kernels/ops.h.
//
// Status: the graphs are built and checked by the frontend for a given GPU architecture without
// a GPU (ValidateSdpa, in CI); SdpaPlans runs them (a handle, one plan per shape, a shared
// workspace), which compiles but has not run on a GPU (docs/cuda.md). Compiled by the host
// compiler: the frontend's headers are far slower through nvcc.
#ifndef QTRAIN_KERNELS_CUDA_SDPA_GRAPH_H_
#define QTRAIN_KERNELS_CUDA_SDPA_GRAPH_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "kernels/status.h"

namespace qtrain::kernels::cuda {

struct SdpaShape {
  int64_t batch = 1;
  int64_t seq_len = 0;  // queries = keys (training: no KV cache)
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  float softmax_scale = 0.0f;  // 0 means 1/sqrt(head_dim)
  bool fp16 = false;           // the activations' dtype: fp16, else bf16
};

enum class SdpaPass { kForward, kBackward };

// Builds the graph of `pass` for `shape` and runs the frontend's support checks for compute
// capability `sm_version` (80: A100, 90: H100): ok, or an error with the frontend's reason
// ("SDPA forward (sm_90, bf16, B=1 T=32768 H=14/3 D=64): ...").
OpStatus ValidateSdpa(const SdpaShape& shape, SdpaPass pass, int sm_version);

// Whether SdpaPlans takes this shape at all (GQA groups, head_dim a multiple of 8 up to 128);
// cuDNN's own checks come on top when its graph is built.
bool SdpaCanRun(const SdpaShape& shape);

// The graphs run on a GPU: one cuDNN handle bound to `stream`, the graph of each (pass, shape)
// built on its first use with the plan cuDNN's heuristics rank first, kept for every later call
// (the same kernels each step), and one workspace grown to the largest plan's need. q, k, v, o,
// dout, dq, dk, dv in [B, T, H, D], bf16 (fp16 when shape.fp16); stats: the fp32 logsumexp [B, H, T] the forward
// writes and the backward reads. Backward overwrites dq, dk and dv. One thread at a time.
class SdpaPlans {
 public:
  static OpStatus Create(cudaStream_t stream, std::unique_ptr<SdpaPlans>* out);
  ~SdpaPlans();
  OpStatus Forward(const SdpaShape& shape, const void* q, const void* k, const void* v, void* o,
                   float* stats);
  OpStatus Backward(const SdpaShape& shape, const void* q, const void* k, const void* v,
                    const void* o, const void* dout, const float* stats, void* dq, void* dk,
                    void* dv);
  size_t workspace_bytes() const;

 private:
  SdpaPlans();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace qtrain::kernels::cuda

#endif  // QTRAIN_KERNELS_CUDA_SDPA_GRAPH_H_
