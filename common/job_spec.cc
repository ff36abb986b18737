#include "common/job_spec.h"

#include <cmath>
#include <set>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/proto_yaml.h"
#include "common/status_macros.h"

namespace qtrain {
namespace {

// Collects "path: problem" lines.
class Problems {
 public:
  void Add(absl::string_view path, absl::string_view problem) {
    lines_.push_back(absl::StrCat(path, ": ", problem));
  }
  absl::Status ToStatus(absl::string_view source) const {
    if (lines_.empty()) return absl::OkStatus();
    std::string prefix = source.empty() ? "" : absl::StrCat(source, ": ");
    std::vector<std::string> lines;
    for (const std::string& line : lines_) lines.push_back(prefix + line);
    return absl::InvalidArgumentError(absl::StrJoin(lines, "\n"));
  }

 private:
  std::vector<std::string> lines_;
};

bool IsValidName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.') return false;
  }
  return true;
}

void ValidateModel(const v1::ModelSpec& model, Problems& problems) {
  switch (model.source_case()) {
    case v1::ModelSpec::SOURCE_NOT_SET:
      problems.Add("model", "required: set one of preset, config, init_from");
      return;
    case v1::ModelSpec::kPreset:
      if (model.preset().empty()) problems.Add("model.preset", "must not be empty");
      return;
    case v1::ModelSpec::kInitFrom:
      if (model.init_from().empty()) problems.Add("model.init_from", "must not be empty");
      return;
    case v1::ModelSpec::kConfig:
      break;
  }
  const v1::ModelConfig& c = model.config();
  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab_size", c.vocab_size()},
      {"hidden_size", c.hidden_size()},
      {"intermediate_size", c.intermediate_size()},
      {"num_hidden_layers", c.num_hidden_layers()},
      {"num_attention_heads", c.num_attention_heads()},
      {"num_key_value_heads", c.num_key_value_heads()},
      {"max_position_embeddings", c.max_position_embeddings()}};
  bool sizes_ok = true;
  for (const auto& [name, value] : sizes) {
    if (value <= 0) {
      problems.Add(absl::StrCat("model.config.", name), "required, must be > 0");
      sizes_ok = false;
    }
  }
  if (!(c.rope_theta() >= 0)) problems.Add("model.config.rope_theta", "must be >= 0 (0: 1e6)");
  if (!(c.rms_norm_eps() >= 0)) problems.Add("model.config.rms_norm_eps", "must be >= 0 (0: 1e-6)");
  if (!sizes_ok) return;
  if (c.hidden_size() % c.num_attention_heads() != 0) {
    problems.Add("model.config.num_attention_heads",
                 absl::StrCat("must divide hidden_size ", c.hidden_size()));
  } else if ((c.hidden_size() / c.num_attention_heads()) % 2 != 0) {
    problems.Add("model.config.num_attention_heads",
                 "hidden_size / num_attention_heads (the head size) must be even for RoPE");
  }
  if (c.num_attention_heads() % c.num_key_value_heads() != 0) {
    problems.Add("model.config.num_key_value_heads",
                 absl::StrCat("must divide num_attention_heads ", c.num_attention_heads()));
  }
}

void ValidateOptimizer(const v1::OptimizerSpec& o, Problems& problems) {
  if (!(o.lr() > 0)) problems.Add("optimizer.lr", "required, must be > 0");
  if (!(o.min_lr() >= 0 && o.min_lr() <= o.lr())) {
    problems.Add("optimizer.min_lr", absl::StrCat("must be in [0, lr] = [0, ", o.lr(), "]"));
  }
  if (o.warmup_steps() < 0) problems.Add("optimizer.warmup_steps", "must be >= 0");
  if (!(o.weight_decay() >= 0)) problems.Add("optimizer.weight_decay", "must be >= 0");
  if (!(o.beta1() >= 0 && o.beta1() < 1)) problems.Add("optimizer.beta1", "must be in [0, 1)");
  if (!(o.beta2() >= 0 && o.beta2() < 1)) problems.Add("optimizer.beta2", "must be in [0, 1)");
  if (!(o.eps() > 0)) problems.Add("optimizer.eps", "must be > 0");
  if (!(o.grad_clip() >= 0)) problems.Add("optimizer.grad_clip", "must be >= 0 (0: no clipping)");
  if (o.max_consecutive_nonfinite_steps() < 1) {
    problems.Add("optimizer.max_consecutive_nonfinite_steps", "must be >= 1");
  }
}

void ValidateCurriculum(const v1::JobSpec& spec, const std::optional<ModelLimits>& limits,
                        Problems& problems) {
  if (spec.curriculum().empty()) {
    problems.Add("curriculum", "required: at least one stage");
    return;
  }
  std::set<std::string> names;
  const int64_t global_tokens = spec.batch().global_tokens();
  for (int i = 0; i < spec.curriculum_size(); ++i) {
    const v1::CurriculumStage& stage = spec.curriculum(i);
    const std::string path = absl::StrCat("curriculum[", i, "]");
    if (stage.name().empty()) {
      problems.Add(path + ".name", "required");
    } else if (!names.insert(stage.name()).second) {
      problems.Add(path + ".name", absl::StrCat("duplicate stage name '", stage.name(), "'"));
    }
    bool sizes_ok = true;
    for (const auto& [field, value] : {std::pair<const char*, int64_t>{"seq_len", stage.seq_len()},
                                       {"tokens", stage.tokens()},
                                       {"micro_batch", stage.micro_batch()}}) {
      if (value <= 0) {
        problems.Add(absl::StrCat(path, ".", field), "required, must be > 0");
        sizes_ok = false;
      }
    }
    if (!(stage.rope_theta() >= 0)) problems.Add(path + ".rope_theta", "must be >= 0");
    if (!(stage.yarn_factor() == 0 || stage.yarn_factor() >= 1)) {
      problems.Add(path + ".yarn_factor", "must be 0 (off) or >= 1");
    }
    if (stage.yarn_original_max_position_embeddings() < 0) {
      problems.Add(path + ".yarn_original_max_position_embeddings", "must be >= 0");
    }
    if (limits && limits->max_position_embeddings > 0 && stage.seq_len() > 0) {
      const double factor = stage.yarn_factor() >= 1 ? stage.yarn_factor() : 1.0;
      const double allowed =
          std::floor(static_cast<double>(limits->max_position_embeddings) * factor);
      if (static_cast<double>(stage.seq_len()) > allowed) {
        problems.Add(path + ".seq_len",
                     absl::StrCat(stage.seq_len(), " exceeds the model's maximum of ", allowed,
                                  " positions (max_position_embeddings ",
                                  limits->max_position_embeddings, " x YaRN factor ", factor, ")"));
      }
    }
    if (!sizes_ok || global_tokens <= 0) continue;
    // Every world size the job may run with must split the global batch evenly.
    for (int64_t w = spec.world().min_workers(); w <= spec.world().max_workers(); ++w) {
      const int64_t per_pass = stage.seq_len() * stage.micro_batch() * w;
      if (global_tokens % per_pass != 0) {
        problems.Add(
            path + ".micro_batch",
            absl::StrCat("batch.global_tokens ", global_tokens,
                         " is not a multiple of seq_len x micro_batch x workers = ",
                         stage.seq_len(), " x ", stage.micro_batch(), " x ", w, " = ", per_pass));
        break;
      }
    }
    if (stage.tokens() < global_tokens) {
      problems.Add(path + ".tokens",
                   absl::StrCat(stage.tokens(), " is less than one global batch (", global_tokens,
                                " tokens)"));
    }
  }
}

}  // namespace

void ApplyJobSpecDefaults(v1::JobSpec* spec) {
  v1::OptimizerSpec* o = spec->mutable_optimizer();
  if (!o->has_weight_decay()) o->set_weight_decay(0.1);
  if (!o->has_beta1()) o->set_beta1(0.9);
  if (!o->has_beta2()) o->set_beta2(0.95);
  if (!o->has_eps()) o->set_eps(1e-8);
  if (!o->has_grad_clip()) o->set_grad_clip(1.0);
  if (!o->has_max_consecutive_nonfinite_steps()) o->set_max_consecutive_nonfinite_steps(8);
  if (o->schedule() == v1::LR_SCHEDULE_UNSPECIFIED) o->set_schedule(v1::LR_SCHEDULE_COSINE);
  if (spec->precision() == v1::PRECISION_UNSPECIFIED) spec->set_precision(v1::PRECISION_FP32);
  v1::WorldSpec* w = spec->mutable_world();
  if (w->min_workers() == 0) w->set_min_workers(1);
  if (w->max_workers() == 0) w->set_max_workers(w->min_workers());
  if (w->device() == v1::DEVICE_KIND_UNSPECIFIED) w->set_device(v1::DEVICE_KIND_CPU);
  if (!w->has_max_restarts()) w->set_max_restarts(3);
}

absl::Status ValidateJobSpec(const v1::JobSpec& spec, const JobSpecOptions& options,
                             std::string_view source) {
  Problems problems;
  if (!IsValidName(spec.name())) {
    problems.Add("name",
                 spec.name().empty() ? "required" : "use 1-63 letters, digits, '-', '_' or '.'");
  }
  ValidateModel(spec.model(), problems);
  std::optional<ModelLimits> limits;
  if (options.resolve_model && spec.model().source_case() != v1::ModelSpec::SOURCE_NOT_SET) {
    absl::StatusOr<ModelLimits> resolved = options.resolve_model(spec.model());
    if (resolved.ok()) {
      limits = *resolved;
    } else {
      problems.Add("model", resolved.status().message());
    }
  } else if (spec.model().has_config()) {
    limits = ModelLimits{spec.model().config().max_position_embeddings()};
  }
  if (spec.tokenizer().empty()) problems.Add("tokenizer", "required: path to tokenizer.json");
  if (spec.data().manifest().empty())
    problems.Add("data.manifest", "required: path to the shard manifest");
  if (!(spec.data().validation_fraction() >= 0 && spec.data().validation_fraction() < 0.5)) {
    problems.Add("data.validation_fraction", "must be in [0, 0.5)");
  }
  if (spec.batch().global_tokens() <= 0)
    problems.Add("batch.global_tokens", "required, must be > 0");
  if (spec.world().min_workers() < 1) problems.Add("world.min_workers", "must be >= 1");
  if (spec.world().max_workers() < spec.world().min_workers()) {
    problems.Add("world.max_workers", "must be >= world.min_workers");
  } else if (spec.world().max_workers() - spec.world().min_workers() > 4096) {
    problems.Add("world.max_workers", "must be within 4096 of world.min_workers");
  }
  if (spec.world().max_restarts() < 0) problems.Add("world.max_restarts", "must be >= 0");
  ValidateCurriculum(spec, limits, problems);
  ValidateOptimizer(spec.optimizer(), problems);
  if ((spec.precision() == v1::PRECISION_BF16 || spec.precision() == v1::PRECISION_FP16) &&
      spec.world().device() != v1::DEVICE_KIND_CUDA) {
    problems.Add("precision", absl::StrCat(v1::Precision_Name(spec.precision()),
                                           " needs world.device: cuda (the CPU backend is fp32)"));
  }
  if (spec.checkpoint().every_steps() < 0) problems.Add("checkpoint.every_steps", "must be >= 0");
  if (spec.checkpoint().keep_last() < 0)
    problems.Add("checkpoint.keep_last", "must be >= 0 (0: keep all)");
  if (spec.eval().every_steps() < 0) problems.Add("eval.every_steps", "must be >= 0");
  if (spec.eval().batches() < 0) problems.Add("eval.batches", "must be >= 0");
  if (spec.eval().batches() > 0 && spec.data().validation_fraction() == 0) {
    problems.Add("eval.batches", "evaluation needs data.validation_fraction > 0");
  }
  for (const auto& [key, value] : spec.labels()) {
    if (key.empty()) problems.Add("labels", "keys must not be empty");
  }
  return problems.ToStatus(std::string(source));
}

absl::StatusOr<v1::JobSpec> ParseJobSpec(std::string_view text, std::string_view source,
                                         const JobSpecOptions& options) {
  v1::JobSpec spec;
  QTRAIN_RETURN_IF_ERROR(ParseYamlToMessage(text, source, &spec));
  ApplyJobSpecDefaults(&spec);
  QTRAIN_RETURN_IF_ERROR(ValidateJobSpec(spec, options, source));
  return spec;
}

absl::StatusOr<v1::JobSpec> LoadJobSpecFile(const std::string& path,
                                            const JobSpecOptions& options) {
  QTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, 1 << 20));
  return ParseJobSpec(text, path, options);
}

int64_t StageSteps(const v1::JobSpec& spec, int stage) {
  const int64_t global = spec.batch().global_tokens();
  if (global <= 0) return 0;
  return (spec.curriculum(stage).tokens() + global - 1) / global;
}

}  // namespace qtrain
