#include "worker/train/checkpoint_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

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
  // The replaced one is gone, under whatever name it was moved to.
  EXPECT_EQ(std::distance(fs::directory_iterator(root_), fs::directory_iterator()), 1);
}

TEST_F(CheckpointStoreTest, ManifestCannotEscapeTheDirectory) {
  Write(7);
  std::ofstream(FileOf(7, "manifest.json"))
      << R"({"format":"qtrain-checkpoint-v1","step":7,"metadata":{},)"
      << R"("files":[{"path":"../../etc/passwd","sha256":"x","size":1}]})";
  EXPECT_THAT(std::string(store_->Verify(7).status().message()), HasSubstr("invalid file"));
}

// Rewrites checkpoint `step`'s manifest through `edit`.
void EditManifest(CheckpointStoreTest* t, int64_t step,
                  const std::function<void(nlohmann::json&)>& edit) {
  const std::string path = t->FileOf(step, "manifest.json");
  nlohmann::json manifest = nlohmann::json::parse(ReadFileToString(path).value());
  edit(manifest);
  std::ofstream(path, std::ios::trunc) << manifest.dump();
}

TEST_F(CheckpointStoreTest, ManifestClaimsAreChecked) {
  struct Lie {
    std::string name;
    std::function<void(nlohmann::json&)> edit;
    std::string reason;
  };
  const std::string digest(64, 'a');
  const Lie lies[] = {
      {"no files", [](nlohmann::json& m) { m["files"] = nlohmann::json::array(); },
       "manifest does not list model.safetensors"},
      {"a required file dropped", [](nlohmann::json& m) { m["files"].erase(0); },
       "manifest does not list model.safetensors"},
      {"metadata.step moved on", [](nlohmann::json& m) { m["metadata"]["step"] = 14; },
       "metadata.step 14 does not match the checkpoint's step"},
      {"metadata.step a string", [](nlohmann::json& m) { m["metadata"]["step"] = "8"; },
       "metadata.step \"8\" does not match"},
      {"manifest step", [](nlohmann::json& m) { m["step"] = 3; }, "does not match the directory"},
      {"step as a float", [](nlohmann::json& m) { m["step"] = 8.0; },
       "does not match the directory"},
      {"uppercase digest",
       [](nlohmann::json& m) {
         std::string d = m["files"][0]["sha256"];
         for (char& c : d) c = static_cast<char>(std::toupper(c));
         m["files"][0]["sha256"] = d;
       },
       "is not 64 lowercase hex digits"},
      {"short digest", [](nlohmann::json& m) { m["files"][1]["sha256"] = "abc"; },
       "is not 64 lowercase hex digits"},
      {"negative size", [](nlohmann::json& m) { m["files"][0]["size"] = -1; }, "is malformed"},
      {"size as a string", [](nlohmann::json& m) { m["files"][0]["size"] = "1000"; },
       "is malformed"},
      {"extra key", [](nlohmann::json& m) { m["files"][0]["mode"] = 420; }, "is malformed"},
      {"listed twice", [](nlohmann::json& m) { m["files"].push_back(m["files"][0]); },
       "lists model.safetensors twice"},
      {"format", [](nlohmann::json& m) { m["format"] = 1; }, "unknown format"},
      {"metadata not an object", [](nlohmann::json& m) { m["metadata"] = nlohmann::json::array(); },
       "lacks 'files' or 'metadata'"},
  };
  for (const Lie& lie : lies) {
    SCOPED_TRACE(lie.name);
    fs::remove_all(root_);
    auto store = CheckpointStore::Open(
        root_, {.required_files = {"model.safetensors", "trainer_state.json"}});
    ASSERT_TRUE(store.ok());
    store_.emplace(std::move(*store));
    Write(7);
    Write(8);
    EditManifest(this, 8, lie.edit);
    auto verified = store_->Verify(8);
    EXPECT_EQ(verified.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(std::string(verified.status().message()), HasSubstr(lie.reason));
    std::vector<std::string> skipped;
    EXPECT_EQ(LatestGoodStep(&skipped), 7);
    ASSERT_EQ(skipped.size(), 1u);
    EXPECT_THAT(skipped[0], HasSubstr(lie.reason));
  }
}

TEST_F(CheckpointStoreTest, ACheckpointWithoutItsRequiredFilesIsNotCommitted) {
  auto store = CheckpointStore::Open(root_, {.required_files = {"model.safetensors"}});
  ASSERT_TRUE(store.ok());
  auto writer = store->Begin(1);
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE(WriteFileAtomically(writer->PathFor("other.bin"), "x").ok());
  auto committed = writer->Commit(nlohmann::json::object());
  EXPECT_EQ(committed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(committed.status().message()),
              HasSubstr("model.safetensors was not written"));
  EXPECT_TRUE(store->ListSteps()->empty());
}

TEST_F(CheckpointStoreTest, RequiredFilesArePassedToVerify) {
  Write(3);
  EXPECT_TRUE(store_->Verify(3, {"model.safetensors"}).ok());
  auto missing = store_->Verify(3, {"model.safetensors", "optimizer.safetensors"});
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("does not list optimizer.safetensors (missing on disk)"));
}

TEST_F(CheckpointStoreTest, ListedFilesThatAreNotRegularFilesAreNamedAsSuch) {
  struct Kind {
    std::string name;
    std::function<void(const std::string&)> make;
    std::string reason;
  };
  const Kind kinds[] = {
      {"directory", [](const std::string& p) { fs::create_directory(p); },
       "model.safetensors is a directory"},
      {"fifo", [](const std::string& p) { ASSERT_EQ(::mkfifo(p.c_str(), 0644), 0); },
       "model.safetensors is a FIFO"},
      {"symlink to a device", [](const std::string& p) { fs::create_symlink("/dev/zero", p); },
       "model.safetensors is a symbolic link (to a character device)"},
  };
  int64_t step = 0;
  for (const Kind& kind : kinds) {
    SCOPED_TRACE(kind.name);
    const int64_t good = ++step, bad = ++step;
    Write(good);
    Write(bad);
    fs::remove(FileOf(bad, "model.safetensors"));
    kind.make(FileOf(bad, "model.safetensors"));
    auto verified = store_->Verify(bad);  // must not block on the FIFO
    EXPECT_EQ(verified.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(std::string(verified.status().message()), HasSubstr(kind.reason));
    EXPECT_THAT(std::string(verified.status().message()), Not(HasSubstr("missing")));
    EXPECT_EQ(LatestGoodStep(), good);
  }
}

TEST_F(CheckpointStoreTest, MetadataValidatorDecidesBetweenDamagedAndRefused) {
  Write(1);
  Write(2);
  auto store = CheckpointStore::Open(
      root_, {.validate_metadata = [](const CheckpointInfo& info) -> absl::Status {
        if (info.step == 2) return absl::DataLossError("tokens_seen is -100");
        return absl::OkStatus();
      }});
  ASSERT_TRUE(store.ok());
  std::vector<std::string> skipped;
  auto latest = store->LatestGood(&skipped);
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->step, 1);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_THAT(skipped[0], HasSubstr("step-000000000002: tokens_seen is -100"));

  auto refusing = CheckpointStore::Open(root_, {.validate_metadata = [](const CheckpointInfo&) {
                                          return absl::FailedPreconditionError("another spec");
                                        }});
  ASSERT_TRUE(refusing.ok());
  EXPECT_EQ(refusing->LatestGood().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(CheckpointStoreTest, OpenLeavesALiveWritersTemporaryDirectoryAlone) {
  // The parent of this test is alive and is not this process.
  const std::string live = absl::StrCat(".tmp-step-000000000002-", ::getppid(), "-0");
  const std::string own = absl::StrCat(".tmp-step-000000000003-", ::getpid(), "-0");
  fs::create_directory(root_ / live);
  fs::create_directory(root_ / own);
  ASSERT_TRUE(CheckpointStore::Open(root_).ok());
  EXPECT_TRUE(fs::exists(root_ / live));
  EXPECT_FALSE(fs::exists(root_ / own));
}

TEST_F(CheckpointStoreTest, AnInterruptedReplacementIsFinishedOnOpen) {
  Write(4);
  Write(6);
  // Crashed after moving step 4 aside, before the new one arrived: it comes back.
  fs::rename(store_->DirectoryFor(4), root_ / ".old-step-000000000004-999999");
  // Crashed after the new step 6 arrived, before the old one was deleted: the old one goes.
  fs::create_directory(root_ / ".old-step-000000000006-999999");
  ASSERT_TRUE(CheckpointStore::Open(root_).ok());
  EXPECT_THAT(*store_->ListSteps(), ElementsAre(6, 4));
  EXPECT_TRUE(store_->Verify(4).ok());
  EXPECT_TRUE(store_->Verify(6).ok());
  EXPECT_EQ(std::distance(fs::directory_iterator(root_), fs::directory_iterator()), 2);
}

TEST_F(CheckpointStoreTest, ParseCheckpointManifestNeedsNoFiles) {
  const std::string digest(64, 'b');
  const std::string text =
      absl::StrCat(R"({"format":"qtrain-checkpoint-v1","step":9,"metadata":{"step":9},"files":[)",
                   R"({"path":"a.bin","sha256":")", digest, R"(","size":5}]})");
  auto info = ParseCheckpointManifest(text, "dir", 9);
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->files.size(), 1u);
  EXPECT_EQ(info->files[0].size, 5u);
  EXPECT_EQ(ParseCheckpointManifest(text, "dir", 10).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseCheckpointManifest("[]", "dir", 9).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace qtrain::train

namespace qtrain::train {
namespace {

TEST(CheckpointStoreReadOnlyTest, ReadsWithoutTouchingTheDirectory) {
  const fs::path root =
      fs::path(::testing::TempDir()) / ("ckpt_read_only_" + std::to_string(::getpid()));
  fs::remove_all(root);
  EXPECT_EQ(CheckpointStore::Open(root.string(), {.read_only = true}).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(root));
  auto writer_store = CheckpointStore::Open(root.string());
  ASSERT_TRUE(writer_store.ok());
  {
    auto writer = writer_store->Begin(3);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE(WriteFileAtomically(writer->PathFor("a.bin"), "abc").ok());
    ASSERT_TRUE(writer->Commit(nlohmann::json::object()).ok());
  }
  // A writer's temporary directory of a process that is gone stays: only the writer cleans.
  const fs::path stale = root / ".tmp-step-000000000009-999999999-0";
  fs::create_directories(stale);
  auto reader = CheckpointStore::Open(root.string(), {.read_only = true});
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_TRUE(fs::exists(stale));
  EXPECT_THAT(*reader->ListSteps(), ElementsAre(3));
  EXPECT_TRUE(reader->Verify(3).ok());
  EXPECT_EQ(reader->Begin(4).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(reader->ApplyRetention(1).code(), absl::StatusCode::kFailedPrecondition);
  fs::remove_all(root);
}

}  // namespace
}  // namespace qtrain::train
