#include "common/line_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "common/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class LineReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("line_reader_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string WriteFile(const std::string& name, const std::string& content) {
    const std::string path = dir_ / name;
    EXPECT_TRUE(WriteFileAtomically(path, content).ok());
    return path;
  }

  // All lines of `content`, or the error that stopped the reading.
  absl::StatusOr<std::vector<std::string>> ReadAll(const std::string& content,
                                                   size_t max_line_bytes = kMaxLineBytes) {
    QTRAIN_ASSIGN_OR_RETURN(LineReader reader,
                            LineReader::OpenFile(WriteFile("in.txt", content), max_line_bytes));
    std::vector<std::string> lines;
    std::string line;
    while (true) {
      QTRAIN_ASSIGN_OR_RETURN(const bool more, reader.Next(&line));
      if (!more) break;
      lines.push_back(line);
      EXPECT_EQ(reader.line_number(), lines.size());
    }
    EXPECT_EQ(reader.bytes_consumed(), content.size());
    return lines;
  }

  fs::path dir_;
};

TEST_F(LineReaderTest, SplitsLinesLikeGetline) {
  using V = std::vector<std::string>;
  EXPECT_EQ(*ReadAll(""), V{});
  EXPECT_EQ(*ReadAll("\n"), V{""});
  EXPECT_EQ(*ReadAll("a"), V{"a"});
  EXPECT_EQ(*ReadAll("a\n"), V{"a"});
  EXPECT_EQ(*ReadAll("a\n\nb\r\nc"), (V{"a", "", "b\r", "c"}));
  // Lines that straddle the reader's 64 KiB reads.
  const std::string long_line(200000, 'x');
  EXPECT_EQ(*ReadAll(long_line + "\n" + long_line + "y\nz"), (V{long_line, long_line + "y", "z"}));
}

TEST_F(LineReaderTest, LineLongerThanTheLimitIsRefusedWithItsNumber) {
  auto ok = ReadAll("12345\n1234\n", 5);
  ASSERT_TRUE(ok.ok()) << ok.status();
  auto too_long = ReadAll("12345\n123456\n", 5);
  EXPECT_EQ(too_long.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(too_long.status().message(), HasSubstr("line 2 is longer than the limit of 5 bytes"));
  // Also without a newline at all, and with the default limit, named in MiB.
  auto no_newline = ReadAll(std::string(kMaxLineBytes + 1, 'x'));
  EXPECT_THAT(no_newline.status().message(),
              HasSubstr("line 1 is longer than the limit of 67108864 bytes (64 MiB)"));
}

// std::getline takes a read error for the end of the input; the reader names it.
TEST_F(LineReaderTest, ReadErrorIsAnErrorNotTheEnd) {
  ScopedFd dir(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY));
  ASSERT_GE(dir.get(), 0);
  LineReader reader(dir.get(), "stdin");
  std::string line;
  auto got = reader.Next(&line);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(got.status().message(), HasSubstr("cannot read stdin: Is a directory"));
}

TEST_F(LineReaderTest, ReadErrorAfterSomeLinesNamesTheLastGoodLine) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  ScopedFd read_end(p[0]), write_end(p[1]);
  ASSERT_EQ(::write(write_end.get(), "one\ntwo\n", 8), 8);
  LineReader reader(read_end.get(), "stdin");
  std::string line;
  ASSERT_TRUE(*reader.Next(&line));
  ASSERT_TRUE(*reader.Next(&line));
  EXPECT_EQ(line, "two");
  // The input now fails to read, as a disk with a bad sector would.
  ScopedFd dir(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY));
  ASSERT_EQ(::dup2(dir.get(), read_end.get()), read_end.get());
  auto got = reader.Next(&line);
  EXPECT_FALSE(got.ok());
  EXPECT_THAT(got.status().message(), HasSubstr("cannot read stdin after line 2"));
}

// A non-blocking descriptor (an inherited O_NONBLOCK pipe) is waited on, not taken for the end.
TEST_F(LineReaderTest, WaitsOnNonBlockingPipe) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  ScopedFd read_end(p[0]);
  ASSERT_EQ(::fcntl(read_end.get(), F_SETFL, O_NONBLOCK), 0);
  std::thread writer([fd = p[1]] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    (void)!::write(fd, "late\n", 5);
    ::close(fd);
  });
  LineReader reader(read_end.get(), "stdin");
  std::string line;
  auto got = reader.Next(&line);
  writer.join();
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(*got);
  EXPECT_EQ(line, "late");
  EXPECT_FALSE(*reader.Next(&line));
}

TEST_F(LineReaderTest, OpenFileRefusesFifoWithoutBlocking) {
  const std::string fifo = dir_ / "corpus.jsonl";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  auto reader = LineReader::OpenFile(fifo);
  EXPECT_EQ(reader.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(reader.status().message(), HasSubstr("is a FIFO, not a regular file"));
}

}  // namespace
}  // namespace qtrain
