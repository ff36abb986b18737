#include "common/metrics_server.h"

#include <dlfcn.h>
#include <netdb.h>
#include <pthread.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <utility>
#include <vector>

#include "CivetServer.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "civetweb.h"
#include "common/status_macros.h"
#include "prometheus/exposer.h"

// civetweb as Debian builds it gives its threads a fixed 100 KiB stack, and glibc carves the
// process's static TLS out of that: in a process with large TLS (OpenBLAS alone takes 60 KiB)
// too little is left, and civetweb's error responses (16+ KiB of buffers) overflow it. Stack
// sizes asked for below kMinThreadStack are raised to it, for every caller in the process.
namespace {
constexpr size_t kMinThreadStack = size_t{1} << 20;
}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t size) {
  using Fn = int (*)(pthread_attr_t*, size_t);
  static const Fn real = reinterpret_cast<Fn>(::dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  if (real == nullptr) return EINVAL;
  return real(attr, std::max(size, kMinThreadStack));
}

namespace qtrain {
namespace {

constexpr absl::string_view kMetricsPath = "/metrics";
constexpr size_t kMaxHostBytes = 253;
constexpr unsigned kCivetIpv6 = 8;  // mg_check_feature's bit for IPv6 support

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

// The numeric address civetweb binds ("127.0.0.1", "[::1]"): civetweb takes no host names.
absl::StatusOr<std::string> NumericHost(const ListenAddress& address, absl::string_view listen) {
  addrinfo hints{};
  hints.ai_family = address.ipv6 ? AF_INET6 : AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | (address.ipv6 ? AI_NUMERICHOST : 0);
  addrinfo* found = nullptr;
  const int rc = ::getaddrinfo(address.host.c_str(), nullptr, &hints, &found);
  if (rc != 0 || found == nullptr) {
    return absl::UnavailableError(absl::StrCat("metrics server: cannot resolve '", address.host,
                                               "' of ", listen, ": ", ::gai_strerror(rc)));
  }
  // The first IPv4 address if there is one (what "localhost" usually means to a scraper).
  const addrinfo* pick = found;
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      pick = a;
      break;
    }
  }
  char text[NI_MAXHOST];
  const int name_rc = ::getnameinfo(pick->ai_addr, pick->ai_addrlen, text, sizeof(text), nullptr, 0,
                                    NI_NUMERICHOST);
  const bool v6 = pick->ai_family == AF_INET6;
  ::freeaddrinfo(found);
  if (name_rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics server: cannot resolve '", address.host, "' of ", listen));
  }
  return v6 ? absl::StrCat("[", text, "]") : std::string(text);
}

// A short plain-text answer. (Not mg_send_http_error: it formats into a fixed buffer and
// has crashed in some processes.)
void Answer(mg_connection* conn, int status, absl::string_view body, const char* allow) {
  mg_response_header_start(conn, status);
  mg_response_header_add(conn, "Content-Type", "text/plain; charset=utf-8", -1);
  if (allow != nullptr) mg_response_header_add(conn, "Allow", allow, -1);
  const std::string length = absl::StrCat(body.size());
  mg_response_header_add(conn, "Content-Length", length.c_str(), -1);
  mg_response_header_send(conn);
  if (!body.empty()) mg_write(conn, body.data(), body.size());
}

// Answers everything but GET /metrics before the exposer's handler sees it: civetweb
// would otherwise hand it /metrics/anything too.
int BeginRequest(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  const absl::string_view uri = info->local_uri != nullptr ? info->local_uri : "";
  const absl::string_view method = info->request_method != nullptr ? info->request_method : "";
  if (uri != kMetricsPath) {
    Answer(conn, 404, "not found: only /metrics is served\n", nullptr);
    return 404;
  }
  if (method != "GET") {
    Answer(conn, 405, "method not allowed: GET /metrics\n", "GET");
    return 405;
  }
  return 0;  // the exposer serves it
}

// civetweb's own messages (a client that went away, a bad request) are no daemon events.
int QuietLog(const mg_connection*, const char*) { return 1; }

}  // namespace

class MetricsServer::Impl {
 public:
  std::unique_ptr<prometheus::Exposer> exposer;
  std::shared_ptr<prometheus::Registry> registry;
  std::string address;
};

absl::Status CheckMetricsListen(const std::string& listen, const std::string& flag) {
  return ParseListen(listen, flag).status();
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const MetricsServerOptions& options, std::shared_ptr<prometheus::Registry> registry) {
  if (registry == nullptr) return absl::InvalidArgumentError("metrics server: no registry");
  QTRAIN_ASSIGN_OR_RETURN(ListenAddress address, ParseListen(options.listen, "--metrics-listen"));
  QTRAIN_ASSIGN_OR_RETURN(std::string numeric, NumericHost(address, options.listen));
  if (absl::StartsWith(numeric, "[") && mg_check_feature(kCivetIpv6) == 0) {
    return absl::UnavailableError(absl::StrCat("metrics server: cannot listen on ", options.listen,
                                               ": this build's HTTP server has no IPv6 support"));
  }
  static const CivetCallbacks* const callbacks = [] {
    auto* c = new CivetCallbacks();
    c->begin_request = BeginRequest;
    c->log_message = QuietLog;
    return c;
  }();
  std::vector<std::string> civet_options = {
      "listening_ports",    absl::StrCat(numeric, ":", address.port),
      "num_threads",        "2",
      "request_timeout_ms", "10000",
      "enable_keep_alive",  "no"};
  auto impl = std::make_unique<Impl>();
  try {
    impl->exposer = std::make_unique<prometheus::Exposer>(std::move(civet_options), callbacks);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics server: cannot listen on ", options.listen, ": ", e.what()));
  }
  const std::vector<int> ports = impl->exposer->GetListeningPorts();
  if (ports.size() != 1 || ports[0] <= 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics server: no port bound for ", options.listen));
  }
  impl->registry = std::move(registry);
  impl->exposer->RegisterCollectable(impl->registry, std::string(kMetricsPath));
  impl->address = address.ipv6 ? absl::StrCat("[", address.host, "]:", ports[0])
                               : absl::StrCat(address.host, ":", ports[0]);
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetricsServer::~MetricsServer() {
  // Stop serving before the registry reference goes.
  impl_->exposer.reset();
}

const std::string& MetricsServer::address() const { return impl_->address; }

}  // namespace qtrain
