// Helpers shared by the tokenizer tests.
#ifndef QTRAIN_TOKENIZER_TEST_UTIL_H_
#define QTRAIN_TOKENIZER_TEST_UTIL_H_

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "gtest/gtest.h"
#include "tokenizer/tokenizer.h"
#include "utf8proc.h"

namespace qtrain::tokenizer {

// tokenizer/testdata/<name>, relative to QTRAIN_SOURCE_DIR (or the working directory).
inline std::string TestDataPath(const std::string& name) {
  const char* root = std::getenv("QTRAIN_SOURCE_DIR");
  return std::string(root != nullptr ? root : ".") + "/tokenizer/testdata/" + name;
}

// The Qwen2 tokenizer, loaded once per test binary.
inline const Tokenizer& Qwen2Tokenizer() {
  static const Tokenizer* tok = [] {
    absl::StatusOr<Tokenizer> t = Tokenizer::FromFile(TestDataPath("qwen2/tokenizer.json"));
    if (!t.ok()) {
      std::fprintf(stderr, "loading the Qwen2 tokenizer: %s\n", t.status().ToString().c_str());
      std::abort();
    }
    return new Tokenizer(std::move(*t));
  }();
  return *tok;
}

// A fresh directory under the test temp dir, removed (with its contents) on destruction.
class ScopedTempDir {
 public:
  explicit ScopedTempDir(const std::string& name)
      : path_(testing::TempDir() + "/qtrain_tok_" + std::to_string(getpid()) + "_" + name) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScopedTempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// NFC of valid UTF-8 through utf8proc directly (the reference for the fast path).
inline std::string Nfc(const std::string& text) {
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                   static_cast<utf8proc_ssize_t>(text.size()), &out,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  std::string result = n >= 0 ? std::string(reinterpret_cast<char*>(out), n) : std::string();
  std::free(out);
  return result;
}

}  // namespace qtrain::tokenizer

#endif  // QTRAIN_TOKENIZER_TEST_UTIL_H_
