// metrics.jsonl: one JSON object per line ({"step": N, ...}). On resume the lines of steps after
// the checkpoint are dropped, so the file always describes exactly the run that produced the
// current weights.
#ifndef QTRAIN_WORKER_TRAIN_METRICS_LOG_H_
#define QTRAIN_WORKER_TRAIN_METRICS_LOG_H_

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace qtrain::train {

// The largest metrics.jsonl read back on resume (a line is about 200 bytes a step).
inline constexpr uint64_t kMaxMetricsFileBytes = uint64_t{1} << 30;

class MetricsLog {
 public:
  // Opens `path` for appending after dropping every line whose "step" exceeds
  // `keep_through_step` (and any line that is not a JSON object, e.g. a torn last line).
  static absl::StatusOr<MetricsLog> Open(const std::string& path, int64_t keep_through_step);
  MetricsLog(MetricsLog&& other) noexcept;
  MetricsLog& operator=(MetricsLog&&) = delete;
  ~MetricsLog();

  // Writes one line and flushes it.
  absl::Status Append(const nlohmann::json& record);

  // Every record of a metrics file, in order (torn lines skipped); none if it does not exist. A
  // FIFO, device or directory, a file over kMaxMetricsFileBytes, a line over kMaxLineBytes and a
  // read error are errors.
  static absl::StatusOr<std::vector<nlohmann::json>> ReadAll(const std::string& path);

 private:
  MetricsLog(std::string path, FILE* file) : path_(std::move(path)), file_(file) {}
  std::string path_;
  FILE* file_ = nullptr;
};

// An SVG picture of the training loss (and validation loss points) per step, with the stage
// boundaries marked.
absl::Status WriteLossCurveSvg(const std::string& path, const std::vector<nlohmann::json>& records,
                               const std::vector<int64_t>& stage_starts);

}  // namespace qtrain::train

#endif  // QTRAIN_WORKER_TRAIN_METRICS_LOG_H_
