#include "worker/daemon/machine_info.h"

#include <limits.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/train/training_backend.h"

namespace qtrain::worker {

MachineInfo DescribeMachine() {
  MachineInfo info;
  char host[HOST_NAME_MAX + 1] = {};
  if (::gethostname(host, sizeof(host) - 1) == 0) info.hostname = host;
  if (info.hostname.empty()) info.hostname = "localhost";
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (absl::StartsWith(line, "model name")) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        info.cpu_model = std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
      }
      break;
    }
  }
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page_size = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page_size > 0) info.memory_bytes = int64_t{pages} * page_size;
  return info;
}

absl::Status CheckDevice(v1::DeviceKind device) {
  const absl::Status usable = train::CheckTrainingDevice(device);
  if (usable.ok() || device != v1::DEVICE_KIND_CUDA) return usable;
  // Registering as a CUDA worker would draw CUDA jobs this process cannot train.
  return absl::Status(usable.code(), absl::StrCat("--", usable.message()));
}

}  // namespace qtrain::worker
