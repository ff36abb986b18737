#include "worker/eval/needle.h"

#include "gtest/gtest.h"
#include "worker/eval/answer.h"
#include "worker/eval/common.h"
#include "worker/eval/eval_test_util.h"

namespace qtrain::eval {
namespace {

TEST(Haystack, ExactLengthAndNeedleAtDepth) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  for (double depth : {0.0, 0.5, 1.0}) {
    auto h = BuildHaystack(ctx, 300, depth, 1, 0);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->ids.size(), 300u);
    EXPECT_EQ(h->passkey.size(), 5u);
    auto text = DecodeIds(ctx, h->ids);
    ASSERT_TRUE(text.ok());
    const size_t at = text->find("The pass key is " + h->passkey);
    ASSERT_NE(at, std::string::npos);
    EXPECT_TRUE(text->ends_with("What is the pass key? The pass key is"));
    if (depth == 0.0) {
      EXPECT_LT(at, 200u);
    }
    if (depth == 1.0) {
      EXPECT_GT(at, text->size() - 150);
    }
  }
  auto a = BuildHaystack(ctx, 300, 0.5, 1, 0), b = BuildHaystack(ctx, 300, 0.5, 1, 0);
  EXPECT_EQ(a->ids, b->ids);  // deterministic
  EXPECT_FALSE(BuildHaystack(ctx, 20, 0.5, 1, 0).ok());
}

// A minimal well-formedness check: tags nest and close, attributes quoted, no raw '&'.
bool WellFormed(const std::string& xml) {
  std::vector<std::string> stack;
  size_t i = xml.find("?>");
  if (!xml.starts_with("<?xml") || i == std::string::npos) return false;
  i += 2;
  while ((i = xml.find('<', i)) != std::string::npos) {
    const size_t end = xml.find('>', i);
    if (end == std::string::npos) return false;
    std::string tag = xml.substr(i + 1, end - i - 1);
    i = end + 1;
    if (tag.starts_with("/")) {
      if (stack.empty() || stack.back() != tag.substr(1)) return false;
      stack.pop_back();
    } else if (!tag.ends_with("/")) {
      stack.push_back(tag.substr(0, tag.find(' ')));
    }
    if (std::count(tag.begin(), tag.end(), '"') % 2 != 0) return false;
  }
  for (size_t a = xml.find('&'); a != std::string::npos; a = xml.find('&', a + 1)) {
    if (xml.compare(a, 4, "&lt;") && xml.compare(a, 4, "&gt;") && xml.compare(a, 5, "&amp;") &&
        xml.compare(a, 6, "&quot;")) {
      return false;
    }
  }
  return stack.empty();
}

TEST(Needle, GridShapeAndHeatmap) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  TaskOptions o{.kind = TaskKind::kNeedle,
                .name = "nih<&>",
                .max_new_tokens = 4,
                .lengths = {100, 200, 256},
                .depths = {0, 0.5},
                .per_example = true,
                .trials = 2};
  auto r = RunTask(o, ctx);
  ASSERT_TRUE(r.ok()) << r.status();
  const auto& grid = (*r)["grid"];
  ASSERT_EQ(grid["accuracy"].size(), 2u);
  ASSERT_EQ(grid["accuracy"][0].size(), 3u);
  EXPECT_EQ((*r)["metrics"]["count"], 12);
  EXPECT_EQ((*r)["examples"].size(), 12u);
  const auto flat = FlatMetrics(*r);
  EXPECT_TRUE(flat.contains("accuracy"));
  EXPECT_TRUE(flat.contains("accuracy/L200/D0.5"));
  EXPECT_TRUE(flat.contains("accuracy/L100/D0"));
  auto svg = NeedleHeatmapSvg(*r);
  ASSERT_TRUE(svg.ok()) << svg.status();
  EXPECT_TRUE(WellFormed(*svg)) << *svg;
  EXPECT_NE(svg->find("nih&lt;&amp;&gt;"), std::string::npos);
  EXPECT_NE(svg->find("context length"), std::string::npos);
  EXPECT_NE(svg->find("needle depth"), std::string::npos);
  EXPECT_FALSE(NeedleHeatmapSvg(nlohmann::json::object()).ok());
  EXPECT_FALSE(
      NeedleHeatmapSvg({{"grid", {{"lengths", {1}}, {"depths", {0}}, {"accuracy", {{"x"}}}}}})
          .ok());
}

TEST(Needle, LengthBeyondContextIsRefused) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  TaskOptions o{.kind = TaskKind::kNeedle, .lengths = {4096}, .depths = {0.5}};
  auto r = RunTask(o, ctx);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("context of 512"), std::string::npos) << r.status();
  o.depths = {1.5};
  EXPECT_NE(RunTask(o, ctx).status().message().find("depths"), std::string::npos);
}

TEST(Generation, GreedyStopsAndExactMatch) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  // What the model continues "Q: 1" with, greedily, decides the expected answers.
  auto prompt = EncodeText(ctx, "Q: 1", "t");
  auto g = GreedyGenerate(ctx, *prompt, 6, {});
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->ids.size(), 6u);
  std::string cut = g->text;
  ASSERT_FALSE(cut.empty());
  // A stop string made of the text's second half ends generation before it.
  const std::string stop = cut.substr(cut.size() / 2);
  auto s = GreedyGenerate(ctx, *prompt, 6, {stop});
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(s->stopped);
  EXPECT_EQ(s->text, cut.substr(0, cut.find(stop)));
  const std::string rows =
      nlohmann::json({{"prompt", "Q: 1"}, {"answer", "#### 12,345"}}).dump() + "\n" +
      nlohmann::json({{"prompt", "Q: 1"}, {"answer", "nothing"}, {"stop", {"\n"}}}).dump() + "\n";
  TaskOptions o{.kind = TaskKind::kGeneration,
                .data = testing::WriteTemp("gen.jsonl", rows),
                .max_new_tokens = 6,
                .per_example = true};
  auto r = RunTask(o, ctx);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)["examples"][0]["reference"], "12345");
  EXPECT_EQ((*r)["examples"][0]["output"], cut);
  EXPECT_EQ((*r)["metrics"]["count"], 2);
  o.answer_regex = "([";
  EXPECT_NE(RunTask(o, ctx).status().message().find("answer_regex"), std::string::npos);
}

TEST(Generation, ExactMatchWithAnswerRegexOnModelOutput) {
  auto& f = testing::Shared();
  EvalContext ctx = f.context();
  auto prompt = EncodeText(ctx, "Hi", "t");
  auto g = GreedyGenerate(ctx, *prompt, 3, {});
  ASSERT_TRUE(g.ok());
  // The whole output as the pattern's match: the reference is the output itself.
  const std::string rows = nlohmann::json({{"prompt", "Hi"}, {"answer", g->text}}).dump();
  TaskOptions o{.kind = TaskKind::kGeneration,
                .data = testing::WriteTemp("gen2.jsonl", rows),
                .max_new_tokens = 3,
                .answer_regex = "^([\\s\\S]*)$"};
  auto r = RunTask(o, ctx);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)["metrics"]["exact_match"], NormalizeAnswer(g->text).empty() ? 0.0 : 1.0);
}

}  // namespace
}  // namespace qtrain::eval
