// The model reaches backend memory only through the Backend interface, as a GPU backend needs:
// on OpaqueMemoryBackend (the CPU backend behind pointers the host cannot dereference) a forward,
// a backward and a decode run, and give the CPU backend's results bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <span>
#include <vector>

#include "kernels/forwarding_backend.h"
#include "worker/model/init.h"
#include "worker/model/model.h"
#include "worker/model/opaque_backend_test_util.h"

namespace qtrain::model {
namespace {

ModelConfig TestConfig(bool yarn) {
  ModelConfig c = *PresetConfig("qwen2-test");
  if (yarn) {
    c.rope_type = RopeType::kYarn;
    c.yarn.factor = 4.0;
    c.yarn.original_max_position_embeddings = 64;
  }
  return c;
}

// The same initial weights in both models: on the host for the CPU one, copied in for the other.
void LoadSameParams(Model& cpu, Model& opaque, uint64_t seed) {
  std::vector<float> host(cpu.params().size());
  InitializeParameters(cpu.config(), cpu.layout(), seed, host);
  std::copy(host.begin(), host.end(), cpu.params().begin());
  ASSERT_TRUE(
      opaque.backend()
          .CopyHostToBackend(opaque.params().data(), host.data(), host.size() * sizeof(float))
          .ok());
}

std::vector<float> HostCopy(const Model& model, std::span<const float> backend_memory) {
  std::vector<float> host(backend_memory.size());
  EXPECT_TRUE(
      model.backend()
          .CopyBackendToHost(host.data(), backend_memory.data(), host.size() * sizeof(float))
          .ok());
  return host;
}

bool SameBits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The premise: the host cannot read or write what this backend allocates.
TEST(OpaqueMemoryBackendDeathTest, TheHostCannotTouchItsMemory) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  OpaqueMemoryBackend backend;
  float* p = static_cast<float*>(backend.Alloc(64 * sizeof(float)));
  ASSERT_NE(p, nullptr);
  const float one = 1.0f;
  ASSERT_TRUE(backend.CopyHostToBackend(p + 3, &one, sizeof(one)).ok());
  EXPECT_EQ(OpaqueMemoryBackend::Real(p)[3], 1.0f);
  EXPECT_DEATH(
      {
        volatile float* v = p + 3;
        *v = 2.0f;
      },
      "");
  backend.Free(p);
}

struct Variant {
  bool yarn;
  ModelOptions options;
};

class OpaqueBackendTest : public ::testing::TestWithParam<Variant> {};

TEST_P(OpaqueBackendTest, TrainingStepMatchesTheCpuBackendBitForBit) {
  const ModelConfig c = TestConfig(GetParam().yarn);
  OpaqueMemoryBackend backend;
  auto cpu = Model::Create(c, GetParam().options);
  auto opaque = Model::Create(c, GetParam().options, backend);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_TRUE(opaque.ok()) << opaque.status();
  // The model's memory really is out of the host's reach (the test would be void otherwise).
  EXPECT_NE(opaque->params().data(), OpaqueMemoryBackend::Real(opaque->params().data()));
  LoadSameParams(*cpu, *opaque, 5);

  const int64_t batch_size = 2, seq_len = 9;
  std::vector<int32_t> ids, targets;
  for (int64_t i = 0; i < batch_size * seq_len; ++i) {
    ids.push_back(static_cast<int32_t>((i * 37 + 11) % c.vocab_size));
    targets.push_back(i % 5 == 3 ? kIgnoreIndex
                                 : static_cast<int32_t>((i * 53 + 7) % c.vocab_size));
  }
  const Batch batch{.batch_size = batch_size, .seq_len = seq_len, .ids = ids, .targets = targets};
  ASSERT_TRUE(cpu->ZeroGrads().ok());
  ASSERT_TRUE(opaque->ZeroGrads().ok());
  std::vector<float> cpu_logits, cpu_logprobs, opaque_logits, opaque_logprobs;
  auto want =
      cpu->ForwardBackward(batch, {.logits = &cpu_logits, .target_logprobs = &cpu_logprobs});
  auto got = opaque->ForwardBackward(
      batch, {.logits = &opaque_logits, .target_logprobs = &opaque_logprobs});
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(std::isfinite(want->loss));
  EXPECT_EQ(std::memcmp(&want->loss, &got->loss, sizeof(double)), 0)
      << want->loss << " vs " << got->loss;
  EXPECT_EQ(want->num_targets, got->num_targets);
  EXPECT_TRUE(SameBits(cpu_logits, opaque_logits));
  EXPECT_TRUE(SameBits(cpu_logprobs, opaque_logprobs));
  EXPECT_TRUE(SameBits(cpu->grads(), HostCopy(*opaque, opaque->grads())));

  // A forward without targets (scoring) too.
  std::vector<float> cpu_scored, opaque_scored;
  ASSERT_TRUE(cpu->Forward({.batch_size = batch_size, .seq_len = seq_len, .ids = ids},
                           {.logits = &cpu_scored})
                  .ok());
  ASSERT_TRUE(opaque
                  ->Forward({.batch_size = batch_size, .seq_len = seq_len, .ids = ids},
                            {.logits = &opaque_scored})
                  .ok());
  EXPECT_TRUE(SameBits(cpu_scored, opaque_scored));
}

TEST_P(OpaqueBackendTest, DecodeMatchesTheCpuBackendBitForBit) {
  const ModelConfig c = TestConfig(GetParam().yarn);
  OpaqueMemoryBackend backend;
  ModelOptions options = GetParam().options;
  options.allocate_gradients = false;
  auto cpu = Model::Create(c, options);
  auto opaque = Model::Create(c, options, backend);
  ASSERT_TRUE(cpu.ok() && opaque.ok());
  LoadSameParams(*cpu, *opaque, 8);
  const std::vector<int32_t> ids = {3, 17, 5, 29, 0, 11, 8};
  auto cpu_cache = KvCache::Create(*cpu, 7);
  auto opaque_cache = KvCache::Create(*opaque, 7);
  ASSERT_TRUE(cpu_cache.ok() && opaque_cache.ok());
  std::vector<float> want(c.vocab_size), got(c.vocab_size);
  int64_t done = 0;
  for (int64_t len : {4, 1, 1, 1}) {
    const auto step = std::span(ids).subspan(done, len);
    ASSERT_TRUE(cpu->Decode(step, *cpu_cache, want).ok());
    ASSERT_TRUE(opaque->Decode(step, *opaque_cache, got).ok());
    done += len;
    EXPECT_TRUE(SameBits(want, got)) << "after " << done << " tokens";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Variants, OpaqueBackendTest,
    ::testing::Values(
        Variant{.yarn = false, .options = {}},
        // Recomputation, and LM-head chunks that do not divide the tokens.
        Variant{.yarn = true,
                .options = {.recompute_activations = true, .lm_head_chunk_tokens = 5}},
        // Mixed precision: bf16 weights and activations.
        Variant{.yarn = false,
                .options = {.lm_head_chunk_tokens = 7, .compute_dtype = kernels::DType::kBfloat16}},
        Variant{.yarn = true,
                .options = {.recompute_activations = true,
                            .compute_dtype = kernels::DType::kBfloat16}}));

// 16-bit compute against fp32 on the same weights and batch: the loss and the gradients agree to
// the dtype's precision, and they are not the fp32 ones (the dtype really reaches the ops). fp16
// runs with a loss scale, divided out of its gradients here.
void ExpectHalfFollowsFp32(kernels::DType dtype, float loss_scale, double loss_tolerance) {
  const ModelConfig c = TestConfig(false);
  auto fp32 = Model::Create(c);
  auto half = Model::Create(c, {.compute_dtype = dtype});
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  ASSERT_TRUE(half.ok()) << half.status();
  InitializeParameters(c, fp32->layout(), 11, fp32->params());
  std::copy(fp32->params().begin(), fp32->params().end(), half->params().begin());
  std::vector<int32_t> ids, targets;
  for (int64_t i = 0; i < 2 * 16; ++i) {
    ids.push_back(static_cast<int32_t>((i * 31 + 3) % c.vocab_size));
    targets.push_back(static_cast<int32_t>((i * 17 + 5) % c.vocab_size));
  }
  const Batch batch{.batch_size = 2, .seq_len = 16, .ids = ids, .targets = targets};
  Batch scaled = batch;
  scaled.loss_scale = loss_scale;
  ASSERT_TRUE(fp32->ZeroGrads().ok());
  ASSERT_TRUE(half->ZeroGrads().ok());
  auto want = fp32->ForwardBackward(batch);
  auto got = half->ForwardBackward(scaled);
  ASSERT_TRUE(want.ok()) << want.status();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_NE(want->loss, got->loss);
  EXPECT_NEAR(got->loss, want->loss, loss_tolerance * std::abs(want->loss));
  double dot = 0, norm_want = 0, norm_got = 0;
  for (size_t i = 0; i < fp32->grads().size(); ++i) {
    const double g = double(half->grads()[i]) / loss_scale;
    ASSERT_TRUE(std::isfinite(g)) << i;
    dot += double(fp32->grads()[i]) * g;
    norm_want += double(fp32->grads()[i]) * fp32->grads()[i];
    norm_got += g * g;
  }
  ASSERT_GT(norm_want, 0);
  EXPECT_GT(dot / std::sqrt(norm_want * norm_got), 0.99);
  EXPECT_NEAR(std::sqrt(norm_got), std::sqrt(norm_want), 0.05 * std::sqrt(norm_want));
  // The master weights are untouched by a pass: still fp32, still the same.
  EXPECT_TRUE(SameBits(fp32->params(), half->params()));
}

TEST(MixedPrecisionTest, Bf16LossAndGradientsFollowFp32) {
  ExpectHalfFollowsFp32(kernels::DType::kBfloat16, 1.0f, 0.02);
}

TEST(MixedPrecisionTest, Fp16LossAndScaledGradientsFollowFp32) {
  ExpectHalfFollowsFp32(kernels::DType::kFloat16, 1024.0f, 0.005);
}

// Counts the casts of n elements (the working copy of the weights is the only one that large).
class CastCountingBackend final : public kernels::ForwardingBackend {
 public:
  explicit CastCountingBackend(int64_t n) : ForwardingBackend(kernels::CpuBackend()), n_(n) {}
  kernels::OpStatus Cast(kernels::ConstTensor in, kernels::Tensor out, int64_t n) override {
    if (n == n_) ++casts;
    return inner().Cast(in, out, n);
  }
  int64_t casts = 0;

 private:
  int64_t n_;
};

// The bf16 working copy is cast once for passes in a row and again after params() is taken
// writable, and what it gives equals a fresh model's results.
TEST(MixedPrecisionTest, WorkingWeightsAreCastOnlyAfterTheParametersChange) {
  const ModelConfig c = TestConfig(false);
  CastCountingBackend backend(ParameterLayout(c).total_size());
  const ModelOptions options{.allocate_gradients = false,
                             .compute_dtype = kernels::DType::kBfloat16};
  auto model = Model::Create(c, options, backend);
  ASSERT_TRUE(model.ok()) << model.status();
  InitializeParameters(c, model->layout(), 5, model->params());
  const std::vector<int32_t> ids = {3, 17, 5, 29, 0, 11, 8};
  auto cache = KvCache::Create(*model, 7);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits(c.vocab_size);
  for (int64_t i = 0; i < 7; ++i) {
    ASSERT_TRUE(model->Decode(std::span(ids).subspan(i, 1), *cache, logits).ok());
  }
  const Batch batch{.batch_size = 1, .seq_len = 7, .ids = ids};
  std::vector<float> first, second, fresh;
  ASSERT_TRUE(model->Forward(batch, {.logits = &first}).ok());
  EXPECT_EQ(backend.casts, 1);  // seven decode steps and a forward pass
  for (float& p : model->params()) p *= 1.5f;
  ASSERT_TRUE(model->Forward(batch, {.logits = &second}).ok());
  EXPECT_EQ(backend.casts, 2);
  EXPECT_FALSE(SameBits(first, second));
  auto other = Model::Create(c, options);
  ASSERT_TRUE(other.ok());
  const Model& changed = *model;  // const access: no new cast
  std::copy(changed.params().begin(), changed.params().end(), other->params().begin());
  ASSERT_TRUE(other->Forward(batch, {.logits = &fresh}).ok());
  EXPECT_TRUE(SameBits(second, fresh));
  ASSERT_TRUE(model->Forward(batch).ok());
  EXPECT_EQ(backend.casts, 2);
}

}  // namespace
}  // namespace qtrain::model
