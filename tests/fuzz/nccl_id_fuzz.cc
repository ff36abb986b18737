// Feeds arbitrary bytes to the NCCL id decoder (worker/comm/nccl_id.h), as a rank reads the
// value rank 0 set in the rendezvous store: it must accept or refuse with a status that says it
// is about the NCCL id, never crash. An accepted value re-encodes to the same text.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include "absl/strings/string_view.h"

#include "worker/comm/nccl_id.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view value(reinterpret_cast<const char*>(data), size);
  for (int world : {1, 8}) {
    auto id = qtrain::comm::DecodeNcclId(value, world);
    if (id.ok()) {
      if (qtrain::comm::EncodeNcclId(*id, world) != value) std::abort();
    } else if (id.status().message().find("NCCL id") == absl::string_view::npos) {
      std::abort();
    }
  }
  return 0;
}
