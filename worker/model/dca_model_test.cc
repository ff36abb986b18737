// Dual Chunk Attention in the model: KV-cache decode gives the full forward's log-probs across
// chunk boundaries (token by token and in several-token steps); ForwardBackward refuses it;
// within one chunk it is plain attention; the context is no longer bounded.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "worker/model/init.h"
#include "worker/model/model.h"

namespace qtrain::model {
namespace {

ModelConfig DcaConfig(int64_t chunk, int64_t local) {
  ModelConfig c = *PresetConfig("qwen2-test");
  c.max_position_embeddings = 32;
  c.dca = {.chunk_size = chunk, .local_size = local};
  return c;
}

std::vector<int32_t> Ids(int64_t n, int64_t vocab) {
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 7 + 3) % vocab);
  return ids;
}

std::vector<float> FullLogprobs(Model& m, const std::vector<int32_t>& ids) {
  std::vector<int32_t> targets(ids.begin() + 1, ids.end());
  targets.push_back(kIgnoreIndex);
  const int64_t n = static_cast<int64_t>(ids.size());
  std::vector<float> lp;
  auto r = m.Forward({.batch_size = 1, .seq_len = n, .ids = ids, .targets = targets},
                     {.target_logprobs = &lp});
  EXPECT_TRUE(r.ok()) << r.status();
  return lp;
}

float LogProb(const std::vector<float>& logits, int32_t target) {
  float max = logits[0];
  for (float x : logits) max = std::max(max, x);
  double sum = 0;
  for (float x : logits) sum += std::exp(static_cast<double>(x - max));
  return static_cast<float>(logits[target] - max - std::log(sum));
}

TEST(DcaModel, DecodeMatchesFullForwardAcrossChunks) {
  for (int64_t step : {1, 5}) {
    SCOPED_TRACE("step " + std::to_string(step));
    const ModelConfig c = DcaConfig(12, 4);  // s = 8: 90 tokens span 12 chunks
    auto m = Model::Create(c, {.allocate_gradients = false});
    ASSERT_TRUE(m.ok()) << m.status();
    InitializeParameters(c, m->layout(), 11, m->params());
    const std::vector<int32_t> ids = Ids(90, c.vocab_size);
    const std::vector<float> full = FullLogprobs(*m, ids);
    auto cache = KvCache::Create(*m, 90);
    ASSERT_TRUE(cache.ok()) << cache.status();
    std::vector<float> logits(c.vocab_size);
    double worst = 0;
    for (int64_t t = 0; t + 1 < 90; t += step) {
      const int64_t n = std::min<int64_t>(step, 89 - t);
      ASSERT_TRUE(m->Decode(std::span<const int32_t>(ids.data() + t, n), *cache, logits).ok());
      const int64_t last = t + n - 1;
      worst = std::max<double>(worst, std::abs(LogProb(logits, ids[last + 1]) - full[last]));
    }
    EXPECT_LT(worst, 1e-4);
  }
}

TEST(DcaModel, OneChunkIsPlainAttention) {
  ModelConfig plain = DcaConfig(0, 0);
  ModelConfig dca = DcaConfig(64, 8);  // 40 tokens inside one chunk of 56
  auto a = Model::Create(plain, {.allocate_gradients = false});
  auto b = Model::Create(dca, {.allocate_gradients = false});
  ASSERT_TRUE(a.ok() && b.ok());
  InitializeParameters(plain, a->layout(), 5, a->params());
  InitializeParameters(dca, b->layout(), 5, b->params());
  const std::vector<int32_t> ids = Ids(30, plain.vocab_size);
  const std::vector<float> x = FullLogprobs(*a, ids), y = FullLogprobs(*b, ids);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], y[i], 1e-5) << i;
  // Past one chunk the two differ.
  const std::vector<int32_t> longer = Ids(31, plain.vocab_size);
  ModelConfig small = DcaConfig(8, 2);
  auto d = Model::Create(small, {.allocate_gradients = false});
  ASSERT_TRUE(d.ok());
  InitializeParameters(small, d->layout(), 5, d->params());
  const std::vector<float> z = FullLogprobs(*d, longer), w = FullLogprobs(*a, longer);
  double diff = 0;
  for (size_t i = 0; i + 1 < z.size(); ++i) diff = std::max<double>(diff, std::abs(z[i] - w[i]));
  EXPECT_GT(diff, 1e-4);
}

TEST(DcaModel, ForwardBackwardIsRefusedAndContextIsUnbounded) {
  const ModelConfig c = DcaConfig(16, 4);
  auto m = Model::Create(c);
  ASSERT_TRUE(m.ok());
  const std::vector<int32_t> ids = Ids(8, c.vocab_size);
  auto r = m->ForwardBackward({.batch_size = 1, .seq_len = 8, .ids = ids, .targets = ids});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().message().find("inference-only"), std::string::npos);
  EXPECT_EQ(ContextLength(c), kMaxDim);
  EXPECT_EQ(ContextLength(DcaConfig(0, 0)), 32);
}

}  // namespace
}  // namespace qtrain::model
