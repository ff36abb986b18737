// Long pieces through the real `qtrain` binary under an address-space limit and a timeout: a
// line of tens of megabytes of one letter (one pre-token, merged as a whole) must encode and
// tokenize in memory linear in its length with a small constant, not crash or run out.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/integration/cli_process.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using testing_cli::CliOptions;
using testing_cli::CliResult;
using testing_cli::QtrainBinary;
using testing_cli::RunCli;

// 12 MiB of one letter under 512 MiB of address space: a merge loop taking about 43 bytes per
// byte (540 MB here) fails; the current one takes about 17, plus the text and the output.
constexpr size_t kLongLine = size_t{12} << 20;
constexpr uint64_t kAddressSpace = uint64_t{512} << 20;
constexpr double kTimeout = 120;

std::string Qwen2TokenizerPath() {
  const char* root = std::getenv("QTRAIN_SOURCE_DIR");
  return std::string(root != nullptr ? root : ".") + "/tokenizer/testdata/qwen2/tokenizer.json";
}

class BpeCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("qtrain_bpe_cli_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Writes `content` to dir_/name and returns the path.
  fs::path Write(const std::string& name, const std::string& content) {
    const fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }

  // `qtrain encode` of one {"text": text} line; the output line in *out.
  CliResult Encode(const std::string& name, const std::string& text, std::string* out) {
    const fs::path in = Write(name + ".jsonl", "{\"text\": \"" + text + "\"}\n");
    CliOptions o;
    o.stdin_path = in;
    o.stdout_path = dir_ / (name + ".out");
    o.address_space_bytes = kAddressSpace;
    o.timeout_seconds = kTimeout;
    const CliResult r = RunCli({QtrainBinary(), "encode", "--tokenizer", Qwen2TokenizerPath()},
                               dir_ / (name + ".log"), o);
    absl::StatusOr<std::string> text_out = ReadFileToString(o.stdout_path, size_t{1} << 30);
    *out = text_out.ok() ? *text_out : "";
    return r;
  }

  fs::path dir_;
};

// Qwen2's merges turn a run of 'a' into 8-letter tokens, so a line of N letters (N a multiple
// of 8) gives N/8 copies of one id: the id the same binary gives for the 16-letter line, not a
// number written here.
TEST_F(BpeCliTest, EncodesALongOneLetterLineInLinearMemory) {
  std::string short_out;
  const CliResult s = Encode("short", std::string(16, 'a'), &short_out);
  ASSERT_TRUE(s.exited && s.exit_code == 0) << s;
  ASSERT_THAT(short_out, ::testing::StartsWith("{\"ids\":["));
  const std::string ids16 = short_out.substr(8, short_out.find(']') - 8);  // "X,X"
  const std::string id8 = ids16.substr(0, ids16.find(','));
  ASSERT_EQ(ids16, id8 + "," + id8);

  std::string out;
  const CliResult r = Encode("long", std::string(kLongLine, 'a'), &out);
  ASSERT_FALSE(r.timed_out) << r;
  ASSERT_EQ(r.signal, 0) << r;
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r;
  std::string want = "{\"ids\":[";
  want.reserve(kLongLine);
  for (size_t k = 0; k < kLongLine / 8; ++k) want += id8 + ",";
  want.back() = ']';
  want += "}\n";
  EXPECT_TRUE(out == want) << "output of " << out.size() << " bytes differs from the "
                           << want.size() << " expected";
}

TEST_F(BpeCliTest, TokenizesALongOneLetterFileInLinearMemory) {
  const fs::path in = Write("letters.txt", std::string(kLongLine, 'a'));
  CliOptions o;
  o.address_space_bytes = kAddressSpace;
  o.timeout_seconds = kTimeout;
  const fs::path out = dir_ / "shards";
  const CliResult r = RunCli({QtrainBinary(), "tokenize", "--tokenizer", Qwen2TokenizerPath(),
                              "--out", out.string(), "--quiet", in.string()},
                             dir_ / "tokenize.log", o);
  ASSERT_FALSE(r.timed_out) << r;
  ASSERT_EQ(r.signal, 0) << r;
  ASSERT_TRUE(r.exited && r.exit_code == 0) << r;
  // kLongLine / 8 tokens and the end-of-text token.
  EXPECT_THAT(r.output, ::testing::HasSubstr("1 documents, " + std::to_string(kLongLine / 8 + 1) +
                                             " tokens"));
  EXPECT_TRUE(fs::exists(out / "manifest.json"));
}

}  // namespace
}  // namespace qtrain
