// RoPE, NeoX half split, with YaRN-scaled tables (element_math.h RopeCosSin/RopeRotate).
//   in, out [tokens, H, D]; cos_table, sin_table [table_rows, D/2]; positions [tokens] (optional)
//   forward:  out = rotate(in)          (out may alias in)
//   backward: out += rotate^T(in)       (out must not alias in)
// One thread per (token, i < D/2) pair index, looping over the heads: the cos/sin of the pair
// are read once and used for every head.
#include "kernels/cuda/launch.cuh"

namespace qtrain::kernels::cuda {
namespace {

template <typename T, bool kTransposed>
__global__ void RopeKernel(const T* in, T* out, const float* cos_table, const float* sin_table,
                           int64_t table_rows, const int32_t* positions, int64_t tokens,
                           int64_t seq_len, int64_t num_heads, int64_t head_dim, int64_t past_len) {
  const int64_t half = head_dim / 2;
  const int64_t pairs = tokens * half;
  for (int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; k < pairs;
       k += int64_t{gridDim.x} * blockDim.x) {
    const int64_t tok = k / half;
    const int64_t i = k % half;
    const int64_t position = positions != nullptr ? positions[tok] : past_len + tok % seq_len;
    const bool known = position >= 0 && position < table_rows;
    const float c = known ? cos_table[position * half + i] : NAN;
    const float s = known ? sin_table[position * half + i] : NAN;
    for (int64_t h = 0; h < num_heads; ++h) {
      const int64_t base = (tok * num_heads + h) * head_dim;
      const math::Pair x{math::ToFloat(in[base + i]), math::ToFloat(in[base + i + half])};
      if constexpr (kTransposed) {
        const math::Pair d = math::RopeRotateTransposed(x, c, s);
        math::Store(math::ToFloat(out[base + i]) + d.lo, out[base + i]);
        math::Store(math::ToFloat(out[base + i + half]) + d.hi, out[base + i + half]);
      } else {
        const math::Pair y = math::RopeRotate(x, c, s);
        math::Store(y.lo, out[base + i]);
        math::Store(y.hi, out[base + i + half]);
      }
    }
  }
}

}  // namespace

void MakeRopeTables(const float* inv_freq, int64_t half, float attention_factor, int64_t rows,
                    float* cos_table, float* sin_table) {
  for (int64_t p = 0; p < rows; ++p) {
    for (int64_t i = 0; i < half; ++i) {
      const math::Pair cs = math::RopeCosSin(p, inv_freq[i], attention_factor);
      cos_table[p * half + i] = cs.lo;
      sin_table[p * half + i] = cs.hi;
    }
  }
}

OpStatus CanImplement(const RopeParams& p) {
  constexpr const char* kKernel = "Rope";
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckDType(kKernel, p.dtype));
  if (p.batch <= 0 || p.num_heads <= 0 || p.head_dim <= 0) {
    return OpStatus::Error("Rope: batch, num_heads and head_dim must be > 0");
  }
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "seq_len", p.seq_len));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckN(kKernel, "past_len", p.past_len));
  if (p.head_dim % 2 != 0) {
    return OpStatus::Error("Rope: head_dim must be even, got " + std::to_string(p.head_dim));
  }
  if (p.seq_len == 0) return OpStatus::Ok();
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "in", p.in));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "out", p.out));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "cos_table", p.cos_table));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNotNull(kKernel, "sin_table", p.sin_table));
  if (p.positions == nullptr && p.past_len + p.seq_len > p.table_rows) {
    return OpStatus::Error("Rope: positions up to " + std::to_string(p.past_len + p.seq_len - 1) +
                           " need tables of that many rows, not " + std::to_string(p.table_rows));
  }
  if (p.transposed && p.in == p.out) {
    return OpStatus::Error("Rope: the transposed (backward) rotation accumulates; out != in");
  }
  return OpStatus::Ok();
}

OpStatus Rope(const RopeParams& p, cudaStream_t stream) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CanImplement(p));
  if (p.seq_len == 0) return OpStatus::Ok();
  const int64_t tokens = p.batch * p.seq_len;
  const unsigned grid = GridFor(tokens * (p.head_dim / 2));
  return DispatchDType(p.dtype, "Rope", [&](auto tag) {
    using T = decltype(tag);
    const T* in = static_cast<const T*>(p.in);
    T* out = static_cast<T*>(p.out);
    if (p.transposed) {
      RopeKernel<T, true><<<grid, kThreads, 0, stream>>>(
          in, out, p.cos_table, p.sin_table, p.table_rows, p.positions, tokens, p.seq_len,
          p.num_heads, p.head_dim, p.past_len);
    } else {
      RopeKernel<T, false><<<grid, kThreads, 0, stream>>>(
          in, out, p.cos_table, p.sin_table, p.table_rows, p.positions, tokens, p.seq_len,
          p.num_heads, p.head_dim, p.past_len);
    }
    return LaunchStatus("Rope");
  });
}

}  // namespace qtrain::kernels::cuda
