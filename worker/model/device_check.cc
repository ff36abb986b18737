#include "worker/model/device_check.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/forwarding_backend.h"
#include "worker/model/buffer.h"
#include "worker/model/flops.h"
#include "worker/model/init.h"
#include "worker/model/model.h"
#include "worker/model/param_layout.h"

namespace qtrain::model {
namespace {

// Deterministic tokens in [0, vocab): splitmix64 of (seed, index).
std::vector<int32_t> RandomTokens(int64_t count, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i) + 1;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    ids[i] = static_cast<int32_t>(z % static_cast<uint64_t>(vocab));
  }
  return ids;
}

// A batch of `setup`'s shape: its ids and next-token targets (the ids shifted by one).
struct HostBatch {
  std::vector<int32_t> ids, targets;
  Batch View(const DeviceCheckSetup& setup) const {
    return {
        .batch_size = setup.batch_size, .seq_len = setup.seq_len, .ids = ids, .targets = targets};
  }
};
HostBatch MakeBatch(const DeviceCheckSetup& setup, uint64_t seed) {
  const int64_t tokens = setup.batch_size * setup.seq_len;
  HostBatch batch;
  std::vector<int32_t> stream =
      RandomTokens(tokens + setup.batch_size, setup.config.vocab_size, seed);
  for (int64_t b = 0; b < setup.batch_size; ++b) {
    const int32_t* row = stream.data() + b * (setup.seq_len + 1);
    batch.ids.insert(batch.ids.end(), row, row + setup.seq_len);
    batch.targets.insert(batch.targets.end(), row + 1, row + 1 + setup.seq_len);
  }
  return batch;
}

// A model on `backend` with setup's parameters (made on the host, copied in).
absl::StatusOr<Model> MakeModel(kernels::Backend& backend, const DeviceCheckSetup& setup,
                                kernels::DType dtype) {
  ModelOptions options;
  options.compute_dtype = dtype;
  options.recompute_activations = setup.recompute_activations;
  QTRAIN_ASSIGN_OR_RETURN(Model model, Model::Create(setup.config, options, backend));
  QTRAIN_ASSIGN_OR_RETURN(
      std::vector<float> params,
      MakeHostVector<float>({model.layout().total_size()}, "the host copy of the parameters"));
  InitializeParameters(setup.config, model.layout(), setup.seed, params);
  QTRAIN_RETURN_IF_OP_ERROR(backend.CopyHostToBackend(model.params().data(), params.data(),
                                                      params.size() * sizeof(float)));
  return model;
}

absl::StatusOr<std::vector<float>> CopyOut(kernels::Backend& backend, std::span<const float> src,
                                           absl::string_view what) {
  QTRAIN_ASSIGN_OR_RETURN(std::vector<float> out,
                          MakeHostVector<float>({static_cast<int64_t>(src.size())}, what));
  QTRAIN_RETURN_IF_OP_ERROR(
      backend.CopyBackendToHost(out.data(), src.data(), src.size() * sizeof(float)));
  return out;
}

// The model and the AdamW state of a training run on one backend.
class Run {
 public:
  static absl::StatusOr<Run> Start(kernels::Backend& backend, const DeviceCheckSetup& setup,
                                   kernels::DType dtype) {
    QTRAIN_ASSIGN_OR_RETURN(Model model, MakeModel(backend, setup, dtype));
    Run run(backend, std::move(model));
    const int64_t n = run.model_.layout().total_size();
    QTRAIN_RETURN_IF_ERROR(run.m_.Resize(backend, {n}, "the first AdamW moments"));
    QTRAIN_RETURN_IF_ERROR(run.v_.Resize(backend, {n}, "the second AdamW moments"));
    QTRAIN_RETURN_IF_OP_ERROR(backend.Fill(run.m_.get(), n, 0.0f));
    QTRAIN_RETURN_IF_OP_ERROR(backend.Fill(run.v_.get(), n, 0.0f));
    const int64_t blocks = (n + kNormBlock - 1) / kNormBlock;
    QTRAIN_RETURN_IF_ERROR(run.block_sums_.Resize(backend, {blocks}, "the norm's block sums"));
    QTRAIN_ASSIGN_OR_RETURN(run.host_block_sums_,
                            MakeHostVector<double>({blocks}, "the norm's block sums"));
    return run;
  }

  // The trainer's device-resident step for a group of one (worker/train): zero gradients,
  // forward and backward, the gradient norm from per-block sums of squares (only they reach the
  // host), clipping to 1, one multi-tensor AdamW update (weight decay on the matrices only) that
  // also rewrites the 16-bit working copy, then a synchronization. The step's loss.
  absl::StatusOr<double> Step(const Batch& batch, double lr) {
    QTRAIN_RETURN_IF_ERROR(model_.ZeroGrads());
    QTRAIN_ASSIGN_OR_RETURN(ForwardResult result, model_.ForwardBackward(batch));
    ++step_;
    const Model::UpdatableWeights weights = model_.weights_for_update();
    const float* grads = model_.grads().data();
    QTRAIN_RETURN_IF_OP_ERROR(backend_->BlockSumsOfSquares(
        grads, static_cast<int64_t>(model_.grads().size()), kNormBlock, block_sums_.get()));
    QTRAIN_RETURN_IF_OP_ERROR(backend_->CopyBackendToHost(
        host_block_sums_.data(), block_sums_.get(), host_block_sums_.size() * sizeof(double)));
    double squares = 0;
    for (double b : host_block_sums_) squares += b;
    const double norm = std::sqrt(squares);
    const double clip = std::isfinite(norm) ? std::min(1.0, 1.0 / (norm + 1e-6)) : 1.0;
    // One multi-tensor AdamW call, as the trainer makes it.
    std::vector<kernels::AdamWTensor> tensors;
    for (const TensorSlot& slot : model_.layout().tensors()) {
      kernels::Tensor copy;
      if (!weights.working_copy.is_null()) {
        copy = {static_cast<std::byte*>(weights.working_copy.data()) + slot.offset * 2,
                weights.working_copy.dtype()};
      }
      tensors.push_back({.param = weights.params.data() + slot.offset,
                         .grad = grads + slot.offset,
                         .m = m_.get() + slot.offset,
                         .v = v_.get() + slot.offset,
                         .n = slot.size,
                         .apply_weight_decay = slot.shape.size() >= 2,
                         .working_copy = copy});
    }
    const kernels::AdamWParams p{.lr = lr,
                                 .beta1 = 0.9,
                                 .beta2 = 0.95,
                                 .weight_decay = 0.1,
                                 .step = step_,
                                 .grad_scale = static_cast<float>(clip)};
    QTRAIN_RETURN_IF_OP_ERROR(
        backend_->AdamWMultiStep(tensors.data(), static_cast<int64_t>(tensors.size()), p));
    QTRAIN_RETURN_IF_OP_ERROR(backend_->Synchronize());
    return result.loss;
  }

 private:
  Run(kernels::Backend& backend, Model model) : backend_(&backend), model_(std::move(model)) {}
  kernels::Backend* backend_;
  // The trainer's default block of the norm (comm::kDefaultBlockElements).
  static constexpr int64_t kNormBlock = int64_t{1} << 14;
  Model model_;
  Buffer<float> m_, v_;
  Buffer<double> block_sums_;
  std::vector<double> host_block_sums_;
  int64_t step_ = 0;
};

double RelativeError(double value, double reference) {
  return std::abs(value - reference) / std::max(std::abs(reference), 1e-30);
}

// Counts the bytes allocated through it (current and peak).
class AllocationTracker final : public kernels::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  void* Alloc(size_t bytes) override {
    void* p = inner().Alloc(bytes);
    if (p != nullptr) {
      sizes_.emplace_back(p, bytes);
      current_ += bytes;
      peak_ = std::max(peak_, current_);
    }
    return p;
  }
  void Free(void* ptr) override {
    for (auto it = sizes_.begin(); it != sizes_.end(); ++it) {
      if (it->first == ptr) {
        current_ -= it->second;
        sizes_.erase(it);
        break;
      }
    }
    inner().Free(ptr);
  }
  size_t peak() const { return peak_; }

 private:
  std::vector<std::pair<void*, size_t>> sizes_;
  size_t current_ = 0, peak_ = 0;
};

}  // namespace

std::string DTypeLabel(kernels::DType dtype) { return kernels::DTypeName(dtype); }

DeviceTolerance DefaultTolerance(kernels::DType compute_dtype) {
  if (compute_dtype == kernels::DType::kBfloat16) return {.loss = 1e-2, .gradient = 5e-2};
  if (compute_dtype == kernels::DType::kFloat16) return {.loss = 5e-3, .gradient = 2e-2};
  return {.loss = 1e-5, .gradient = 1e-4};
}

absl::StatusOr<GradientComparison> CompareLossAndGradients(kernels::Backend& device,
                                                           kernels::Backend& reference,
                                                           const DeviceCheckSetup& setup,
                                                           const DeviceTolerance& tolerance) {
  const HostBatch batch = MakeBatch(setup, setup.seed + 1);
  GradientComparison out;
  std::vector<float> grads[2];
  for (int side = 0; side < 2; ++side) {
    kernels::Backend& backend = side == 0 ? device : reference;
    const kernels::DType dtype = side == 0 ? setup.compute_dtype : kernels::DType::kFloat32;
    QTRAIN_ASSIGN_OR_RETURN(Model model, MakeModel(backend, setup, dtype));
    QTRAIN_RETURN_IF_ERROR(model.ZeroGrads());
    Batch view = batch.View(setup);
    if (side == 0) view.loss_scale = setup.loss_scale;
    QTRAIN_ASSIGN_OR_RETURN(ForwardResult result, model.ForwardBackward(view));
    (side == 0 ? out.loss : out.reference_loss) = result.loss;
    QTRAIN_ASSIGN_OR_RETURN(grads[side], CopyOut(backend, model.grads(), "the gradients"));
  }
  for (float& g : grads[0]) g /= setup.loss_scale;
  out.loss_error = RelativeError(out.loss, out.reference_loss);
  const ParameterLayout layout(setup.config);
  bool finite = std::isfinite(out.loss);
  for (const TensorSlot& slot : layout.tensors()) {
    double diff = 0, norm = 0;
    for (int64_t i = slot.offset; i < slot.offset + slot.size; ++i) {
      const double d = double(grads[0][i]) - grads[1][i];
      diff += d * d;
      norm += double(grads[1][i]) * grads[1][i];
      if (!std::isfinite(grads[0][i])) finite = false;
    }
    const double error = std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30);
    if (!(error <= out.worst_gradient_error)) {  // NaN counts as worst
      out.worst_gradient_error = error;
      out.worst_tensor = slot.name;
    }
  }
  out.passed =
      finite && out.loss_error <= tolerance.loss && out.worst_gradient_error <= tolerance.gradient;
  return out;
}

absl::StatusOr<TrainingCurveComparison> CompareTrainingCurves(kernels::Backend& device,
                                                              kernels::Backend& reference,
                                                              const DeviceCheckSetup& setup,
                                                              const TrainingCurveOptions& options) {
  if (options.steps < 2) return absl::InvalidArgumentError("a training curve needs 2 steps");
  // Two fixed batches, alternated: the model learns them, so the loss falls.
  const HostBatch batches[2] = {MakeBatch(setup, setup.seed + 2), MakeBatch(setup, setup.seed + 3)};
  TrainingCurveComparison out;
  for (int side = 0; side < 2; ++side) {
    kernels::Backend& backend = side == 0 ? device : reference;
    const kernels::DType dtype = side == 0 ? setup.compute_dtype : kernels::DType::kFloat32;
    QTRAIN_ASSIGN_OR_RETURN(Run run, Run::Start(backend, setup, dtype));
    std::vector<double>& losses = side == 0 ? out.losses : out.reference_losses;
    for (int64_t step = 0; step < options.steps; ++step) {
      QTRAIN_ASSIGN_OR_RETURN(double loss, run.Step(batches[step % 2].View(setup), options.lr));
      losses.push_back(loss);
    }
  }
  bool finite = true;
  for (size_t i = 0; i < out.losses.size(); ++i) {
    const double error = RelativeError(out.losses[i], out.reference_losses[i]);
    if (!std::isfinite(out.losses[i])) finite = false;
    if (!(error <= out.worst_error)) out.worst_error = error;
  }
  const double drop = 1.0 - out.losses.back() / out.losses.front();
  out.passed = finite && out.worst_error <= options.tolerance && drop >= options.min_drop;
  return out;
}

absl::StatusOr<Throughput> MeasureTrainingThroughput(kernels::Backend& device,
                                                     const DeviceCheckSetup& setup,
                                                     const ThroughputOptions& options) {
  if (options.steps < 1 || options.warmup < 0) {
    return absl::InvalidArgumentError("throughput needs at least one timed step");
  }
  AllocationTracker tracked(device);
  QTRAIN_ASSIGN_OR_RETURN(Run run, Run::Start(tracked, setup, setup.compute_dtype));
  const HostBatch batch = MakeBatch(setup, setup.seed + 4);
  Throughput out;
  for (int64_t i = 0; i < options.warmup; ++i) {
    QTRAIN_ASSIGN_OR_RETURN(out.loss, run.Step(batch.View(setup), 1e-4));
  }
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < options.steps; ++i) {
    QTRAIN_ASSIGN_OR_RETURN(out.loss, run.Step(batch.View(setup), 1e-4));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out.seconds_per_step = seconds / double(options.steps);
  const double tokens = double(setup.batch_size * setup.seq_len);
  out.tokens_per_second = tokens / out.seconds_per_step;
  out.flops_per_token = FlopsPerToken(setup.config, setup.seq_len);
  out.tflops = out.flops_per_token * out.tokens_per_second / 1e12;
  out.peak_backend_bytes = static_cast<int64_t>(tracked.peak());
  return out;
}

}  // namespace qtrain::model
