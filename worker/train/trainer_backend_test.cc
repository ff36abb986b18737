// The trainer on a backend whose memory the host cannot read (TrainerOptions::backend), as a
// GPU's is: OpaqueMemoryBackend runs the CPU backend's ops behind pointers that crash when
// dereferenced, so a run that completes never touched the model's memory except through the
// backend's copies, and its bytes must be those of the same job on the CPU backend.
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/forwarding_backend.h"
#include "worker/model/checkpoint_io.h"
#include "worker/model/config.h"
#include "worker/model/opaque_backend_test_util.h"
#include "worker/model/param_layout.h"
#include "worker/train/metrics_log.h"
#include "worker/train/synthetic_tokens_test_util.h"
#include "worker/train/trainer.h"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

InMemoryTokenSource MakeData(int64_t n) {
  return testing::SyntheticTokens(n, 777, "synthetic-backend-v1");
}

// Two stages (the second with another RoPE base, so the model is rebuilt), accumulation of 2
// and 4 micro-batches, checkpoints, evaluation. `world` and `precision` vary.
std::string SpecText(const std::string& device, const std::string& precision = "fp32",
                     const std::string& optimizer_extra = "") {
  return absl::StrCat(R"(
name: backend-test
seed: 11
model: {preset: qwen2-test}
tokenizer: unused.json
data: {manifest: unused.json, validation_fraction: 0.1}
curriculum:
  - {name: short, seq_len: 16, tokens: 768, micro_batch: 8}
  - {name: long, seq_len: 32, tokens: 768, micro_batch: 2, rope_theta: 40000}
batch: {global_tokens: 256}
checkpoint: {every_steps: 2, keep_last: 0}
eval: {every_steps: 2, batches: 2}
optimizer: {lr: 1e-2, min_lr: 1e-3, warmup_steps: 2)",
                      optimizer_extra, R"(}
world: {device: )",
                      device, "}\nprecision: ", precision, "\n");
}

class TrainerBackendTest : public ::testing::Test {
 protected:
  TrainerBackendTest() : data_(MakeData(60000)) {}
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("trainer_backend_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  absl::StatusOr<TrainerSummary> Train(const std::string& run, const std::string& spec_text,
                                       TrainerOptions options = {}) {
    auto spec = ParseJobSpec(spec_text, "spec.yaml");
    if (!spec.ok()) return spec.status();
    auto config = model::PresetConfig("qwen2-test");
    options.run_dir = (root_ / run).string();
    auto trainer = Trainer::Create(*spec, *config, std::nullopt, data_, std::move(options));
    if (!trainer.ok()) return trainer.status();
    return (*trainer)->Run();
  }
  std::string Hash(const std::string& file) {
    auto digest = Sha256File((root_ / file).string());
    return digest.ok() ? *digest : "missing: " + std::string(digest.status().message());
  }
  // The logged losses and gradient norms of a run, step by step.
  std::vector<std::pair<double, double>> Curve(const std::string& run) {
    std::vector<std::pair<double, double>> curve;
    auto records = MetricsLog::ReadAll((root_ / run / "metrics.jsonl").string());
    EXPECT_TRUE(records.ok()) << records.status();
    if (!records.ok()) return curve;
    for (const nlohmann::json& r : *records) {
      if (r.contains("step"))
        curve.emplace_back(r["loss"].get<double>(), r["grad_norm"].get<double>());
    }
    return curve;
  }

  InMemoryTokenSource data_;
  fs::path root_;
};

TEST_F(TrainerBackendTest, Fp32OnADeviceBackendIsTheCpuRunBitForBit) {
  ASSERT_TRUE(Train("cpu", SpecText("cpu")).ok());
  model::OpaqueMemoryBackend device;
  TrainerOptions options;
  options.backend = &device;
  auto summary = Train("device", SpecText("cuda"), options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_TRUE(summary->completed);
  EXPECT_EQ(summary->steps, 6);
  EXPECT_EQ(Curve("device"), Curve("cpu"));
  EXPECT_EQ(Hash("device/final/model.safetensors"), Hash("cpu/final/model.safetensors"));
  // The optimizer state too (one shard, the whole buffer).
  const std::string moments = "checkpoints/step-000000000004/optimizer-00000-of-00001.safetensors";
  EXPECT_EQ(Hash("device/" + moments), Hash("cpu/" + moments));
}

TEST_F(TrainerBackendTest, Bf16OnADeviceBackendLearnsAndResumesExactly) {
  model::OpaqueMemoryBackend device;
  TrainerOptions options;
  options.backend = &device;
  auto straight = Train("straight", SpecText("cuda", "bf16"), options);
  ASSERT_TRUE(straight.ok()) << straight.status();
  ASSERT_TRUE(straight->completed);
  const std::vector<std::pair<double, double>> curve = Curve("straight");
  ASSERT_EQ(curve.size(), 6u);
  EXPECT_LT(curve.back().first, curve.front().first);
  // bf16 compute is not the fp32 run, but it follows it closely.
  ASSERT_TRUE(Train("fp32", SpecText("cpu")).ok());
  const std::vector<std::pair<double, double>> fp32 = Curve("fp32");
  ASSERT_EQ(fp32.size(), 6u);
  bool any_difference = false;
  for (size_t i = 0; i < curve.size(); ++i) {
    EXPECT_NEAR(curve[i].first, fp32[i].first, 0.05 * fp32[i].first) << "step " << i + 1;
    any_difference |= curve[i].first != fp32[i].first;
  }
  EXPECT_TRUE(any_difference) << "the bf16 run computed in fp32";
  // The export is the fp32 master weights, loadable as any checkpoint.
  EXPECT_TRUE(model::LoadCheckpoint((root_ / "straight" / "final").string()).ok());

  // Stopped mid-stage and on the stage boundary (3 steps each), then resumed: the same bytes.
  for (int64_t stop : {1, 3}) {
    const std::string run = absl::StrCat("stopped_at_", stop);
    TrainerOptions first = options;
    first.stop_after_step = stop;
    auto partial = Train(run, SpecText("cuda", "bf16"), first);
    ASSERT_TRUE(partial.ok()) << partial.status();
    EXPECT_EQ(partial->steps, stop);
    auto resumed = Train(run, SpecText("cuda", "bf16"), options);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    EXPECT_TRUE(resumed->completed);
    EXPECT_EQ(Hash(run + "/final/model.safetensors"), Hash("straight/final/model.safetensors"))
        << "stopped at " << stop;
    EXPECT_EQ(Curve(run), curve);
  }
}

// Counts the bytes copied between the host and the backend.
class CopyCountingBackend final : public kernels::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  kernels::OpStatus CopyHostToBackend(void* dst, const void* src, size_t bytes) override {
    to_device += static_cast<int64_t>(bytes);
    return inner().CopyHostToBackend(dst, src, bytes);
  }
  kernels::OpStatus CopyBackendToHost(void* dst, const void* src, size_t bytes) override {
    to_host += static_cast<int64_t>(bytes);
    return inner().CopyBackendToHost(dst, src, bytes);
  }
  int64_t to_device = 0;
  int64_t to_host = 0;
};

// A group of one steps in backend memory: between two step reports with no checkpoint in
// between, what crosses to the host is scalars and token ids, not a gradient or the weights.
TEST_F(TrainerBackendTest, TheDeviceResidentStepLeavesTheWeightsOnTheDevice) {
  model::OpaqueMemoryBackend opaque;
  CopyCountingBackend device(opaque);
  TrainerOptions options;
  options.backend = &device;
  std::vector<std::pair<int64_t, int64_t>> copied;  // (to host, to device) at each report
  options.on_step = [&](const StepReport&) {
    copied.emplace_back(device.to_host, device.to_device);
  };
  // Checkpoints only at the stage ends (steps 3 and 6), evaluation every 2 steps.
  std::string spec = SpecText("cuda", "bf16");
  spec.replace(spec.find("every_steps: 2, keep_last"), 14, "every_steps: 9");
  ASSERT_TRUE(Train("resident", spec, options).ok());
  ASSERT_EQ(copied.size(), 6u);
  const int64_t weight_bytes =
      model::ParameterLayout(*model::PresetConfig("qwen2-test")).total_size() *
      static_cast<int64_t>(sizeof(float));
  // Steps 2 (2 micro-batches and an evaluation) and 5 (4 micro-batches).
  for (size_t step : {2u, 5u}) {
    const int64_t to_host = copied[step - 1].first - copied[step - 2].first;
    const int64_t to_device = copied[step - 1].second - copied[step - 2].second;
    EXPECT_GT(to_host, 0) << "step " << step;
    EXPECT_LT(to_host, weight_bytes / 4) << "step " << step;
    EXPECT_LT(to_device, weight_bytes / 4) << "step " << step;
  }
}

TEST_F(TrainerBackendTest, TheDeviceOfTheSpecMustMatchTheBackend) {
  auto on_cpu = Train("cuda_on_cpu", SpecText("cuda"));
  EXPECT_EQ(on_cpu.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(on_cpu.status().message(), HasSubstr("qtrain-worker --device cuda"));

  model::OpaqueMemoryBackend device;
  TrainerOptions options;
  options.backend = &device;
  auto cpu_job = Train("cpu_on_device", SpecText("cpu"), options);
  EXPECT_EQ(cpu_job.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(cpu_job.status().message(), HasSubstr("the opaque-cpu backend"));

  // Nothing was written for the refused jobs.
  EXPECT_FALSE(fs::exists(root_ / "cuda_on_cpu" / "job.json"));
  EXPECT_FALSE(fs::exists(root_ / "cpu_on_device" / "job.json"));
}

// The loss scales logged per step (fp16 runs only).
std::vector<double> LossScales(const fs::path& run) {
  std::vector<double> scales;
  auto records = MetricsLog::ReadAll((run / "metrics.jsonl").string());
  EXPECT_TRUE(records.ok()) << records.status();
  if (!records.ok()) return scales;
  for (const nlohmann::json& r : *records) {
    if (r.contains("step")) scales.push_back(r.value("loss_scale", -1.0));
  }
  return scales;
}

TEST_F(TrainerBackendTest, Fp16WithLossScalingLearnsAndResumesExactly) {
  model::OpaqueMemoryBackend device;
  TrainerOptions options;
  options.backend = &device;
  // Growth every 2 steps, so that the scale changes within the run and must be resumed.
  const std::string spec =
      SpecText("cuda", "fp16", ", loss_scale: 1024, loss_scale_growth_interval: 2");
  auto straight = Train("straight", spec, options);
  ASSERT_TRUE(straight.ok()) << straight.status();
  ASSERT_TRUE(straight->completed);
  EXPECT_EQ(straight->skipped_steps, 0);
  const std::vector<std::pair<double, double>> curve = Curve("straight");
  ASSERT_EQ(curve.size(), 6u);
  EXPECT_LT(curve.back().first, curve.front().first);
  EXPECT_EQ(LossScales(root_ / "straight"),
            (std::vector<double>{1024, 1024, 2048, 2048, 4096, 4096}));
  ASSERT_TRUE(Train("fp32", SpecText("cpu")).ok());
  const std::vector<std::pair<double, double>> fp32 = Curve("fp32");
  ASSERT_EQ(fp32.size(), 6u);
  bool any_difference = false;
  for (size_t i = 0; i < curve.size(); ++i) {
    // fp16 keeps 3 more mantissa bits than bf16: closer to the fp32 run. The norms are the
    // unscaled ones.
    EXPECT_NEAR(curve[i].first, fp32[i].first, 0.02 * fp32[i].first) << "step " << i + 1;
    EXPECT_NEAR(curve[i].second, fp32[i].second, 0.05 * fp32[i].second) << "step " << i + 1;
    any_difference |= curve[i].first != fp32[i].first;
  }
  EXPECT_TRUE(any_difference) << "the fp16 run computed in fp32";
  for (int64_t stop : {1, 3}) {
    const std::string run = absl::StrCat("stopped_at_", stop);
    TrainerOptions first = options;
    first.stop_after_step = stop;
    ASSERT_TRUE(Train(run, spec, first).ok());
    auto resumed = Train(run, spec, options);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    EXPECT_EQ(Hash(run + "/final/model.safetensors"), Hash("straight/final/model.safetensors"))
        << "stopped at " << stop;
    EXPECT_EQ(LossScales(root_ / run), LossScales(root_ / "straight")) << "stopped at " << stop;
  }
}

TEST_F(TrainerBackendTest, Fp16OverflowsHalveTheScaleWithoutStoppingTheRun) {
  model::OpaqueMemoryBackend device;
  TrainerOptions options;
  options.backend = &device;
  std::vector<std::string> events;
  options.on_event = [&](const std::string& e) { events.push_back(e); };
  // 2^24: the scaled logit gradients (up to 2^24 / 256 tokens) overflow fp16's 65504, more
  // steps in a row than max_consecutive_nonfinite_steps allows for real non-finite steps.
  auto summary =
      Train("overflow",
            SpecText("cuda", "fp16", ", loss_scale: 16777216, max_consecutive_nonfinite_steps: 1"),
            options);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_TRUE(summary->completed);
  EXPECT_GE(summary->skipped_steps, 2);
  EXPECT_LT(summary->skipped_steps, 6);
  const std::vector<double> scales = LossScales(root_ / "overflow");
  ASSERT_EQ(scales.size(), 6u);
  EXPECT_EQ(scales[0], 16777216.0);
  EXPECT_EQ(scales[1], 8388608.0);
  EXPECT_LT(scales.back(), scales.front());
  int overflow_events = 0;
  for (const std::string& e : events)
    overflow_events += e.find("overflowed at loss scale") != std::string::npos;
  EXPECT_EQ(overflow_events, summary->skipped_steps);
}

TEST_F(TrainerBackendTest, BadLossScalesAreRefused) {
  model::OpaqueMemoryBackend device;
  TrainerOptions options;
  options.backend = &device;
  for (const char* bad : {", loss_scale: 1000", ", loss_scale: 0.5", ", loss_scale: 33554432",
                          ", loss_scale_growth_interval: 0"}) {
    auto refused = Train("bad", SpecText("cuda", "fp16", bad), options);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(refused.status().message(), HasSubstr("optimizer.loss_scale")) << bad;
  }
}

}  // namespace
}  // namespace qtrain::train
