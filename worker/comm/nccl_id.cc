#include "worker/comm/nccl_id.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace qtrain::comm {
namespace {

constexpr absl::string_view kMagic = "nccl-id";
constexpr absl::string_view kVersion = "v1";
constexpr absl::string_view kWorldField = "world=";
constexpr absl::Duration kCancelPoll = absl::Milliseconds(250);

// A canonical positive decimal (what EncodeNcclId writes): digits only, no leading zero.
bool ParseWorld(absl::string_view text, int* world) {
  if (text.empty() || text.size() > 9 || text[0] == '0') return false;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
  }
  return absl::SimpleAtoi(text, world);
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

std::string NcclIdKey(absl::string_view prefix) { return absl::StrCat(prefix, "nccl-unique-id"); }

std::string EncodeNcclId(const NcclUniqueIdBytes& id, int world_size) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * id.size());
  for (char c : id) {
    const auto byte = static_cast<unsigned char>(c);
    hex.push_back(kHex[byte >> 4]);
    hex.push_back(kHex[byte & 15]);
  }
  return absl::StrCat(kMagic, " ", kVersion, " ", kWorldField, world_size, " ", hex);
}

absl::StatusOr<NcclUniqueIdBytes> DecodeNcclId(absl::string_view value, int world_size) {
  const std::vector<absl::string_view> fields = absl::StrSplit(value, ' ');
  if (fields.size() != 4 || fields[0] != kMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL id: expected \"", kMagic, " ", kVersion, " ", kWorldField,
                     "<W> <hex>\", got ", value.size(), " bytes that are not that"));
  }
  if (fields[1] != kVersion) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL id: version \"", fields[1],
                                                   "\" is not the supported ", kVersion));
  }
  int their_world = 0;
  if (!absl::StartsWith(fields[2], kWorldField) ||
      !ParseWorld(fields[2].substr(kWorldField.size()), &their_world)) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL id: \"", fields[2], "\" is not ", kWorldField, "<W>"));
  }
  if (their_world != world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("NCCL id: rank 0 made it for a group of ", their_world,
                     " ranks, this rank was started for ", world_size));
  }
  const absl::string_view hex = fields[3];
  NcclUniqueIdBytes id{};
  if (hex.size() != 2 * id.size()) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL id: ", hex.size(),
                                                   " hex digits, expected ", 2 * id.size()));
  }
  for (size_t i = 0; i < id.size(); ++i) {
    const int high = HexDigit(hex[2 * i]);
    const int low = HexDigit(hex[2 * i + 1]);
    if (high < 0 || low < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("NCCL id: not a lowercase hex digit at offset ", 2 * i + (high < 0 ? 0 : 1)));
    }
    id[i] = static_cast<char>((high << 4) | low);
  }
  return id;
}

absl::StatusOr<NcclUniqueIdBytes> ExchangeNcclId(
    const NcclIdExchange& exchange,
    absl::FunctionRef<absl::StatusOr<NcclUniqueIdBytes>()> make_id) {
  if (exchange.store == nullptr || exchange.world_size < 1 || exchange.rank < 0 ||
      exchange.rank >= exchange.world_size) {
    return absl::InvalidArgumentError(absl::StrCat("NCCL id exchange: rank ", exchange.rank,
                                                   " of ", exchange.world_size,
                                                   exchange.store == nullptr ? ", no store" : ""));
  }
  const std::string key = NcclIdKey(exchange.prefix);
  if (exchange.rank == 0) {
    QTRAIN_ASSIGN_OR_RETURN(NcclUniqueIdBytes id, make_id());
    QTRAIN_RETURN_IF_ERROR(exchange.store->Set(key, EncodeNcclId(id, exchange.world_size)));
    return id;
  }
  // Short Gets until the deadline, so that a cancel is seen in time.
  while (true) {
    if (exchange.cancel != nullptr && exchange.cancel->load()) {
      return absl::CancelledError(absl::StrCat("NCCL id exchange cancelled waiting for ", key));
    }
    const absl::Time poll_until =
        exchange.cancel == nullptr ? exchange.deadline
                                   : std::min(exchange.deadline, absl::Now() + kCancelPoll);
    absl::StatusOr<std::string> value = exchange.store->Get(key, poll_until);
    if (value.ok()) return DecodeNcclId(*value, exchange.world_size);
    if (value.status().code() != absl::StatusCode::kDeadlineExceeded ||
        absl::Now() >= exchange.deadline) {
      return value.status();
    }
  }
}

}  // namespace qtrain::comm
