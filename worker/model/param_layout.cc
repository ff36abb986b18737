#include "worker/model/param_layout.h"

#include "absl/strings/str_cat.h"

namespace qtrain::model {
namespace {
constexpr int64_t kAlignFloats = 16;  // 64 bytes
}  // namespace

ParameterLayout::ParameterLayout(const ModelConfig& c) {
  const int64_t d = c.hidden_size;
  embed_ = Add("model.embed_tokens.weight", {c.vocab_size, d});
  layers_.resize(c.num_layers);
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    LayerOffsets& l = layers_[i];
    l.input_norm = Add(p + "input_layernorm.weight", {d});
    l.q_weight = Add(p + "self_attn.q_proj.weight", {c.q_dim(), d});
    l.q_bias = Add(p + "self_attn.q_proj.bias", {c.q_dim()});
    l.k_weight = Add(p + "self_attn.k_proj.weight", {c.kv_dim(), d});
    l.k_bias = Add(p + "self_attn.k_proj.bias", {c.kv_dim()});
    l.v_weight = Add(p + "self_attn.v_proj.weight", {c.kv_dim(), d});
    l.v_bias = Add(p + "self_attn.v_proj.bias", {c.kv_dim()});
    l.o_weight = Add(p + "self_attn.o_proj.weight", {d, c.q_dim()});
    l.post_norm = Add(p + "post_attention_layernorm.weight", {d});
    l.gate_weight = Add(p + "mlp.gate_proj.weight", {c.intermediate_size, d});
    l.up_weight = Add(p + "mlp.up_proj.weight", {c.intermediate_size, d});
    l.down_weight = Add(p + "mlp.down_proj.weight", {d, c.intermediate_size});
  }
  final_norm_ = Add("model.norm.weight", {d});
}

int64_t ParameterLayout::Add(std::string name, std::vector<int64_t> shape) {
  int64_t size = 1;
  for (int64_t dim : shape) size *= dim;
  const int64_t offset = (total_size_ + kAlignFloats - 1) / kAlignFloats * kAlignFloats;
  tensors_.push_back({std::move(name), std::move(shape), offset, size});
  total_size_ = offset + size;
  return offset;
}

const TensorSlot* ParameterLayout::Find(std::string_view name) const {
  for (const TensorSlot& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

}  // namespace qtrain::model
