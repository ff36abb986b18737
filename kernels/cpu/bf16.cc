// The typed interface of the CPU backend (kernels/ops.h, "Dtypes") over its fp32 kernels.
//
// A call whose tensors are all fp32 goes straight to the fp32 kernel, so fp32 results are those
// of the fp32-only interface bit for bit. A bf16 or fp16 call widens each 16-bit input (and
// each 16-bit gradient it accumulates into) to an fp32 copy, runs the fp32 kernel, and rounds
// the outputs back (nearest even) only when the kernel succeeded: fp32 arithmetic over 16-bit
// storage, what the CUDA kernels compute, with the CPU's summation orders. It is the reference
// the GPU's bf16 and fp16 paths are checked against, not a fast path: every call converts its
// tensors whole.
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/validate.h"
#include "kernels/cuda/element_math.h"

namespace qtrain::kernels::cpu {
namespace {

// Elements of a tensor of `dims`; nullopt when a dimension is negative or the product
// overflows (the fp32 kernel then rejects the sizes itself, before touching memory).
std::optional<int64_t> Count(std::initializer_list<int64_t> dims) {
  int64_t product = 1;
  for (int64_t d : dims) {
    if (d < 0 || __builtin_mul_overflow(product, d, &product)) return std::nullopt;
  }
  return product;
}

// Whether any tensor has 16-bit storage (the call then goes through fp32 copies).
bool Any16Bit(std::initializer_list<ConstTensor> tensors) {
  for (const ConstTensor& t : tensors) {
    if (!t.is_null() && !t.is_f32()) return true;
  }
  return false;
}

// f(T{}) with T the element type of `dtype` (checked by CheckOneDType before).
template <typename F>
void WithElementType(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      f(float{});
      return;
    case DType::kBfloat16:
      f(Bf16{});
      return;
    case DType::kFloat16:
      f(F16{});
      return;
  }
}

// out[i] = in[i], converted (widened, rounded to nearest even, or copied).
void Convert(ConstTensor in, Tensor out, int64_t n) {
  WithElementType(in.dtype(), [&](auto in_type) {
    using In = decltype(in_type);
    const In* src = static_cast<const In*>(in.data());
    WithElementType(out.dtype(), [&](auto out_type) {
      using Out = decltype(out_type);
      Out* dst = static_cast<Out*>(out.data());
#pragma omp parallel for schedule(static) if (WorthParallel(n))
      for (int64_t i = 0; i < n; ++i) math::Store(math::ToFloat(src[i]), dst[i]);
    });
  });
}

void Widen(ConstTensor in, float* out, int64_t n) { Convert(in, out, n); }
void Narrow(const float* in, Tensor out, int64_t n) { Convert(in, out, n); }

// The fp32 copies of one call's 16-bit tensors.
class Staging {
 public:
  explicit Staging(const char* op) : op_(op) {}

  // An fp32 pointer to t's n elements: t itself when it is fp32 or null or there is nothing to
  // read (or when n is unknown: the kernel fails on the sizes first), else a widened copy.
  const float* In(ConstTensor t, std::optional<int64_t> n) {
    if (t.is_null() || t.is_f32() || !n.has_value() || *n == 0) {
      return static_cast<const float*>(t.data());
    }
    float* copy = NewBuffer(*n);
    if (copy != nullptr) Widen(t, copy, *n);
    return copy;
  }

  // The same for an output, rounded back into t by Finish. `accumulate`: the kernel adds into
  // it, so the copy starts from t's values. Two outputs over the same memory share one copy (a
  // residual's da == db).
  float* Out(Tensor t, std::optional<int64_t> n, bool accumulate) {
    if (t.is_null() || t.is_f32() || !n.has_value() || *n == 0) {
      return static_cast<float*>(t.data());
    }
    for (const Output& o : outputs_) {
      if (o.dst.data() == t.data() && o.n == *n) return o.src;
    }
    float* copy = NewBuffer(*n);
    if (copy == nullptr) return nullptr;
    if (accumulate) Widen(t, copy, *n);
    outputs_.push_back({t, copy, *n});
    return copy;
  }

  bool ok() const { return !failed_elements_.has_value(); }
  OpStatus error() const {
    return OpStatus::Error(std::string(op_) +
                           ": cannot allocate the fp32 copy of a 16-bit tensor of " +
                           std::to_string(*failed_elements_) + " elements");
  }

  // The kernel's status; when it succeeded, the outputs are rounded back first.
  OpStatus Finish(OpStatus status) {
    if (!status.ok()) return status;
    for (const Output& o : outputs_) Narrow(o.src, o.dst, o.n);
    return status;
  }

 private:
  struct Output {
    Tensor dst;
    float* src;
    int64_t n;
  };

  float* NewBuffer(int64_t n) {
    float* p = nullptr;
    if (n <= PTRDIFF_MAX / static_cast<int64_t>(sizeof(float))) {
      p = new (std::nothrow) float[static_cast<size_t>(n)];
    }
    if (p == nullptr) {
      if (!failed_elements_) failed_elements_ = n;
      return nullptr;
    }
    owned_.emplace_back(p);
    return p;
  }

  const char* op_;
  std::vector<std::unique_ptr<float[]>> owned_;
  std::vector<Output> outputs_;
  std::optional<int64_t> failed_elements_;
};

// Runs `kernel` (returning OpStatus) once the staging has its buffers.
template <typename Kernel>
OpStatus RunStaged(Staging& staging, Kernel&& kernel) {
  if (!staging.ok()) return staging.error();
  return staging.Finish(kernel());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Fill, Scale and Cast work on either dtype directly.

OpStatus CpuBackendImpl::Fill(Tensor x, int64_t n, float value) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType("Fill", {{"x", x}}));
  if (x.is_f32()) return FillF32(x.f32(), n, value);
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative("Fill", "n", n));
  if (n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("Fill", "x", x.data()));
  WithElementType(x.dtype(), [&](auto type) {
    using T = decltype(type);
    T rounded;
    math::Store(value, rounded);
    T* out = static_cast<T*>(x.data());
#pragma omp parallel for schedule(static) if (WorthParallel(n))
    for (int64_t i = 0; i < n; ++i) out[i] = rounded;
  });
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::Scale(Tensor x, int64_t n, float alpha) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType("Scale", {{"x", x}}));
  if (x.is_f32()) return ScaleF32(x.f32(), n, alpha);
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative("Scale", "n", n));
  if (n == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull("Scale", "x", x.data()));
  WithElementType(x.dtype(), [&](auto type) {
    using T = decltype(type);
    T* out = static_cast<T*>(x.data());
#pragma omp parallel for schedule(static) if (WorthParallel(n))
    for (int64_t i = 0; i < n; ++i) math::Store(math::ToFloat(out[i]) * alpha, out[i]);
  });
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::Cast(ConstTensor in, Tensor out, int64_t n) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateCast(in, out, n));
  if (n == 0) return OpStatus::Ok();
  if (in.dtype() == out.dtype()) {
    std::memcpy(out.data(), in.data(), static_cast<size_t>(n) * in.bytes());
  } else {
    Convert(in, out, n);
  }
  return OpStatus::Ok();
}

// ---------------------------------------------------------------------------------------------
// The ops over typed tensors.

OpStatus CpuBackendImpl::EmbeddingForward(const int32_t* ids, ConstTensor table, Tensor out,
                                          int64_t rows, int64_t vocab, int64_t dim) {
  constexpr const char* kOp = "EmbeddingForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType(kOp, {{"table", table}, {"out", out}}));
  if (!Any16Bit({table, out})) {
    return EmbeddingForwardF32(ids, table.f32(), out.f32(), rows, vocab, dim);
  }
  Staging s(kOp);
  const float* t = s.In(table, Count({vocab, dim}));
  float* o = s.Out(out, Count({rows, dim}), /*accumulate=*/false);
  return RunStaged(s, [&] { return EmbeddingForwardF32(ids, t, o, rows, vocab, dim); });
}

OpStatus CpuBackendImpl::EmbeddingBackward(const int32_t* ids, ConstTensor dout, float* dtable,
                                           int64_t rows, int64_t vocab, int64_t dim) {
  constexpr const char* kOp = "EmbeddingBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType(kOp, {{"dout", dout}}));
  if (!Any16Bit({dout})) return EmbeddingBackwardF32(ids, dout.f32(), dtable, rows, vocab, dim);
  Staging s(kOp);
  const float* d = s.In(dout, Count({rows, dim}));
  return RunStaged(s, [&] { return EmbeddingBackwardF32(ids, d, dtable, rows, vocab, dim); });
}

OpStatus CpuBackendImpl::RmsNormForward(ConstTensor x, ConstTensor weight, float eps, Tensor out,
                                        float* rstd, int64_t rows, int64_t dim) {
  constexpr const char* kOp = "RmsNormForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType(kOp, {{"x", x}, {"weight", weight}, {"out", out}}));
  if (!Any16Bit({x, weight, out})) {
    return RmsNormForwardF32(x.f32(), weight.f32(), eps, out.f32(), rstd, rows, dim);
  }
  Staging s(kOp);
  const float* xs = s.In(x, Count({rows, dim}));
  const float* w = s.In(weight, Count({dim}));
  float* o = s.Out(out, Count({rows, dim}), /*accumulate=*/false);
  return RunStaged(s, [&] { return RmsNormForwardF32(xs, w, eps, o, rstd, rows, dim); });
}

OpStatus CpuBackendImpl::RmsNormBackward(ConstTensor dout, ConstTensor x, ConstTensor weight,
                                         const float* rstd, Tensor dx, float* dweight, int64_t rows,
                                         int64_t dim) {
  constexpr const char* kOp = "RmsNormBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(
      CheckOneDType(kOp, {{"dout", dout}, {"x", x}, {"weight", weight}, {"dx", dx}}));
  if (!Any16Bit({dout, x, weight, dx})) {
    return RmsNormBackwardF32(dout.f32(), x.f32(), weight.f32(), rstd, dx.f32(), dweight, rows,
                              dim);
  }
  Staging s(kOp);
  const float* d = s.In(dout, Count({rows, dim}));
  const float* xs = s.In(x, Count({rows, dim}));
  const float* w = s.In(weight, Count({dim}));
  float* g = s.Out(dx, Count({rows, dim}), /*accumulate=*/true);
  return RunStaged(s, [&] { return RmsNormBackwardF32(d, xs, w, rstd, g, dweight, rows, dim); });
}

OpStatus CpuBackendImpl::LinearForward(ConstTensor x, ConstTensor weight, ConstTensor bias,
                                       Tensor y, int64_t rows, int64_t in, int64_t out) {
  constexpr const char* kOp = "LinearForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(
      CheckOneDType(kOp, {{"x", x}, {"weight", weight}, {"bias", bias}, {"y", y}}));
  if (!Any16Bit({x, weight, bias, y})) {
    return LinearForwardF32(x.f32(), weight.f32(), bias.f32(), y.f32(), rows, in, out);
  }
  Staging s(kOp);
  const float* xs = s.In(x, Count({rows, in}));
  const float* w = s.In(weight, Count({out, in}));
  const float* b = s.In(bias, Count({out}));
  float* ys = s.Out(y, Count({rows, out}), /*accumulate=*/false);
  return RunStaged(s, [&] { return LinearForwardF32(xs, w, b, ys, rows, in, out); });
}

OpStatus CpuBackendImpl::LinearBackward(ConstTensor dy, ConstTensor x, ConstTensor weight,
                                        Tensor dx, float* dweight, float* dbias, int64_t rows,
                                        int64_t in, int64_t out) {
  constexpr const char* kOp = "LinearBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(
      CheckOneDType(kOp, {{"dy", dy}, {"x", x}, {"weight", weight}, {"dx", dx}}));
  if (!Any16Bit({dy, x, weight, dx})) {
    return LinearBackwardF32(dy.f32(), x.f32(), weight.f32(), dx.f32(), dweight, dbias, rows, in,
                             out);
  }
  Staging s(kOp);
  const float* d = s.In(dy, Count({rows, out}));
  // x is read only for dweight, and weight only for dx.
  const float* xs = dweight != nullptr ? s.In(x, Count({rows, in})) : x.f32();
  const float* w = !dx.is_null() ? s.In(weight, Count({out, in})) : weight.f32();
  float* g = s.Out(dx, Count({rows, in}), /*accumulate=*/true);
  return RunStaged(s,
                   [&] { return LinearBackwardF32(d, xs, w, g, dweight, dbias, rows, in, out); });
}

OpStatus CpuBackendImpl::LmHeadForward(ConstTensor y, ConstTensor embedding, float* logits,
                                       int64_t rows, int64_t vocab, int64_t dim) {
  constexpr const char* kOp = "LmHeadForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType(kOp, {{"y", y}, {"embedding", embedding}}));
  if (!Any16Bit({y, embedding})) {
    return LmHeadForwardF32(y.f32(), embedding.f32(), logits, rows, vocab, dim);
  }
  Staging s(kOp);
  const float* ys = s.In(y, Count({rows, dim}));
  const float* e = s.In(embedding, Count({vocab, dim}));
  return RunStaged(s, [&] { return LmHeadForwardF32(ys, e, logits, rows, vocab, dim); });
}

OpStatus CpuBackendImpl::LmHeadBackward(const float* dlogits, ConstTensor y, ConstTensor embedding,
                                        Tensor dy, float* dembedding, int64_t rows, int64_t vocab,
                                        int64_t dim) {
  constexpr const char* kOp = "LmHeadBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(
      CheckOneDType(kOp, {{"y", y}, {"embedding", embedding}, {"dy", dy}}));
  if (!Any16Bit({y, embedding, dy})) {
    return LmHeadBackwardF32(dlogits, y.f32(), embedding.f32(), dy.f32(), dembedding, rows, vocab,
                             dim);
  }
  Staging s(kOp);
  const float* ys = dembedding != nullptr ? s.In(y, Count({rows, dim})) : y.f32();
  const float* e = !dy.is_null() ? s.In(embedding, Count({vocab, dim})) : embedding.f32();
  float* g = s.Out(dy, Count({rows, dim}), /*accumulate=*/true);
  return RunStaged(
      s, [&] { return LmHeadBackwardF32(dlogits, ys, e, g, dembedding, rows, vocab, dim); });
}

OpStatus CpuBackendImpl::RopeForward(ConstTensor x, Tensor y, const RopeShape& shape,
                                     const float* inv_freq, float attention_factor) {
  constexpr const char* kOp = "RopeForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType(kOp, {{"x", x}, {"y", y}}));
  if (!Any16Bit({x, y})) {
    return RopeForwardF32(x.f32(), y.f32(), shape, inv_freq, attention_factor);
  }
  const std::optional<int64_t> n =
      Count({shape.batch, shape.seq_len, shape.num_heads, shape.head_dim});
  Staging s(kOp);
  const float* xs = s.In(x, n);
  float* ys = s.Out(y, n, /*accumulate=*/false);
  return RunStaged(s, [&] { return RopeForwardF32(xs, ys, shape, inv_freq, attention_factor); });
}

OpStatus CpuBackendImpl::RopeBackward(ConstTensor dy, Tensor dx, const RopeShape& shape,
                                      const float* inv_freq, float attention_factor) {
  constexpr const char* kOp = "RopeBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType(kOp, {{"dy", dy}, {"dx", dx}}));
  if (!Any16Bit({dy, dx})) {
    return RopeBackwardF32(dy.f32(), dx.f32(), shape, inv_freq, attention_factor);
  }
  if (!dx.is_null() && dx.data() == dy.data()) {
    return OpStatus::Error(std::string(kOp) + ": dx must not alias dy");
  }
  const std::optional<int64_t> n =
      Count({shape.batch, shape.seq_len, shape.num_heads, shape.head_dim});
  Staging s(kOp);
  const float* d = s.In(dy, n);
  float* g = s.Out(dx, n, /*accumulate=*/true);
  return RunStaged(s, [&] { return RopeBackwardF32(d, g, shape, inv_freq, attention_factor); });
}

namespace {
// Elements of the query-side [B, T, H, D] and key-side [B, kv_rows, Hkv, D] tensors.
template <typename Shape>
std::optional<int64_t> QueryElements(const Shape& s) {
  return Count({s.batch, s.seq_len, s.num_heads, s.head_dim});
}
template <typename Shape>
std::optional<int64_t> KeyElements(const Shape& s) {
  int64_t rows = 0;
  if (s.past_len < 0 || s.seq_len < 0 || s.kv_capacity < 0 ||
      __builtin_add_overflow(s.past_len, s.seq_len, &rows)) {
    return std::nullopt;
  }
  return Count({s.batch, s.kv_capacity > 0 ? s.kv_capacity : rows, s.num_kv_heads, s.head_dim});
}
}  // namespace

OpStatus CpuBackendImpl::AttentionForward(ConstTensor q, ConstTensor k, ConstTensor v, Tensor o,
                                          float* lse, const AttentionShape& shape) {
  constexpr const char* kOp = "AttentionForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType(kOp, {{"q", q}, {"k", k}, {"v", v}, {"o", o}}));
  if (!Any16Bit({q, k, v, o})) {
    return AttentionForwardF32(q.f32(), k.f32(), v.f32(), o.f32(), lse, shape);
  }
  const std::optional<int64_t> nq = QueryElements(shape);
  const std::optional<int64_t> nk = KeyElements(shape);
  Staging s(kOp);
  const float* qs = s.In(q, nq);
  const float* ks = s.In(k, nk);
  const float* vs = s.In(v, nk);
  float* os = s.Out(o, nq, /*accumulate=*/false);
  return RunStaged(s, [&] { return AttentionForwardF32(qs, ks, vs, os, lse, shape); });
}

OpStatus CpuBackendImpl::AttentionBackward(ConstTensor q, ConstTensor k, ConstTensor v,
                                           ConstTensor o, const float* lse, ConstTensor dout,
                                           Tensor dq, Tensor dk, Tensor dv,
                                           const AttentionShape& shape) {
  constexpr const char* kOp = "AttentionBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType(kOp, {{"q", q},
                                                    {"k", k},
                                                    {"v", v},
                                                    {"o", o},
                                                    {"dout", dout},
                                                    {"dq", dq},
                                                    {"dk", dk},
                                                    {"dv", dv}}));
  if (!Any16Bit({q, k, v, o, dout, dq, dk, dv})) {
    return AttentionBackwardF32(q.f32(), k.f32(), v.f32(), o.f32(), lse, dout.f32(), dq.f32(),
                                dk.f32(), dv.f32(), shape);
  }
  const std::optional<int64_t> nq = QueryElements(shape);
  const std::optional<int64_t> nk = KeyElements(shape);
  Staging s(kOp);
  const float* qs = s.In(q, nq);
  const float* ks = s.In(k, nk);
  const float* vs = s.In(v, nk);
  const float* os = s.In(o, nq);
  const float* ds = s.In(dout, nq);
  float* gq = s.Out(dq, nq, /*accumulate=*/true);
  float* gk = s.Out(dk, nk, /*accumulate=*/true);
  float* gv = s.Out(dv, nk, /*accumulate=*/true);
  return RunStaged(
      s, [&] { return AttentionBackwardF32(qs, ks, vs, os, lse, ds, gq, gk, gv, shape); });
}

OpStatus CpuBackendImpl::DcaAttentionForward(ConstTensor q_intra, ConstTensor q_succ,
                                             ConstTensor q_inter, ConstTensor k, ConstTensor v,
                                             Tensor o, float* lse, const DcaAttentionShape& shape) {
  constexpr const char* kOp = "DcaAttentionForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType(kOp, {{"q_intra", q_intra},
                                                    {"q_succ", q_succ},
                                                    {"q_inter", q_inter},
                                                    {"k", k},
                                                    {"v", v},
                                                    {"o", o}}));
  if (!Any16Bit({q_intra, q_succ, q_inter, k, v, o})) {
    return DcaAttentionForwardF32(q_intra.f32(), q_succ.f32(), q_inter.f32(), k.f32(), v.f32(),
                                  o.f32(), lse, shape);
  }
  const std::optional<int64_t> nq = QueryElements(shape);
  const std::optional<int64_t> nk = KeyElements(shape);
  Staging s(kOp);
  const float* qa = s.In(q_intra, nq);
  const float* qb = s.In(q_succ, nq);
  const float* qc = s.In(q_inter, nq);
  const float* ks = s.In(k, nk);
  const float* vs = s.In(v, nk);
  float* os = s.Out(o, nq, /*accumulate=*/false);
  return RunStaged(s, [&] { return DcaAttentionForwardF32(qa, qb, qc, ks, vs, os, lse, shape); });
}

OpStatus CpuBackendImpl::SwigluForward(ConstTensor gate, ConstTensor up, Tensor out, int64_t rows,
                                       int64_t dim) {
  constexpr const char* kOp = "SwigluForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType(kOp, {{"gate", gate}, {"up", up}, {"out", out}}));
  if (!Any16Bit({gate, up, out})) {
    return SwigluForwardF32(gate.f32(), up.f32(), out.f32(), rows, dim);
  }
  const std::optional<int64_t> n = Count({rows, dim});
  Staging s(kOp);
  const float* g = s.In(gate, n);
  const float* u = s.In(up, n);
  float* o = s.Out(out, n, /*accumulate=*/false);
  return RunStaged(s, [&] { return SwigluForwardF32(g, u, o, rows, dim); });
}

OpStatus CpuBackendImpl::SwigluBackward(ConstTensor dout, ConstTensor gate, ConstTensor up,
                                        Tensor dgate, Tensor dup, int64_t rows, int64_t dim) {
  constexpr const char* kOp = "SwigluBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType(
      kOp, {{"dout", dout}, {"gate", gate}, {"up", up}, {"dgate", dgate}, {"dup", dup}}));
  if (!Any16Bit({dout, gate, up, dgate, dup})) {
    return SwigluBackwardF32(dout.f32(), gate.f32(), up.f32(), dgate.f32(), dup.f32(), rows, dim);
  }
  const std::optional<int64_t> n = Count({rows, dim});
  Staging s(kOp);
  const float* d = s.In(dout, n);
  const float* g = s.In(gate, n);
  const float* u = s.In(up, n);
  float* dg = s.Out(dgate, n, /*accumulate=*/true);
  float* du = s.Out(dup, n, /*accumulate=*/true);
  return RunStaged(s, [&] { return SwigluBackwardF32(d, g, u, dg, du, rows, dim); });
}

OpStatus CpuBackendImpl::ResidualForward(ConstTensor a, ConstTensor b, Tensor out, int64_t n) {
  constexpr const char* kOp = "ResidualForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType(kOp, {{"a", a}, {"b", b}, {"out", out}}));
  if (!Any16Bit({a, b, out})) return ResidualForwardF32(a.f32(), b.f32(), out.f32(), n);
  const std::optional<int64_t> count = Count({n});
  Staging s(kOp);
  const float* as = s.In(a, count);
  const float* bs = s.In(b, count);
  float* o = s.Out(out, count, /*accumulate=*/false);
  return RunStaged(s, [&] { return ResidualForwardF32(as, bs, o, n); });
}

OpStatus CpuBackendImpl::ResidualBackward(ConstTensor dout, Tensor da, Tensor db, int64_t n) {
  constexpr const char* kOp = "ResidualBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckOneDType(kOp, {{"dout", dout}, {"da", da}, {"db", db}}));
  if (!Any16Bit({dout, da, db})) return ResidualBackwardF32(dout.f32(), da.f32(), db.f32(), n);
  if ((!da.is_null() && da.data() == dout.data()) || (!db.is_null() && db.data() == dout.data())) {
    return OpStatus::Error(std::string(kOp) + ": da and db must not alias dout");
  }
  const std::optional<int64_t> count = Count({n});
  Staging s(kOp);
  const float* d = s.In(dout, count);
  float* ga = s.Out(da, count, /*accumulate=*/true);
  float* gb = s.Out(db, count, /*accumulate=*/true);
  // da == db: one copy, which gets dout twice, as the fp32 kernel adds it twice.
  return RunStaged(s, [&] { return ResidualBackwardF32(d, ga, gb, n); });
}

}  // namespace qtrain::kernels::cpu
