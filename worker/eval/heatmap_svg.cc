// NeedleHeatmapSvg: the needle grid as an SVG image.
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/eval/eval.h"

namespace qtrain::eval {
namespace {

std::string XmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// Red (0) through yellow to green (1).
std::string Colour(double a) {
  const int r = a < 0.5 ? 220 : static_cast<int>(220 - (a - 0.5) * 2 * 180);
  const int g = a < 0.5 ? static_cast<int>(50 + a * 2 * 150) : 200;
  return absl::StrFormat("#%02x%02x%02x", r, g, 60);
}

std::string LengthLabel(int64_t n) {
  return n % 1024 == 0 ? absl::StrCat(n / 1024, "k") : absl::StrCat(n);
}

}  // namespace

absl::StatusOr<std::string> NeedleHeatmapSvg(const nlohmann::json& result) {
  const auto grid = result.find("grid");
  if (grid == result.end() || !grid->is_object()) {
    return absl::InvalidArgumentError("the result has no needle grid");
  }
  const nlohmann::json lengths = grid->value("lengths", nlohmann::json());
  const nlohmann::json depths = grid->value("depths", nlohmann::json());
  const nlohmann::json acc = grid->value("accuracy", nlohmann::json());
  if (!lengths.is_array() || !depths.is_array() || !acc.is_array() || lengths.empty() ||
      depths.empty() || acc.size() != depths.size()) {
    return absl::InvalidArgumentError("the needle grid is malformed");
  }
  for (const auto& row : acc) {
    if (!row.is_array() || row.size() != lengths.size()) {
      return absl::InvalidArgumentError("the needle grid is malformed");
    }
    for (const auto& v : row) {
      if (!v.is_number()) return absl::InvalidArgumentError("the needle grid is malformed");
    }
  }
  for (const auto& v : lengths) {
    if (!v.is_number_integer()) return absl::InvalidArgumentError("the needle grid is malformed");
  }
  for (const auto& v : depths) {
    if (!v.is_number()) return absl::InvalidArgumentError("the needle grid is malformed");
  }
  constexpr int kCell = 56, kLeft = 90, kTop = 40, kBottom = 50;
  const int width = kLeft + kCell * static_cast<int>(lengths.size()) + 20;
  const int height = kTop + kCell * static_cast<int>(depths.size()) + kBottom;
  const std::string title = XmlEscape(
      absl::StrCat("needle: ", result.value("name", std::string("needle")), " (accuracy)"));
  std::string svg = absl::StrFormat(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
      "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n"
      "<title>%s</title>\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%d\" y=\"20\" font-size=\"14\">%s</text>\n",
      width, height, width, height, title, kLeft, title);
  for (size_t d = 0; d < depths.size(); ++d) {
    const int y = kTop + kCell * static_cast<int>(d);
    absl::StrAppendFormat(&svg, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n",
                          kLeft - 6, y + kCell / 2 + 4,
                          XmlEscape(absl::StrCat(depths[d].get<double>())));
    for (size_t l = 0; l < lengths.size(); ++l) {
      const double a = acc[d][l].get<double>();
      const int x = kLeft + kCell * static_cast<int>(l);
      absl::StrAppendFormat(
          &svg,
          "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" stroke=\"white\"/>\n"
          "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%.2f</text>\n",
          x, y, kCell, kCell, Colour(std::clamp(a, 0.0, 1.0)), x + kCell / 2, y + kCell / 2 + 4, a);
    }
  }
  const int axis_y = kTop + kCell * static_cast<int>(depths.size());
  for (size_t l = 0; l < lengths.size(); ++l) {
    absl::StrAppendFormat(&svg, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
                          kLeft + kCell * static_cast<int>(l) + kCell / 2, axis_y + 16,
                          LengthLabel(lengths[l].get<int64_t>()));
  }
  absl::StrAppendFormat(&svg,
                        "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">context length "
                        "(tokens)</text>\n"
                        "<text x=\"14\" y=\"%d\" text-anchor=\"middle\" "
                        "transform=\"rotate(-90 14 %d)\">needle depth</text>\n</svg>\n",
                        kLeft + kCell * static_cast<int>(lengths.size()) / 2, axis_y + 38,
                        kTop + kCell * static_cast<int>(depths.size()) / 2,
                        kTop + kCell * static_cast<int>(depths.size()) / 2);
  return svg;
}

}  // namespace qtrain::eval
