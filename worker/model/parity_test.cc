// Parity with Hugging Face transformers on the fixtures of tests/parity/make_fixtures.py: a
// transformers checkpoint loads in qtrain and gives the same logits, loss, gradients and greedy
// continuation. The references were computed in float64, so the tolerances bound qtrain's fp32
// error: logits and loss 1e-4, gradients 1e-3 (relative to the tensor's largest magnitude).
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "worker/model/checkpoint_io.h"
#include "worker/model/model.h"
#include "worker/model/sampler.h"

namespace qtrain::model {
namespace {

// A committed fixture's name, or a directory (extra fixtures, see FixtureNames).
std::string FixtureDir(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* root = std::getenv("QTRAIN_SOURCE_DIR");
  return std::string(root ? root : ".") + "/tests/parity/fixtures/" + name;
}

// The committed fixtures, plus the directories listed (comma-separated) in
// QTRAIN_PARITY_FIXTURES, e.g. the full-width one of `make_fixtures.py --extra DIR`.
std::vector<std::string> FixtureNames() {
  std::vector<std::string> names = {"plain", "yarn"};
  if (const char* extra = std::getenv("QTRAIN_PARITY_FIXTURES"); extra != nullptr) {
    std::string list = extra;
    for (size_t start = 0; start < list.size();) {
      size_t end = list.find(',', start);
      if (end == std::string::npos) end = list.size();
      if (end > start) names.push_back(list.substr(start, end - start));
      start = end + 1;
    }
  }
  return names;
}

std::vector<int32_t> ReadInt64AsInt32(const SafetensorsFile& file, const std::string& name,
                                      std::vector<int64_t>* shape = nullptr) {
  auto info = file.Find(name);
  EXPECT_TRUE(info.ok()) << info.status();
  if (!info.ok()) return {};
  EXPECT_EQ((*info)->dtype, DType::kI64) << name;
  if (shape != nullptr) *shape = (*info)->shape;
  auto bytes = file.Data(**info);
  std::vector<int32_t> out(bytes.size() / sizeof(int64_t));
  for (size_t i = 0; i < out.size(); ++i) {
    int64_t v;
    std::memcpy(&v, bytes.data() + i * sizeof(int64_t), sizeof(v));
    out[i] = static_cast<int32_t>(v);
  }
  return out;
}

// max |actual - expected| / max |expected|.
double RelativeError(std::span<const float> actual, std::span<const float> expected) {
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    max_diff = std::max(max_diff, std::abs(double(actual[i]) - double(expected[i])));
    max_ref = std::max(max_ref, std::abs(double(expected[i])));
  }
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

class ParityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto loaded = LoadCheckpoint(FixtureDir(GetParam()));
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    config_ = loaded->config;
    auto model = Model::Create(config_);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::make_unique<Model>(std::move(*model));
    std::copy(loaded->params.begin(), loaded->params.end(), model_->params().begin());
    auto io = SafetensorsFile::Open(FixtureDir(GetParam()) + "/io.safetensors");
    ASSERT_TRUE(io.ok()) << io.status();
    io_ = std::make_unique<SafetensorsFile>(std::move(*io));
  }

  ModelConfig config_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<SafetensorsFile> io_;
};

TEST_P(ParityTest, LogitsLossAndGradientsMatchTransformers) {
  std::vector<int64_t> shape;
  const std::vector<int32_t> ids = ReadInt64AsInt32(*io_, "input_ids", &shape);
  const std::vector<int32_t> labels = ReadInt64AsInt32(*io_, "labels");
  ASSERT_EQ(shape.size(), 2u);
  const int64_t batch_size = shape[0], seq_len = shape[1];
  const std::vector<int32_t> targets = ShiftLabels(labels, batch_size, seq_len);

  for (bool recompute : {false, true}) {
    SCOPED_TRACE(recompute ? "recompute" : "stored activations");
    auto model = Model::Create(config_, {.recompute_activations = recompute,
                                         .lm_head_chunk_tokens = 5});  // several chunks
    ASSERT_TRUE(model.ok());
    std::copy(model_->params().begin(), model_->params().end(), model->params().begin());
    std::vector<float> logits;
    auto result = model->ForwardBackward(
        {.batch_size = batch_size, .seq_len = seq_len, .ids = ids, .targets = targets},
        {.logits = &logits});
    ASSERT_TRUE(result.ok()) << result.status();

    const auto ref_logits = io_->ReadAsFloat("logits");
    ASSERT_TRUE(ref_logits.ok());
    ASSERT_EQ(logits.size(), ref_logits->size());
    const double logits_error = RelativeError(logits, *ref_logits);
    EXPECT_LE(logits_error, 1e-4);

    const float ref_loss = (*io_->ReadAsFloat("loss"))[0];
    const double loss_error = std::abs(result->loss - ref_loss) / std::abs(ref_loss);
    EXPECT_LE(loss_error, 1e-4) << result->loss << " vs " << ref_loss;

    double worst_grad = 0;
    std::string worst_name;
    for (const TensorSlot& slot : model->layout().tensors()) {
      auto ref = io_->ReadAsFloat("grad." + slot.name, slot.shape);
      ASSERT_TRUE(ref.ok()) << ref.status();
      const double err = RelativeError(model->grads().subspan(slot.offset, slot.size), *ref);
      EXPECT_LE(err, 1e-3) << slot.name;
      if (err > worst_grad) {
        worst_grad = err;
        worst_name = slot.name;
      }
    }
    std::cout << "[parity " << GetParam() << (recompute ? ", recompute" : "") << "] logits rel err "
              << logits_error << ", loss rel err " << loss_error << ", worst gradient rel err "
              << worst_grad << " (" << worst_name << ")\n";
  }
}

TEST_P(ParityTest, GreedyGenerationIsTokenIdentical) {
  const std::vector<int32_t> prompt = ReadInt64AsInt32(*io_, "generate.prompt");
  const std::vector<int32_t> expected = ReadInt64AsInt32(*io_, "generate.output");
  ASSERT_GT(expected.size(), prompt.size());
  const int64_t new_tokens = static_cast<int64_t>(expected.size() - prompt.size());
  EXPECT_EQ(new_tokens, 32);
  auto cache = KvCache::Create(*model_, static_cast<int64_t>(expected.size()));
  ASSERT_TRUE(cache.ok());
  std::vector<float> logits(config_.vocab_size);
  ASSERT_TRUE(model_->Decode(prompt, *cache, logits).ok());
  std::vector<int32_t> sequence = prompt;
  for (int64_t step = 0; step < new_tokens; ++step) {
    const int32_t next = static_cast<int32_t>(Argmax(logits));
    sequence.push_back(next);
    ASSERT_TRUE(model_->Decode(std::span<const int32_t>(&next, 1), *cache, logits).ok());
  }
  EXPECT_EQ(sequence, expected);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ParityTest, ::testing::ValuesIn(FixtureNames()),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& ch : name) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace qtrain::model
