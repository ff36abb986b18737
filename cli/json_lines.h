// JSON lines on stdin and stdout, for encode, decode and score.
//
// stdin is read with LineReader (common/line_reader.h): a read error (stdin is a directory, an
// I/O error) is an error, not the end of the input, and a line may be at most kMaxLineBytes. Each
// result line goes out through WriteStdout, so a failed write (a full disk, a closed pipe) stops
// the command at once.
#ifndef QTRAIN_CLI_JSON_LINES_H_
#define QTRAIN_CLI_JSON_LINES_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace qtrain::cli {

// Parses stdin line `line_number` as one JSON object. Errors name the line and say what is wrong:
// not valid UTF-8 (with the byte offset), not valid JSON (with the parser's reason), or valid JSON
// that is not an object.
absl::StatusOr<nlohmann::json> ParseJsonObjectLine(std::string_view line, uint64_t line_number);

struct StdinLineOptions {
  bool skip_blank_lines = true;  // lines of only spaces, tabs and '\r' produce no output
  bool flush_each_line = false;  // for interactive use: each result is visible at once
};

// Calls `fn` on every line of stdin (without its "\n" or "\r\n") and writes what it returns,
// plus "\n", to stdout; the first error (reading, `fn`, writing) ends the loop. Flushes stdout
// at the end.
absl::Status ForEachStdinLine(
    absl::FunctionRef<absl::StatusOr<std::string>(const std::string& line, uint64_t line_number)>
        fn,
    StdinLineOptions options = {});

}  // namespace qtrain::cli

#endif  // QTRAIN_CLI_JSON_LINES_H_
