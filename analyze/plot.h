// SVG drawings of the plots passes put in their reports (core/report.h: CurvePlot, LayerMapPlot).
#pragma once

#include <string>

#include "core/report.h"

namespace compress {

std::string PlotSvg(const Plot& plot);
std::string CurveSvg(const CurvePlot& plot);
std::string LayerMapSvg(const LayerMapPlot& plot);

}  // namespace compress
