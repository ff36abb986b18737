// Feeds arbitrary text to the job-spec loader (YAML/JSON parse, proto mapping, validation): it
// must return a spec or an error, never crash or hang.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/job_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 64 * 1024) return 0;
  auto spec = qtrain::ParseJobSpec(std::string_view(reinterpret_cast<const char*>(data), size),
                                   "fuzz.yaml");
  if (!spec.ok() && spec.status().code() != absl::StatusCode::kInvalidArgument) __builtin_trap();
  return 0;
}
