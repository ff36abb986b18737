// The cuDNN frontend's support checks, without a GPU, for every attention shape qtrain trains:
// each model preset at the curriculum's lengths up to the 32K stage, batch 1 and 4, forward and
// backward, bf16 and fp16, on A100 (sm_80) and H100 (sm_90). A shape cuDNN cannot run fails here, not on the
// first GPU.
#include "kernels/cuda/sdpa_graph.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "worker/model/config.h"

namespace qtrain::kernels::cuda {
namespace {

using ::testing::HasSubstr;

// cuDNN needs head_dim a multiple of 8: qwen2-test (head_dim 4, for gradient checks) is refused
// and needs another attention kernel on the GPU; the others must pass everywhere.
TEST(SdpaGraphTest, EveryPresetAtEveryTrainingLengthIsSupported) {
  int supported = 0, refused = 0;
  for (const std::string& name : model::PresetNames()) {
    absl::StatusOr<model::ModelConfig> config = model::PresetConfig(name);
    ASSERT_TRUE(config.ok()) << config.status();
    const bool cudnn_can = config->head_dim % 8 == 0 && config->head_dim <= 128;
    EXPECT_EQ(cudnn_can, name != "qwen2-test") << name << ": head_dim " << config->head_dim;
    for (int64_t seq_len : {128, 512, 2048, 4096, 8192, 32768}) {
      for (int64_t batch : {1, 4}) {
        for (int sm : {80, 90}) {
          for (SdpaPass pass : {SdpaPass::kForward, SdpaPass::kBackward}) {
            for (bool fp16 : {false, true}) {
              const SdpaShape shape{.batch = batch,
                                    .seq_len = seq_len,
                                    .num_heads = config->num_heads,
                                    .num_kv_heads = config->num_kv_heads,
                                    .head_dim = config->head_dim,
                                    .fp16 = fp16};
              const OpStatus status = ValidateSdpa(shape, pass, sm);
              if (cudnn_can) {
                EXPECT_TRUE(status.ok()) << name << ": " << status.message();
                ++supported;
              } else {
                EXPECT_THAT(status.message(), HasSubstr("hidden_dim should be multiple of 8"))
                    << name;
                ++refused;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_GE(supported, 2 * 6 * 2 * 2 * 2 * 2);  // qwen2-0.5b and qwen2-tiny at least
  EXPECT_EQ(refused, 6 * 2 * 2 * 2 * 2);
}

TEST(SdpaGraphTest, UnsupportedShapesAreRefusedWithTheReason) {
  // 14 query heads cannot share 3 KV heads.
  const OpStatus gqa = ValidateSdpa(
      {.batch = 1, .seq_len = 2048, .num_heads = 14, .num_kv_heads = 3, .head_dim = 64},
      SdpaPass::kForward, 90);
  EXPECT_THAT(gqa.message(), HasSubstr("SDPA forward (sm_90, bf16, B=1 T=2048 H=14/3 D=64)"));
  const OpStatus gqa_fp16 = ValidateSdpa({.batch = 1,
                                          .seq_len = 2048,
                                          .num_heads = 14,
                                          .num_kv_heads = 3,
                                          .head_dim = 64,
                                          .fp16 = true},
                                         SdpaPass::kBackward, 90);
  EXPECT_THAT(gqa_fp16.message(), HasSubstr("SDPA backward (sm_90, fp16, B=1 T=2048"));
  EXPECT_THAT(gqa.message(), HasSubstr("group-query attention"));
  EXPECT_FALSE(
      ValidateSdpa(
          {.batch = 1, .seq_len = 2048, .num_heads = 14, .num_kv_heads = 3, .head_dim = 64},
          SdpaPass::kBackward, 80)
          .ok());
  EXPECT_THAT(
      ValidateSdpa({.batch = 0, .seq_len = 8, .num_heads = 2, .num_kv_heads = 1, .head_dim = 64},
                   SdpaPass::kForward, 90)
          .message(),
      HasSubstr("every size must be > 0"));
  EXPECT_THAT(
      ValidateSdpa({.batch = 1, .seq_len = 8, .num_heads = 2, .num_kv_heads = 1, .head_dim = 64},
                   SdpaPass::kForward, 75)
          .message(),
      HasSubstr("needs sm_80"));
}

// The shapes the backend hands to cuDNN: every preset's but qwen2-test's (head_dim 4).
TEST(SdpaGraphTest, ShapesTheBackendHandsToCudnn) {
  for (const std::string& name : model::PresetNames()) {
    const model::ModelConfig c = *model::PresetConfig(name);
    const SdpaShape shape{.batch = 1,
                          .seq_len = 256,
                          .num_heads = c.num_heads,
                          .num_kv_heads = c.num_kv_heads,
                          .head_dim = c.head_dim};
    EXPECT_EQ(SdpaCanRun(shape), name != "qwen2-test") << name;
  }
  EXPECT_FALSE(
      SdpaCanRun({.batch = 1, .seq_len = 8, .num_heads = 14, .num_kv_heads = 3, .head_dim = 64}));
  EXPECT_FALSE(
      SdpaCanRun({.batch = 1, .seq_len = 8, .num_heads = 2, .num_kv_heads = 1, .head_dim = 256}));
  EXPECT_FALSE(
      SdpaCanRun({.batch = 1, .seq_len = 0, .num_heads = 2, .num_kv_heads = 1, .head_dim = 64}));
}

// Plans need a cuDNN handle, which needs a GPU: without one, an error naming the call.
TEST(SdpaGraphTest, PlansWithoutAGpuAreAnError) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0) GTEST_SKIP() << "a GPU is here";
  std::unique_ptr<SdpaPlans> plans;
  const OpStatus created = SdpaPlans::Create(nullptr, &plans);
  EXPECT_FALSE(created.ok());
  EXPECT_THAT(created.message(), HasSubstr("cuDNN attention: cudnnCreate"));
  EXPECT_EQ(plans, nullptr);
}

}  // namespace
}  // namespace qtrain::kernels::cuda
