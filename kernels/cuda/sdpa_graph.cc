#include "kernels/cuda/sdpa_graph.h"

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>

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
  return std::string("SDPA ") + (pass == SdpaPass::kForward ? "forward" : "backward") + " (" +
         (sm_version > 0 ? "sm_" + std::to_string(sm_version) : std::string("this GPU")) +
         (s.fp16 ? ", fp16" : ", bf16") + ", B=" + std::to_string(s.batch) + " T=" + std::to_string(s.seq_len) +
         " H=" + std::to_string(s.num_heads) + "/" + std::to_string(s.num_kv_heads) +
         " D=" + std::to_string(s.head_dim) + ")";
}

// The graph of one pass and its tensors (the user's buffers when plans run).
struct SdpaGraph {
  std::unique_ptr<fe::graph::Graph> graph;
  TensorPtr q, k, v, o, stats, dout, dq, dk, dv;
};

// sm_version 0: the graph is for the device of the handle it is built with.
SdpaGraph BuildGraph(const SdpaShape& s, SdpaPass pass, int sm_version) {
  SdpaGraph g;
  g.graph = std::make_unique<fe::graph::Graph>();
  fe::graph::Graph* graph = g.graph.get();
  graph->set_io_data_type(s.fp16 ? fe::DataType_t::HALF : fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  if (sm_version > 0) graph->set_sm_version(sm_version);
  const float scale =
      s.softmax_scale > 0.0f ? s.softmax_scale : 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  TensorPtr q = g.q = Activation(*graph, "q", s, s.num_heads);
  TensorPtr k = g.k = Activation(*graph, "k", s, s.num_kv_heads);
  TensorPtr v = g.v = Activation(*graph, "v", s, s.num_kv_heads);
  if (pass == SdpaPass::kForward) {
    auto attributes = fe::graph::SDPA_attributes()
                          .set_name("sdpa")
                          .set_generate_stats(true)  // the logsumexp the backward needs
                          .set_causal_mask(true)
                          .set_attn_scale(scale);
    auto [o, stats] = graph->sdpa(q, k, v, attributes);
    MarkOutput(o, s, s.num_heads);
    stats->set_output(true).set_data_type(fe::DataType_t::FLOAT);
    g.o = o;
    g.stats = stats;
    return g;
  }
  TensorPtr o = g.o = Activation(*graph, "o", s, s.num_heads);
  TensorPtr dout = g.dout = Activation(*graph, "dout", s, s.num_heads);
  TensorPtr stats = g.stats =
      graph->tensor(fe::graph::Tensor_attributes()
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
  g.dq = dq;
  g.dk = dk;
  g.dv = dv;
  return g;
}

OpStatus CheckSizes(const SdpaShape& shape, const std::string& what) {
  if (shape.batch <= 0 || shape.seq_len <= 0 || shape.num_heads <= 0 || shape.num_kv_heads <= 0 ||
      shape.head_dim <= 0) {
    return OpStatus::Error(what + ": every size must be > 0");
  }
  return OpStatus::Ok();
}

}  // namespace

OpStatus ValidateSdpa(const SdpaShape& shape, SdpaPass pass, int sm_version) {
  const std::string what = Describe(shape, pass, sm_version);
  QTRAIN_KERNEL_RETURN_IF_ERROR(CheckSizes(shape, what));
  if (sm_version < 80) return OpStatus::Error(what + ": needs sm_80 or newer");
  try {
    SdpaGraph g = BuildGraph(shape, pass, sm_version);
    fe::error_t status = g.graph->validate();
    if (!status.is_good()) return OpStatus::Error(what + ": " + status.get_message());
  } catch (const std::exception& e) {
    return OpStatus::Error(what + ": " + e.what());
  }
  return OpStatus::Ok();
}

bool SdpaCanRun(const SdpaShape& shape) {
  return shape.batch > 0 && shape.seq_len > 0 && shape.num_heads > 0 && shape.num_kv_heads > 0 &&
         shape.num_heads % shape.num_kv_heads == 0 && shape.head_dim % 8 == 0 &&
         shape.head_dim <= 128;
}

// The built graphs of one handle, by (pass, shape), and the workspace they share.
struct SdpaPlans::Impl {
  using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, float, bool>;
  cudnnHandle_t handle = nullptr;
  std::map<Key, SdpaGraph> graphs;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;

  ~Impl() {
    if (workspace != nullptr) cudaFree(workspace);
    if (handle != nullptr) cudnnDestroy(handle);
  }

  // The graph of (pass, shape), built on first use: the frontend's heuristics choose its plan
  // once, so every later call runs the same kernels; the workspace grows to the largest plan.
  OpStatus Get(const SdpaShape& s, SdpaPass pass, SdpaGraph** out) {
    const Key key{pass == SdpaPass::kForward ? 0 : 1,
                  s.batch,
                  s.seq_len,
                  s.num_heads,
                  s.num_kv_heads,
                  s.head_dim,
                  s.softmax_scale,
                  s.fp16};
    auto it = graphs.find(key);
    if (it == graphs.end()) {
      const std::string what = Describe(s, pass, 0);
      QTRAIN_KERNEL_RETURN_IF_ERROR(CheckSizes(s, what));
      if (!SdpaCanRun(s)) {
        return OpStatus::Error(what + ": needs head_dim a multiple of 8 and at most 128");
      }
      SdpaGraph g;
      int64_t bytes = 0;
      try {
        g = BuildGraph(s, pass, 0);
        fe::error_t st = g.graph->validate();
        if (st.is_good()) st = g.graph->build_operation_graph(handle);
        if (st.is_good()) st = g.graph->create_execution_plans({fe::HeurMode_t::A});
        if (st.is_good()) st = g.graph->check_support(handle);
        if (st.is_good()) st = g.graph->build_plans(handle);
        if (st.is_good()) st = g.graph->get_workspace_size(bytes);
        if (!st.is_good()) return OpStatus::Error(what + ": " + st.get_message());
      } catch (const std::exception& e) {
        return OpStatus::Error(what + ": " + e.what());
      }
      if (bytes > 0 && static_cast<size_t>(bytes) > workspace_bytes) {
        if (workspace != nullptr) cudaFree(workspace);
        workspace = nullptr;
        workspace_bytes = 0;
        const cudaError_t err = cudaMalloc(&workspace, static_cast<size_t>(bytes));
        if (err != cudaSuccess) {
          workspace = nullptr;
          return OpStatus::Error(what + ": cudaMalloc of a " + std::to_string(bytes) +
                                 "-byte workspace: " + cudaGetErrorString(err));
        }
        workspace_bytes = static_cast<size_t>(bytes);
      }
      it = graphs.emplace(key, std::move(g)).first;
    }
    *out = &it->second;
    return OpStatus::Ok();
  }

  OpStatus Execute(const SdpaGraph& g, std::unordered_map<TensorPtr, void*>& pack,
                   const char* what) {
    try {
      fe::error_t st = g.graph->execute(handle, pack, workspace);
      if (!st.is_good()) return OpStatus::Error(std::string(what) + ": " + st.get_message());
    } catch (const std::exception& e) {
      return OpStatus::Error(std::string(what) + ": " + e.what());
    }
    return OpStatus::Ok();
  }
};

SdpaPlans::SdpaPlans() : impl_(std::make_unique<Impl>()) {}
SdpaPlans::~SdpaPlans() = default;

OpStatus SdpaPlans::Create(cudaStream_t stream, std::unique_ptr<SdpaPlans>* out) {
  std::unique_ptr<SdpaPlans> plans(new SdpaPlans());
  const cudnnStatus_t created = cudnnCreate(&plans->impl_->handle);
  if (created != CUDNN_STATUS_SUCCESS) {
    plans->impl_->handle = nullptr;
    return OpStatus::Error(std::string("cuDNN attention: cudnnCreate: ") +
                           cudnnGetErrorString(created));
  }
  const cudnnStatus_t bound = cudnnSetStream(plans->impl_->handle, stream);
  if (bound != CUDNN_STATUS_SUCCESS) {
    return OpStatus::Error(std::string("cuDNN attention: cudnnSetStream: ") +
                           cudnnGetErrorString(bound));
  }
  *out = std::move(plans);
  return OpStatus::Ok();
}

size_t SdpaPlans::workspace_bytes() const { return impl_->workspace_bytes; }

OpStatus SdpaPlans::Forward(const SdpaShape& shape, const void* q, const void* k, const void* v,
                            void* o, float* stats) {
  SdpaGraph* g = nullptr;
  QTRAIN_KERNEL_RETURN_IF_ERROR(impl_->Get(shape, SdpaPass::kForward, &g));
  std::unordered_map<TensorPtr, void*> pack = {{g->q, const_cast<void*>(q)},
                                               {g->k, const_cast<void*>(k)},
                                               {g->v, const_cast<void*>(v)},
                                               {g->o, o},
                                               {g->stats, stats}};
  return impl_->Execute(*g, pack, "cuDNN SDPA forward");
}

OpStatus SdpaPlans::Backward(const SdpaShape& shape, const void* q, const void* k, const void* v,
                             const void* o, const void* dout, const float* stats, void* dq,
                             void* dk, void* dv) {
  SdpaGraph* g = nullptr;
  QTRAIN_KERNEL_RETURN_IF_ERROR(impl_->Get(shape, SdpaPass::kBackward, &g));
  std::unordered_map<TensorPtr, void*> pack = {{g->q, const_cast<void*>(q)},
                                               {g->k, const_cast<void*>(k)},
                                               {g->v, const_cast<void*>(v)},
                                               {g->o, const_cast<void*>(o)},
                                               {g->dout, const_cast<void*>(dout)},
                                               {g->stats, const_cast<float*>(stats)},
                                               {g->dq, dq},
                                               {g->dk, dk},
                                               {g->dv, dv}};
  return impl_->Execute(*g, pack, "cuDNN SDPA backward");
}

}  // namespace qtrain::kernels::cuda
