#include "tests/integration/http_client.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace qtrain::testing_http {
namespace {

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

absl::Status SplitHostPort(const std::string& host_port, std::string* host, std::string* port) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon + 1 == host_port.size()) {
    return absl::InvalidArgumentError(absl::StrCat("'", host_port, "' is not HOST:PORT"));
  }
  *host = host_port.substr(0, colon);
  *port = host_port.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  return absl::OkStatus();
}

absl::StatusOr<int> Connect(const std::string& host_port, absl::Time deadline) {
  std::string host, port;
  if (absl::Status s = SplitHostPort(host_port, &host, &port); !s.ok()) return s;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return absl::UnavailableError(absl::StrCat(host_port, ": ", gai_strerror(rc)));
  }
  std::string error = "no address";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0 || errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      const int wait_ms =
          static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now())));
      int soerr = 0;
      socklen_t len = sizeof(soerr);
      if (poll(&p, 1, wait_ms) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 &&
          soerr == 0) {
        freeaddrinfo(found);
        return fd;
      }
      error = soerr != 0 ? std::strerror(soerr) : "connect timed out";
    } else {
      error = std::strerror(errno);
    }
    close(fd);
  }
  freeaddrinfo(found);
  return absl::UnavailableError(absl::StrCat("cannot connect to ", host_port, ": ", error));
}

// Waits until `fd` is ready for `events` or the deadline passes.
absl::Status WaitReady(int fd, short events, absl::Time deadline) {
  while (true) {
    const int64_t wait_ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (wait_ms <= 0) return absl::DeadlineExceededError("HTTP request timed out");
    pollfd p{fd, events, 0};
    const int rc = poll(&p, 1, static_cast<int>(wait_ms));
    if (rc > 0) return absl::OkStatus();
    if (rc < 0 && errno != EINTR) return absl::UnavailableError(std::strerror(errno));
  }
}

absl::StatusOr<std::string> Dechunk(const std::string& body) {
  std::string out;
  size_t at = 0;
  while (true) {
    const size_t eol = body.find("\r\n", at);
    if (eol == std::string::npos) return absl::DataLossError("chunked body: no chunk size line");
    std::string size_text = body.substr(at, eol - at);
    if (size_t semi = size_text.find(';'); semi != std::string::npos) size_text.resize(semi);
    uint64_t size = 0;
    if (!absl::SimpleHexAtoi(absl::StripAsciiWhitespace(size_text), &size)) {
      return absl::DataLossError(absl::StrCat("chunked body: bad chunk size '", size_text, "'"));
    }
    at = eol + 2;
    if (size == 0) return out;
    if (at + size > body.size()) return absl::DataLossError("chunked body: truncated chunk");
    out.append(body, at, size);
    at += size + 2;
  }
}

absl::StatusOr<HttpResponse> Parse(const std::string& raw) {
  const size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos) return absl::DataLossError("HTTP response without a header end");
  std::vector<std::string> lines = absl::StrSplit(raw.substr(0, end), "\r\n");
  std::vector<std::string> status_line = absl::StrSplit(lines[0], absl::MaxSplits(' ', 2));
  HttpResponse response;
  if (status_line.size() < 2 || !absl::StartsWith(status_line[0], "HTTP/") ||
      !absl::SimpleAtoi(status_line[1], &response.status)) {
    return absl::DataLossError(absl::StrCat("bad HTTP status line '", lines[0], "'"));
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    response.headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
  }
  response.body = raw.substr(end + 4);
  if (auto it = response.headers.find("transfer-encoding");
      it != response.headers.end() && absl::AsciiStrToLower(it->second) == "chunked") {
    absl::StatusOr<std::string> body = Dechunk(response.body);
    if (!body.ok()) return body.status();
    response.body = *std::move(body);
  }
  return response;
}

}  // namespace

absl::StatusOr<std::string> HttpRawExchange(const std::string& host_port, const std::string& bytes,
                                            absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::StatusOr<int> connected = Connect(host_port, deadline);
  if (!connected.ok()) return connected.status();
  Fd fd{*connected};
  size_t sent = 0;
  while (sent < bytes.size()) {
    if (absl::Status s = WaitReady(fd.fd, POLLOUT, deadline); !s.ok()) return s;
    const ssize_t n = send(fd.fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      return absl::UnavailableError(
          absl::StrCat("send to ", host_port, ": ", std::strerror(errno)));
    }
    if (n > 0) sent += static_cast<size_t>(n);
  }
  std::string raw;
  char buffer[16384];
  while (true) {
    if (absl::Status s = WaitReady(fd.fd, POLLIN, deadline); !s.ok()) return s;
    const ssize_t n = recv(fd.fd, buffer, sizeof(buffer), 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      if (errno == ECONNRESET && !raw.empty()) break;
      return absl::UnavailableError(
          absl::StrCat("recv from ", host_port, ": ", std::strerror(errno)));
    }
    raw.append(buffer, static_cast<size_t>(n));
  }
  return raw;
}

std::string RawStatusLine(const std::string& host_port, const std::string& bytes,
                          absl::Duration timeout) {
  absl::StatusOr<std::string> raw = HttpRawExchange(host_port, bytes, timeout);
  if (!raw.ok()) return "";
  return raw->substr(0, raw->find("\r\n"));
}

absl::StatusOr<HttpResponse> HttpRequest(const std::string& host_port, const std::string& method,
                                         const std::string& target, const std::string& body,
                                         absl::Duration timeout) {
  std::string request = absl::StrCat(method, " ", target, " HTTP/1.1\r\nHost: ", host_port,
                                     "\r\nConnection: close\r\nAccept: */*\r\n");
  if (!body.empty()) {
    absl::StrAppend(&request, "Content-Type: application/x-www-form-urlencoded\r\n");
  }
  absl::StrAppend(&request, "Content-Length: ", body.size(), "\r\n\r\n", body);
  absl::StatusOr<std::string> raw = HttpRawExchange(host_port, request, timeout);
  if (!raw.ok()) return raw.status();
  return Parse(*raw);
}

std::string UrlEncode(const std::string& text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

}  // namespace qtrain::testing_http
