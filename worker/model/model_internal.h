// Internals of Model shared by model.cc, layer.cc and decode.cc: activation storage and the
// forward/backward of one decoder layer.
#ifndef QTRAIN_WORKER_MODEL_MODEL_INTERNAL_H_
#define QTRAIN_WORKER_MODEL_MODEL_INTERNAL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "kernels/ops.h"
#include "worker/model/buffer.h"
#include "worker/model/config.h"
#include "worker/model/param_layout.h"

namespace qtrain::model {

// What backward needs from one layer's forward (all [rows, ...] with rows = B*T). The
// TensorBuffers hold the model's compute dtype (ModelOptions::compute_dtype); the statistics
// are fp32.
struct LayerActivations {
  Buffer<float> rstd_in;     // [rows]
  TensorBuffer normed_in;    // [rows, hidden]: RMSNorm(x) (input of q/k/v)
  TensorBuffer q;            // [rows, q_dim], after RoPE
  TensorBuffer k;            // [rows, kv_dim], after RoPE
  TensorBuffer v;            // [rows, kv_dim]
  TensorBuffer attn;         // [rows, q_dim]: attention output (input of o_proj)
  Buffer<float> lse;         // [B, heads, T]
  TensorBuffer mid;          // [rows, hidden]: residual stream after attention
  Buffer<float> rstd_post;   // [rows]
  TensorBuffer normed_post;  // [rows, hidden]: input of gate/up
  TensorBuffer gate;         // [rows, intermediate]
  TensorBuffer up;           // [rows, intermediate]
  TensorBuffer act;          // [rows, intermediate]: silu(gate) * up (input of down_proj)
  // Dual Chunk Attention only: the successive and inter rotations of q ([rows, q_dim]; q holds
  // the intra one).
  TensorBuffer q_succ, q_inter;

  absl::Status Resize(kernels::Backend& backend, const ModelConfig& c, kernels::DType dtype,
                      int64_t batch, int64_t seq_len);
};

// Gradient scratch shared by all layers during backward (compute dtype).
struct BackwardScratch {
  TensorBuffer d_mid, d_normed, d_attn, dq, dq_pre, dk, dk_pre, dv, d_act, d_gate, d_up;
  absl::Status Resize(kernels::Backend& backend, const ModelConfig& c, kernels::DType dtype,
                      int64_t batch, int64_t seq_len);
};

// How much a pass keeps: inference needs one layer's buffers and two residual buffers
// (ping-pong); training keeps every layer's input, and every layer's activations unless they are
// recomputed in backward.
enum class PassMode { kInference, kTrainStored, kTrainRecompute };

struct Activations {
  int64_t batch = 0;
  int64_t seq_len = 0;
  PassMode mode = PassMode::kInference;
  Buffer<int32_t> ids;      // [rows]
  Buffer<int32_t> targets;  // [rows]
  // Training: layers + 1 buffers, [l] = input of layer l, [layers] = last output.
  // Inference: 2 buffers, layer l reads [l % 2] and writes [(l + 1) % 2].
  std::vector<TensorBuffer> residual;
  std::vector<LayerActivations> layers;  // one per layer (kTrainStored), else one reused
  Buffer<float> rstd_final;              // [rows]
  TensorBuffer final_normed;             // [rows, hidden]
  TensorBuffer d_residual;  // [rows, hidden]: gradient flowing down the layers (training only)
  BackwardScratch scratch;  // training only
  // LM head + loss, chunk by chunk, in fp32.
  Buffer<float> logits;       // [chunk, vocab]
  Buffer<float> losses;       // [chunk]
  Buffer<float> lse;          // [chunk]
  Buffer<double> chunk_loss;  // [chunks]: each chunk's loss sum, read back once per pass
  kernels::DType dtype = kernels::DType::kFloat32;
  bool ready = false;  // every buffer is allocated for batch x seq_len in `mode` and `dtype`

  // Allocates for the shape (a no-op when it is the current one). On failure everything is
  // freed and no shape is recorded.
  absl::Status Resize(kernels::Backend& backend, const ModelConfig& c, kernels::DType dtype,
                      int64_t batch, int64_t seq_len, PassMode mode, int64_t chunk);
  kernels::Tensor layer_input(int64_t l) {
    return residual[mode == PassMode::kInference ? l % 2 : l].get();
  }
  LayerActivations& layer(int64_t l) { return layers[mode == PassMode::kTrainStored ? l : 0]; }

 private:
  absl::Status Allocate(kernels::Backend& backend, const ModelConfig& c, int64_t batch,
                        int64_t seq_len, PassMode mode, int64_t chunk);
};

// Where rows of activations come from: row r (counted from first_row) is token
// past + r % seq_len of sequence r / seq_len.
struct RowPositions {
  int64_t first_row = 0;
  int64_t seq_len = 1;
  int64_t past = 0;
};

// Fails with FAILED_PRECONDITION when x (backend memory, [rows, width]) holds a NaN or an
// infinity, naming `where` (the layer or tensor) and the first bad sequence, position and
// element.
absl::Status CheckFinite(kernels::Backend& backend, kernels::ConstTensor x, int64_t rows,
                         int64_t width, const RowPositions& positions, absl::string_view where);

// Names of the places CheckFinite reports, after the tensors that produce them.
inline constexpr absl::string_view kEmbeddingOutput =
    "the embedding output (model.embed_tokens.weight)";
inline constexpr absl::string_view kFinalNormOutput = "the final norm output (model.norm.weight)";
inline constexpr absl::string_view kLogits =
    "the logits (LM head, tied to model.embed_tokens.weight)";
std::string LayerOutputName(int64_t layer);

// RoPE tables in backend memory.
struct RopeParams {
  const float* inv_freq;
  float attention_factor;
};

// Dual Chunk Attention inputs of one pass (dca.cc): positions [rows] in backend memory, token r
// at past + r % seq_len. Keys and intra queries are rotated at `positions` (i mod s), the
// successive queries at min(i mod s + s, C), the inter queries at min(2s - 1, C).
struct DcaPass {
  Buffer<int32_t> positions, succ_positions, inter_positions;
  int64_t chunk_len = 0;
  float softmax_scale = 0.0f;  // lambda^2 / sqrt(head_dim), lambda from the full `length`
  absl::Status Prepare(kernels::Backend& backend, const ModelConfig& c, int64_t batch,
                       int64_t seq_len, int64_t past, int64_t length);
};

// One Dual Chunk Attention: rotates k_new ([batch * seq_len,
// kv_dim], this pass's keys, inside
// k) and q ([batch * seq_len, q_dim], into q_succ and q_inter, then in place), then attends
// over k/v rows 0 ... past + seq_len - 1 (kv_capacity rows per sequence; 0: past + seq_len).
struct DcaAttend {
  int64_t batch, seq_len, past, kv_capacity;
  kernels::Tensor q, q_succ, q_inter, k_new;
  kernels::ConstTensor k, v;
  kernels::Tensor out;
  float* lse;
};
absl::Status DcaRotateAndAttend(kernels::Backend& backend, const ModelConfig& c,
                                const RopeParams& rope, const DcaPass& dca, const DcaAttend& in);

// lambda^2 / sqrt(head_dim) with lambda = max(1, 0.1 ln(length / L_orig) + 1) (1 without
// original_max_position_embeddings).
float DcaSoftmaxScale(const ModelConfig& c, int64_t length);

// x_out = layer(x_in); fills `acts`. x_out must not alias x_in. With `dca`, attention is Dual
// Chunk Attention (inference only).
// Weights are of the compute dtype, parameter gradients fp32.
using WeightView = LayerView<kernels::ConstTensor>;
using GradientView = LayerView<float*>;

absl::Status LayerForward(kernels::Backend& backend, const ModelConfig& c, const WeightView& w,
                          const RopeParams& rope, int64_t batch, int64_t seq_len,
                          kernels::ConstTensor x_in, LayerActivations& acts, kernels::Tensor x_out,
                          const DcaPass* dca = nullptr);

// d_residual holds d(loss)/d(layer output) on entry and d(loss)/d(layer input) on return;
// parameter gradients are added into `g`.
absl::Status LayerBackward(kernels::Backend& backend, const ModelConfig& c, const WeightView& w,
                           const GradientView& g, const RopeParams& rope, int64_t batch,
                           int64_t seq_len, kernels::ConstTensor x_in, const LayerActivations& acts,
                           BackwardScratch& scratch, kernels::Tensor d_residual);

}  // namespace qtrain::model

#endif  // QTRAIN_WORKER_MODEL_MODEL_INTERNAL_H_
