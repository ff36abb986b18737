// MetricsServer against real HTTP requests on ephemeral ports: /metrics serves the registry,
// every other path and method is refused, and bad or taken addresses are clear errors.
#include "common/metrics_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "tests/integration/http_client.h"

namespace qtrain {

// Static TLS as large as a worker's (OpenBLAS alone has 60 KiB), which glibc carves out of
// every thread's stack: the HTTP server's threads must still have room to answer. (External
// linkage keeps it in the binary.)
thread_local std::array<char, 96 * 1024> metrics_test_tls_ballast;

namespace {

using ::qtrain::testing_http::HttpGet;
using ::qtrain::testing_http::HttpRequest;
using ::qtrain::testing_http::HttpResponse;
using ::qtrain::testing_http::RawStatusLine;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

std::shared_ptr<prometheus::Registry> RegistryWithGauge(double value) {
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildGauge()
      .Name("qtrain_test_value")
      .Help("A value for the test.")
      .Register(*registry)
      .Add({{"kind", "probe"}})
      .Set(value);
  return registry;
}

std::unique_ptr<MetricsServer> StartOrDie(const std::string& listen,
                                          std::shared_ptr<prometheus::Registry> registry) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start({.listen = listen}, std::move(registry));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? std::move(*server) : nullptr;
}

TEST(MetricsServerTest, ServesTheRegistryAtMetrics) {
  metrics_test_tls_ballast[0] = 1;
  auto registry = RegistryWithGauge(42.5);
  std::unique_ptr<MetricsServer> server = StartOrDie("127.0.0.1:0", registry);
  ASSERT_NE(server, nullptr);
  EXPECT_THAT(server->address(), StartsWith("127.0.0.1:"));
  EXPECT_THAT(server->address(), Not(HasSubstr(":0")));

  absl::StatusOr<HttpResponse> response = HttpGet(server->address(), "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_THAT(response->headers["content-type"], HasSubstr("text/plain"));
  EXPECT_THAT(response->body, HasSubstr("# TYPE qtrain_test_value gauge"));
  EXPECT_THAT(response->body, HasSubstr("qtrain_test_value{kind=\"probe\"} 42.5"));

  // A metric registered later shows up in the next scrape.
  prometheus::BuildCounter()
      .Name("qtrain_test_events_total")
      .Help("Events.")
      .Register(*registry)
      .Add({})
      .Increment(3);
  response = HttpGet(server->address(), "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(response->body, HasSubstr("qtrain_test_events_total 3"));
}

TEST(MetricsServerTest, OtherPathsAreNotFound) {
  std::unique_ptr<MetricsServer> server = StartOrDie("127.0.0.1:0", RegistryWithGauge(1));
  ASSERT_NE(server, nullptr);
  for (const char* path :
       {"/", "/metrics/x", "/favicon.ico", "/metricsx", "/index.html", "/metrics/../etc/passwd"}) {
    absl::StatusOr<HttpResponse> response = HttpGet(server->address(), path);
    ASSERT_TRUE(response.ok()) << path << ": " << response.status();
    EXPECT_EQ(response->status, 404) << path;
    EXPECT_THAT(response->body, Not(HasSubstr("qtrain_test_value"))) << path;
  }
  // A query string is no other path.
  absl::StatusOr<HttpResponse> response = HttpGet(server->address(), "/metrics?x=1");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
}

TEST(MetricsServerTest, OtherMethodsAreRefused) {
  std::unique_ptr<MetricsServer> server = StartOrDie("127.0.0.1:0", RegistryWithGauge(1));
  ASSERT_NE(server, nullptr);
  for (const char* method : {"POST", "PUT", "DELETE", "HEAD", "OPTIONS"}) {
    absl::StatusOr<HttpResponse> response =
        HttpRequest(server->address(), method, "/metrics", "a=b");
    ASSERT_TRUE(response.ok()) << method << ": " << response.status();
    EXPECT_EQ(response->status, 405) << method;
    EXPECT_THAT(response->body, Not(HasSubstr("qtrain_test_value"))) << method;
  }
}

TEST(MetricsServerTest, MalformedRequestsAreBadRequestsAndServingGoesOn) {
  std::unique_ptr<MetricsServer> server = StartOrDie("127.0.0.1:0", RegistryWithGauge(5));
  ASSERT_NE(server, nullptr);
  for (const std::string& request :
       {std::string("GARBAGE\r\n\r\n"), std::string("\x01\x02\x03\r\n\r\n"),
        absl::StrCat("GET /metrics HTTP/1.1\r\nX: ", std::string(70000, 'a'), "\r\n\r\n")}) {
    EXPECT_THAT(RawStatusLine(server->address(), request), HasSubstr(" 400 "))
        << request.substr(0, 20);
  }
  absl::StatusOr<HttpResponse> response = HttpGet(server->address(), "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(response->body, HasSubstr("qtrain_test_value{kind=\"probe\"} 5"));
}

// Connects to the server on loopback and sends nothing (a stalled or hostile client).
int ConnectIdle(const std::string& address) {
  int port = 0;
  if (!absl::SimpleAtoi(address.substr(address.rfind(':') + 1), &port)) return -1;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

TEST(MetricsServerTest, StalledClientsDoNotHoldUpAScrape) {
  std::unique_ptr<MetricsServer> server = StartOrDie("127.0.0.1:0", RegistryWithGauge(4));
  ASSERT_NE(server, nullptr);
  // More idle connections than the server keeps: the extra ones are closed, the scrape is
  // still answered at once.
  std::vector<int> idle;
  for (int i = 0; i < 40; ++i) idle.push_back(ConnectIdle(server->address()));
  absl::StatusOr<HttpResponse> response = HttpGet(server->address(), "/metrics", absl::Seconds(3));
  for (int fd : idle) {
    if (fd >= 0) ::close(fd);
  }
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
  EXPECT_THAT(response->body, HasSubstr("qtrain_test_value{kind=\"probe\"} 4"));
}

TEST(MetricsServerTest, ServesIpv6Loopback) {
  // Skipped where the host has no IPv6 loopback.
  const int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_addr = in6addr_loopback;
  const bool has_v6 = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  if (fd >= 0) ::close(fd);
  if (!has_v6) GTEST_SKIP() << "no IPv6 loopback";
  std::unique_ptr<MetricsServer> server = StartOrDie("[::1]:0", RegistryWithGauge(7));
  ASSERT_NE(server, nullptr);
  EXPECT_THAT(server->address(), StartsWith("[::1]:"));
  absl::StatusOr<HttpResponse> response = HttpGet(server->address(), "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_THAT(response->body, HasSubstr("qtrain_test_value{kind=\"probe\"} 7"));
}

TEST(MetricsServerTest, HostNameIsResolved) {
  std::unique_ptr<MetricsServer> server = StartOrDie("localhost:0", RegistryWithGauge(3));
  ASSERT_NE(server, nullptr);
  EXPECT_THAT(server->address(), StartsWith("localhost:"));
  const std::string port = server->address().substr(std::string("localhost:").size());
  absl::StatusOr<HttpResponse> response = HttpGet(absl::StrCat("127.0.0.1:", port), "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
}

TEST(MetricsServerTest, StopsServingWhenDestroyed) {
  std::unique_ptr<MetricsServer> server = StartOrDie("127.0.0.1:0", RegistryWithGauge(1));
  ASSERT_NE(server, nullptr);
  const std::string address = server->address();
  server.reset();
  absl::StatusOr<HttpResponse> response = HttpGet(address, "/metrics", absl::Seconds(2));
  EXPECT_FALSE(response.ok());
}

TEST(MetricsServerTest, MalformedListenIsInvalidArgumentNamingTheFlag) {
  for (const char* listen :
       {":", "host", "h:99999", "h:-1", "h:abc", "", "h:", ":80", "::1:80", "[::1]", "[::1:80",
        "[::1]80", "h:+80", "h:1 ", "h o:80", "h:123456", "[zz]:80"}) {
    const absl::Status status = CheckMetricsListen(listen, "--metrics-listen");
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << "'" << listen << "': " << status;
    EXPECT_THAT(status.message(), HasSubstr("--metrics-listen")) << listen;
    absl::StatusOr<std::unique_ptr<MetricsServer>> server =
        MetricsServer::Start({.listen = listen}, RegistryWithGauge(1));
    EXPECT_TRUE(absl::IsInvalidArgument(server.status())) << listen;
    EXPECT_THAT(server.status().message(), HasSubstr("--metrics-listen")) << listen;
  }
  for (const char* listen : {"127.0.0.1:0", "0.0.0.0:9402", "localhost:65535", "[::1]:0",
                             "[::]:9402", "my-host.example.com:80"}) {
    EXPECT_TRUE(CheckMetricsListen(listen, "--metrics-listen").ok()) << listen;
  }
}

TEST(MetricsServerTest, TakenPortIsUnavailableNamingTheAddress) {
  std::unique_ptr<MetricsServer> first = StartOrDie("127.0.0.1:0", RegistryWithGauge(1));
  ASSERT_NE(first, nullptr);
  absl::StatusOr<std::unique_ptr<MetricsServer>> second =
      MetricsServer::Start({.listen = first->address()}, RegistryWithGauge(2));
  EXPECT_TRUE(absl::IsUnavailable(second.status())) << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr(first->address()));
  // The first one still serves.
  absl::StatusOr<HttpResponse> response = HttpGet(first->address(), "/metrics");
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->status, 200);
}

TEST(MetricsServerTest, UnresolvableHostIsUnavailable) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start({.listen = "no-such-host.invalid:0"}, RegistryWithGauge(1));
  EXPECT_TRUE(absl::IsUnavailable(server.status())) << server.status();
  EXPECT_THAT(server.status().message(), HasSubstr("no-such-host.invalid"));
}

TEST(MetricsServerTest, NullRegistryIsRefused) {
  absl::StatusOr<std::unique_ptr<MetricsServer>> server =
      MetricsServer::Start({.listen = "127.0.0.1:0"}, nullptr);
  EXPECT_TRUE(absl::IsInvalidArgument(server.status())) << server.status();
}

}  // namespace
}  // namespace qtrain
