// Feeds arbitrary text to the job-spec loader (YAML/JSON parse, proto mapping, validation): it
// must return a spec or an error, never crash or hang; a spec it accepts has step counts that
// fit in int64 and a batch every allowed worker count divides.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/job_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 64 * 1024) return 0;
  auto spec = qtrain::ParseJobSpec(std::string_view(reinterpret_cast<const char*>(data), size),
                                   "fuzz.yaml");
  if (!spec.ok()) {
    if (spec.status().code() != absl::StatusCode::kInvalidArgument) __builtin_trap();
    return 0;
  }
  // A valid spec's step arithmetic fits in int64 (the bounds guarantee it).
  if (!qtrain::TotalSteps(*spec).ok()) __builtin_trap();
  for (int i = 0; i < spec->curriculum_size(); ++i) {
    for (int64_t w = spec->world().min_workers(); w <= spec->world().max_workers(); ++w) {
      if (!qtrain::AccumulationSteps(*spec, i, w).ok()) __builtin_trap();
    }
  }
  return 0;
}
