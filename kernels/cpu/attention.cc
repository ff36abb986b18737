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
// operations in both schedules and at any thread count. The operands are copied once per call
// into per-head buffers (Operands) that the tile products read in place.
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

// The operands, copied once per call into head-major buffers that the tile GEMMs read in place
// (no copies per tile pair):
//   kt, vt [B, Hkv, D, Rp]: K and V transposed, keys padded with zeros to Rp (a lane multiple
//                           past kv_len + kTileLanes, so a tile's padded columns stay in the row);
//   k, v   [B, Hkv, Rp, dp]: K and V rows, head dims padded with zeros to dp;
//   q, dout [B, H, T, dp]:  the queries and output gradients (backward only).
// The storage is the calling thread's and is reused by its next call (grow-only: a fresh
// allocation per call costs more in page faults than the copies themselves).
struct Operands {
  Operands(const Layout& L, int64_t batch)
      : B(batch), dp(RoundUpToLanes(L.D)), Rp(RoundUpToLanes(L.kv_len) + kTileLanes) {}

  // Fills kt, k and v (and vt with transposed_v, q and dout with query_side) from the inputs.
  void Load(const Layout& L, const float* q_in, const float* k_in, const float* v_in,
            const float* dout_in, bool transposed_v, bool query_side) {
    static thread_local Storage storage;
    const int64_t kv_size = B * L.Hkv * Rp * dp, kvt_size = B * L.Hkv * L.D * Rp;
    kt = storage.kt.Get(kvt_size);
    k = storage.k.Get(kv_size);
    v = storage.v.Get(kv_size);
    vt = transposed_v ? storage.vt.Get(kvt_size) : nullptr;
    q = query_side ? storage.q.Get(B * L.H * L.T * dp) : nullptr;
    dout = query_side ? storage.dout.Get(B * L.H * L.T * dp) : nullptr;
    const bool parallel = WorthParallel(B * L.kv_len * L.Hkv * L.D);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t bg = 0; bg < B * L.Hkv; ++bg) {
      const int64_t b = bg / L.Hkv, g = bg % L.Hkv;
      for (int64_t j = 0; j < Rp; ++j) {
        const bool key = j < L.kv_len;
        PadRow(key ? k_in + L.KRow(b, j, g) : nullptr, L.D, k + KvRow(bg, j));
        PadRow(key ? v_in + L.KRow(b, j, g) : nullptr, L.D, v + KvRow(bg, j));
      }
      Transpose(k_in, L, b, g, kt + KvtRow(L, bg, 0));
      if (transposed_v) Transpose(v_in, L, b, g, vt + KvtRow(L, bg, 0));
    }
    if (!query_side) return;
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t bh = 0; bh < B * L.H; ++bh) {
      const int64_t b = bh / L.H, h = bh % L.H;
      for (int64_t t = 0; t < L.T; ++t) {
        PadRow(q_in + L.QRow(b, t, h), L.D, q + QueryRow(L, bh, t));
        PadRow(dout_in + L.QRow(b, t, h), L.D, dout + QueryRow(L, bh, t));
      }
    }
  }

  int64_t KvRow(int64_t bg, int64_t j) const { return (bg * Rp + j) * dp; }
  int64_t KvtRow(const Layout& L, int64_t bg, int64_t i) const { return (bg * L.D + i) * Rp; }
  int64_t QueryRow(const Layout& L, int64_t bh, int64_t t) const { return (bh * L.T + t) * dp; }

  int64_t B, dp, Rp;
  float *kt = nullptr, *vt = nullptr, *k = nullptr, *v = nullptr, *q = nullptr, *dout = nullptr;

 private:
  struct Buffer {
    float* Get(int64_t n) {
      if (static_cast<int64_t>(data.size()) < n) data.resize(n);
      return data.data();
    }
    std::vector<float> data;
  };
  struct Storage {
    Buffer kt, vt, k, v, q, dout;
  };

  // dst[0 .. dp) = src[0 .. d) then zeros (all zeros without src).
  void PadRow(const float* src, int64_t d, float* dst) const {
    if (src != nullptr) std::copy(src, src + d, dst);
    std::fill(dst + (src != nullptr ? d : 0), dst + dp, 0.0f);
  }

  // dst[i * Rp + j] = row j of KV head g of x (element i) for j < kv_len, zeros up to Rp.
  void Transpose(const float* x, const Layout& L, int64_t b, int64_t g, float* dst) const {
    for (int64_t j = 0; j < L.kv_len; ++j) {
      const float* row = x + L.KRow(b, j, g);
      for (int64_t i = 0; i < L.D; ++i) dst[i * Rp + j] = row[i];
    }
    for (int64_t i = 0; i < L.D; ++i) std::fill(dst + i * Rp + L.kv_len, dst + (i + 1) * Rp, 0.0f);
  }
};

// Per-thread tile buffers, allocated once per parallel region: [tile x tp] score tiles (tp =
// tile rounded up to the lanes) and [tile x dp] accumulators.
struct Scratch {
  Scratch(int64_t tile, int64_t dp)
      : tp(RoundUpToLanes(tile)),
        s(tile * tp),
        ds(tile * tp),
        acc(tile * dp),
        acc2(tile * dp),
        row_max(tile),
        row_sum(tile) {}
  int64_t tp;
  std::vector<float> s, ds, acc, acc2, row_max, row_sum;
};

// Keys j <= past + t are visible to query t: the first `Visible` columns of row r of the tile
// of queries from t0 and keys from j0, nk wide.
int64_t Visible(const Layout& L, int64_t t0, int64_t r, int64_t j0, int64_t nk) {
  return std::clamp<int64_t>(L.past + t0 + r - j0 + 1, 0, nk);
}

// sc.s = A k^T (unscaled) for nq query rows (A(r, i) = a[r * lda + i]) and keys [j0, j0+nk) of
// (b, g) = bg. Returns the padded key count (columns up to the lane multiple).
int64_t Scores(const Layout& L, const Operands& op, Scratch& sc, const float* a, int64_t lda,
               int64_t nq, int64_t bg, int64_t j0, int64_t nk) {
  const int64_t nkp = RoundUpToLanes(nk);
  TileGemm(/*accumulate=*/false, nq, nkp, L.D, a, lda, 1, op.kt + op.KvtRow(L, bg, 0) + j0, op.Rp,
           sc.s.data(), sc.tp);
  return nkp;
}

void ForwardItem(const Layout& L, const Operands& op, const float* q, float* o, float* lse,
                 int64_t b, int64_t h, int64_t t0, int64_t tile, Scratch& sc) {
  const int64_t bg = b * L.Hkv + h / L.group;
  const int64_t nq = std::min(tile, L.T - t0);
  const int64_t dp = op.dp;
  std::fill(sc.acc.begin(), sc.acc.end(), 0.0f);
  std::fill(sc.row_max.begin(), sc.row_max.end(), kNegInf);
  std::fill(sc.row_sum.begin(), sc.row_sum.end(), 0.0f);
  const float* qt = q + L.QRow(b, t0, h);    // rows H * D apart
  const int64_t key_end = L.past + t0 + nq;  // exclusive: the last query's visible keys
  for (int64_t j0 = 0; j0 < key_end; j0 += tile) {
    const int64_t nk = std::min(tile, key_end - j0);
    const int64_t nkp = Scores(L, op, sc, qt, L.H * L.D, nq, bg, j0, nk);
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
    TileGemm(/*accumulate=*/true, nq, dp, nk, sc.s.data(), sc.tp, 1, op.v + op.KvRow(bg, j0), dp,
             sc.acc.data(), dp);
  }
  for (int64_t r = 0; r < nq; ++r) {
    // Every query sees key 0, so row_sum >= 1.
    const float inv = 1.0f / sc.row_sum[r];
    float* out = o + L.QRow(b, t0 + r, h);
    const float* acc = sc.acc.data() + r * dp;
    for (int64_t i = 0; i < L.D; ++i) out[i] = acc[i] * inv;
    lse[L.LseIndex(b, h, t0 + r)] = sc.row_max[r] + std::log(sc.row_sum[r]);
  }
}

// The query tile [t0, t0+nq) of head h of batch b in the backward: its rows of q and dout (dp
// apart), lse and delta.
struct QueryTile {
  QueryTile(const Layout& L, const Operands& op, const float* lse, const float* delta, int64_t b,
            int64_t h, int64_t t0, int64_t tile)
      : t0(t0),
        nq(std::min(tile, L.T - t0)),
        q(op.q + op.QueryRow(L, b * L.H + h, t0)),
        dout(op.dout + op.QueryRow(L, b * L.H + h, t0)),
        lse(lse + L.LseIndex(b, h, t0)),
        delta(delta + L.LseIndex(b, h, t0)) {}
  int64_t t0, nq;
  const float *q, *dout, *lse, *delta;
};

// sc.s = P and sc.ds = scale * dS = scale * P * (dout v^T - delta) for a query tile and the key
// tile [j0, j0+nk) of (b, g) = bg, [nq, nk] with row stride tp.
void ProbabilitiesAndScoreGrads(const Layout& L, const Operands& op, Scratch& sc,
                                const QueryTile& qt, int64_t bg, int64_t j0, int64_t nk) {
  const int64_t nkp = Scores(L, op, sc, qt.q, op.dp, qt.nq, bg, j0, nk);
  TileGemm(/*accumulate=*/false, qt.nq, nkp, L.D, qt.dout, op.dp, 1,
           op.vt + op.KvtRow(L, bg, 0) + j0, op.Rp, sc.ds.data(), sc.tp);
  for (int64_t r = 0; r < qt.nq; ++r) {
    SoftmaxBackwardRow(sc.s.data() + r * sc.tp, sc.ds.data() + r * sc.tp, nkp,
                       Visible(L, qt.t0, r, j0, nk), L.scale, qt.lse[r], qt.delta[r]);
  }
}

// dk/dv of key rows [j0, j0+nk) of KV head g, over the group's query heads and query tiles.
// With dq_acc (the fused schedule) it also adds each tile pair's dS k into dq_acc, the
// [group, T, dp] dq accumulator of this (b, g), in the depth the split schedule's QueryGradItem
// uses for that pair.
void KeyValueGradItem(const Layout& L, const Operands& op, const float* lse, const float* delta,
                      float* dk, float* dv, int64_t b, int64_t g, int64_t j0, int64_t tile,
                      Scratch& sc, float* dq_acc) {
  const int64_t dp = op.dp, bg = b * L.Hkv + g;
  const int64_t nk = std::min(tile, L.kv_len - j0);
  float* dk_acc = sc.acc.data();   // [nk, dp]
  float* dv_acc = sc.acc2.data();  // [nk, dp]
  std::fill(sc.acc.begin(), sc.acc.end(), 0.0f);
  std::fill(sc.acc2.begin(), sc.acc2.end(), 0.0f);
  // The first query that sees key j0 is at t = j0 - past_len.
  const int64_t first_t = std::max<int64_t>(0, j0 - L.past);
  for (int64_t h = g * L.group; h < (g + 1) * L.group; ++h) {
    for (int64_t t0 = first_t / tile * tile; t0 < L.T; t0 += tile) {
      const QueryTile qt(L, op, lse, delta, b, h, t0, tile);
      ProbabilitiesAndScoreGrads(L, op, sc, qt, bg, j0, nk);
      // dv += P^T dout and dk += (scale dS)^T q: A is the transposed view of the [nq, nk] tile.
      TileGemm(/*accumulate=*/true, nk, dp, qt.nq, sc.s.data(), 1, sc.tp, qt.dout, dp, dv_acc, dp);
      TileGemm(/*accumulate=*/true, nk, dp, qt.nq, sc.ds.data(), 1, sc.tp, qt.q, dp, dk_acc, dp);
      if (dq_acc != nullptr) {
        // dq += (scale dS) k over the keys this query tile can see.
        const int64_t depth = std::min(nk, L.past + t0 + qt.nq - j0);
        float* dst = dq_acc + ((h - g * L.group) * L.T + t0) * dp;
        TileGemm(/*accumulate=*/true, qt.nq, dp, depth, sc.ds.data(), sc.tp, 1,
                 op.k + op.KvRow(bg, j0), dp, dst, dp);
      }
    }
  }
  for (int64_t c = 0; c < nk; ++c) {
    if (dk != nullptr) {
      float* dst = dk + L.KRow(b, j0 + c, g);
      for (int64_t i = 0; i < L.D; ++i) dst[i] += dk_acc[c * dp + i];
    }
    if (dv != nullptr) {
      float* dst = dv + L.KRow(b, j0 + c, g);
      for (int64_t i = 0; i < L.D; ++i) dst[i] += dv_acc[c * dp + i];
    }
  }
}

// The fused schedule's item: dq, dk and dv of batch b and KV head g. dq_acc: [group, T, dp].
void FusedBackwardItem(const Layout& L, const Operands& op, const float* lse, const float* delta,
                       float* dq, float* dk, float* dv, int64_t b, int64_t g, int64_t tile,
                       Scratch& sc, std::vector<float>& dq_acc) {
  std::fill(dq_acc.begin(), dq_acc.end(), 0.0f);
  for (int64_t j0 = 0; j0 < L.kv_len; j0 += tile) {
    KeyValueGradItem(L, op, lse, delta, dk, dv, b, g, j0, tile, sc,
                     dq == nullptr ? nullptr : dq_acc.data());
  }
  if (dq == nullptr) return;
  for (int64_t h = g * L.group; h < (g + 1) * L.group; ++h) {
    for (int64_t t = 0; t < L.T; ++t) {
      float* dst = dq + L.QRow(b, t, h);
      const float* acc = dq_acc.data() + ((h - g * L.group) * L.T + t) * op.dp;
      for (int64_t i = 0; i < L.D; ++i) dst[i] += acc[i];
    }
  }
}

// dq of query rows [t0, t0+nq) of head h (the split schedule).
void QueryGradItem(const Layout& L, const Operands& op, const float* lse, const float* delta,
                   float* dq, int64_t b, int64_t h, int64_t t0, int64_t tile, Scratch& sc) {
  const int64_t dp = op.dp, bg = b * L.Hkv + h / L.group;
  const QueryTile qt(L, op, lse, delta, b, h, t0, tile);
  float* dq_acc = sc.acc.data();  // [nq, dp]
  std::fill(sc.acc.begin(), sc.acc.end(), 0.0f);
  const int64_t key_end = L.past + t0 + qt.nq;
  for (int64_t j0 = 0; j0 < key_end; j0 += tile) {
    const int64_t nk = std::min(tile, key_end - j0);
    ProbabilitiesAndScoreGrads(L, op, sc, qt, bg, j0, nk);
    // dq += (scale dS) k
    TileGemm(/*accumulate=*/true, qt.nq, dp, nk, sc.ds.data(), sc.tp, 1, op.k + op.KvRow(bg, j0),
             dp, dq_acc, dp);
  }
  for (int64_t r = 0; r < qt.nq; ++r) {
    float* dst = dq + L.QRow(b, t0 + r, h);
    for (int64_t i = 0; i < L.D; ++i) dst[i] += dq_acc[r * dp + i];
  }
}

}  // namespace

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
  Operands op(L, shape.batch);
  op.Load(L, q, k, v, nullptr, /*transposed_v=*/false, /*query_side=*/false);
  const int64_t q_tiles = (L.T + tile - 1) / tile;
  const int64_t items = shape.batch * L.H * q_tiles;
#pragma omp parallel if (WorthParallel(Work(L, shape.batch)))
  {
    Scratch sc(tile, op.dp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      // Longest (last) query tiles first: better balance under the causal mask.
      const int64_t qt = q_tiles - 1 - item % q_tiles;
      const int64_t bh = item / q_tiles;
      ForwardItem(L, op, q, o, lse, bh / L.H, bh % L.H, qt * tile, tile, sc);
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
  Operands op(L, B);
  op.Load(L, q, k, v, dout, /*transposed_v=*/true, /*query_side=*/true);
  const int64_t pairs = B * L.Hkv;
  const bool parallel = WorthParallel(Work(L, B));
  const int64_t threads = parallel ? omp_get_max_threads() : 1;
  const bool fused = schedule == AttentionBackwardSchedule::kFused ||
                     (schedule == AttentionBackwardSchedule::kAuto &&
                      (pairs % threads == 0 || pairs >= 4 * threads));
  if (fused) {
#pragma omp parallel if (parallel)
    {
      Scratch sc(tile, op.dp);
      std::vector<float> dq_acc(dq == nullptr ? 0 : L.group * L.T * op.dp);
#pragma omp for schedule(dynamic, 1)
      for (int64_t bg = 0; bg < pairs; ++bg) {
        FusedBackwardItem(L, op, lse, delta.data(), dq, dk, dv, bg / L.Hkv, bg % L.Hkv, tile, sc,
                          dq_acc);
      }
    }
    return OpStatus::Ok();
  }
  if (dk != nullptr || dv != nullptr) {
    const int64_t k_tiles = (L.kv_len + tile - 1) / tile;
    const int64_t items = pairs * k_tiles;
#pragma omp parallel if (parallel)
    {
      Scratch sc(tile, op.dp);
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) {
        const int64_t kt = item % k_tiles;  // early key tiles have the most queries
        const int64_t bg = item / k_tiles;
        KeyValueGradItem(L, op, lse, delta.data(), dk, dv, bg / L.Hkv, bg % L.Hkv, kt * tile, tile,
                         sc, /*dq_acc=*/nullptr);
      }
    }
  }
  if (dq != nullptr) {
    const int64_t q_tiles = (L.T + tile - 1) / tile;
    const int64_t items = B * L.H * q_tiles;
#pragma omp parallel if (parallel)
    {
      Scratch sc(tile, op.dp);
#pragma omp for schedule(dynamic, 1)
      for (int64_t item = 0; item < items; ++item) {
        const int64_t qt = q_tiles - 1 - item % q_tiles;
        const int64_t bh = item / q_tiles;
        QueryGradItem(L, op, lse, delta.data(), dq, bh / L.H, bh % L.H, qt * tile, tile, sc);
      }
    }
  }
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::AttentionForwardF32(const float* q, const float* k, const float* v,
                                             float* o, float* lse, const AttentionShape& shape) {
  return AttentionForwardTiled(q, k, v, o, lse, shape, kAttentionForwardTile);
}

OpStatus CpuBackendImpl::AttentionBackwardF32(const float* q, const float* k, const float* v,
                                              const float* o, const float* lse, const float* dout,
                                              float* dq, float* dk, float* dv,
                                              const AttentionShape& shape) {
  return AttentionBackwardTiled(q, k, v, o, lse, dout, dq, dk, dv, shape, kAttentionBackwardTile);
}

}  // namespace qtrain::kernels::cpu
