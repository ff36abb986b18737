#include "worker/train/shard_assignment.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "absl/synchronization/mutex.h"
#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/model/model_source.h"
#include "worker/train/shard_token_source.h"
#include "worker/train/test_dataset.h"
#include "worker/train/trainer.h"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// Reads through `inner`, recording the manifest index of every shard a read touches.
class RecordingSource : public TokenSource {
 public:
  explicit RecordingSource(const ShardTokenSource& inner) : inner_(inner) {
    starts_.push_back(0);
    for (const auto& shard : inner.manifest().shards) {
      starts_.push_back(starts_.back() + static_cast<int64_t>(shard.num_tokens));
    }
  }
  int64_t size() const override { return inner_.size(); }
  std::string fingerprint() const override { return inner_.fingerprint(); }
  absl::Status Read(int64_t begin, std::span<int32_t> out) const override {
    const int64_t end = begin + static_cast<int64_t>(out.size());
    absl::MutexLock lock(&mu_);
    for (size_t k = 0; k + 1 < starts_.size(); ++k) {
      if (starts_[k] < end && starts_[k + 1] > begin) touched_.insert(static_cast<int64_t>(k));
    }
    return inner_.Read(begin, out);
  }
  std::set<int64_t> touched() const {
    absl::MutexLock lock(&mu_);
    return touched_;
  }

 private:
  const ShardTokenSource& inner_;
  std::vector<int64_t> starts_;
  mutable absl::Mutex mu_;
  mutable std::set<int64_t> touched_ ABSL_GUARDED_BY(mu_);
};

class ShardAssignmentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("shard_assignment_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    // 70 shards of 1000 tokens.
    auto data = testing::WriteTestDataset(root_.string(), 70000, 1000);
    ASSERT_TRUE(data.ok()) << data.status();
    data_ = *data;
    auto spec = ParseJobSpec(testing::TestJobSpec(data_), "spec.yaml");
    ASSERT_TRUE(spec.ok()) << spec.status();
    spec_ = *spec;
    auto config = model::ResolveModelConfig(spec_.model());
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    options_.tokenizer_sha256 = Sha256File(data_.tokenizer_path).value();
    options_.vocab_size = data_.vocab_size;
  }
  void TearDown() override { fs::remove_all(root_); }

  absl::StatusOr<TrainerSummary> Train(const std::string& run, const TokenSource& data,
                                       TrainerOptions options) {
    options.run_dir = (root_ / run).string();
    auto trainer = Trainer::Create(spec_, config_, std::nullopt, data, std::move(options));
    if (!trainer.ok()) return trainer.status();
    return (*trainer)->Run();
  }
  static std::set<int64_t> Indices(const v1::DataAssignment& a) {
    std::set<int64_t> out;
    for (const auto& shard : a.shards()) out.insert(shard.index());
    return out;
  }

  fs::path root_;
  testing::TestDataset data_;
  v1::JobSpec spec_;
  model::ModelConfig config_;
  tokenizer::DatasetOptions options_;
};

TEST_F(ShardAssignmentTest, TheAssignedShardsAreExactlyTheOnesAStageReads) {
  auto full = ShardTokenSource::Open(data_.manifest_path, options_);
  ASSERT_TRUE(full.ok()) << full.status();
  // Stage 0 (steps 0-4) then stage 1 (4-7), each through a recording source.
  RecordingSource record0(*full);
  TrainerOptions stage0;
  stage0.stop_after_step = 4;
  ASSERT_TRUE(Train("recorded", record0, stage0).ok());
  RecordingSource record1(*full);
  TrainerOptions stage1;
  stage1.resume_from_step = 4;
  ASSERT_TRUE(Train("recorded", record1, stage1).ok());

  auto plan0 = PlanShardAssignment(spec_, 0, 0, 4, 0, 1);
  ASSERT_TRUE(plan0.ok()) << plan0.status();
  auto plan1 = PlanShardAssignment(spec_, 1, 4, 7, 0, 1);
  ASSERT_TRUE(plan1.ok()) << plan1.status();
  EXPECT_EQ(Indices(*plan0), record0.touched());
  EXPECT_EQ(Indices(*plan1), record1.touched());
  EXPECT_LT(plan0->shards_size(), 70);  // a real subset: the point of dispatching shards
  EXPECT_GT(plan0->shards_size(), 0);
  EXPECT_EQ(plan0->manifest_sha256(), Sha256File(data_.manifest_path).value());
  EXPECT_EQ(plan0->total_tokens(), 70000);
  EXPECT_EQ(plan0->windows_per_step(), 16);
  EXPECT_EQ(plan0->windows_per_rank(), 16);
  EXPECT_EQ(plan0->seq_len(), 16);
  EXPECT_EQ(plan1->seq_len(), 32);
  for (const auto& shard : plan0->shards()) {
    EXPECT_EQ(shard.first_token(), shard.index() * 1000);
    EXPECT_EQ(shard.tokens(), 1000);
    EXPECT_EQ(shard.sha256(), full->manifest().shards[shard.index()].sha256);
    EXPECT_EQ(shard.path(), full->manifest().shards[shard.index()].file);
  }

  // The same stages over sources holding only the assigned shards train to the same bytes.
  auto only0 = ShardTokenSource::OpenAssigned(data_.manifest_path, *plan0, options_);
  ASSERT_TRUE(only0.ok()) << only0.status();
  EXPECT_EQ(only0->size(), full->size());
  EXPECT_EQ(only0->fingerprint(), full->fingerprint());
  ASSERT_TRUE(Train("assigned", *only0, stage0).ok());
  auto only1 = ShardTokenSource::OpenAssigned(data_.manifest_path, *plan1, options_);
  ASSERT_TRUE(only1.ok()) << only1.status();
  auto finished = Train("assigned", *only1, stage1);
  ASSERT_TRUE(finished.ok()) << finished.status();
  EXPECT_TRUE(finished->completed);
  EXPECT_EQ(Sha256File((root_ / "assigned" / "final" / "model.safetensors").string()).value(),
            Sha256File((root_ / "recorded" / "final" / "model.safetensors").string()).value());
}

TEST_F(ShardAssignmentTest, ReadingOutsideTheAssignmentFails) {
  auto plan = PlanShardAssignment(spec_, 0, 0, 4, 0, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  // Drop one assigned shard: training needs it.
  v1::DataAssignment smaller = *plan;
  const int64_t dropped = smaller.shards(1).index();
  const std::string dropped_path = smaller.shards(1).path();
  smaller.mutable_shards()->DeleteSubrange(1, 1);
  auto source = ShardTokenSource::OpenAssigned(data_.manifest_path, smaller, options_);
  ASSERT_TRUE(source.ok()) << source.status();
  TrainerOptions stage0;
  stage0.stop_after_step = 4;
  auto result = Train("run", *source, stage0);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition) << result.status();
  EXPECT_THAT(std::string(result.status().message()),
              HasSubstr(absl::StrCat("is in shard ", dropped, " (", dropped_path,
                                     "), which is not assigned")));
  std::vector<int32_t> out(4);
  const absl::Status read = source->Read(dropped * 1000 + 10, out);
  EXPECT_EQ(read.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(read.message()),
              HasSubstr(absl::StrCat("position ", dropped * 1000 + 10)));
}

TEST_F(ShardAssignmentTest, AChangedManifestIsRefused) {
  auto plan = PlanShardAssignment(spec_, 0, 0, 4, 0, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  std::string text = ReadFileToString(data_.manifest_path).value();
  text.insert(text.rfind('}'), " ");  // the same dataset, other bytes
  ASSERT_TRUE(WriteFileAtomically(data_.manifest_path, text).ok());
  auto source = ShardTokenSource::OpenAssigned(data_.manifest_path, *plan, options_);
  EXPECT_EQ(source.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(source.status().message()),
              HasSubstr("the dataset manifest changed since the job was scheduled"));
}

TEST_F(ShardAssignmentTest, OnlyAssignedShardsMustExist) {
  auto plan = PlanShardAssignment(spec_, 0, 0, 4, 0, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const std::set<int64_t> assigned = Indices(*plan);
  const fs::path dir = fs::path(data_.manifest_path).parent_path();
  auto full = ShardTokenSource::Open(data_.manifest_path, options_);
  ASSERT_TRUE(full.ok());
  // An unassigned shard may be gone (the planner never reads shards)...
  int64_t unassigned = 0;
  while (assigned.count(unassigned)) ++unassigned;
  fs::remove(dir / full->manifest().shards[unassigned].file);
  EXPECT_TRUE(PlanShardAssignment(spec_, 0, 0, 4, 0, 1).ok());
  EXPECT_TRUE(ShardTokenSource::OpenAssigned(data_.manifest_path, *plan, options_).ok());
  // ... an assigned one may not.
  const std::string missing = plan->shards(0).path();
  fs::remove(dir / missing);
  auto source = ShardTokenSource::OpenAssigned(data_.manifest_path, *plan, options_);
  EXPECT_EQ(source.status().code(), absl::StatusCode::kNotFound) << source.status();
  EXPECT_THAT(std::string(source.status().message()), HasSubstr(missing));
}

TEST_F(ShardAssignmentTest, AnAssignmentThatDisagreesWithTheManifestIsRefused) {
  auto plan = PlanShardAssignment(spec_, 0, 0, 4, 0, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  v1::DataAssignment moved = *plan;
  moved.mutable_shards(0)->set_first_token(moved.shards(0).first_token() + 1);
  EXPECT_EQ(ShardTokenSource::OpenAssigned(data_.manifest_path, moved, options_).status().code(),
            absl::StatusCode::kInvalidArgument);
  v1::DataAssignment unordered = *plan;
  unordered.mutable_shards()->SwapElements(0, 1);
  EXPECT_EQ(
      ShardTokenSource::OpenAssigned(data_.manifest_path, unordered, options_).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST_F(ShardAssignmentTest, BadRequestsAreClearErrors) {
  const auto code = [&](int stage, int64_t start, int64_t end, int rank, int world) {
    return PlanShardAssignment(spec_, stage, start, end, rank, world).status().code();
  };
  EXPECT_EQ(code(2, 7, 7, 0, 1), absl::StatusCode::kInvalidArgument);  // no stage 2
  EXPECT_EQ(code(0, 3, 5, 0, 1), absl::StatusCode::kInvalidArgument);  // crosses the stage end
  EXPECT_EQ(code(1, 6, 5, 0, 1), absl::StatusCode::kInvalidArgument);  // backwards
  EXPECT_EQ(code(0, 0, 4, 1, 1), absl::StatusCode::kInvalidArgument);  // rank past the group
  EXPECT_EQ(code(0, 0, 4, 0, 0), absl::StatusCode::kInvalidArgument);  // no group
  EXPECT_EQ(code(0, 0, 4, 0, 3), absl::StatusCode::kInvalidArgument);  // 16 windows / 3 ranks
  EXPECT_TRUE(PlanShardAssignment(spec_, 0, 0, 4, 1, 2).ok());         // two ranks share evenly
  // A stage too long to plan in one piece.
  v1::JobSpec huge = spec_;
  huge.mutable_curriculum(0)->set_tokens(int64_t{1} << 40);
  auto refused = PlanShardAssignment(huge, 0, 0, int64_t{1} << 32, 0, 1);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  // A spec nobody validated.
  v1::JobSpec unvalidated = spec_;
  unvalidated.mutable_curriculum(0)->set_seq_len(0);
  EXPECT_EQ(PlanShardAssignment(unvalidated, 0, 0, 4, 0, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A missing manifest.
  v1::JobSpec gone = spec_;
  gone.mutable_data()->set_manifest((root_ / "nope" / "manifest.json").string());
  EXPECT_EQ(PlanShardAssignment(gone, 0, 0, 4, 0, 1).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace qtrain::train
