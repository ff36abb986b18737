#include "common/status_macros.h"

#include "absl/strings/str_cat.h"

namespace qtrain {

absl::Status Annotate(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(std::string(context), ": ", status.message()));
}

}  // namespace qtrain
