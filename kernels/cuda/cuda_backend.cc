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
#if QTRAIN_CUDA_SDPA
#include "kernels/cuda/sdpa_graph.h"
#endif

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
    QTRAIN_KERNEL_RETURN_IF_ERROR(backend->SetUpAttention(options.attention));
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
  // Fill and Scale are fp32 kernels; a bf16 or fp16 tensor goes through an fp32 copy in scratch.
  OpStatus Fill(Tensor x, int64_t n, float value) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::CheckOneDType("Fill", {{"x", x}}));
    if (x.is_f32()) return cuda::Fill(FillParams{.x = x.f32(), .n = n, .value = value}, stream_);
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative("Fill", "n", n));
    if (n == 0) return OpStatus::Ok();
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("Fill", "x", x.data()));
    if (value == 0.0f && !std::signbit(value)) {  // +0 is all-zero bits in bf16 too
      return CudaStatus(cudaMemsetAsync(x.data(), 0, static_cast<size_t>(n) * x.bytes(), stream_),
                        "Fill: cudaMemsetAsync");
    }
    QTRAIN_KERNEL_RETURN_IF_ERROR(widened_.Reserve(static_cast<size_t>(n) * 4, "Fill: scratch"));
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        cuda::Fill(FillParams{.x = widened_.as<float>(), .n = n, .value = value}, stream_));
    return CastTensor(widened_.as<float>(), x, n);
  }
  OpStatus Scale(Tensor x, int64_t n, float alpha) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::CheckOneDType("Scale", {{"x", x}}));
    if (x.is_f32()) return cuda::Scale(ScaleParams{.x = x.f32(), .n = n, .alpha = alpha}, stream_);
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative("Scale", "n", n));
    if (n == 0) return OpStatus::Ok();
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("Scale", "x", x.data()));
    QTRAIN_KERNEL_RETURN_IF_ERROR(widened_.Reserve(static_cast<size_t>(n) * 4, "Scale: scratch"));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CastTensor(x, widened_.as<float>(), n));
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        cuda::Scale(ScaleParams{.x = widened_.as<float>(), .n = n, .alpha = alpha}, stream_));
    return CastTensor(widened_.as<float>(), x, n);
  }
  OpStatus Cast(ConstTensor in, Tensor out, int64_t n) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::ValidateCast(in, out, n));
    if (n == 0) return OpStatus::Ok();
    return CastTensor(in, out, n);
  }
  OpStatus Synchronize() override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    return CudaStatus(cudaStreamSynchronize(stream_), "CUDA backend: the queued work failed");
  }

  // -------------------------------------------------------------------------------------------
  // Embedding. The ids are checked on the host, as the CPU backend checks them (the kernel can
  // only mark a bad id with NaN).
  OpStatus EmbeddingForward(const int32_t* ids, ConstTensor table, Tensor out, int64_t rows,
                            int64_t vocab, int64_t dim) override {
    constexpr const char* kOp = "EmbeddingForward";
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::CheckOneDType(kOp, {{"table", table}, {"out", out}}));
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        CheckEmbedding(kOp, ids, table.data(), out.data(), rows, vocab, dim));
    if (rows == 0) return OpStatus::Ok();
    std::vector<int32_t> host_ids;
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckIds(kOp, "id", ids, rows, vocab, nullptr, &host_ids));
    return cuda::EmbeddingForward(EmbeddingParams{.ids = ids,
                                                  .table = table.data(),
                                                  .out = out.data(),
                                                  .dtype = table.dtype(),
                                                  .rows = rows,
                                                  .vocab = vocab,
                                                  .dim = dim},
                                  stream_);
  }
  OpStatus EmbeddingBackward(const int32_t* ids, ConstTensor dout, float* dtable, int64_t rows,
                             int64_t vocab, int64_t dim) override {
    constexpr const char* kOp = "EmbeddingBackward";
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::CheckOneDType(kOp, {{"dout", dout}}));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckEmbedding(kOp, ids, dout.data(), dtable, rows, vocab, dim));
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
        EmbeddingBackwardParams{.dout = dout.data(),
                                .dtable = dtable,
                                .order = device,
                                .starts = device + n_order,
                                .bucket_ids = device + n_order + n_starts,
                                .buckets = static_cast<int64_t>(n_ids),
                                .dtype = dout.dtype(),
                                .rows = rows,
                                .vocab = vocab,
                                .dim = dim},
        stream_);
  }

  // -------------------------------------------------------------------------------------------
  // RMSNorm.
  OpStatus RmsNormForward(ConstTensor x, ConstTensor weight, float eps, Tensor out, float* rstd,
                          int64_t rows, int64_t dim) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        cpu::CheckOneDType("RmsNormForward", {{"x", x}, {"weight", weight}, {"out", out}}));
    if (!(eps >= 0.0f) || std::isinf(eps)) {
      return OpStatus::Error("RmsNormForward: eps must be finite and >= 0");
    }
    return cuda::RmsNormForward(RmsNormParams{.x = x.data(),
                                              .weight = weight.data(),
                                              .out = out.data(),
                                              .rstd = rstd,
                                              .eps = eps,
                                              .dtype = x.dtype(),
                                              .rows = rows,
                                              .dim = dim},
                                stream_);
  }
  OpStatus RmsNormBackward(ConstTensor dout, ConstTensor x, ConstTensor weight, const float* rstd,
                           Tensor dx, float* dweight, int64_t rows, int64_t dim) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::CheckOneDType(
        "RmsNormBackward", {{"dout", dout}, {"x", x}, {"weight", weight}, {"dx", dx}}));
    return cuda::RmsNormBackward(RmsNormBackwardParams{.dout = dout.data(),
                                                       .x = x.data(),
                                                       .weight = weight.data(),
                                                       .rstd = rstd,
                                                       .dx = dx.data(),
                                                       .dweight = dweight,
                                                       .dtype = dout.dtype(),
                                                       .rows = rows,
                                                       .dim = dim},
                                 stream_);
  }

  // -------------------------------------------------------------------------------------------
  // Linear layers and the LM head: cuBLASLt GEMMs with fp32 accumulation (fp32 compute, no
  // TF32, for fp32 operands; bf16 or fp16 operands with fp32 accumulation otherwise).
  OpStatus LinearForward(ConstTensor x, ConstTensor weight, ConstTensor bias, Tensor y,
                         int64_t rows, int64_t in, int64_t out) override {
    constexpr const char* kOp = "LinearForward";
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckLinear(kOp, rows, in, out));
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        cpu::CheckOneDType(kOp, {{"x", x}, {"weight", weight}, {"bias", bias}, {"y", y}}));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "x", x.data()));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "weight", weight.data()));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "y", y.data()));
    if (rows == 0) return OpStatus::Ok();
    // y [rows, out] = x [rows, in] W^T, W [out, in]; the bias through the epilogue.
    GemmShape shape{.m = rows,
                    .n = out,
                    .k = in,
                    .transpose_b = true,
                    .ab_dtype = x.dtype(),
                    .c_dtype = y.dtype(),
                    .bias_dtype = x.dtype()};
    GemmOperands operands{
        .a = x.data(), .b = weight.data(), .c = y.data(), .bias = const_cast<void*>(bias.data())};
    if (!bias.is_null()) shape.epilogue = GemmEpilogue::kBias;
    return RunGemm(shape, operands);
  }
  OpStatus LinearBackward(ConstTensor dy, ConstTensor x, ConstTensor weight, Tensor dx,
                          float* dweight, float* dbias, int64_t rows, int64_t in,
                          int64_t out) override {
    constexpr const char* kOp = "LinearBackward";
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckLinear(kOp, rows, in, out));
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        cpu::CheckOneDType(kOp, {{"dy", dy}, {"x", x}, {"weight", weight}, {"dx", dx}}));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "dy", dy.data()));
    if (!dx.is_null()) QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "weight", weight.data()));
    if (dweight != nullptr) QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "x", x.data()));
    if (rows == 0) return OpStatus::Ok();
    return MatmulBackward(dy, x, weight, dx, dweight, dbias, rows, in, out);
  }
  OpStatus LmHeadForward(ConstTensor y, ConstTensor embedding, float* logits, int64_t rows,
                         int64_t vocab, int64_t dim) override {
    constexpr const char* kOp = "LmHeadForward";
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckLinear(kOp, rows, dim, vocab));
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::CheckOneDType(kOp, {{"y", y}, {"embedding", embedding}}));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "input", y.data()));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "weight", embedding.data()));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "output", logits));
    if (rows == 0) return OpStatus::Ok();
    // fp32 logits from either dtype (cuBLASLt's bf16 x bf16 -> fp32).
    return RunGemm(GemmShape{.m = rows,
                             .n = vocab,
                             .k = dim,
                             .transpose_b = true,
                             .ab_dtype = y.dtype(),
                             .c_dtype = kF32,
                             .bias_dtype = kF32},
                   GemmOperands{.a = y.data(), .b = embedding.data(), .c = logits});
  }
  OpStatus LmHeadBackward(const float* dlogits, ConstTensor y, ConstTensor embedding, Tensor dy,
                          float* dembedding, int64_t rows, int64_t vocab, int64_t dim) override {
    constexpr const char* kOp = "LmHeadBackward";
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckLinear(kOp, rows, dim, vocab));
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        cpu::CheckOneDType(kOp, {{"y", y}, {"embedding", embedding}, {"dy", dy}}));
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "dlogits", dlogits));
    if (!dy.is_null())
      QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "embedding", embedding.data()));
    if (dembedding != nullptr) QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kOp, "y", y.data()));
    if (rows == 0) return OpStatus::Ok();
    // cuBLASLt multiplies operands of one dtype: with 16-bit weights, the fp32 logit gradients
    // are rounded to a copy in that dtype first (the gradient a 16-bit LM head output would have).
    ConstTensor d = dlogits;
    const DType dtype = !y.is_null() ? y.dtype() : embedding.dtype();
    if (dtype != kF32) {
      const int64_t n = rows * vocab;
      QTRAIN_KERNEL_RETURN_IF_ERROR(
          narrowed_.Reserve(static_cast<size_t>(n) * DTypeBytes(dtype), "LmHeadBackward: scratch"));
      const Tensor copy(narrowed_.as<void>(), dtype);
      QTRAIN_KERNEL_RETURN_IF_ERROR(CastTensor(dlogits, copy, n));
      d = copy;
    }
    return MatmulBackward(d, y, embedding, dy, dembedding, nullptr, rows, dim, vocab);
  }

  // -------------------------------------------------------------------------------------------
  // RoPE: the cos/sin tables are made on the host from inv_freq (as the CPU backend's angles)
  // and kept until inv_freq, the factor or the positions outgrow them.
  OpStatus RopeForward(ConstTensor x, Tensor y, const RopeShape& shape, const float* inv_freq,
                       float attention_factor) override {
    return Rope("RopeForward", x, y, shape, inv_freq, attention_factor, /*transposed=*/false);
  }
  OpStatus RopeBackward(ConstTensor dy, Tensor dx, const RopeShape& shape, const float* inv_freq,
                        float attention_factor) override {
    if (dx.data() == dy.data() && !dx.is_null()) {
      return OpStatus::Error("RopeBackward: dx must not alias dy (it accumulates)");
    }
    return Rope("RopeBackward", dy, dx, shape, inv_freq, attention_factor, /*transposed=*/true);
  }

  // -------------------------------------------------------------------------------------------
  // Attention.
  OpStatus AttentionForward(ConstTensor q, ConstTensor k, ConstTensor v, Tensor o, float* lse,
                            const AttentionShape& shape) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        cpu::CheckOneDType("AttentionForward", {{"q", q}, {"k", k}, {"v", v}, {"o", o}}));
#if QTRAIN_CUDA_SDPA
    if (UsesSdpa(q.dtype(), shape) && !o.is_null() && lse != nullptr) {
      return sdpa_->Forward(SdpaShapeOf(shape, q.dtype()), q.data(), k.data(), v.data(), o.data(),
                            lse);
    }
#endif
    return cuda::AttentionForward(AttentionParams{.q = q.data(),
                                                  .k = k.data(),
                                                  .v = v.data(),
                                                  .o = o.data(),
                                                  .lse = lse,
                                                  .dtype = q.dtype(),
                                                  .shape = KernelShape(shape)},
                                  stream_);
  }
  OpStatus AttentionBackward(ConstTensor q, ConstTensor k, ConstTensor v, ConstTensor o,
                             const float* lse, ConstTensor dout, Tensor dq, Tensor dk, Tensor dv,
                             const AttentionShape& shape) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::CheckOneDType("AttentionBackward", {{"q", q},
                                                                           {"k", k},
                                                                           {"v", v},
                                                                           {"o", o},
                                                                           {"dout", dout},
                                                                           {"dq", dq},
                                                                           {"dk", dk},
                                                                           {"dv", dv}}));
    AttentionBackwardParams p{.q = q.data(),
                              .k = k.data(),
                              .v = v.data(),
                              .o = o.data(),
                              .lse = lse,
                              .dout = dout.data(),
                              .dq = dq.data(),
                              .dk = dk.data(),
                              .dv = dv.data(),
                              .dtype = q.dtype(),
                              .shape = KernelShape(shape)};
    // The shape is checked before the scratch is sized from it.
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckAttentionShape("AttentionBackward", p.dtype, p.shape));
    if (shape.seq_len == 0) return OpStatus::Ok();
#if QTRAIN_CUDA_SDPA
    if (UsesSdpa(q.dtype(), shape)) return SdpaBackward(p, shape);
#endif
    const size_t stats = static_cast<size_t>(shape.batch * shape.num_heads * shape.seq_len);
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        row_dot_.Reserve(stats * sizeof(float), "AttentionBackward: scratch"));
    p.row_dot = row_dot_.as<float>();
    return cuda::AttentionBackward(p, stream_);
  }

  // -------------------------------------------------------------------------------------------
  // SwiGLU and residual adds (elementwise over rows * dim).
  OpStatus SwigluForward(ConstTensor gate, ConstTensor up, Tensor out, int64_t rows,
                         int64_t dim) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckRowsDim("SwigluForward", rows, dim));
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        cpu::CheckOneDType("SwigluForward", {{"gate", gate}, {"up", up}, {"out", out}}));
    return cuda::SwigluForward(SwigluParams{.gate = gate.data(),
                                            .up = up.data(),
                                            .out = out.data(),
                                            .dtype = gate.dtype(),
                                            .n = rows * dim},
                               stream_);
  }
  OpStatus SwigluBackward(ConstTensor dout, ConstTensor gate, ConstTensor up, Tensor dgate,
                          Tensor dup, int64_t rows, int64_t dim) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(CheckRowsDim("SwigluBackward", rows, dim));
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::CheckOneDType(
        "SwigluBackward",
        {{"dout", dout}, {"gate", gate}, {"up", up}, {"dgate", dgate}, {"dup", dup}}));
    return cuda::SwigluBackward(SwigluBackwardParams{.dout = dout.data(),
                                                     .gate = gate.data(),
                                                     .up = up.data(),
                                                     .dgate = dgate.data(),
                                                     .dup = dup.data(),
                                                     .dtype = dout.dtype(),
                                                     .n = rows * dim},
                                stream_);
  }
  OpStatus ResidualForward(ConstTensor a, ConstTensor b, Tensor out, int64_t n) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        cpu::CheckOneDType("ResidualForward", {{"a", a}, {"b", b}, {"out", out}}));
    return cuda::ResidualForward(
        ResidualParams{.a = a.data(), .b = b.data(), .out = out.data(), .dtype = a.dtype(), .n = n},
        stream_);
  }
  OpStatus ResidualBackward(ConstTensor dout, Tensor da, Tensor db, int64_t n) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        cpu::CheckOneDType("ResidualBackward", {{"dout", dout}, {"da", da}, {"db", db}}));
    return cuda::ResidualBackward(
        ResidualBackwardParams{
            .dout = dout.data(), .da = da.data(), .db = db.data(), .dtype = dout.dtype(), .n = n},
        stream_);
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
  OpStatus AdamWMultiStep(const kernels::AdamWTensor* tensors, int64_t count,
                          const kernels::AdamWParams& params) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::ValidateAdamWParams("AdamWMultiStep", params));
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::ValidateAdamWTensors(tensors, count));
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    std::vector<cuda::AdamWTensorRef> refs(static_cast<size_t>(count));
    for (int64_t t = 0; t < count; ++t) {
      const kernels::AdamWTensor& x = tensors[t];
      refs[t] = {.param = x.param,
                 .grad = x.grad,
                 .m = x.m,
                 .v = x.v,
                 .working_copy = x.working_copy.data(),
                 .working_copy_f16 =
                     !x.working_copy.is_null() && x.working_copy.dtype() == DType::kFloat16,
                 .n = x.n,
                 .apply_weight_decay = x.apply_weight_decay};
    }
    return cuda::AdamWMultiStep(cuda::AdamWMultiParams{.tensors = refs.data(),
                                                       .count = count,
                                                       .lr = params.lr,
                                                       .beta1 = params.beta1,
                                                       .beta2 = params.beta2,
                                                       .eps = params.eps,
                                                       .weight_decay = params.weight_decay,
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
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        totals_.Reserve(static_cast<size_t>(partials) * sizeof(double), "SumOfSquares: scratch"));
    // The total goes to device memory (ops.h): no synchronization here.
    return cuda::SumOfSquares(SumSquaresParams{.tensors = tensors,
                                               .sizes = sizes,
                                               .count = count,
                                               .partials = totals_.as<double>(),
                                               .partials_capacity = partials,
                                               .sum_squares = sum_squares},
                              stream_);
  }
  OpStatus BlockSumsOfSquares(const float* x, int64_t n, int64_t block_elements,
                              double* sums) override {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    // The sums go to device memory (ops.h): no synchronization here.
    return cuda::BlockSumsOfSquares(
        {.x = x, .n = n, .block_elements = block_elements, .sums = sums}, stream_);
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

  OpStatus CheckEmbedding(const char* op, const int32_t* ids, const void* a, const void* b,
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

  // shape's dtypes are set by the caller; the alignment comes from the operands.
  OpStatus RunGemm(GemmShape shape, const GemmOperands& operands) {
    const int alignment = GemmAlignmentOf(operands);
    if (alignment < static_cast<int>(DTypeBytes(shape.ab_dtype))) {
      return OpStatus::Error("Gemm " + GemmShapeName(shape) + ": an operand is not " +
                             std::to_string(DTypeBytes(shape.ab_dtype)) + "-byte aligned");
    }
    shape.alignment = alignment;
    return gemms_->Run(shape, operands, stream_);
  }

  // The three products of a linear layer's backward, each accumulating (dy, x, weight and dx of
  // one dtype; the parameter gradients fp32):
  //   dx [rows, in] += dy [rows, out] W [out, in]
  //   dW [out, in] += dy^T x [rows, in]
  //   db [1, out] += ones [1, rows] dy (column sums in one fixed GEMM)
  OpStatus MatmulBackward(ConstTensor dy, ConstTensor x, ConstTensor weight, Tensor dx,
                          float* dweight, float* dbias, int64_t rows, int64_t in, int64_t out) {
    const DType dtype = dy.dtype();
    if (!dx.is_null()) {
      QTRAIN_KERNEL_RETURN_IF_ERROR(
          RunGemm(GemmShape{.m = rows,
                            .n = in,
                            .k = out,
                            .ab_dtype = dtype,
                            .c_dtype = dx.dtype(),
                            .accumulate = true,
                            .bias_dtype = kF32},
                  GemmOperands{.a = dy.data(), .b = weight.data(), .c = dx.data()}));
    }
    if (dweight != nullptr) {
      QTRAIN_KERNEL_RETURN_IF_ERROR(
          RunGemm(GemmShape{.m = out,
                            .n = in,
                            .k = rows,
                            .transpose_a = true,
                            .ab_dtype = dtype,
                            .c_dtype = kF32,
                            .accumulate = true,
                            .bias_dtype = kF32},
                  GemmOperands{.a = dy.data(), .b = x.data(), .c = dweight}));
    }
    if (dbias != nullptr) {
      QTRAIN_KERNEL_RETURN_IF_ERROR(Ones(rows, dtype));
      QTRAIN_KERNEL_RETURN_IF_ERROR(
          RunGemm(GemmShape{.m = 1,
                            .n = out,
                            .k = rows,
                            .ab_dtype = dtype,
                            .c_dtype = kF32,
                            .accumulate = true,
                            .bias_dtype = kF32},
                  GemmOperands{.a = dtype == kF32 ? ones_.as<void>() : ones_bf16_.as<void>(),
                               .b = dy.data(),
                               .c = dbias}));
    }
    return OpStatus::Ok();
  }

  // ones_ (fp32) and, for a 16-bit dtype, ones_bf16_ (in the dtype of the last such call) hold
  // at least n ones.
  OpStatus Ones(int64_t n, DType dtype) {
    if (n > ones_count_) {
      const int64_t count = std::max<int64_t>(n, 4096);
      ones_count_ = 0;
      ones_bf16_count_ = 0;
      QTRAIN_KERNEL_RETURN_IF_ERROR(ones_.Reserve(count * sizeof(float), "LinearBackward: ones"));
      QTRAIN_KERNEL_RETURN_IF_ERROR(
          cuda::Fill(FillParams{.x = ones_.as<float>(), .n = count, .value = 1.0f}, stream_));
      ones_count_ = count;
    }
    if (dtype == kF32 || (n <= ones_bf16_count_ && dtype == ones_bf16_dtype_)) {
      return OpStatus::Ok();
    }
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        ones_bf16_.Reserve(ones_count_ * DTypeBytes(dtype), "LinearBackward: ones"));
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        CastTensor(ones_.as<float>(), Tensor(ones_bf16_.as<void>(), dtype), ones_count_));
    ones_bf16_count_ = ones_count_;
    ones_bf16_dtype_ = dtype;
    return OpStatus::Ok();
  }

  // out = in converted, on the stream (sizes and pointers checked by the caller).
  OpStatus CastTensor(ConstTensor in, Tensor out, int64_t n) {
    return cuda::Cast(CastParams{.in = in.data(),
                                 .in_dtype = in.dtype(),
                                 .out = out.data(),
                                 .out_dtype = out.dtype(),
                                 .n = n},
                      stream_);
  }

  OpStatus Rope(const char* op, ConstTensor in, Tensor out, const RopeShape& shape,
                const float* inv_freq, float attention_factor, bool transposed) {
    QTRAIN_KERNEL_RETURN_IF_ERROR(Bind());
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::CheckOneDType(op, {{"input", in}, {"output", out}}));
    QTRAIN_KERNEL_RETURN_IF_ERROR(cpu::ValidateRope(op, in.data(), out.data(), shape, inv_freq));
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
    return cuda::Rope(RopeParams{.in = in.data(),
                                 .out = out.data(),
                                 .cos_table = rope_tables_.as<float>(),
                                 .sin_table = rope_tables_.as<float>() + rope_rows_ * rope_half_,
                                 .table_rows = rope_rows_,
                                 .positions = shape.positions,
                                 .transposed = transposed,
                                 .dtype = in.dtype(),
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
    // The totals go straight to the caller's device memory (ops.h): no synchronization.
    return cuda::CrossEntropy(CrossEntropyParams{.logits = logits,
                                                 .labels = labels,
                                                 .losses = losses,
                                                 .lse = lse,
                                                 .dlogits = dlogits,
                                                 .loss_sum = loss_sum,
                                                 .num_valid = num_valid,
                                                 .grad_scale = grad_scale,
                                                 .ignore_index = ignore_index,
                                                 .dtype = kF32,
                                                 .rows = rows,
                                                 .vocab = vocab},
                              stream_);
  }

#if QTRAIN_CUDA_SDPA
  // Training-shaped bf16 or fp16 attention (no KV cache) that cuDNN's graphs take.
  bool UsesSdpa(DType dtype, const AttentionShape& shape) const {
    return sdpa_ != nullptr && (dtype == DType::kBfloat16 || dtype == DType::kFloat16) &&
           shape.past_len == 0 && shape.kv_rows() == shape.seq_len &&
           SdpaCanRun(SdpaShapeOf(shape, dtype));
  }
  static SdpaShape SdpaShapeOf(const AttentionShape& shape, DType dtype) {
    return {.batch = shape.batch,
            .seq_len = shape.seq_len,
            .num_heads = shape.num_heads,
            .num_kv_heads = shape.num_kv_heads,
            .head_dim = shape.head_dim,
            .softmax_scale = shape.softmax_scale,
            .fp16 = dtype == DType::kFloat16};
  }
  // cuDNN writes the gradients whole; the contract accumulates them (and each is optional): the
  // graph writes scratch, which is then added to the gradients that were passed.
  OpStatus SdpaBackward(const AttentionBackwardParams& p, const AttentionShape& shape) {
    const size_t q_bytes =
        static_cast<size_t>(shape.batch * shape.seq_len * shape.num_heads * shape.head_dim) * 2;
    const size_t kv_bytes =
        static_cast<size_t>(shape.batch * shape.seq_len * shape.num_kv_heads * shape.head_dim) * 2;
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        sdpa_grads_.Reserve(q_bytes + 2 * kv_bytes, "AttentionBackward: cuDNN gradients"));
    auto* dq = sdpa_grads_.as<unsigned char>();
    unsigned char* dk = dq + q_bytes;
    unsigned char* dv = dk + kv_bytes;
    QTRAIN_KERNEL_RETURN_IF_ERROR(
        sdpa_->Backward(SdpaShapeOf(shape, p.dtype), p.q, p.k, p.v, p.o, p.dout, p.lse, dq, dk,
                        dv));
    const std::pair<const void*, void*> adds[] = {{dq, p.dq}, {dk, p.dk}, { dv, p.dv }};
    for (int i = 0; i < 3; ++i) {
      if (adds[i].second == nullptr) continue;
      const int64_t n = static_cast<int64_t>((i == 0 ? q_bytes : kv_bytes) / 2);
      QTRAIN_KERNEL_RETURN_IF_ERROR(
          cuda::ResidualBackward(ResidualBackwardParams{.dout = adds[i].first,
                                                        .da = adds[i].second,
                                                        .db = nullptr,
                                                        .dtype = p.dtype,
                                                        .n = n},
                                 stream_));
    }
    return OpStatus::Ok();
  }
#endif
  OpStatus SetUpAttention(CudaAttention attention) {
#if QTRAIN_CUDA_SDPA
    if (attention == CudaAttention::kKernel) return OpStatus::Ok();
    const OpStatus created = SdpaPlans::Create(stream_, &sdpa_);
    if (!created.ok()) {
      sdpa_.reset();
      return attention == CudaAttention::kCudnn ? created : OpStatus::Ok();
    }
    return OpStatus::Ok();
#else
    if (attention == CudaAttention::kCudnn) {
      return OpStatus::Error("CUDA backend: built without cuDNN attention (no cuDNN frontend)");
    }
    return OpStatus::Ok();
#endif
  }

 public:
  bool uses_cudnn_attention() const {
#if QTRAIN_CUDA_SDPA
    return sdpa_ != nullptr;
#else
    return false;
#endif
  }

 private:
  const int device_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<GemmPlans> gemms_;
#if QTRAIN_CUDA_SDPA
  std::unique_ptr<SdpaPlans> sdpa_;
  Scratch sdpa_grads_;  // cuDNN's dq | dk | dv before they are added to the caller's
#endif
  Scratch buckets_;  // the embedding backward's order | starts | ids
  Scratch row_dot_;  // the attention backward's rowsum(do * o)
  Scratch totals_;   // device doubles: the partial sums of SumOfSquares
  Scratch ones_;     // the bias gradient's ones
  int64_t ones_count_ = 0;
  Scratch ones_bf16_;  // the same in bf16 or fp16, for 16-bit gradients
  int64_t ones_bf16_count_ = 0;
  DType ones_bf16_dtype_ = DType::kBfloat16;
  Scratch widened_;      // Fill and Scale of bf16 tensors: an fp32 copy
  Scratch narrowed_;     // the LM head backward's bf16 copy of the logit gradients
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

bool DescribeCudaDevice(int device, std::string* name, size_t* memory_bytes) {
  if (device < 0 || device >= CudaDeviceCount()) return false;
  cudaDeviceProp properties{};
  if (cudaGetDeviceProperties(&properties, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  *name = properties.name;
  *memory_bytes = properties.totalGlobalMem;
  return true;
}

bool UsesCudnnAttention(const Backend& backend) {
  const auto* cuda = dynamic_cast<const CudaBackendImpl*>(&backend);
  return cuda != nullptr && cuda->uses_cudnn_attention();
}

OpStatus CreateCudaBackend(const CudaBackendOptions& options, std::unique_ptr<Backend>* out) {
  if (out == nullptr) return OpStatus::Error("CreateCudaBackend: out is null");
  return CudaBackendImpl::Create(options, out);
}

}  // namespace qtrain::kernels::cuda
