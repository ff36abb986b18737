#include "common/line_reader.h"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace qtrain {
namespace {

constexpr size_t kReadChunk = size_t{1} << 16;

}  // namespace

LineReader::LineReader(int fd, std::string name, size_t max_line_bytes)
    : fd_(fd), name_(std::move(name)), max_line_bytes_(max_line_bytes) {}

absl::StatusOr<LineReader> LineReader::OpenFile(const std::string& path, size_t max_line_bytes) {
  QTRAIN_ASSIGN_OR_RETURN(RegularFile file, OpenRegularFile(path));
  LineReader reader(file.fd.get(), path, max_line_bytes);
  reader.owned_ = std::move(file.fd);
  return reader;
}

absl::Status LineReader::Fill() {
  if (start_ > 0) {  // keep only the unreturned part: memory stays within one line
    buffer_.erase(0, start_);
    scanned_ -= start_;
    start_ = 0;
  }
  const size_t old = buffer_.size();
  buffer_.resize(old + kReadChunk);
  while (true) {
    const ssize_t n = ::read(fd_, buffer_.data() + old, kReadChunk);
    if (n >= 0) {
      buffer_.resize(old + static_cast<size_t>(n));
      if (n == 0) eof_ = true;
      return absl::OkStatus();
    }
    const int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) {  // a non-blocking pipe: wait for data
      struct pollfd p = {fd_, POLLIN, 0};
      ::poll(&p, 1, -1);
      continue;
    }
    buffer_.resize(old);
    const std::string where =
        line_number_ == 0 ? name_ : absl::StrCat(name_, " after line ", line_number_);
    const absl::StatusCode code =
        err == EISDIR ? absl::StatusCode::kFailedPrecondition : absl::StatusCode::kDataLoss;
    return absl::Status(code, absl::StrCat("cannot read ", where, ": ", std::strerror(err)));
  }
}

absl::StatusOr<bool> LineReader::Next(std::string* line) {
  const auto too_long = [&] {
    return absl::InvalidArgumentError(absl::StrCat(name_, " line ", line_number_ + 1,
                                                   " is longer than the limit of ",
                                                   FormatByteLimit(max_line_bytes_)));
  };
  while (true) {
    const size_t newline = buffer_.find('\n', scanned_);
    if (newline != std::string::npos) {
      const size_t length = newline - start_;
      if (length > max_line_bytes_) return too_long();
      line->assign(buffer_, start_, length);
      start_ = scanned_ = newline + 1;
      ++line_number_;
      bytes_consumed_ += length + 1;
      return true;
    }
    scanned_ = buffer_.size();
    const size_t pending = buffer_.size() - start_;
    if (pending > max_line_bytes_) return too_long();
    if (eof_) {
      if (pending == 0) return false;
      line->assign(buffer_, start_, pending);
      start_ = scanned_ = buffer_.size();
      ++line_number_;
      bytes_consumed_ += pending;
      return true;
    }
    QTRAIN_RETURN_IF_ERROR(Fill());
  }
}

}  // namespace qtrain
