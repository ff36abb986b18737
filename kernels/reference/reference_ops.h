// Plain-loop reference implementations of every op, templated on the scalar type so that tests
// can run them in double (finite-difference checks) and compare the backends against them.
// Same layouts and the same accumulate-into-gradients contract as ops.h; no validation, no
// parallelism, no tiling (attention builds the full score matrix, so keep T small).
#ifndef QTRAIN_KERNELS_REFERENCE_REFERENCE_OPS_H_
#define QTRAIN_KERNELS_REFERENCE_REFERENCE_OPS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace qtrain::kernels::reference {

// ids [rows]; table [vocab, dim]; out [rows, dim]
template <typename T>
void EmbeddingForward(const int32_t* ids, const T* table, T* out, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < dim; ++j) out[r * dim + j] = table[ids[r] * dim + j];
}
template <typename T>
void EmbeddingBackward(const int32_t* ids, const T* dout, T* dtable, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < dim; ++j) dtable[ids[r] * dim + j] += dout[r * dim + j];
}

// x, out [rows, dim]; weight [dim]; rstd [rows]
template <typename T>
void RmsNormForward(const T* x, const T* weight, T eps, T* out, T* rstd, int64_t rows,
                    int64_t dim) {
  for (int64_t r = 0; r < rows; ++r) {
    T ms = 0;
    for (int64_t j = 0; j < dim; ++j) ms += x[r * dim + j] * x[r * dim + j];
    const T s = T(1) / std::sqrt(ms / T(dim) + eps);
    rstd[r] = s;
    for (int64_t j = 0; j < dim; ++j) out[r * dim + j] = weight[j] * x[r * dim + j] * s;
  }
}
template <typename T>
void RmsNormBackward(const T* dout, const T* x, const T* weight, const T* rstd, T* dx, T* dweight,
                     int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r) {
    const T s = rstd[r];
    T dot = 0;
    for (int64_t j = 0; j < dim; ++j) dot += dout[r * dim + j] * weight[j] * x[r * dim + j] * s;
    for (int64_t j = 0; j < dim; ++j) {
      const T n = x[r * dim + j] * s;
      dx[r * dim + j] += s * (dout[r * dim + j] * weight[j] - n * dot / T(dim));
      dweight[j] += dout[r * dim + j] * n;
    }
  }
}

// x [rows, in]; weight [out, in]; bias [out] or null; y [rows, out]
template <typename T>
void LinearForward(const T* x, const T* weight, const T* bias, T* y, int64_t rows, int64_t in,
                   int64_t out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      T acc = bias != nullptr ? bias[o] : T(0);
      for (int64_t i = 0; i < in; ++i) acc += x[r * in + i] * weight[o * in + i];
      y[r * out + o] = acc;
    }
}
template <typename T>
void LinearBackward(const T* dy, const T* x, const T* weight, T* dx, T* dweight, T* dbias,
                    int64_t rows, int64_t in, int64_t out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      const T g = dy[r * out + o];
      if (dbias != nullptr) dbias[o] += g;
      for (int64_t i = 0; i < in; ++i) {
        dx[r * in + i] += g * weight[o * in + i];
        dweight[o * in + i] += g * x[r * in + i];
      }
    }
}

// x, y [B, T, H, D]; positions [B*T]; inv_freq [D/2] (fp32, as the backends take it). The angle
// is the fp32 product, as in transformers; cos/sin are then taken in T.
template <typename T>
void RopeForward(const T* x, T* y, int64_t tokens, int64_t heads, int64_t dim,
                 const int32_t* positions, const float* inv_freq, float attention_factor,
                 bool transpose = false) {
  const int64_t half = dim / 2;
  for (int64_t tok = 0; tok < tokens; ++tok)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(positions[tok]) * inv_freq[i];
        const T c = std::cos(T(angle)) * T(attention_factor);
        const T s = (transpose ? -1 : 1) * std::sin(T(angle)) * T(attention_factor);
        const int64_t base = (tok * heads + h) * dim;
        const T lo = x[base + i], hi = x[base + i + half];
        y[base + i] = lo * c - hi * s;
        y[base + i + half] = hi * c + lo * s;
      }
}
template <typename T>
void RopeBackward(const T* dy, T* dx, int64_t tokens, int64_t heads, int64_t dim,
                  const int32_t* positions, const float* inv_freq, float attention_factor) {
  std::vector<T> tmp(tokens * heads * dim);
  RopeForward(dy, tmp.data(), tokens, heads, dim, positions, inv_freq, attention_factor,
              /*transpose=*/true);
  for (size_t i = 0; i < tmp.size(); ++i) dx[i] += tmp[i];
}

// Attention with the full score matrix. q, o [B, T, H, D]; k, v [B, R, Hkv, D]; lse [B, H, T].
struct AttentionDims {
  int64_t B, T, past, R, H, Hkv, D;
  double scale;
};
template <typename T>
void AttentionForward(const T* q, const T* k, const T* v, T* o, T* lse, const AttentionDims& d) {
  const int64_t S = d.past + d.T, group = d.H / d.Hkv;
  std::vector<T> p(S);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.H; ++h)
      for (int64_t t = 0; t < d.T; ++t) {
        const int64_t g = h / group, visible = d.past + t + 1;
        const T* qr = q + ((b * d.T + t) * d.H + h) * d.D;
        T max = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < visible; ++j) {
          const T* kr = k + ((b * d.R + j) * d.Hkv + g) * d.D;
          T dot = 0;
          for (int64_t i = 0; i < d.D; ++i) dot += qr[i] * kr[i];
          p[j] = dot * T(d.scale);
          max = std::max(max, p[j]);
        }
        T sum = 0;
        for (int64_t j = 0; j < visible; ++j) sum += std::exp(p[j] - max);
        const T row_lse = max + std::log(sum);
        lse[(b * d.H + h) * d.T + t] = row_lse;
        T* orow = o + ((b * d.T + t) * d.H + h) * d.D;
        for (int64_t i = 0; i < d.D; ++i) orow[i] = 0;
        for (int64_t j = 0; j < visible; ++j) {
          const T pj = std::exp(p[j] - row_lse);
          const T* vr = v + ((b * d.R + j) * d.Hkv + g) * d.D;
          for (int64_t i = 0; i < d.D; ++i) orow[i] += pj * vr[i];
        }
      }
}
template <typename T>
void AttentionBackward(const T* q, const T* k, const T* v, const T* dout, T* dq, T* dk, T* dv,
                       const AttentionDims& d) {
  const int64_t S = d.past + d.T, group = d.H / d.Hkv;
  std::vector<T> p(S), dp(S);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.H; ++h)
      for (int64_t t = 0; t < d.T; ++t) {
        const int64_t g = h / group, visible = d.past + t + 1;
        const int64_t qi = ((b * d.T + t) * d.H + h) * d.D;
        T max = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < visible; ++j) {
          const int64_t ki = ((b * d.R + j) * d.Hkv + g) * d.D;
          T dot = 0, dvdot = 0;
          for (int64_t i = 0; i < d.D; ++i) {
            dot += q[qi + i] * k[ki + i];
            dvdot += dout[qi + i] * v[ki + i];
          }
          p[j] = dot * T(d.scale);
          dp[j] = dvdot;
          max = std::max(max, p[j]);
        }
        T sum = 0;
        for (int64_t j = 0; j < visible; ++j) sum += std::exp(p[j] - max);
        T delta = 0;  // sum_j P_j dP_j = rowsum(dout * o)
        for (int64_t j = 0; j < visible; ++j) {
          p[j] = std::exp(p[j] - max) / sum;
          delta += p[j] * dp[j];
        }
        for (int64_t j = 0; j < visible; ++j) {
          const int64_t ki = ((b * d.R + j) * d.Hkv + g) * d.D;
          const T ds = p[j] * (dp[j] - delta) * T(d.scale);
          for (int64_t i = 0; i < d.D; ++i) {
            dq[qi + i] += ds * k[ki + i];
            dk[ki + i] += ds * q[qi + i];
            dv[ki + i] += p[j] * dout[qi + i];
          }
        }
      }
}

// Dual Chunk Attention with the full score row (chunk_len s). Query t is at i = past + t; key
// j <= i scores with q_intra when j / s == i / s, q_succ when j / s == i / s - 1, else q_inter.
template <typename T>
void DcaAttentionForward(const T* q_intra, const T* q_succ, const T* q_inter, const T* k,
                         const T* v, T* o, T* lse, const AttentionDims& d, int64_t chunk_len) {
  const int64_t S = d.past + d.T, group = d.H / d.Hkv;
  std::vector<T> p(S);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.H; ++h)
      for (int64_t t = 0; t < d.T; ++t) {
        const int64_t g = h / group, i = d.past + t, ci = i / chunk_len;
        const int64_t qoff = ((b * d.T + t) * d.H + h) * d.D;
        T max = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j <= i; ++j) {
          const int64_t cj = j / chunk_len;
          const T* qr = cj == ci ? q_intra + qoff : cj == ci - 1 ? q_succ + qoff : q_inter + qoff;
          const T* kr = k + ((b * d.R + j) * d.Hkv + g) * d.D;
          T dot = 0;
          for (int64_t e = 0; e < d.D; ++e) dot += qr[e] * kr[e];
          p[j] = dot * T(d.scale);
          max = std::max(max, p[j]);
        }
        T sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += std::exp(p[j] - max);
        const T row_lse = max + std::log(sum);
        lse[(b * d.H + h) * d.T + t] = row_lse;
        T* orow = o + qoff;
        for (int64_t e = 0; e < d.D; ++e) orow[e] = 0;
        for (int64_t j = 0; j <= i; ++j) {
          const T pj = std::exp(p[j] - row_lse);
          const T* vr = v + ((b * d.R + j) * d.Hkv + g) * d.D;
          for (int64_t e = 0; e < d.D; ++e) orow[e] += pj * vr[e];
        }
      }
}

// gate, up, out [n]
template <typename T>
void SwigluForward(const T* gate, const T* up, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (T(1) + std::exp(-gate[i])) * up[i];
}
template <typename T>
void SwigluBackward(const T* dout, const T* gate, const T* up, T* dgate, T* dup, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T sig = T(1) / (T(1) + std::exp(-gate[i]));
    dup[i] += dout[i] * gate[i] * sig;
    dgate[i] += dout[i] * up[i] * sig * (T(1) + gate[i] * (T(1) - sig));
  }
}

// logits [rows, vocab]; labels [rows]; losses [rows] (0 when ignored)
template <typename T>
void CrossEntropyForward(const T* logits, const int32_t* labels, T* losses, int64_t rows,
                         int64_t vocab, int32_t ignore_index) {
  for (int64_t r = 0; r < rows; ++r) {
    if (labels[r] == ignore_index) {
      losses[r] = 0;
      continue;
    }
    const T* z = logits + r * vocab;
    const T max = *std::max_element(z, z + vocab);
    T sum = 0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(z[j] - max);
    losses[r] = max + std::log(sum) - z[labels[r]];
  }
}
// dlogits = (softmax - onehot) * grad_scale, 0 for ignored rows (overwrites, as the op).
template <typename T>
void CrossEntropyBackward(const T* logits, const int32_t* labels, T grad_scale, T* dlogits,
                          int64_t rows, int64_t vocab, int32_t ignore_index) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* z = logits + r * vocab;
    T* dz = dlogits + r * vocab;
    if (labels[r] == ignore_index) {
      std::fill(dz, dz + vocab, T(0));
      continue;
    }
    const T max = *std::max_element(z, z + vocab);
    T sum = 0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(z[j] - max);
    for (int64_t j = 0; j < vocab; ++j) dz[j] = std::exp(z[j] - max) / sum * grad_scale;
    dz[labels[r]] -= grad_scale;
  }
}

}  // namespace qtrain::kernels::reference

#endif  // QTRAIN_KERNELS_REFERENCE_REFERENCE_OPS_H_
