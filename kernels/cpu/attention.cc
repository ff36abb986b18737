// Causal GQA attention, forward and backward, tile by tile with an online softmax
// (FlashAttention-2 style): no T x T buffer, memory linear in T.
//   q, o, dout, dq [B, T, H, D]; k, v, dk, dv [B, R, Hkv, D] (R = kv_rows); lse [B, H, T]
//   forward:  S = scale q k^T (causal: key j visible to query t iff j <= past_len + t);
//             lse = logsumexp_j S; o = softmax(S) v
//   backward: P = exp(S - lse); Dt = rowsum(dout * o); dS = P (dout v^T - Dt);
//             dq += scale dS k; dk += scale dS^T q; dv += P^T dout (summed over the group)
//
// Parallel work items and determinism: the forward runs one item per (b, h, query tile). The
// backward has two schedules with bitwise-equal results:
// - fused: one item per (b, kv head), which owns the dq rows of its query heads as well as its
//   dk/dv rows, so P and dS are computed once per tile pair (5 tile products);
// - split: dk/dv items per (b, kv head, key tile) and dq items per (b, h, query tile), for when
//   there are too few (b, kv head) pairs to keep the threads busy; P and dS are computed in both
//   passes (7 tile products).
// Each item owns its output rows (no atomics), and every output element is the same sequence of
// operations in both schedules and at any thread count.
#include "kernels/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/tile_math.h"
#include "kernels/cpu/validate.h"

namespace qtrain::kernels::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

OpStatus ValidateAttention(const char* op, const AttentionShape& s) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "batch", s.batch));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "seq_len", s.seq_len));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "past_len", s.past_len));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckNonNegative(op, "kv_capacity", s.kv_capacity));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "num_heads", s.num_heads));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "num_kv_heads", s.num_kv_heads));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(op, "head_dim", s.head_dim));
  if (s.num_heads % s.num_kv_heads != 0) {
    return OpStatus::Error(std::string(op) + ": num_heads " + std::to_string(s.num_heads) +
                           " is not a multiple of num_kv_heads " + std::to_string(s.num_kv_heads));
  }
  if (s.kv_capacity != 0 && s.kv_capacity < s.kv_len()) {
    return OpStatus::Error(std::string(op) + ": kv_capacity " + std::to_string(s.kv_capacity) +
                           " < past_len + seq_len " + std::to_string(s.kv_len()));
  }
  if (!(s.softmax_scale >= 0.0f) || std::isinf(s.softmax_scale)) {
    return OpStatus::Error(std::string(op) + ": softmax_scale must be finite and >= 0");
  }
  return OpStatus::Ok();
}

// Index arithmetic for the layouts above.
struct Layout {
  explicit Layout(const AttentionShape& s)
      : T(s.seq_len),
        R(s.kv_rows()),
        H(s.num_heads),
        Hkv(s.num_kv_heads),
        D(s.head_dim),
        group(s.num_heads / s.num_kv_heads),
        past(s.past_len),
        kv_len(s.kv_len()),
        scale(s.softmax_scale > 0.0f ? s.softmax_scale
                                     : 1.0f / std::sqrt(static_cast<float>(s.head_dim))) {}
  int64_t QRow(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * H + h) * D; }
  int64_t KRow(int64_t b, int64_t j, int64_t g) const { return ((b * R + j) * Hkv + g) * D; }
  int64_t LseIndex(int64_t b, int64_t h, int64_t t) const { return (b * H + h) * T + t; }

  int64_t T, R, H, Hkv, D, group, past, kv_len;
  float scale;
};

// Multiply-adds of one score product over all heads (an upper bound: the causal half is skipped).
int64_t Work(const Layout& L, int64_t batch) { return batch * L.H * L.T * L.kv_len * L.D; }

// Per-thread tile buffers, allocated once per parallel region. Row-major [rows x D] buffers use
// row stride dp = D rounded up to kTileLanes, [D x keys] buffers row stride tp = tile rounded up;
// the padding columns stay zero (they are never written), so the GEMMs may read them.
struct Scratch {
  Scratch(int64_t tile, int64_t d)
      : dp(RoundUpToLanes(d)),
        tp(RoundUpToLanes(tile)),
        q(tile * dp),
        dout(tile * dp),
        kt(d * tp),
        vt(d * tp),
        k(tile * dp),
        v(tile * dp),
        s(tile * tp),
        ds(tile * tp),
        acc(tile * dp),
        acc2(tile * dp),
        row_max(tile),
        row_sum(tile),
        lse(tile),
        delta(tile) {}
  int64_t dp, tp;
  std::vector<float> q, dout, kt, vt, k, v, s, ds, acc, acc2, row_max, row_sum, lse, delta;
};

// n rows of d floats, `stride` apart in src, to dst with row stride ld.
void LoadRows(const float* src, int64_t stride, int64_t n, int64_t d, int64_t ld, float* dst) {
  for (int64_t r = 0; r < n; ++r) std::copy(src + r * stride, src + r * stride + d, dst + r * ld);
}

// Transposed load: dst[i * ld + c] = element i of row c.
void LoadRowsTransposed(const float* src, int64_t stride, int64_t n, int64_t d, int64_t ld,
                        float* dst) {
  for (int64_t c = 0; c < n; ++c) {
    const float* row = src + c * stride;
    for (int64_t i = 0; i < d; ++i) dst[i * ld + c] = row[i];
  }
}

// Keys j <= past + t are visible to query t: the first `Visible` columns of row r of the tile
// of queries from t0 and keys from j0, nk wide.
int64_t Visible(const Layout& L, int64_t t0, int64_t r, int64_t j0, int64_t nk) {
  return std::clamp<int64_t>(L.past + t0 + r - j0 + 1, 0, nk);
}

// sc.s = q k^T (unscaled) for query rows [t0, t0+nq) and keys [j0, j0+nk), with sc.q and sc.kt
// loaded. Returns the padded key count (columns up to the lane multiple).
int64_t Scores(Scratch& sc, int64_t nq, int64_t nk, int64_t depth) {
  const int64_t nkp = RoundUpToLanes(nk);
  TileGemm(/*accumulate=*/false, nq, nkp, depth, sc.q.data(), sc.dp, 1, sc.kt.data(), sc.tp,
           sc.s.data(), sc.tp);
  return nkp;
}

void ForwardItem(const Layout& L, const float* q, const float* k, const float* v, float* o,
                 float* lse, int64_t b, int64_t h, int64_t t0, int64_t tile, Scratch& sc) {
  const int64_t g = h / L.group;
  const int64_t nq = std::min(tile, L.T - t0);
  const int64_t D = L.D, dp = sc.dp;
  LoadRows(q + L.QRow(b, t0, h), L.H * D, nq, D, dp, sc.q.data());
  std::fill(sc.acc.begin(), sc.acc.end(), 0.0f);
  std::fill(sc.row_max.begin(), sc.row_max.end(), kNegInf);
  std::fill(sc.row_sum.begin(), sc.row_sum.end(), 0.0f);
  const int64_t key_end = L.past + t0 + nq;  // exclusive: the last query's visible keys
  for (int64_t j0 = 0; j0 < key_end; j0 += tile) {
    const int64_t nk = std::min(tile, key_end - j0);
    LoadRowsTransposed(k + L.KRow(b, j0, g), L.Hkv * D, nk, D, sc.tp, sc.kt.data());
    LoadRows(v + L.KRow(b, j0, g), L.Hkv * D, nk, D, dp, sc.v.data());
    const int64_t nkp = Scores(sc, nq, nk, D);
    // Online softmax: this tile's probabilities, and what was accumulated rescaled to the new
    // row max.
    for (int64_t r = 0; r < nq; ++r) {
      const float correction =
          OnlineSoftmaxRow(sc.s.data() + r * sc.tp, nkp, Visible(L, t0, r, j0, nk), L.scale,
                           &sc.row_max[r], &sc.row_sum[r]);
      if (correction != 1.0f) {
        float* acc = sc.acc.data() + r * dp;
        for (int64_t i = 0; i < dp; ++i) acc[i] *= correction;
      }
    }
    TileGemm(/*accumulate=*/true, nq, dp, nk, sc.s.data(), sc.tp, 1, sc.v.data(), dp, sc.acc.data(),
             dp);
  }
  for (int64_t r = 0; r < nq; ++r) {
    // Every query sees key 0, so row_sum >= 1.
    const float inv = 1.0f / sc.row_sum[r];
    float* out = o + L.QRow(b, t0 + r, h);
    const float* acc = sc.acc.data() + r * dp;
    for (int64_t i = 0; i < D; ++i) out[i] = acc[i] * inv;
    lse[L.LseIndex(b, h, t0 + r)] = sc.row_max[r] + std::log(sc.row_sum[r]);
  }
}

// Loads the per-query-tile inputs of the backward: q, dout, lse and delta = rowsum(dout * o).
void LoadQueryTile(const Layout& L, const float* q, const float* dout, const float* lse,
                   const float* delta, int64_t b, int64_t h, int64_t t0, int64_t nq, Scratch& sc) {
  LoadRows(q + L.QRow(b, t0, h), L.H * L.D, nq, L.D, sc.dp, sc.q.data());
  LoadRows(dout + L.QRow(b, t0, h), L.H * L.D, nq, L.D, sc.dp, sc.dout.data());
  for (int64_t r = 0; r < nq; ++r) {
    sc.lse[r] = lse[L.LseIndex(b, h, t0 + r)];
    sc.delta[r] = delta[L.LseIndex(b, h, t0 + r)];
  }
}

// With the query tile (sc.q, dout, lse, delta) and key tile (sc.kt, vt) loaded:
// sc.s = P and sc.ds = scale * dS = scale * P * (dout v^T - delta), [nq, nk] with row stride tp.
void ProbabilitiesAndScoreGrads(const Layout& L, Scratch& sc, int64_t t0, int64_t nq, int64_t j0,
                                int64_t nk) {
  const int64_t nkp = Scores(sc, nq, nk, L.D);
  TileGemm(/*accumulate=*/false, nq, nkp, L.D, sc.dout.data(), sc.dp, 1, sc.vt.data(), sc.tp,
           sc.ds.data(), sc.tp);
  for (int64_t r = 0; r < nq; ++r) {
    SoftmaxBackwardRow(sc.s.data() + r * sc.tp, sc.ds.data() + r * sc.tp, nkp,
                       Visible(L, t0, r, j0, nk), L.scale, sc.lse[r], sc.delta[r]);
  }
}

// dk/dv of key rows [j0, j0+nk) of KV head g, over the group's query heads and query tiles.
// With dq_acc (the fused schedule) it also adds each tile pair's dS k into dq_acc, the
// [group, T, dp] dq accumulator of this (b, g), in the depth the split schedule's QueryGradItem
// uses for that pair.
void KeyValueGradItem(const Layout& L, const float* q, const float* k, const float* v,
                      const float* dout, const float* lse, const float* delta, float* dk, float* dv,
                      int64_t b, int64_t g, int64_t j0, int64_t tile, Scratch& sc,
                      float* dq_acc) {
  const int64_t D = L.D, dp = sc.dp;
  const int64_t nk = std::min(tile, L.kv_len - j0);
  LoadRowsTransposed(k + L.KRow(b, j0, g), L.Hkv * D, nk, D, sc.tp, sc.kt.data());
  LoadRowsTransposed(v + L.KRow(b, j0, g), L.Hkv * D, nk, D, sc.tp, sc.vt.data());
  if (dq_acc != nullptr) LoadRows(k + L.KRow(b, j0, g), L.Hkv * D, nk, D, dp, sc.k.data());
  float* dk_acc = sc.acc.data();   // [nk, dp]
  float* dv_acc = sc.acc2.data();  // [nk, dp]
  std::fill(sc.acc.begin(), sc.acc.end(), 0.0f);
  std::fill(sc.acc2.begin(), sc.acc2.end(), 0.0f);
  // The first query that sees key j0 is at t = j0 - past_len.
  const int64_t first_t = std::max<int64_t>(0, j0 - L.past);
  for (int64_t h = g * L.group; h < (g + 1) * L.group; ++h) {
    for (int64_t t0 = first_t / tile * tile; t0 < L.T; t0 += tile) {
      const int64_t nq = std::min(tile, L.T - t0);
      LoadQueryTile(L, q, dout, lse, delta, b, h, t0, nq, sc);
      ProbabilitiesAndScoreGrads(L, sc, t0, nq, j0, nk);
      // dv += P^T dout and dk += (scale dS)^T q: A is the transposed view of the [nq, nk] tile.
      TileGemm(/*accumulate=*/true, nk, dp, nq, sc.s.data(), 1, sc.tp, sc.dout.data(), dp, dv_acc,
               dp);
      TileGemm(/*accumulate=*/true, nk, dp, nq, sc.ds.data(), 1, sc.tp, sc.q.data(), dp, dk_acc,
               dp);
      if (dq_acc != nullptr) {
        // dq += (scale dS) k over the keys this query tile can see.
        const int64_t depth = std::min(nk, L.past + t0 + nq - j0);
        float* dst = dq_acc + ((h - g * L.group) * L.T + t0) * dp;
        TileGemm(/*accumulate=*/true, nq, dp, depth, sc.ds.data(), sc.tp, 1, sc.k.data(), dp, dst,
                 dp);
      }
    }
  }
  for (int64_t c = 0; c < nk; ++c) {
    if (dk != nullptr) {
      float* dst = dk + L.KRow(b, j0 + c, g);
      for (int64_t i = 0; i < D; ++i) dst[i] += dk_acc[c * dp + i];
    }
    if (dv != nullptr) {
      float* dst = dv + L.KRow(b, j0 + c, g);
      for (int64_t i = 0; i < D; ++i) dst[i] += dv_acc[c * dp + i];
    }
  }
}

// The fused schedule's item: dq, dk and dv of batch b and KV head g. dq_acc: [group, T, dp].
void FusedBackwardItem(const Layout& L, const float* q, const float* k, const float* v,
                       const float* dout, const float* lse, const float* delta, float* dq,
                       float* dk, float* dv, int64_t b, int64_t g, int64_t tile, Scratch& sc,
                       std::vector<float>& dq_acc) {
  std::fill(dq_acc.begin(), dq_acc.end(), 0.0f);
  for (int64_t j0 = 0; j0 < L.kv_len; j0 += tile) {
    KeyValueGradItem(L, q, k, v, dout, lse, delta, dk, dv, b, g, j0, tile, sc,
                     dq == nullptr ? nullptr : dq_acc.data());
  }
  if (dq == nullptr) return;
  for (int64_t h = g * L.group; h < (g + 1) * L.group; ++h) {
    for (int64_t t = 0; t < L.T; ++t) {
      float* dst = dq + L.QRow(b, t, h);
      const float* acc = dq_acc.data() + ((h - g * L.group) * L.T + t) * sc.dp;
      for (int64_t i = 0; i < L.D; ++i) dst[i] += acc[i];
    }
  }
}

// dq of query rows [t0, t0+nq) of head h.
void QueryGradItem(const Layout& L, const float* q, const float* k, const float* v,
                   const float* dout, const float* lse, const float* delta, float* dq, int64_t b,
                   int64_t h, int64_t t0, int64_t tile, Scratch& sc) {
  const int64_t D = L.D, dp = sc.dp;
  const int64_t g = h / L.group;
  const int64_t nq = std::min(tile, L.T - t0);
  LoadQueryTile(L, q, dout, lse, delta, b, h, t0, nq, sc);
  float* dq_acc = sc.acc.data();  // [nq, dp]
  std::fill(sc.acc.begin(), sc.acc.end(), 0.0f);
  const int64_t key_end = L.past + t0 + nq;
  for (int64_t j0 = 0; j0 < key_end; j0 += tile) {
    const int64_t nk = std::min(tile, key_end - j0);
    LoadRowsTransposed(k + L.KRow(b, j0, g), L.Hkv * D, nk, D, sc.tp, sc.kt.data());
    LoadRowsTransposed(v + L.KRow(b, j0, g), L.Hkv * D, nk, D, sc.tp, sc.vt.data());
    LoadRows(k + L.KRow(b, j0, g), L.Hkv * D, nk, D, dp, sc.k.data());
    ProbabilitiesAndScoreGrads(L, sc, t0, nq, j0, nk);
    // dq += (scale dS) k
    TileGemm(/*accumulate=*/true, nq, dp, nk, sc.ds.data(), sc.tp, 1, sc.k.data(), dp, dq_acc, dp);
  }
  for (int64_t r = 0; r < nq; ++r) {
    float* dst = dq + L.QRow(b, t0 + r, h);
    for (int64_t i = 0; i < D; ++i) dst[i] += dq_acc[r * dp + i];
  }
}

}  // namespace

OpStatus AttentionForwardTiled(const float* q, const float* k, const float* v, float* o, float* lse,
                               const AttentionShape& shape, int64_t tile) {
  constexpr const char* kOp = "AttentionForward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateAttention(kOp, shape));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(kOp, "tile", tile));
  if (shape.seq_len == 0) return OpStatus::Ok();
  for (const void* p :
       {static_cast<const void*>(q), static_cast<const void*>(k), static_cast<const void*>(v),
        static_cast<const void*>(o), static_cast<const void*>(lse)}) {
    if (p == nullptr) return OpStatus::Error("AttentionForward: q, k, v, o and lse are required");
  }
  const Layout L(shape);
  const int64_t q_tiles = (L.T + tile - 1) / tile;
  const int64_t items = shape.batch * L.H * q_tiles;
#pragma omp parallel if (WorthParallel(Work(L, shape.batch)))
  {
    Scratch sc(tile, L.D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      // Longest (last) query tiles first: better balance under the causal mask.
      const int64_t qt = q_tiles - 1 - item % q_tiles;
      const int64_t bh = item / q_tiles;
      ForwardItem(L, q, k, v, o, lse, bh / L.H, bh % L.H, qt * tile, tile, sc);
    }
  }
  return OpStatus::Ok();
}

OpStatus AttentionBackwardTiled(const float* q, const float* k, const float* v, const float* o,
                                const float* lse, const float* dout, float* dq, float* dk,
                                float* dv, const AttentionShape& shape, int64_t tile,
                                AttentionBackwardSchedule schedule) {
  constexpr const char* kOp = "AttentionBackward";
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateAttention(kOp, shape));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(kOp, "tile", tile));
  if (shape.seq_len == 0) return OpStatus::Ok();
  for (const void* p : {static_cast<const void*>(q), static_cast<const void*>(k),
                        static_cast<const void*>(v), static_cast<const void*>(o),
                        static_cast<const void*>(lse), static_cast<const void*>(dout)}) {
    if (p == nullptr) {
      return OpStatus::Error("AttentionBackward: q, k, v, o, lse and dout are required");
    }
  }
  const Layout L(shape);
  const int64_t B = shape.batch;
  // delta[b, h, t] = rowsum(dout * o), laid out like lse.
  std::vector<float> delta(B * L.H * L.T);
#pragma omp parallel for schedule(static) if (WorthParallel(B * L.T * L.H * L.D))
  for (int64_t bt = 0; bt < B * L.T; ++bt) {
    const int64_t b = bt / L.T, t = bt % L.T;
    for (int64_t h = 0; h < L.H; ++h) {
      const float* dor = dout + L.QRow(b, t, h);
      const float* orow = o + L.QRow(b, t, h);
      float sum = 0.0f;
      for (int64_t i = 0; i < L.D; ++i) sum += dor[i] * orow[i];
      delta[L.LseIndex(b, h, t)] = sum;
    }
  }
  const int64_t pairs = B * L.Hkv;
  const bool parallel = WorthParallel(Work(L, B));
  const int64_t threads = parallel ? omp_get_max_threads() : 1;
  const bool fused = schedule == AttentionBackwardSchedule::kFused ||
                     (schedule == AttentionBackwardSchedule::kAuto &&
                      (pairs % threads == 0 || pairs >= 4 * threads));
  if (fused) {
#pragma omp parallel if (parallel)
    {
      Scratch sc(tile, L.D);
      std::vector<float> dq_acc(dq == nullptr ? 0 : L.group * L.T * sc.dp);
#pragma omp for schedule(dynamic, 1)
      for (int64_t bg = 0; bg < pairs; ++bg) {
        FusedBackwardItem(L, q, k, v, dout, lse, delta.data(), dq, dk, dv, bg / L.Hkv, bg % L.Hkv,
                          tile, sc, dq_acc);
      }
    }
    return OpStatus::Ok();
  }
  if (dk != nullptr || dv != nullptr) {
    const int64_t k_tiles = (L.kv_len + tile - 1) / tile;
    const int64_t items = pairs * k_tiles;
#pragma omp parallel if (parallel)
    {
      Scratch sc(tile, L.D);
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) {
        const int64_t kt = item % k_tiles;  // early key tiles have the most queries
        const int64_t bg = item / k_tiles;
        KeyValueGradItem(L, q, k, v, dout, lse, delta.data(), dk, dv, bg / L.Hkv, bg % L.Hkv,
                         kt * tile, tile, sc, /*dq_acc=*/nullptr);
      }
    }
  }
  if (dq != nullptr) {
    const int64_t q_tiles = (L.T + tile - 1) / tile;
    const int64_t items = B * L.H * q_tiles;
#pragma omp parallel if (parallel)
    {
      Scratch sc(tile, L.D);
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) {
        const int64_t qt = q_tiles - 1 - item % q_tiles;
        const int64_t bh = item / q_tiles;
        QueryGradItem(L, q, k, v, dout, lse, delta.data(), dq, bh / L.H, bh % L.H, qt * tile, tile,
                      sc);
      }
    }
  }
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::AttentionForward(const float* q, const float* k, const float* v, float* o,
                                          float* lse, const AttentionShape& shape) {
  return AttentionForwardTiled(q, k, v, o, lse, shape, kAttentionTile);
}

OpStatus CpuBackendImpl::AttentionBackward(const float* q, const float* k, const float* v,
                                           const float* o, const float* lse, const float* dout,
                                           float* dq, float* dk, float* dv,
                                           const AttentionShape& shape) {
  return AttentionBackwardTiled(q, k, v, o, lse, dout, dq, dk, dv, shape, kAttentionTile);
}

}  // namespace qtrain::kernels::cpu
