#include "worker/model/config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace qtrain::model {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

// The Qwen2-0.5B config.json as published (transformers 4.40 layout).
constexpr char kQwen05bJson[] = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 131072, "max_window_layers": 24,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
  "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "sliding_window": 131072, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 151936})";

TEST(ConfigTest, PresetMatchesSpec) {
  auto c = PresetConfig("qwen2-0.5b");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 151936);
  EXPECT_EQ(c->hidden_size, 896);
  EXPECT_EQ(c->intermediate_size, 4864);
  EXPECT_EQ(c->num_layers, 24);
  EXPECT_EQ(c->num_heads, 14);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->NumParameters(), 494032768);  // docs/model-math.md#parameter-count
}

TEST(ConfigTest, SmallPresetsKeepStructure) {
  for (const char* name : {"qwen2-tiny", "qwen2-test"}) {
    auto c = PresetConfig(name);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_GT(c->group_size(), 1) << name;
    EXPECT_GT(c->num_kv_heads, 1) << name;
    EXPECT_EQ(c->head_dim * c->num_heads, c->hidden_size) << name;
  }
  EXPECT_EQ(PresetConfig("qwen2-tiny")->vocab_size, 4096);
  EXPECT_THAT(PresetConfig("nope").status().message(), HasSubstr("qwen2-tiny"));
}

TEST(ConfigTest, ParsesPublishedQwenConfig) {
  auto c = ParseConfigJson(kQwen05bJson);
  ASSERT_TRUE(c.ok()) << c.status();
  auto preset = PresetConfig("qwen2-0.5b");
  EXPECT_EQ(c->NumParameters(), preset->NumParameters());
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->rope_type, RopeType::kDefault);
  EXPECT_EQ(c->max_position_embeddings, 131072);
  ASSERT_EQ(c->eos_token_ids.size(), 1u);
  EXPECT_EQ(c->eos_token_ids[0], 151643);
}

Json Base() { return Json::parse(kQwen05bJson); }

TEST(ConfigTest, YarnWithTypeOrRopeType) {
  for (const char* key : {"type", "rope_type"}) {
    Json j = Base();
    j["rope_scaling"] = {{key, "yarn"}, {"factor", 4}, {"original_max_position_embeddings", 32768}};
    auto c = ParseConfigJson(j.dump());
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->rope_type, RopeType::kYarn);
    EXPECT_EQ(c->yarn.factor, 4.0);
    EXPECT_EQ(c->yarn.original_max_position_embeddings, 32768);
    EXPECT_EQ(c->yarn.beta_fast, 32.0);
    EXPECT_EQ(c->yarn.beta_slow, 1.0);
  }
}

TEST(ConfigTest, NewerRopeParametersLayout) {
  Json j = Base();
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 5e5}, {"factor", 2.0}};
  auto c = ParseConfigJson(j.dump());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_theta, 5e5);
  EXPECT_EQ(c->yarn.factor, 2.0);
  // Defaults to max_position_embeddings, as transformers does.
  EXPECT_EQ(c->yarn.original_max_position_embeddings, 131072);
}

TEST(ConfigTest, RefusesUnsupportedFeaturesNamingTheKey) {
  struct Case {
    const char* key;
    Json value;
  };
  const Case cases[] = {
      {"tie_word_embeddings", false},
      {"use_sliding_window", true},
      {"hidden_act", "gelu"},
      {"model_type", "llama"},
      {"rope_scaling", {{"rope_type", "dynamic"}, {"factor", 2.0}}},
      {"rope_scaling", {{"type", "yarn"}}},  // no factor
      {"num_attention_heads", 5},            // 896 % 5 and 5 % 2
      {"vocab_size", "many"},
      {"layer_types", Json::array({"sliding_attention"})},
  };
  for (const Case& c : cases) {
    Json j = Base();
    j[c.key] = c.value;
    auto parsed = ParseConfigJson(j.dump());
    EXPECT_FALSE(parsed.ok()) << c.key << " = " << c.value.dump();
    EXPECT_THAT(
        parsed.status().message(),
        HasSubstr(c.key == std::string("num_attention_heads") ? "num_key_value_heads" : c.key))
        << parsed.status();
  }
  Json j = Base();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_THAT(ParseConfigJson(j.dump()).status().message(), HasSubstr("rope_scaling.type"));
  j = Base();
  j.erase("tie_word_embeddings");
  EXPECT_THAT(ParseConfigJson(j.dump()).status().message(), HasSubstr("tie_word_embeddings"));
  j = Base();
  j.erase("hidden_size");
  EXPECT_THAT(ParseConfigJson(j.dump()).status().message(), HasSubstr("hidden_size"));
  EXPECT_FALSE(ParseConfigJson("{not json").ok());
  EXPECT_FALSE(ParseConfigJson("[1, 2]").ok());
}

TEST(ConfigTest, JsonRoundTrip) {
  auto c = PresetConfig("qwen2-tiny");
  c->rope_type = RopeType::kYarn;
  c->yarn.factor = 4;
  c->yarn.original_max_position_embeddings = 8192;
  c->yarn.attention_factor = 1.25;
  const std::string text = ConfigToJson(*c);
  const Json j = Json::parse(text);
  EXPECT_EQ(j["architectures"][0], "Qwen2ForCausalLM");
  EXPECT_EQ(j["torch_dtype"], "float32");
  EXPECT_EQ(j["tie_word_embeddings"], true);
  auto back = ParseConfigJson(text);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(ConfigToJson(*back), text);
  EXPECT_EQ(back->yarn.attention_factor, 1.25);
}

}  // namespace
}  // namespace qtrain::model
