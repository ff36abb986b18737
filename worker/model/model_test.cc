#include "worker/model/model.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/model/init.h"

namespace qtrain::model {
namespace {

using ::testing::HasSubstr;

// qwen2-test with YaRN, weights wide enough that every part of the network matters.
ModelConfig TestConfig(bool yarn) {
  ModelConfig c = *PresetConfig("qwen2-test");
  if (yarn) {
    c.rope_type = RopeType::kYarn;
    c.yarn.factor = 4.0;
    c.yarn.original_max_position_embeddings = 64;
  }
  return c;
}

void RandomizeParams(Model& model, uint64_t seed) {
  NormalStream stream(seed);
  for (const TensorSlot& t : model.layout().tensors()) {
    float* p = model.params().data() + t.offset;
    const double fan_in = static_cast<double>(t.shape.back());
    const bool is_norm = t.name.ends_with("norm.weight");
    for (int64_t i = 0; i < t.size; ++i) {
      const double z = stream.Next();
      p[i] = static_cast<float>(is_norm                     ? 1.0 + 0.2 * z
                                : t.name.ends_with(".bias") ? 0.3 * z
                                                            : z / std::sqrt(fan_in));
    }
  }
}

struct TestBatch {
  int64_t batch_size = 2, seq_len = 7;
  std::vector<int32_t> ids, targets;
  Batch view() const {
    return {.batch_size = batch_size, .seq_len = seq_len, .ids = ids, .targets = targets};
  }
};

TestBatch MakeBatch(const ModelConfig& c, uint64_t seed) {
  TestBatch b;
  NormalStream stream(seed);
  for (int64_t i = 0; i < b.batch_size * b.seq_len; ++i) {
    b.ids.push_back(static_cast<int32_t>(std::abs(stream.Next()) * 1000) % c.vocab_size);
    b.targets.push_back(static_cast<int32_t>(std::abs(stream.Next()) * 1000) % c.vocab_size);
  }
  b.targets[3] = kIgnoreIndex;
  b.targets[9] = kIgnoreIndex;
  return b;
}

double Loss(Model& model, const Batch& batch) {
  auto r = model.Forward(batch);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->loss : NAN;
}

// Central finite differences of the fp32 loss along one direction per tensor (the gradient's
// own direction and a random one), against the analytic directional derivative.
TEST(ModelTest, GradientMatchesFiniteDifferences) {
  for (bool yarn : {false, true}) {
    SCOPED_TRACE(yarn ? "yarn" : "plain");
    const ModelConfig c = TestConfig(yarn);
    auto model = Model::Create(c);
    ASSERT_TRUE(model.ok()) << model.status();
    RandomizeParams(*model, 11);
    const TestBatch batch = MakeBatch(c, 5);
    ASSERT_TRUE(model->ZeroGrads().ok());
    ASSERT_TRUE(model->ForwardBackward(batch.view()).ok());
    const std::vector<float> grads(model->grads().begin(), model->grads().end());
    const std::vector<float> base(model->params().begin(), model->params().end());
    NormalStream random(3);
    for (const TensorSlot& t : model->layout().tensors()) {
      for (bool along_gradient : {true, false}) {
        std::vector<double> dir(t.size);
        double norm = 0;
        for (int64_t i = 0; i < t.size; ++i) {
          dir[i] = along_gradient ? grads[t.offset + i] : random.Next();
          norm += dir[i] * dir[i];
        }
        norm = std::sqrt(norm);
        ASSERT_GT(norm, 0) << t.name << " has an all-zero gradient";
        double analytic = 0;
        for (int64_t i = 0; i < t.size; ++i) {
          dir[i] /= norm;
          analytic += dir[i] * grads[t.offset + i];
        }
        const double h = 1e-2;
        auto loss_at = [&](double step) {
          for (int64_t i = 0; i < t.size; ++i) {
            model->params()[t.offset + i] = static_cast<float>(base[t.offset + i] + step * dir[i]);
          }
          return Loss(*model, batch.view());
        };
        const double numeric = (loss_at(h) - loss_at(-h)) / (2 * h);
        loss_at(0);
        EXPECT_NEAR(numeric, analytic, 1e-2 * std::abs(analytic) + 2e-4)
            << t.name << (along_gradient ? " along the gradient" : " along a random direction");
      }
    }
  }
}

TEST(ModelTest, RecomputationGivesIdenticalGradients) {
  const ModelConfig c = TestConfig(true);
  std::vector<float> grads[2];
  double losses[2];
  for (int recompute = 0; recompute < 2; ++recompute) {
    auto model = Model::Create(c, {.recompute_activations = recompute == 1});
    ASSERT_TRUE(model.ok());
    RandomizeParams(*model, 1);
    const TestBatch batch = MakeBatch(c, 2);
    auto r = model->ForwardBackward(batch.view());
    ASSERT_TRUE(r.ok()) << r.status();
    losses[recompute] = r->loss;
    grads[recompute].assign(model->grads().begin(), model->grads().end());
  }
  EXPECT_EQ(losses[0], losses[1]);
  EXPECT_EQ(grads[0], grads[1]);
}

// The kernels cut every op into work items that do not depend on the thread count, so neither
// do the loss and gradients: a run can resume bit-exactly with more or fewer threads. The shape
// is big enough that every op takes its parallel path (several GEMM blocks, attention tiles).
TEST(ModelTest, ResultsDoNotDependOnTheThreadCount) {
  const ModelConfig c = *PresetConfig("qwen2-tiny");
  auto model = Model::Create(c);
  ASSERT_TRUE(model.ok()) << model.status();
  InitializeParameters(c, model->layout(), 3, model->params());
  TestBatch batch;
  batch.seq_len = 150;
  NormalStream stream(4);
  for (int64_t i = 0; i < batch.batch_size * batch.seq_len; ++i) {
    batch.ids.push_back(static_cast<int32_t>(std::abs(stream.Next()) * 1e4) % c.vocab_size);
    batch.targets.push_back(i % 7 == 0 ? kIgnoreIndex
                                       : static_cast<int32_t>(std::abs(stream.Next()) * 1e4) %
                                             c.vocab_size);
  }
  const int saved_threads = omp_get_max_threads();
  std::vector<float> reference;
  double reference_loss = 0;
  for (int threads : {1, 2, 3}) {
    SCOPED_TRACE(threads);
    omp_set_num_threads(threads);
    ASSERT_TRUE(model->ZeroGrads().ok());
    auto r = model->ForwardBackward(batch.view());
    ASSERT_TRUE(r.ok()) << r.status();
    if (threads == 1) {
      reference.assign(model->grads().begin(), model->grads().end());
      reference_loss = r->loss;
      continue;
    }
    EXPECT_EQ(r->loss, reference_loss);
    EXPECT_TRUE(std::equal(reference.begin(), reference.end(), model->grads().begin()))
        << "gradients differ from the single-threaded run";
  }
  omp_set_num_threads(saved_threads);
}

TEST(ModelTest, GradientsAccumulateAndNormalizerScales) {
  const ModelConfig c = TestConfig(false);
  auto model = Model::Create(c);
  ASSERT_TRUE(model.ok());
  RandomizeParams(*model, 4);
  TestBatch batch = MakeBatch(c, 8);
  auto once = model->ForwardBackward(batch.view());
  ASSERT_TRUE(once.ok());
  EXPECT_EQ(once->num_targets, 12);
  EXPECT_NEAR(once->loss, once->loss_sum / 12, 1e-12);
  const std::vector<float> g1(model->grads().begin(), model->grads().end());
  // A second pass with twice the normalizer adds half the gradient.
  Batch doubled = batch.view();
  doubled.loss_normalizer = 24;
  auto twice = model->ForwardBackward(doubled);
  ASSERT_TRUE(twice.ok());
  EXPECT_NEAR(twice->loss, once->loss / 2, 1e-6);
  for (size_t i = 0; i < g1.size(); i += 7) {
    EXPECT_NEAR(model->grads()[i], 1.5f * g1[i], 1e-5f + 1e-4f * std::abs(g1[i]));
  }
}

// A power-of-two loss scale multiplies every gradient exactly (each backward op is linear in its
// upstream gradient), and leaves the reported loss alone.
TEST(ModelTest, ALossScaleScalesTheGradientsExactly) {
  const ModelConfig c = TestConfig(false);
  auto model = Model::Create(c);
  ASSERT_TRUE(model.ok());
  RandomizeParams(*model, 5);
  TestBatch batch = MakeBatch(c, 8);
  auto plain = model->ForwardBackward(batch.view());
  ASSERT_TRUE(plain.ok());
  const std::vector<float> g1(model->grads().begin(), model->grads().end());
  ASSERT_TRUE(model->ZeroGrads().ok());
  Batch scaled = batch.view();
  scaled.loss_scale = 1024.0f;
  auto r = model->ForwardBackward(scaled);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->loss, plain->loss);
  size_t nonzero = 0;
  for (size_t i = 0; i < g1.size(); ++i) {
    ASSERT_EQ(model->grads()[i], 1024.0f * g1[i]) << i;
    nonzero += g1[i] != 0.0f;
  }
  EXPECT_GT(nonzero, g1.size() / 2);
  for (float bad : {0.0f, -2.0f, std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    scaled.loss_scale = bad;
    auto refused = model->ForwardBackward(scaled);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(refused.status().message(), HasSubstr("loss_scale"));
  }
}

TEST(ModelTest, AllTargetsIgnoredGivesNanLossAndNoGradient) {
  const ModelConfig c = TestConfig(false);
  auto model = Model::Create(c);
  ASSERT_TRUE(model.ok());
  RandomizeParams(*model, 4);
  TestBatch batch = MakeBatch(c, 8);
  std::fill(batch.targets.begin(), batch.targets.end(), kIgnoreIndex);
  auto r = model->ForwardBackward(batch.view());
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(std::isnan(r->loss));
  for (float g : model->grads()) ASSERT_EQ(g, 0.0f);
}

TEST(ModelTest, DecodeMatchesFullForward) {
  const ModelConfig c = TestConfig(true);
  auto model = Model::Create(c);
  ASSERT_TRUE(model.ok());
  RandomizeParams(*model, 9);
  const std::vector<int32_t> ids = {3, 17, 5, 29, 0, 11, 8, 23, 2, 31};
  const int64_t n = static_cast<int64_t>(ids.size());
  std::vector<float> full;
  ASSERT_TRUE(model->Forward({.batch_size = 1, .seq_len = n, .ids = ids}, {.logits = &full}).ok());
  auto cache = KvCache::Create(*model, n);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits(c.vocab_size);
  // A 4-token prefill, then one token at a time.
  int64_t done = 0;
  for (int64_t len : {4, 1, 1, 1, 1, 1, 1}) {
    ASSERT_TRUE(model->Decode(std::span(ids).subspan(done, len), *cache, logits).ok());
    done += len;
    for (int64_t v = 0; v < c.vocab_size; ++v) {
      ASSERT_NEAR(logits[v], full[(done - 1) * c.vocab_size + v], 1e-5) << done << " " << v;
    }
  }
  EXPECT_EQ(cache->length(), n);
  EXPECT_THAT(model->Decode(ids, *cache, logits).message(), HasSubstr("capacity of 10 positions"));
}

TEST(ModelTest, TargetLogprobsMatchLogits) {
  const ModelConfig c = TestConfig(false);
  auto model = Model::Create(c, {.lm_head_chunk_tokens = 3});
  ASSERT_TRUE(model.ok());
  RandomizeParams(*model, 2);
  const TestBatch batch = MakeBatch(c, 3);
  std::vector<float> logits, logprobs;
  auto r = model->Forward(batch.view(), {.logits = &logits, .target_logprobs = &logprobs});
  ASSERT_TRUE(r.ok());
  double sum = 0;
  for (int64_t row = 0; row < batch.batch_size * batch.seq_len; ++row) {
    const float* z = logits.data() + row * c.vocab_size;
    double max = *std::max_element(z, z + c.vocab_size), total = 0;
    for (int64_t v = 0; v < c.vocab_size; ++v) total += std::exp(z[v] - max);
    const int32_t target = batch.targets[row];
    if (target == kIgnoreIndex) {
      EXPECT_EQ(logprobs[row], 0.0f);
      continue;
    }
    const double expected = z[target] - max - std::log(total);
    EXPECT_NEAR(logprobs[row], expected, 1e-5);
    sum -= expected;
  }
  EXPECT_NEAR(r->loss_sum, sum, 1e-4);
}

TEST(ModelTest, InferenceOnlyModelHasNoGradients) {
  const ModelConfig c = TestConfig(false);
  auto model = Model::Create(c, {.allocate_gradients = false});
  ASSERT_TRUE(model.ok());
  RandomizeParams(*model, 6);
  EXPECT_TRUE(model->grads().empty());
  const TestBatch batch = MakeBatch(c, 1);
  EXPECT_TRUE(model->Forward(batch.view()).ok());
  EXPECT_EQ(model->ForwardBackward(batch.view()).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(ModelTest, RejectsBadBatches) {
  const ModelConfig c = TestConfig(false);
  auto model = Model::Create(c);
  ASSERT_TRUE(model.ok());
  TestBatch batch = MakeBatch(c, 1);
  batch.ids[4] = static_cast<int32_t>(c.vocab_size);
  EXPECT_THAT(model->Forward(batch.view()).status().message(), HasSubstr("token id"));
  batch = MakeBatch(c, 1);
  batch.targets[2] = -5;
  EXPECT_THAT(model->ForwardBackward(batch.view()).status().message(), HasSubstr("target"));
  batch = MakeBatch(c, 1);
  batch.seq_len = 3;
  EXPECT_FALSE(model->Forward(batch.view()).ok());
  batch = MakeBatch(c, 1);
  batch.targets.clear();
  EXPECT_FALSE(model->ForwardBackward(batch.view()).ok());
}

}  // namespace
}  // namespace qtrain::model
