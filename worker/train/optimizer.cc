#include "worker/train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/checked_math.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "worker/comm/shard_layout.h"
#include "worker/model/buffer.h"

namespace qtrain::train {
namespace {

constexpr char kExpAvg[] = "exp_avg";
constexpr char kExpAvgSq[] = "exp_avg_sq";

// metadata[key] of a shard file as an int64; DATA_LOSS naming the file otherwise.
absl::StatusOr<int64_t> ShardMetadata(const SafetensorsFile& file, const char* key) {
  const auto it = file.metadata().find(key);
  int64_t value = 0;
  if (it == file.metadata().end() || !absl::SimpleAtoi(it->second, &value) || value < 0) {
    return absl::DataLossError(
        absl::StrCat(file.source(), ": optimizer state lacks a valid '", key, "'"));
  }
  return value;
}

// The F32 tensor `name` of `elements` elements (a shard file's moment): its little-endian bytes
// (not necessarily aligned for floats).
absl::StatusOr<std::span<const std::byte>> ShardTensor(const SafetensorsFile& file,
                                                       const char* name, int64_t elements) {
  QTRAIN_ASSIGN_OR_RETURN(const TensorInfo* info, file.Find(name));
  if (info->dtype != DType::kF32 || info->shape != std::vector<int64_t>{elements}) {
    return absl::DataLossError(
        absl::StrCat(file.source(), ": tensor '", name, "' is not F32 [", elements, "]"));
  }
  return file.Data(*info);
}

// Elements [from, to) of a moment's bytes into out.
void CopyElements(std::span<const std::byte> bytes, int64_t from, int64_t to, float* out) {
  std::memcpy(out, bytes.data() + from * static_cast<int64_t>(sizeof(float)),
              static_cast<size_t>(to - from) * sizeof(float));
}

// The shard file of `entry`, checked: its metadata says entry's range of `total` elements after
// `updates` steps, and it holds exactly the two moments of that range.
absl::StatusOr<SafetensorsFile> OpenShard(const OptimizerShardFile& entry, int64_t total,
                                          int64_t updates) {
  QTRAIN_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(entry.path));
  QTRAIN_ASSIGN_OR_RETURN(const int64_t step, ShardMetadata(file, "step"));
  QTRAIN_ASSIGN_OR_RETURN(const int64_t begin, ShardMetadata(file, "begin"));
  QTRAIN_ASSIGN_OR_RETURN(const int64_t end, ShardMetadata(file, "end"));
  QTRAIN_ASSIGN_OR_RETURN(const int64_t file_total, ShardMetadata(file, "total"));
  if (begin != entry.begin || end != entry.end || file_total != total) {
    return absl::DataLossError(absl::StrCat(entry.path, ": holds [", begin, ", ", end, ") of ",
                                            file_total, " elements, the checkpoint lists [",
                                            entry.begin, ", ", entry.end, ") of ", total));
  }
  if (step != updates) {
    return absl::DataLossError(
        absl::StrCat(entry.path, ": has taken ", step, " updates, the checkpoint says ", updates));
  }
  if (file.tensors().size() != 2) {
    return absl::DataLossError(absl::StrCat(entry.path, ": ", file.tensors().size(),
                                            " tensors, an optimizer shard has 2"));
  }
  QTRAIN_RETURN_IF_ERROR(ShardTensor(file, kExpAvg, end - begin).status());
  QTRAIN_RETURN_IF_ERROR(ShardTensor(file, kExpAvgSq, end - begin).status());
  return file;
}

}  // namespace

absl::Status CheckOptimizerShard(const OptimizerShardFile& file, int64_t total, int64_t updates) {
  return OpenShard(file, total, updates).status();
}

Optimizer::Optimizer(const model::ParameterLayout& layout, const OptimizerSettings& settings,
                     int64_t begin, int64_t end, kernels::Backend& backend)
    : layout_(&layout), settings_(settings), begin_(begin), end_(end), backend_(&backend) {}

absl::StatusOr<Optimizer> Optimizer::Create(const model::ParameterLayout& layout,
                                            const OptimizerSettings& settings,
                                            kernels::Backend& backend) {
  return Create(layout, settings, 0, layout.total_size(), backend);
}

absl::StatusOr<Optimizer> Optimizer::Create(const model::ParameterLayout& layout,
                                            const OptimizerSettings& settings, int64_t begin,
                                            int64_t end, kernels::Backend& backend) {
  if (!(settings.beta1 >= 0 && settings.beta1 < 1 && settings.beta2 >= 0 && settings.beta2 < 1 &&
        settings.eps > 0 && settings.weight_decay >= 0 && settings.grad_clip >= 0)) {
    return absl::InvalidArgumentError("optimizer: settings out of range");
  }
  if (begin < 0 || begin > end || end > layout.total_size()) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer: range [", begin, ", ", end,
                                                   ") of a buffer of ", layout.total_size()));
  }
  Optimizer optimizer(layout, settings, begin, end, backend);
  if (optimizer.on_host()) {
    QTRAIN_RETURN_IF_ERROR(model::ResizeHostVector(optimizer.exp_avg_, {end - begin},
                                                   "the optimizer state (exp_avg)", 0.0f));
    QTRAIN_RETURN_IF_ERROR(model::ResizeHostVector(optimizer.exp_avg_sq_, {end - begin},
                                                   "the optimizer state (exp_avg_sq)", 0.0f));
    return optimizer;
  }
  for (model::Buffer<float>* moment : {&optimizer.device_exp_avg_, &optimizer.device_exp_avg_sq_}) {
    QTRAIN_RETURN_IF_ERROR(moment->Resize(backend, {end - begin}, "the optimizer state"));
    if (end > begin) {
      QTRAIN_RETURN_IF_OP_ERROR(backend.Fill(moment->get(), end - begin, 0.0f));
    }
  }
  return optimizer;
}

absl::Status Optimizer::SetMoments(std::vector<float> exp_avg, std::vector<float> exp_avg_sq) {
  if (on_host()) {
    exp_avg_ = std::move(exp_avg);
    exp_avg_sq_ = std::move(exp_avg_sq);
    return absl::OkStatus();
  }
  const size_t bytes = exp_avg.size() * sizeof(float);
  // (A copy that fails leaves the device moments undefined; the caller keeps its step count and
  // fails the resume.)
  QTRAIN_RETURN_IF_OP_ERROR(
      backend_->CopyHostToBackend(device_exp_avg_.get(), exp_avg.data(), bytes));
  QTRAIN_RETURN_IF_OP_ERROR(
      backend_->CopyHostToBackend(device_exp_avg_sq_.get(), exp_avg_sq.data(), bytes));
  return absl::OkStatus();
}

absl::Status Optimizer::CopyMomentsToHost(std::vector<float>& exp_avg,
                                          std::vector<float>& exp_avg_sq) const {
  const int64_t size = end_ - begin_;
  QTRAIN_ASSIGN_OR_RETURN(exp_avg, model::MakeHostVector<float>({size}, "the optimizer state"));
  QTRAIN_ASSIGN_OR_RETURN(exp_avg_sq, model::MakeHostVector<float>({size}, "the optimizer state"));
  const size_t bytes = static_cast<size_t>(size) * sizeof(float);
  QTRAIN_RETURN_IF_OP_ERROR(
      backend_->CopyBackendToHost(exp_avg.data(), device_exp_avg_.get(), bytes));
  QTRAIN_RETURN_IF_OP_ERROR(
      backend_->CopyBackendToHost(exp_avg_sq.data(), device_exp_avg_sq_.get(), bytes));
  return absl::OkStatus();
}

absl::StatusOr<StepStats> Optimizer::Step(std::span<float> params, std::span<const float> grads,
                                          double lr) {
  if (begin_ != 0 || end_ != layout_->total_size()) {
    return absl::FailedPreconditionError(
        "optimizer: a shard's step needs the norm of the whole gradient");
  }
  return Step(params, grads, lr, GradNormOf(grads));
}

absl::StatusOr<StepStats> Optimizer::Step(std::span<float> params, std::span<const float> grads,
                                          double lr, double grad_norm, double loss_scale,
                                          kernels::Tensor working_copy) {
  const auto size = static_cast<size_t>(end_ - begin_);
  if (!working_copy.is_null() && working_copy.dtype() != kernels::DType::kBfloat16 &&
      working_copy.dtype() != kernels::DType::kFloat16) {
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer: a working copy must be bf16 or fp16, not ",
                     kernels::DTypeName(working_copy.dtype())));
  }
  if (params.size() != size || grads.size() != size) {
    return absl::InvalidArgumentError(absl::StrCat("optimizer: buffers of ", params.size(), " and ",
                                                   grads.size(), " floats for the range [", begin_,
                                                   ", ", end_, ")"));
  }
  StepStats stats;
  stats.grad_norm = grad_norm;
  if (!(std::isfinite(loss_scale) && loss_scale > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("optimizer: loss scale ", loss_scale, " must be finite and > 0"));
  }
  if (!std::isfinite(grad_norm)) {
    stats.skipped = true;
    return stats;
  }
  // As torch.nn.utils.clip_grad_norm_: scale by clip / (norm + 1e-6) when that is below 1.
  if (settings_.grad_clip > 0) {
    stats.clip_scale = std::min(1.0, settings_.grad_clip / (grad_norm + 1e-6));
  }
  ++step_count_;
  kernels::AdamWParams p;
  p.lr = lr;
  p.beta1 = settings_.beta1;
  p.beta2 = settings_.beta2;
  p.eps = settings_.eps;
  p.weight_decay = settings_.weight_decay;
  p.step = step_count_;
  // (A loss scale of 1 leaves the clipping factor's bits as they were.)
  p.grad_scale = static_cast<float>(stats.clip_scale / loss_scale);
  // The parts of the tensors in [begin_, end_), in one multi-tensor step.
  std::vector<kernels::AdamWTensor> tensors;
  for (const model::TensorSlot& slot : layout_->tensors()) {
    const int64_t from = std::max(begin_, slot.offset);
    const int64_t to = std::min(end_, slot.offset + slot.size);
    if (from >= to) continue;
    const int64_t at = from - begin_;
    kernels::Tensor copy;
    if (!working_copy.is_null()) {
      // 16-bit elements: `at` of them are 2 * at bytes.
      copy = {static_cast<std::byte*>(working_copy.data()) + at * 2, working_copy.dtype()};
    }
    tensors.push_back({.param = params.data() + at,
                       .grad = grads.data() + at,
                       .m = exp_avg() + at,
                       .v = exp_avg_sq() + at,
                       .n = to - from,
                       .apply_weight_decay = DecaysWeight(slot),
                       .working_copy = copy});
  }
  QTRAIN_RETURN_IF_OP_ERROR(
      backend_->AdamWMultiStep(tensors.data(), static_cast<int64_t>(tensors.size()), p));
  return stats;
}

absl::Status Optimizer::Save(const std::string& path) const {
  // The writer copies both moments and serializes them (device moments through a host copy).
  return model::CatchAllocationFailure(
      absl::StrCat("the optimizer state for ", path),
      CheckedBytes(end_ - begin_, (on_host() ? 4 : 6) * sizeof(float)), [&] {
        std::vector<float> staged_avg, staged_avg_sq;
        if (!on_host()) QTRAIN_RETURN_IF_ERROR(CopyMomentsToHost(staged_avg, staged_avg_sq));
        const std::vector<float>& m = on_host() ? exp_avg_ : staged_avg;
        const std::vector<float>& v = on_host() ? exp_avg_sq_ : staged_avg_sq;
        SafetensorsWriter writer;
        QTRAIN_RETURN_IF_ERROR(writer.AddFloat(kExpAvg, {end_ - begin_}, m));
        QTRAIN_RETURN_IF_ERROR(writer.AddFloat(kExpAvgSq, {end_ - begin_}, v));
        writer.SetMetadata("step", absl::StrCat(step_count_));
        writer.SetMetadata("begin", absl::StrCat(begin_));
        writer.SetMetadata("end", absl::StrCat(end_));
        writer.SetMetadata("total", absl::StrCat(layout_->total_size()));
        return writer.WriteFile(path);
      });
}

absl::Status Optimizer::LoadShards(std::span<const OptimizerShardFile> files, int64_t updates) {
  const int64_t size = end_ - begin_;
  QTRAIN_ASSIGN_OR_RETURN(std::vector<float> exp_avg,
                          model::MakeHostVector<float>({size}, "the loaded optimizer state"));
  QTRAIN_ASSIGN_OR_RETURN(std::vector<float> exp_avg_sq,
                          model::MakeHostVector<float>({size}, "the loaded optimizer state"));
  int64_t covered = 0;
  for (const OptimizerShardFile& entry : files) {
    const int64_t from = std::max(begin_, entry.begin);
    const int64_t to = std::min(end_, entry.end);
    if (from >= to) continue;
    QTRAIN_ASSIGN_OR_RETURN(const SafetensorsFile file,
                            OpenShard(entry, layout_->total_size(), updates));
    const int64_t begin = entry.begin;
    QTRAIN_ASSIGN_OR_RETURN(const std::span<const std::byte> m,
                            ShardTensor(file, kExpAvg, entry.end - begin));
    QTRAIN_ASSIGN_OR_RETURN(const std::span<const std::byte> v,
                            ShardTensor(file, kExpAvgSq, entry.end - begin));
    CopyElements(m, from - begin, to - begin, exp_avg.data() + (from - begin_));
    CopyElements(v, from - begin, to - begin, exp_avg_sq.data() + (from - begin_));
    covered += to - from;
  }
  if (covered != size) {
    return absl::DataLossError(absl::StrCat("the optimizer shards cover ", covered, " of the ",
                                            size, " elements [", begin_, ", ", end_, ")"));
  }
  QTRAIN_RETURN_IF_ERROR(SetMoments(std::move(exp_avg), std::move(exp_avg_sq)));
  step_count_ = updates;
  return absl::OkStatus();
}

absl::Status Optimizer::LoadSingleFile(const std::string& path) {
  QTRAIN_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
  QTRAIN_ASSIGN_OR_RETURN(const int64_t step, ShardMetadata(file, "step"));
  const int64_t size = end_ - begin_;
  QTRAIN_ASSIGN_OR_RETURN(std::vector<float> exp_avg,
                          model::MakeHostVector<float>({size}, "the loaded optimizer state"));
  QTRAIN_ASSIGN_OR_RETURN(std::vector<float> exp_avg_sq,
                          model::MakeHostVector<float>({size}, "the loaded optimizer state"));
  if (file.tensors().size() != 2 * layout_->tensors().size()) {
    return absl::DataLossError(absl::StrCat(path, ": optimizer state has ", file.tensors().size(),
                                            " tensors, the model needs ",
                                            2 * layout_->tensors().size()));
  }
  for (const model::TensorSlot& slot : layout_->tensors()) {
    const int64_t from = std::max(begin_, slot.offset);
    const int64_t to = std::min(end_, slot.offset + slot.size);
    if (from >= to) continue;
    const std::optional<size_t> bytes = CheckedBytes(slot.size, sizeof(float));
    for (const auto& moment_of :
         {std::pair<std::string, std::vector<float>*>{"exp_avg.", &exp_avg},
          std::pair<std::string, std::vector<float>*>{"exp_avg_sq.", &exp_avg_sq}}) {
      const std::string& prefix = moment_of.first;  // captured below: not a structured binding
      std::vector<float>* out = moment_of.second;
      QTRAIN_ASSIGN_OR_RETURN(
          std::vector<float> moment,
          model::CatchAllocationFailure(
              absl::StrCat(path, ": tensor '", prefix, slot.name, "'"), bytes,
              [&] { return file.ReadAsFloat(prefix + slot.name, slot.shape); }));
      std::copy(moment.begin() + (from - slot.offset), moment.begin() + (to - slot.offset),
                out->begin() + (from - begin_));
    }
  }
  QTRAIN_RETURN_IF_ERROR(SetMoments(std::move(exp_avg), std::move(exp_avg_sq)));
  step_count_ = step;
  return absl::OkStatus();
}

std::vector<double> BlockSumsOfSquares(std::span<const float> values, int64_t block_elements) {
  std::vector<double> sums;
  for (size_t first = 0; first < values.size(); first += static_cast<size_t>(block_elements)) {
    const size_t last = std::min(values.size(), first + static_cast<size_t>(block_elements));
    double sum = 0.0;
    for (size_t i = first; i < last; ++i) sum += static_cast<double>(values[i]) * values[i];
    sums.push_back(sum);
  }
  return sums;
}

double NormOfBlockSums(std::span<const double> block_sums) {
  double total = 0.0;
  for (double s : block_sums) total += s;
  return std::sqrt(total);
}

double GradNormOf(std::span<const float> grads) {
  return NormOfBlockSums(BlockSumsOfSquares(grads, comm::kDefaultBlockElements));
}

}  // namespace qtrain::train
