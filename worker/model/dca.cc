// Dual Chunk Attention in the model (docs/model-math.md, "Dual Chunk Attention"): the folded
// RoPE positions of keys and of the three query rotations, and the length-dependent logit scale.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/status_macros.h"
#include "worker/model/model_internal.h"

namespace qtrain::model {

float DcaSoftmaxScale(const ModelConfig& c, int64_t length) {
  double lambda = 1.0;
  const int64_t original = c.dca.original_max_position_embeddings;
  if (original > 0 && length > 0) {
    lambda = std::max(
        1.0, 0.1 * std::log(static_cast<double>(length) / static_cast<double>(original)) + 1.0);
  }
  return static_cast<float>(lambda * lambda / std::sqrt(static_cast<double>(c.head_dim)));
}

absl::Status DcaPass::Prepare(kernels::Backend& b, const ModelConfig& c, int64_t batch,
                              int64_t seq_len, int64_t past, int64_t length) {
  const int64_t s = c.dca.chunk_len(), chunk = c.dca.chunk_size;
  const int64_t rows = batch * seq_len;
  std::vector<int32_t> host[3];
  for (std::vector<int32_t>& h : host) h.resize(rows);
  const int32_t inter = static_cast<int32_t>(std::min(2 * s - 1, chunk));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t folded = (past + r % seq_len) % s;
    host[0][r] = static_cast<int32_t>(folded);                       // keys, intra
    host[1][r] = static_cast<int32_t>(std::min(folded + s, chunk));  // successive
    host[2][r] = inter;                                              // inter
  }
  Buffer<int32_t>* bufs[3] = {&positions, &succ_positions, &inter_positions};
  for (int i = 0; i < 3; ++i) {
    QTRAIN_RETURN_IF_ERROR(bufs[i]->Resize(b, {rows}, "dual chunk attention positions"));
    QTRAIN_RETURN_IF_OP_ERROR(
        b.CopyHostToBackend(bufs[i]->get(), host[i].data(), rows * sizeof(int32_t)));
  }
  chunk_len = s;
  softmax_scale = DcaSoftmaxScale(c, length);
  return absl::OkStatus();
}

}  // namespace qtrain::model
