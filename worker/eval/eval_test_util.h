// A tiny random model over the Qwen2 tokenizer's vocabulary, for the eval tests.
#ifndef QTRAIN_WORKER_EVAL_EVAL_TEST_UTIL_H_
#define QTRAIN_WORKER_EVAL_EVAL_TEST_UTIL_H_

#include <fstream>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "tokenizer/tokenizer.h"
#include "worker/eval/eval.h"
#include "worker/model/init.h"
#include "worker/model/model.h"

namespace qtrain::eval::testing {

inline constexpr char kQwen2Tokenizer[] = "tokenizer/testdata/qwen2/tokenizer.json";

inline model::ModelConfig TinyConfig(int64_t vocab_size) {
  model::ModelConfig c;
  c.vocab_size = vocab_size;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 4;
  c.rope_theta = 10000.0;
  c.max_position_embeddings = 512;
  c.initializer_range = 0.5;  // peaked distributions: greedy choices are not ties
  c.eos_token_ids = {151643};
  return c;
}

// The tokenizer and model shared by a test suite (loading the tokenizer takes a moment).
struct Fixture {
  tokenizer::Tokenizer tokenizer;
  model::Model model;
  EvalContext context() { return EvalContext{.model = &model, .tokenizer = &tokenizer}; }
};

inline Fixture& Shared() {
  static Fixture* f = [] {
    auto tok = tokenizer::Tokenizer::FromFile(kQwen2Tokenizer);
    EXPECT_TRUE(tok.ok()) << tok.status();
    const model::ModelConfig config = TinyConfig(tok->vocab_size());
    auto m = model::Model::Create(config, {.allocate_gradients = false});
    EXPECT_TRUE(m.ok()) << m.status();
    model::InitializeParameters(config, m->layout(), 7, m->params());
    return new Fixture{std::move(*tok), std::move(*m)};
  }();
  return *f;
}

inline std::string WriteTemp(const std::string& name, const std::string& content) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

}  // namespace qtrain::eval::testing

#endif  // QTRAIN_WORKER_EVAL_EVAL_TEST_UTIL_H_
