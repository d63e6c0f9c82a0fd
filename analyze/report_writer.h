// Serializes a RunReport as versioned JSON (docs/report.md) and as a short Markdown summary.
#pragma once

#include <string>

#include "core/report.h"
#include "nlohmann/json.hpp"

namespace compress {

nlohmann::ordered_json ReportToJson(const RunReport& r);
std::string ReportToMarkdown(const RunReport& r);
// "1.23 MiB"
std::string HumanBytes(int64_t bytes);

}  // namespace compress
