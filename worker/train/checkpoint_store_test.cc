#include "worker/train/checkpoint_store.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class CheckpointStoreTest : public ::testing::Test {
 public:
  std::string FileOf(int64_t step, const std::string& name) {
    return store_->DirectoryFor(step) + "/" + name;
  }

 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) /
            ("ckpt_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    auto store = CheckpointStore::Open(root_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_.emplace(std::move(*store));
  }
  void TearDown() override { fs::remove_all(root_); }

  // Writes a checkpoint with two files whose content depends on the step.
  void Write(int64_t step) {
    auto writer = store_->Begin(step);
    ASSERT_TRUE(writer.ok()) << writer.status();
    ASSERT_TRUE(WriteFileAtomically(writer->PathFor("model.safetensors"),
                                    std::string(1000, static_cast<char>('a' + step % 26)))
                    .ok());
    ASSERT_TRUE(WriteFileAtomically(writer->PathFor("trainer_state.json"),
                                    "{\"step\": " + std::to_string(step) + "}")
                    .ok());
    auto info = writer->Commit({{"step", step}, {"data_plan_sha256", "abc"}});
    ASSERT_TRUE(info.ok()) << info.status();
  }

  int64_t LatestGoodStep(std::vector<std::string>* skipped = nullptr) {
    auto info = store_->LatestGood(skipped);
    return info.ok() ? info->step : -1;
  }

  fs::path root_;
  std::optional<CheckpointStore> store_;
};

TEST_F(CheckpointStoreTest, CommittedCheckpointVerifiesWithItsMetadataAndHashes) {
  Write(100);
  auto info = store_->Verify(100);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->metadata["data_plan_sha256"], "abc");
  ASSERT_EQ(info->files.size(), 2u);
  EXPECT_EQ(info->files[0].path, "model.safetensors");
  EXPECT_EQ(info->files[0].size, 1000u);
  EXPECT_EQ(info->files[0].sha256.size(), 64u);
  EXPECT_EQ(LatestGoodStep(), 100);
  // Nothing but the committed directory is left.
  EXPECT_EQ(std::distance(fs::directory_iterator(root_), fs::directory_iterator()), 1);
}

TEST_F(CheckpointStoreTest, AbandonedWriterLeavesNothing) {
  Write(1);
  {
    auto writer = store_->Begin(2);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE(WriteFileAtomically(writer->PathFor("model.safetensors"), "partial").ok());
  }
  EXPECT_THAT(*store_->ListSteps(), ElementsAre(1));
  EXPECT_EQ(std::distance(fs::directory_iterator(root_), fs::directory_iterator()), 1);
}

TEST_F(CheckpointStoreTest, StaleTemporaryDirectoriesAreRemovedOnOpen) {
  Write(1);
  fs::create_directory(root_ / ".tmp-step-000000000002-999999-0");
  auto reopened = CheckpointStore::Open(root_);
  ASSERT_TRUE(reopened.ok());
  EXPECT_FALSE(fs::exists(root_ / ".tmp-step-000000000002-999999-0"));
  EXPECT_THAT(*reopened->ListSteps(), ElementsAre(1));
}

TEST_F(CheckpointStoreTest, DamagedCheckpointsFallBackToThePreviousOne) {
  struct Damage {
    std::string name;
    std::function<void(CheckpointStoreTest*, int64_t)> apply;
    std::string reason;
  };
  const Damage damages[] = {
      {"truncated file",
       [](CheckpointStoreTest* t, int64_t s) {
         fs::resize_file(t->FileOf(s, "model.safetensors"), 10);
       },
       "has 10 bytes, the manifest says 1000"},
      {"flipped byte",
       [](CheckpointStoreTest* t, int64_t s) {
         std::fstream f(t->FileOf(s, "model.safetensors"),
                        std::ios::in | std::ios::out | std::ios::binary);
         f.seekp(500);
         f.put('Z');
       },
       "model.safetensors fails its sha256 check"},
      {"missing file",
       [](CheckpointStoreTest* t, int64_t s) { fs::remove(t->FileOf(s, "trainer_state.json")); },
       "trainer_state.json is missing"},
      {"garbage manifest",
       [](CheckpointStoreTest* t, int64_t s) {
         std::ofstream(t->FileOf(s, "manifest.json")) << "{not json";
       },
       "manifest is not a JSON object"},
      {"missing manifest",
       [](CheckpointStoreTest* t, int64_t s) { fs::remove(t->FileOf(s, "manifest.json")); },
       "manifest unreadable"},
  };
  int64_t step = 0;
  for (const Damage& damage : damages) {
    SCOPED_TRACE(damage.name);
    const int64_t good = ++step, bad = ++step;
    Write(good);
    Write(bad);
    damage.apply(this, bad);
    EXPECT_EQ(store_->Verify(bad).status().code(), absl::StatusCode::kDataLoss);
    std::vector<std::string> skipped;
    EXPECT_EQ(LatestGoodStep(&skipped), good);
    ASSERT_EQ(skipped.size(), 1u);
    EXPECT_THAT(skipped[0], HasSubstr(damage.reason));
  }
}

TEST_F(CheckpointStoreTest, NoCheckpointIsNotFound) {
  EXPECT_EQ(store_->LatestGood().status().code(), absl::StatusCode::kNotFound);
}

TEST_F(CheckpointStoreTest, RetentionKeepsTheNewestAndNeverTheOnlyGoodOne) {
  for (int64_t s : {10, 20, 30, 40}) Write(s);
  ASSERT_TRUE(store_->ApplyRetention(2).ok());
  EXPECT_THAT(*store_->ListSteps(), ElementsAre(40, 30));
  // Both kept ones damaged: the newest good one (none of the kept) survives any keep_last.
  Write(50);
  fs::remove(FileOf(50, "model.safetensors"));
  fs::remove(FileOf(40, "model.safetensors"));
  ASSERT_TRUE(store_->ApplyRetention(2).ok());
  EXPECT_THAT(*store_->ListSteps(), ElementsAre(50, 40, 30));
  EXPECT_EQ(LatestGoodStep(), 30);
}

TEST_F(CheckpointStoreTest, RecommittingAStepReplacesIt) {
  Write(5);
  fs::remove(FileOf(5, "trainer_state.json"));
  Write(5);
  EXPECT_TRUE(store_->Verify(5).ok());
}

TEST_F(CheckpointStoreTest, ManifestCannotEscapeTheDirectory) {
  Write(7);
  std::ofstream(FileOf(7, "manifest.json"))
      << R"({"format":"qtrain-checkpoint-v1","step":7,"metadata":{},)"
      << R"("files":[{"path":"../../etc/passwd","sha256":"x","size":1}]})";
  EXPECT_THAT(std::string(store_->Verify(7).status().message()), HasSubstr("invalid file"));
}

}  // namespace
}  // namespace qtrain::train
