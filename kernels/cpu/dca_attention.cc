// Dual Chunk Attention forward, tile by tile with one online softmax over all key tiles (no
// T x T buffer; memory linear in T). Work items are (b, h, query tile), as in attention.cc.
//
// For a query tile and a key tile, each of the three query rotations that some (query, key)
// pair of the tile needs is multiplied with the key tile once; each row of the tile's scores is
// then assembled from three contiguous column ranges (keys of chunks up to the query's chunk - 2
// from the inter scores, of chunk - 1 from the successive scores, of the query's own chunk from
// the intra scores) before the online softmax, since a row's chunk boundaries fall at fixed key
// offsets.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/tile_math.h"
#include "kernels/cpu/validate.h"

namespace qtrain::kernels::cpu {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr const char* kOp = "DcaAttentionForward";

enum Variant { kIntra = 0, kSucc = 1, kInter = 2 };

OpStatus ValidateDca(const DcaAttentionShape& s) {
  const AttentionShape attention{.batch = s.batch,
                                 .seq_len = s.seq_len,
                                 .past_len = s.past_len,
                                 .kv_capacity = s.kv_capacity,
                                 .num_heads = s.num_heads,
                                 .num_kv_heads = s.num_kv_heads,
                                 .head_dim = s.head_dim,
                                 .softmax_scale = s.softmax_scale};
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateAttention(kOp, attention));
  return CheckPositive(kOp, "chunk_len", s.chunk_len);
}

struct Layout {
  explicit Layout(const DcaAttentionShape& s)
      : T(s.seq_len),
        R(s.kv_rows()),
        H(s.num_heads),
        Hkv(s.num_kv_heads),
        D(s.head_dim),
        group(s.num_heads / s.num_kv_heads),
        past(s.past_len),
        kv_len(s.kv_len()),
        chunk(s.chunk_len),
        dp(RoundUpToLanes(s.head_dim)),
        Rp(RoundUpToLanes(s.kv_len()) + kTileLanes),
        scale(s.softmax_scale > 0.0f ? s.softmax_scale
                                     : 1.0f / std::sqrt(static_cast<float>(s.head_dim))) {}
  int64_t QRow(int64_t b, int64_t t, int64_t h) const { return ((b * T + t) * H + h) * D; }
  int64_t KRow(int64_t b, int64_t j, int64_t g) const { return ((b * R + j) * Hkv + g) * D; }
  int64_t KtRow(int64_t bg, int64_t i) const { return (bg * D + i) * Rp; }
  int64_t VRow(int64_t bg, int64_t j) const { return (bg * Rp + j) * dp; }

  int64_t T, R, H, Hkv, D, group, past, kv_len, chunk, dp, Rp;
  float scale;
};

// K transposed [B*Hkv, D, Rp] and V padded [B*Hkv, Rp, dp] (zeros past kv_len), so that the tile
// products read them in place. Per calling thread, grow-only.
struct KeyValues {
  float* kt = nullptr;
  float* v = nullptr;

  void Load(const Layout& L, int64_t batch, const float* k_in, const float* v_in) {
    static thread_local std::vector<float> kt_storage, v_storage;
    const int64_t pairs = batch * L.Hkv;
    if (static_cast<int64_t>(kt_storage.size()) < pairs * L.D * L.Rp) {
      kt_storage.resize(pairs * L.D * L.Rp);
    }
    if (static_cast<int64_t>(v_storage.size()) < pairs * L.Rp * L.dp) {
      v_storage.resize(pairs * L.Rp * L.dp);
    }
    kt = kt_storage.data();
    v = v_storage.data();
#pragma omp parallel for schedule(static) if (WorthParallel(batch * L.kv_len * L.Hkv * L.D))
    for (int64_t bg = 0; bg < pairs; ++bg) {
      const int64_t b = bg / L.Hkv, g = bg % L.Hkv;
      float* dst_t = kt + L.KtRow(bg, 0);
      for (int64_t j = 0; j < L.kv_len; ++j) {
        const float* row = k_in + L.KRow(b, j, g);
        for (int64_t i = 0; i < L.D; ++i) dst_t[i * L.Rp + j] = row[i];
      }
      for (int64_t i = 0; i < L.D; ++i) {
        std::fill(dst_t + i * L.Rp + L.kv_len, dst_t + (i + 1) * L.Rp, 0.0f);
      }
      for (int64_t j = 0; j < L.Rp; ++j) {
        float* dst = v + L.VRow(bg, j);
        const int64_t n = j < L.kv_len ? L.D : 0;
        if (n > 0) std::copy(v_in + L.KRow(b, j, g), v_in + L.KRow(b, j, g) + L.D, dst);
        std::fill(dst + n, dst + L.dp, 0.0f);
      }
    }
  }
};

struct Scratch {
  Scratch(int64_t tile, int64_t dp)
      : tp(RoundUpToLanes(tile)),
        s(tile * tp),
        variant{std::vector<float>(tile * tp), std::vector<float>(tile * tp),
                std::vector<float>(tile * tp)},
        acc(tile * dp),
        row_max(tile),
        row_sum(tile) {}
  int64_t tp;
  std::vector<float> s;
  std::vector<float> variant[3];
  std::vector<float> acc, row_max, row_sum;
};

// Does any query chunk in [q_lo, q_hi] pair with a key chunk in [k_lo, k_hi] through `v`?
bool Needed(Variant v, int64_t q_lo, int64_t q_hi, int64_t k_lo, int64_t k_hi) {
  switch (v) {
    case kIntra:
      return q_lo <= k_hi && k_lo <= q_hi;
    case kSucc:
      return q_lo - 1 <= k_hi && k_lo <= q_hi - 1;
    case kInter:
      return k_lo <= q_hi - 2;
  }
  return false;
}

void ForwardItem(const Layout& L, const KeyValues& kv, const float* const q[3], float* o,
                 float* lse, int64_t b, int64_t h, int64_t t0, int64_t tile, Scratch& sc) {
  const int64_t bg = b * L.Hkv + h / L.group;
  const int64_t nq = std::min(tile, L.T - t0);
  const int64_t dp = L.dp;
  std::fill(sc.acc.begin(), sc.acc.end(), 0.0f);
  std::fill(sc.row_max.begin(), sc.row_max.end(), kNegInf);
  std::fill(sc.row_sum.begin(), sc.row_sum.end(), 0.0f);
  const int64_t first = L.past + t0;  // position of the tile's first query
  const int64_t q_lo = first / L.chunk, q_hi = (first + nq - 1) / L.chunk;
  const int64_t key_end = first + nq;
  for (int64_t j0 = 0; j0 < key_end; j0 += tile) {
    const int64_t nk = std::min(tile, key_end - j0);
    const int64_t nkp = RoundUpToLanes(nk);
    const int64_t k_lo = j0 / L.chunk, k_hi = (j0 + nk - 1) / L.chunk;
    for (int v = 0; v < 3; ++v) {
      if (!Needed(static_cast<Variant>(v), q_lo, q_hi, k_lo, k_hi)) continue;
      TileGemm(/*accumulate=*/false, nq, nkp, L.D, q[v] + L.QRow(b, t0, h), L.H * L.D, 1,
               kv.kt + L.KtRow(bg, 0) + j0, L.Rp, sc.variant[v].data(), sc.tp);
    }
    for (int64_t r = 0; r < nq; ++r) {
      const int64_t i = first + r, ci = i / L.chunk;
      // Columns [0, succ_begin) inter, [succ_begin, intra_begin) successive, the rest intra.
      const int64_t succ_begin = std::clamp<int64_t>((ci - 1) * L.chunk - j0, 0, nkp);
      const int64_t intra_begin = std::clamp<int64_t>(ci * L.chunk - j0, 0, nkp);
      float* row = sc.s.data() + r * sc.tp;
      const int64_t off = r * sc.tp;
      std::copy(sc.variant[kInter].data() + off, sc.variant[kInter].data() + off + succ_begin, row);
      std::copy(sc.variant[kSucc].data() + off + succ_begin,
                sc.variant[kSucc].data() + off + intra_begin, row + succ_begin);
      std::copy(sc.variant[kIntra].data() + off + intra_begin,
                sc.variant[kIntra].data() + off + nkp, row + intra_begin);
      const int64_t visible = std::clamp<int64_t>(i - j0 + 1, 0, nk);
      const float correction =
          OnlineSoftmaxRow(row, nkp, visible, L.scale, &sc.row_max[r], &sc.row_sum[r]);
      if (correction != 1.0f) {
        float* acc = sc.acc.data() + r * dp;
        for (int64_t e = 0; e < dp; ++e) acc[e] *= correction;
      }
    }
    TileGemm(/*accumulate=*/true, nq, dp, nk, sc.s.data(), sc.tp, 1, kv.v + L.VRow(bg, j0), dp,
             sc.acc.data(), dp);
  }
  for (int64_t r = 0; r < nq; ++r) {
    const float inv = 1.0f / sc.row_sum[r];  // every query sees key 0: row_sum >= 1
    float* out = o + L.QRow(b, t0 + r, h);
    const float* acc = sc.acc.data() + r * dp;
    for (int64_t e = 0; e < L.D; ++e) out[e] = acc[e] * inv;
    lse[(b * L.H + h) * L.T + t0 + r] = sc.row_max[r] + std::log(sc.row_sum[r]);
  }
}

}  // namespace

OpStatus DcaAttentionForwardTiled(const float* q_intra, const float* q_succ, const float* q_inter,
                                  const float* k, const float* v, float* o, float* lse,
                                  const DcaAttentionShape& shape, int64_t tile) {
  QTRAIN_KERNEL_RETURN_IF_ERROR(ValidateDca(shape));
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckPositive(kOp, "tile", tile));
  if (shape.seq_len == 0) return OpStatus::Ok();
  for (const void* p :
       {static_cast<const void*>(q_intra), static_cast<const void*>(q_succ),
        static_cast<const void*>(q_inter), static_cast<const void*>(k), static_cast<const void*>(v),
        static_cast<const void*>(o), static_cast<const void*>(lse)}) {
    if (p == nullptr) {
      return OpStatus::Error(std::string(kOp) +
                             ": q_intra, q_succ, q_inter, k, v, o and lse are required");
    }
  }
  const Layout L(shape);
  KeyValues kv;
  kv.Load(L, shape.batch, k, v);
  const float* const q[3] = {q_intra, q_succ, q_inter};
  const int64_t q_tiles = (L.T + tile - 1) / tile;
  const int64_t items = shape.batch * L.H * q_tiles;
#pragma omp parallel if (WorthParallel(shape.batch * L.H * L.T * L.kv_len * L.D))
  {
    Scratch sc(tile, L.dp);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t qt = q_tiles - 1 - item % q_tiles;  // longest rows first
      const int64_t bh = item / q_tiles;
      ForwardItem(L, kv, q, o, lse, bh / L.H, bh % L.H, qt * tile, tile, sc);
    }
  }
  return OpStatus::Ok();
}

OpStatus CpuBackendImpl::DcaAttentionForwardF32(const float* q_intra, const float* q_succ,
                                                const float* q_inter, const float* k,
                                                const float* v, float* o, float* lse,
                                                const DcaAttentionShape& shape) {
  return DcaAttentionForwardTiled(q_intra, q_succ, q_inter, k, v, o, lse, shape,
                                  kAttentionForwardTile);
}

}  // namespace qtrain::kernels::cpu
