// The trainer in data-parallel groups of threads (the in-process communicator): the same bytes
// for every world size, resume across world sizes, failures that end the whole group, and the
// sharded checkpoint layout; and the same on a device backend, with the device-resident step's
// collectives over device memory.
#include <omp.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/comm/in_process_communicator.h"
#include "worker/model/config.h"
#include "worker/model/opaque_backend_test_util.h"
#include "worker/model/param_layout.h"
#include "worker/train/opaque_communicator_test_util.h"
#include "worker/train/synthetic_tokens_test_util.h"
#include "worker/train/trainer.h"

namespace qtrain::train {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

InMemoryTokenSource MakeData(int64_t n) {
  return testing::SyntheticTokens(n, 12345, "synthetic-v1");
}

// Two stages of 4 micro-batches per step (4 + 3 steps), so 1, 2 and 4 ranks each get 2^k. The
// spec names the world size it runs with (a range would include 3, which does not split 4).
std::string SpecText(int world_size, const std::string& device = "cpu",
                     const std::string& precision = "fp32") {
  return R"(
name: ranks-test
seed: 5
model: {preset: qwen2-test}
tokenizer: unused.json
data: {manifest: unused.json, validation_fraction: 0.1}
curriculum:
  - {name: short, seq_len: 16, tokens: 1024, micro_batch: 4}
  - {name: long, seq_len: 32, tokens: 768, micro_batch: 2, rope_theta: 20000}
batch: {global_tokens: 256}
checkpoint: {every_steps: 2, keep_last: 0}
eval: {every_steps: 3, batches: 3}
optimizer: {lr: 1e-2, min_lr: 1e-3, warmup_steps: 2}
)" + absl::StrCat("world: {min_workers: ", world_size, ", max_workers: ", world_size,
                  ", device: ", device, "}\nprecision: ", precision, "\n");
}

// Blocks of the ZeRO-1 layout small enough that the test model's ~5k parameters span 4 ranks,
// cut inside tensors.
constexpr int64_t kBlock = 160;

struct RankRun {
  absl::StatusOr<TrainerSummary> summary = absl::UnknownError("not run");
  std::vector<StepReport> reports;
  std::vector<std::string> events;
  std::vector<CheckpointInfo> checkpoints;
};

class TrainerRanksTest : public ::testing::Test {
 protected:
  TrainerRanksTest() : data_(MakeData(70000)) {}
  void SetUp() override {
    omp_set_num_threads(1);
    root_ = fs::path(::testing::TempDir()) /
            ("ranks_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // Trains `run` with a group of `world_size` threads; `adjust(rank, options)` may set hooks.
  std::vector<RankRun> TrainGroup(const std::string& run, int world_size,
                                  const std::function<void(int, TrainerOptions&)>& adjust = nullptr,
                                  absl::Duration op_timeout = absl::Seconds(60),
                                  const std::string& device = "cpu",
                                  const std::string& precision = "fp32") {
    auto group = comm::MakeInProcessGroup(world_size, op_timeout);
    std::vector<RankRun> runs(static_cast<size_t>(world_size));
    std::vector<std::thread> threads;
    for (int r = 0; r < world_size; ++r) {
      threads.emplace_back([&, r] {
        omp_set_num_threads(1);
        RankRun& out = runs[r];
        TrainerOptions options;
        options.run_dir = (root_ / run).string();
        options.rank = r;
        options.world_size = world_size;
        options.communicator = group[r].get();
        options.on_step = [&out](const StepReport& report) { out.reports.push_back(report); };
        options.on_event = [&out](const std::string& e) { out.events.push_back(e); };
        options.on_checkpoint = [&out](const CheckpointInfo& info) {
          out.checkpoints.push_back(info);
          return absl::OkStatus();
        };
        // Resuming on another world size changes the spec's world.
        options.allowed_spec_changes = {"world"};
        options.shard_block_elements = kBlock;
        if (adjust) adjust(r, options);
        auto spec = ParseJobSpec(SpecText(world_size, device, precision), "spec.yaml");
        if (!spec.ok()) {
          out.summary = spec.status();
          group[r]->Abort();
          return;
        }
        auto trainer = Trainer::Create(*spec, *model::PresetConfig("qwen2-test"), std::nullopt,
                                       data_, std::move(options));
        if (!trainer.ok()) {
          out.summary = trainer.status();  // Create has aborted the group
          return;
        }
        out.summary = (*trainer)->Run();
      });
    }
    for (std::thread& t : threads) t.join();
    return runs;
  }
  std::string FinalHash(const std::string& run) {
    auto digest = Sha256File((root_ / run / "final" / "model.safetensors").string());
    return digest.ok() ? *digest : "missing: " + std::string(digest.status().message());
  }
  fs::path CheckpointDir(const std::string& run, int64_t step) {
    return root_ / run / "checkpoints" / absl::StrFormat("step-%012d", step);
  }

  InMemoryTokenSource data_;
  fs::path root_;
};

void ExpectAllOk(const std::vector<RankRun>& runs) {
  for (size_t r = 0; r < runs.size(); ++r) {
    ASSERT_TRUE(runs[r].summary.ok()) << "rank " << r << ": " << runs[r].summary.status();
  }
}

TEST_F(TrainerRanksTest, OneTwoAndFourRanksGiveTheSameBytes) {
  std::vector<StepReport> reference;
  std::string reference_hash;
  for (int w : {1, 2, 4}) {
    SCOPED_TRACE(absl::StrCat(w, " ranks"));
    const std::string run = absl::StrCat("w", w);
    const std::vector<RankRun> runs = TrainGroup(run, w);
    ExpectAllOk(runs);
    ASSERT_EQ(runs[0].reports.size(), 7u);
    for (int r = 0; r < w; ++r) {
      EXPECT_TRUE(runs[r].summary->completed);
      EXPECT_EQ(runs[r].summary->final_dir, (root_ / run / "final").string());
      // Every rank reports the group's values.
      for (size_t i = 0; i < runs[r].reports.size(); ++i) {
        EXPECT_EQ(runs[r].reports[i].loss, runs[0].reports[i].loss);
        EXPECT_EQ(runs[r].reports[i].grad_norm, runs[0].reports[i].grad_norm);
        EXPECT_EQ(runs[r].reports[i].eval_loss, runs[0].reports[i].eval_loss);
      }
    }
    if (w > 1) {
      EXPECT_GT(runs[1].reports[0].comm_seconds, 0.0);
    }
    if (reference.empty()) {
      reference = runs[0].reports;
      reference_hash = FinalHash(run);
      continue;
    }
    EXPECT_EQ(FinalHash(run), reference_hash);
    for (size_t i = 0; i < reference.size(); ++i) {
      EXPECT_EQ(runs[0].reports[i].loss, reference[i].loss) << "step " << i + 1;
      EXPECT_EQ(runs[0].reports[i].grad_norm, reference[i].grad_norm) << "step " << i + 1;
      EXPECT_EQ(runs[0].reports[i].eval_loss, reference[i].eval_loss) << "step " << i + 1;
    }
    // One optimizer file per rank, the model once, nothing staged left over.
    for (int r = 0; r < w; ++r) {
      EXPECT_TRUE(fs::exists(CheckpointDir(run, 7) /
                             absl::StrFormat("optimizer-%05d-of-%05d.safetensors", r, w)));
    }
    // Every rank owns a part of the parameters.
    const nlohmann::json manifest = nlohmann::json::parse(
        ReadFileToString((CheckpointDir(run, 7) / "manifest.json").string()).value());
    for (const nlohmann::json& shard : manifest["metadata"]["optimizer_shards"]) {
      EXPECT_GT(shard["end"].get<int64_t>(), shard["begin"].get<int64_t>()) << shard.dump();
    }
    for (const auto& entry : fs::directory_iterator(root_ / run / "checkpoints")) {
      EXPECT_THAT(entry.path().filename().string(), ::testing::StartsWith("step-"));
    }
  }
  // The group of one through the in-process communicator is the local trainer's arithmetic.
  auto spec = ParseJobSpec(SpecText(1), "spec.yaml");
  TrainerOptions local;
  local.run_dir = (root_ / "local").string();
  local.shard_block_elements = kBlock;
  auto trainer = Trainer::Create(*spec, *model::PresetConfig("qwen2-test"), std::nullopt, data_,
                                 std::move(local));
  ASSERT_TRUE(trainer.ok());
  ASSERT_TRUE((*trainer)->Run().ok());
  EXPECT_EQ(FinalHash("local"), reference_hash);
}

// On a device backend (memory the host cannot read), both ways a group steps give the same
// bytes for every world size: the device-resident step (its gradient and parameter collectives
// over device memory, a device communicator) and the host-staged one (none). In fp32 they are
// the CPU group's bytes; in bf16 and fp16 they also check the 16-bit working copy, which AdamW
// rewrites in a group of one and the model casts again after a larger group's all-gather.
TEST_F(TrainerRanksTest, DeviceGroupsGiveTheSameBytesForEveryWorldSize) {
  for (const std::string precision : {"fp32", "bf16", "fp16"}) {
    std::vector<StepReport> reference;
    std::string reference_hash;
    if (precision == "fp32") {
      const std::vector<RankRun> cpu = TrainGroup("cpu", 2);
      ExpectAllOk(cpu);
      reference = cpu[0].reports;
      reference_hash = FinalHash("cpu");
    }
    for (int w : {1, 2, 4}) {
      for (bool device_resident : {true, false}) {
        if (w == 1 && !device_resident) continue;  // a group of one is always device-resident
        const std::string run =
            absl::StrCat(precision, "_w", w, device_resident ? "_resident" : "_staged");
        SCOPED_TRACE(run);
        std::vector<model::OpaqueMemoryBackend> backends(static_cast<size_t>(w));
        std::vector<std::shared_ptr<testing::DeviceOpCounts>> counts;
        std::vector<std::unique_ptr<testing::OpaqueMemoryCommunicator>> device_group;
        for (std::unique_ptr<comm::Communicator>& c :
             comm::MakeInProcessGroup(w, absl::Seconds(60))) {
          counts.push_back(std::make_shared<testing::DeviceOpCounts>());
          device_group.push_back(
              std::make_unique<testing::OpaqueMemoryCommunicator>(std::move(c), counts.back()));
        }
        const std::vector<RankRun> runs = TrainGroup(
            run, w,
            [&](int rank, TrainerOptions& options) {
              options.backend = &backends[rank];
              if (device_resident && w > 1) {
                options.device_communicator = device_group[rank].get();
              }
            },
            absl::Seconds(60), "cuda", precision);
        ExpectAllOk(runs);
        if (reference.empty()) {  // bf16, fp16: the group of one is the reference
          reference = runs[0].reports;
          reference_hash = FinalHash(run);
          ASSERT_EQ(reference.size(), 7u);
          EXPECT_LT(reference.back().loss, reference.front().loss);
        }
        ASSERT_EQ(runs[0].reports.size(), reference.size());
        for (size_t i = 0; i < reference.size(); ++i) {
          EXPECT_EQ(runs[0].reports[i].loss, reference[i].loss) << "step " << i + 1;
          EXPECT_EQ(runs[0].reports[i].grad_norm, reference[i].grad_norm) << "step " << i + 1;
          EXPECT_EQ(runs[0].reports[i].eval_loss, reference[i].eval_loss) << "step " << i + 1;
        }
        EXPECT_EQ(FinalHash(run), reference_hash);
        // The device communicator carried each step's gradient and parameters, or nothing.
        const int steps = static_cast<int>(reference.size());
        for (int r = 0; r < w; ++r) {
          const bool used = device_resident && w > 1;
          EXPECT_EQ(counts[r]->reduce_scatters.load(), used ? steps : 0) << "rank " << r;
          EXPECT_EQ(counts[r]->all_gathers.load(), used ? steps : 0) << "rank " << r;
        }
      }
    }
  }
}

TEST_F(TrainerRanksTest, ADeviceCommunicatorMustMatchTheGroupAndTheBackend) {
  auto spec = ParseJobSpec(SpecText(2, "cuda"), "spec.yaml");
  ASSERT_TRUE(spec.ok()) << spec.status();
  auto group = comm::MakeInProcessGroup(2, absl::Seconds(5));
  auto device_group = comm::MakeInProcessGroup(2, absl::Seconds(5));
  model::OpaqueMemoryBackend device;
  const auto create = [&](TrainerOptions options) {
    options.run_dir = (root_ / "refused").string();
    options.world_size = 2;
    options.communicator = group[0].get();
    return Trainer::Create(*spec, *model::PresetConfig("qwen2-test"), std::nullopt, data_,
                           std::move(options))
        .status();
  };
  TrainerOptions wrong_rank;
  wrong_rank.backend = &device;
  wrong_rank.device_communicator = device_group[1].get();
  const absl::Status rank_status = create(wrong_rank);
  EXPECT_EQ(rank_status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(rank_status.message(), HasSubstr("device communicator of rank 1 of 2"));
  TrainerOptions on_the_cpu;
  on_the_cpu.device_communicator = device_group[0].get();
  const absl::Status cpu_status = create(on_the_cpu);
  EXPECT_EQ(cpu_status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(cpu_status.message(), HasSubstr("needs a device backend"));
  EXPECT_FALSE(fs::exists(root_ / "refused"));
}

TEST_F(TrainerRanksTest, OnlyRankZeroWritesTheRunFilesAndEachRankReportsItsOwnFiles) {
  // A stale staging directory of an interrupted group goes when rank 0 opens the store.
  fs::create_directories(root_ / "run" / "checkpoints" / ".shards-step-000000000002");
  const std::vector<RankRun> runs =
      TrainGroup("run", 2, [](int, TrainerOptions& options) { options.stop_after_step = 2; });
  ExpectAllOk(runs);
  ASSERT_EQ(runs[0].checkpoints.size(), 1u);
  ASSERT_EQ(runs[1].checkpoints.size(), 1u);
  std::vector<std::string> rank0_files, rank1_files;
  for (const auto& f : runs[0].checkpoints[0].files) rank0_files.push_back(f.path);
  for (const auto& f : runs[1].checkpoints[0].files) rank1_files.push_back(f.path);
  EXPECT_THAT(rank0_files, ::testing::UnorderedElementsAre("config.json", "model.safetensors",
                                                           "optimizer-00000-of-00002.safetensors"));
  EXPECT_THAT(rank1_files, ::testing::ElementsAre("optimizer-00001-of-00002.safetensors"));
  EXPECT_EQ(runs[1].checkpoints[0].directory, runs[0].checkpoints[0].directory);
  EXPECT_EQ(runs[1].checkpoints[0].files[0].sha256,
            Sha256File((CheckpointDir("run", 2) / "optimizer-00001-of-00002.safetensors").string())
                .value());
  const nlohmann::json& m = runs[0].checkpoints[0].metadata;
  EXPECT_EQ(m["world_size"], 2);
  EXPECT_EQ(m["optimizer_updates"], 2);
  ASSERT_EQ(m["optimizer_shards"].size(), 2u);
  EXPECT_EQ(m["optimizer_shards"][0]["begin"], 0);
  EXPECT_EQ(m["optimizer_shards"][0]["end"], m["optimizer_shards"][1]["begin"]);
  EXPECT_GT(m["optimizer_shards"][0]["end"].get<int64_t>(), 0);
  EXPECT_EQ(m["shard_block_elements"], kBlock);
  EXPECT_EQ(m["optimizer_shards"][1]["end"],
            model::ParameterLayout(*model::PresetConfig("qwen2-test")).total_size());
  EXPECT_FALSE(fs::exists(root_ / "run" / "checkpoints" / ".shards-step-000000000002"));
  auto records = ReadFileToString((root_ / "run" / "metrics.jsonl").string());
  ASSERT_TRUE(records.ok());
  EXPECT_EQ(std::count(records->begin(), records->end(), '\n'), 2);  // one writer
}

TEST_F(TrainerRanksTest, ResumeOnAnotherWorldSizeEndsWithTheSameBytes) {
  std::vector<RankRun> straight = TrainGroup("straight", 1);
  ExpectAllOk(straight);
  const std::string expected = FinalHash("straight");
  struct Change {
    int from, to;
    int64_t stop;
  };
  for (const Change& c : {Change{2, 1, 3}, Change{1, 4, 4}, Change{4, 2, 5}}) {
    SCOPED_TRACE(absl::StrCat(c.from, " -> ", c.to, " ranks at step ", c.stop));
    const std::string run = absl::StrCat("from", c.from, "to", c.to);
    ExpectAllOk(
        TrainGroup(run, c.from, [&](int, TrainerOptions& o) { o.stop_after_step = c.stop; }));
    const std::vector<RankRun> resumed = TrainGroup(run, c.to);
    ExpectAllOk(resumed);
    for (const RankRun& r : resumed) {
      ASSERT_FALSE(r.reports.empty());
      EXPECT_EQ(r.reports.front().step, c.stop + 1);
    }
    EXPECT_THAT(resumed[0].events,
                ::testing::Contains(HasSubstr(absl::StrCat("(step ", c.stop, " of 7)"))));
    EXPECT_EQ(FinalHash(run), expected);
    for (size_t i = 0; i < resumed[0].reports.size(); ++i) {
      EXPECT_EQ(resumed[0].reports[i].loss, straight[0].reports[c.stop + i].loss);
    }
  }
}

TEST_F(TrainerRanksTest, ARankThatFailsEndsTheOthersWithoutAHang) {
  // Rank 1 stops with an error after step 2: the others fail at their next collective.
  const absl::Time start = absl::Now();
  std::vector<RankRun> runs = TrainGroup(
      "failed", 4,
      [](int rank, TrainerOptions& o) {
        if (rank == 1) {
          o.on_checkpoint = [](const CheckpointInfo&) {
            return absl::InternalError("disk full on rank 1");
          };
        }
      },
      absl::Seconds(120));
  EXPECT_LT(absl::Now() - start, absl::Seconds(60));
  EXPECT_EQ(runs[1].summary.status().code(), absl::StatusCode::kInternal);
  for (int r : {0, 2}) {
    EXPECT_EQ(runs[r].summary.status().code(), absl::StatusCode::kUnavailable)
        << runs[r].summary.status();
    EXPECT_THAT(std::string(runs[r].summary.status().message()),
                HasSubstr("rank 1 closed the group"));
  }
  EXPECT_EQ(runs[3].summary.status().code(), absl::StatusCode::kUnavailable);
  for (const RankRun& run : runs) {
    ASSERT_FALSE(run.reports.empty());
    EXPECT_EQ(run.reports.back().step, 2);
  }

  // A rank that cannot even start.
  const absl::Time create_start = absl::Now();
  runs = TrainGroup(
      "not_created", 2,
      [](int rank, TrainerOptions& o) {
        if (rank == 1) o.shard_block_elements = 0;
      },
      absl::Seconds(120));
  EXPECT_LT(absl::Now() - create_start, absl::Seconds(60));
  EXPECT_EQ(runs[1].summary.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(runs[0].summary.status().code(), absl::StatusCode::kUnavailable)
      << runs[0].summary.status();

  // A rank that hangs inside a step: the others time out, naming it; it fails afterwards.
  const absl::Time hang_start = absl::Now();
  runs = TrainGroup(
      "hung", 2,
      [](int rank, TrainerOptions& o) {
        if (rank == 1) {
          o.fault_hook = [](std::string_view point, int64_t step) {
            if (point == "step_done" && step == 1) absl::SleepFor(absl::Seconds(2));
          };
        }
      },
      absl::Milliseconds(500));
  EXPECT_LT(absl::Now() - hang_start, absl::Seconds(30));
  EXPECT_EQ(runs[0].summary.status().code(), absl::StatusCode::kDeadlineExceeded)
      << runs[0].summary.status();
  EXPECT_THAT(std::string(runs[0].summary.status().message()),
              HasSubstr("timed out after 500ms waiting for rank 1"));
  EXPECT_FALSE(runs[1].summary.ok());
  EXPECT_EQ(runs[0].reports.size(), 1u);
}

TEST_F(TrainerRanksTest, RankZeroThatCannotCommitStopsTheOthers) {
  const fs::path checkpoints = root_ / "run" / "checkpoints";
  std::vector<RankRun> runs = TrainGroup("run", 2, [&](int rank, TrainerOptions& o) {
    if (rank != 0) return;
    o.fault_hook = [checkpoints](std::string_view point, int64_t step) {
      // The checkpoint being written disappears before its commit.
      if (point != "checkpoint_written" || step != 2) return;
      for (const auto& e : fs::directory_iterator(checkpoints)) {
        if (e.path().filename().string().starts_with(".tmp-step-")) fs::remove_all(e.path());
      }
    };
  });
  EXPECT_FALSE(runs[0].summary.ok());
  EXPECT_EQ(runs[1].summary.status().code(), absl::StatusCode::kAborted)
      << runs[1].summary.status();
  EXPECT_THAT(std::string(runs[1].summary.status().message()),
              HasSubstr("rank 0 could not commit checkpoint 2"));
}

// Rewrites the manifest of `checkpoint_dir` through `edit`.
void EditManifest(const fs::path& checkpoint_dir,
                  const std::function<void(nlohmann::json&)>& edit) {
  const fs::path path = checkpoint_dir / "manifest.json";
  nlohmann::json manifest = nlohmann::json::parse(ReadFileToString(path.string()).value());
  edit(manifest);
  std::ofstream(path, std::ios::trunc) << manifest.dump();
}

// Records the current sha256 and size of `file` in the manifest of `dir`.
void Rehash(const fs::path& dir, const std::string& file) {
  const std::string sha = Sha256File((dir / file).string()).value();
  const auto size = fs::file_size(dir / file);
  EditManifest(dir, [&](nlohmann::json& manifest) {
    for (auto& f : manifest["files"]) {
      if (f["path"] == file) f = {{"path", file}, {"sha256", sha}, {"size", size}};
    }
  });
}

// Rewrites an optimizer shard with another step count in its metadata (and rehashes it, so only
// the header tells).
void RewriteShardStep(const fs::path& dir, const std::string& file, const std::string& step) {
  auto shard = SafetensorsFile::Open((dir / file).string());
  ASSERT_TRUE(shard.ok());
  SafetensorsWriter writer;
  for (const char* name : {"exp_avg", "exp_avg_sq"}) {
    const std::vector<float> moment = *shard->ReadAsFloat(name);
    ASSERT_TRUE(writer.AddFloat(name, {static_cast<int64_t>(moment.size())}, moment).ok());
  }
  for (const auto& [key, value] : shard->metadata()) writer.SetMetadata(key, value);
  writer.SetMetadata("step", step);
  ASSERT_TRUE(writer.WriteFile((dir / file).string()).ok());
  Rehash(dir, file);
}

TEST_F(TrainerRanksTest, DamagedShardsAreDataLossNamingTheFile) {
  ExpectAllOk(TrainGroup("base", 2, [](int, TrainerOptions& o) { o.stop_after_step = 4; }));
  struct Damage {
    std::string name;
    std::function<void(const fs::path&)> apply;
    std::string reason;
  };
  const std::string shard1 = "optimizer-00001-of-00002.safetensors";
  const Damage damages[] = {
      {"flipped byte",
       [&](const fs::path& dir) {
         std::fstream f(dir / shard1, std::ios::in | std::ios::out | std::ios::binary);
         f.seekp(-5, std::ios::end);
         f.put('\x11');
       },
       shard1 + " fails its sha256 check"},
      {"missing file", [&](const fs::path& dir) { fs::remove(dir / shard1); },
       shard1 + " is missing"},
      {"ranges with a gap",
       [](const fs::path& dir) {
         EditManifest(dir, [](nlohmann::json& m) {
           m["metadata"]["optimizer_shards"][1]["begin"] =
               m["metadata"]["optimizer_shards"][1]["begin"].get<int64_t>() + 1;
         });
       },
       "metadata.optimizer_shards[1].range"},
      {"unlisted file",
       [&](const fs::path& dir) {
         EditManifest(dir, [&](nlohmann::json& m) {
           m["metadata"]["optimizer_shards"][1]["file"] = "optimizer-00001-of-00003.safetensors";
         });
       },
       "optimizer-00001-of-00003.safetensors is not among the manifest's files"},
      {"one shard short",
       [](const fs::path& dir) {
         EditManifest(dir, [](nlohmann::json& m) { m["metadata"]["optimizer_shards"].erase(1); });
       },
       "metadata.optimizer_shards is not a list of 2 shards"},
      // Rank 0 checks every shard's header, so the group skips this one together.
      {"another rank's shard claims another step",
       [&](const fs::path& dir) { RewriteShardStep(dir, shard1, "99"); },
       shard1 + ": has taken 99 updates, the checkpoint says 4"},
      {"a shard's range in the file disagrees",
       [&](const fs::path& dir) {
         EditManifest(dir, [](nlohmann::json& m) {
           auto& shards = m["metadata"]["optimizer_shards"];
           const int64_t cut = shards[0]["end"].get<int64_t>() - 16;
           shards[0]["end"] = cut;
           shards[1]["begin"] = cut;
         });
       },
       "the checkpoint lists"},
  };
  int n = 0;
  for (const Damage& damage : damages) {
    SCOPED_TRACE(damage.name);
    const std::string run = absl::StrCat("damaged", n++);
    fs::copy(root_ / "base", root_ / run, fs::copy_options::recursive);
    damage.apply(CheckpointDir(run, 4));
    // Named: refused. Newest: skipped for step 2, on every world size.
    std::vector<RankRun> refused =
        TrainGroup(run, 1, [](int, TrainerOptions& o) { o.resume_from_step = 4; });
    EXPECT_EQ(refused[0].summary.status().code(), absl::StatusCode::kDataLoss)
        << refused[0].summary.status();
    EXPECT_THAT(std::string(refused[0].summary.status().message()), HasSubstr(damage.reason));
    std::vector<RankRun> fallback =
        TrainGroup(run, 2, [](int, TrainerOptions& o) { o.stop_after_step = 3; });
    ExpectAllOk(fallback);
    ASSERT_GE(fallback[0].events.size(), 2u);
    EXPECT_THAT(fallback[0].events[0], HasSubstr("skipping damaged"));
    EXPECT_THAT(fallback[0].events[0], HasSubstr(damage.reason));
    EXPECT_THAT(fallback[1].events, ::testing::Contains(HasSubstr("(step 2 of 7)")));
    fs::remove_all(root_ / run);
  }
}

// Checkpoints written before the optimizer state was sharded hold optimizer.safetensors (one
// tensor per parameter) and no world_size: they resume, at any world size, exactly.
TEST_F(TrainerRanksTest, TheSingleFileOptimizerFormatStillResumes) {
  ExpectAllOk(TrainGroup("straight", 1));
  const std::string expected = FinalHash("straight");
  ExpectAllOk(TrainGroup("old", 1, [](int, TrainerOptions& o) { o.stop_after_step = 4; }));
  const fs::path dir = CheckpointDir("old", 4);
  const model::ParameterLayout layout(*model::PresetConfig("qwen2-test"));
  {
    auto shard = SafetensorsFile::Open((dir / "optimizer-00000-of-00001.safetensors").string());
    ASSERT_TRUE(shard.ok());
    const std::vector<float> m = *shard->ReadAsFloat("exp_avg");
    const std::vector<float> v = *shard->ReadAsFloat("exp_avg_sq");
    SafetensorsWriter old;
    for (const model::TensorSlot& slot : layout.tensors()) {
      const auto size = static_cast<size_t>(slot.size);
      ASSERT_TRUE(
          old.AddFloat("exp_avg." + slot.name, slot.shape, std::span(m).subspan(slot.offset, size))
              .ok());
      ASSERT_TRUE(old.AddFloat("exp_avg_sq." + slot.name, slot.shape,
                               std::span(v).subspan(slot.offset, size))
                      .ok());
    }
    old.SetMetadata("step", shard->metadata().at("step"));
    ASSERT_TRUE(old.WriteFile((dir / "optimizer.safetensors").string()).ok());
  }
  fs::remove(dir / "optimizer-00000-of-00001.safetensors");
  const std::string sha = Sha256File((dir / "optimizer.safetensors").string()).value();
  const auto size = fs::file_size(dir / "optimizer.safetensors");
  EditManifest(dir, [&](nlohmann::json& manifest) {
    for (auto& f : manifest["files"]) {
      if (f["path"] == "optimizer-00000-of-00001.safetensors") {
        f = {{"path", "optimizer.safetensors"}, {"sha256", sha}, {"size", size}};
      }
    }
    for (const char* key :
         {"world_size", "shard_block_elements", "optimizer_updates", "optimizer_shards"}) {
      manifest["metadata"].erase(key);
    }
  });
  const std::vector<RankRun> resumed = TrainGroup("old", 2);
  ExpectAllOk(resumed);
  EXPECT_THAT(resumed[1].events, ::testing::Contains(HasSubstr("(step 4 of 7)")));
  EXPECT_EQ(FinalHash("old"), expected);
}

}  // namespace
}  // namespace qtrain::train
