// safetensors: reader and writer (https://github.com/huggingface/safetensors format).
//
// Layout: u64 little-endian header size N, N bytes of JSON header
//   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}
// then the data buffer; offsets are relative to the start of the data buffer.
//
// The reader validates every header field before it allocates or touches tensor data: header
// size cap, well-formed JSON, known dtype, non-negative dims whose product does not overflow,
// byte size == dims product * dtype size, offsets inside the file, no overlaps and no holes.
#ifndef QTRAIN_COMMON_SAFETENSORS_H_
#define QTRAIN_COMMON_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace qtrain {

enum class DType { kF32, kBF16, kF16, kI32, kI64 };

size_t DTypeSize(DType dtype);
const char* DTypeName(DType dtype);  // "F32", "BF16", "F16", "I32", "I64"
absl::StatusOr<DType> ParseDType(std::string_view name);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets in the data buffer
  uint64_t end = 0;
  int64_t num_elements() const;
};

// A read-only, memory-mapped safetensors file (or an in-memory buffer, for tests and fuzzing).
class SafetensorsFile {
 public:
  // The header may be at most this many bytes (the format's own reference limit).
  static constexpr uint64_t kMaxHeaderBytes = 100u << 20;

  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);
  // Parses `bytes` (copied) as a safetensors file; `source` names it in errors.
  static absl::StatusOr<SafetensorsFile> FromBuffer(std::string_view bytes,
                                                    std::string source = "<buffer>");

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  // Tensors in file order (ascending offset).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool Contains(std::string_view name) const;
  // NOT_FOUND naming the tensor and the file if absent.
  absl::StatusOr<const TensorInfo*> Find(std::string_view name) const;
  // Raw little-endian bytes of a tensor.
  std::span<const std::byte> Data(const TensorInfo& info) const;
  // Copies a tensor into fp32, converting from F32/BF16/F16 (INVALID_ARGUMENT for integer
  // dtypes); `expected_shape`, when non-empty, must match exactly.
  absl::StatusOr<std::vector<float>> ReadAsFloat(
      std::string_view name, std::span<const int64_t> expected_shape = {}) const;
  const std::string& source() const { return source_; }

 private:
  SafetensorsFile() = default;
  absl::Status ParseHeader();
  void Release();

  std::string source_;
  const std::byte* base_ = nullptr;  // whole file
  uint64_t size_ = 0;
  uint64_t data_start_ = 0;
  void* mapping_ = nullptr;  // munmap on destruction when non-null
  std::string owned_;        // FromBuffer keeps its copy here
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors and writes one safetensors file atomically. Tensors are written in the order
// added, back to back; the header is padded with spaces so that the data buffer starts at an
// 8-byte boundary (as the reference writer does).
class SafetensorsWriter {
 public:
  // The bytes are copied.
  absl::Status Add(std::string name, DType dtype, std::vector<int64_t> shape,
                   std::span<const std::byte> data);
  absl::Status AddFloat(std::string name, std::vector<int64_t> shape, std::span<const float> data);
  void SetMetadata(std::string key, std::string value) {
    metadata_[std::move(key)] = std::move(value);
  }
  // Serializes to bytes (header + data).
  std::string Serialize() const;
  absl::Status WriteFile(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::string bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// float <-> bf16 / fp16 (round to nearest even; NaN stays NaN).
uint16_t FloatToBf16(float value);
float Bf16ToFloat(uint16_t value);
uint16_t FloatToF16(float value);
float F16ToFloat(uint16_t value);

}  // namespace qtrain

#endif  // QTRAIN_COMMON_SAFETENSORS_H_
