// SVG drawings of the plots passes put in their reports.
#include "analyze/plot.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "fmt/format.h"

namespace compress {

std::string CurveSvg(const CurvePlot& plot) {
  const auto& curve = plot.points;
  const auto chosen = plot.chosen;
  const double budget_bpp = plot.budget_x;
  const std::string& ylabel = plot.ylabel;
  const int w = 560, h = 340, l = 70, r = 20, t = 30, b = 50;
  double x0 = 1e30, x1 = -1e30, y0 = 1e30, y1 = -1e30;
  for (auto [x, y] : curve) {
    x0 = std::min(x0, x), x1 = std::max(x1, x);
    const double ly = std::log10(std::max(y, 1e-12));
    y0 = std::min(y0, ly), y1 = std::max(y1, ly);
  }
  if (x1 <= x0) x1 = x0 + 1;
  if (y1 <= y0) y1 = y0 + 1;
  auto px = [&](double x) { return l + (x - x0) / (x1 - x0) * (w - l - r); };
  auto py = [&](double y) { return t + (y1 - std::log10(std::max(y, 1e-12))) / (y1 - y0) * (h - t - b); };
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"11\">\n<text x=\"{}\" y=\"18\" font-size=\"13\">{}</text>\n"
      "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/>\n<line x1=\"{}\" y1=\"{}\" x2=\"{}\" "
      "y2=\"{}\" "
      "stroke=\"#333\"/>\n",
      w, h, l, plot.title, l, h - b, w - r, h - b, l, t, l, h - b);
  std::string pts;
  for (auto [x, y] : curve) pts += fmt::format("{:.1f},{:.1f} ", px(x), py(y));
  svg += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"#3d85c6\" stroke-width=\"2\"/>\n", pts);
  for (auto [x, y] : curve)
    svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"#3d85c6\"/>\n", px(x), py(y));
  svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"5\" fill=\"#cc0000\"/>\n", px(chosen.first),
                     py(chosen.second));
  if (budget_bpp >= x0 && budget_bpp <= x1) {
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#cc0000\" "
        "stroke-dasharray=\"4\"/>\n",
        px(budget_bpp), t, h - b);
  }
  for (int i = 0; i <= 4; ++i) {
    const double x = x0 + (x1 - x0) * i / 4;
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:.2f}</text>\n", px(x),
                       h - b + 15, x);
    // The y axis is log10 of the error: label each tick with the error itself (2.0e-03),
    // not with a fractional exponent.
    const double ly = y0 + (y1 - y0) * i / 4;
    svg += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:.1e}</text>\n", l - 4,
                       t + (y1 - ly) / (y1 - y0) * (h - t - b) + 4, std::pow(10.0, ly));
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n", (l + w - r) / 2, h - 12,
                     plot.xlabel);
  svg += fmt::format(
      "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>\n",
      (t + h - b) / 2, (t + h - b) / 2, ylabel);
  return svg + "</svg>\n";
}

std::string LayerMapSvg(const LayerMapPlot& plot) {
  const int blocks = plot.blocks;
  const std::string& title = plot.title;
  const auto& removed = plot.removed;
  std::map<std::pair<int, int>, int> step;  // (block, 0 attention / 1 ffn) -> removal step
  for (size_t i = 0; i < removed.size(); ++i) {
    if (removed[i].attention) step[{removed[i].block, 0}] = static_cast<int>(i) + 1;
    if (removed[i].mlp) step[{removed[i].block, 1}] = static_cast<int>(i) + 1;
  }
  const int cw = 36, ch = 28, left = 70, top = 40;
  // Wide enough for the title too (about 7 px per character at 13 px): short models with a
  // long title cut it off otherwise.
  const int width = std::max<int>(left + blocks * cw + 20, 20 + static_cast<int>(title.size()) * 7),
            height = top + 2 * ch + 60;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"11\">\n<text x=\"10\" y=\"20\" font-size=\"13\">{}</text>\n",
      width, height, title);
  const char* rows[2] = {"attention", "ffn"};
  for (int r = 0; r < 2; ++r) {
    svg += fmt::format("<text x=\"10\" y=\"{}\">{}</text>\n", top + r * ch + 18, rows[r]);
    for (int b = 0; b < blocks; ++b) {
      auto it = step.find({b, r});
      const bool gone = it != step.end();
      svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\" stroke=\"#333\"/>\n",
                         left + b * cw, top + r * ch, cw - 4, ch - 4, gone ? "#f4cccc" : "#6fa8dc");
      if (gone) {
        svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                           left + b * cw + (cw - 4) / 2, top + r * ch + 17, it->second);
      }
    }
  }
  for (int b = 0; b < blocks; ++b) {
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                       left + b * cw + (cw - 4) / 2, top + 2 * ch + 14, b);
  }
  svg += fmt::format(
      "<text x=\"10\" y=\"{}\">blue: kept; red: removed (number = removal step); columns: teacher "
      "block</text>\n",
      top + 2 * ch + 40);
  return svg + "</svg>\n";
}

std::string PlotSvg(const Plot& plot) {
  if (const auto* c = std::get_if<CurvePlot>(&plot)) return CurveSvg(*c);
  return LayerMapSvg(std::get<LayerMapPlot>(plot));
}

}  // namespace compress
