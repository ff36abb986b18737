#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace qtrain {
namespace {

using Json = nlohmann::json;

uint64_t ReadLittleEndianU64(const std::byte* p) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<uint8_t>(p[i]);
  return value;
}

absl::Status HeaderError(const std::string& source, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors ", source, ": ", what));
}

// Reads a JSON value that must be a non-negative integer that fits in uint64.
bool AsUnsigned(const Json& value, uint64_t* out) {
  if (value.is_number_unsigned()) {
    *out = value.get<uint64_t>();
    return true;
  }
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(value.get<int64_t>());
    return true;
  }
  return false;
}

}  // namespace

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
    case DType::kF16:
      return 2;
    case DType::kI32:
      return 4;
    case DType::kI64:
      return 8;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kI32:
      return "I32";
    case DType::kI64:
      return "I64";
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  for (DType d : {DType::kF32, DType::kBF16, DType::kF16, DType::kI32, DType::kI64}) {
    if (DTypeName(d) == name) return d;
  }
  return absl::InvalidArgumentError(absl::StrCat("unsupported dtype '", std::string(name),
                                                 "' (supported: F32, BF16, F16, I32, I64)"));
}

int64_t TensorInfo::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------
// Reader

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept { *this = std::move(other); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    Release();
    source_ = std::move(other.source_);
    owned_ = std::move(other.owned_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    size_ = std::exchange(other.size_, 0);
    data_start_ = other.data_start_;
    tensors_ = std::move(other.tensors_);
    metadata_ = std::move(other.metadata_);
    other.base_ = nullptr;
    // A moved std::string may change its buffer address (small-string storage): re-derive.
    base_ = mapping_ != nullptr ? static_cast<const std::byte*>(mapping_)
            : owned_.empty()    ? nullptr
                                : reinterpret_cast<const std::byte*>(owned_.data());
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { Release(); }

void SafetensorsFile::Release() {
  if (mapping_ != nullptr) ::munmap(mapping_, size_);
  mapping_ = nullptr;
  base_ = nullptr;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  // A FIFO or device is refused here: mapping needs a regular file, and opening a FIFO blocks.
  absl::StatusOr<RegularFile> opened = OpenRegularFile(path);
  if (!opened.ok()) return Annotate(opened.status(), "safetensors");
  SafetensorsFile file;
  file.source_ = path;
  file.size_ = opened->size;
  if (file.size_ > 0) {
    void* mapping = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, opened->fd.get(), 0);
    if (mapping == MAP_FAILED) {
      return absl::InternalError(
          absl::StrCat("safetensors: cannot map ", path, ": ", std::strerror(errno)));
    }
    file.mapping_ = mapping;
    file.base_ = static_cast<const std::byte*>(mapping);
  }
  QTRAIN_RETURN_IF_ERROR(file.ParseHeader());
  return file;
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::FromBuffer(std::string_view bytes,
                                                            std::string source) {
  SafetensorsFile file;
  file.source_ = std::move(source);
  file.owned_.assign(bytes.data(), bytes.size());
  file.base_ = reinterpret_cast<const std::byte*>(file.owned_.data());
  file.size_ = file.owned_.size();
  QTRAIN_RETURN_IF_ERROR(file.ParseHeader());
  return file;
}

absl::Status SafetensorsFile::ParseHeader() {
  if (size_ < 8) {
    return HeaderError(
        source_, absl::StrCat("file is ", size_, " bytes, too small for the 8-byte header length"));
  }
  const uint64_t header_size = ReadLittleEndianU64(base_);
  if (header_size > kMaxHeaderBytes) {
    return HeaderError(source_, absl::StrCat("header length ", header_size,
                                             " exceeds the limit of ", kMaxHeaderBytes, " bytes"));
  }
  if (header_size > size_ - 8) {
    return HeaderError(
        source_, absl::StrCat("header length ", header_size, " runs past the end of the ", size_,
                              "-byte file (truncated?)"));
  }
  data_start_ = 8 + header_size;
  const uint64_t data_size = size_ - data_start_;
  const std::string_view header_text(reinterpret_cast<const char*>(base_ + 8), header_size);

  const Json header = Json::parse(header_text, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return HeaderError(source_, "header is not valid JSON");
  if (!header.is_object()) return HeaderError(source_, "header is not a JSON object");

  std::vector<TensorInfo> tensors;
  tensors.reserve(header.size());
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return HeaderError(source_, "__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return HeaderError(source_, absl::StrCat("__metadata__.", key, " is not a string"));
        }
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat("tensor '", name, "'");
    if (!entry.is_object()) return HeaderError(source_, absl::StrCat(where, " is not an object"));
    for (const auto& [key, unused] : entry.items()) {
      if (key != "dtype" && key != "shape" && key != "data_offsets") {
        return HeaderError(source_, absl::StrCat(where, " has unknown field '", key, "'"));
      }
    }
    TensorInfo info;
    info.name = name;
    const auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return HeaderError(source_, absl::StrCat(where, ": missing or non-string 'dtype'"));
    }
    auto dtype = ParseDType(dtype_it->get<std::string>());
    if (!dtype.ok())
      return HeaderError(source_, absl::StrCat(where, ": ", dtype.status().message()));
    info.dtype = *dtype;

    const auto shape_it = entry.find("shape");
    if (shape_it == entry.end() || !shape_it->is_array()) {
      return HeaderError(source_, absl::StrCat(where, ": missing or non-array 'shape'"));
    }
    // Byte size = product of dims * dtype size, checked for overflow at every factor.
    uint64_t bytes = DTypeSize(info.dtype);
    for (const Json& dim : *shape_it) {
      uint64_t d;
      if (!AsUnsigned(dim, &d) || d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return HeaderError(source_, absl::StrCat(where,
                                                 ": shape has a dimension that is not a "
                                                 "non-negative integer: ",
                                                 dim.dump()));
      }
      if (d != 0 && bytes > std::numeric_limits<uint64_t>::max() / d) {
        return HeaderError(
            source_, absl::StrCat(where, ": shape ", shape_it->dump(), " overflows the byte size"));
      }
      bytes *= d;
      info.shape.push_back(static_cast<int64_t>(d));
    }
    const auto offsets_it = entry.find("data_offsets");
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
        !AsUnsigned((*offsets_it)[0], &info.begin) || !AsUnsigned((*offsets_it)[1], &info.end)) {
      return HeaderError(source_, absl::StrCat(where,
                                               ": 'data_offsets' must be [begin, end] "
                                               "with non-negative integers"));
    }
    if (info.begin > info.end || info.end > data_size) {
      return HeaderError(source_, absl::StrCat(where, ": data_offsets [", info.begin, ", ",
                                               info.end, "] are outside the ", data_size,
                                               "-byte data buffer (truncated file?)"));
    }
    if (info.end - info.begin != bytes) {
      return HeaderError(source_, absl::StrCat(where, ": data_offsets span ", info.end - info.begin,
                                               " bytes but dtype and shape need ", bytes));
    }
    tensors.push_back(std::move(info));
  }
  // The data buffer must be covered exactly: no overlaps, no holes.
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  for (const TensorInfo& info : tensors) {
    if (info.begin < expected) {
      return HeaderError(source_,
                         absl::StrCat("tensor '", info.name, "' overlaps the tensor before it"));
    }
    if (info.begin > expected) {
      return HeaderError(source_, absl::StrCat("bytes [", expected, ", ", info.begin,
                                               ") of the data buffer belong to no tensor"));
    }
    expected = info.end;
  }
  if (expected != data_size) {
    return HeaderError(source_, absl::StrCat("the data buffer has ", data_size - expected,
                                             " trailing bytes that belong to no tensor"));
  }
  tensors_ = std::move(tensors);
  return absl::OkStatus();
}

bool SafetensorsFile::Contains(std::string_view name) const { return Find(name).ok(); }

absl::StatusOr<const TensorInfo*> SafetensorsFile::Find(std::string_view name) const {
  for (const TensorInfo& info : tensors_) {
    if (info.name == name) return &info;
  }
  return absl::NotFoundError(
      absl::StrCat("safetensors ", source_, ": no tensor named '", std::string(name), "'"));
}

std::span<const std::byte> SafetensorsFile::Data(const TensorInfo& info) const {
  return {base_ + data_start_ + info.begin, info.end - info.begin};
}

absl::StatusOr<std::vector<float>> SafetensorsFile::ReadAsFloat(
    std::string_view name, std::span<const int64_t> expected_shape) const {
  QTRAIN_ASSIGN_OR_RETURN(const TensorInfo* info, Find(name));
  if (!expected_shape.empty() && !std::equal(expected_shape.begin(), expected_shape.end(),
                                             info->shape.begin(), info->shape.end())) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors ", source_, ": tensor '", std::string(name), "' has shape [",
                     absl::StrJoin(info->shape, ", "), "], expected [",
                     absl::StrJoin(expected_shape, ", "), "]"));
  }
  const std::span<const std::byte> bytes = Data(*info);
  const size_t n = static_cast<size_t>(info->num_elements());
  std::vector<float> out(n);
  switch (info->dtype) {
    case DType::kF32:
      if (n > 0) std::memcpy(out.data(), bytes.data(), n * 4);
      break;
    case DType::kBF16:
    case DType::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, bytes.data() + 2 * i, 2);
        out[i] = info->dtype == DType::kBF16 ? Bf16ToFloat(v) : F16ToFloat(v);
      }
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors ", source_, ": tensor '", std::string(name),
                       "' has integer dtype ", DTypeName(info->dtype), ", expected a float dtype"));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Writer

absl::Status SafetensorsWriter::Add(std::string name, DType dtype, std::vector<int64_t> shape,
                                    std::span<const std::byte> data) {
  if (name.empty() || name == "__metadata__") {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors: invalid tensor name '", name, "'"));
  }
  for (const Entry& e : entries_) {
    if (e.name == name) {
      return absl::AlreadyExistsError(absl::StrCat("safetensors: tensor '", name, "' added twice"));
    }
  }
  uint64_t expected = DTypeSize(dtype);
  for (int64_t d : shape) {
    if (d < 0)
      return absl::InvalidArgumentError(absl::StrCat("safetensors: negative dim in '", name, "'"));
    expected *= static_cast<uint64_t>(d);
  }
  if (expected != data.size()) {
    return absl::InvalidArgumentError(absl::StrCat("safetensors: tensor '", name, "' has ",
                                                   data.size(), " bytes, shape needs ", expected));
  }
  entries_.push_back({std::move(name), dtype, std::move(shape),
                      std::string(reinterpret_cast<const char*>(data.data()), data.size())});
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::AddFloat(std::string name, std::vector<int64_t> shape,
                                         std::span<const float> data) {
  return Add(std::move(name), DType::kF32, std::move(shape), std::as_bytes(data));
}

std::string SafetensorsWriter::Serialize() const {
  Json header = Json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const Entry& e : entries_) {
    header[e.name] = {{"dtype", DTypeName(e.dtype)},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + header_text.size() + offset);
  const uint64_t n = header_text.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += header_text;
  for (const Entry& e : entries_) out += e.bytes;
  return out;
}

absl::Status SafetensorsWriter::WriteFile(const std::string& path) const {
  return WriteFileAtomically(path, Serialize());
}

// ---------------------------------------------------------------------------------------------
// Float conversions

uint16_t FloatToBf16(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  bits += 0x7fff + ((bits >> 16) & 1);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

float Bf16ToFloat(uint16_t value) { return std::bit_cast<float>(uint32_t{value} << 16); }

uint16_t FloatToF16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint32_t sign = (bits >> 16) & 0x8000;
  const uint32_t abs = bits & 0x7fffffff;
  if (abs > 0x7f800000) return static_cast<uint16_t>(sign | 0x7e00);   // NaN
  if (abs >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);  // overflow -> inf
  if (abs < 0x38800000) {                                              // subnormal or zero in f16
    // Scale into the f16 subnormal range with float arithmetic (exact round-to-nearest-even).
    const float magnitude = std::bit_cast<float>(abs) * 16777216.0f;  // 2^24
    const float rounded = std::nearbyint(magnitude);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(rounded));
  }
  uint32_t mantissa_rounded = abs + 0xfff + ((abs >> 13) & 1);
  return static_cast<uint16_t>(sign | ((mantissa_rounded - 0x38000000) >> 13));
}

float F16ToFloat(uint16_t value) {
  const uint32_t sign = uint32_t{static_cast<uint32_t>(value & 0x8000)} << 16;
  const uint32_t exponent = (value >> 10) & 0x1f;
  const uint32_t mantissa = value & 0x3ff;
  if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) / 16777216.0f;  // mantissa * 2^-24
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000 | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

}  // namespace qtrain
