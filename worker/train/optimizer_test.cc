#include "worker/train/optimizer.h"

#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
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
  const int64_t total = layout_->total_size();
  const OptimizerShardFile whole[] = {{path, 0, total}};
  ASSERT_TRUE(second.LoadShards(whole, 1).ok());
  EXPECT_EQ(second.step_count(), 1);
  ASSERT_TRUE(second.Step(b, grads_, 1e-3).ok());
  EXPECT_EQ(a, b);
  const OptimizerShardFile missing[] = {{path + ".missing", 0, total}};
  EXPECT_EQ(second.LoadShards(missing, 1).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(second.LoadShards(whole, 2).code(), absl::StatusCode::kDataLoss);
  const OptimizerShardFile wrong_range[] = {{path, 0, total - 1}, {path, total - 1, total}};
  EXPECT_EQ(second.LoadShards(wrong_range, 1).code(), absl::StatusCode::kDataLoss);
}

// The shards of a ZeRO-1 group, each stepped with the whole gradient's norm, give the bytes of
// one optimizer of everything; a state saved by 2 shards loads into 3 (or 1) exactly.
TEST_F(OptimizerTest, ShardsStepAsTheWholeAndReshardExactly) {
  const int64_t total = layout_->total_size();
  Optimizer whole = Make();
  std::vector<float> expected = params_;
  const double norm = GradNormOf(grads_);
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(whole.Step(expected, grads_, 1e-2).ok());

  // Cut inside tensors on purpose: each tensor's overlap is stepped with its own decay flag.
  const auto step_shards = [&](const std::vector<int64_t>& cuts, std::vector<float>& params,
                               std::vector<Optimizer>& shards) {
    for (size_t s = 0; s + 1 < cuts.size(); ++s) {
      const auto size = static_cast<size_t>(cuts[s + 1] - cuts[s]);
      ASSERT_TRUE(shards[s]
                      .Step(std::span(params).subspan(cuts[s], size),
                            std::span<const float>(grads_).subspan(cuts[s], size), 1e-2, norm)
                      .ok());
    }
  };
  const std::vector<int64_t> two = {0, total / 3 + 7, total};
  std::vector<Optimizer> halves;
  for (size_t s = 0; s + 1 < two.size(); ++s) {
    halves.push_back(*Optimizer::Create(*layout_, {}, two[s], two[s + 1]));
  }
  std::vector<float> sharded = params_;
  step_shards(two, sharded, halves);
  std::vector<OptimizerShardFile> files;
  for (size_t s = 0; s < halves.size(); ++s) {
    files.push_back(
        {absl::StrCat(::testing::TempDir(), "/shard", s, ".safetensors"), two[s], two[s + 1]});
    ASSERT_TRUE(halves[s].Save(files.back().path).ok());
  }
  const std::vector<int64_t> three = {0, 1000, total / 2, total};
  std::vector<Optimizer> thirds;
  for (size_t s = 0; s + 1 < three.size(); ++s) {
    thirds.push_back(*Optimizer::Create(*layout_, {}, three[s], three[s + 1]));
    ASSERT_TRUE(thirds.back().LoadShards(files, 1).ok());
    EXPECT_EQ(thirds.back().step_count(), 1);
  }
  step_shards(three, sharded, thirds);
  EXPECT_EQ(sharded, expected);
  // A shard can only step with the group's norm.
  EXPECT_EQ(thirds[0].Step(sharded, grads_, 1e-2).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// The single-file state of earlier checkpoints (one tensor per parameter) loads into a shard.
TEST_F(OptimizerTest, LoadsTheSingleFileFormatIntoAnyRange) {
  Optimizer whole = Make();
  std::vector<float> a = params_;
  ASSERT_TRUE(whole.Step(a, grads_, 1e-3).ok());
  const std::string shard_path = ::testing::TempDir() + "/whole.safetensors";
  ASSERT_TRUE(whole.Save(shard_path).ok());
  auto saved = SafetensorsFile::Open(shard_path);
  ASSERT_TRUE(saved.ok());
  const std::vector<float> m = *saved->ReadAsFloat("exp_avg");
  const std::vector<float> v = *saved->ReadAsFloat("exp_avg_sq");
  SafetensorsWriter old;
  for (const model::TensorSlot& slot : layout_->tensors()) {
    const auto size = static_cast<size_t>(slot.size);
    ASSERT_TRUE(
        old.AddFloat("exp_avg." + slot.name, slot.shape, std::span(m).subspan(slot.offset, size))
            .ok());
    ASSERT_TRUE(
        old.AddFloat("exp_avg_sq." + slot.name, slot.shape, std::span(v).subspan(slot.offset, size))
            .ok());
  }
  old.SetMetadata("step", "1");
  const std::string old_path = ::testing::TempDir() + "/old_optimizer.safetensors";
  ASSERT_TRUE(old.WriteFile(old_path).ok());
  const int64_t total = layout_->total_size();
  const int64_t cut = total / 2 + 3;
  std::vector<float> b = params_;
  ASSERT_TRUE(Make().Step(b, grads_, 1e-3).ok());
  const double norm = GradNormOf(grads_);
  for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, cut}, {cut, total}}) {
    auto part = Optimizer::Create(*layout_, {}, begin, end);
    ASSERT_TRUE(part.ok());
    ASSERT_TRUE(part->LoadSingleFile(old_path).ok());
    EXPECT_EQ(part->step_count(), 1);
    const auto size = static_cast<size_t>(end - begin);
    ASSERT_TRUE(part->Step(std::span(b).subspan(begin, size),
                           std::span<const float>(grads_).subspan(begin, size), 1e-3, norm)
                    .ok());
  }
  ASSERT_TRUE(whole.Step(a, grads_, 1e-3).ok());
  EXPECT_EQ(a, b);
}

TEST_F(OptimizerTest, TheNormIsBlockSumsInOrder) {
  const std::vector<float> g = {3.0f, 4.0f, 12.0f};
  EXPECT_EQ(BlockSumsOfSquares(g, 2), (std::vector<double>{25.0, 144.0}));
  EXPECT_EQ(NormOfBlockSums(BlockSumsOfSquares(g, 2)), 13.0);
  EXPECT_EQ(GradNormOf(g), 13.0);
}

}  // namespace
}  // namespace qtrain::train
