// One Qwen2 decoder layer, forward and backward (docs/model-math.md#forward-pass, #backward-pass):
//   a = RMSNorm(x); q,k,v = a W^T + b; RoPE(q, k); o = attention(q, k, v);
//   mid = x + o W_o^T; m = RMSNorm(mid); out = mid + (silu(m W_g^T) * m W_u^T) W_d^T.
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/model/model_internal.h"

namespace qtrain::model {
namespace {

kernels::AttentionShape AttentionShapeFor(const ModelConfig& c, int64_t batch, int64_t seq_len) {
  kernels::AttentionShape s;
  s.batch = batch;
  s.seq_len = seq_len;
  s.num_heads = c.num_heads;
  s.num_kv_heads = c.num_kv_heads;
  s.head_dim = c.head_dim;
  return s;
}

kernels::RopeShape RopeShapeFor(const ModelConfig& c, int64_t batch, int64_t seq_len,
                                int64_t heads) {
  kernels::RopeShape s;
  s.batch = batch;
  s.seq_len = seq_len;
  s.num_heads = heads;
  s.head_dim = c.head_dim;
  return s;
}

}  // namespace

absl::Status DcaRotateAndAttend(kernels::Backend& b, const ModelConfig& c, const RopeParams& rope,
                                const DcaPass& dca, const DcaAttend& in) {
  const int64_t n = in.seq_len;
  kernels::RopeShape q_shape = RopeShapeFor(c, 1, n, c.num_heads);
  q_shape.batch = in.batch;
  kernels::RopeShape k_shape = q_shape;
  k_shape.num_heads = c.num_kv_heads;
  // Keys once at j mod s; the query three times (q in place last: the others read it first).
  k_shape.positions = dca.positions.get();
  QTRAIN_RETURN_IF_OP_ERROR(
      b.RopeForward(in.k_new, in.k_new, k_shape, rope.inv_freq, rope.attention_factor));
  q_shape.positions = dca.succ_positions.get();
  QTRAIN_RETURN_IF_OP_ERROR(
      b.RopeForward(in.q, in.q_succ, q_shape, rope.inv_freq, rope.attention_factor));
  q_shape.positions = dca.inter_positions.get();
  QTRAIN_RETURN_IF_OP_ERROR(
      b.RopeForward(in.q, in.q_inter, q_shape, rope.inv_freq, rope.attention_factor));
  q_shape.positions = dca.positions.get();
  QTRAIN_RETURN_IF_OP_ERROR(
      b.RopeForward(in.q, in.q, q_shape, rope.inv_freq, rope.attention_factor));
  const kernels::DcaAttentionShape shape{.batch = in.batch,
                                         .seq_len = n,
                                         .past_len = in.past,
                                         .kv_capacity = in.kv_capacity,
                                         .num_heads = c.num_heads,
                                         .num_kv_heads = c.num_kv_heads,
                                         .head_dim = c.head_dim,
                                         .chunk_len = dca.chunk_len,
                                         .softmax_scale = dca.softmax_scale};
  QTRAIN_RETURN_IF_OP_ERROR(
      b.DcaAttentionForward(in.q, in.q_succ, in.q_inter, in.k, in.v, in.out, in.lse, shape));
  return absl::OkStatus();
}

namespace {
absl::Status DcaAttention(kernels::Backend& b, const ModelConfig& c, const RopeParams& rope,
                          const DcaPass& dca, int64_t batch, int64_t seq_len, kernels::Tensor q,
                          kernels::Tensor k, kernels::ConstTensor v, LayerActivations& a) {
  return DcaRotateAndAttend(b, c, rope, dca,
                            {.batch = batch,
                             .seq_len = seq_len,
                             .past = 0,
                             .kv_capacity = 0,
                             .q = q,
                             .q_succ = a.q_succ.get(),
                             .q_inter = a.q_inter.get(),
                             .k_new = k,
                             .k = k,
                             .v = v,
                             .out = a.attn.get(),
                             .lse = a.lse.get()});
}
}  // namespace

absl::Status LayerActivations::Resize(kernels::Backend& b, const ModelConfig& c,
                                      kernels::DType dtype, int64_t batch, int64_t seq_len) {
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  auto name_of = [](const char* name) { return absl::StrCat("layer activations (", name, ")"); };
  auto resize = [&](TensorBuffer& buf, int64_t width, const char* name) {
    return buf.Resize(b, dtype, {batch, seq_len, width}, name_of(name));
  };
  auto resize_f32 = [&](Buffer<float>& buf, int64_t width, const char* name) {
    return buf.Resize(b, {batch, seq_len, width}, name_of(name));
  };
  QTRAIN_RETURN_IF_ERROR(resize_f32(rstd_in, 1, "rstd_in"));
  QTRAIN_RETURN_IF_ERROR(resize(normed_in, d, "normed_in"));
  QTRAIN_RETURN_IF_ERROR(resize(q, c.q_dim(), "q"));
  QTRAIN_RETURN_IF_ERROR(resize(k, c.kv_dim(), "k"));
  QTRAIN_RETURN_IF_ERROR(resize(v, c.kv_dim(), "v"));
  QTRAIN_RETURN_IF_ERROR(resize(attn, c.q_dim(), "attn"));
  QTRAIN_RETURN_IF_ERROR(resize_f32(lse, c.num_heads, "lse"));
  QTRAIN_RETURN_IF_ERROR(resize(mid, d, "mid"));
  QTRAIN_RETURN_IF_ERROR(resize_f32(rstd_post, 1, "rstd_post"));
  QTRAIN_RETURN_IF_ERROR(resize(normed_post, d, "normed_post"));
  QTRAIN_RETURN_IF_ERROR(resize(gate, f, "gate"));
  QTRAIN_RETURN_IF_ERROR(resize(up, f, "up"));
  QTRAIN_RETURN_IF_ERROR(resize(act, f, "act"));
  if (c.dca.enabled()) {
    QTRAIN_RETURN_IF_ERROR(resize(q_succ, c.q_dim(), "q successive"));
    QTRAIN_RETURN_IF_ERROR(resize(q_inter, c.q_dim(), "q inter"));
  }
  return absl::OkStatus();
}

absl::Status BackwardScratch::Resize(kernels::Backend& b, const ModelConfig& c,
                                     kernels::DType dtype, int64_t batch, int64_t seq_len) {
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  const std::string what = "backward scratch";
  for (TensorBuffer* buf : {&d_mid, &d_normed}) {
    QTRAIN_RETURN_IF_ERROR(buf->Resize(b, dtype, {batch, seq_len, d}, what));
  }
  for (TensorBuffer* buf : {&d_attn, &dq, &dq_pre}) {
    QTRAIN_RETURN_IF_ERROR(buf->Resize(b, dtype, {batch, seq_len, c.q_dim()}, what));
  }
  for (TensorBuffer* buf : {&dk, &dk_pre, &dv}) {
    QTRAIN_RETURN_IF_ERROR(buf->Resize(b, dtype, {batch, seq_len, c.kv_dim()}, what));
  }
  for (TensorBuffer* buf : {&d_act, &d_gate, &d_up}) {
    QTRAIN_RETURN_IF_ERROR(buf->Resize(b, dtype, {batch, seq_len, f}, what));
  }
  return absl::OkStatus();
}

absl::Status LayerForward(kernels::Backend& b, const ModelConfig& c, const WeightView& w,
                          const RopeParams& rope, int64_t batch, int64_t seq_len,
                          kernels::ConstTensor x_in, LayerActivations& a, kernels::Tensor x_out,
                          const DcaPass* dca) {
  const int64_t rows = batch * seq_len;
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  // Attention block.
  QTRAIN_RETURN_IF_OP_ERROR(
      b.RmsNormForward(x_in, w.input_norm, eps, a.normed_in.get(), a.rstd_in.get(), rows, d));
  QTRAIN_RETURN_IF_OP_ERROR(
      b.LinearForward(a.normed_in.get(), w.q_weight, w.q_bias, a.q.get(), rows, d, c.q_dim()));
  QTRAIN_RETURN_IF_OP_ERROR(
      b.LinearForward(a.normed_in.get(), w.k_weight, w.k_bias, a.k.get(), rows, d, c.kv_dim()));
  QTRAIN_RETURN_IF_OP_ERROR(
      b.LinearForward(a.normed_in.get(), w.v_weight, w.v_bias, a.v.get(), rows, d, c.kv_dim()));
  // The bias is added before the rotation (docs/model-math.md#pitfalls).
  if (dca != nullptr) {
    QTRAIN_RETURN_IF_ERROR(
        DcaAttention(b, c, rope, *dca, batch, seq_len, a.q.get(), a.k.get(), a.v.get(), a));
  } else {
    QTRAIN_RETURN_IF_OP_ERROR(b.RopeForward(a.q.get(), a.q.get(),
                                            RopeShapeFor(c, batch, seq_len, c.num_heads),
                                            rope.inv_freq, rope.attention_factor));
    QTRAIN_RETURN_IF_OP_ERROR(b.RopeForward(a.k.get(), a.k.get(),
                                            RopeShapeFor(c, batch, seq_len, c.num_kv_heads),
                                            rope.inv_freq, rope.attention_factor));
    QTRAIN_RETURN_IF_OP_ERROR(b.AttentionForward(a.q.get(), a.k.get(), a.v.get(), a.attn.get(),
                                                 a.lse.get(),
                                                 AttentionShapeFor(c, batch, seq_len)));
  }
  QTRAIN_RETURN_IF_OP_ERROR(
      b.LinearForward(a.attn.get(), w.o_weight, nullptr, a.mid.get(), rows, c.q_dim(), d));
  QTRAIN_RETURN_IF_OP_ERROR(b.ResidualForward(x_in, a.mid.get(), a.mid.get(), rows * d));
  // MLP block.
  QTRAIN_RETURN_IF_OP_ERROR(b.RmsNormForward(a.mid.get(), w.post_norm, eps, a.normed_post.get(),
                                             a.rstd_post.get(), rows, d));
  QTRAIN_RETURN_IF_OP_ERROR(
      b.LinearForward(a.normed_post.get(), w.gate_weight, nullptr, a.gate.get(), rows, d, f));
  QTRAIN_RETURN_IF_OP_ERROR(
      b.LinearForward(a.normed_post.get(), w.up_weight, nullptr, a.up.get(), rows, d, f));
  QTRAIN_RETURN_IF_OP_ERROR(b.SwigluForward(a.gate.get(), a.up.get(), a.act.get(), rows, f));
  QTRAIN_RETURN_IF_OP_ERROR(
      b.LinearForward(a.act.get(), w.down_weight, nullptr, x_out, rows, f, d));
  QTRAIN_RETURN_IF_OP_ERROR(b.ResidualForward(a.mid.get(), x_out, x_out, rows * d));
  return absl::OkStatus();
}

absl::Status LayerBackward(kernels::Backend& b, const ModelConfig& c, const WeightView& w,
                           const GradientView& g, const RopeParams& rope, int64_t batch,
                           int64_t seq_len, kernels::ConstTensor x_in, const LayerActivations& a,
                           BackwardScratch& s, kernels::Tensor d_residual) {
  const int64_t rows = batch * seq_len;
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  const int64_t qd = c.q_dim(), kvd = c.kv_dim();
  auto zero = [&](TensorBuffer& buf) { return OpToStatus(b.Fill(buf.get(), buf.size(), 0.0f)); };

  // MLP block: out = mid + down(act); the residual passes d_residual to mid unchanged.
  QTRAIN_RETURN_IF_ERROR(CopyTensor(b, s.d_mid.get(), d_residual, rows * d));
  QTRAIN_RETURN_IF_ERROR(zero(s.d_act));
  QTRAIN_RETURN_IF_OP_ERROR(b.LinearBackward(d_residual, a.act.get(), w.down_weight, s.d_act.get(),
                                             g.down_weight, nullptr, rows, f, d));
  QTRAIN_RETURN_IF_ERROR(zero(s.d_gate));
  QTRAIN_RETURN_IF_ERROR(zero(s.d_up));
  QTRAIN_RETURN_IF_OP_ERROR(b.SwigluBackward(s.d_act.get(), a.gate.get(), a.up.get(),
                                             s.d_gate.get(), s.d_up.get(), rows, f));
  QTRAIN_RETURN_IF_ERROR(zero(s.d_normed));
  QTRAIN_RETURN_IF_OP_ERROR(b.LinearBackward(s.d_gate.get(), a.normed_post.get(), w.gate_weight,
                                             s.d_normed.get(), g.gate_weight, nullptr, rows, d, f));
  QTRAIN_RETURN_IF_OP_ERROR(b.LinearBackward(s.d_up.get(), a.normed_post.get(), w.up_weight,
                                             s.d_normed.get(), g.up_weight, nullptr, rows, d, f));
  QTRAIN_RETURN_IF_OP_ERROR(b.RmsNormBackward(s.d_normed.get(), a.mid.get(), w.post_norm,
                                              a.rstd_post.get(), s.d_mid.get(), g.post_norm, rows,
                                              d));

  // Attention block: mid = x + o_proj(attn).
  QTRAIN_RETURN_IF_ERROR(zero(s.d_attn));
  QTRAIN_RETURN_IF_OP_ERROR(b.LinearBackward(s.d_mid.get(), a.attn.get(), w.o_weight,
                                             s.d_attn.get(), g.o_weight, nullptr, rows, qd, d));
  QTRAIN_RETURN_IF_ERROR(zero(s.dq));
  QTRAIN_RETURN_IF_ERROR(zero(s.dk));
  QTRAIN_RETURN_IF_ERROR(zero(s.dv));
  QTRAIN_RETURN_IF_OP_ERROR(b.AttentionBackward(a.q.get(), a.k.get(), a.v.get(), a.attn.get(),
                                                a.lse.get(), s.d_attn.get(), s.dq.get(), s.dk.get(),
                                                s.dv.get(), AttentionShapeFor(c, batch, seq_len)));
  QTRAIN_RETURN_IF_ERROR(zero(s.dq_pre));
  QTRAIN_RETURN_IF_ERROR(zero(s.dk_pre));
  QTRAIN_RETURN_IF_OP_ERROR(b.RopeBackward(s.dq.get(), s.dq_pre.get(),
                                           RopeShapeFor(c, batch, seq_len, c.num_heads),
                                           rope.inv_freq, rope.attention_factor));
  QTRAIN_RETURN_IF_OP_ERROR(b.RopeBackward(s.dk.get(), s.dk_pre.get(),
                                           RopeShapeFor(c, batch, seq_len, c.num_kv_heads),
                                           rope.inv_freq, rope.attention_factor));
  QTRAIN_RETURN_IF_ERROR(zero(s.d_normed));
  QTRAIN_RETURN_IF_OP_ERROR(b.LinearBackward(s.dq_pre.get(), a.normed_in.get(), w.q_weight,
                                             s.d_normed.get(), g.q_weight, g.q_bias, rows, d, qd));
  QTRAIN_RETURN_IF_OP_ERROR(b.LinearBackward(s.dk_pre.get(), a.normed_in.get(), w.k_weight,
                                             s.d_normed.get(), g.k_weight, g.k_bias, rows, d, kvd));
  QTRAIN_RETURN_IF_OP_ERROR(b.LinearBackward(s.dv.get(), a.normed_in.get(), w.v_weight,
                                             s.d_normed.get(), g.v_weight, g.v_bias, rows, d, kvd));
  QTRAIN_RETURN_IF_ERROR(CopyTensor(b, d_residual, s.d_mid.get(), rows * d));
  QTRAIN_RETURN_IF_OP_ERROR(b.RmsNormBackward(s.d_normed.get(), x_in, w.input_norm, a.rstd_in.get(),
                                              d_residual, g.input_norm, rows, d));
  return absl::OkStatus();
}

}  // namespace qtrain::model
