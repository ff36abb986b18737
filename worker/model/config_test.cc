#include "worker/model/config.h"

#include <string>

#include "absl/strings/str_cat.h"
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

TEST(ConfigTest, PresetMatchesPublishedQwen2Config) {
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

TEST(ConfigTest, ParameterCountNeverWraps) {
  ModelConfig c = *PresetConfig("qwen2-tiny");
  // Each size is within kMaxDim, but the products are far past int64.
  c.hidden_size = kMaxDim;
  c.num_heads = kMaxDim / 2;
  c.num_kv_heads = kMaxDim / 2;
  c.head_dim = kMaxDim;
  c.intermediate_size = kMaxDim;
  c.num_layers = kMaxDim;
  c.vocab_size = kMaxDim;
  EXPECT_EQ(c.CheckedNumParameters(), std::nullopt);
  const std::string message(ValidateConfig(c).message());
  EXPECT_THAT(message, HasSubstr("num_attention_heads: num_attention_heads x head_dim = "));
  EXPECT_THAT(message, HasSubstr("the parameter count (overflows int64) is larger than the limit "
                                 "of 1099511627776"));
  // Large but representable: reported with its value.
  c = *PresetConfig("qwen2-0.5b");
  c.num_layers = 1 << 17;
  EXPECT_THAT(std::string(ValidateConfig(c).message()),
              HasSubstr(absl::StrCat("the parameter count ", *c.CheckedNumParameters(),
                                     " is larger than the limit of 1099511627776")));
  c.num_layers = 1000000000;
  EXPECT_THAT(std::string(ValidateConfig(c).message()),
              HasSubstr("num_hidden_layers: must be in [1, 16777216], got 1000000000"));
}

TEST(ConfigTest, BoundsOnRopeAndPositions) {
  ModelConfig c = *PresetConfig("qwen2-tiny");
  c.rope_theta = 1e300;
  EXPECT_THAT(std::string(ValidateConfig(c).message()), HasSubstr("rope_theta: must be in (1, "));
  c = *PresetConfig("qwen2-tiny");
  c.max_position_embeddings = int64_t{1} << 40;
  EXPECT_THAT(std::string(ValidateConfig(c).message()),
              HasSubstr("max_position_embeddings: must be in [1, 16777216]"));
  c = *PresetConfig("qwen2-tiny");
  c.rope_type = RopeType::kYarn;
  c.yarn.original_max_position_embeddings = 4096;
  for (double factor : {0.5, 3.6e16}) {
    c.yarn.factor = factor;
    EXPECT_THAT(std::string(ValidateConfig(c).message()),
                HasSubstr("rope_scaling.factor: must be in [1, 1024]"))
        << factor;
  }
}

TEST(ConfigTest, JsonNumbersOutOfRangeSayWhy) {
  Json j = Base();
  j["vocab_size"] = 18446744073709551615ull;
  EXPECT_THAT(std::string(ParseConfigJson(j.dump()).status().message()),
              HasSubstr("key 'vocab_size': value 18446744073709551615 is out of range (at most "
                        "9223372036854775807)"));
  j = Base();
  j["vocab_size"] = -1;
  EXPECT_THAT(std::string(ParseConfigJson(j.dump()).status().message()),
              HasSubstr("vocab_size: must be in [1, 16777216], got -1"));
  j = Base();
  j["vocab_size"] = 1.5;
  EXPECT_THAT(std::string(ParseConfigJson(j.dump()).status().message()),
              HasSubstr("key 'vocab_size': expected an integer, got 1.5"));
  j = Base();
  j["rms_norm_eps"] = 1e-310;
  EXPECT_THAT(std::string(ParseConfigJson(j.dump()).status().message()),
              HasSubstr("key 'rms_norm_eps': value 1e-310 is subnormal"));
  std::string text = kQwen05bJson;
  text.replace(text.find("1000000.0"), 9, "1e999");
  EXPECT_THAT(std::string(ParseConfigJson(text).status().message()),
              HasSubstr("config.json:6:66: key 'rope_theta': out of range: number overflow parsing "
                        "'1e999' (larger than the largest double"));
  j = Base();
  j["eos_token_id"] = Json::array({1, 18446744073709551615ull});
  EXPECT_THAT(std::string(ParseConfigJson(j.dump()).status().message()),
              HasSubstr("key 'eos_token_id': value 18446744073709551615 is out of range"));
}

TEST(ConfigTest, InvalidJsonNamesThePositionAndKey) {
  std::string text = kQwen05bJson;
  text.replace(text.find("1000000.0"), 9, "NaN");
  const std::string message(ParseConfigJson(text, "m/config.json").status().message());
  EXPECT_THAT(message, HasSubstr("m/config.json:6:66: not JSON in the value of 'rope_theta' (NaN "
                                 "and Infinity are not JSON numbers)"));
  EXPECT_THAT(std::string(ParseConfigJson("{\"a\": 1,\n \"b\": }").status().message()),
              HasSubstr("config.json:2:7: not JSON in the value of 'b'"));
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_THAT(std::string(ParseConfigJson(deep).status().message()),
              HasSubstr("config.json: nested deeper than 64 levels"));
  const std::string deep_object = "{\"a\": " + deep + "}";
  EXPECT_THAT(std::string(ParseConfigJson(deep_object).status().message()),
              HasSubstr("nested deeper than 64 levels"));
}

// kQwen05bJson with `extra` spliced in before the last key.
std::string WithKeys(const std::string& extra) {
  std::string text = kQwen05bJson;
  return text.insert(text.rfind("\"vocab_size\""), extra + ", ");
}

TEST(ConfigTest, ParsesDualChunkAttentionConfig) {
  auto c = ParseConfigJson(
      WithKeys(R"("dual_chunk_attention_config": {"chunk_size": 262144, "local_size": 8192,)"
               R"( "original_max_position_embeddings": 32768})"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->dca.enabled());
  EXPECT_EQ(c->dca.chunk_size, 262144);
  EXPECT_EQ(c->dca.local_size, 8192);
  EXPECT_EQ(c->dca.chunk_len(), 262144 - 8192);
  EXPECT_EQ(c->dca.original_max_position_embeddings, 32768);
  // Written back, and read again the same.
  auto back = ParseConfigJson(ConfigToJson(*c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->dca.chunk_size, 262144);
  EXPECT_EQ(back->dca.local_size, 8192);
  EXPECT_EQ(back->dca.original_max_position_embeddings, 32768);
  // Absent or null: off, and not written.
  for (const std::string& text :
       {std::string(kQwen05bJson), WithKeys(R"("dual_chunk_attention_config": null)")}) {
    auto off = ParseConfigJson(text);
    ASSERT_TRUE(off.ok()) << off.status();
    EXPECT_FALSE(off->dca.enabled());
    EXPECT_FALSE(Json::parse(ConfigToJson(*off)).contains("dual_chunk_attention_config"));
  }
  // local_size and original_max_position_embeddings default to 0.
  auto minimal = ParseConfigJson(WithKeys(R"("dual_chunk_attention_config": {"chunk_size": 64})"));
  ASSERT_TRUE(minimal.ok()) << minimal.status();
  EXPECT_EQ(minimal->dca.local_size, 0);
  EXPECT_EQ(minimal->dca.original_max_position_embeddings, 0);
}

TEST(ConfigTest, RefusesBadDualChunkAttentionConfigNamingTheKey) {
  const std::pair<std::string, std::string> cases[] = {
      {R"("dual_chunk_attention_config": 5)", "'dual_chunk_attention_config'"},
      {R"("dual_chunk_attention_config": {})", "dual_chunk_attention_config.chunk_size"},
      {R"("dual_chunk_attention_config": {"chunk_size": 0})",
       "dual_chunk_attention_config.chunk_size"},
      {R"("dual_chunk_attention_config": {"chunk_size": 1.5})",
       "dual_chunk_attention_config.chunk_size"},
      {R"("dual_chunk_attention_config": {"chunk_size": 99999999})",
       "dual_chunk_attention_config.chunk_size"},
      {R"("dual_chunk_attention_config": {"chunk_size": 64, "local_size": 64})",
       "dual_chunk_attention_config.local_size"},
      {R"("dual_chunk_attention_config": {"chunk_size": 64, "local_size": -1})",
       "dual_chunk_attention_config.local_size"},
      {R"("dual_chunk_attention_config": {"chunk_size": 64,)"
       R"( "original_max_position_embeddings": -5})",
       "dual_chunk_attention_config.original_max_position_embeddings"}};
  for (const auto& [extra, key] : cases) {
    SCOPED_TRACE(extra);
    auto c = ParseConfigJson(WithKeys(extra));
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(c.status().message(), HasSubstr(key));
  }
  // FindConfigProblems reports configs built in code under the same keys.
  ModelConfig c = *PresetConfig("qwen2-test");
  c.dca = {.chunk_size = 8, .local_size = 8};
  std::vector<ConfigProblem> problems = FindConfigProblems(c);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].key, "dual_chunk_attention_config.local_size");
  c.dca = {.chunk_size = -3, .local_size = 0, .original_max_position_embeddings = -1};
  problems = FindConfigProblems(c);
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_EQ(problems[0].key, "dual_chunk_attention_config.chunk_size");
  EXPECT_EQ(problems[1].key, "dual_chunk_attention_config.original_max_position_embeddings");
  c.dca = {.chunk_size = 8, .local_size = 7, .original_max_position_embeddings = 16};
  EXPECT_TRUE(FindConfigProblems(c).empty());
}

TEST(ConfigTest, ParseDcaFlag) {
  auto dca = ParseDcaFlag("8192,1024");
  ASSERT_TRUE(dca.ok()) << dca.status();
  EXPECT_EQ(dca->chunk_size, 8192);
  EXPECT_EQ(dca->local_size, 1024);
  EXPECT_EQ(dca->original_max_position_embeddings, 0);
  dca = ParseDcaFlag("64,0");
  ASSERT_TRUE(dca.ok()) << dca.status();
  EXPECT_EQ(dca->chunk_len(), 64);
  for (const char* bad :
       {"", "64", "64,", ",8", "64,8,1", "64,64", "64,65", "0,0", "-64,8", "64,-8", "6 4,8",
        "64, 8", "0x40,8", "16777217,8", "a,b", "99999999999999999999,1"}) {
    SCOPED_TRACE(bad);
    auto r = ParseDcaFlag(bad);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(r.status().message(), HasSubstr("--dca"));
  }
  EXPECT_TRUE(ParseDcaFlag("16777216,16777215").ok());
}

}  // namespace
}  // namespace qtrain::model
