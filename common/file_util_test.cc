#include "common/file_util.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;

class FileUtilTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("file_util_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  // Files in dir_ other than `keep`.
  int StrayFiles(const std::string& keep) {
    int n = 0;
    for (const auto& entry : fs::directory_iterator(dir_)) n += entry.path().filename() != keep;
    return n;
  }
  fs::path dir_;
};

TEST_F(FileUtilTest, WriteThenReadBack) {
  const std::string path = dir_ / "a.txt";
  ASSERT_TRUE(WriteFileAtomically(path, "hello").ok());
  auto read = ReadFileToString(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, "hello");
  ASSERT_TRUE(WriteFileAtomically(path, "replaced").ok());
  EXPECT_EQ(*ReadFileToString(path), "replaced");
  EXPECT_EQ(StrayFiles("a.txt"), 0);
}

TEST_F(FileUtilTest, ReadErrorsNameThePath) {
  auto missing = ReadFileToString(dir_ / "nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope"), absl::string_view::npos);
  EXPECT_EQ(ReadFileToString(dir_).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(WriteFileAtomically(dir_ / "big", std::string(100, 'x')).ok());
  EXPECT_EQ(ReadFileToString(dir_ / "big", 99).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// A FIFO would block a plain open() forever; devices never end. Both are refused at once, with
// the kind of file named.
TEST_F(FileUtilTest, NonRegularFilesAreRefusedWithoutBlocking) {
  const std::string fifo = dir_ / "spec.yaml";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  for (const auto& [path, kind] :
       std::vector<std::pair<std::string, std::string>>{{fifo, "a FIFO"},
                                                        {"/dev/zero", "a character device"},
                                                        {"/dev/null", "a character device"},
                                                        {dir_.string(), "a directory"}}) {
    SCOPED_TRACE(path);
    auto read = ReadFileToString(path, 1 << 20);
    EXPECT_EQ(read.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(read.status().message().find(kind + ", not a regular file"), absl::string_view::npos)
        << read.status();
    EXPECT_EQ(OpenRegularFile(path).status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(DescribeFileType(path), kind);
  }
  EXPECT_EQ(DescribeFileType(dir_ / "nope"), "missing");
  // A symlink to a regular file is fine.
  ASSERT_TRUE(WriteFileAtomically(dir_ / "real", "x").ok());
  fs::create_symlink(dir_ / "real", dir_ / "link");
  EXPECT_EQ(*ReadFileToString(dir_ / "link"), "x");
  auto opened = OpenRegularFile(dir_ / "real");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(opened->size, 1u);
  EXPECT_EQ(OpenRegularFile(dir_ / "real", 0).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(FileUtilTest, AbandonedWriterLeavesOldFileIntactAndNoTempFile) {
  const std::string path = dir_ / "state.json";
  ASSERT_TRUE(WriteFileAtomically(path, "old content").ok());
  {
    auto writer = AtomicFileWriter::Open(path);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE(writer->Append("new content that is never committed").ok());
    EXPECT_TRUE(fs::exists(writer->temp_path()));
  }  // destroyed without Commit()
  EXPECT_EQ(*ReadFileToString(path), "old content");
  EXPECT_EQ(StrayFiles("state.json"), 0);
}

// A process killed after writing but before the rename must leave the target as it was.
TEST_F(FileUtilTest, KilledBeforeRenameLeavesOldFileIntact) {
  const std::string path = dir_ / "weights.bin";
  const std::string old_content(1 << 20, 'o');
  ASSERT_TRUE(WriteFileAtomically(path, old_content).ok());
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto writer = AtomicFileWriter::Open(path);
    if (!writer.ok()) ::_exit(1);
    if (!writer->Append(std::string(2 << 20, 'n')).ok()) ::_exit(2);
    ::raise(SIGKILL);  // dies with the temporary file written and not renamed
    ::_exit(3);
  }
  int wstatus = 0;
  ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFSIGNALED(wstatus)) << "child exited with " << WEXITSTATUS(wstatus);
  EXPECT_EQ(WTERMSIG(wstatus), SIGKILL);
  EXPECT_EQ(*ReadFileToString(path), old_content);
  // The dead writer's temporary file is left behind, under a name that never collides with
  // the target.
  EXPECT_EQ(StrayFiles("weights.bin"), 1);
}

TEST_F(FileUtilTest, StreamingWriterCommits) {
  const std::string path = dir_ / "big.bin";
  auto writer = AtomicFileWriter::Open(path);
  ASSERT_TRUE(writer.ok());
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(writer->Append(std::string(1000, 'a' + i)).ok());
  EXPECT_EQ(writer->bytes_written(), 10000u);
  EXPECT_FALSE(fs::exists(path));
  ASSERT_TRUE(writer->Commit().ok());
  EXPECT_EQ(fs::file_size(path), 10000u);
  EXPECT_EQ(writer->Append("x").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(StrayFiles("big.bin"), 0);
}

TEST_F(FileUtilTest, OpenInMissingDirectoryFails) {
  auto writer = AtomicFileWriter::Open(dir_ / "no_such_dir" / "x");
  EXPECT_EQ(writer.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(FileUtilTest, ReadFullyReadsToTheEndAndNamesErrors) {
  const std::string path = dir_ / "data";
  ASSERT_TRUE(WriteFileAtomically(path, "0123456789").ok());
  auto file = OpenRegularFile(path);
  ASSERT_TRUE(file.ok());
  char buffer[8];
  EXPECT_EQ(*ReadFully(file->fd.get(), buffer, sizeof(buffer), path), 8u);
  EXPECT_EQ(*ReadFully(file->fd.get(), buffer, sizeof(buffer), path), 2u);
  EXPECT_EQ(*ReadFully(file->fd.get(), buffer, sizeof(buffer), path), 0u);
  ScopedFd dir(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY));
  auto failed = ReadFully(dir.get(), buffer, sizeof(buffer), "the input");
  EXPECT_THAT(failed.status().message(), ::testing::HasSubstr("cannot read the input"));
}

TEST(FormatByteLimitTest, NamesRoundUnits) {
  EXPECT_EQ(FormatByteLimit(5), "5 bytes");
  EXPECT_EQ(FormatByteLimit(size_t{256} << 20), "268435456 bytes (256 MiB)");
  EXPECT_EQ(FormatByteLimit(size_t{1} << 30), "1073741824 bytes (1 GiB)");
  EXPECT_EQ(FormatByteLimit((size_t{1} << 20) + 1), "1048577 bytes");
}

// Runs `body` in a child whose stdout is /dev/full; the child exits 0 when `body` saw the
// failure it expected.
void ExpectWithStdoutFull(void (*body)()) {
  EXPECT_EXIT(
      {
        const int full = ::open("/dev/full", O_WRONLY);
        if (full < 0 || ::dup2(full, 1) != 1) std::_Exit(3);
        body();
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(StdoutTest, WriteStdoutReportsAFullDiskAndKeepsFailing) {
  ExpectWithStdoutFull([] {
    // stdio buffers: the error shows once a buffer's worth could not be written.
    const std::string line(1000, 'x');
    absl::Status status;
    int writes = 0;
    while (status.ok() && writes < 1000) status = WriteStdout(line), ++writes;
    if (status.ok()) std::_Exit(4);
    if (status.message().find("cannot write to stdout: No space left on device") ==
        std::string::npos) {
      std::_Exit(5);
    }
    if (writes > 100) std::_Exit(6);  // stopped within about one buffer
    if (WriteStdout("more").ok() || FlushStdout().ok()) std::_Exit(7);
    std::_Exit(0);
  });
}

// Output from printf and std::cout that was never written is an error at the flush.
TEST(StdoutTest, FlushStdoutReportsLostPrintfAndCoutOutput) {
  ExpectWithStdoutFull([] {
    std::printf("lost\n");
    if (FlushStdout().ok()) std::_Exit(4);
    std::_Exit(0);
  });
  ExpectWithStdoutFull([] {
    std::cout << "lost" << std::endl;
    const absl::Status status = FlushStdout();
    if (status.ok()) std::_Exit(4);
    std::_Exit(0);
  });
}

TEST(StdoutTest, FlushStdoutSucceedsWhenOutputIsWritten) {
  EXPECT_EXIT(
      {
        const int null = ::open("/dev/null", O_WRONLY);
        if (null < 0 || ::dup2(null, 1) != 1) std::_Exit(3);
        std::printf("kept\n");
        std::cout << "kept" << std::endl;
        std::_Exit(WriteStdout("kept\n").ok() && FlushStdout().ok() ? 0 : 4);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace qtrain
