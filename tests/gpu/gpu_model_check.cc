// The whole model on the CUDA backend (worker/model/device_check.h), parts (b)-(d) of
// tests/gpu/run.sh:
//   (b) qwen2-tiny's loss and gradients, fp32, bf16 and fp16 (loss-scaled), against the CPU
//       backend in fp32;
//   (c) a 30-step bf16 training run of qwen2-tiny whose loss curve follows the CPU's;
//   (d) qwen2-0.5b training-step throughput in bf16 at sequence 2048 and 4096 (tokens/s, model
//       TFLOP/s, MFU against the card's bf16 dense peak), and one 32,768-token step with
//       activation recomputation (time, peak memory).
// Without a GPU it says so and exits 0.
//   gpu_model_check [--json=<file>] [--config-out=<file>] [--quick] [--skip-long]
//                   [--peak-tflops=<x>]
// --config-out: writes qwen2-0.5b's transformers config.json there first (the PyTorch peer of
// run.sh trains the same model from it). --quick: (b) and (c) only. --skip-long: no 32K step.
// --peak-tflops: the card's bf16 dense peak when its name is not in the table below. Exit status 1
// on any failed check or error.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>

#include "kernels/cuda/cuda_backend.h"
#include "nlohmann/json.hpp"
#include "worker/model/config.h"
#include "worker/model/device_check.h"

namespace {

using qtrain::kernels::DType;
namespace model = qtrain::model;

// Dense bf16 tensor-core peak (TFLOP/s, no sparsity) of the cards this project targets, from
// their datasheets: A100 312; H100 SXM and H200 989; H100 PCIe 756.
double PeakBf16Tflops(std::string_view name) {
  auto has = [&](std::string_view s) { return name.find(s) != std::string_view::npos; };
  if (has("H200")) return 989.0;
  if (has("H100")) return has("PCIe") ? 756.0 : 989.0;
  if (has("A100")) return 312.0;
  return 0;
}

struct Flags {
  std::string json, config_out;
  bool quick = false, skip_long = false;
  double peak_tflops = 0;
};

bool ParseFlags(int argc, char** argv, Flags& flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.rfind("--json=", 0) == 0) {
      flags.json = std::string(arg.substr(7));
    } else if (arg.rfind("--config-out=", 0) == 0) {
      flags.config_out = std::string(arg.substr(13));
    } else if (arg == "--quick") {
      flags.quick = true;
    } else if (arg == "--skip-long") {
      flags.skip_long = true;
    } else if (arg.rfind("--peak-tflops=", 0) == 0) {
      char* end = nullptr;
      const std::string value(arg.substr(14));
      flags.peak_tflops = std::strtod(value.c_str(), &end);
      if (end == value.c_str() || *end != '\0' || !(flags.peak_tflops > 0)) {
        std::fprintf(stderr, "gpu_model_check: --peak-tflops wants a positive number, not '%s'\n",
                     value.c_str());
        return false;
      }
    } else {
      std::fprintf(stderr, "gpu_model_check: unknown flag '%s'\n", argv[i]);
      return false;
    }
  }
  return true;
}

model::ModelConfig Preset(const char* name) {
  auto config = model::PresetConfig(name);
  if (!config.ok()) {
    std::fprintf(stderr, "gpu_model_check: %s\n", std::string(config.status().message()).c_str());
    std::exit(1);
  }
  return *config;
}

}  // namespace

int main(int argc, char** argv) {
  Flags flags;
  if (!ParseFlags(argc, argv, flags)) return 2;
  if (!flags.config_out.empty()) {
    std::ofstream out(flags.config_out);
    out << model::ConfigToJson(Preset("qwen2-0.5b"));
    if (!out) {
      std::fprintf(stderr, "gpu_model_check: cannot write %s\n", flags.config_out.c_str());
      return 1;
    }
  }
  if (qtrain::kernels::cuda::CudaDeviceCount() == 0) {
    std::printf("gpu_model_check: no GPU here; nothing checked\n");
    return 0;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    std::fprintf(stderr, "gpu_model_check: cudaGetDeviceProperties failed\n");
    return 1;
  }
  const double peak = flags.peak_tflops > 0 ? flags.peak_tflops : PeakBf16Tflops(prop.name);
  std::unique_ptr<qtrain::kernels::Backend> cuda;
  const qtrain::kernels::OpStatus created =
      qtrain::kernels::cuda::CreateCudaBackend({.device = 0}, &cuda);
  if (!created.ok()) {
    std::fprintf(stderr, "gpu_model_check: %s\n", created.message().c_str());
    return 1;
  }
  qtrain::kernels::Backend& cpu = qtrain::kernels::CpuBackend();
  const bool cudnn = qtrain::kernels::cuda::UsesCudnnAttention(*cuda);
  std::printf("gpu_model_check: %s, bf16 training attention through %s\n", prop.name,
              cudnn ? "cuDNN SDPA" : "attention.cu");
  nlohmann::json report = {
      {"gpu", prop.name}, {"peak_bf16_tflops", peak}, {"attention", cudnn ? "cudnn" : "kernel"}};
  int failures = 0;
  auto fail = [&](const std::string& what, const absl::Status& status) {
    std::printf("%s: ERROR %s\n", what.c_str(), std::string(status.message()).c_str());
    report["errors"].push_back(what + ": " + std::string(status.message()));
    ++failures;
  };

  // (b) Loss and gradients against the CPU.
  for (DType dtype : {DType::kFloat32, DType::kBfloat16, DType::kFloat16}) {
    // fp16 with a loss scale, as training runs it (its gradients would underflow without).
    const model::DeviceCheckSetup setup{.config = Preset("qwen2-tiny"),
                                        .compute_dtype = dtype,
                                        .loss_scale = dtype == DType::kFloat16 ? 1024.0f : 1.0f};
    const std::string what = "(b) qwen2-tiny " + model::DTypeLabel(dtype) + " loss and gradients";
    auto result = model::CompareLossAndGradients(*cuda, cpu, setup, model::DefaultTolerance(dtype));
    if (!result.ok()) {
      fail(what, result.status());
      continue;
    }
    std::printf("%s: %s (loss %.6f vs %.6f, error %.2e; worst gradient error %.2e in %s)\n",
                what.c_str(), result->passed ? "ok" : "MISMATCH", result->loss,
                result->reference_loss, result->loss_error, result->worst_gradient_error,
                result->worst_tensor.c_str());
    if (!result->passed) ++failures;
    report["gradients"].push_back({{"dtype", model::DTypeLabel(dtype)},
                                   {"passed", result->passed},
                                   {"loss", result->loss},
                                   {"reference_loss", result->reference_loss},
                                   {"loss_error", result->loss_error},
                                   {"worst_gradient_error", result->worst_gradient_error},
                                   {"worst_tensor", result->worst_tensor}});
  }

  // (c) A short bf16 training run against the CPU's fp32 one.
  {
    const model::DeviceCheckSetup setup{.config = Preset("qwen2-tiny"),
                                        .compute_dtype = DType::kBfloat16};
    const model::TrainingCurveOptions options{.tolerance = 2e-2};
    const std::string what = "(c) qwen2-tiny bf16 training curve, 30 steps";
    auto result = model::CompareTrainingCurves(*cuda, cpu, setup, options);
    if (!result.ok()) {
      fail(what, result.status());
    } else {
      std::printf("%s: %s (loss %.4f -> %.4f, CPU fp32 %.4f -> %.4f, worst step error %.2e)\n",
                  what.c_str(), result->passed ? "ok" : "MISMATCH", result->losses.front(),
                  result->losses.back(), result->reference_losses.front(),
                  result->reference_losses.back(), result->worst_error);
      if (!result->passed) ++failures;
      report["training_curve"] = {{"passed", result->passed},
                                  {"losses", result->losses},
                                  {"reference_losses", result->reference_losses},
                                  {"worst_error", result->worst_error}};
    }
  }

  // (d) Throughput of the 0.5B model in bf16.
  if (!flags.quick) {
    struct Point {
      int64_t seq_len;
      bool recompute;
      int64_t warmup, steps;
    };
    std::vector<Point> points = {{2048, false, 2, 5}, {4096, false, 2, 5}};
    if (!flags.skip_long) points.push_back({32768, true, 0, 1});
    for (const Point& point : points) {
      const model::DeviceCheckSetup setup{.config = Preset("qwen2-0.5b"),
                                          .batch_size = 1,
                                          .seq_len = point.seq_len,
                                          .compute_dtype = DType::kBfloat16,
                                          .recompute_activations = point.recompute};
      const std::string what = "(d) qwen2-0.5b bf16 step, " + std::to_string(point.seq_len) +
                               " tokens" + (point.recompute ? ", recomputation" : "");
      auto result = model::MeasureTrainingThroughput(
          *cuda, setup, {.warmup = point.warmup, .steps = point.steps});
      if (!result.ok()) {
        fail(what, result.status());
        continue;
      }
      const double mfu = peak > 0 ? result->tflops / peak : 0;
      char mfu_text[32] = "n/a";
      if (peak > 0) std::snprintf(mfu_text, sizeof(mfu_text), "%.1f%%", 100 * mfu);
      std::printf(
          "%s: %.3f s/step, %.0f tokens/s, %.1f model TFLOP/s, MFU %s, peak %.2f GiB through "
          "the backend, loss %.3f\n",
          what.c_str(), result->seconds_per_step, result->tokens_per_second, result->tflops,
          mfu_text, double(result->peak_backend_bytes) / double(1 << 30), result->loss);
      report["throughput"].push_back({{"seq_len", point.seq_len},
                                      {"batch_size", setup.batch_size},
                                      {"recompute", point.recompute},
                                      {"seconds_per_step", result->seconds_per_step},
                                      {"tokens_per_second", result->tokens_per_second},
                                      {"model_tflops", result->tflops},
                                      {"mfu", mfu},
                                      {"peak_backend_bytes", result->peak_backend_bytes},
                                      {"loss", result->loss}});
    }
  }

  report["failures"] = failures;
  if (!flags.json.empty()) {
    std::ofstream out(flags.json);
    out << report.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "gpu_model_check: cannot write %s\n", flags.json.c_str());
      return 1;
    }
  }
  std::printf("gpu_model_check: %d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
