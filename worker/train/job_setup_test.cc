#include "worker/train/job_setup.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/train/shard_assignment.h"
#include "worker/train/test_dataset.h"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class JobSetupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("job_setup_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    auto data = testing::WriteTestDataset(root_.string(), 20000, 1000);
    ASSERT_TRUE(data.ok()) << data.status();
    data_ = *data;
  }
  void TearDown() override { fs::remove_all(root_); }
  v1::JobSpec Spec(const std::string& text) { return ParseJobSpec(text, "spec.yaml").value(); }

  fs::path root_;
  testing::TestDataset data_;
};

TEST_F(JobSetupTest, PreparesTheModelTokenizerAndData) {
  const v1::JobSpec spec = Spec(testing::TestJobSpec(data_));
  auto job = PrepareJob(spec);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->config.vocab_size, 272);
  EXPECT_FALSE(job->initial_params.has_value());
  EXPECT_EQ(job->tokenizer_sha256, Sha256File(data_.tokenizer_path).value());
  EXPECT_EQ(job->tokenizer_vocab_size, data_.vocab_size);
  ASSERT_TRUE(job->tokenizer_files.tokenizer_config_json.has_value());
  EXPECT_EQ(job->data->size(), 20000);
  // The files exported are the bytes read.
  ASSERT_TRUE(WriteTokenizerFiles(job->tokenizer_files, root_.string()).ok());
  EXPECT_EQ(ReadFileToString((root_ / "tokenizer.json").string()).value(),
            ReadFileToString(data_.tokenizer_path).value());
  EXPECT_EQ(ReadFileToString((root_ / "tokenizer_config.json").string()).value(),
            ReadFileToString((root_ / "tok" / "tokenizer_config.json").string()).value());
}

TEST_F(JobSetupTest, WithAnAssignmentOnlyItsShardsAreOpened) {
  const v1::JobSpec spec = Spec(testing::TestJobSpec(data_));
  auto plan = PlanShardAssignment(spec, 0, 0, 1, 0, 1);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_LT(plan->shards_size(), 20);
  int64_t unassigned = 0;
  while (std::any_of(plan->shards().begin(), plan->shards().end(),
                     [&](const v1::AssignedShard& s) { return s.index() == unassigned; })) {
    ++unassigned;
  }
  auto manifest = tokenizer::ReadShardManifest((root_ / "data").string());
  ASSERT_TRUE(manifest.ok());
  ASSERT_TRUE(fs::remove(root_ / "data" / manifest->shards[unassigned].file));
  auto job = PrepareJob(spec, &*plan);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->data->size(), 20000);
  std::vector<int32_t> out(2);
  EXPECT_EQ(job->data->Read(unassigned * 1000, out).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(job->data->Read(plan->shards(0).first_token(), out).ok());
}

TEST_F(JobSetupTest, BadInputsNameTheProblem) {
  std::string text = testing::TestJobSpec(data_);
  // A model whose vocabulary is smaller than the tokenizer's.
  std::string small = text;
  small.replace(small.find("vocab_size: 272"), 15, "vocab_size: 100");
  auto job = PrepareJob(Spec(small));
  EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(job.status().message()), HasSubstr("vocab_size 100 is smaller"));
  // A missing tokenizer.
  fs::rename(data_.tokenizer_path, data_.tokenizer_path + ".moved");
  job = PrepareJob(Spec(text));
  EXPECT_EQ(job.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(job.status().message()), HasSubstr("tokenizer"));
  // Shards made by another tokenizer.
  std::string other = ReadFileToString(data_.tokenizer_path + ".moved").value();
  ASSERT_TRUE(WriteFileAtomically(data_.tokenizer_path, other + "\n").ok());
  job = PrepareJob(Spec(text));
  EXPECT_EQ(job.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(job.status().message()), HasSubstr("another tokenizer"));
}

}  // namespace
}  // namespace qtrain::train
