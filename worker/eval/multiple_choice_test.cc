#include "worker/eval/multiple_choice.h"

#include "gtest/gtest.h"
#include "worker/eval/common.h"
#include "worker/eval/eval_test_util.h"

namespace qtrain::eval {
namespace {

std::vector<int32_t> Tok(EvalContext& ctx, const std::string& s) {
  auto ids = EncodeText(ctx, s, "test");
  EXPECT_TRUE(ids.ok()) << ids.status();
  return *ids;
}

TEST(EncodePair, HarnessWhitespaceAndSplit) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  // The context's trailing space moves to the continuation: "Answer:" + "  Paris".
  auto p = EncodePair(ctx, "Question: capital of France?\nAnswer: ", " Paris", "t");
  ASSERT_TRUE(p.ok()) << p.status();
  const auto ctx_ids = Tok(ctx, "Question: capital of France?\nAnswer:");
  const auto whole = Tok(ctx, "Question: capital of France?\nAnswer:  Paris");
  EXPECT_EQ(p->context, ctx_ids);
  EXPECT_EQ(p->continuation, std::vector<int32_t>(whole.begin() + ctx_ids.size(), whole.end()));
  // Concatenation of the two equals the whole encoding (no token straddles the split here).
  std::vector<int32_t> joined = p->context;
  joined.insert(joined.end(), p->continuation.begin(), p->continuation.end());
  EXPECT_EQ(joined, whole);
  // An empty context: the prefix token (EOS here: the config has no BOS), then tok(cont).
  auto e = EncodePair(ctx, "", " Paris", "t");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->context, std::vector<int32_t>{151643});
  EXPECT_EQ(e->continuation, Tok(ctx, " Paris"));
}

TEST(EncodePair, SplitInsideAToken) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  // "1" + "23": the whole text may merge across the split; the continuation is what follows
  // len(tok(context)) tokens of the whole encoding, as in the harness.
  auto p = EncodePair(ctx, "abc", "def", "t");
  ASSERT_TRUE(p.ok());
  const auto whole = Tok(ctx, "abcdef");
  const auto c = Tok(ctx, "abc");
  EXPECT_EQ(p->continuation,
            std::vector<int32_t>(whole.begin() + std::min(c.size(), whole.size()), whole.end()));
}

TEST(EncodePair, MovesTheWhitespaceThatPythonRstripRemoves) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  // str.rstrip() removes Unicode whitespace too: U+3000, U+00A0, U+2028, U+001C, U+0085.
  for (const std::string ws : {"\u3000", "\u00a0", " \u2028", "\x1c", "\u0085\n"}) {
    auto p = EncodePair(ctx, "price" + ws, " high", "t");
    auto moved = EncodePair(ctx, "price", ws + " high", "t");
    ASSERT_TRUE(p.ok() && moved.ok()) << p.status() << moved.status();
    EXPECT_EQ(p->context, Tok(ctx, "price")) << ws;
    EXPECT_EQ(p->continuation, moved->continuation) << ws;
  }
  // U+200B (zero width space) is not whitespace to Python: it stays in the context.
  auto zw = EncodePair(ctx, "price\u200b", " high", "t");
  ASSERT_TRUE(zw.ok());
  EXPECT_EQ(zw->context, Tok(ctx, "price\u200b"));
}

// Log-likelihood of `cont` after `context` with one plain Forward over the concatenation.
double DirectLogLikelihood(model::Model& m, const std::vector<int32_t>& context,
                           const std::vector<int32_t>& cont) {
  std::vector<int32_t> ids = context;
  ids.insert(ids.end(), cont.begin(), cont.end());
  std::vector<int32_t> targets(ids.size(), model::kIgnoreIndex);
  for (size_t i = context.size(); i < ids.size(); ++i) targets[i - 1] = ids[i];
  std::vector<float> lp;
  auto r = m.Forward({.batch_size = 1, .seq_len = std::ssize(ids), .ids = ids, .targets = targets},
                     {.target_logprobs = &lp});
  EXPECT_TRUE(r.ok());
  return -r->loss_sum;
}

TEST(MultipleChoice, MatchesForwardOfConcatenatedIds) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  const std::string rows =
      "{\"context\": \"The sky is \", \"choices\": [\"blue\", \"green and red\", \"a\"], "
      "\"label\": 0}\n"
      "{\"context\": \"\", \"choices\": [\"yes\", \"no\"], \"label\": 1}\n"
      "{\"context\": \"2 + 2 =\", \"choices\": [\"4\", \"five\"], \"label\": 1}\n";
  TaskOptions o{.kind = TaskKind::kMultipleChoice,
                .data = testing::WriteTemp("mc.jsonl", rows),
                .per_example = true};
  auto r = RunTask(o, ctx);
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& ex = (*r)["examples"];
  ASSERT_EQ(ex.size(), 3u);
  struct Row {
    std::string context;
    std::vector<std::string> choices;
    int64_t label;
  };
  const std::vector<Row> want = {{"The sky is", {"  blue", "  green and red", "  a"}, 0},
                                 {"", {" yes", " no"}, 1},
                                 {"2 + 2 =", {" 4", " five"}, 1}};
  const std::vector<std::vector<std::string>> raw = {
      {"blue", "green and red", "a"}, {"yes", "no"}, {"4", "five"}};
  int acc = 0, acc_norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    std::vector<double> lls;
    std::vector<int32_t> c =
        want[i].context.empty() ? std::vector<int32_t>{151643} : Tok(ctx, want[i].context);
    for (const auto& cont : want[i].choices) {
      std::vector<int32_t> cont_ids;
      if (want[i].context.empty()) {
        cont_ids = Tok(ctx, cont);
      } else {
        const auto whole = Tok(ctx, want[i].context + cont);
        cont_ids.assign(whole.begin() + c.size(), whole.end());
      }
      lls.push_back(DirectLogLikelihood(f.model, c, cont_ids));
    }
    ASSERT_EQ(ex[i]["loglikelihoods"].size(), lls.size());
    for (size_t k = 0; k < lls.size(); ++k) {
      EXPECT_NEAR(ex[i]["loglikelihoods"][k].get<double>(), lls[k], 1e-3);
    }
    int64_t pred = 0, pred_norm = 0;
    for (size_t k = 1; k < lls.size(); ++k) {
      if (lls[k] > lls[pred]) pred = k;
      if (lls[k] / raw[i][k].size() > lls[pred_norm] / raw[i][pred_norm].size()) pred_norm = k;
    }
    EXPECT_EQ(ex[i]["pred"], pred);
    EXPECT_EQ(ex[i]["pred_norm"], pred_norm);
    EXPECT_EQ(ex[i]["label"], want[i].label);
    acc += pred == want[i].label;
    acc_norm += pred_norm == want[i].label;
  }
  EXPECT_DOUBLE_EQ((*r)["metrics"]["acc"].get<double>(), acc / 3.0);
  EXPECT_DOUBLE_EQ((*r)["metrics"]["acc_norm"].get<double>(), acc_norm / 3.0);
  EXPECT_EQ((*r)["metrics"]["count"], 3);
  EXPECT_EQ((*r)["task"], "multiple-choice");
}

TEST(MultipleChoice, LongContextIsTruncatedFromTheLeft) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  std::string long_context;
  for (int i = 0; i < 400; ++i) long_context += "lorem ipsum ";
  auto p = EncodePair(ctx, long_context, " dolor", "t");
  ASSERT_TRUE(p.ok());
  ASSERT_GT(p->context.size(), 512u);
  auto lls = ContinuationLogLikelihoods(ctx, {*p}, "t");
  ASSERT_TRUE(lls.ok()) << lls.status();
  // The same as scoring after the last 512 + 1 - len(continuation) context tokens.
  const size_t keep = 513 - p->continuation.size();
  std::vector<int32_t> tail(p->context.end() - keep, p->context.end());
  EXPECT_NEAR((*lls)[0], DirectLogLikelihood(f.model, tail, p->continuation), 1e-3);
}

TEST(MultipleChoice, WhitespaceOnlyContextIsScoredAfterThePrefixToken) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  // All of " \n" moves to the continuation; no context token is left, so the prefix token (EOS
  // here) is the context, as for an empty one.
  auto p = EncodePair(ctx, " \n", " yes", "t");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->context, std::vector<int32_t>{151643});
  EXPECT_EQ(p->continuation, Tok(ctx, " \n yes"));
  auto lls = ContinuationLogLikelihoods(ctx, {*p}, "t");
  ASSERT_TRUE(lls.ok()) << lls.status();
  EXPECT_NEAR((*lls)[0], DirectLogLikelihood(f.model, p->context, p->continuation), 1e-3);
  // A pair without a context token is refused, not read out of bounds.
  auto bad = ContinuationLogLikelihoods(ctx, {EncodedPair{{}, Tok(ctx, " yes")}}, "t");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
}

TEST(MultipleChoice, TiesGoToTheFirstIndex) {
  EXPECT_EQ(ArgMax({-1.0, -1.0, -2.0}), 0);
  EXPECT_EQ(ArgMax({-3.0, -1.0, -1.0}), 1);
}

}  // namespace
}  // namespace qtrain::eval
