#include "worker/train/spec_change.h"

#include <string>

#include "common/job_spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::train {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kSpec[] = R"(
name: spec-change
seed: 3
model: {preset: qwen2-test}
tokenizer: t.json
data: {manifest: m.json}
curriculum:
  - {name: a, seq_len: 16, tokens: 1024, micro_batch: 4}
  - {name: b, seq_len: 32, tokens: 1024, micro_batch: 2}
batch: {global_tokens: 256}
checkpoint: {every_steps: 2, keep_last: 2}
optimizer: {lr: 1e-2}
labels: {team: x}
)";

nlohmann::json SpecJson(const std::string& from, const std::string& to) {
  std::string text = kSpec;
  if (!from.empty()) {
    const size_t at = text.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    text.replace(at, from.size(), to);
  }
  auto spec = ParseJobSpec(text, "spec.yaml");
  EXPECT_TRUE(spec.ok()) << spec.status();
  return JobSpecToJson(*spec);
}

TEST(SpecChangeTest, DiffNamesTheFieldPaths) {
  const nlohmann::json base = SpecJson("", "");
  EXPECT_TRUE(DiffSpecJson(base, base).empty());
  auto changes = DiffSpecJson(base, SpecJson("micro_batch: 2", "micro_batch: 1"));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].Describe(), "curriculum[1].micro_batch: 2 -> 1");
  changes = DiffSpecJson(base, SpecJson("lr: 1e-2", "lr: 2e-2"));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].path, "optimizer.lr");
  changes = DiffSpecJson(base, SpecJson("name: spec-change", "name: other"));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].Describe(), "name: \"spec-change\" -> \"other\"");
  changes = DiffSpecJson(base, SpecJson("{team: x}", "{team: x, owner: z}"));
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].Describe(), "labels.owner: (unset) -> \"z\"");
}

TEST(SpecChangeTest, TrainingRelevantChangesAreRefusedUnlessAllowed) {
  const nlohmann::json base = SpecJson("", "");
  for (const auto& [from, to, field] :
       {std::tuple{"lr: 1e-2", "lr: 3e-2", "optimizer.lr"},
        std::tuple{"micro_batch: 4", "micro_batch: 2", "curriculum[0].micro_batch"},
        std::tuple{"name: spec-change", "name: renamed", "name"},
        std::tuple{"tokenizer: t.json", "tokenizer: u.json", "tokenizer"}}) {
    SCOPED_TRACE(field);
    const nlohmann::json changed = SpecJson(from, to);
    auto refused = CheckSpecChanges(base, changed, {});
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(refused.status().message()), HasSubstr(std::string(field) + ": "));
    EXPECT_THAT(std::string(refused.status().message()), HasSubstr("--allow-spec-change"));
    auto allowed = CheckSpecChanges(base, changed, {field});
    ASSERT_TRUE(allowed.ok()) << allowed.status();
    EXPECT_EQ(allowed->size(), 1u);
    EXPECT_NE(TrainingSpecSha256(base), TrainingSpecSha256(changed));
  }
  // "[*]" and enclosing paths allow too.
  EXPECT_TRUE(CheckSpecChanges(base, SpecJson("micro_batch: 2", "micro_batch: 1"),
                               {"curriculum[*].micro_batch"})
                  .ok());
  EXPECT_TRUE(CheckSpecChanges(base, SpecJson("lr: 1e-2", "lr: 3e-2"), {"optimizer"}).ok());
  EXPECT_FALSE(CheckSpecChanges(base, SpecJson("lr: 1e-2", "lr: 3e-2"), {"optimizer.min_lr"}).ok());
}

TEST(SpecChangeTest, BookkeepingChangesAreAcceptedAndDoNotChangeTheHash) {
  const nlohmann::json base = SpecJson("", "");
  for (const auto& [from, to] :
       {std::pair{"keep_last: 2", "keep_last: 5"}, std::pair{"every_steps: 2", "every_steps: 1"},
        std::pair{"{team: x}", "{team: w}"},
        std::pair{"{team: x}", "{team: x}\nworld: {regroup_seconds: 5}"},
        std::pair{"{team: x}", "{team: x}\nworld: {max_workers: 2}"},
        std::pair{"micro_batch: 2}", "micro_batch: 2, recompute_activations: true}"}}) {
    SCOPED_TRACE(from);
    const nlohmann::json changed = SpecJson(from, to);
    auto accepted = CheckSpecChanges(base, changed, {});
    ASSERT_TRUE(accepted.ok()) << accepted.status();
    EXPECT_EQ(accepted->size(), 1u);
    EXPECT_EQ(TrainingSpecSha256(base), TrainingSpecSha256(changed));
  }
}

// A checkpoint written before a stage field existed has no entry for it: resuming such a run
// with the field at any value is a bookkeeping change when the field is one, with the same hash.
TEST(SpecChangeTest, AnOlderSpecWithoutRecomputationStillResumes) {
  nlohmann::json older = SpecJson("", "");
  for (nlohmann::json& stage : older["curriculum"]) stage.erase("recompute_activations");
  const nlohmann::json current =
      SpecJson("micro_batch: 2}", "micro_batch: 2, recompute_activations: true}");
  auto accepted = CheckSpecChanges(older, current, {});
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  EXPECT_EQ(TrainingSpecSha256(older), TrainingSpecSha256(current));
  // Erasing "[*]" paths leaves the other stage fields alone.
  const nlohmann::json faster = SpecJson("micro_batch: 2}", "micro_batch: 1}");
  EXPECT_NE(TrainingSpecSha256(faster), TrainingSpecSha256(current));
}

TEST(SpecChangeTest, AllowedFieldsMustBeRealAndChangeable) {
  EXPECT_TRUE(ValidateAllowedSpecChanges({"optimizer.lr", "curriculum[1].micro_batch",
                                          "curriculum[*].name", "labels.x", "name", "optimizer"})
                  .ok());
  for (const std::string bad :
       {"optimizer.learning_rate", "nonsense", "optimizer.lr.x", "name[0]", "", "optimizer..lr"}) {
    SCOPED_TRACE(bad);
    auto status = ValidateAllowedSpecChanges({bad});
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()), HasSubstr("'" + bad + "'"));
  }
  for (const std::string never :
       {"seed", "model", "model.preset", "batch", "batch.global_tokens", "curriculum",
        "curriculum[0].seq_len", "curriculum[*].tokens", "data.validation_fraction", "data"}) {
    SCOPED_TRACE(never);
    auto status = ValidateAllowedSpecChanges({never});
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(status.message()), HasSubstr("cannot change within a run"));
  }
  // Even allowed by an enclosing path, a never-changeable field stays refused.
  const nlohmann::json base = SpecJson("", "");
  auto refused = CheckSpecChanges(base, SpecJson("seed: 3", "seed: 4"), {"seed"});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("seed: 3 -> 4"));
  EXPECT_THAT(std::string(refused.status().message()), Not(HasSubstr("optimizer")));
}

}  // namespace
}  // namespace qtrain::train
