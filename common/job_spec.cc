#include "common/job_spec.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/checked_math.h"
#include "common/file_util.h"
#include "common/job_spec_eval.h"
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
  // A line that already starts with its field path.
  void AddLine(absl::string_view line) { lines_.emplace_back(line); }
  size_t size() const { return lines_.size(); }
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

// Adds a problem unless lo <= value <= hi: `too_small` below, the limit above.
bool CheckInt(Problems& problems, absl::string_view path, int64_t value, int64_t lo, int64_t hi,
              absl::string_view too_small) {
  if (value < lo) {
    problems.Add(path, absl::StrCat(too_small, " (got ", value, ")"));
    return false;
  }
  if (value > hi) {
    problems.Add(path, absl::StrCat(value, " is larger than the limit of ", hi));
    return false;
  }
  return true;
}

// A RoPE base: 0 (the model's), or in (1, kMaxRopeTheta].
void CheckRopeTheta(Problems& problems, absl::string_view path, double theta,
                    absl::string_view zero_means) {
  if (theta == 0 || (theta > 1 && theta <= kMaxRopeTheta)) return;
  problems.Add(path, absl::StrCat("must be 0 (", zero_means, ") or in (1, ", kMaxRopeTheta,
                                  "], got ", theta));
}

bool IsValidName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.') return false;
  }
  return true;
}

void ValidateModelConfig(const v1::ModelConfig& c, Problems& problems) {
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
    sizes_ok &= CheckInt(problems, absl::StrCat("model.config.", name), value, 1, kMaxModelDim,
                         "required, must be > 0");
  }
  CheckRopeTheta(problems, "model.config.rope_theta", c.rope_theta(), "the default, 1e6");
  if (!(c.rms_norm_eps() >= 0)) {
    problems.Add("model.config.rms_norm_eps", "must be >= 0 (0: 1e-6)");
  } else if (!(c.rms_norm_eps() < 1)) {
    problems.Add("model.config.rms_norm_eps", absl::StrCat("must be < 1, got ", c.rms_norm_eps()));
  }
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
      ValidateModelConfig(model.config(), problems);
      return;
  }
}

// Asks the resolver, or reads the limits off an explicit config.
std::optional<ModelLimits> ResolveLimits(const v1::ModelSpec& model, const JobSpecOptions& options,
                                         Problems& problems) {
  if (model.source_case() == v1::ModelSpec::SOURCE_NOT_SET) return std::nullopt;
  if (options.resolve_model) {
    absl::StatusOr<ModelLimits> resolved = options.resolve_model(model);
    if (resolved.ok()) return *resolved;
    for (absl::string_view line : absl::StrSplit(resolved.status().message(), '\n')) {
      if (absl::StartsWith(line, "model.") || absl::StartsWith(line, "model:")) {
        problems.AddLine(line);
      } else {
        problems.Add("model", line);
      }
    }
    return std::nullopt;
  }
  if (!model.has_config()) return std::nullopt;
  const v1::ModelConfig& c = model.config();
  return ModelLimits{.max_position_embeddings = c.max_position_embeddings(),
                     .vocab_size = c.vocab_size(),
                     .hidden_size = c.hidden_size(),
                     .intermediate_size = c.intermediate_size(),
                     .num_layers = c.num_hidden_layers(),
                     .num_heads = c.num_attention_heads()};
}

void ValidateOptimizer(const v1::OptimizerSpec& o, Problems& problems) {
  if (!(o.lr() > 0)) problems.Add("optimizer.lr", "required, must be > 0");
  if (!(o.min_lr() >= 0 && o.min_lr() <= o.lr())) {
    problems.Add("optimizer.min_lr", absl::StrCat("must be in [0, lr] = [0, ", o.lr(), "]"));
  }
  CheckInt(problems, "optimizer.warmup_steps", o.warmup_steps(), 0, kMaxStepCount, "must be >= 0");
  if (!(o.weight_decay() >= 0)) problems.Add("optimizer.weight_decay", "must be >= 0");
  if (!(o.beta1() >= 0 && o.beta1() < 1)) problems.Add("optimizer.beta1", "must be in [0, 1)");
  if (!(o.beta2() >= 0 && o.beta2() < 1)) problems.Add("optimizer.beta2", "must be in [0, 1)");
  if (!(o.eps() > 0)) problems.Add("optimizer.eps", "must be > 0");
  if (!(o.grad_clip() >= 0)) problems.Add("optimizer.grad_clip", "must be >= 0 (0: no clipping)");
  CheckInt(problems, "optimizer.max_consecutive_nonfinite_steps",
           o.max_consecutive_nonfinite_steps(), 1, kMaxStepCount, "must be >= 1");
  if (o.has_loss_scale()) {
    int exponent = 0;
    const double mantissa = std::frexp(o.loss_scale(), &exponent);
    if (!(o.loss_scale() >= 1 && o.loss_scale() <= 16777216.0) || mantissa != 0.5) {
      problems.Add("optimizer.loss_scale",
                   absl::StrCat(o.loss_scale(), " is not a power of two in [1, 2^24]"));
    }
  }
  if (o.has_loss_scale_growth_interval()) {
    CheckInt(problems, "optimizer.loss_scale_growth_interval", o.loss_scale_growth_interval(), 1,
             kMaxStepCount, "must be >= 1");
  }
}

// True when the worker counts are usable for the per-stage checks.
bool ValidateWorld(const v1::WorldSpec& w, Problems& problems) {
  bool ok =
      CheckInt(problems, "world.min_workers", w.min_workers(), 1, kMaxWorkers, "must be >= 1");
  ok &= CheckInt(problems, "world.max_workers", w.max_workers(), 1, kMaxWorkers, "must be >= 1");
  if (!ok) return false;
  if (w.max_workers() < w.min_workers()) {
    problems.Add("world.max_workers", "must be >= world.min_workers");
    return false;
  }
  if (w.max_workers() - w.min_workers() > kMaxWorkerSpan) {
    problems.Add("world.max_workers",
                 absl::StrCat("must be within ", kMaxWorkerSpan, " of world.min_workers"));
    return false;
  }
  return true;
}

// seq_len against the model's positions (times the YaRN factor, as the trainer extends them).
void CheckStagePositions(const v1::CurriculumStage& stage, const ModelLimits& limits,
                         const std::string& path, Problems& problems) {
  if (limits.max_position_embeddings <= 0) return;
  const bool yarn = stage.yarn_factor() > 1;
  const int64_t base = yarn && stage.yarn_original_max_position_embeddings() > 0
                           ? stage.yarn_original_max_position_embeddings()
                           : limits.max_position_embeddings;
  const double factor = yarn ? stage.yarn_factor() : 1.0;
  const std::optional<int64_t> allowed = ScaledPositions(base, factor);
  if (!allowed) {
    problems.Add(path + ".yarn_factor",
                 absl::StrCat(base, " positions x YaRN factor ", factor, " does not fit in int64"));
    return;
  }
  if (stage.seq_len() > *allowed) {
    problems.Add(path + ".seq_len",
                 absl::StrCat(stage.seq_len(), " exceeds the model's maximum of ", *allowed,
                              " positions (", yarn ? "YaRN original " : "max_position_embeddings ",
                              base, " x YaRN factor ", factor, ")"));
  }
}

// The largest buffers of one micro-batch's forward and backward pass, in elements.
void CheckActivationSizes(const v1::CurriculumStage& stage, const ModelLimits& limits,
                          const std::string& path, Problems& problems) {
  const int64_t seq = stage.seq_len(), batch = stage.micro_batch();
  const int64_t width = std::max(limits.hidden_size, limits.intermediate_size);
  const struct {
    const char* what;
    std::optional<int64_t> elements;
  } buffers[] = {
      {"logits (tokens x vocab_size)", CheckedProduct({batch, seq, limits.vocab_size})},
      {"layer activations (tokens x layers x width)",
       CheckedProduct({batch, seq, limits.num_layers, width})},
      {"attention scores (micro_batch x heads x seq_len x seq_len)",
       CheckedProduct({batch, limits.num_heads, seq, seq})},
  };
  for (const auto& buffer : buffers) {
    if (!buffer.elements || *buffer.elements > kMaxActivationElements) {
      problems.Add(path + ".micro_batch",
                   absl::StrCat("seq_len ", seq, " x micro_batch ", batch, ": the ", buffer.what,
                                " exceed the limit of ", kMaxActivationElements, " elements"));
      return;
    }
  }
}

// Unset (a spec without defaults applied) is the default, true.
bool WorkerInvariant(const v1::JobSpec& spec) {
  return !spec.batch().has_worker_invariant() || spec.batch().worker_invariant();
}

bool IsPowerOfTwo(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

std::string Workers(int64_t n) { return absl::StrCat(n, n == 1 ? " worker" : " workers"); }

// Without worker invariance only an even split is needed: seq_len x micro_batch x W must
// divide batch.global_tokens for every W.
void CheckEvenSplits(const v1::JobSpec& spec, int i, int64_t micro_batches, const std::string& path,
                     Problems& problems) {
  const v1::CurriculumStage& stage = spec.curriculum(i);
  for (int64_t w = spec.world().min_workers(); w <= spec.world().max_workers(); ++w) {
    if (micro_batches % w == 0) continue;
    problems.Add(path + ".micro_batch",
                 absl::StrCat("batch.global_tokens ", spec.batch().global_tokens(),
                              " is not a multiple of seq_len x micro_batch x workers = ",
                              stage.seq_len(), " x ", stage.micro_batch(), " x ", w));
    return;
  }
}

// Every world size W the job may run with must give each rank the same power-of-two share of
// the step's M micro-batches: the pairwise summation tree of M leaves then splits into W equal
// subtrees, so the summed gradient is the same bytes for every W. The first bad W is reported.
void CheckBatchSplits(const v1::JobSpec& spec, int i, const std::string& path, Problems& problems) {
  const v1::CurriculumStage& stage = spec.curriculum(i);
  const int64_t global_tokens = spec.batch().global_tokens();
  // Both are bounded (kMaxMicroBatchTokens), so the product fits.
  const int64_t per_micro_batch = stage.seq_len() * stage.micro_batch();
  if (global_tokens % per_micro_batch != 0) {
    problems.Add(path + ".micro_batch",
                 absl::StrCat("batch.global_tokens ", global_tokens,
                              " is not a multiple of seq_len x micro_batch = ", stage.seq_len(),
                              " x ", stage.micro_batch(), " = ", per_micro_batch));
    return;
  }
  const int64_t m = global_tokens / per_micro_batch;
  if (!WorkerInvariant(spec)) {
    CheckEvenSplits(spec, i, m, path, problems);
    return;
  }
  const int64_t lo = spec.world().min_workers(), hi = spec.world().max_workers();
  for (int64_t w = lo; w <= hi; ++w) {
    if (m % w == 0 && IsPowerOfTwo(m / w)) continue;
    const std::string stage_name = stage.name().empty()
                                       ? absl::StrCat("stage ", i)
                                       : absl::StrCat("stage '", stage.name(), "'");
    const std::string share =
        m % w != 0 ? absl::StrCat(m, "/", w) : absl::StrCat(m, "/", w, " = ", m / w);
    const std::string sizes = lo == hi
                                  ? absl::StrCat("world size ", lo, " must give")
                                  : absl::StrCat("world sizes ", lo, "-", hi, " must each give");
    problems.Add(path + ".micro_batch",
                 absl::StrCat(stage_name, ": ", m, " micro-batches per step over ", Workers(w),
                              " is ", share, ", not a power of two per worker (", sizes,
                              " every rank 2^k micro-batches)"));
    return;
  }
}

// Field checks of one stage; true when its sizes are usable for the batch checks.
bool ValidateStageFields(const v1::CurriculumStage& stage, const std::string& path,
                         Problems& problems) {
  bool sizes_ok = CheckInt(problems, path + ".seq_len", stage.seq_len(), 1, kMaxSeqLen,
                           "required, must be > 0");
  sizes_ok &=
      CheckInt(problems, path + ".tokens", stage.tokens(), 1, kMaxTokens, "required, must be > 0");
  sizes_ok &= CheckInt(problems, path + ".micro_batch", stage.micro_batch(), 1, kMaxMicroBatch,
                       "required, must be > 0");
  if (sizes_ok && stage.seq_len() * stage.micro_batch() > kMaxMicroBatchTokens) {
    problems.Add(path + ".micro_batch",
                 absl::StrCat("seq_len x micro_batch = ", stage.seq_len() * stage.micro_batch(),
                              " tokens is larger than the limit of ", kMaxMicroBatchTokens));
    sizes_ok = false;
  }
  CheckRopeTheta(problems, path + ".rope_theta", stage.rope_theta(), "the model's");
  if (!(stage.yarn_factor() == 0 ||
        (stage.yarn_factor() >= 1 && stage.yarn_factor() <= kMaxYarnFactor))) {
    problems.Add(path + ".yarn_factor",
                 absl::StrCat("must be 0 (off) or >= 1 and <= ", kMaxYarnFactor, ", got ",
                              stage.yarn_factor()));
  }
  CheckInt(problems, path + ".yarn_original_max_position_embeddings",
           stage.yarn_original_max_position_embeddings(), 0, kMaxModelDim, "must be >= 0");
  return sizes_ok;
}

void ValidateCurriculum(const v1::JobSpec& spec, const std::optional<ModelLimits>& limits,
                        bool world_ok, Problems& problems) {
  if (spec.curriculum().empty()) {
    problems.Add("curriculum", "required: at least one stage");
    return;
  }
  if (spec.curriculum_size() > kMaxStages) {
    problems.Add("curriculum", absl::StrCat(spec.curriculum_size(),
                                            " stages is more than the limit of ", kMaxStages));
    return;
  }
  std::set<std::string> names;
  const int64_t global_tokens = spec.batch().global_tokens();
  const bool global_ok = global_tokens > 0 && global_tokens <= kMaxTokens;
  for (int i = 0; i < spec.curriculum_size(); ++i) {
    const v1::CurriculumStage& stage = spec.curriculum(i);
    const std::string path = absl::StrCat("curriculum[", i, "]");
    if (stage.name().empty()) {
      problems.Add(path + ".name", "required");
    } else if (!names.insert(stage.name()).second) {
      problems.Add(path + ".name", absl::StrCat("duplicate stage name '", stage.name(), "'"));
    }
    const bool sizes_ok = ValidateStageFields(stage, path, problems);
    if (!sizes_ok) continue;
    if (limits) {
      CheckStagePositions(stage, *limits, path, problems);
      CheckActivationSizes(stage, *limits, path, problems);
    }
    if (!global_ok) continue;
    if (world_ok) CheckBatchSplits(spec, i, path, problems);
    if (stage.tokens() < global_tokens) {
      problems.Add(path + ".tokens",
                   absl::StrCat(stage.tokens(), " is less than one global batch (", global_tokens,
                                " tokens)"));
    }
  }
}

// Warmup longer than the job would never reach the peak learning rate.
void CheckWarmupFitsTheJob(const v1::JobSpec& spec, Problems& problems) {
  const int64_t warmup = spec.optimizer().warmup_steps();
  if (warmup <= 0 || warmup > kMaxStepCount || spec.batch().global_tokens() <= 0) return;
  const absl::StatusOr<int64_t> total = TotalSteps(spec);
  if (total.ok() && warmup > *total) {
    problems.Add("optimizer.warmup_steps",
                 absl::StrCat(warmup, " is more than the job's ", *total,
                              " optimizer steps (the learning rate would never reach lr)"));
  }
}

void ValidateSchedules(const v1::JobSpec& spec, Problems& problems) {
  CheckInt(problems, "checkpoint.every_steps", spec.checkpoint().every_steps(), 0, kMaxStepCount,
           "must be >= 0");
  CheckInt(problems, "checkpoint.keep_last", spec.checkpoint().keep_last(), 0, kMaxKeepLast,
           "must be >= 0 (0: keep all)");
  CheckInt(problems, "eval.every_steps", spec.eval().every_steps(), 0, kMaxStepCount,
           "must be >= 0");
  CheckInt(problems, "eval.batches", spec.eval().batches(), 0, kMaxEvalBatches, "must be >= 0");
  if (spec.eval().batches() > 0 && spec.data().validation_fraction() == 0) {
    problems.Add("eval.batches", "evaluation needs data.validation_fraction > 0");
  }
  for (const std::string& line : EvalTaskProblems(spec.eval())) problems.AddLine(line);
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
  // Only unset fields get defaults: an explicit 0 stays and is refused by validation.
  if (!w->has_min_workers()) w->set_min_workers(1);
  if (!w->has_max_workers()) w->set_max_workers(w->min_workers());
  if (w->device() == v1::DEVICE_KIND_UNSPECIFIED) w->set_device(v1::DEVICE_KIND_CPU);
  if (!w->has_max_restarts()) w->set_max_restarts(3);
  if (!w->has_regroup_seconds()) w->set_regroup_seconds(kDefaultRegroupSeconds);
  if (!spec->batch().has_worker_invariant()) spec->mutable_batch()->set_worker_invariant(true);
}

absl::Status ValidateJobSpec(const v1::JobSpec& spec, const JobSpecOptions& options,
                             std::string_view source) {
  Problems problems;
  if (!IsValidName(spec.name())) {
    problems.Add("name",
                 spec.name().empty() ? "required" : "use 1-63 letters, digits, '-', '_' or '.'");
  }
  const size_t before_model = problems.size();
  ValidateModel(spec.model(), problems);
  // A model whose fields are already refused is not resolved again (one message per problem).
  const std::optional<ModelLimits> limits = problems.size() == before_model
                                                ? ResolveLimits(spec.model(), options, problems)
                                                : std::nullopt;
  if (spec.tokenizer().empty()) problems.Add("tokenizer", "required: path to tokenizer.json");
  if (spec.data().manifest().empty())
    problems.Add("data.manifest", "required: path to the shard manifest");
  if (!(spec.data().validation_fraction() >= 0 && spec.data().validation_fraction() < 0.5)) {
    problems.Add("data.validation_fraction", "must be in [0, 0.5)");
  }
  CheckInt(problems, "batch.global_tokens", spec.batch().global_tokens(), 1, kMaxTokens,
           "required, must be > 0");
  const bool world_ok = ValidateWorld(spec.world(), problems);
  CheckInt(problems, "world.max_restarts", spec.world().max_restarts(), 0, kMaxRestarts,
           "must be >= 0");
  const double regroup = spec.world().regroup_seconds();
  if (!(regroup >= 0 && regroup <= kMaxRegroupSeconds)) {  // also NaN
    problems.Add("world.regroup_seconds",
                 absl::StrCat("must be in [0, ", kMaxRegroupSeconds, "] seconds, got ", regroup));
  }
  if (!WorkerInvariant(spec)) {
    problems.Add("batch.worker_invariant",
                 "false (a ring all-reduce) is not available; use true (the default): the "
                 "step's gradient is then the same bytes for every worker count");
  }
  ValidateCurriculum(spec, limits, world_ok, problems);
  ValidateOptimizer(spec.optimizer(), problems);
  CheckWarmupFitsTheJob(spec, problems);
  if ((spec.precision() == v1::PRECISION_BF16 || spec.precision() == v1::PRECISION_FP16) &&
      spec.world().device() != v1::DEVICE_KIND_CUDA) {
    problems.Add("precision", absl::StrCat(v1::Precision_Name(spec.precision()),
                                           " needs world.device: cuda (the CPU backend is fp32)"));
  }
  ValidateSchedules(spec, problems);
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
  QTRAIN_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path, kMaxJobSpecBytes));
  return ParseJobSpec(text, path, options);
}

int64_t StageSteps(const v1::JobSpec& spec, int stage) {
  const int64_t global = spec.batch().global_tokens();
  const int64_t tokens = spec.curriculum(stage).tokens();
  if (global <= 0 || tokens <= 0) return 0;
  // Written without tokens + global - 1, which can overflow.
  return tokens / global + (tokens % global != 0 ? 1 : 0);
}

absl::StatusOr<std::vector<int64_t>> StageStartSteps(const v1::JobSpec& spec) {
  std::vector<int64_t> starts = {0};
  for (int i = 0; i < spec.curriculum_size(); ++i) {
    const std::optional<int64_t> next = CheckedAdd(starts.back(), StageSteps(spec, i));
    if (!next) {
      return absl::InvalidArgumentError(
          absl::StrCat("curriculum[", i, "].tokens: the job's total steps overflow int64"));
    }
    starts.push_back(*next);
  }
  return starts;
}

absl::StatusOr<int64_t> TotalSteps(const v1::JobSpec& spec) {
  QTRAIN_ASSIGN_OR_RETURN(std::vector<int64_t> starts, StageStartSteps(spec));
  return starts.back();
}

absl::StatusOr<int64_t> AccumulationSteps(const v1::JobSpec& spec, int stage, int64_t workers) {
  const v1::CurriculumStage& s = spec.curriculum(stage);
  const std::optional<int64_t> per_pass = CheckedProduct({s.seq_len(), s.micro_batch(), workers});
  const std::string path = absl::StrCat("curriculum[", stage, "].micro_batch");
  if (!per_pass || *per_pass <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": seq_len x micro_batch x workers = ", s.seq_len(), " x ",
                     s.micro_batch(), " x ", workers, " is not a positive int64"));
  }
  if (spec.batch().global_tokens() % *per_pass != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": batch.global_tokens ",
                                                   spec.batch().global_tokens(),
                                                   " is not a multiple of ", *per_pass));
  }
  return spec.batch().global_tokens() / *per_pass;
}

std::optional<int64_t> ScaledPositions(int64_t positions, double yarn_factor) {
  if (!std::isfinite(yarn_factor)) return std::nullopt;
  if (yarn_factor <= 1) return positions;
  return CheckedDoubleToInt64(static_cast<double>(positions) * yarn_factor);
}

}  // namespace qtrain
