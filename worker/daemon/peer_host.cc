#include "worker/daemon/peer_host.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace qtrain::worker {

namespace {
constexpr size_t kMaxHostBytes = 253;  // a DNS name's limit
}  // namespace

std::optional<std::string> PeerHostProblem(absl::string_view host) {
  if (host.empty()) return "is empty";
  if (host.size() > kMaxHostBytes) {
    return absl::StrCat("is ", host.size(), " bytes long (at most ", kMaxHostBytes, ")");
  }
  for (const char c : host) {
    // Host names: letters, digits, '-', '.'; IPv6 addresses add ':' and (scoped) '%'.
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != ':' &&
        c != '%' && c != '_') {
      return absl::StrCat("'", host, "' is not a host name or IP address (it holds '",
                          std::string(1, c), "')");
    }
  }
  if (host.front() == '-' || host.front() == '.') {
    return absl::StrCat("'", host, "' is not a host name or IP address");
  }
  return std::nullopt;
}

std::optional<std::string> CollectiveTimeoutProblem(absl::Duration timeout) {
  if (timeout <= absl::ZeroDuration()) {
    return absl::StrCat("must be positive, not ", absl::FormatDuration(timeout));
  }
  if (timeout > kMaxCollectiveTimeout) {
    return absl::StrCat(absl::FormatDuration(timeout), " is more than ",
                        absl::FormatDuration(kMaxCollectiveTimeout));
  }
  return std::nullopt;
}

}  // namespace qtrain::worker
