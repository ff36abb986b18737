// AdamW over the model's parameter buffer: decoupled weight decay on matrices and embeddings
// only (never on norms and biases), global-norm gradient clipping, and skipping of steps whose
// gradients are not finite. The moments live in buffers with the model's parameter layout.
#ifndef QTRAIN_WORKER_TRAIN_OPTIMIZER_H_
#define QTRAIN_WORKER_TRAIN_OPTIMIZER_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/ops.h"
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

class Optimizer {
 public:
  static absl::StatusOr<Optimizer> Create(const model::ParameterLayout& layout,
                                          const OptimizerSettings& settings,
                                          kernels::Backend& backend = kernels::CpuBackend());

  // Whether a tensor gets weight decay: matrices and embeddings (2-D) do, norms and biases don't.
  static bool DecaysWeight(const model::TensorSlot& slot) { return slot.shape.size() >= 2; }

  // One update of `params` from `grads` (both laid out by the layout) at learning rate `lr`.
  absl::StatusOr<StepStats> Step(std::span<float> params, std::span<const float> grads, double lr);

  // Updates applied so far (skipped steps not counted).
  int64_t step_count() const { return step_count_; }

  // The moments and the step count, as safetensors ("exp_avg.<name>", "exp_avg_sq.<name>").
  absl::Status Save(const std::string& path) const;
  absl::Status Load(const std::string& path);

 private:
  Optimizer(const model::ParameterLayout& layout, const OptimizerSettings& settings,
            kernels::Backend& backend);
  const model::ParameterLayout* layout_;
  OptimizerSettings settings_;
  kernels::Backend* backend_;
  std::vector<float> exp_avg_;
  std::vector<float> exp_avg_sq_;
  int64_t step_count_ = 0;
};

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_OPTIMIZER_H_
