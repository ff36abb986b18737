// Every CUDA kernel of kernels/cuda against the float64 reference ops (kernels/reference), on a
// real GPU: fresh random inputs at several shapes, fp32 and bf16, outputs poisoned with NaN
// before each run (so an output a kernel never wrote fails), tolerances tied to the precision,
// and the deterministic kernels run twice and compared bit for bit. Prints one line per check
// and a summary; exits 1 on any failure, 0 with a note when there is no GPU.
//
// Needs only the CUDA toolkit (no OpenBLAS, GoogleTest or gRPC): tests/gpu/run.sh builds it on a
// GPU machine with tests/gpu/CMakeLists.txt.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/element_math.h"
#include "kernels/cuda/gemm_lt.h"
#include "kernels/reference/reference_ops.h"

namespace qtrain::kernels::cuda {
namespace {

int g_failures = 0;
int g_checks = 0;

void Report(const std::string& what, double error, double tolerance) {
  const bool ok = error <= tolerance;  // NaN fails
  ++g_checks;
  if (!ok) ++g_failures;
  std::printf("%-4s %-58s err %.3e  tol %.1e\n", ok ? "ok" : "FAIL", what.c_str(), error,
              tolerance);
}

void Fail(const std::string& what, const std::string& why) {
  ++g_checks;
  ++g_failures;
  std::printf("FAIL %-58s %s\n", what.c_str(), why.c_str());
}

#define CHECK_CUDA(expr)                                                                          \
  do {                                                                                            \
    const cudaError_t _e = (expr);                                                                \
    if (_e != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(_e)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

bool Launched(const std::string& what, const OpStatus& status) {
  if (!status.ok()) {
    Fail(what, status.message());
    return false;
  }
  const cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    Fail(what, cudaGetErrorString(e));
    return false;
  }
  return true;
}

std::vector<float> Random(int64_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

// Values exactly representable in `dtype` (so the reference sees the kernel's inputs).
std::vector<float> Representable(std::vector<float> x, DType dtype) {
  if (dtype == DType::kBfloat16) {
    for (float& v : x) v = math::FloatFromBf16(math::Bf16FromFloat(v));
  }
  return x;
}

std::vector<double> ToDouble(const std::vector<float>& x) { return {x.begin(), x.end()}; }

// max |a - b| / max(|b|_inf, floor): the error relative to the reference's scale.
double RelError(const std::vector<float>& a, const std::vector<double>& b, double floor = 1e-30) {
  if (a.size() != b.size()) return INFINITY;
  double scale = floor, err = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return NAN;
    scale = std::max(scale, std::fabs(b[i]));
    err = std::max(err, std::fabs(a[i] - b[i]));
  }
  return err / scale;
}

double Tolerance(DType dtype, double fp32) { return dtype == DType::kBfloat16 ? 1.6e-2 : fp32; }

// A device buffer of n elements of `dtype`, poisoned with NaN (all bits set) when made.
class Buffer {
 public:
  Buffer(int64_t n, DType dtype) : n_(n), dtype_(dtype) {
    CHECK_CUDA(cudaMalloc(&ptr_, std::max<size_t>(1, bytes())));
    Poison();
  }
  Buffer(const std::vector<float>& host, DType dtype) : Buffer(host.size(), dtype) { Upload(host); }
  ~Buffer() { cudaFree(ptr_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  size_t bytes() const { return static_cast<size_t>(n_) * DTypeBytes(dtype_); }
  void* get() const { return ptr_; }
  float* f32() const { return static_cast<float*>(ptr_); }
  void Poison() { CHECK_CUDA(cudaMemset(ptr_, 0xff, bytes())); }
  void Upload(const std::vector<float>& host) {
    if (dtype_ == DType::kFloat32) {
      CHECK_CUDA(cudaMemcpy(ptr_, host.data(), bytes(), cudaMemcpyHostToDevice));
      return;
    }
    std::vector<uint16_t> bits(host.size());
    for (size_t i = 0; i < host.size(); ++i) bits[i] = math::Bf16FromFloat(host[i]);
    CHECK_CUDA(cudaMemcpy(ptr_, bits.data(), bytes(), cudaMemcpyHostToDevice));
  }
  std::vector<float> Download() const {
    std::vector<float> out(n_);
    if (dtype_ == DType::kFloat32) {
      CHECK_CUDA(cudaMemcpy(out.data(), ptr_, bytes(), cudaMemcpyDeviceToHost));
      return out;
    }
    std::vector<uint16_t> bits(n_);
    CHECK_CUDA(cudaMemcpy(bits.data(), ptr_, bytes(), cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < n_; ++i) out[i] = math::FloatFromBf16(bits[i]);
    return out;
  }

 private:
  int64_t n_;
  DType dtype_;
  void* ptr_ = nullptr;
};

std::string Name(const char* op, DType dtype, const std::string& shape) {
  return std::string(op) + " " + DTypeName(dtype) + " " + shape;
}

void CheckCast(int64_t n) {
  const std::vector<float> x = Random(n, 1, -1e4f, 1e4f);
  Buffer in(x, DType::kFloat32), out(n, DType::kBfloat16);
  const std::string what = "Cast fp32->bf16 n=" + std::to_string(n);
  if (!Launched(what, Cast({.in = in.get(),
                            .in_dtype = DType::kFloat32,
                            .out = out.get(),
                            .out_dtype = DType::kBfloat16,
                            .n = n},
                           nullptr))) {
    return;
  }
  std::vector<double> want(n);
  for (int64_t i = 0; i < n; ++i) want[i] = math::FloatFromBf16(math::Bf16FromFloat(x[i]));
  Report(what + " (exact)", RelError(out.Download(), want), 0.0);
}

void CheckResidual(int64_t n, DType dtype) {
  const std::vector<float> a = Representable(Random(n, 2), dtype);
  const std::vector<float> b = Representable(Random(n, 3), dtype);
  Buffer da(a, dtype), db(b, dtype), out(n, dtype);
  const std::string what = Name("Residual fwd", dtype, "n=" + std::to_string(n));
  if (!Launched(what, ResidualForward(
                          {.a = da.get(), .b = db.get(), .out = out.get(), .dtype = dtype, .n = n},
                          nullptr))) {
    return;
  }
  std::vector<double> want(n);
  for (int64_t i = 0; i < n; ++i) want[i] = double{a[i]} + b[i];
  Report(what, RelError(out.Download(), want), Tolerance(dtype, 1e-7));
}

void CheckSwiglu(int64_t n, DType dtype) {
  const std::vector<float> gate = Representable(Random(n, 4, -8.0f, 8.0f), dtype);
  const std::vector<float> up = Representable(Random(n, 5), dtype);
  const std::vector<float> dout = Representable(Random(n, 6), dtype);
  Buffer g(gate, dtype), u(up, dtype), d(dout, dtype), out(n, dtype);
  Buffer dgate(std::vector<float>(n, 0.0f), dtype), dup(std::vector<float>(n, 0.0f), dtype);
  const std::string shape = "n=" + std::to_string(n);
  std::vector<double> want(n), want_dgate(n, 0.0), want_dup(n, 0.0);
  const std::vector<double> gd = ToDouble(gate), ud = ToDouble(up), dd = ToDouble(dout);
  reference::SwigluForward(gd.data(), ud.data(), want.data(), n);
  reference::SwigluBackward(dd.data(), gd.data(), ud.data(), want_dgate.data(), want_dup.data(), n);
  if (Launched(
          Name("SwiGLU fwd", dtype, shape),
          SwigluForward({.gate = g.get(), .up = u.get(), .out = out.get(), .dtype = dtype, .n = n},
                        nullptr))) {
    Report(Name("SwiGLU fwd", dtype, shape), RelError(out.Download(), want),
           Tolerance(dtype, 1e-6));
  }
  if (Launched(Name("SwiGLU bwd", dtype, shape), SwigluBackward({.dout = d.get(),
                                                                 .gate = g.get(),
                                                                 .up = u.get(),
                                                                 .dgate = dgate.get(),
                                                                 .dup = dup.get(),
                                                                 .dtype = dtype,
                                                                 .n = n},
                                                                nullptr))) {
    Report(Name("SwiGLU bwd dgate", dtype, shape), RelError(dgate.Download(), want_dgate),
           Tolerance(dtype, 1e-6));
    Report(Name("SwiGLU bwd dup", dtype, shape), RelError(dup.Download(), want_dup),
           Tolerance(dtype, 1e-6));
  }
}

void CheckRmsNorm(int64_t rows, int64_t dim, DType dtype) {
  const float eps = 1e-6f;
  const std::vector<float> x = Representable(Random(rows * dim, 7, -3.0f, 3.0f), dtype);
  const std::vector<float> w = Representable(Random(dim, 8, 0.5f, 1.5f), dtype);
  const std::vector<float> dout = Representable(Random(rows * dim, 9), dtype);
  Buffer dx_in(x, dtype), dw(w, dtype), dd(dout, dtype), out(rows * dim, dtype);
  Buffer rstd(rows, DType::kFloat32), dx(std::vector<float>(rows * dim, 0.0f), dtype);
  Buffer dweight(std::vector<float>(dim, 0.0f), DType::kFloat32);
  const std::string shape = std::to_string(rows) + "x" + std::to_string(dim);
  const std::vector<double> xd = ToDouble(x), wd = ToDouble(w), gd = ToDouble(dout);
  std::vector<double> want(rows * dim), want_rstd(rows), want_dx(rows * dim, 0.0),
      want_dw(dim, 0.0);
  reference::RmsNormForward(xd.data(), wd.data(), double{eps}, want.data(), want_rstd.data(), rows,
                            dim);
  reference::RmsNormBackward(gd.data(), xd.data(), wd.data(), want_rstd.data(), want_dx.data(),
                             want_dw.data(), rows, dim);
  if (!Launched(Name("RMSNorm fwd", dtype, shape), RmsNormForward({.x = dx_in.get(),
                                                                   .weight = dw.get(),
                                                                   .out = out.get(),
                                                                   .rstd = rstd.f32(),
                                                                   .eps = eps,
                                                                   .dtype = dtype,
                                                                   .rows = rows,
                                                                   .dim = dim},
                                                                  nullptr))) {
    return;
  }
  Report(Name("RMSNorm fwd out", dtype, shape), RelError(out.Download(), want),
         Tolerance(dtype, 1e-5));
  Report(Name("RMSNorm fwd rstd", dtype, shape), RelError(rstd.Download(), want_rstd),
         Tolerance(dtype, 1e-5));
  const RmsNormBackwardParams backward{.dout = dd.get(),
                                       .x = dx_in.get(),
                                       .weight = dw.get(),
                                       .rstd = rstd.f32(),
                                       .dx = dx.get(),
                                       .dweight = dweight.f32(),
                                       .dtype = dtype,
                                       .rows = rows,
                                       .dim = dim};
  if (!Launched(Name("RMSNorm bwd", dtype, shape), RmsNormBackward(backward, nullptr))) return;
  Report(Name("RMSNorm bwd dx", dtype, shape), RelError(dx.Download(), want_dx),
         Tolerance(dtype, 1e-5));
  const std::vector<float> first = dweight.Download();
  Report(Name("RMSNorm bwd dweight", dtype, shape), RelError(first, want_dw),
         Tolerance(dtype, 1e-4));
  // Deterministic: the same inputs again give the same bits.
  dweight.Upload(std::vector<float>(dim, 0.0f));
  dx.Upload(std::vector<float>(rows * dim, 0.0f));
  if (Launched(Name("RMSNorm bwd (again)", dtype, shape), RmsNormBackward(backward, nullptr))) {
    const std::vector<float> second = dweight.Download();
    Report(Name("RMSNorm bwd dweight bitwise rerun", dtype, shape),
           std::memcmp(first.data(), second.data(), first.size() * 4) == 0 ? 0.0 : 1.0, 0.0);
  }
}

void CheckRope(int64_t batch, int64_t seq_len, int64_t heads, int64_t head_dim, bool explicit_pos,
               DType dtype) {
  const int64_t tokens = batch * seq_len, half = head_dim / 2, n = tokens * heads * head_dim;
  const int64_t past = 5, table_rows = past + seq_len + 100;
  std::vector<float> inv_freq(half);
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = static_cast<float>(std::pow(1e6, -2.0 * i / head_dim));
  }
  const float factor = 1.1f;
  std::vector<float> cos_table(table_rows * half), sin_table(table_rows * half);
  MakeRopeTables(inv_freq.data(), half, factor, table_rows, cos_table.data(), sin_table.data());
  std::vector<int32_t> positions(tokens);
  for (int64_t t = 0; t < tokens; ++t) {
    positions[t] = explicit_pos ? static_cast<int32_t>((t * 37) % table_rows)
                                : static_cast<int32_t>(past + t % seq_len);
  }
  int32_t* dpos = nullptr;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&dpos), tokens * sizeof(int32_t)));
  CHECK_CUDA(cudaMemcpy(dpos, positions.data(), tokens * sizeof(int32_t), cudaMemcpyHostToDevice));
  const std::vector<float> x = Representable(Random(n, 10), dtype);
  Buffer in(x, dtype), out(n, dtype), acc(std::vector<float>(n, 0.0f), dtype);
  Buffer ct(cos_table, DType::kFloat32), st(sin_table, DType::kFloat32);
  const std::vector<double> xd = ToDouble(x);
  std::vector<double> want(n), want_t(n, 0.0);
  reference::RopeForward(xd.data(), want.data(), tokens, heads, head_dim, positions.data(),
                         inv_freq.data(), factor);
  reference::RopeBackward(xd.data(), want_t.data(), tokens, heads, head_dim, positions.data(),
                          inv_freq.data(), factor);
  char shape_text[96];
  std::snprintf(shape_text, sizeof(shape_text), "B%ld T%ld H%ld D%ld%s", static_cast<long>(batch),
                static_cast<long>(seq_len), static_cast<long>(heads), static_cast<long>(head_dim),
                explicit_pos ? " positions" : "");
  const std::string shape = shape_text;
  RopeParams p{.in = in.get(),
               .out = out.get(),
               .cos_table = ct.f32(),
               .sin_table = st.f32(),
               .table_rows = table_rows,
               .positions = explicit_pos ? dpos : nullptr,
               .dtype = dtype,
               .batch = batch,
               .seq_len = seq_len,
               .num_heads = heads,
               .head_dim = head_dim,
               .past_len = past};
  if (Launched(Name("RoPE fwd", dtype, shape), Rope(p, nullptr))) {
    Report(Name("RoPE fwd", dtype, shape), RelError(out.Download(), want), Tolerance(dtype, 1e-5));
  }
  p.out = acc.get();
  p.transposed = true;
  if (Launched(Name("RoPE bwd", dtype, shape), Rope(p, nullptr))) {
    Report(Name("RoPE bwd", dtype, shape), RelError(acc.Download(), want_t),
           Tolerance(dtype, 1e-5));
  }
  cudaFree(dpos);
}

void CheckEmbedding(int64_t rows, int64_t vocab, int64_t dim, DType dtype) {
  std::vector<int32_t> ids(rows);
  for (int64_t r = 0; r < rows; ++r) ids[r] = static_cast<int32_t>((r * 7919 + r * r) % vocab);
  const std::vector<float> table = Representable(Random(vocab * dim, 11), dtype);
  const std::vector<float> dout = Representable(Random(rows * dim, 12), dtype);
  int32_t* dids = nullptr;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&dids), rows * sizeof(int32_t)));
  CHECK_CUDA(cudaMemcpy(dids, ids.data(), rows * sizeof(int32_t), cudaMemcpyHostToDevice));
  Buffer dtable(table, dtype), out(rows * dim, dtype), dd(dout, dtype);
  Buffer grad(std::vector<float>(vocab * dim, 0.0f), DType::kFloat32);
  const std::string shape =
      std::to_string(rows) + " of " + std::to_string(vocab) + "x" + std::to_string(dim);
  if (Launched(Name("Embedding fwd", dtype, shape), EmbeddingForward({.ids = dids,
                                                                      .table = dtable.get(),
                                                                      .out = out.get(),
                                                                      .dtype = dtype,
                                                                      .rows = rows,
                                                                      .vocab = vocab,
                                                                      .dim = dim},
                                                                     nullptr))) {
    std::vector<double> want(rows * dim);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < dim; ++j) want[r * dim + j] = table[ids[r] * dim + j];
    }
    Report(Name("Embedding fwd (exact)", dtype, shape), RelError(out.Download(), want), 0.0);
  }
  EmbeddingBuckets buckets;
  if (OpStatus s = MakeEmbeddingBuckets(ids.data(), rows, vocab, &buckets); !s.ok()) {
    Fail(Name("Embedding bwd", dtype, shape), s.message());
    cudaFree(dids);
    return;
  }
  int32_t *order = nullptr, *starts = nullptr, *bucket_ids = nullptr;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&order), rows * sizeof(int32_t)));
  CHECK_CUDA(
      cudaMalloc(reinterpret_cast<void**>(&starts), buckets.starts.size() * sizeof(int32_t)));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&bucket_ids),
                        std::max<size_t>(1, buckets.ids.size()) * sizeof(int32_t)));
  CHECK_CUDA(
      cudaMemcpy(order, buckets.order.data(), rows * sizeof(int32_t), cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(starts, buckets.starts.data(), buckets.starts.size() * sizeof(int32_t),
                        cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(bucket_ids, buckets.ids.data(), buckets.ids.size() * sizeof(int32_t),
                        cudaMemcpyHostToDevice));
  if (Launched(Name("Embedding bwd", dtype, shape),
               EmbeddingBackward({.dout = dd.get(),
                                  .dtable = grad.f32(),
                                  .order = order,
                                  .starts = starts,
                                  .bucket_ids = bucket_ids,
                                  .buckets = static_cast<int64_t>(buckets.ids.size()),
                                  .dtype = dtype,
                                  .rows = rows,
                                  .vocab = vocab,
                                  .dim = dim},
                                 nullptr))) {
    // The CPU backend's order (rows ascending into each table row), in fp32: the same bits.
    std::vector<float> cpu(vocab * dim, 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t j = 0; j < dim; ++j) cpu[ids[r] * dim + j] += dout[r * dim + j];
    }
    Report(Name("Embedding bwd (bitwise = CPU order)", dtype, shape),
           RelError(grad.Download(), ToDouble(cpu)), 0.0);
  }
  cudaFree(order);
  cudaFree(starts);
  cudaFree(bucket_ids);
  cudaFree(dids);
}

void CheckCrossEntropy(int64_t rows, int64_t vocab, DType dtype) {
  const std::vector<float> logits = Representable(Random(rows * vocab, 13, -8.0f, 8.0f), dtype);
  std::vector<int32_t> labels(rows);
  for (int64_t r = 0; r < rows; ++r) {
    labels[r] = r % 3 == 2 ? -100 : static_cast<int32_t>((r * 104729) % vocab);
  }
  int32_t* dlabels = nullptr;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&dlabels), rows * sizeof(int32_t)));
  CHECK_CUDA(cudaMemcpy(dlabels, labels.data(), rows * sizeof(int32_t), cudaMemcpyHostToDevice));
  Buffer z(logits, dtype), losses(rows, DType::kFloat32), lse(rows, DType::kFloat32);
  double* loss_sum = nullptr;
  int64_t* num_valid = nullptr;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&loss_sum), sizeof(double)));
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&num_valid), sizeof(int64_t)));
  const float grad_scale = 1.0f / 3.0f;
  const std::vector<double> zd = ToDouble(logits);
  std::vector<double> want_loss(rows), want_d(rows * vocab);
  reference::CrossEntropyForward(zd.data(), labels.data(), want_loss.data(), rows, vocab, -100);
  reference::CrossEntropyBackward(zd.data(), labels.data(), double{grad_scale}, want_d.data(), rows,
                                  vocab, -100);
  const std::string shape = std::to_string(rows) + "x" + std::to_string(vocab) + " in place";
  if (Launched(Name("CrossEntropy", dtype, shape), CrossEntropy({.logits = z.get(),
                                                                 .labels = dlabels,
                                                                 .losses = losses.f32(),
                                                                 .lse = lse.f32(),
                                                                 .dlogits = z.get(),
                                                                 .loss_sum = loss_sum,
                                                                 .num_valid = num_valid,
                                                                 .grad_scale = grad_scale,
                                                                 .dtype = dtype,
                                                                 .rows = rows,
                                                                 .vocab = vocab},
                                                                nullptr))) {
    Report(Name("CrossEntropy loss", dtype, shape), RelError(losses.Download(), want_loss), 1e-5);
    Report(Name("CrossEntropy dlogits", dtype, shape), RelError(z.Download(), want_d),
           Tolerance(dtype, 1e-5));
    double sum = 0.0;
    int64_t valid = 0;
    CHECK_CUDA(cudaMemcpy(&sum, loss_sum, sizeof(double), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(&valid, num_valid, sizeof(int64_t), cudaMemcpyDeviceToHost));
    double want_sum = 0.0;
    int64_t want_valid = 0;
    for (int64_t r = 0; r < rows; ++r) {
      if (labels[r] != -100) {
        want_sum += want_loss[r];
        ++want_valid;
      }
    }
    Report(Name("CrossEntropy loss sum", dtype, shape),
           std::fabs(sum - want_sum) / std::max(1.0, want_sum), 1e-5);
    Report(Name("CrossEntropy valid count", dtype, shape), valid == want_valid ? 0.0 : 1.0, 0.0);
  }
  cudaFree(loss_sum);
  cudaFree(num_valid);
  cudaFree(dlabels);
}

void CheckAdamW(int64_t n) {
  std::vector<float> p = Random(n, 14), g = Random(n, 15, -0.1f, 0.1f);
  std::vector<float> m = Random(n, 16, -0.01f, 0.01f), v = Random(n, 17, 0.0f, 1e-4f);
  Buffer dp(p, DType::kFloat32), dg(g, DType::kFloat32), dm(m, DType::kFloat32),
      dv(v, DType::kFloat32), copy(n, DType::kBfloat16);
  const AdamWParams params{.param = dp.f32(),
                           .grad = dg.f32(),
                           .m = dm.f32(),
                           .v = dv.f32(),
                           .working_copy = copy.get(),
                           .n = n,
                           .lr = 3e-4,
                           .beta1 = 0.9,
                           .beta2 = 0.95,
                           .eps = 1e-8,
                           .weight_decay = 0.1,
                           .step = 3,
                           .grad_scale = 0.5f};
  const std::string what = "AdamW n=" + std::to_string(n);
  if (!Launched(what, AdamWStep(params, nullptr))) return;
  const math::AdamWScalars scalars =
      math::MakeAdamWScalars(params.lr, params.beta1, params.beta2, params.eps, params.weight_decay,
                             params.apply_weight_decay, params.step, params.grad_scale);
  std::vector<double> want_p(n), want_copy(n);
  for (int64_t i = 0; i < n; ++i) {
    math::AdamWElement(scalars, g[i], p[i], m[i], v[i]);
    want_p[i] = p[i];
    want_copy[i] = math::FloatFromBf16(math::Bf16FromFloat(p[i]));
  }
  // Host and device differ only by fused multiply-adds (nvcc contracts by default).
  Report(what + " param", RelError(dp.Download(), want_p), 1e-6);
  Report(what + " bf16 working copy", RelError(copy.Download(), want_copy), 8e-3);
}

void CheckSumOfSquares() {
  const std::vector<int64_t> sizes = {1, 8191, 8192, 8193, 896 * 4864, 0};
  std::vector<std::unique_ptr<Buffer>> buffers;
  std::vector<const float*> pointers;
  double want = 0.0;
  for (size_t t = 0; t < sizes.size(); ++t) {
    const std::vector<float> x = Random(sizes[t], 20 + static_cast<uint32_t>(t));
    for (float e : x) want += double{e} * e;
    buffers.push_back(std::make_unique<Buffer>(x, DType::kFloat32));
    pointers.push_back(sizes[t] > 0 ? buffers.back()->f32() : nullptr);
  }
  const int64_t scratch = SumSquaresScratch(sizes.data(), sizes.size());
  // Doubles, allocated as twice as many floats.
  Buffer partials(2 * std::max<int64_t>(1, scratch), DType::kFloat32), out(2, DType::kFloat32);
  double first = 0.0, second = 1.0;
  for (double* result : {&first, &second}) {
    const SumSquaresParams p{.tensors = pointers.data(),
                             .sizes = sizes.data(),
                             .count = static_cast<int64_t>(sizes.size()),
                             .partials = static_cast<double*>(partials.get()),
                             .partials_capacity = scratch,
                             .sum_squares = static_cast<double*>(out.get())};
    if (!Launched("SumOfSquares", SumOfSquares(p, nullptr))) return;
    CHECK_CUDA(cudaMemcpy(result, out.get(), sizeof(double), cudaMemcpyDeviceToHost));
  }
  Report("SumOfSquares 6 tensors (double)", std::fabs(first - want) / want, 1e-12);
  Report("SumOfSquares bitwise rerun", std::memcmp(&first, &second, sizeof(double)) == 0 ? 0 : 1,
         0.0);
}

// TreeSumRows (the NCCL communicator's sum): bit for bit the host's TreeSumStrided, which
// comm_test checks against worker/comm/tree_sum.h's TreeSumOf.
void CheckTreeSumRows(int count, int64_t n, int64_t stride) {
  const std::vector<float> rows = Random(count * stride, 30 + count, -1e3f, 1e3f);
  Buffer d_rows(rows, DType::kFloat32), out(n, DType::kFloat32);
  const std::string what = "TreeSumRows " + std::to_string(count) + " rows n=" +
                           std::to_string(n) + " (bitwise)";
  if (!Launched(what, TreeSumRows({.rows = d_rows.get(),
                                   .row_stride = stride,
                                   .count = count,
                                   .out = out.get(),
                                   .n = n,
                                   .dtype = SumDType::kFloat32},
                                  nullptr))) {
    return;
  }
  const std::vector<float> got = out.Download();
  int64_t differ = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float want = math::TreeSumStrided(rows.data() + i, stride, count);
    if (std::memcmp(&want, &got[i], sizeof(float)) != 0) ++differ;
  }
  Report(what, static_cast<double>(differ), 0.0);
}

// One cuBLASLt GEMM (gemm_lt.h) against the float64 row-major definition, run twice: the same
// plan must give the same bits.
void CheckGemm(GemmPlans& plans, const GemmShape& s) {
  const std::string what = "Gemm " + GemmShapeName(s);
  const int64_t m = s.m, n = s.n, k = s.k;
  const std::vector<float> a = Representable(Random(m * k, 40), s.ab_dtype);
  const std::vector<float> b = Representable(Random(k * n, 41), s.ab_dtype);
  const std::vector<float> c0 = Representable(Random(m * n, 42), s.c_dtype);
  const int64_t bias_size = s.epilogue == GemmEpilogue::kBias ? n : m;
  const std::vector<float> bias = Representable(Random(bias_size, 43), s.bias_dtype);
  auto op_a = [&](int64_t i, int64_t p) { return double{s.transpose_a ? a[p * m + i] : a[i * k + p]}; };
  auto op_b = [&](int64_t p, int64_t j) { return double{s.transpose_b ? b[j * k + p] : b[p * n + j]}; };
  std::vector<double> want(m * n), want_bias_grad(m, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double sum = s.accumulate ? c0[i * n + j] : 0.0;
      for (int64_t p = 0; p < k; ++p) sum += op_a(i, p) * op_b(p, j);
      if (s.epilogue == GemmEpilogue::kBias) sum += bias[j];
      want[i * n + j] = sum;
    }
    for (int64_t p = 0; p < k; ++p) want_bias_grad[i] += op_a(i, p);
  }
  Buffer da(a, s.ab_dtype), db(b, s.ab_dtype), dbias(bias, s.bias_dtype);
  std::vector<float> first;
  for (int run = 0; run < 2; ++run) {
    Buffer dc(c0, s.c_dtype);
    if (s.epilogue == GemmEpilogue::kBiasGradA) dbias.Poison();
    if (!Launched(what, plans.Run(s, {.a = da.get(), .b = db.get(), .c = dc.get(),
                                      .bias = s.epilogue == GemmEpilogue::kNone ? nullptr
                                                                                : dbias.get()},
                                  nullptr))) {
      return;
    }
    if (run == 0) {
      first = dc.Download();
      const double tolerance = s.c_dtype == DType::kBfloat16 ? 1.6e-2 : 1e-5;
      Report(what, RelError(first, want), tolerance);
      if (s.epilogue == GemmEpilogue::kBiasGradA) {
        Report(what + " (bias grad)", RelError(dbias.Download(), want_bias_grad),
               s.bias_dtype == DType::kBfloat16 ? 1.6e-2 : 1e-5);
      }
    } else {
      Report(what + " bitwise rerun",
             std::memcmp(first.data(), dc.Download().data(), first.size() * sizeof(float)) == 0
                 ? 0.0
                 : 1.0,
             0.0);
    }
  }
}

void CheckGemms() {
  std::unique_ptr<GemmPlans> plans;
  const OpStatus created = GemmPlans::Create(0, &plans);
  if (!created.ok()) {
    Fail("GemmPlans::Create", created.message());
    return;
  }
  // The 0.5B model's q projection (with bias), its dX, the MLP's dW (accumulated in fp32), a
  // bias gradient, odd sizes, and fp32.
  CheckGemm(*plans, {.m = 512, .n = 896, .k = 896, .transpose_b = true,
                     .epilogue = GemmEpilogue::kBias, .bias_dtype = DType::kBfloat16});
  CheckGemm(*plans, {.m = 512, .n = 896, .k = 4864});
  CheckGemm(*plans, {.m = 4864, .n = 896, .k = 512, .transpose_a = true,
                     .c_dtype = DType::kFloat32, .accumulate = true});
  CheckGemm(*plans, {.m = 128, .n = 896, .k = 512, .transpose_a = true,
                     .c_dtype = DType::kFloat32, .epilogue = GemmEpilogue::kBiasGradA});
  CheckGemm(*plans, {.m = 24, .n = 40, .k = 56, .transpose_b = true});
  CheckGemm(*plans, {.m = 64, .n = 48, .k = 32, .ab_dtype = DType::kFloat32,
                     .c_dtype = DType::kFloat32});
  std::printf("     GEMM plans chosen: %lld, workspace %zu MiB\n",
              static_cast<long long>(plans->plans()), plans->workspace_bytes() >> 20);
}

}  // namespace
}  // namespace qtrain::kernels::cuda

int main() {
  using namespace qtrain::kernels::cuda;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("gpu_ops_check: no GPU here; nothing checked\n");
    return 0;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("gpu_ops_check on %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  CheckCast(1);
  CheckCast(1 << 20);
  CheckSumOfSquares();
  CheckAdamW(1000003);
  CheckTreeSumRows(1, 1000, 1000);
  CheckTreeSumRows(7, (1 << 20) + 3, (1 << 20) + 5);
  CheckTreeSumRows(8, 4096, 4096);
  CheckGemms();
  for (DType dtype : {DType::kFloat32, DType::kBfloat16}) {
    CheckResidual(1 << 20, dtype);
    CheckResidual(257, dtype);
    CheckSwiglu(4864 * 7 + 3, dtype);
    CheckRmsNorm(1, 896, dtype);
    CheckRmsNorm(300, 896, dtype);
    CheckRmsNorm(7, 129, dtype);
    CheckRope(2, 33, 14, 64, false, dtype);
    CheckRope(1, 2048, 2, 64, true, dtype);
    CheckRope(3, 5, 4, 16, false, dtype);
    CheckEmbedding(1000, 151936, 896, dtype);
    CheckEmbedding(7, 13, 5, dtype);
    CheckCrossEntropy(5, 151936, dtype);
    CheckCrossEntropy(9, 1000, dtype);
  }
  std::printf("gpu_ops_check: %d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
