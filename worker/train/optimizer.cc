#include "worker/train/optimizer.h"

#include <cmath>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/checked_math.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "worker/model/buffer.h"

namespace qtrain::train {
Optimizer::Optimizer(const model::ParameterLayout& layout, const OptimizerSettings& settings,
                     kernels::Backend& backend)
    : layout_(&layout), settings_(settings), backend_(&backend) {}

absl::StatusOr<Optimizer> Optimizer::Create(const model::ParameterLayout& layout,
                                            const OptimizerSettings& settings,
                                            kernels::Backend& backend) {
  if (backend.name() != "cpu") {
    return absl::UnimplementedError("the optimizer keeps its moments in host memory: CPU only");
  }
  if (!(settings.beta1 >= 0 && settings.beta1 < 1 && settings.beta2 >= 0 && settings.beta2 < 1 &&
        settings.eps > 0 && settings.weight_decay >= 0 && settings.grad_clip >= 0)) {
    return absl::InvalidArgumentError("optimizer: settings out of range");
  }
  Optimizer optimizer(layout, settings, backend);
  QTRAIN_RETURN_IF_ERROR(model::ResizeHostVector(optimizer.exp_avg_, {layout.total_size()},
                                                 "the optimizer state (exp_avg)", 0.0f));
  QTRAIN_RETURN_IF_ERROR(model::ResizeHostVector(optimizer.exp_avg_sq_, {layout.total_size()},
                                                 "the optimizer state (exp_avg_sq)", 0.0f));
  return optimizer;
}

absl::StatusOr<StepStats> Optimizer::Step(std::span<float> params, std::span<const float> grads,
                                          double lr) {
  const size_t total = static_cast<size_t>(layout_->total_size());
  if (params.size() != total || grads.size() != total) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer: buffers of ", params.size(), " and ",
                                                   grads.size(), " floats, layout has ", total));
  }
  std::vector<const float*> tensors;
  std::vector<int64_t> sizes;
  for (const model::TensorSlot& slot : layout_->tensors()) {
    tensors.push_back(grads.data() + slot.offset);
    sizes.push_back(slot.size);
  }
  double sum_squares = 0;
  QTRAIN_RETURN_IF_OP_ERROR(backend_->SumOfSquares(
      tensors.data(), sizes.data(), static_cast<int64_t>(tensors.size()), &sum_squares));
  StepStats stats;
  stats.grad_norm = std::sqrt(sum_squares);
  if (!std::isfinite(stats.grad_norm)) {
    stats.skipped = true;
    return stats;
  }
  // As torch.nn.utils.clip_grad_norm_: scale by clip / (norm + 1e-6) when that is below 1.
  if (settings_.grad_clip > 0) {
    stats.clip_scale = std::min(1.0, settings_.grad_clip / (stats.grad_norm + 1e-6));
  }
  ++step_count_;
  for (const model::TensorSlot& slot : layout_->tensors()) {
    kernels::AdamWParams p;
    p.lr = lr;
    p.beta1 = settings_.beta1;
    p.beta2 = settings_.beta2;
    p.eps = settings_.eps;
    p.weight_decay = settings_.weight_decay;
    p.apply_weight_decay = DecaysWeight(slot);
    p.step = step_count_;
    p.grad_scale = static_cast<float>(stats.clip_scale);
    QTRAIN_RETURN_IF_OP_ERROR(backend_->AdamWStep(
        params.data() + slot.offset, grads.data() + slot.offset, exp_avg_.data() + slot.offset,
        exp_avg_sq_.data() + slot.offset, slot.size, p));
  }
  return stats;
}

absl::Status Optimizer::Save(const std::string& path) const {
  // The writer copies both moments and serializes them.
  return model::CatchAllocationFailure(
      absl::StrCat("the optimizer state for ", path),
      CheckedBytes(layout_->total_size(), 4 * sizeof(float)), [&] {
        SafetensorsWriter writer;
        for (const model::TensorSlot& slot : layout_->tensors()) {
          const auto size = static_cast<size_t>(slot.size);
          QTRAIN_RETURN_IF_ERROR(writer.AddFloat("exp_avg." + slot.name, slot.shape,
                                                 std::span(exp_avg_).subspan(slot.offset, size)));
          QTRAIN_RETURN_IF_ERROR(
              writer.AddFloat("exp_avg_sq." + slot.name, slot.shape,
                              std::span(exp_avg_sq_).subspan(slot.offset, size)));
        }
        writer.SetMetadata("step", absl::StrCat(step_count_));
        return writer.WriteFile(path);
      });
}

absl::Status Optimizer::Load(const std::string& path) {
  QTRAIN_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
  int64_t step = 0;
  const auto step_it = file.metadata().find("step");
  if (step_it == file.metadata().end() || !absl::SimpleAtoi(step_it->second, &step) || step < 0) {
    return absl::DataLossError(absl::StrCat(path, ": optimizer state lacks a valid 'step'"));
  }
  const auto total = static_cast<int64_t>(exp_avg_.size());
  QTRAIN_ASSIGN_OR_RETURN(std::vector<float> exp_avg,
                          model::MakeHostVector<float>({total}, "the loaded optimizer state"));
  QTRAIN_ASSIGN_OR_RETURN(std::vector<float> exp_avg_sq,
                          model::MakeHostVector<float>({total}, "the loaded optimizer state"));
  for (const model::TensorSlot& slot : layout_->tensors()) {
    const std::optional<size_t> bytes = CheckedBytes(slot.size, sizeof(float));
    QTRAIN_ASSIGN_OR_RETURN(
        std::vector<float> m,
        model::CatchAllocationFailure(
            absl::StrCat(path, ": tensor 'exp_avg.", slot.name, "'"), bytes,
            [&] { return file.ReadAsFloat("exp_avg." + slot.name, slot.shape); }));
    QTRAIN_ASSIGN_OR_RETURN(
        std::vector<float> v,
        model::CatchAllocationFailure(
            absl::StrCat(path, ": tensor 'exp_avg_sq.", slot.name, "'"), bytes,
            [&] { return file.ReadAsFloat("exp_avg_sq." + slot.name, slot.shape); }));
    std::copy(m.begin(), m.end(), exp_avg.begin() + slot.offset);
    std::copy(v.begin(), v.end(), exp_avg_sq.begin() + slot.offset);
  }
  if (file.tensors().size() != 2 * layout_->tensors().size()) {
    return absl::DataLossError(absl::StrCat(path, ": optimizer state has ", file.tensors().size(),
                                            " tensors, the model needs ",
                                            2 * layout_->tensors().size()));
  }
  exp_avg_ = std::move(exp_avg);
  exp_avg_sq_ = std::move(exp_avg_sq);
  step_count_ = step;
  return absl::OkStatus();
}

}  // namespace qtrain::train
