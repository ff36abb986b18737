// Causal GQA attention, forward and backward, one warp per row (the CUDA backend's fp32 path;
// bf16 storage works too, with fp32 math). The bf16 training path uses cuDNN's SDPA instead.
//   q, o, dout, dq [B, T, H, D]; k, v, dk, dv [B, kv_rows, Hkv, D]; lse, row_dot [B, H, T] fp32
//   forward:  warp (b, t, h) walks keys 0 ... past+t with an online softmax; lane l holds
//             elements l, l+32, ... of a head row (D <= 128: at most 4 per lane, in registers)
//   backward: (1) warp (b, t, h): row_dot = do . o; dq += scale sum_j P (do . v_j - row_dot) k_j
//             (2) warp (b, j, g): dk_j += scale sum dS q_t, dv_j += sum P do_t over the group's
//                 heads, then the queries t >= j - past, in order: no atomics
// Dot products are warp sums over a fixed butterfly, so every lane holds the same bits, and every
// output element is summed in one fixed order: deterministic.
#include <cmath>
#include <string>

#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {
namespace {

constexpr int kWarp = 32;

struct Dims {
  int64_t batch, seq_len, past_len, kv_rows, heads, kv_heads, head_dim;
  float scale;
};

Dims MakeDims(const AttentionKernelShape& s) {
  return Dims{
      s.batch,
      s.seq_len,
      s.past_len,
      s.kv_rows > 0 ? s.kv_rows : s.past_len + s.seq_len,
      s.num_heads,
      s.num_kv_heads,
      s.head_dim,
      s.softmax_scale > 0.0f ? s.softmax_scale : 1.0f / std::sqrt(static_cast<float>(s.head_dim))};
}

__device__ __forceinline__ int Lane() { return static_cast<int>(threadIdx.x % kWarp); }

// The global warp index; blockDim is a multiple of 32, so a warp exits as a whole.
__device__ __forceinline__ int64_t WarpIndex() {
  return (blockIdx.x * int64_t{blockDim.x} + threadIdx.x) / kWarp;
}

template <int kPerLane, typename T>
__device__ __forceinline__ void LoadRow(const T* row, int64_t dim, float (&out)[kPerLane]) {
  QTRAIN_UNROLL
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = Lane() + i * kWarp;
    out[i] = d < dim ? math::ToFloat(row[d]) : 0.0f;
  }
}

// out[d] = value (store) or out[d] += value (accumulate) for this lane's elements.
template <int kPerLane, typename T>
__device__ __forceinline__ void StoreRow(const float (&value)[kPerLane], float factor,
                                         bool accumulate, int64_t dim, T* row) {
  QTRAIN_UNROLL
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = Lane() + i * kWarp;
    if (d < dim) {
      const float base = accumulate ? math::ToFloat(row[d]) : 0.0f;
      math::Store(base + factor * value[i], row[d]);
    }
  }
}

// The sum over the warp: a butterfly, after which every lane holds the same bits (each step adds
// the same two values, and float addition is commutative).
__device__ __forceinline__ float WarpSum(float value) {
  QTRAIN_UNROLL
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

template <int kPerLane>
__device__ __forceinline__ float Dot(const float (&a)[kPerLane], const float (&b)[kPerLane]) {
  float sum = 0.0f;
  QTRAIN_UNROLL
  for (int i = 0; i < kPerLane; ++i) sum += a[i] * b[i];
  return WarpSum(sum);
}

__device__ __forceinline__ int64_t QRow(const Dims& d, int64_t b, int64_t t, int64_t h) {
  return ((b * d.seq_len + t) * d.heads + h) * d.head_dim;
}
__device__ __forceinline__ int64_t KvRow(const Dims& d, int64_t b, int64_t j, int64_t g) {
  return ((b * d.kv_rows + j) * d.kv_heads + g) * d.head_dim;
}
__device__ __forceinline__ int64_t StatIndex(const Dims& d, int64_t b, int64_t h, int64_t t) {
  return (b * d.heads + h) * d.seq_len + t;
}

template <int kPerLane, typename T>
__global__ void AttentionForwardKernel(const T* q, const T* k, const T* v, T* o, float* lse,
                                       Dims d) {
  const int64_t warp = WarpIndex();
  if (warp >= d.batch * d.seq_len * d.heads) return;
  const int64_t h = warp % d.heads;
  const int64_t t = (warp / d.heads) % d.seq_len;
  const int64_t b = warp / (d.heads * d.seq_len);
  const int64_t g = h / (d.heads / d.kv_heads);
  float qr[kPerLane];
  LoadRow(q + QRow(d, b, t, h), d.head_dim, qr);
  float acc[kPerLane] = {};
  float row_max = -INFINITY, row_sum = 0.0f;
  for (int64_t j = 0; j <= d.past_len + t; ++j) {
    float kr[kPerLane], vr[kPerLane];
    LoadRow(k + KvRow(d, b, j, g), d.head_dim, kr);
    LoadRow(v + KvRow(d, b, j, g), d.head_dim, vr);
    const float s = d.scale * Dot(qr, kr);
    if (s > row_max) {
      const float c = expf(row_max - s);  // 0 for the first key (row_max = -inf)
      row_sum = row_sum * c + 1.0f;
      QTRAIN_UNROLL
      for (int i = 0; i < kPerLane; ++i) acc[i] = acc[i] * c + vr[i];
      row_max = s;
    } else {
      const float p = expf(s - row_max);
      row_sum += p;
      QTRAIN_UNROLL
      for (int i = 0; i < kPerLane; ++i) acc[i] += p * vr[i];
    }
  }
  StoreRow(acc, 1.0f / row_sum, /*accumulate=*/false, d.head_dim, o + QRow(d, b, t, h));
  if (Lane() == 0) lse[StatIndex(d, b, h, t)] = row_max + logf(row_sum);
}

template <int kPerLane, typename T>
__global__ void AttentionBackwardQueryKernel(const T* q, const T* k, const T* v, const T* o,
                                             const float* lse, const T* dout, T* dq, float* row_dot,
                                             Dims d) {
  const int64_t warp = WarpIndex();
  if (warp >= d.batch * d.seq_len * d.heads) return;
  const int64_t h = warp % d.heads;
  const int64_t t = (warp / d.heads) % d.seq_len;
  const int64_t b = warp / (d.heads * d.seq_len);
  const int64_t g = h / (d.heads / d.kv_heads);
  float dor[kPerLane], orow[kPerLane];
  LoadRow(dout + QRow(d, b, t, h), d.head_dim, dor);
  LoadRow(o + QRow(d, b, t, h), d.head_dim, orow);
  const float delta = Dot(dor, orow);
  if (Lane() == 0) row_dot[StatIndex(d, b, h, t)] = delta;
  if (dq == nullptr) return;
  float qr[kPerLane];
  LoadRow(q + QRow(d, b, t, h), d.head_dim, qr);
  const float row_lse = lse[StatIndex(d, b, h, t)];
  float acc[kPerLane] = {};
  for (int64_t j = 0; j <= d.past_len + t; ++j) {
    float kr[kPerLane], vr[kPerLane];
    LoadRow(k + KvRow(d, b, j, g), d.head_dim, kr);
    LoadRow(v + KvRow(d, b, j, g), d.head_dim, vr);
    const float p = expf(d.scale * Dot(qr, kr) - row_lse);
    const float ds = p * (Dot(dor, vr) - delta);
    QTRAIN_UNROLL
    for (int i = 0; i < kPerLane; ++i) acc[i] += ds * kr[i];
  }
  StoreRow(acc, d.scale, /*accumulate=*/true, d.head_dim, dq + QRow(d, b, t, h));
}

template <int kPerLane, typename T>
__global__ void AttentionBackwardKeyKernel(const T* q, const T* k, const T* v, const float* lse,
                                           const T* dout, const float* row_dot, T* dk, T* dv,
                                           Dims d) {
  const int64_t kv_len = d.past_len + d.seq_len;
  const int64_t warp = WarpIndex();
  if (warp >= d.batch * kv_len * d.kv_heads) return;
  const int64_t g = warp % d.kv_heads;
  const int64_t j = (warp / d.kv_heads) % kv_len;
  const int64_t b = warp / (d.kv_heads * kv_len);
  const int64_t group = d.heads / d.kv_heads;
  float kr[kPerLane], vr[kPerLane];
  LoadRow(k + KvRow(d, b, j, g), d.head_dim, kr);
  LoadRow(v + KvRow(d, b, j, g), d.head_dim, vr);
  float dk_acc[kPerLane] = {}, dv_acc[kPerLane] = {};
  const int64_t first = j > d.past_len ? j - d.past_len : 0;  // queries that see key j
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    for (int64_t t = first; t < d.seq_len; ++t) {
      float qr[kPerLane], dor[kPerLane];
      LoadRow(q + QRow(d, b, t, h), d.head_dim, qr);
      LoadRow(dout + QRow(d, b, t, h), d.head_dim, dor);
      const float p = expf(d.scale * Dot(qr, kr) - lse[StatIndex(d, b, h, t)]);
      const float ds = p * (Dot(dor, vr) - row_dot[StatIndex(d, b, h, t)]);
      QTRAIN_UNROLL
      for (int i = 0; i < kPerLane; ++i) {
        dv_acc[i] += p * dor[i];
        dk_acc[i] += ds * qr[i];
      }
    }
  }
  if (dk != nullptr)
    StoreRow(dk_acc, d.scale, /*accumulate=*/true, d.head_dim, dk + KvRow(d, b, j, g));
  if (dv != nullptr)
    StoreRow(dv_acc, 1.0f, /*accumulate=*/true, d.head_dim, dv + KvRow(d, b, j, g));
}

constexpr int kWarpsPerBlock = kThreads / kWarp;

unsigned WarpGrid(int64_t warps) {
  return static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

// Calls f(std::integral_constant<int, kPerLane>) for the head dim (checked <= 128 before).
template <typename F>
OpStatus DispatchPerLane(int64_t head_dim, F&& f) {
  if (head_dim <= 32) return f(std::integral_constant<int, 1>{});
  if (head_dim <= 64) return f(std::integral_constant<int, 2>{});
  return f(std::integral_constant<int, 4>{});
}

}  // namespace

OpStatus CheckAttentionShape(const char* kernel, DType dtype, const AttentionKernelShape& s) {
  const std::string k = kernel;
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckDType(kernel, dtype));
  if (s.batch <= 0) return OpStatus::Error(k + ": batch must be positive");
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kernel, "seq_len", s.seq_len));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kernel, "past_len", s.past_len));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kernel, "kv_rows", s.kv_rows));
  if (s.num_heads <= 0 || s.num_kv_heads <= 0) {
    return OpStatus::Error(k + ": num_heads and num_kv_heads must be positive");
  }
  if (s.num_heads % s.num_kv_heads != 0) {
    return OpStatus::Error(k + ": num_heads " + std::to_string(s.num_heads) +
                           " is not a multiple of num_kv_heads " + std::to_string(s.num_kv_heads));
  }
  if (s.head_dim <= 0 || s.head_dim > kAttentionMaxHeadDim) {
    return OpStatus::Error(k + ": head_dim must be in [1, " + std::to_string(kAttentionMaxHeadDim) +
                           "], got " + std::to_string(s.head_dim));
  }
  if (s.kv_rows != 0 && s.kv_rows < s.past_len + s.seq_len) {
    return OpStatus::Error(k + ": kv_rows " + std::to_string(s.kv_rows) + " < past_len + seq_len " +
                           std::to_string(s.past_len + s.seq_len));
  }
  if (!(s.softmax_scale >= 0.0f) || std::isinf(s.softmax_scale)) {
    return OpStatus::Error(k + ": softmax_scale must be finite and >= 0");
  }
  // One warp per query row (and per key row): the grid must hold them.
  const int64_t rows = s.batch * (s.past_len + s.seq_len) * s.num_heads;
  if (rows / kWarpsPerBlock >= 0x7fffffffLL || s.batch > (int64_t{1} << 30) ||
      s.past_len + s.seq_len > (int64_t{1} << 30) || s.num_heads > (int64_t{1} << 20)) {
    return OpStatus::Error(k + ": too many rows for one launch");
  }
  return OpStatus::Ok();
}

OpStatus CanImplement(const AttentionParams& p) {
  constexpr const char* kKernel = "AttentionForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckAttentionShape(kKernel, p.dtype, p.shape));
  if (p.shape.seq_len == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "q", p.q));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "k", p.k));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "v", p.v));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "o", p.o));
  return CheckNotNull(kKernel, "lse", p.lse);
}

OpStatus AttentionForward(const AttentionParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.shape.seq_len == 0) return OpStatus::Ok();
  const Dims d = MakeDims(p.shape);
  const unsigned grid = WarpGrid(d.batch * d.seq_len * d.heads);
  return DispatchDType(p.dtype, "AttentionForward", [&](auto tag) {
    using T = decltype(tag);
    return DispatchPerLane(d.head_dim, [&](auto per_lane) {
      AttentionForwardKernel<decltype(per_lane)::value, T><<<grid, kThreads, 0, stream>>>(
          static_cast<const T*>(p.q), static_cast<const T*>(p.k), static_cast<const T*>(p.v),
          static_cast<T*>(p.o), p.lse, d);
      return LaunchStatus("AttentionForward");
    });
  });
}

OpStatus CanImplement(const AttentionBackwardParams& p) {
  constexpr const char* kKernel = "AttentionBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckAttentionShape(kKernel, p.dtype, p.shape));
  if (p.shape.seq_len == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "q", p.q));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "k", p.k));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "v", p.v));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "o", p.o));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "lse", p.lse));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "dout", p.dout));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "row_dot", p.row_dot));
  for (const void* grad : {static_cast<const void*>(p.dq), static_cast<const void*>(p.dk),
                           static_cast<const void*>(p.dv)}) {
    if (grad != nullptr && (grad == p.dout || grad == p.q || grad == p.k || grad == p.v)) {
      return OpStatus::Error("AttentionBackward: dq, dk and dv must not alias the inputs");
    }
  }
  return OpStatus::Ok();
}

OpStatus AttentionBackward(const AttentionBackwardParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.shape.seq_len == 0 || (p.dq == nullptr && p.dk == nullptr && p.dv == nullptr)) {
    return OpStatus::Ok();
  }
  const Dims d = MakeDims(p.shape);
  return DispatchDType(p.dtype, "AttentionBackward", [&](auto tag) {
    using T = decltype(tag);
    return DispatchPerLane(d.head_dim, [&](auto per_lane) {
      constexpr int kPerLane = decltype(per_lane)::value;
      AttentionBackwardQueryKernel<kPerLane, T>
          <<<WarpGrid(d.batch * d.seq_len * d.heads), kThreads, 0, stream>>>(
              static_cast<const T*>(p.q), static_cast<const T*>(p.k), static_cast<const T*>(p.v),
              static_cast<const T*>(p.o), p.lse, static_cast<const T*>(p.dout),
              static_cast<T*>(p.dq), p.row_dot, d);
      QTRAIN_KERNEL_RETURN_IF_ERROR(LaunchStatus("AttentionBackward (queries)"));
      if (p.dk == nullptr && p.dv == nullptr) return OpStatus::Ok();
      AttentionBackwardKeyKernel<kPerLane, T>
          <<<WarpGrid(d.batch * (d.past_len + d.seq_len) * d.kv_heads), kThreads, 0, stream>>>(
              static_cast<const T*>(p.q), static_cast<const T*>(p.k), static_cast<const T*>(p.v),
              p.lse, static_cast<const T*>(p.dout), p.row_dot, static_cast<T*>(p.dk),
              static_cast<T*>(p.dv), d);
      return LaunchStatus("AttentionBackward (keys)");
    });
  });
}

}  // namespace qtrain::kernels::cuda
