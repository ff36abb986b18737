#include "kernels/cuda/sdpa_graph.h"

#include <cmath>
#include <memory>
#include <string>

#include "cudnn_frontend.h"

namespace qtrain::kernels::cuda {
namespace {

namespace fe = cudnn_frontend;
using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

// [B, H, T, D] dims over the [B, T, H, D] memory layout.
TensorPtr Activation(fe::graph::Graph& graph, const char* name, const SdpaShape& s, int64_t heads) {
  return graph.tensor(
      fe::graph::Tensor_attributes()
          .set_name(name)
          .set_dim({s.batch, heads, s.seq_len, s.head_dim})
          .set_stride({s.seq_len * heads * s.head_dim, s.head_dim, heads * s.head_dim, 1}));
}

void MarkOutput(const TensorPtr& t, const SdpaShape& s, int64_t heads) {
  t->set_output(true)
      .set_dim({s.batch, heads, s.seq_len, s.head_dim})
      .set_stride({s.seq_len * heads * s.head_dim, s.head_dim, heads * s.head_dim, 1});
}

std::string Describe(const SdpaShape& s, SdpaPass pass, int sm_version) {
  return std::string("SDPA ") + (pass == SdpaPass::kForward ? "forward" : "backward") + " (sm_" +
         std::to_string(sm_version) + ", B=" + std::to_string(s.batch) +
         " T=" + std::to_string(s.seq_len) + " H=" + std::to_string(s.num_heads) + "/" +
         std::to_string(s.num_kv_heads) + " D=" + std::to_string(s.head_dim) + ")";
}

// The graph of one pass; its tensors are the user's buffers when plans are built and run.
std::unique_ptr<fe::graph::Graph> BuildGraph(const SdpaShape& s, SdpaPass pass, int sm_version) {
  auto graph = std::make_unique<fe::graph::Graph>();
  graph->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  graph->set_sm_version(sm_version);
  const float scale =
      s.softmax_scale > 0.0f ? s.softmax_scale : 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  TensorPtr q = Activation(*graph, "q", s, s.num_heads);
  TensorPtr k = Activation(*graph, "k", s, s.num_kv_heads);
  TensorPtr v = Activation(*graph, "v", s, s.num_kv_heads);
  if (pass == SdpaPass::kForward) {
    auto attributes = fe::graph::SDPA_attributes()
                          .set_name("sdpa")
                          .set_generate_stats(true)  // the logsumexp the backward needs
                          .set_causal_mask(true)
                          .set_attn_scale(scale);
    auto [o, stats] = graph->sdpa(q, k, v, attributes);
    MarkOutput(o, s, s.num_heads);
    stats->set_output(true).set_data_type(fe::DataType_t::FLOAT);
    return graph;
  }
  TensorPtr o = Activation(*graph, "o", s, s.num_heads);
  TensorPtr dout = Activation(*graph, "dout", s, s.num_heads);
  TensorPtr stats = graph->tensor(fe::graph::Tensor_attributes()
                                      .set_name("stats")
                                      .set_dim({s.batch, s.num_heads, s.seq_len, 1})
                                      .set_stride({s.num_heads * s.seq_len, s.seq_len, 1, 1})
                                      .set_data_type(fe::DataType_t::FLOAT));
  auto attributes = fe::graph::SDPA_backward_attributes()
                        .set_name("sdpa_backward")
                        .set_causal_mask(true)
                        .set_attn_scale(scale)
                        .set_deterministic_algorithm(true);  // reproducible gradients
  auto [dq, dk, dv] = graph->sdpa_backward(q, k, v, o, dout, stats, attributes);
  MarkOutput(dq, s, s.num_heads);
  MarkOutput(dk, s, s.num_kv_heads);
  MarkOutput(dv, s, s.num_kv_heads);
  return graph;
}

}  // namespace

OpStatus ValidateSdpa(const SdpaShape& shape, SdpaPass pass, int sm_version) {
  const std::string what = Describe(shape, pass, sm_version);
  if (shape.batch <= 0 || shape.seq_len <= 0 || shape.num_heads <= 0 || shape.num_kv_heads <= 0 ||
      shape.head_dim <= 0) {
    return OpStatus::Error(what + ": every size must be > 0");
  }
  if (sm_version < 80) return OpStatus::Error(what + ": needs sm_80 or newer");
  try {
    std::unique_ptr<fe::graph::Graph> graph = BuildGraph(shape, pass, sm_version);
    fe::error_t status = graph->validate();
    if (!status.is_good()) return OpStatus::Error(what + ": " + status.get_message());
  } catch (const std::exception& e) {
    return OpStatus::Error(what + ": " + e.what());
  }
  return OpStatus::Ok();
}

}  // namespace qtrain::kernels::cuda
