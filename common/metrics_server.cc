#include "common/metrics_server.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "prometheus/text_serializer.h"

// A small HTTP/1.1 server of its own (one thread, poll, one request per connection) rather than
// prometheus-cpp's civetweb exposer: it serves exactly GET /metrics, bounds what a client can
// make it hold, binds IPv6 too, and stops at once.
namespace qtrain {
namespace {

constexpr absl::string_view kMetricsPath = "/metrics";
constexpr size_t kMaxHostBytes = 253;
constexpr size_t kMaxRequestBytes = 16 << 10;  // request line and headers
constexpr size_t kMaxConnections = 16;         // open at once
constexpr absl::Duration kConnectionTimeout = absl::Seconds(10);

struct ListenAddress {
  std::string host;  // without brackets
  bool ipv6 = false;
  int port = 0;
};

bool HostCharsOk(absl::string_view host, bool ipv6) {
  for (char c : host) {
    const bool ok = ipv6 ? (absl::ascii_isxdigit(c) || c == ':' || c == '.')
                         : (absl::ascii_isalnum(c) || c == '-' || c == '.' || c == '_');
    if (!ok) return false;
  }
  return true;
}

absl::StatusOr<ListenAddress> ParseListen(absl::string_view listen, absl::string_view flag) {
  const auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(flag, ": '", listen, "' is not HOST:PORT (", why, ")"));
  };
  ListenAddress out;
  absl::string_view port;
  if (absl::StartsWith(listen, "[")) {
    const size_t close = listen.find(']');
    if (close == absl::string_view::npos) return bad("no ']' after the IPv6 address");
    out.host = std::string(listen.substr(1, close - 1));
    out.ipv6 = true;
    absl::string_view rest = listen.substr(close + 1);
    if (!absl::StartsWith(rest, ":")) return bad("no ':PORT' after ']'");
    port = rest.substr(1);
  } else {
    const size_t colon = listen.rfind(':');
    if (colon == absl::string_view::npos) return bad("no ':PORT'");
    out.host = std::string(listen.substr(0, colon));
    if (absl::StrContains(out.host, ":")) return bad("an IPv6 address needs brackets: [ADDR]:PORT");
    port = listen.substr(colon + 1);
  }
  if (out.host.empty()) return bad("empty host");
  if (out.host.size() > kMaxHostBytes) return bad("host longer than 253 bytes");
  if (!HostCharsOk(out.host, out.ipv6)) return bad("the host has characters no address has");
  if (port.empty()) return bad("empty port");
  for (char c : port) {
    if (!absl::ascii_isdigit(c)) return bad("the port is not a number");
  }
  if (port.size() > 5 || !absl::SimpleAtoi(port, &out.port) || out.port > 65535) {
    return bad("the port is not in [0, 65535]");
  }
  return out;
}

// Binds a listening socket to the first address `address` resolves to that can be bound
// (IPv4 first: what "localhost" usually means to a scraper). Returns the socket.
absl::StatusOr<int> Bind(const ListenAddress& address, absl::string_view listen) {
  addrinfo hints{};
  hints.ai_family = address.ipv6 ? AF_INET6 : AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | (address.ipv6 ? AI_NUMERICHOST : 0);
  addrinfo* found = nullptr;
  const std::string port = absl::StrCat(address.port);
  const int rc = ::getaddrinfo(address.host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0 || found == nullptr) {
    return absl::UnavailableError(absl::StrCat("metrics server: cannot resolve '", address.host,
                                               "' of ", listen, ": ", ::gai_strerror(rc)));
  }
  std::vector<const addrinfo*> candidates;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    if (a->ai_family == AF_INET) candidates.push_back(a);
  }
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    if (a->ai_family == AF_INET6) candidates.push_back(a);
  }
  std::string error = "no IPv4 or IPv6 address";
  for (const addrinfo* a : candidates) {
    const int fd = ::socket(a->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      error = std::strerror(errno);
      continue;
    }
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 64) == 0) {
      ::freeaddrinfo(found);
      return fd;
    }
    error = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return absl::UnavailableError(
      absl::StrCat("metrics server: cannot listen on ", listen, ": ", error));
}

absl::StatusOr<int> BoundPort(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return absl::InternalError(absl::StrCat("metrics server: getsockname: ", std::strerror(errno)));
  }
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
}

std::string Response(int status, absl::string_view reason, absl::string_view content_type,
                     absl::string_view body, absl::string_view extra_headers = "") {
  return absl::StrCat("HTTP/1.1 ", status, " ", reason, "\r\nContent-Type: ", content_type,
                      "\r\nContent-Length: ", body.size(), "\r\n", extra_headers,
                      "Connection: close\r\n\r\n", body);
}

std::string PlainResponse(int status, absl::string_view reason, absl::string_view body,
                          absl::string_view extra_headers = "") {
  return Response(status, reason, "text/plain; charset=utf-8", body, extra_headers);
}

// One client connection: the request read so far, then the response being written.
struct Connection {
  ScopedFd fd;
  absl::Time deadline;
  std::string request;
  std::string response;
  size_t sent = 0;
  bool answering = false;
};

}  // namespace

class MetricsServer::Impl {
 public:
  Impl(ScopedFd listen_fd, ScopedFd wake_read, ScopedFd wake_write,
       std::shared_ptr<prometheus::Registry> registry, std::string address)
      : listen_fd_(std::move(listen_fd)),
        wake_read_(std::move(wake_read)),
        wake_write_(std::move(wake_write)),
        registry_(std::move(registry)),
        address_(std::move(address)) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~Impl() {
    stop_ = true;
    const char byte = 0;
    (void)!::write(wake_write_.get(), &byte, 1);
    thread_.join();
  }
  const std::string& address() const { return address_; }

 private:
  void Loop() {
    std::vector<Connection> connections;
    while (!stop_) {
      std::vector<pollfd> fds = {{listen_fd_.get(), POLLIN, 0}, {wake_read_.get(), POLLIN, 0}};
      absl::Time next_deadline = absl::InfiniteFuture();
      for (const Connection& c : connections) {
        fds.push_back({c.fd.get(), static_cast<short>(c.answering ? POLLOUT : POLLIN), 0});
        next_deadline = std::min(next_deadline, c.deadline);
      }
      const int wait_ms =
          next_deadline == absl::InfiniteFuture()
              ? -1
              : static_cast<int>(std::clamp<int64_t>(
                    absl::ToInt64Milliseconds(next_deadline - absl::Now()) + 1, 0, 60000));
      if (::poll(fds.data(), fds.size(), wait_ms) < 0 && errno != EINTR) return;
      if (stop_) return;
      for (size_t i = 0; i < connections.size(); ++i) {
        if (fds[i + 2].revents != 0) Serve(connections[i], fds[i + 2].revents);
      }
      const absl::Time now = absl::Now();
      std::erase_if(connections,
                    [now](const Connection& c) { return c.fd.get() < 0 || now >= c.deadline; });
      if ((fds[0].revents & POLLIN) != 0) Accept(connections);
    }
  }

  void Accept(std::vector<Connection>& connections) {
    while (true) {
      const int fd = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;  // EAGAIN: none left (other errors: the next poll tries again)
      if (connections.size() >= kMaxConnections) {
        // Full: the oldest connection still sending its request makes room (stalled clients
        // cannot keep a scraper out).
        auto oldest = std::find_if(connections.begin(), connections.end(),
                                   [](const Connection& c) { return !c.answering; });
        if (oldest == connections.end()) {
          ::close(fd);
          continue;
        }
        connections.erase(oldest);
      }
      Connection c;
      c.fd = ScopedFd(fd);
      c.deadline = absl::Now() + kConnectionTimeout;
      connections.push_back(std::move(c));
    }
  }

  void Serve(Connection& c, short revents) {
    if (!c.answering) {
      char buffer[4096];
      const ssize_t n = ::recv(c.fd.get(), buffer, sizeof(buffer), 0);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        c.fd = ScopedFd();  // the client went away
        return;
      }
      if (n > 0) c.request.append(buffer, static_cast<size_t>(n));
      const size_t end = c.request.find("\r\n\r\n");
      if (end == std::string::npos && c.request.size() <= kMaxRequestBytes) return;
      c.response = end == std::string::npos || end > kMaxRequestBytes
                       ? PlainResponse(400, "Bad Request", "bad request: headers too large\n")
                       : MetricsHttpResponse(c.request.substr(0, end), *registry_);
      c.request.clear();
      c.answering = true;
    } else if ((revents & (POLLERR | POLLHUP)) != 0 && (revents & POLLOUT) == 0) {
      c.fd = ScopedFd();
      return;
    }
    while (c.sent < c.response.size()) {
      const ssize_t n =
          ::send(c.fd.get(), c.response.data() + c.sent, c.response.size() - c.sent, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) c.fd = ScopedFd();
        return;
      }
      c.sent += static_cast<size_t>(n);
    }
    ::shutdown(c.fd.get(), SHUT_WR);
    c.fd = ScopedFd();
  }

  ScopedFd listen_fd_;
  ScopedFd wake_read_;
  ScopedFd wake_write_;
  std::shared_ptr<prometheus::Registry> registry_;
  const std::string address_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

std::string MetricsHttpResponse(absl::string_view head, const prometheus::Collectable& metrics) {
  const absl::string_view line = head.substr(0, head.find("\r\n"));
  const std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
  const bool well_formed = parts.size() == 3 && !parts[0].empty() &&
                           absl::StartsWith(parts[1], "/") && absl::StartsWith(parts[2], "HTTP/") &&
                           std::all_of(parts[0].begin(), parts[0].end(), absl::ascii_isupper);
  if (!well_formed) return PlainResponse(400, "Bad Request", "bad request\n");
  if (parts[2] != "HTTP/1.0" && parts[2] != "HTTP/1.1") {
    return PlainResponse(505, "HTTP Version Not Supported", "HTTP/1.0 or HTTP/1.1 only\n");
  }
  const absl::string_view path = parts[1].substr(0, parts[1].find('?'));
  if (path != kMetricsPath) {
    return PlainResponse(404, "Not Found", "not found: only /metrics is served\n");
  }
  if (parts[0] != "GET") {
    return PlainResponse(405, "Method Not Allowed", "method not allowed: GET /metrics\n",
                         "Allow: GET\r\n");
  }
  const std::string body = prometheus::TextSerializer().Serialize(metrics.Collect());
  return Response(200, "OK", "text/plain; version=0.0.4; charset=utf-8", body);
}

absl::Status CheckMetricsListen(const std::string& listen, const std::string& flag) {
  return ParseListen(listen, flag).status();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const MetricsServerOptions& options, std::shared_ptr<prometheus::Registry> registry) {
  if (registry == nullptr) return absl::InvalidArgumentError("metrics server: no registry");
  QTRAIN_ASSIGN_OR_RETURN(ListenAddress address, ParseListen(options.listen, "--metrics-listen"));
  QTRAIN_ASSIGN_OR_RETURN(const int fd, Bind(address, options.listen));
  ScopedFd listen_fd(fd);
  QTRAIN_ASSIGN_OR_RETURN(const int port, BoundPort(listen_fd.get()));
  int wake[2];
  if (::pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    return absl::InternalError(absl::StrCat("metrics server: pipe: ", std::strerror(errno)));
  }
  std::string bound = address.ipv6 ? absl::StrCat("[", address.host, "]:", port)
                                   : absl::StrCat(address.host, ":", port);
  return std::unique_ptr<MetricsServer>(new MetricsServer(
      std::make_unique<Impl>(std::move(listen_fd), ScopedFd(wake[0]), ScopedFd(wake[1]),
                             std::move(registry), std::move(bound))));
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetricsServer::~MetricsServer() = default;

const std::string& MetricsServer::address() const { return impl_->address(); }

}  // namespace qtrain
