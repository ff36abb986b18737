// SHA-256 (FIPS 180-4) of buffers and files, as lowercase hex.
#ifndef QTRAIN_COMMON_SHA256_H_
#define QTRAIN_COMMON_SHA256_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace qtrain {

// Incremental hasher: Update() any number of times, then Finish() once.
class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t size);
  void Update(std::string_view data) { Update(data.data(), data.size()); }
  std::array<uint8_t, 32> Finish();
  std::string FinishHex();

 private:
  void Compress(const uint8_t* block);
  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffer_size_ = 0;
  uint64_t total_bytes_ = 0;
};

std::string Sha256Hex(std::string_view data);
// Streams the file in fixed-size chunks; NOT_FOUND / INTERNAL with the path on failure.
absl::StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace qtrain

#endif  // QTRAIN_COMMON_SHA256_H_
