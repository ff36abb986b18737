// The GPU checks' model comparisons (device_check.h) on the CPU: the "device" is the CPU backend
// behind opaque pointers (so the checks keep to the Backend interface, as on a GPU), compared
// in bf16 and fp32 against the CPU backend in fp32; a broken device must fail them.
#include "worker/model/device_check.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>

#include "kernels/forwarding_backend.h"
#include "worker/model/opaque_backend_test_util.h"
#include "worker/model/param_layout.h"

namespace qtrain::model {
namespace {

using kernels::DType;

DeviceCheckSetup Tiny(DType dtype) {
  auto config = PresetConfig("qwen2-tiny");
  EXPECT_TRUE(config.ok()) << config.status();
  return {.config = *config, .batch_size = 2, .seq_len = 32, .compute_dtype = dtype};
}

// The SwiGLU backward's gradients scaled by 1.01: a small error in one op of the backward.
class SkewedSwigluBackend final : public kernels::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  kernels::OpStatus SwigluBackward(kernels::ConstTensor dout, kernels::ConstTensor gate,
                                   kernels::ConstTensor up, kernels::Tensor dgate,
                                   kernels::Tensor dup, int64_t rows, int64_t dim) override {
    kernels::OpStatus status = inner().SwigluBackward(dout, gate, up, dgate, dup, rows, dim);
    if (status.ok() && dgate.data() != nullptr) status = inner().Scale(dgate, rows * dim, 1.01f);
    return status;
  }
};

// AdamW that leaves the parameters alone: training does not train.
class FrozenAdamWBackend final : public kernels::ForwardingBackend {
 public:
  using ForwardingBackend::ForwardingBackend;
  kernels::OpStatus AdamWMultiStep(const kernels::AdamWTensor*, int64_t,
                                   const kernels::AdamWParams&) override {
    return kernels::OpStatus::Ok();
  }
};

TEST(DeviceCheckTest, Fp32OnOpaqueMemoryEqualsTheCpuBitForBit) {
  OpaqueMemoryBackend device;
  auto result = CompareLossAndGradients(device, kernels::CpuBackend(), Tiny(DType::kFloat32),
                                        DefaultTolerance(DType::kFloat32));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->passed);
  EXPECT_EQ(result->loss, result->reference_loss);
  EXPECT_EQ(result->worst_gradient_error, 0.0);
}

TEST(DeviceCheckTest, Bf16FollowsFp32WithinTheBf16Tolerance) {
  OpaqueMemoryBackend device;
  auto result = CompareLossAndGradients(device, kernels::CpuBackend(), Tiny(DType::kBfloat16),
                                        DefaultTolerance(DType::kBfloat16));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->passed) << result->loss_error << " " << result->worst_gradient_error << " "
                              << result->worst_tensor;
  std::printf("qwen2-tiny bf16 vs fp32: loss error %.2e, worst gradient error %.2e (%s)\n",
              result->loss_error, result->worst_gradient_error, result->worst_tensor.c_str());
  // bf16 really differs from fp32: the check compares something.
  EXPECT_GT(result->worst_gradient_error, 1e-4);
  EXPECT_GT(result->loss_error, 0.0);
}

TEST(DeviceCheckTest, LossScaledFp16FollowsFp32WithinTheFp16Tolerance) {
  OpaqueMemoryBackend device;
  DeviceCheckSetup setup = Tiny(DType::kFloat16);
  setup.loss_scale = 1024.0f;
  auto result = CompareLossAndGradients(device, kernels::CpuBackend(), setup,
                                        DefaultTolerance(DType::kFloat16));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(result->passed) << result->loss_error << " " << result->worst_gradient_error << " "
                              << result->worst_tensor;
  std::printf("qwen2-tiny fp16 vs fp32: loss error %.2e, worst gradient error %.2e (%s)\n",
              result->loss_error, result->worst_gradient_error, result->worst_tensor.c_str());
  EXPECT_GT(result->worst_gradient_error, 1e-5);
}

TEST(DeviceCheckTest, AnOpOffByOnePercentFailsTheGradientCheck) {
  OpaqueMemoryBackend opaque;
  SkewedSwigluBackend device(opaque);
  auto result = CompareLossAndGradients(device, kernels::CpuBackend(), Tiny(DType::kFloat32),
                                        DefaultTolerance(DType::kFloat32));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->passed);
  EXPECT_EQ(result->loss, result->reference_loss);  // the forward is untouched
  EXPECT_GT(result->worst_gradient_error, 1e-3);
  // The first gradient it reaches in the backward is the last layer's gate projection.
  EXPECT_NE(result->worst_tensor.find("mlp"), std::string::npos) << result->worst_tensor;
}

TEST(DeviceCheckTest, Bf16TrainingCurveFollowsFp32AndFalls) {
  OpaqueMemoryBackend device;
  const TrainingCurveOptions options{.steps = 20, .tolerance = 2e-2};
  auto result =
      CompareTrainingCurves(device, kernels::CpuBackend(), Tiny(DType::kBfloat16), options);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->losses.size(), 20u);
  EXPECT_TRUE(result->passed) << result->worst_error << " " << result->losses.back();
  std::printf("bf16 curve: %.4f -> %.4f, fp32 %.4f -> %.4f, worst step error %.2e\n",
              result->losses.front(), result->losses.back(), result->reference_losses.front(),
              result->reference_losses.back(), result->worst_error);
  EXPECT_LT(result->reference_losses.back(), 0.8 * result->reference_losses.front());
  EXPECT_GT(result->worst_error, 0.0);
}

TEST(DeviceCheckTest, ATrainingRunThatDoesNotTrainFails) {
  OpaqueMemoryBackend opaque;
  FrozenAdamWBackend device(opaque);
  const TrainingCurveOptions options{.steps = 6, .tolerance = 5e-2};
  auto result =
      CompareTrainingCurves(device, kernels::CpuBackend(), Tiny(DType::kFloat32), options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_FALSE(result->passed);
  EXPECT_EQ(result->losses[0], result->reference_losses[0]);  // same start
  EXPECT_EQ(result->losses[0], result->losses[2]);            // same batch, same weights
}

TEST(DeviceCheckTest, ThroughputCountsTokensFlopsAndMemory) {
  OpaqueMemoryBackend device;
  const DeviceCheckSetup setup = Tiny(DType::kBfloat16);
  auto result = MeasureTrainingThroughput(device, setup, {.warmup = 1, .steps = 2});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_GT(result->seconds_per_step, 0.0);
  EXPECT_DOUBLE_EQ(result->tokens_per_second,
                   double(setup.batch_size * setup.seq_len) / result->seconds_per_step);
  EXPECT_GT(result->flops_per_token, 0.0);
  EXPECT_TRUE(std::isfinite(result->loss));
  // Parameters, gradients and the two moments in fp32, at least.
  const int64_t params = ParameterLayout(setup.config).total_size();
  EXPECT_GE(result->peak_backend_bytes, 4 * params * int64_t(sizeof(float)));
  EXPECT_FALSE(MeasureTrainingThroughput(device, setup, {.steps = 0}).ok());
}

}  // namespace
}  // namespace qtrain::model
