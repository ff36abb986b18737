// The CUDA backend: every op of kernels/ops.h on one GPU, over device memory, in fp32 or bf16
// storage with fp32 arithmetic, with the kernels of kernels/cuda/ (one warp per row attention,
// fused cross-entropy, deterministic embedding backward) and cuBLASLt's GEMMs (gemm_lt.h: fp32,
// or bf16 with fp32 accumulation), and cuDNN's SDPA graphs for bf16 training attention where the
// build has them (sdpa_graph.h, CudaAttention). It is the GPU twin of the CPU backend, held to the
// same contract and checked against the same reference by the conformance suite
// (kernels/conformance).
//
// The loss totals and sums of squares go to the caller's device memory. Where the contract has
// host-checkable errors, this backend synchronizes: the token ids, labels and RoPE positions are
// copied to the host to be checked (and, for the embedding backward, grouped by id). Everything
// else is queued on the backend's stream; Synchronize() waits for it, and the copies to and from
// the host wait too.
//
// One backend per thread of work (its scratch buffers and GEMM plans are not shared).
//
// Status: compiled for sm_80 and sm_90 and checked without a GPU; it has not run on a GPU yet
// (docs/cuda.md).
#ifndef QTRAIN_KERNELS_CUDA_CUDA_BACKEND_H_
#define QTRAIN_KERNELS_CUDA_CUDA_BACKEND_H_

#include <cstddef>
#include <memory>
#include <string>

#include "kernels/ops.h"
#include "kernels/status.h"

namespace qtrain::kernels::cuda {

// Which attention runs bf16 training shapes (no KV cache, head_dim a multiple of 8 up to 128):
// kAuto cuDNN's SDPA graphs where the build has them and cuDNN starts, else the kernel of
// attention.cu; kCudnn cuDNN or an error at creation; kKernel always attention.cu. Every other
// call (fp32, a KV cache, other head dims) runs attention.cu.
enum class CudaAttention { kAuto, kCudnn, kKernel };

struct CudaBackendOptions {
  int device = 0;  // the CUDA device ordinal
  CudaAttention attention = CudaAttention::kAuto;
};

// Whether `backend` (made by CreateCudaBackend) runs bf16 training attention through cuDNN.
bool UsesCudnnAttention(const Backend& backend);

// The number of CUDA devices; 0 without a driver or a GPU (never an error).
int CudaDeviceCount();

// The name (e.g. "NVIDIA H100 80GB HBM3") and memory of CUDA device `device`; false when there
// is no such device (never an error). Starts no context.
bool DescribeCudaDevice(int device, std::string* name, size_t* memory_bytes);

// A backend on options.device: an error naming the problem when there is no such device (e.g.
// "CUDA backend: no CUDA device (...)").
OpStatus CreateCudaBackend(const CudaBackendOptions& options, std::unique_ptr<Backend>* out);

}  // namespace qtrain::kernels::cuda

#endif  // QTRAIN_KERNELS_CUDA_CUDA_BACKEND_H_
