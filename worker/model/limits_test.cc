// Memory, context and finiteness limits of the model: allocation failures are RESOURCE_EXHAUSTED
// naming the buffer (and a retry after one allocates everything), the KV cache grows with the
// tokens up to the model's context, and non-finite activations are reported where they appear.
#include <cmath>
#include <cstdint>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/model/buffer.h"
#include "worker/model/init.h"
#include "worker/model/limited_backend_test_util.h"
#include "worker/model/model.h"
#include "worker/model/model_internal.h"

namespace qtrain::model {
namespace {

using ::testing::HasSubstr;

constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

ModelConfig TestConfig() { return *PresetConfig("qwen2-test"); }

void Randomize(Model& model, uint64_t seed) {
  InitializeParameters(model.config(), model.layout(), seed, model.params());
  // Wider than the init's 0.02 so that every layer changes the logits.
  for (float& p : model.params()) p *= 10.0f;
}

std::vector<int32_t> Ids(int64_t n, int64_t vocab) {
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 7 + 3) % vocab);
  return ids;
}

// ---------------------------------------------------------------------------------------------
// Allocation helpers

TEST(BufferTest, SizeOverflowIsResourceExhaustedNamingTheBuffer) {
  Buffer<float> buf;
  const int64_t big = std::numeric_limits<int64_t>::max() / 2;
  const absl::Status s = buf.Resize(kernels::CpuBackend(), {big, 4}, "the test buffer");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("the test buffer"));
  EXPECT_THAT(s.message(), HasSubstr("overflows"));
  EXPECT_EQ(buf.get(), nullptr);
  EXPECT_EQ(buf.size(), 0);
  // Elements times sizeof(float) overflowing size_t, with an element count that fits.
  EXPECT_EQ(buf.Resize(kernels::CpuBackend(), {big}, "x").code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(buf.Resize(kernels::CpuBackend(), {-1}, "x").ok());
}

TEST(BufferTest, FailedAllocationNamesTheBufferAndItsBytes) {
  LimitedBackend backend;
  backend.set_limit(1000);
  Buffer<float> buf;
  const absl::Status s = buf.Resize(backend, {10, 100}, "the widgets");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("the widgets"));
  EXPECT_THAT(s.message(), HasSubstr("4000 bytes"));
  EXPECT_EQ(buf.get(), nullptr);
  ASSERT_TRUE(buf.Resize(backend, {10, 20}, "the widgets").ok());
  EXPECT_EQ(buf.size(), 200);
  EXPECT_EQ(backend.bytes_in_use(), 800u);
}

TEST(TensorBufferTest, AFailedResizeLeavesItEmpty) {
  LimitedBackend backend;
  backend.set_limit(1000);
  TensorBuffer buf;
  ASSERT_TRUE(buf.Resize(backend, kernels::DType::kBfloat16, {10, 20}, "the widgets").ok());
  EXPECT_EQ(buf.size(), 200);
  EXPECT_EQ(backend.bytes_in_use(), 400u);
  // Too big for the backend, then too big for size_t: each time empty, not the old size.
  const absl::Status s = buf.Resize(backend, kernels::DType::kFloat32, {10, 100}, "the widgets");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("4000 bytes"));
  EXPECT_EQ(buf.size(), 0);
  EXPECT_EQ(buf.data(), nullptr);
  EXPECT_EQ(backend.bytes_in_use(), 0u);
  ASSERT_TRUE(buf.Resize(backend, kernels::DType::kFloat32, {10}, "the widgets").ok());
  const int64_t big = std::numeric_limits<int64_t>::max() / 2;
  EXPECT_EQ(buf.Resize(backend, kernels::DType::kBfloat16, {big}, "the widgets").code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(buf.size(), 0);
  EXPECT_FALSE(buf.Resize(backend, kernels::DType::kFloat32, {-1}, "the widgets").ok());
  EXPECT_EQ(buf.size(), 0);
}

TEST(HostVectorTest, BadAllocAndOverflowBecomeResourceExhausted) {
  std::vector<float> v;
  const int64_t big = int64_t{1} << 40;
  absl::Status s = ResizeHostVector(v, {big, big}, "the host table");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("the host table"));

  s = CatchAllocationFailure("the thrown thing", 123,
                             []() -> absl::Status { throw std::bad_alloc(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("the thrown thing: 123 bytes"));
  absl::StatusOr<std::vector<float>> r = CatchAllocationFailure(
      "the long thing", 5,
      []() -> absl::StatusOr<std::vector<float>> { throw std::length_error("vector"); });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(r.status().message(), HasSubstr("the long thing"));

  auto made = MakeHostVector<float>({3, 4}, "a small table", 1.5f);
  ASSERT_TRUE(made.ok());
  EXPECT_EQ(*made, std::vector<float>(12, 1.5f));
}

// Every buffer's size, in a fixed order.
std::vector<int64_t> BufferSizes(const Activations& a) {
  std::vector<int64_t> sizes = {a.ids.size(),          a.targets.size(),    a.rstd_final.size(),
                                a.final_normed.size(), a.d_residual.size(), a.logits.size(),
                                a.losses.size(),       a.lse.size(),        a.chunk_loss.size()};
  for (const TensorBuffer& r : a.residual) sizes.push_back(r.size());
  for (const LayerActivations& l : a.layers) {
    for (const Buffer<float>* b : {&l.rstd_in, &l.lse, &l.rstd_post}) sizes.push_back(b->size());
    for (const TensorBuffer* b : {&l.normed_in, &l.q, &l.k, &l.v, &l.attn, &l.mid, &l.normed_post,
                                  &l.gate, &l.up, &l.act}) {
      sizes.push_back(b->size());
    }
  }
  const BackwardScratch& s = a.scratch;
  for (const TensorBuffer* b : {&s.d_mid, &s.d_normed, &s.d_attn, &s.dq, &s.dq_pre, &s.dk,
                                &s.dk_pre, &s.dv, &s.d_act, &s.d_gate, &s.d_up}) {
    sizes.push_back(b->size());
  }
  return sizes;
}

TEST(ActivationsTest, RetryAfterAFailedAllocationAllocatesEveryBuffer) {
  const ModelConfig c = TestConfig();
  for (PassMode mode : {PassMode::kInference, PassMode::kTrainStored, PassMode::kTrainRecompute}) {
    SCOPED_TRACE(static_cast<int>(mode));
    LimitedBackend backend;
    Activations reference;
    ASSERT_TRUE(reference.Resize(backend, c, kernels::DType::kFloat32, 3, 40, mode, 16).ok());
    const size_t full = backend.bytes_in_use();
    ASSERT_GT(full, 0u);

    Activations acts;
    // Fail somewhere in the middle, at several points.
    for (size_t limit : {full + 8, full * 3 / 2, full * 2 - 64}) {
      backend.set_limit(limit);
      const absl::Status failed =
          acts.Resize(backend, c, kernels::DType::kFloat32, 3, 40, mode, 16);
      ASSERT_EQ(failed.code(), absl::StatusCode::kResourceExhausted) << failed;
      EXPECT_THAT(failed.message(), HasSubstr("activations"));
      // Nothing is kept from the failed attempt.
      EXPECT_EQ(backend.bytes_in_use(), full);
      EXPECT_FALSE(acts.ready);
    }
    backend.remove_limit();
    ASSERT_TRUE(acts.Resize(backend, c, kernels::DType::kFloat32, 3, 40, mode, 16).ok());
    EXPECT_EQ(BufferSizes(acts), BufferSizes(reference));
    EXPECT_EQ(backend.bytes_in_use(), 2 * full);
  }
}

TEST(ModelLimitsTest, CreateTooBigForMemoryIsResourceExhausted) {
  LimitedBackend backend;
  backend.set_limit(1 << 12);
  auto model = Model::Create(TestConfig(), {}, backend);
  ASSERT_EQ(model.status().code(), absl::StatusCode::kResourceExhausted) << model.status();
  EXPECT_THAT(model.status().message(), HasSubstr("the model parameters"));
}

TEST(ModelLimitsTest, AnUnknownComputeDtypeIsRefused) {
  ModelOptions options;
  options.compute_dtype = static_cast<kernels::DType>(7);
  auto model = Model::Create(TestConfig(), options);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument) << model.status();
  EXPECT_THAT(model.status().message(), HasSubstr("compute_dtype must be fp32, bf16 or fp16"));
}

TEST(ModelLimitsTest, PassesAfterAnOutOfMemoryFailureMatchAFreshModel) {
  const ModelConfig c = TestConfig();
  LimitedBackend backend;
  auto model = Model::Create(c, {.lm_head_chunk_tokens = 8}, backend);
  auto fresh = Model::Create(c, {.lm_head_chunk_tokens = 8});
  ASSERT_TRUE(model.ok() && fresh.ok());
  Randomize(*model, 3);
  std::copy(model->params().begin(), model->params().end(), fresh->params().begin());
  const int64_t n = 24;
  const std::vector<int32_t> ids = Ids(2 * n, c.vocab_size);
  std::vector<int32_t> targets(ids.begin() + 1, ids.end());
  targets.push_back(3);
  const Batch batch{.batch_size = 2, .seq_len = n, .ids = ids, .targets = targets};

  backend.set_limit(backend.bytes_in_use() + 4096);
  for (int attempt = 0; attempt < 2; ++attempt) {
    const auto failed = model->ForwardBackward(batch);
    ASSERT_EQ(failed.status().code(), absl::StatusCode::kResourceExhausted) << failed.status();
  }
  backend.remove_limit();
  std::vector<float> logits, want_logits;
  auto got = model->ForwardBackward(batch, {.logits = &logits});
  auto want = fresh->ForwardBackward(batch, {.logits = &want_logits});
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(got->loss, want->loss);
  EXPECT_EQ(logits, want_logits);
  EXPECT_TRUE(std::equal(model->grads().begin(), model->grads().end(), fresh->grads().begin()));
}

TEST(ModelLimitsTest, OverflowingBatchIsRefused) {
  auto model = Model::Create(TestConfig());
  ASSERT_TRUE(model.ok());
  const std::vector<int32_t> ids(4, 1);
  const int64_t big = std::numeric_limits<int64_t>::max() / 2;
  auto r = model->Forward({.batch_size = big, .seq_len = 4, .ids = ids});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("overflows"));
}

// ---------------------------------------------------------------------------------------------
// Context length and the KV cache

TEST(ContextLengthTest, YarnStretchesTheOriginalContext) {
  ModelConfig c = TestConfig();
  c.max_position_embeddings = 64;
  EXPECT_EQ(ContextLength(c), 64);
  c.rope_type = RopeType::kYarn;
  c.yarn.factor = 4.0;
  c.yarn.original_max_position_embeddings = 0;  // max_position_embeddings
  EXPECT_EQ(ContextLength(c), 256);
  c.yarn.original_max_position_embeddings = 32;
  EXPECT_EQ(ContextLength(c), 128);
  c.max_position_embeddings = 300;  // already the stretched context
  EXPECT_EQ(ContextLength(c), 300);
  c.yarn.factor = 1e300;
  EXPECT_EQ(ContextLength(c), std::numeric_limits<int64_t>::max());
}

TEST(KvCacheTest, GrowsWithTheTokensAndMatchesTheFullForward) {
  ModelConfig c = TestConfig();
  c.max_position_embeddings = 1500;
  auto model = Model::Create(c);
  ASSERT_TRUE(model.ok());
  Randomize(*model, 5);
  const int64_t n = 700;
  const std::vector<int32_t> ids = Ids(n, c.vocab_size);
  std::vector<float> full;
  ASSERT_TRUE(model->Forward({.batch_size = 1, .seq_len = n, .ids = ids}, {.logits = &full}).ok());

  auto cache = KvCache::Create(*model, ContextLength(c));
  ASSERT_TRUE(cache.ok()) << cache.status();
  EXPECT_EQ(cache->capacity(), 1500);
  EXPECT_LT(cache->allocated(), 1500);  // memory follows the tokens, not the capacity
  std::vector<float> logits(c.vocab_size);
  int64_t done = 0, growths = 0, allocated = cache->allocated();
  auto decode = [&](int64_t len) {
    ASSERT_TRUE(model->Decode(std::span(ids).subspan(done, len), *cache, logits).ok());
    done += len;
    EXPECT_GE(cache->allocated(), done);
    EXPECT_LE(cache->allocated(), std::max<int64_t>(2 * done, 256));
    if (cache->allocated() != allocated) ++growths;
    allocated = cache->allocated();
    for (int64_t v = 0; v < c.vocab_size; ++v) {
      const float want = full[(done - 1) * c.vocab_size + v];
      ASSERT_NEAR(logits[v], want, 1e-3 * (1 + std::abs(want))) << done << " " << v;
    }
  };
  // Fp32 sums in another order than the full pass; a lost or misplaced key is off by far more.
  decode(300);  // a prefill past the first allocation
  while (done < n) decode(1);
  EXPECT_EQ(growths, 2);  // doubling: 256 -> 512 -> 1024
  EXPECT_EQ(cache->length(), n);
}

TEST(KvCacheTest, RefusesPositionsPastTheCapacityAndTheContext) {
  ModelConfig c = TestConfig();
  c.max_position_embeddings = 16;
  auto model = Model::Create(c);
  ASSERT_TRUE(model.ok());
  Randomize(*model, 6);
  auto too_long = KvCache::Create(*model, 17);
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(too_long.status().message(), HasSubstr("context of 16 positions"));

  auto cache = KvCache::Create(*model, 10);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits(c.vocab_size);
  const std::vector<int32_t> ids = Ids(11, c.vocab_size);
  const absl::Status s = model->Decode(ids, *cache, logits);
  EXPECT_EQ(s.code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(s.message(), HasSubstr("capacity of 10 positions"));
  EXPECT_EQ(cache->length(), 0);
  ASSERT_TRUE(model->Decode(std::span(ids).first(10), *cache, logits).ok());
  EXPECT_FALSE(model->Decode(std::span(ids).first(1), *cache, logits).ok());
}

TEST(KvCacheTest, OutOfMemoryWhileGrowingKeepsTheCachedTokens) {
  ModelConfig c = TestConfig();
  c.max_position_embeddings = 1024;
  LimitedBackend backend;
  auto model = Model::Create(c, {}, backend);
  ASSERT_TRUE(model.ok());
  Randomize(*model, 8);
  const std::vector<int32_t> ids = Ids(400, c.vocab_size);
  std::vector<float> full;
  ASSERT_TRUE(
      model->Forward({.batch_size = 1, .seq_len = 400, .ids = ids}, {.logits = &full}).ok());
  auto cache = KvCache::Create(*model, 1024);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits(c.vocab_size);
  ASSERT_TRUE(model->Decode(std::span(ids).first(200), *cache, logits).ok());
  backend.set_limit(backend.bytes_in_use() + 1024);
  const absl::Status s = model->Decode(std::span(ids).subspan(200), *cache, logits);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_THAT(s.message(), HasSubstr("KV cache"));
  EXPECT_EQ(cache->length(), 200);
  backend.remove_limit();
  ASSERT_TRUE(model->Decode(std::span(ids).subspan(200), *cache, logits).ok());
  for (int64_t v = 0; v < c.vocab_size; ++v) {
    const float want = full[399 * c.vocab_size + v];
    ASSERT_NEAR(logits[v], want, 1e-3 * (1 + std::abs(want))) << v;
  }
}

// ---------------------------------------------------------------------------------------------
// Non-finite values

struct Poison {
  std::string tensor;
  int64_t index;
  float value;
  std::string where;  // expected in the error
};

TEST(NonFiniteTest, ForwardAndDecodeNameWhereNonFiniteValuesAppear) {
  const ModelConfig c = TestConfig();
  const std::vector<int32_t> ids = {1, 2, 3, 4, 5};
  // Token 2's embedding row; a vocabulary row no input uses (only its logit turns NaN).
  const int64_t d = c.hidden_size;
  const Poison cases[] = {
      {"model.embed_tokens.weight", 2 * d + 3, kNan, "embedding output"},
      {"model.embed_tokens.weight", 30 * d + 1, kInf, "the logits"},
      {"model.layers.1.self_attn.q_proj.weight", 7, kNan, "decoder layer 1 (model.layers.1"},
      {"model.layers.0.mlp.down_proj.weight", 0, 3e38f, "decoder layer 0 (model.layers.0"},
      {"model.layers.1.post_attention_layernorm.weight", 4, -kInf, "decoder layer 1"},
      {"model.norm.weight", 5, kNan, "final norm output"},
  };
  for (const Poison& p : cases) {
    SCOPED_TRACE(p.tensor);
    auto checked = Model::Create(c, {.check_finite = true});
    auto unchecked = Model::Create(c);
    ASSERT_TRUE(checked.ok() && unchecked.ok());
    Randomize(*checked, 11);
    const TensorSlot* slot = checked->layout().Find(p.tensor);
    ASSERT_NE(slot, nullptr);
    checked->params()[slot->offset + p.index] = p.value;
    if (p.value == 3e38f) {  // finite weights whose products overflow fp32
      for (int64_t i = 0; i < slot->size; ++i) checked->params()[slot->offset + i] = p.value;
    }
    std::copy(checked->params().begin(), checked->params().end(), unchecked->params().begin());

    std::vector<int32_t> targets(ids.begin() + 1, ids.end());
    targets.push_back(kIgnoreIndex);
    std::vector<float> logprobs;
    const Batch batch{.batch_size = 1, .seq_len = 5, .ids = ids, .targets = targets};
    auto r = checked->Forward(batch, {.target_logprobs = &logprobs});
    ASSERT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
    EXPECT_THAT(r.status().message(), HasSubstr(p.where));
    EXPECT_THAT(r.status().message(), HasSubstr("non-finite"));
    // Without the check (training) the pass completes; the trainer skips the step.
    EXPECT_TRUE(unchecked->Forward(batch).ok());

    auto cache = KvCache::Create(*checked, 8);
    ASSERT_TRUE(cache.ok());
    std::vector<float> logits(c.vocab_size);
    const absl::Status decoded = checked->Decode(ids, *cache, logits);
    ASSERT_EQ(decoded.code(), absl::StatusCode::kFailedPrecondition) << decoded;
    EXPECT_THAT(decoded.message(), HasSubstr(p.where));
  }
}

TEST(NonFiniteTest, ErrorNamesTheFirstBadPosition) {
  const ModelConfig c = TestConfig();
  auto model = Model::Create(c, {.check_finite = true});
  ASSERT_TRUE(model.ok());
  Randomize(*model, 12);
  const TensorSlot* embed = model->layout().Find("model.embed_tokens.weight");
  model->params()[embed->offset + 9 * c.hidden_size + 6] = kNan;  // token 9, element 6
  const std::vector<int32_t> ids = {1, 2, 3, 4, 9, 1, 9, 9};
  auto r = model->Forward({.batch_size = 2, .seq_len = 4, .ids = ids});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("sequence 1, position 0, element 6"));
  auto cache = KvCache::Create(*model, 8);
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits(c.vocab_size);
  // Decoding tokens without a 9 meets the bad row in the LM head: logit 9 of the last token.
  const absl::Status s = model->Decode(std::span(ids).first(3), *cache, logits);
  EXPECT_THAT(s.message(), HasSubstr("the logits"));
  EXPECT_THAT(s.message(), HasSubstr("sequence 0, position 2, element 9"));
  cache->Clear();
  const absl::Status embedded = model->Decode(std::span(ids).first(5), *cache, logits);
  EXPECT_THAT(embedded.message(), HasSubstr("the embedding output"));
  EXPECT_THAT(embedded.message(), HasSubstr("sequence 0, position 4, element 6"));
}

}  // namespace
}  // namespace qtrain::model
