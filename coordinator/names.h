// Resource names, page tokens and the bounds every RPC field is checked against.
#ifndef QTRAIN_COORDINATOR_NAMES_H_
#define QTRAIN_COORDINATOR_NAMES_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace qtrain::coordinator {

inline constexpr size_t kMaxIdBytes = 128;
inline constexpr size_t kMaxRequestIdBytes = 256;
inline constexpr size_t kMaxShortStringBytes = 1024;  // hostnames, versions, codes, reasons
inline constexpr size_t kMaxMessageBytes = 64 << 10;  // failure messages
inline constexpr size_t kMaxPathBytes = 4096;
inline constexpr int kMaxLabels = 64;
inline constexpr size_t kMaxLabelBytes = 256;
inline constexpr int kMaxRepeated = 1024;          // device names, list filters
inline constexpr int kMaxCheckpointFiles = 10000;  // a stored checkpoint stays far below 16 MiB
inline constexpr size_t kMaxKeyBytes = 512;
inline constexpr size_t kMaxValueBytes = 1 << 20;
inline constexpr int kMaxKeysPerRound = 10000;
inline constexpr int kDefaultPageSize = 50;
inline constexpr int kMaxPageSize = 1000;

// "jobs/ID" -> ID; INVALID_ARGUMENT naming `field` when malformed.
absl::StatusOr<std::string> ParseJobName(absl::string_view name, absl::string_view field);
// "workers/ID" (or a bare ID) -> ID.
absl::StatusOr<std::string> ParseWorkerName(absl::string_view name, absl::string_view field);

std::string JobName(absl::string_view id);
std::string WorkerName(absl::string_view id);
std::string CheckpointName(absl::string_view job_id, int64_t step);
// "step-000000000012".
std::string CheckpointDirName(int64_t step);

// A hostname (or --name) made into an id prefix: [a-z0-9-], no leading/trailing '-'.
std::string SanitizeWorkerPrefix(absl::string_view name);

// True when `text` is well-formed UTF-8 (protobuf refuses to parse strings that are not: a
// stored job holding one could not be loaded again).
bool IsValidUtf8(absl::string_view text);

// INVALID_ARGUMENT "<field>: at most N bytes" when too long (or not UTF-8).
absl::Status CheckLength(absl::string_view value, size_t max, absl::string_view field);

// Opaque page tokens holding a position.
std::string EncodePageToken(absl::string_view kind, int64_t position);
absl::StatusOr<int64_t> DecodePageToken(absl::string_view token, absl::string_view kind,
                                        absl::string_view field);
// page_size: 0 -> default; negative -> INVALID_ARGUMENT; capped at kMaxPageSize.
absl::StatusOr<int> CheckPageSize(int32_t page_size, absl::string_view field);

}  // namespace qtrain::coordinator

#endif  // QTRAIN_COORDINATOR_NAMES_H_
