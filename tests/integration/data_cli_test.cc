// `qtrain train` fed a damaged or hostile dataset: every case must end in a clean refusal that
// names the problem (no signal, no hang, no training on bad data); an intact dataset trains.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/integration/cli_process.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;
using testing_cli::CliOptions;
using testing_cli::CliResult;
using testing_cli::QtrainBinary;
using testing_cli::RunCli;

constexpr uint64_t kMemoryLimit = 2ull << 30;

class DataCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::path(::testing::TempDir()) / ("data_cli_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    ASSERT_TRUE(testing_cli::WriteWordCorpus(
        root_ / "text.txt", {"data", "is", "checked", "before", "the", "model", "sees", "it"}, 4000,
        /*seed=*/11, /*sentence_every=*/7));
    const CliResult tok = Run({"train-tokenizer", "--vocab-size", "300", "--out",
                               (root_ / "tok").string(), (root_ / "text.txt").string()},
                              "tok.log");
    ASSERT_EQ(tok.exit_code, 0) << tok;
    // Small shards, so that a dataset has several.
    const CliResult shards = Run({"tokenize", "--quiet", "--shard-tokens", "2000", "--tokenizer",
                                  (root_ / "tok" / "tokenizer.json").string(), "--out",
                                  (root_ / "good").string(), (root_ / "text.txt").string()},
                                 "tokenize.log");
    ASSERT_EQ(shards.exit_code, 0) << shards;
  }
  static void TearDownTestSuite() { fs::remove_all(root_); }

  static CliResult Run(std::vector<std::string> args, const std::string& log) {
    args.insert(args.begin(), QtrainBinary());
    CliOptions options;
    options.address_space_bytes = kMemoryLimit;
    options.timeout_seconds = 30;
    return RunCli(args, root_ / log, options);
  }

  // A copy of the good dataset for this test, and a job that trains on it.
  void SetUp() override {
    name_ = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir_ = root_ / name_;
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    fs::copy(root_ / "good", dir_ / "ds");
    WriteJob((dir_ / "ds" / "manifest.json").string());
  }

  void WriteJob(const std::string& manifest) {
    std::ofstream spec(dir_ / "job.yaml");
    spec << "name: data\nseed: 3\n"
         << "model: {config: {vocab_size: 320, hidden_size: 16, intermediate_size: 32, "
            "num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1, "
            "max_position_embeddings: 64}}\n"
         << "tokenizer: " << (root_ / "tok" / "tokenizer.json").string() << "\n"
         << "data: {manifest: " << manifest << ", validation_fraction: 0.1}\n"
         << "curriculum:\n  - {name: only, seq_len: 16, tokens: 128, micro_batch: 2}\n"
         << "optimizer: {lr: 1e-2, min_lr: 1e-3, warmup_steps: 1}\n"
         << "batch: {global_tokens: 64}\n"
         << "checkpoint: {every_steps: 100, keep_last: 1}\n"
         << "eval: {every_steps: 100, batches: 1}\n";
  }

  CliResult Train() {
    return Run({"train", (dir_ / "job.yaml").string(), "--run-dir", (dir_ / "run").string()},
               name_ + ".log");
  }

  fs::path Manifest() const { return dir_ / "ds" / "manifest.json"; }

  void EditManifest(const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = nlohmann::json::parse(*ReadFileToString(Manifest().string()));
    edit(j);
    std::ofstream(Manifest(), std::ios::trunc) << j.dump(2);
  }

  // Overwrites the byte at `offset` of the shard `file`.
  void PokeShard(const std::string& file, std::streamoff offset, char value) {
    std::fstream f(dir_ / "ds" / file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(offset);
    f.put(value);
  }

  static fs::path root_;
  std::string name_;
  fs::path dir_;
};

fs::path DataCliTest::root_;

TEST_F(DataCliTest, IntactDatasetTrains) {
  const CliResult r = Train();
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.output, HasSubstr("train: done"));
}

TEST_F(DataCliTest, ChangedTokenIsCaughtBySha256) {
  PokeShard("shard-000001.bin", 32, 3);  // id 3 is below any vocabulary size
  EXPECT_CLEAN_FAILURE(Train(), "shard-000001.bin: sha256 is");
}

TEST_F(DataCliTest, WrongOrMalformedSha256IsRefused) {
  EditManifest([](nlohmann::json& j) { j["shards"][0]["sha256"] = std::string(64, '0'); });
  EXPECT_CLEAN_FAILURE(Train(), "the manifest says 0000000000");
  EditManifest([](nlohmann::json& j) { j["shards"][0]["sha256"] = "xyz"; });
  EXPECT_CLEAN_FAILURE(Train(), "\"shards[0].sha256\" is \"xyz\": a sha256 must be 64 hex digits");
  EditManifest([](nlohmann::json& j) { j["tokenizer"]["sha256"] = "000"; });
  EXPECT_CLEAN_FAILURE(Train(), "\"tokenizer.sha256\" is \"000\"");
}

TEST_F(DataCliTest, VocabularyMustMatchTheTokenizer) {
  uint32_t vocab = 0;
  EditManifest([&](nlohmann::json& j) {
    vocab = j["tokenizer"]["vocab_size"].get<uint32_t>();
    j["tokenizer"]["vocab_size"] = 200000;
  });
  ASSERT_GT(vocab, 256u);
  EXPECT_CLEAN_FAILURE(Train(), "tokenizer.vocab_size is 200000 but the tokenizer has " +
                                    std::to_string(vocab) + " tokens");
  // The shard headers are checked against the manifest too.
  EditManifest([&](nlohmann::json& j) { j["tokenizer"]["vocab_size"] = vocab; });
  PokeShard("shard-000000.bin", 24, static_cast<char>((vocab + 1) & 0xFF));
  PokeShard("shard-000000.bin", 25, static_cast<char>((vocab + 1) >> 8));
  EXPECT_CLEAN_FAILURE(Train(), absl::StrCat("vocabulary size ", vocab + 1,
                                             " in the header, the manifest says ", vocab));
}

TEST_F(DataCliTest, HeaderMustMatchTheManifest) {
  EditManifest([](nlohmann::json& j) {
    j["shards"][0]["num_tokens"] = j["shards"][0]["num_tokens"].get<uint64_t>() + 1;
    j["num_tokens"] = j["num_tokens"].get<uint64_t>() + 1;
  });
  EXPECT_CLEAN_FAILURE(Train(),
                       "shard-000000.bin: the header says 2000 tokens, the manifest says "
                       "2001");
  fs::copy_file(root_ / "good" / "manifest.json", Manifest(), fs::copy_options::overwrite_existing);
  PokeShard("shard-000000.bin", 8, 2);
  EXPECT_CLEAN_FAILURE(Train(), "unsupported token shard version 2");
  PokeShard("shard-000000.bin", 8, 1);
  PokeShard("shard-000000.bin", 12, 7);
  EXPECT_CLEAN_FAILURE(Train(), "unsupported token dtype 7");
}

TEST_F(DataCliTest, ManifestErrorsNameTheFileAndTheKey) {
  const std::string manifest = Manifest().string();
  std::ofstream(Manifest(), std::ios::trunc) << "{\"format\": ";
  CliResult r = Train();
  EXPECT_CLEAN_FAILURE(r, manifest + ": not valid JSON");
  EXPECT_THAT(r.output, Not(HasSubstr("json.exception")));
  fs::copy_file(root_ / "good" / "manifest.json", Manifest(), fs::copy_options::overwrite_existing);
  EditManifest([](nlohmann::json& j) { j.erase("tokenizer"); });
  EXPECT_CLEAN_FAILURE(Train(), manifest + ": missing key \"tokenizer\"");
  fs::copy_file(root_ / "good" / "manifest.json", Manifest(), fs::copy_options::overwrite_existing);
  EditManifest([](nlohmann::json& j) { j["num_tokens"] = "many"; });
  r = Train();
  EXPECT_CLEAN_FAILURE(r, "\"num_tokens\" must be an integer");
  EXPECT_THAT(r.output, Not(HasSubstr("json.exception")));
}

TEST_F(DataCliTest, TokenCountsThatOverflowAreRefused) {
  EditManifest([](nlohmann::json& j) {
    j["shards"][0]["num_tokens"] = uint64_t{1} << 63;
    j["shards"][1]["num_tokens"] = uint64_t{1} << 63;
  });
  EXPECT_CLEAN_FAILURE(Train(), "\"shards[0].num_tokens\" must be an integer from 0 to 4294967296");
}

TEST_F(DataCliTest, ShardPathsStayInsideTheDataset) {
  EditManifest([](nlohmann::json& j) { j["shards"][0]["file"] = "../good/shard-000000.bin"; });
  EXPECT_CLEAN_FAILURE(Train(), "shard paths must stay inside the manifest's directory");
  EditManifest([](nlohmann::json& j) {
    j["shards"][0]["file"] = (root_ / "good" / "shard-000000.bin").string();
  });
  EXPECT_CLEAN_FAILURE(Train(), "absolute; shard paths are relative");
  fs::create_symlink(root_ / "good" / "shard-000000.bin", dir_ / "ds" / "link.bin");
  EditManifest([](nlohmann::json& j) { j["shards"][0]["file"] = "link.bin"; });
  EXPECT_CLEAN_FAILURE(Train(), "outside the dataset directory");
}

TEST_F(DataCliTest, DuplicateShardsAreRefused) {
  EditManifest([](nlohmann::json& j) {
    j["shards"].push_back(j["shards"][0]);
    j["num_tokens"] =
        j["num_tokens"].get<uint64_t>() + j["shards"][0]["num_tokens"].get<uint64_t>();
  });
  EXPECT_CLEAN_FAILURE(Train(), "already listed as shards[0]: a shard may be listed only once");
}

TEST_F(DataCliTest, NonRegularFilesAreRefusedWithoutBlocking) {
  const fs::path shard = dir_ / "ds" / "shard-000001.bin";
  fs::remove(shard);
  fs::create_directory(shard);
  EXPECT_CLEAN_FAILURE(Train(), "shard-000001.bin is a directory, not a regular file");
  fs::remove(shard);
  ASSERT_EQ(::mkfifo(shard.c_str(), 0600), 0);
  EXPECT_CLEAN_FAILURE(Train(), "shard-000001.bin is a FIFO");
  fs::remove(shard);
  EXPECT_CLEAN_FAILURE(Train(), "shard-000001.bin (shards[1] of");
  const fs::path fifo = dir_ / "manifest.fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  WriteJob(fifo.string());
  EXPECT_CLEAN_FAILURE(Train(), "manifest.fifo is a FIFO");
  WriteJob((dir_ / "ds").string());
  EXPECT_CLEAN_FAILURE(Train(), "is a directory");
}

TEST_F(DataCliTest, OversizedFilesAreRefusedBeforeReading) {
  fs::resize_file(Manifest(), (64u << 20) + 1);  // sparse
  EXPECT_CLEAN_FAILURE(Train(), std::to_string(64u << 20));
  fs::copy_file(root_ / "good" / "manifest.json", Manifest(), fs::copy_options::overwrite_existing);
  const uint64_t limit = 32 + 4 * (uint64_t{1} << 32);
  fs::resize_file(dir_ / "ds" / "shard-000000.bin", limit + 4);  // sparse
  EXPECT_CLEAN_FAILURE(Train(), std::to_string(limit));
}

}  // namespace
}  // namespace qtrain
