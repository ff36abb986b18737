#include "worker/eval/perplexity.h"

#include <cmath>
#include <filesystem>

#include "gtest/gtest.h"
#include "tokenizer/shard_writer.h"
#include "worker/eval/common.h"
#include "worker/eval/eval_test_util.h"

namespace qtrain::eval {
namespace {

// Every token after the first is a target of exactly one window.
void ExpectEachTokenOnce(int64_t n, int64_t seq_len, int64_t stride) {
  std::vector<int> count(n, 0);
  for (const Window& w : PlanWindows(n, seq_len, stride, 0)) {
    EXPECT_LE(w.end - w.begin, seq_len);
    EXPECT_GT(w.first_target, w.begin);
    EXPECT_LT(w.end, n);
    for (int64_t t = w.first_target; t <= w.end; ++t) ++count[t];
  }
  EXPECT_EQ(count[0], 0);
  for (int64_t t = 1; t < n; ++t) EXPECT_EQ(count[t], 1) << t << " " << seq_len << " " << stride;
}

TEST(PlanWindows, EachTokenScoredOnce) {
  for (int64_t n : {2, 5, 16, 17, 100}) {
    for (int64_t seq_len : {2, 4, 16}) {
      for (int64_t stride = 1; stride <= seq_len; ++stride) ExpectEachTokenOnce(n, seq_len, stride);
    }
  }
}

TEST(PlanWindows, MostContext) {
  // seq_len 8, stride 4 over 17 tokens: inputs [0,8) score 1..8, [4,12) score 9..12, [8,16)
  // score 13..16.
  const auto w = PlanWindows(17, 8, 4, 0);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[1].begin, 4);
  EXPECT_EQ(w[1].first_target, 9);
  EXPECT_EQ(w[2].end, 16);
  EXPECT_EQ(PlanWindows(17, 8, 4, 2).size(), 2u);
  // stride == seq_len: disjoint inputs.
  const auto d = PlanWindows(17, 8, 8, 0);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[1].begin, 8);
  EXPECT_EQ(d[1].first_target, 9);
}

TEST(PositionBucket, PowersOfTwo) {
  EXPECT_EQ(PositionBucket(0), 0);
  EXPECT_EQ(PositionBucket(1), 1);
  EXPECT_EQ(PositionBucket(2), 2);
  EXPECT_EQ(PositionBucket(3), 2);
  EXPECT_EQ(PositionBucket(4), 3);
  EXPECT_EQ(PositionBucket(7), 3);
  EXPECT_EQ(PositionBucket(8), 4);
}

// Direct computation: token i is scored in the first window whose input holds i - 1, with the
// window's tokens before it as context.
double DirectLogLikelihood(model::Model& m, const std::vector<int32_t>& ids,
                           const std::vector<bool>& scored, int64_t seq_len, int64_t stride,
                           int64_t* tokens) {
  const auto n = static_cast<int64_t>(ids.size());
  double sum = 0;
  *tokens = 0;
  std::vector<bool> done(n, false);
  for (int64_t begin = 0; begin + 1 < n; begin += stride) {
    const int64_t len = std::min(seq_len, n - 1 - begin);
    std::vector<int32_t> input(ids.begin() + begin, ids.begin() + begin + len);
    std::vector<int32_t> targets(len, model::kIgnoreIndex);
    for (int64_t t = 0; t < len; ++t) {
      const int64_t token = begin + t + 1;
      if (!done[token] && scored[token]) targets[t] = ids[token];
      done[token] = true;
    }
    auto r = m.Forward({.batch_size = 1, .seq_len = len, .ids = input, .targets = targets});
    EXPECT_TRUE(r.ok());
    sum -= r->loss_sum;
    *tokens += r->num_targets;
    if (begin + len == n - 1) break;
  }
  return sum;
}

class PerplexityTest : public ::testing::TestWithParam<std::pair<int64_t, int64_t>> {};

TEST_P(PerplexityTest, MatchesDirectComputation) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  const std::vector<std::string> texts = {"The quick brown fox jumps over the lazy dog.",
                                          "Hello world, this is a test of perplexity windows.",
                                          "One more line."};
  std::string jsonl;
  std::vector<int32_t> ids;
  std::vector<bool> scored;
  int64_t bytes = 0;
  for (const auto& t : texts) {
    jsonl += nlohmann::json({{"text", t}}).dump() + "\n";
    auto enc = EncodeText(ctx, t, "t");
    ASSERT_TRUE(enc.ok());
    ids.push_back(151643);
    scored.push_back(false);
    ids.insert(ids.end(), enc->begin(), enc->end());
    scored.insert(scored.end(), enc->size(), true);
    bytes += std::ssize(t);
  }
  const auto [seq_len, stride] = GetParam();
  TaskOptions o{.kind = TaskKind::kPerplexity,
                .data = testing::WriteTemp("ppl.jsonl", jsonl),
                .seq_len = seq_len,
                .stride = stride};
  auto r = RunTask(o, ctx);
  ASSERT_TRUE(r.ok()) << r.status();
  int64_t tokens = 0;
  const double want = DirectLogLikelihood(f.model, ids, scored, seq_len, stride, &tokens);
  const auto& m = (*r)["metrics"];
  EXPECT_EQ(m["tokens"].get<int64_t>(), tokens);
  EXPECT_EQ(tokens, std::ssize(ids) - std::ssize(texts));
  EXPECT_NEAR(m["loglikelihood"].get<double>(), want, 1e-3);
  EXPECT_NEAR(m["nll"].get<double>(), -want / tokens, 1e-5);
  EXPECT_NEAR(m["perplexity"].get<double>(), std::exp(-want / tokens), 1e-3);
  EXPECT_NEAR(m["bits_per_byte"].get<double>(), -want / std::log(2.0) / bytes, 1e-5);
  int64_t bucket_tokens = 0;
  for (const auto& b : (*r)["buckets"]) bucket_tokens += b["tokens"].get<int64_t>();
  EXPECT_EQ(bucket_tokens, tokens);
  EXPECT_EQ((*r)["buckets"][0]["start"], 0);
  EXPECT_EQ((*r)["buckets"][0]["end"], 1);
}

INSTANTIATE_TEST_SUITE_P(Strides, PerplexityTest,
                         ::testing::Values(std::pair<int64_t, int64_t>{8, 8},
                                           std::pair<int64_t, int64_t>{8, 3},
                                           std::pair<int64_t, int64_t>{16, 5},
                                           std::pair<int64_t, int64_t>{64, 64}));

TEST(Perplexity, DataManifestAcrossShards) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  const std::string dir = ::testing::TempDir() + "/ppl_shards";
  std::filesystem::remove_all(dir);
  auto w = tokenizer::ShardWriter::Create({.dir = dir,
                                           .shard_tokens = 7,
                                           .tokenizer_sha256 = std::string(64, 'a'),
                                           .vocab_size = f.tokenizer.vocab_size(),
                                           .eos_token = "<|endoftext|>",
                                           .eos_id = 151643});
  ASSERT_TRUE(w.ok()) << w.status();
  std::vector<int32_t> ids;
  for (int i = 0; i < 30; ++i) ids.push_back((i * 7919) % 5000 + 10);
  std::vector<uint32_t> u(ids.begin(), ids.end());
  ASSERT_TRUE(w->Append(u).ok());
  ASSERT_TRUE(w->Finish().ok());
  for (const std::string& data : {dir, dir + "/manifest.json"}) {
    TaskOptions o{.kind = TaskKind::kPerplexity, .data = data, .seq_len = 8, .stride = 3};
    auto r = RunTask(o, ctx);
    ASSERT_TRUE(r.ok()) << r.status();
    int64_t tokens = 0;
    const double want =
        DirectLogLikelihood(f.model, ids, std::vector<bool>(ids.size(), true), 8, 3, &tokens);
    EXPECT_EQ(tokens, 29);
    EXPECT_EQ((*r)["metrics"]["tokens"], 29);
    EXPECT_NEAR((*r)["metrics"]["loglikelihood"].get<double>(), want, 1e-3);
    EXPECT_FALSE((*r)["metrics"].contains("bits_per_byte"));
  }
}

TEST(Perplexity, BadOptions) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  const std::string data = testing::WriteTemp("ppl2.jsonl", "{\"text\": \"a b c d e f\"}\n");
  TaskOptions o{.kind = TaskKind::kPerplexity, .data = data, .seq_len = 8, .stride = 9};
  EXPECT_NE(RunTask(o, ctx).status().message().find("stride"), std::string::npos);
  o.stride = 0;
  o.seq_len = 100000;
  EXPECT_NE(RunTask(o, ctx).status().message().find("more than the model's context"),
            std::string::npos);
  o.seq_len = 8;
  o.data = testing::WriteTemp("ppl3.jsonl", "{\"text\": 1}\n");
  EXPECT_NE(RunTask(o, ctx).status().message().find("ppl3.jsonl:1"), std::string::npos);
  o.data = ::testing::TempDir() + "/missing.jsonl";
  EXPECT_FALSE(RunTask(o, ctx).ok());
}

TEST(Perplexity, CancelledAndLimited) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  std::string text;
  for (int i = 0; i < 30; ++i) text += "word ";
  TaskOptions o{.kind = TaskKind::kPerplexity,
                .data = testing::WriteTemp("ppl4.jsonl", nlohmann::json({{"text", text}}).dump()),
                .seq_len = 8,
                .limit = 2};
  int64_t calls = 0;
  ctx.progress = [&](const Progress& p) {
    ++calls;
    EXPECT_EQ(p.total, 2);
  };
  auto r = RunTask(o, ctx);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)["metrics"]["windows"], 2);
  EXPECT_EQ(calls, 2);
  std::atomic<bool> cancelled{true};
  ctx.cancelled = &cancelled;
  EXPECT_EQ(RunTask(o, ctx).status().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace qtrain::eval
