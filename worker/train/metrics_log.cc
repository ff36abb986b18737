#include "worker/train/metrics_log.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/line_reader.h"
#include "common/status_macros.h"

namespace qtrain::train {

absl::StatusOr<std::vector<nlohmann::json>> MetricsLog::ReadAll(const std::string& path) {
  std::vector<nlohmann::json> records;
  absl::StatusOr<RegularFile> file = OpenRegularFile(path, kMaxMetricsFileBytes);
  if (absl::IsNotFound(file.status())) return records;  // a run that has not logged yet
  QTRAIN_RETURN_IF_ERROR(file.status());
  LineReader lines(file->fd.get(), path);
  std::string line;
  while (true) {
    QTRAIN_ASSIGN_OR_RETURN(const bool more, lines.Next(&line));
    if (!more) break;
    if (line.empty()) continue;
    nlohmann::json record = nlohmann::json::parse(line, nullptr, false);
    if (!record.is_discarded() && record.is_object() && record.contains("step") &&
        record["step"].is_number_integer()) {
      records.push_back(std::move(record));
    }
  }
  return records;
}

absl::StatusOr<MetricsLog> MetricsLog::Open(const std::string& path, int64_t keep_through_step) {
  QTRAIN_ASSIGN_OR_RETURN(std::vector<nlohmann::json> records, ReadAll(path));
  std::string kept;
  for (const nlohmann::json& record : records) {
    if (record["step"].get<int64_t>() <= keep_through_step) kept += record.dump() + "\n";
  }
  QTRAIN_RETURN_IF_ERROR(WriteFileAtomically(path, kept));
  FILE* file = std::fopen(path.c_str(), "ae");
  if (file == nullptr) return absl::InternalError(absl::StrCat("cannot append to ", path));
  return MetricsLog(path, file);
}

MetricsLog::MetricsLog(MetricsLog&& other) noexcept
    : path_(std::move(other.path_)), file_(std::exchange(other.file_, nullptr)) {}

MetricsLog::~MetricsLog() {
  if (file_ != nullptr) std::fclose(file_);
}

absl::Status MetricsLog::Append(const nlohmann::json& record) {
  const std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0) {
    return absl::InternalError(absl::StrCat("cannot write to ", path_));
  }
  return absl::OkStatus();
}

absl::Status WriteLossCurveSvg(const std::string& path, const std::vector<nlohmann::json>& records,
                               const std::vector<int64_t>& stage_starts) {
  std::vector<std::pair<double, double>> train, eval;
  for (const nlohmann::json& r : records) {
    const double step = r["step"].get<double>();
    if (r.contains("loss") && r["loss"].is_number() && std::isfinite(r["loss"].get<double>())) {
      train.emplace_back(step, r["loss"].get<double>());
    }
    if (r.contains("eval_loss") && r["eval_loss"].is_number()) {
      eval.emplace_back(step, r["eval_loss"].get<double>());
    }
  }
  constexpr double kWidth = 800, kHeight = 450, kLeft = 60, kRight = 20, kTop = 30, kBottom = 40;
  double max_step = 1, lo = INFINITY, hi = -INFINITY;
  for (const auto* series : {&train, &eval}) {
    for (const auto& [s, l] : *series) {
      max_step = std::max(max_step, s);
      lo = std::min(lo, l);
      hi = std::max(hi, l);
    }
  }
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  if (hi - lo < 1e-9) hi = lo + 1;
  auto x = [&](double s) { return kLeft + (kWidth - kLeft - kRight) * s / max_step; };
  auto y = [&](double l) { return kTop + (kHeight - kTop - kBottom) * (hi - l) / (hi - lo); };
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" "
      "fill=\"white\"/>\n<text x=\"%.0f\" y=\"18\">loss per step (blue: training, red: "
      "validation; dashed: stage starts)</text>\n",
      kWidth, kHeight, kLeft);
  absl::StrAppendFormat(
      &svg,
      "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n"
      "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\"/>\n",
      kLeft, kHeight - kBottom, kWidth - kRight, kHeight - kBottom, kLeft, kTop, kLeft,
      kHeight - kBottom);
  for (int i = 0; i <= 4; ++i) {
    const double l = lo + (hi - lo) * i / 4;
    absl::StrAppendFormat(&svg, "<text x=\"5\" y=\"%.1f\">%.3f</text>\n", y(l) + 4, l);
  }
  absl::StrAppendFormat(&svg, "<text x=\"%.1f\" y=\"%.1f\">step %.0f</text>\n", kWidth - 110,
                        kHeight - 10, max_step);
  for (int64_t start : stage_starts) {
    if (start <= 0) continue;
    absl::StrAppendFormat(&svg,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"gray\" "
                          "stroke-dasharray=\"4 4\"/>\n",
                          x(static_cast<double>(start)), kTop, x(static_cast<double>(start)),
                          kHeight - kBottom);
  }
  if (!train.empty()) {
    svg += "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"";
    for (const auto& [s, l] : train) absl::StrAppendFormat(&svg, "%.1f,%.1f ", x(s), y(l));
    svg += "\"/>\n";
  }
  for (const auto& [s, l] : eval) {
    absl::StrAppendFormat(&svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"#d62728\"/>\n",
                          x(s), y(l));
  }
  svg += "</svg>\n";
  return WriteFileAtomically(path, svg);
}

}  // namespace qtrain::train
