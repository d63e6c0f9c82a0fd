// Serializes a RunReport as versioned JSON (docs/report.md) and as a short Markdown summary.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/report.h"
#include "nlohmann/json.hpp"

namespace compress {

nlohmann::ordered_json ReportToJson(const RunReport& r);
// `report_path`: where the Markdown goes, so pass plots (ArtifactFiles) are linked by name.
std::string ReportToMarkdown(const RunReport& r, const std::string& report_path = "");
// Where each pass artifact goes next to a report file: "<report minus extension>.<pass
// number>.<plot name>" (e.g. report.1.layers.svg), with its drawing.
std::vector<std::pair<std::string, std::string>> ArtifactFiles(const RunReport& r, const std::string& report_path);
// "1.23 MiB"
std::string HumanBytes(int64_t bytes);

}  // namespace compress
