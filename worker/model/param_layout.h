// Where each parameter lives in the model's one contiguous fp32 buffer.
//
// Tensors use transformers' Qwen2 names and shapes (nn.Linear weights are [out, in]). Each tensor
// starts on a 64-byte boundary; the padding between tensors is never read and stays zero, so an
// optimizer may treat the whole buffer as one flat vector. The gradient buffer uses the same
// layout.
#ifndef QTRAIN_WORKER_MODEL_PARAM_LAYOUT_H_
#define QTRAIN_WORKER_MODEL_PARAM_LAYOUT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "worker/model/config.h"

namespace qtrain::model {

struct TensorSlot {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;  // in floats
  int64_t size = 0;    // product of shape
};

// Offsets (in floats) of one decoder layer's tensors.
struct LayerOffsets {
  int64_t input_norm = 0;
  int64_t q_weight = 0, q_bias = 0;
  int64_t k_weight = 0, k_bias = 0;
  int64_t v_weight = 0, v_bias = 0;
  int64_t o_weight = 0;
  int64_t post_norm = 0;
  int64_t gate_weight = 0, up_weight = 0, down_weight = 0;
};

class ParameterLayout {
 public:
  explicit ParameterLayout(const ModelConfig& config);

  const std::vector<TensorSlot>& tensors() const { return tensors_; }
  // Buffer length in floats, padding included.
  int64_t total_size() const { return total_size_; }
  // nullptr when no such tensor.
  const TensorSlot* Find(std::string_view name) const;

  int64_t embed() const { return embed_; }
  int64_t final_norm() const { return final_norm_; }
  const LayerOffsets& layer(int64_t i) const { return layers_[i]; }

 private:
  int64_t Add(std::string name, std::vector<int64_t> shape);

  std::vector<TensorSlot> tensors_;
  int64_t total_size_ = 0;
  int64_t embed_ = 0;
  int64_t final_norm_ = 0;
  std::vector<LayerOffsets> layers_;
};

// Pointers to one layer's tensors inside a buffer laid out by ParameterLayout (parameters or
// gradients): P is a pointer (float*, const float*) or a typed tensor (kernels::ConstTensor, for
// weights of the compute dtype), anything `base + offset` moves along.
template <typename P>
struct LayerView {
  P input_norm;
  P q_weight;
  P q_bias;
  P k_weight;
  P k_bias;
  P v_weight;
  P v_bias;
  P o_weight;
  P post_norm;
  P gate_weight;
  P up_weight;
  P down_weight;

  LayerView(P base, const LayerOffsets& o)
      : input_norm(base + o.input_norm),
        q_weight(base + o.q_weight),
        q_bias(base + o.q_bias),
        k_weight(base + o.k_weight),
        k_bias(base + o.k_bias),
        v_weight(base + o.v_weight),
        v_bias(base + o.v_bias),
        o_weight(base + o.o_weight),
        post_norm(base + o.post_norm),
        gate_weight(base + o.gate_weight),
        up_weight(base + o.up_weight),
        down_weight(base + o.down_weight) {}
};

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_PARAM_LAYOUT_H_
