// The main() of every unit and integration test binary: GoogleTest, with
// - a private temporary directory per process (gtest's TempDir() reads TEST_TMPDIR), so that test
//   cases that ctest runs in parallel, and the same test in two build trees, never share files;
//   it is removed at exit;
// - QTRAIN_SOURCE_DIR (the source root) and QTRAIN_BIN_DIR (this build's binaries, e.g. the
//   `qtrain` tool that integration tests run), unless the environment sets them already.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "gtest/gtest.h"

int main(int argc, char** argv) {
  setenv("QTRAIN_SOURCE_DIR", QTRAIN_TEST_SOURCE_DIR, /*overwrite=*/0);
  setenv("QTRAIN_BIN_DIR", QTRAIN_TEST_BIN_DIR, /*overwrite=*/0);
  const char* base = std::getenv("TMPDIR");
  std::string pattern =
      std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/qtrain_test.XXXXXX";
  const char* dir = ::mkdtemp(pattern.data());
  if (dir != nullptr) setenv("TEST_TMPDIR", dir, 1);
  ::testing::InitGoogleTest(&argc, argv);
  const int rc = RUN_ALL_TESTS();
  if (dir != nullptr) {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
  return rc;
}
