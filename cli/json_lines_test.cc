#include "cli/json_lines.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain::cli {
namespace {

using ::testing::HasSubstr;

TEST(ParseJsonObjectLineTest, SaysWhatIsWrongWithTheLine) {
  auto ok = ParseJsonObjectLine(R"({"text": "caf\u00e9 ok"})", 1);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)["text"], "caf\xC3\xA9 ok");
  // A bad byte inside a string: named as UTF-8 with its offset, not as a JSON problem.
  auto bad_utf8 = ParseJsonObjectLine("{\"text\": \"ab\xFF\"}", 7);
  EXPECT_EQ(bad_utf8.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad_utf8.status().message(), HasSubstr("stdin line 7: not valid UTF-8"));
  EXPECT_THAT(bad_utf8.status().message(), HasSubstr("byte offset 12"));
  EXPECT_THAT(ParseJsonObjectLine("{\"text\": ", 2).status().message(),
              HasSubstr("stdin line 2: not valid JSON"));
  EXPECT_THAT(ParseJsonObjectLine("[1, 2]", 3).status().message(),
              HasSubstr("stdin line 3: expected a JSON object, got array"));
}

// Runs ForEachStdinLine in a child with stdin from `stdin_path` and stdout to `stdout_path`;
// the child exits 0 if the loop's status contains `needle` (or is OK when `needle` is empty).
void ExpectLoopStatus(const std::string& stdin_path, const std::string& stdout_path,
                      const std::string& needle) {
  EXPECT_EXIT(
      {
        const int in = ::open(stdin_path.c_str(), O_RDONLY);
        const int out = ::open(stdout_path.c_str(), O_WRONLY);
        if (in < 0 || out < 0 || ::dup2(in, 0) != 0 || ::dup2(out, 1) != 1) std::_Exit(3);
        const absl::Status status =
            ForEachStdinLine([](const std::string& line, uint64_t) -> absl::StatusOr<std::string> {
              return std::string(2000, 'x');
            });
        if (needle.empty()) std::_Exit(status.ok() ? 0 : 4);
        std::_Exit(std::string(status.message()).find(needle) != std::string::npos ? 0 : 5);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(ForEachStdinLineTest, ReadAndWriteErrorsAreErrors) {
  const std::string input = ::testing::TempDir() + "/json_lines_input";
  {
    const int fd = ::open(input.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    std::string lines;
    for (int i = 0; i < 1000; ++i) lines += "{}\n";
    ASSERT_EQ(::write(fd, lines.data(), lines.size()), static_cast<ssize_t>(lines.size()));
    ::close(fd);
  }
  ExpectLoopStatus(input, "/dev/null", "");
  // stdin redirected from a directory: not an empty input.
  ExpectLoopStatus(::testing::TempDir(), "/dev/null", "cannot read stdin: Is a directory");
  ExpectLoopStatus(input, "/dev/full", "cannot write to stdout: No space left on device");
}

}  // namespace
}  // namespace qtrain::cli
