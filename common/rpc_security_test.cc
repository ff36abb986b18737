#include "common/rpc_security.h"

#include <sys/stat.h>

#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace qtrain {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string WriteFile(const std::string& name, const std::string& content) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

std::string Message(const absl::Status& status) { return std::string(status.message()); }

TEST(IsLoopbackAddressTest, Table) {
  struct Case {
    const char* address;
    bool loopback;
  };
  const Case cases[] = {
      {"127.0.0.1:7070", true},
      {"127.0.0.1:0", true},
      {"127.1.2.3:80", true},
      {"127.255.255.254:1", true},
      {"localhost:7070", true},
      {"LocalHost:7070", true},
      {"[::1]:7070", true},
      {"[0:0:0:0:0:0:0:1]:1", true},
      {"[::ffff:127.0.0.1]:1", true},
      {"0.0.0.0:7070", false},
      {"[::]:7070", false},
      {"10.0.0.1:7070", false},
      {"128.0.0.1:7070", false},
      {"192.168.1.1:7070", false},
      {"example.com:7070", false},
      {"localhost.evil.com:1", false},
      {"127.0.0.1.nip.io:1", false},
      {"[::2]:7070", false},
      {"127.0.0.1", false},
      {"::1:7070", false},
      {"127.0.0.1:99999", false},
      {"", false},
      {":7070", false},
      {"127.0.0.256:1", false},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(IsLoopbackAddress(c.address), c.loopback) << c.address;
  }
}

TEST(SplitHostPortTest, ValidAddresses) {
  auto v4 = SplitHostPort("127.0.0.1:7070");
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->first, "127.0.0.1");
  EXPECT_EQ(v4->second, 7070);
  auto v6 = SplitHostPort("[::1]:0");
  ASSERT_TRUE(v6.ok()) << v6.status();
  EXPECT_EQ(v6->first, "::1");
  EXPECT_EQ(v6->second, 0);
  auto name = SplitHostPort("coordinator-1.example.com:65535");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(name->first, "coordinator-1.example.com");
  EXPECT_EQ(name->second, 65535);
}

TEST(SplitHostPortTest, MalformedAddressesAreNamed) {
  for (const char* address :
       {"127.0.0.1", "127.0.0.1:", ":7070", "host:65536", "host:-1", "host:12a", "[::1]", "[::1",
        "[::1]7070", "::1:7070", "[nope]:1", "ho st:1", "host:123456", ""}) {
    auto split = SplitHostPort(address);
    ASSERT_FALSE(split.ok()) << address;
    EXPECT_EQ(split.status().code(), absl::StatusCode::kInvalidArgument) << address;
    EXPECT_THAT(Message(split.status()), HasSubstr(std::string("\"") + address + "\""));
  }
}

TEST(JoinHostPortTest, BracketsIpv6) {
  EXPECT_EQ(JoinHostPort("127.0.0.1", 80), "127.0.0.1:80");
  EXPECT_EQ(JoinHostPort("::1", 80), "[::1]:80");
  EXPECT_EQ(JoinHostPort("localhost", 0), "localhost:0");
}

TEST(ConstantTimeEqualsTest, ComparesExactly) {
  EXPECT_TRUE(ConstantTimeEquals("secret-token", "secret-token"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
  EXPECT_FALSE(ConstantTimeEquals("secret-token", "secret-tokeN"));
  EXPECT_FALSE(ConstantTimeEquals("secret-token", "secret-token "));
  EXPECT_FALSE(ConstantTimeEquals("secret-token", "secret"));
  EXPECT_FALSE(ConstantTimeEquals("", "x"));
  EXPECT_FALSE(ConstantTimeEquals(std::string("a\0b", 3), std::string("a\0c", 3)));
  const std::string long_token(10000, 'k');
  EXPECT_TRUE(ConstantTimeEquals(long_token, std::string(10000, 'k')));
  EXPECT_FALSE(ConstantTimeEquals(long_token, std::string(9999, 'k')));
}

TEST(ReadTokenFileTest, TrimsWhitespace) {
  auto token = ReadTokenFile(WriteFile("token_ok", "  s3cr3t-Token_+/=\n\n"));
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "s3cr3t-Token_+/=");
}

TEST(ReadTokenFileTest, ErrorsNeverQuoteTheToken) {
  const std::string missing = ::testing::TempDir() + "/no_such_token";
  auto status = ReadTokenFile(missing).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr(missing));

  status = ReadTokenFile(WriteFile("token_empty", " \n\t\n")).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("empty"));

  status = ReadTokenFile(WriteFile("token_binary", "topsecret\x01value")).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("printable ASCII"));
  EXPECT_THAT(Message(status), Not(HasSubstr("topsecret")));

  status = ReadTokenFile(WriteFile("token_utf8", "topsecret\xc3\xa9")).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), Not(HasSubstr("topsecret")));

  status = ReadTokenFile(WriteFile("token_big", std::string(10000, 'a'))).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), Not(HasSubstr("aaaa")));

  status = ReadTokenFile(::testing::TempDir()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("directory"));
}

TEST(ServerSecurityTest, LoopbackNeedsNothing) {
  for (const char* listen : {"127.0.0.1:0", "[::1]:7070", "localhost:7070"}) {
    auto security = ServerSecurity::Load({.listen = listen});
    ASSERT_TRUE(security.ok()) << listen << ": " << security.status();
    EXPECT_FALSE(security->tls());
    EXPECT_FALSE(security->requires_tokens());
    EXPECT_NE(security->credentials(), nullptr);
  }
}

TEST(ServerSecurityTest, NonLoopbackNeedsBothTokens) {
  const std::string user = WriteFile("user_token", "user-secret\n");
  const std::string cluster = WriteFile("cluster_token", "cluster-secret\n");
  for (const char* listen : {"0.0.0.0:7070", "[::]:7070", "10.1.2.3:7070", "example.com:1"}) {
    for (int given = 0; given < 3; ++given) {
      ServerSecurityOptions options{.listen = listen};
      if (given == 1) options.auth_token_file = user;
      if (given == 2) options.cluster_token_file = cluster;
      auto security = ServerSecurity::Load(options);
      ASSERT_FALSE(security.ok()) << listen;
      EXPECT_EQ(security.status().code(), absl::StatusCode::kFailedPrecondition);
      EXPECT_THAT(Message(security.status()), HasSubstr("--auth-token-file"));
      EXPECT_THAT(Message(security.status()), HasSubstr("--cluster-token-file"));
      EXPECT_THAT(Message(security.status()), HasSubstr(listen));
    }
    auto security = ServerSecurity::Load(
        {.listen = listen, .auth_token_file = user, .cluster_token_file = cluster});
    ASSERT_TRUE(security.ok()) << security.status();
    EXPECT_TRUE(security->requires_tokens());
  }
}

TEST(ServerSecurityTest, BadInputIsInvalidArgument) {
  const std::string dir = ::testing::TempDir();
  const std::string pem = WriteFile("some.pem", "-----BEGIN CERTIFICATE-----\nAA==\n");
  const std::string not_pem = WriteFile("not.pem", "hello");
  struct Case {
    ServerSecurityOptions options;
    const char* expected;
  };
  const Case cases[] = {
      {{.listen = "nohost"}, "nohost"},
      {{.listen = "127.0.0.1:0", .auth_token_file = dir + "/missing"}, "--auth-token-file"},
      {{.listen = "127.0.0.1:0", .cluster_token_file = dir + "/missing"}, "--cluster-token-file"},
      {{.listen = "127.0.0.1:0", .tls_cert = pem}, "--tls-key"},
      {{.listen = "127.0.0.1:0", .tls_key = pem}, "--tls-cert"},
      {{.listen = "127.0.0.1:0", .tls_client_ca = pem}, "--tls-client-ca"},
      {{.listen = "127.0.0.1:0", .tls_cert = dir + "/missing.pem", .tls_key = pem}, "missing.pem"},
      {{.listen = "127.0.0.1:0", .tls_cert = not_pem, .tls_key = pem}, "not a PEM file"},
      {{.listen = "127.0.0.1:0", .tls_cert = pem, .tls_key = pem}, "no readable PEM certificate"},
      {{.listen = "127.0.0.1:0", .tls_cert = dir, .tls_key = pem}, "--tls-cert"},
  };
  for (const Case& c : cases) {
    auto security = ServerSecurity::Load(c.options);
    ASSERT_FALSE(security.ok()) << c.expected;
    EXPECT_EQ(security.status().code(), absl::StatusCode::kInvalidArgument) << security.status();
    EXPECT_THAT(Message(security.status()), HasSubstr(c.expected));
  }
}

}  // namespace
}  // namespace qtrain
