#include "common/sha256.h"

#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "common/file_util.h"
#include "gtest/gtest.h"

namespace qtrain {
namespace {

// FIPS 180-4 / NIST example vectors.
TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256Hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, IncrementalEqualsOneShotAtEverySplit) {
  std::string data;
  for (int i = 0; i < 300; ++i) data.push_back(static_cast<char>(i * 7 + 3));
  const std::string expected = Sha256Hex(data);
  for (size_t split = 0; split <= data.size(); split += 13) {
    Sha256 hasher;
    hasher.Update(std::string_view(data).substr(0, split));
    hasher.Update(std::string_view(data).substr(split));
    EXPECT_EQ(hasher.FinishHex(), expected) << "split at " << split;
  }
}

TEST(Sha256Test, FileMatchesBufferAndMissingFileIsNotFound) {
  const std::string path = ::testing::TempDir() + "/sha256_test_file";
  const std::string content(3 << 20, 'x');  // spans several read chunks
  ASSERT_TRUE(WriteFileAtomically(path, content).ok());
  auto digest = Sha256File(path);
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, Sha256Hex(content));
  EXPECT_EQ(Sha256File(path + ".missing").status().code(), absl::StatusCode::kNotFound);
}

// fopen() of a FIFO blocks until a writer comes, and /dev/zero never ends: both are refused.
TEST(Sha256Test, FileRefusesFifoAndDevicesWithoutBlocking) {
  const std::string fifo = ::testing::TempDir() + "/sha256_fifo_" + std::to_string(::getpid());
  ::unlink(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  ::alarm(20);  // a blocked open fails the test instead of hanging it
  const absl::Status fifo_status = Sha256File(fifo).status();
  const absl::Status zero_status = Sha256File("/dev/zero").status();
  ::alarm(0);
  ::unlink(fifo.c_str());
  EXPECT_EQ(fifo_status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(fifo_status.message().find("is a FIFO, not a regular file"), std::string::npos)
      << fifo_status;
  EXPECT_NE(zero_status.message().find("/dev/zero is a character device"), std::string::npos)
      << zero_status;
}

}  // namespace
}  // namespace qtrain
