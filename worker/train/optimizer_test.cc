#include "worker/train/optimizer.h"

#include <cmath>
#include <limits>
#include <vector>

#include "gtest/gtest.h"
#include "worker/model/config.h"

namespace qtrain::train {
namespace {

class OptimizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto config = model::PresetConfig("qwen2-test");
    ASSERT_TRUE(config.ok()) << config.status();
    layout_.emplace(*config);
    const size_t n = static_cast<size_t>(layout_->total_size());
    params_.assign(n, 0.0f);
    grads_.assign(n, 0.0f);
    for (const model::TensorSlot& slot : layout_->tensors()) {
      for (int64_t i = 0; i < slot.size; ++i) {
        params_[slot.offset + i] = 0.5f + 0.001f * static_cast<float>(i % 97);
        grads_[slot.offset + i] = 0.01f * std::sin(static_cast<float>(slot.offset + i));
      }
    }
  }
  Optimizer Make(OptimizerSettings settings = {}) {
    auto optimizer = Optimizer::Create(*layout_, settings);
    EXPECT_TRUE(optimizer.ok()) << optimizer.status();
    return std::move(*optimizer);
  }
  std::optional<model::ParameterLayout> layout_;
  std::vector<float> params_, grads_;
};

TEST_F(OptimizerTest, WeightDecayOnlyOnMatricesAndEmbeddings) {
  Optimizer optimizer = Make({.weight_decay = 0.1, .grad_clip = 0});
  const std::vector<float> before = params_;
  std::vector<float> zero(grads_.size(), 0.0f);
  ASSERT_TRUE(optimizer.Step(params_, zero, /*lr=*/0.5).ok());
  int decayed = 0, kept = 0;
  for (const model::TensorSlot& slot : layout_->tensors()) {
    const float expected_factor = Optimizer::DecaysWeight(slot) ? 1.0f - 0.5f * 0.1f : 1.0f;
    for (int64_t i = 0; i < slot.size; ++i) {
      ASSERT_FLOAT_EQ(params_[slot.offset + i], before[slot.offset + i] * expected_factor)
          << slot.name;
    }
    (Optimizer::DecaysWeight(slot) ? decayed : kept)++;
    const bool is_norm_or_bias =
        slot.name.find("norm") != std::string::npos || slot.name.find(".bias") != std::string::npos;
    EXPECT_EQ(Optimizer::DecaysWeight(slot), !is_norm_or_bias) << slot.name;
  }
  EXPECT_GT(decayed, 0);
  EXPECT_GT(kept, 0);
}

TEST_F(OptimizerTest, ClippingEqualsStepWithGradientsScaledToTheClipNorm) {
  double sum = 0;
  for (float g : grads_) sum += static_cast<double>(g) * g;
  const double norm = std::sqrt(sum);
  Optimizer clipped = Make({.grad_clip = norm / 4});
  std::vector<float> a = params_;
  auto stats = clipped.Step(a, grads_, 1e-2);
  ASSERT_TRUE(stats.ok());
  EXPECT_NEAR(stats->grad_norm, norm, 1e-9 * norm);
  EXPECT_NEAR(stats->clip_scale, 0.25, 1e-5);

  Optimizer unclipped = Make({.grad_clip = 0});
  std::vector<float> b = params_;
  std::vector<float> scaled = grads_;
  for (float& g : scaled) g *= static_cast<float>(stats->clip_scale);
  ASSERT_TRUE(unclipped.Step(b, scaled, 1e-2).ok());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-6f) << i;
  // A norm under the threshold is not touched.
  Optimizer loose = Make({.grad_clip = norm * 2});
  std::vector<float> c = params_;
  EXPECT_EQ(loose.Step(c, grads_, 1e-2)->clip_scale, 1.0);
}

TEST_F(OptimizerTest, NonFiniteGradientsSkipTheStep) {
  Optimizer optimizer = Make();
  const std::vector<float> before = params_;
  for (float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    grads_[layout_->tensors().back().offset] = bad;
    auto stats = optimizer.Step(params_, grads_, 1e-3);
    ASSERT_TRUE(stats.ok());
    EXPECT_TRUE(stats->skipped);
    EXPECT_EQ(params_, before);
    EXPECT_EQ(optimizer.step_count(), 0);
  }
}

TEST_F(OptimizerTest, SavedStateResumesBitIdentically) {
  const std::string path = ::testing::TempDir() + "/optimizer_test.safetensors";
  Optimizer first = Make();
  std::vector<float> a = params_;
  ASSERT_TRUE(first.Step(a, grads_, 1e-3).ok());
  ASSERT_TRUE(first.Save(path).ok());
  std::vector<float> b = a;
  ASSERT_TRUE(first.Step(a, grads_, 1e-3).ok());

  Optimizer second = Make();
  ASSERT_TRUE(second.Load(path).ok());
  EXPECT_EQ(second.step_count(), 1);
  ASSERT_TRUE(second.Step(b, grads_, 1e-3).ok());
  EXPECT_EQ(a, b);
  EXPECT_EQ(second.Load(path + ".missing").code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace qtrain::train
