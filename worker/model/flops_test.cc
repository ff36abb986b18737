#include "worker/model/flops.h"

#include "gtest/gtest.h"

namespace qtrain::model {
namespace {

// A config small enough to count by hand.
ModelConfig Tiny() {
  ModelConfig c;
  c.vocab_size = 10;
  c.hidden_size = 4;
  c.intermediate_size = 6;
  c.num_layers = 2;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 2;
  return c;
}

TEST(FlopsTest, MatmulParametersByHand) {
  // Per layer: q 4x4=16, k 4x2=8, v 4x2=8, o 4x4=16, gate/up/down 3x(4x6)=72 -> 120.
  // Two layers 240, LM head 10x4=40.
  EXPECT_DOUBLE_EQ(MatmulParameters(Tiny()), 280);
}

TEST(FlopsTest, FlopsPerTokenByHand) {
  // 6 x 280 + 12 x 2 layers x 4 hidden x 8 positions = 1680 + 768.
  EXPECT_DOUBLE_EQ(FlopsPerToken(Tiny(), 8), 2448);
  // The attention term grows with the sequence, the rest does not.
  EXPECT_DOUBLE_EQ(FlopsPerToken(Tiny(), 16) - FlopsPerToken(Tiny(), 8), 768);
}

TEST(FlopsTest, MatmulParametersOfQwen2_05bAreAllButBiasesAndNorms) {
  absl::StatusOr<ModelConfig> config = PresetConfig("qwen2-0.5b");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->NumParameters(), 494032768);
  // Biases: 24 layers x (q 896 + k 128 + v 128); norms: 24 x 2 x 896 + the final 896.
  const double biases = 24 * (896 + 128 + 128);
  const double norms = 24 * 2 * 896 + 896;
  EXPECT_DOUBLE_EQ(MatmulParameters(*config), 494032768 - biases - norms);
}

}  // namespace
}  // namespace qtrain::model
