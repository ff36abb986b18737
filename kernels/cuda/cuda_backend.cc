// The fp32 CUDA backend (cuda_backend.h): the Backend ops mapped onto the kernels of
// cuda_kernels.h and the GEMMs of gemm_lt.h. Host code only; compiled by the host compiler.
#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/validate.h"
#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/gemm_lt.h"

namespace qtrain::kernels::cuda {
namespace {

using cpu::CheckNonNegative;
using cpu::CheckNotNull;
using cpu::CheckPositive;

constexpr DType kF32 = DType::kFloat32;

// A device buffer that only grows; its contents are scratch between two ops.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  // At least `bytes` of device memory (the old contents are not kept).
  OpStatus Reserve(size_t bytes, const char* what) {
    if (bytes <= bytes_) return OpStatus::Ok();
    if (ptr_ != nullptr) {
      // Work queued on the stream may still read the old buffer; cudaFree waits for the device.
      cudaFree(ptr_);
      ptr_ = nullptr;
      bytes_ = 0;
    }
    QTRAIN_KERNEL_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&ptr_, bytes), what));
    bytes_ = bytes;
    return OpStatus::Ok();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

class CudaBackendImpl final : public Backend {
 public:
  static OpStatus Create(const CudaBackendOptions& options, std::unique_ptr<Backend>* out) {
    const int count = CudaDeviceCount();
    if (count == 0) {
      int ignored = 0;
      const cudaError_t error = cudaGetDeviceCount(&ignored);
      return OpStatus::Error(
          std::string("CUDA backend: no CUDA device (") +
          (error == cudaSuccess ? "the driver lists none" : cudaGetErrorString(error)) + ")");
    }
    if (options.device < 0 || options.device >= count) {
      return OpStatus::Error("CUDA backend: device " + std::to_string(options.device) +
                             " does not exist (" + std::to_string(count) + " CUDA devices)");
    }
    std::unique_ptr<CudaBackendImpl> backend(new CudaBackendImpl(options.device));
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        CudaStatus(cudaSetDevice(options.device), "CUDA backend: cudaSetDevice"));
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        CudaStatus(cudaStreamCreateWithFlags(&backend->stream_, cudaStreamNonBlocking),
                   "CUDA backend: cudaStreamCreate"));
    QTRAIN_KERNEL_RETURN_IF_ERROR(GemmPlans::Create(options.device, &backend->gemms_));
    *out = std::move(backend);
    return OpStatus::Ok();
  }

  ~CudaBackendImpl() override {
    if (stream_ != nullptr) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
  }

  std::string_view name() const override { return "cuda"; }

  // -------------------------------------------------------------------------------------------
  // Memory.
  void* Alloc(size_t bytes) override {
    if (bytes == 0 || cudaSetDevice(device_) != cudaSuccess) return nullptr;
    void* ptr = nullptr;
    // cudaMalloc aligns to at least 256 bytes (the contract asks for 64).
    if (cudaMalloc(&ptr, bytes) != cudaSuccess) {
      cudaGetLastError();  // an allocation failure is not sticky; clear it
      return nullptr;
    }
    return ptr;
  }
  void Free(void* ptr) override {
    if (ptr != nullptr) cudaFree(ptr);
  }
  OpStatus CopyHostToBackend(void* dst, const void* src, size_t bytes) override {
    return Copy(dst, src, bytes, cudaMemcpyHostToDevice);
  }
  OpStatus CopyBackendToHost(void* dst, const void* src, size_t bytes) override {
    return Copy(dst, src, bytes, cudaMemcpyDeviceToHost);
  }
  OpStatus CopyWithinBackend(void* dst, const void* src, size_t bytes) override {
    return Copy(dst, src, bytes, cudaMemcpyDeviceToDevice);
  }
  OpStatus Fill(float* x, int64_t n, float value) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    return cuda::Fill(FillParams{.x = x, .n = n, .value = value}, stream_);
  }
  OpStatus Scale(float* x, int64_t n, float alpha) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    return cuda::Scale(ScaleParams{.x = x, .n = n, .alpha = alpha}, stream_);
  }
  OpStatus Synchronize() override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    return CudaStatus(cudaStreamSynchronize(stream_), "CUDA backend: the queued work failed");
  }

  // -------------------------------------------------------------------------------------------
  // Embedding. The ids are checked on the host, as the CPU backend checks them (the kernel can
  // only mark a bad id with NaN).
  OpStatus EmbeddingForward(const int32_t* ids, const float* table, float* out, int64_t rows,
                            int64_t vocab, int64_t dim) override {
    constexpr const char* kOp = "EmbeddingForward";
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckEmbedding(kOp, ids, table, out, rows, vocab, dim));
    if (rows == 0) return OpStatus::Ok();
    std::vector<int32_t> host_ids;
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckIds(kOp, "id", ids, rows, vocab, nullptr, &host_ids));
    return cuda::EmbeddingForward(EmbeddingParams{.ids = ids,
                                                  .table = table,
                                                  .out = out,
                                                  .dtype = kF32,
                                                  .rows = rows,
                                                  .vocab = vocab,
                                                  .dim = dim},
                                  stream_);
  }
  OpStatus EmbeddingBackward(const int32_t* ids, const float* dout, float* dtable, int64_t rows,
                             int64_t vocab, int64_t dim) override {
    constexpr const char* kOp = "EmbeddingBackward";
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckEmbedding(kOp, ids, dout, dtable, rows, vocab, dim));
    if (rows == 0) return OpStatus::Ok();
    std::vector<int32_t> host_ids;
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckIds(kOp, "id", ids, rows, vocab, nullptr, &host_ids));
    EmbeddingBuckets buckets;
    QTRAIN_KERNEL_RETURN_IF_ERROR(MakeEmbeddingBuckets(host_ids.data(), rows, vocab, &buckets));
    // One upload of order | starts | ids.
    const size_t n_order = buckets.order.size(), n_starts = buckets.starts.size();
    const size_t n_ids = buckets.ids.size();
    std::vector<int32_t> packed;
    packed.reserve(n_order + n_starts + n_ids);
    packed.insert(packed.end(), buckets.order.begin(), buckets.order.end());
    packed.insert(packed.end(), buckets.starts.begin(), buckets.starts.end());
    packed.insert(packed.end(), buckets.ids.begin(), buckets.ids.end());
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        buckets_.Reserve(packed.size() * sizeof(int32_t), "EmbeddingBackward: scratch"));
    QTRAIN_KERNEL_RETURN_IF_ERROR(Copy(buckets_.as<int32_t>(), packed.data(),
                                       packed.size() * sizeof(int32_t), cudaMemcpyHostToDevice));
    const int32_t* device = buckets_.as<int32_t>();
    return cuda::EmbeddingBackward(
        EmbeddingBackwardParams{.dout = dout,
                                .dtable = dtable,
                                .order = device,
                                .starts = device + n_order,
                                .bucket_ids = device + n_order + n_starts,
                                .buckets = static_cast<int64_t>(n_ids),
                                .dtype = kF32,
                                .rows = rows,
                                .vocab = vocab,
                                .dim = dim},
        stream_);
  }

  // -------------------------------------------------------------------------------------------
  // RMSNorm.
  OpStatus RmsNormForward(const float* x, const float* weight, float eps, float* out, float* rstd,
                          int64_t rows, int64_t dim) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    if (!(eps >= 0.0f) || std::isinf(eps)) {
      return OpStatus::Error("RmsNormForward: eps must be finite and >= 0");
    }
    return cuda::RmsNormForward(RmsNormParams{.x = x,
                                              .weight = weight,
                                              .out = out,
                                              .rstd = rstd,
                                              .eps = eps,
                                              .dtype = kF32,
                                              .rows = rows,
                                              .dim = dim},
                                stream_);
  }
  OpStatus RmsNormBackward(const float* dout, const float* x, const float* weight,
                           const float* rstd, float* dx, float* dweight, int64_t rows,
                           int64_t dim) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    return cuda::RmsNormBackward(RmsNormBackwardParams{.dout = dout,
                                                       .x = x,
                                                       .weight = weight,
                                                       .rstd = rstd,
                                                       .dx = dx,
                                                       .dweight = dweight,
                                                       .dtype = kF32,
                                                       .rows = rows,
                                                       .dim = dim},
                                 stream_);
  }

  // -------------------------------------------------------------------------------------------
  // Linear layers and the LM head: cuBLASLt fp32 GEMMs (fp32 compute, no TF32).
  OpStatus LinearForward(const float* x, const float* weight, const float* bias, float* y,
                         int64_t rows, int64_t in, int64_t out) override {
    constexpr const char* kOp = "LinearForward";
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckLinear(kOp, rows, in, out));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "x", x));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "weight", weight));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "y", y));
    if (rows == 0) return OpStatus::Ok();
    // y [rows, out] = x [rows, in] W^T, W [out, in]; the bias through the epilogue.
    GemmShape shape{.m = rows, .n = out, .k = in, .transpose_b = true};
    GemmOperands operands{.a = x, .b = weight, .c = y, .bias = const_cast<float*>(bias)};
    if (bias != nullptr) shape.epilogue = GemmEpilogue::kBias;
    return RunGemm(shape, operands);
  }
  OpStatus LinearBackward(const float* dy, const float* x, const float* weight, float* dx,
                          float* dweight, float* dbias, int64_t rows, int64_t in,
                          int64_t out) override {
    constexpr const char* kOp = "LinearBackward";
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckLinear(kOp, rows, in, out));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "dy", dy));
    if (dx != nullptr) QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "weight", weight));
    if (dweight != nullptr) QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "x", x));
    if (rows == 0) return OpStatus::Ok();
    return MatmulBackward(dy, x, weight, dx, dweight, dbias, rows, in, out);
  }
  OpStatus LmHeadForward(const float* y, const float* embedding, float* logits, int64_t rows,
                         int64_t vocab, int64_t dim) override {
    return LinearForwardAs("LmHeadForward", y, embedding, logits, rows, dim, vocab);
  }
  OpStatus LmHeadBackward(const float* dlogits, const float* y, const float* embedding, float* dy,
                          float* dembedding, int64_t rows, int64_t vocab, int64_t dim) override {
    constexpr const char* kOp = "LmHeadBackward";
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckLinear(kOp, rows, dim, vocab));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "dlogits", dlogits));
    if (dy != nullptr) QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "embedding", embedding));
    if (dembedding != nullptr) QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "y", y));
    if (rows == 0) return OpStatus::Ok();
    return MatmulBackward(dlogits, y, embedding, dy, dembedding, nullptr, rows, dim, vocab);
  }

  // -------------------------------------------------------------------------------------------
  // RoPE: the cos/sin tables are made on the host from inv_freq (as the CPU backend's angles)
  // and kept until inv_freq, the factor or the positions outgrow them.
  OpStatus RopeForward(const float* x, float* y, const RopeShape& shape, const float* inv_freq,
                       float attention_factor) override {
    return Rope("RopeForward", x, y, shape, inv_freq, attention_factor, /*transposed=*/false);
  }
  OpStatus RopeBackward(const float* dy, float* dx, const RopeShape& shape, const float* inv_freq,
                        float attention_factor) override {
    if (dx == dy && dx != nullptr) {
      return OpStatus::Error("RopeBackward: dx must not alias dy (it accumulates)");
    }
    return Rope("RopeBackward", dy, dx, shape, inv_freq, attention_factor, /*transposed=*/true);
  }

  // -------------------------------------------------------------------------------------------
  // Attention.
  OpStatus AttentionForward(const float* q, const float* k, const float* v, float* o, float* lse,
                            const AttentionShape& shape) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    return cuda::AttentionForward(
        AttentionParams{
            .q = q, .k = k, .v = v, .o = o, .lse = lse, .dtype = kF32, .shape = KernelShape(shape)},
        stream_);
  }
  OpStatus AttentionBackward(const float* q, const float* k, const float* v, const float* o,
                             const float* lse, const float* dout, float* dq, float* dk, float* dv,
                             const AttentionShape& shape) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    AttentionBackwardParams p{.q = q,
                              .k = k,
                              .v = v,
                              .o = o,
                              .lse = lse,
                              .dout = dout,
                              .dq = dq,
                              .dk = dk,
                              .dv = dv,
                              .dtype = kF32,
                              .shape = KernelShape(shape)};
    // The shape is checked before the scratch is sized from it.
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckAttentionShape("AttentionBackward", kF32, p.shape));
    if (shape.seq_len == 0) return OpStatus::Ok();
    const size_t stats = static_cast<size_t>(shape.batch * shape.num_heads * shape.seq_len);
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        row_dot_.Reserve(stats * sizeof(float), "AttentionBackward: scratch"));
    p.row_dot = row_dot_.as<float>();
    return cuda::AttentionBackward(p, stream_);
  }

  // -------------------------------------------------------------------------------------------
  // SwiGLU and residual adds (elementwise over rows * dim).
  OpStatus SwigluForward(const float* gate, const float* up, float* out, int64_t rows,
                         int64_t dim) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckRowsDim("SwigluForward", rows, dim));
    return cuda::SwigluForward(
        SwigluParams{.gate = gate, .up = up, .out = out, .dtype = kF32, .n = rows * dim}, stream_);
  }
  OpStatus SwigluBackward(const float* dout, const float* gate, const float* up, float* dgate,
                          float* dup, int64_t rows, int64_t dim) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckRowsDim("SwigluBackward", rows, dim));
    return cuda::SwigluBackward(SwigluBackwardParams{.dout = dout,
                                                     .gate = gate,
                                                     .up = up,
                                                     .dgate = dgate,
                                                     .dup = dup,
                                                     .dtype = kF32,
                                                     .n = rows * dim},
                                stream_);
  }
  OpStatus ResidualForward(const float* a, const float* b, float* out, int64_t n) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    return cuda::ResidualForward(ResidualParams{.a = a, .b = b, .out = out, .dtype = kF32, .n = n},
                                 stream_);
  }
  OpStatus ResidualBackward(const float* dout, float* da, float* db, int64_t n) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    return cuda::ResidualBackward(
        ResidualBackwardParams{.dout = dout, .da = da, .db = db, .dtype = kF32, .n = n}, stream_);
  }

  // -------------------------------------------------------------------------------------------
  // Cross-entropy. The labels are checked on the host (as the CPU backend does); the totals
  // come back through a device double and int64.
  OpStatus CrossEntropyForward(const float* logits, const int32_t* labels, float* losses,
                               float* lse, double* loss_sum, int64_t* num_valid, int64_t rows,
                               int64_t vocab, int32_t ignore_index) override {
    return CrossEntropy("CrossEntropyForward", logits, labels, 1.0f, losses, lse, loss_sum,
                        num_valid, nullptr, rows, vocab, ignore_index);
  }
  OpStatus CrossEntropyBackward(const float* logits, const int32_t* labels, const float* lse,
                                float grad_scale, float* dlogits, int64_t rows, int64_t vocab,
                                int32_t ignore_index) override {
    constexpr const char* kOp = "CrossEntropyBackward";
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckCrossEntropy(kOp, logits, labels, rows, vocab));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "lse", lse));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "dlogits", dlogits));
    if (rows == 0) return OpStatus::Ok();
    std::vector<int32_t> host_labels;
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        CheckIds(kOp, "label", labels, rows, vocab, &ignore_index, &host_labels));
    return cuda::CrossEntropyBackward(CrossEntropyBackwardParams{.logits = logits,
                                                                 .labels = labels,
                                                                 .lse = lse,
                                                                 .dlogits = dlogits,
                                                                 .grad_scale = grad_scale,
                                                                 .ignore_index = ignore_index,
                                                                 .dtype = kF32,
                                                                 .rows = rows,
                                                                 .vocab = vocab},
                                      stream_);
  }
  OpStatus CrossEntropyForwardBackward(const float* logits, const int32_t* labels, float grad_scale,
                                       float* losses, float* lse, double* loss_sum,
                                       int64_t* num_valid, float* dlogits, int64_t rows,
                                       int64_t vocab, int32_t ignore_index) override {
    if (dlogits == nullptr) return OpStatus::Error("CrossEntropyForwardBackward: dlogits is null");
    return CrossEntropy("CrossEntropyForwardBackward", logits, labels, grad_scale, losses, lse,
                        loss_sum, num_valid, dlogits, rows, vocab, ignore_index);
  }

  // -------------------------------------------------------------------------------------------
  // Optimizer.
  OpStatus AdamWStep(float* param, const float* grad, float* m, float* v, int64_t n,
                     const kernels::AdamWParams& params) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    return cuda::AdamWStep(cuda::AdamWParams{.param = param,
                                             .grad = grad,
                                             .m = m,
                                             .v = v,
                                             .n = n,
                                             .lr = params.lr,
                                             .beta1 = params.beta1,
                                             .beta2 = params.beta2,
                                             .eps = params.eps,
                                             .weight_decay = params.weight_decay,
                                             .apply_weight_decay = params.apply_weight_decay,
                                             .step = params.step,
                                             .grad_scale = params.grad_scale},
                           stream_);
  }
  OpStatus SumOfSquares(const float* const* tensors, const int64_t* sizes, int64_t count,
                        double* sum_squares) override {
    constexpr const char* kOp = "SumOfSquares";
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(kOp, "count", count));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "sum_squares", sum_squares));
    if (count > 0) {
      QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "tensors", tensors));
      QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "sizes", sizes));
      for (int64_t t = 0; t < count; ++t) {
        if (sizes[t] < 0) {
          return OpStatus::Error("SumOfSquares: tensor " + std::to_string(t) +
                                 " has a negative size");
        }
        if (sizes[t] > 0 && tensors[t] == nullptr) {
          return OpStatus::Error("SumOfSquares: tensor " + std::to_string(t) + " is null");
        }
      }
    }
    const int64_t partials = SumSquaresScratch(sizes, count);
    QTRAIN_KERNEL_RETURN_IF_ERROR(totals_.Reserve(
        (static_cast<size_t>(partials) + 1) * sizeof(double), "SumOfSquares: scratch"));
    double* device = totals_.as<double>();
    QTRAIN_KERNEL_RETURN_IF_ERROR(cuda::SumOfSquares(SumSquaresParams{.tensors = tensors,
                                                                      .sizes = sizes,
                                                                      .count = count,
                                                                      .partials = device + 1,
                                                                      .partials_capacity = partials,
                                                                      .sum_squares = device},
                                                     stream_));
    return Copy(sum_squares, device, sizeof(double), cudaMemcpyDeviceToHost);
  }

 private:
  explicit CudaBackendImpl(int device) : device_(device) {}

  OpStatus Bind() const {
    return CudaStatus(cudaSetDevice(device_), "CUDA backend: cudaSetDevice");
  }

  // A copy ordered after the queued work; returns when it is done.
  OpStatus Copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (bytes == 0) return OpStatus::Ok();
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("Copy", "dst", dst));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("Copy", "src", src));
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        CudaStatus(cudaMemcpyAsync(dst, src, bytes, kind, stream_), "Copy: cudaMemcpyAsync"));
    return CudaStatus(cudaStreamSynchronize(stream_), "Copy: the queued work failed");
  }

  // The ids (or labels) of an op, copied to the host and checked as the CPU backend checks them.
  OpStatus CheckIds(const char* op, const char* what, const int32_t* ids, int64_t rows,
                    int64_t vocab, const int32_t* ignore, std::vector<int32_t>* host) {
    host->resize(static_cast<size_t>(rows));
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        Copy(host->data(), ids, host->size() * sizeof(int32_t), cudaMemcpyDeviceToHost));
    return cpu::CheckIdsInRange(op, what, host->data(), rows, vocab, ignore);
  }

  OpStatus CheckEmbedding(const char* op, const int32_t* ids, const float* a, const float* b,
                          int64_t rows, int64_t vocab, int64_t dim) const {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "rows", rows));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "vocab", vocab));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "dim", dim));
    if (rows == 0) return OpStatus::Ok();
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "ids", ids));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "input", a));
    return CheckNotNull(op, "output", b);
  }

  OpStatus CheckLinear(const char* op, int64_t rows, int64_t in, int64_t out) const {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "rows", rows));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "in", in));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "out", out));
    if (rows > INT32_MAX || in > INT32_MAX || out > INT32_MAX) {
      return OpStatus::Error(std::string(op) + ": a dimension exceeds cuBLASLt's 32-bit range");
    }
    return OpStatus::Ok();
  }

  OpStatus CheckRowsDim(const char* op, int64_t rows, int64_t dim) const {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "rows", rows));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "dim", dim));
    if (dim > 0 && rows > INT64_MAX / dim) {
      return OpStatus::Error(std::string(op) + ": rows * dim overflows");
    }
    return OpStatus::Ok();
  }

  OpStatus CheckCrossEntropy(const char* op, const float* logits, const int32_t* labels,
                             int64_t rows, int64_t vocab) const {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "rows", rows));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "vocab", vocab));
    if (rows == 0) return OpStatus::Ok();
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "logits", logits));
    return CheckNotNull(op, "labels", labels);
  }

  OpStatus RunGemm(GemmShape shape, const GemmOperands& operands) {
    shape.ab_dtype = kF32;
    shape.c_dtype = kF32;
    shape.bias_dtype = kF32;
    const int alignment = GemmAlignmentOf(operands);
    if (alignment < 4) {
      return OpStatus::Error("Gemm " + GemmShapeName(shape) +
                             ": an fp32 operand is not 4-byte aligned");
    }
    shape.alignment = alignment;
    return gemms_->Run(shape, operands, stream_);
  }

  OpStatus LinearForwardAs(const char* op, const float* x, const float* weight, float* y,
                           int64_t rows, int64_t in, int64_t out) {
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckLinear(op, rows, in, out));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "input", x));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "weight", weight));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "output", y));
    if (rows == 0) return OpStatus::Ok();
    return RunGemm(GemmShape{.m = rows, .n = out, .k = in, .transpose_b = true},
                   GemmOperands{.a = x, .b = weight, .c = y});
  }

  // The three products of a linear layer's backward, each accumulating:
  //   dx [rows, in] += dy [rows, out] W [out, in]
  //   dW [out, in] += dy^T x [rows, in]
  //   db [1, out] += ones [1, rows] dy (column sums in one fixed GEMM)
  OpStatus MatmulBackward(const float* dy, const float* x, const float* weight, float* dx,
                          float* dweight, float* dbias, int64_t rows, int64_t in, int64_t out) {
    if (dx != nullptr) {
      QTRAIN_KERNEL_RETURN_IF_ERROR(
          RunGemm(GemmShape{.m = rows, .n = in, .k = out, .accumulate = true},
                  GemmOperands{.a = dy, .b = weight, .c = dx}));
    }
    if (dweight != nullptr) {
      QTRAIN_KERNEL_RETURN_IF_ERROR(
          RunGemm(GemmShape{.m = out, .n = in, .k = rows, .transpose_a = true, .accumulate = true},
                  GemmOperands{.a = dy, .b = x, .c = dweight}));
    }
    if (dbias != nullptr) {
      QTRAIN_KERNEL_RETURN_IF_ERROR(Ones(rows));
      QTRAIN_KERNEL_RETURN_IF_ERROR(
          RunGemm(GemmShape{.m = 1, .n = out, .k = rows, .accumulate = true},
                  GemmOperands{.a = ones_.as<float>(), .b = dy, .c = dbias}));
    }
    return OpStatus::Ok();
  }

  // ones_ holds at least n ones.
  OpStatus Ones(int64_t n) {
    if (n <= ones_count_) return OpStatus::Ok();
    const int64_t count = std::max<int64_t>(n, 4096);
    QTRAIN_KERNEL_RETURN_IF_ERROR(ones_.Reserve(count * sizeof(float), "LinearBackward: ones"));
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        cuda::Fill(FillParams{.x = ones_.as<float>(), .n = count, .value = 1.0f}, stream_));
    ones_count_ = count;
    return OpStatus::Ok();
  }

  OpStatus Rope(const char* op, const float* in, float* out, const RopeShape& shape,
                const float* inv_freq, float attention_factor, bool transposed) {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::ValidateRope(op, in, out, shape, inv_freq));
    if (!std::isfinite(attention_factor)) {
      return OpStatus::Error(std::string(op) + ": attention_factor is not finite");
    }
    if (shape.seq_len == 0) return OpStatus::Ok();
    const int64_t tokens = shape.batch * shape.seq_len;
    int64_t rows_needed = shape.past_len + shape.seq_len;
    if (shape.positions != nullptr) {
      std::vector<int32_t> positions(static_cast<size_t>(tokens));
      QTRAIN_KERNEL_RETURN_IF_ERROR(Copy(positions.data(), shape.positions,
                                         positions.size() * sizeof(int32_t),
                                         cudaMemcpyDeviceToHost));
      rows_needed = 1;
      for (int64_t i = 0; i < tokens; ++i) {
        if (positions[i] < 0) {
          return OpStatus::Error(std::string(op) + ": position " + std::to_string(positions[i]) +
                                 " at token " + std::to_string(i) + " is negative");
        }
        rows_needed = std::max<int64_t>(rows_needed, int64_t{positions[i]} + 1);
      }
    }
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        RopeTablesFor(inv_freq, shape.head_dim / 2, attention_factor, rows_needed));
    return cuda::Rope(RopeParams{.in = in,
                                 .out = out,
                                 .cos_table = rope_tables_.as<float>(),
                                 .sin_table = rope_tables_.as<float>() + rope_rows_ * rope_half_,
                                 .table_rows = rope_rows_,
                                 .positions = shape.positions,
                                 .transposed = transposed,
                                 .dtype = kF32,
                                 .batch = shape.batch,
                                 .seq_len = shape.seq_len,
                                 .num_heads = shape.num_heads,
                                 .head_dim = shape.head_dim,
                                 .past_len = shape.past_len},
                      stream_);
  }

  // The tables of positions 0 ... rows-1 for this inv_freq and factor, remade when either
  // changes or more rows are needed (then twice as many, so a growing decode remakes them
  // rarely).
  OpStatus RopeTablesFor(const float* inv_freq, int64_t half, float attention_factor,
                         int64_t rows) {
    std::vector<float> freq(static_cast<size_t>(half));
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        Copy(freq.data(), inv_freq, freq.size() * sizeof(float), cudaMemcpyDeviceToHost));
    const bool same = half == rope_half_ && freq == rope_inv_freq_ &&
                      std::memcmp(&attention_factor, &rope_factor_, sizeof(float)) == 0;
    if (same && rows <= rope_rows_) return OpStatus::Ok();
    const int64_t table_rows = std::max<int64_t>(rows, same ? 2 * rope_rows_ : 4096);
    std::vector<float> tables(static_cast<size_t>(2 * table_rows * half));
    MakeRopeTables(freq.data(), half, attention_factor, table_rows, tables.data(),
                   tables.data() + table_rows * half);
    rope_rows_ = 0;  // invalid until the upload succeeded
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        rope_tables_.Reserve(tables.size() * sizeof(float), "Rope: tables"));
    QTRAIN_KERNEL_RETURN_IF_ERROR(Copy(rope_tables_.as<float>(), tables.data(),
                                       tables.size() * sizeof(float), cudaMemcpyHostToDevice));
    rope_inv_freq_ = std::move(freq);
    rope_half_ = half;
    rope_factor_ = attention_factor;
    rope_rows_ = table_rows;
    return OpStatus::Ok();
  }

  static AttentionKernelShape KernelShape(const AttentionShape& s) {
    return AttentionKernelShape{.batch = s.batch,
                                .seq_len = s.seq_len,
                                .past_len = s.past_len,
                                .kv_rows = s.kv_capacity,
                                .num_heads = s.num_heads,
                                .num_kv_heads = s.num_kv_heads,
                                .head_dim = s.head_dim,
                                .softmax_scale = s.softmax_scale};
  }

  OpStatus CrossEntropy(const char* op, const float* logits, const int32_t* labels,
                        float grad_scale, float* losses, float* lse, double* loss_sum,
                        int64_t* num_valid, float* dlogits, int64_t rows, int64_t vocab,
                        int32_t ignore_index) {
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckCrossEntropy(op, logits, labels, rows, vocab));
    if (!std::isfinite(grad_scale)) {
      return OpStatus::Error(std::string(op) + ": grad_scale is not finite");
    }
    if (rows > 0) {
      QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "losses", losses));
      QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(op, "lse", lse));
      std::vector<int32_t> host_labels;
      QTRAIN_KERNEL_RETURN_IF_ERROR(
          CheckIds(op, "label", labels, rows, vocab, &ignore_index, &host_labels));
    }
    const bool totals = loss_sum != nullptr || num_valid != nullptr;
    if (totals) {
      QTRAIN_KERNEL_RETURN_IF_ERROR(totals_.Reserve(2 * sizeof(double), "CrossEntropy: totals"));
    }
    double* device_sum = totals_.as<double>();
    int64_t* device_count = reinterpret_cast<int64_t*>(device_sum + 1);
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        cuda::CrossEntropy(CrossEntropyParams{.logits = logits,
                                              .labels = labels,
                                              .losses = losses,
                                              .lse = lse,
                                              .dlogits = dlogits,
                                              .loss_sum = totals ? device_sum : nullptr,
                                              .num_valid = totals ? device_count : nullptr,
                                              .grad_scale = grad_scale,
                                              .ignore_index = ignore_index,
                                              .dtype = kF32,
                                              .rows = rows,
                                              .vocab = vocab},
                           stream_));
    if (!totals) return OpStatus::Ok();
    double host[2];
    QTRAIN_KERNEL_RETURN_IF_ERROR(Copy(host, device_sum, sizeof(host), cudaMemcpyDeviceToHost));
    if (loss_sum != nullptr) *loss_sum = host[0];
    if (num_valid != nullptr) std::memcpy(num_valid, &host[1], sizeof(int64_t));
    return OpStatus::Ok();
  }

  const int device_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<GemmPlans> gemms_;
  Scratch buckets_;  // the embedding backward's order | starts | ids
  Scratch row_dot_;  // the attention backward's rowsum(do * o)
  Scratch totals_;   // device doubles: loss totals, sums of squares
  Scratch ones_;     // the bias gradient's ones
  int64_t ones_count_ = 0;
  Scratch rope_tables_;  // cos | sin, [rope_rows_, rope_half_] each
  std::vector<float> rope_inv_freq_;
  int64_t rope_half_ = 0;
  float rope_factor_ = 0.0f;
  int64_t rope_rows_ = 0;
};

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

OpStatus CreateCudaBackend(const CudaBackendOptions& options, std::unique_ptr<Backend>* out) {
  if (out == nullptr) return OpStatus::Error("CreateCudaBackend: out is null");
  return CudaBackendImpl::Create(options, out);
}

}  // namespace qtrain::kernels::cuda
