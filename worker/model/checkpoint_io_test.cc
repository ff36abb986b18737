#include "worker/model/checkpoint_io.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "worker/model/init.h"

namespace qtrain::model {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string FreshDir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("checkpoint_io_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

struct Fixture {
  ModelConfig config;
  ParameterLayout layout;
  std::vector<float> params;
};

Fixture RandomTestModel() {
  ModelConfig config = *PresetConfig("qwen2-test");
  ParameterLayout layout(config);
  std::vector<float> params(layout.total_size());
  InitializeParameters(config, layout, 7, params);
  return {config, layout, params};
}

// Writes the model's tensors with `dtype`, skipping `skip`, renaming nothing.
void WriteTensors(const Fixture& f, const std::string& path, DType dtype,
                  const std::vector<std::string>& names) {
  SafetensorsWriter writer;
  for (const std::string& name : names) {
    const TensorSlot* slot = f.layout.Find(name);
    ASSERT_NE(slot, nullptr) << name;
    std::vector<uint16_t> half(slot->size);
    for (int64_t i = 0; i < slot->size; ++i) {
      const float v = f.params[slot->offset + i];
      half[i] = dtype == DType::kBF16 ? FloatToBf16(v) : FloatToF16(v);
    }
    if (dtype == DType::kF32) {
      ASSERT_TRUE(writer
                      .AddFloat(name, slot->shape,
                                std::span<const float>(f.params).subspan(slot->offset, slot->size))
                      .ok());
    } else {
      ASSERT_TRUE(writer.Add(name, dtype, slot->shape, std::as_bytes(std::span(half))).ok());
    }
  }
  ASSERT_TRUE(writer.WriteFile(path).ok());
}

std::vector<std::string> AllNames(const Fixture& f) {
  std::vector<std::string> names;
  for (const TensorSlot& t : f.layout.tensors()) names.push_back(t.name);
  return names;
}

TEST(CheckpointIoTest, SaveThenLoadIsExact) {
  Fixture f = RandomTestModel();
  const std::string dir = FreshDir("roundtrip");
  ASSERT_TRUE(SaveCheckpoint(dir, f.config, f.params).ok());
  auto loaded = LoadCheckpoint(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->params, f.params);
  EXPECT_EQ(ConfigToJson(loaded->config), ConfigToJson(f.config));
  auto file = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_FALSE(file->Contains("lm_head.weight"));
  EXPECT_EQ(file->metadata().at("format"), "pt");
  EXPECT_EQ(file->tensors().size(), f.layout.tensors().size());
}

// NaN and infinities, in F32, BF16 and F16 tensors, are refused naming the tensor, the file and
// the first bad index, unless allowed; the values then load unchanged.
TEST(CheckpointIoTest, NonFiniteWeightsAreRefusedUnlessAllowed) {
  struct Case {
    std::string tensor;
    std::vector<int64_t> at;  // index per dimension
    float value;
    DType dtype;
  };
  const Case cases[] = {
      {"model.layers.0.self_attn.k_proj.weight", {3, 5}, std::nanf(""), DType::kF32},
      {"model.layers.1.self_attn.q_proj.bias", {7}, -INFINITY, DType::kF32},
      {"model.embed_tokens.weight", {31, 14}, INFINITY, DType::kBF16},
      {"model.norm.weight", {0}, std::nanf(""), DType::kF16},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.tensor);
    Fixture f = RandomTestModel();
    const TensorSlot* slot = f.layout.Find(c.tensor);
    ASSERT_NE(slot, nullptr);
    const int64_t flat = c.at.size() == 2 ? c.at[0] * slot->shape[1] + c.at[1] : c.at[0];
    f.params[slot->offset + flat] = c.value;
    // A second bad value later in the tensor: the error names the first.
    f.params[slot->offset + slot->size - 1] = std::nanf("");
    const std::string dir = FreshDir("nonfinite");
    ASSERT_TRUE(WriteFileAtomically(dir + "/config.json", ConfigToJson(f.config)).ok());
    WriteTensors(f, dir + "/model.safetensors", c.dtype, AllNames(f));

    const absl::Status s = LoadCheckpoint(dir).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(IsNonFiniteWeightError(s)) << s;
    EXPECT_THAT(s.message(), HasSubstr("model.safetensors: tensor '" + c.tensor + "'"));
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("at index ", flat, " ([")));
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat("[", absl::StrJoin(c.at, ", "), "] of shape")));
    std::vector<float> params(f.layout.total_size());
    EXPECT_TRUE(IsNonFiniteWeightError(LoadWeights(dir, f.config, params)));

    auto allowed = LoadCheckpoint(dir, {.allow_nonfinite = true});
    ASSERT_TRUE(allowed.ok()) << allowed.status();
    const float got = allowed->params[slot->offset + flat];
    EXPECT_EQ(std::isnan(got), std::isnan(c.value));
    if (!std::isnan(c.value)) {
      EXPECT_EQ(got, c.value);
    }
  }
  // Other load errors are not non-finite ones.
  EXPECT_FALSE(IsNonFiniteWeightError(LoadCheckpoint(FreshDir("empty")).status()));
}

TEST(CheckpointIoTest, LoadsShardedBf16AndF16) {
  Fixture f = RandomTestModel();
  const std::string dir = FreshDir("sharded");
  ASSERT_TRUE(WriteFileAtomically(dir + "/config.json", ConfigToJson(f.config)).ok());
  std::vector<std::string> names = AllNames(f);
  const std::vector<std::string> first(names.begin(), names.begin() + 5);
  const std::vector<std::string> second(names.begin() + 5, names.end());
  WriteTensors(f, dir + "/model-00001-of-00002.safetensors", DType::kBF16, first);
  WriteTensors(f, dir + "/model-00002-of-00002.safetensors", DType::kF16, second);
  nlohmann::json index;
  for (const auto& n : first) index["weight_map"][n] = "model-00001-of-00002.safetensors";
  for (const auto& n : second) index["weight_map"][n] = "model-00002-of-00002.safetensors";
  ASSERT_TRUE(WriteFileAtomically(dir + "/model.safetensors.index.json", index.dump()).ok());

  auto loaded = LoadCheckpoint(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  for (const TensorSlot& t : f.layout.tensors()) {
    const bool bf16 = std::find(first.begin(), first.end(), t.name) != first.end();
    for (int64_t i = 0; i < t.size; ++i) {
      const float v = f.params[t.offset + i];
      const float expected = bf16 ? Bf16ToFloat(FloatToBf16(v)) : F16ToFloat(FloatToF16(v));
      ASSERT_EQ(loaded->params[t.offset + i], expected) << t.name << "[" << i << "]";
    }
  }
}

TEST(CheckpointIoTest, ErrorsNameTheTensor) {
  Fixture f = RandomTestModel();
  const std::string dir = FreshDir("errors");
  ASSERT_TRUE(WriteFileAtomically(dir + "/config.json", ConfigToJson(f.config)).ok());
  std::vector<std::string> names = AllNames(f);
  const std::string path = dir + "/model.safetensors";

  // Missing tensor.
  std::vector<std::string> missing = names;
  missing.erase(missing.begin() + 3);
  WriteTensors(f, path, DType::kF32, missing);
  EXPECT_THAT(LoadCheckpoint(dir).status().message(), HasSubstr(names[3]));

  // Extra tensor.
  SafetensorsWriter writer;
  for (const std::string& name : names) {
    const TensorSlot* s = f.layout.Find(name);
    ASSERT_TRUE(
        writer
            .AddFloat(name, s->shape, std::span<const float>(f.params).subspan(s->offset, s->size))
            .ok());
  }
  std::vector<float> junk(4, 1.0f);
  ASSERT_TRUE(writer.AddFloat("model.layers.9.mystery.weight", {4}, junk).ok());
  ASSERT_TRUE(writer.WriteFile(path).ok());
  EXPECT_THAT(LoadCheckpoint(dir).status().message(), HasSubstr("model.layers.9.mystery.weight"));

  // Mis-shaped tensor.
  SafetensorsWriter shaped;
  for (const std::string& name : names) {
    const TensorSlot* s = f.layout.Find(name);
    std::vector<int64_t> shape = s->shape;
    if (name == "model.norm.weight") shape = {1, shape[0]};
    ASSERT_TRUE(
        shaped.AddFloat(name, shape, std::span<const float>(f.params).subspan(s->offset, s->size))
            .ok());
  }
  ASSERT_TRUE(shaped.WriteFile(path).ok());
  EXPECT_THAT(LoadCheckpoint(dir).status().message(), HasSubstr("model.norm.weight"));

  // lm_head.weight: accepted when it is the embedding, refused otherwise.
  const TensorSlot* embed = f.layout.Find("model.embed_tokens.weight");
  std::vector<float> head(f.params.begin() + embed->offset,
                          f.params.begin() + embed->offset + embed->size);
  for (bool same : {true, false}) {
    if (!same) head[5] += 1.0f;
    SafetensorsWriter w;
    for (const std::string& name : names) {
      const TensorSlot* s = f.layout.Find(name);
      ASSERT_TRUE(
          w.AddFloat(name, s->shape, std::span<const float>(f.params).subspan(s->offset, s->size))
              .ok());
    }
    ASSERT_TRUE(w.AddFloat("lm_head.weight", embed->shape, head).ok());
    ASSERT_TRUE(w.WriteFile(path).ok());
    auto loaded = LoadCheckpoint(dir);
    if (same) {
      EXPECT_TRUE(loaded.ok()) << loaded.status();
    } else {
      EXPECT_THAT(loaded.status().message(), HasSubstr("lm_head.weight"));
    }
  }

  // Garbage file.
  ASSERT_TRUE(WriteFileAtomically(path, "not a safetensors file").ok());
  EXPECT_FALSE(LoadCheckpoint(dir).ok());
  // No weights at all.
  fs::remove(path);
  EXPECT_THAT(LoadCheckpoint(dir).status().message(), HasSubstr("model.safetensors"));
}

TEST(CheckpointIoTest, InitMatchesTransformersRecipe) {
  Fixture f = RandomTestModel();
  for (const TensorSlot& t : f.layout.tensors()) {
    double sum = 0, sum_sq = 0;
    for (int64_t i = 0; i < t.size; ++i) {
      sum += f.params[t.offset + i];
      sum_sq += double(f.params[t.offset + i]) * f.params[t.offset + i];
    }
    if (t.name.ends_with("norm.weight")) {
      EXPECT_EQ(sum, double(t.size)) << t.name;
      EXPECT_EQ(sum_sq, double(t.size)) << t.name;
    } else if (t.name.ends_with(".bias")) {
      EXPECT_EQ(sum_sq, 0.0) << t.name;
    } else {
      const double std = std::sqrt(sum_sq / t.size);
      EXPECT_NEAR(std, 0.02, 0.004) << t.name;
    }
  }
  // Same seed, same weights; another seed, other weights.
  std::vector<float> again(f.layout.total_size()), other(f.layout.total_size());
  InitializeParameters(f.config, f.layout, 7, again);
  InitializeParameters(f.config, f.layout, 8, other);
  EXPECT_EQ(again, f.params);
  EXPECT_NE(other, f.params);
}

TEST(CheckpointIoTest, LoadsTransformersFixture) {
  const char* root = std::getenv("QTRAIN_SOURCE_DIR");
  const std::string dir = std::string(root ? root : ".") + "/tests/parity/fixtures/yarn";
  auto loaded = LoadCheckpoint(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->config.rope_type, RopeType::kYarn);
  EXPECT_EQ(loaded->config.yarn.original_max_position_embeddings, 1024);
  EXPECT_EQ(loaded->config.rope_theta, 10000.0);
}

}  // namespace
}  // namespace qtrain::model
