// Line-by-line reading of stdin or of a file, with read(2).
//
// Unlike std::getline, a read error (stdin redirected from a directory, an I/O error) is
// reported, never taken for the end of the input, and a line longer than a limit is refused
// before more of it is buffered, so a newline-free input cannot take all memory.
#ifndef QTRAIN_COMMON_LINE_READER_H_
#define QTRAIN_COMMON_LINE_READER_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/file_util.h"

namespace qtrain {

// The longest line the JSON-lines commands (encode, decode, score) read from stdin, and the
// longest line of a .jsonl corpus file.
inline constexpr size_t kMaxLineBytes = size_t{64} << 20;

class LineReader {
 public:
  // Reads `fd`, which stays open afterwards; `name` ("stdin", a path) appears in messages.
  LineReader(int fd, std::string name, size_t max_line_bytes = kMaxLineBytes);

  // Reads fd 0.
  static LineReader Stdin(size_t max_line_bytes = kMaxLineBytes) {
    return LineReader(0, "stdin", max_line_bytes);
  }

  // Opens a regular file (see OpenRegularFile) and reads it; the reader owns the descriptor.
  static absl::StatusOr<LineReader> OpenFile(const std::string& path,
                                             size_t max_line_bytes = kMaxLineBytes);

  LineReader(LineReader&&) = default;
  LineReader& operator=(LineReader&&) = default;

  // Stores the next line in *line, without its '\n'; a last line without one counts too. False
  // at the end of the input. Errors: the read failed (naming the errno and the line reached), or
  // the line is longer than the limit (naming the line number and the limit).
  absl::StatusOr<bool> Next(std::string* line);

  // The number of the line Next() returned last (from 1).
  uint64_t line_number() const { return line_number_; }
  // Bytes of input taken up by the lines returned so far, newlines included.
  uint64_t bytes_consumed() const { return bytes_consumed_; }
  const std::string& name() const { return name_; }

 private:
  // Appends what one read(2) returns to buffer_; sets eof_ at the end of the input.
  absl::Status Fill();

  ScopedFd owned_;
  int fd_ = -1;
  std::string name_;
  size_t max_line_bytes_ = 0;
  std::string buffer_;  // buffer_[start_, end) is read but not yet returned
  size_t start_ = 0;
  size_t scanned_ = 0;  // buffer_[start_, scanned_) holds no '\n'
  bool eof_ = false;
  uint64_t line_number_ = 0;
  uint64_t bytes_consumed_ = 0;
};

}  // namespace qtrain

#endif  // QTRAIN_COMMON_LINE_READER_H_
