// AdamW over a range of the model's parameter buffer (the rank's ZeRO-1 shard, or all of it):
// decoupled weight decay on matrices and embeddings only (never on norms and biases),
// global-norm gradient clipping, and skipping of steps whose gradients are not finite. The
// moments of [begin, end) live here, in the memory of the optimizer's backend (host vectors for
// the CPU backend, device memory for a GPU: Step then takes device buffers and never leaves the
// device; Save and the loads stage the moments through the host). The gradient norm comes from
// the caller (the whole group's, see sharded_step.h).
#ifndef QTRAIN_WORKER_TRAIN_OPTIMIZER_H_
#define QTRAIN_WORKER_TRAIN_OPTIMIZER_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/ops.h"
#include "worker/model/buffer.h"
#include "worker/model/param_layout.h"

namespace qtrain::train {

struct OptimizerSettings {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double grad_clip = 1.0;  // 0: no clipping
};

struct StepStats {
  double grad_norm = 0;   // before clipping
  double clip_scale = 1;  // factor the gradients were multiplied by
  bool skipped = false;   // the gradients were not finite: nothing changed
};

// One file of a sharded optimizer state: the moments of elements [begin, end).
struct OptimizerShardFile {
  std::string path;
  int64_t begin = 0;
  int64_t end = 0;
};

class Optimizer {
 public:
  // The moments of elements [begin, end) of the layout's buffer.
  static absl::StatusOr<Optimizer> Create(const model::ParameterLayout& layout,
                                          const OptimizerSettings& settings, int64_t begin,
                                          int64_t end,
                                          kernels::Backend& backend = kernels::CpuBackend());
  // Of the whole buffer.
  static absl::StatusOr<Optimizer> Create(const model::ParameterLayout& layout,
                                          const OptimizerSettings& settings,
                                          kernels::Backend& backend = kernels::CpuBackend());

  // Whether a tensor gets weight decay: matrices and embeddings (2-D) do, norms and biases don't.
  static bool DecaysWeight(const model::TensorSlot& slot) { return slot.shape.size() >= 2; }

  int64_t begin() const { return begin_; }
  int64_t end() const { return end_; }
  kernels::Backend& backend() const { return *backend_; }

  // One update of `params` from `grads`, both elements [begin, end), at learning rate `lr`,
  // where `grad_norm` is the norm of the whole gradient (every rank's shard): the clipping
  // scale comes from it, and a norm that is not finite skips the step. Each tensor overlapping
  // the range is updated on the overlap, with its own weight-decay flag. `loss_scale`: the
  // factor `grads` carry (fp16's loss scaling; grad_norm is the norm without it), divided out
  // with the clipping. `params` and `grads` are memory of the optimizer's backend.
  // `working_copy`: when not null, the 16-bit copy of the same elements (bf16 or fp16; the
  // model's working weights at `begin`), rewritten from the updated weights in the same pass.
  absl::StatusOr<StepStats> Step(std::span<float> params, std::span<const float> grads, double lr,
                                 double grad_norm, double loss_scale = 1.0,
                                 kernels::Tensor working_copy = {});
  // With the norm of `grads` itself (GradNormOf): an optimizer of the whole buffer only.
  absl::StatusOr<StepStats> Step(std::span<float> params, std::span<const float> grads, double lr);

  // Updates applied so far (skipped steps not counted).
  int64_t step_count() const { return step_count_; }

  // The moments of [begin, end) as safetensors: F32 "exp_avg" and "exp_avg_sq" of end - begin
  // elements, metadata "step", "begin", "end", "total".
  absl::Status Save(const std::string& path) const;
  // Reads the moments of [begin, end) from the files of a sharded state (as Save writes them,
  // for any sharding: `files` tile [0, total)), opening only those that overlap the range; each
  // must have taken `updates` steps. DATA_LOSS naming the file when one does not match its
  // entry. Nothing changes on error.
  absl::Status LoadShards(std::span<const OptimizerShardFile> files, int64_t updates);
  // Reads the moments of [begin, end) from a single-file state of the whole buffer, one tensor
  // per parameter ("exp_avg.<name>", "exp_avg_sq.<name>"), and its step count.
  absl::Status LoadSingleFile(const std::string& path);

 private:
  Optimizer(const model::ParameterLayout& layout, const OptimizerSettings& settings, int64_t begin,
            int64_t end, kernels::Backend& backend);
  const model::ParameterLayout* layout_;
  OptimizerSettings settings_;
  int64_t begin_;
  int64_t end_;
  bool on_host() const { return backend_ == &kernels::CpuBackend(); }
  float* exp_avg() { return on_host() ? exp_avg_.data() : device_exp_avg_.get(); }
  float* exp_avg_sq() { return on_host() ? exp_avg_sq_.data() : device_exp_avg_sq_.get(); }
  // The moments into the backend's memory (nothing changes on error), or out of it.
  absl::Status SetMoments(std::vector<float> exp_avg, std::vector<float> exp_avg_sq);
  absl::Status CopyMomentsToHost(std::vector<float>& exp_avg, std::vector<float>& exp_avg_sq) const;

  kernels::Backend* backend_;
  // Elements [begin, end): host vectors on the CPU backend, else backend buffers.
  std::vector<float> exp_avg_;
  std::vector<float> exp_avg_sq_;
  model::Buffer<float> device_exp_avg_;
  model::Buffer<float> device_exp_avg_sq_;
  int64_t step_count_ = 0;
};

// Checks one file of a sharded state without reading its moments: its header says the entry's
// range of `total` elements after `updates` steps, and it holds the two moments of that range.
// DATA_LOSS naming the file otherwise.
absl::Status CheckOptimizerShard(const OptimizerShardFile& file, int64_t total, int64_t updates);

// The gradient norm's rule, the same for every sharding: for each block of
// comm::kDefaultBlockElements, an fp64 sum of squares in element order; the blocks' sums added
// left to right in block order; the square root.
// The block sums of `values`, which start at a block boundary (a shard).
std::vector<double> BlockSumsOfSquares(std::span<const float> values, int64_t block_elements);
// sqrt of the blocks' sums added in order.
double NormOfBlockSums(std::span<const double> block_sums);
// The norm of a whole buffer.
double GradNormOf(std::span<const float> grads);

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_OPTIMIZER_H_
