// Feeds arbitrary bytes to the safetensors reader: it must reject or accept, never crash, and
// every tensor it accepts must lie inside the buffer.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = qtrain::SafetensorsFile::FromBuffer(
      std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!file.ok()) return 0;
  uint64_t total = 0;
  for (const qtrain::TensorInfo& info : file->tensors()) {
    const auto bytes = file->Data(info);
    total += bytes.size();
    volatile std::byte sink{};
    for (std::byte b : bytes) sink = b;  // ASan checks every byte is readable
    (void)sink;
    if (info.dtype != qtrain::DType::kI32 && info.dtype != qtrain::DType::kI64) {
      (void)file->ReadAsFloat(info.name);
    }
  }
  if (total > size) __builtin_trap();
  return 0;
}
