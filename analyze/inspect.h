// What `compress inspect` shows of a model: format, architecture (blocks, attention and FFN
// projections, experts, routers), sizes by dtype and role, activation and KV-cache schemes.
#pragma once

#include <string>
#include <utility>

#include "core/model.h"
#include "nlohmann/json.hpp"

namespace compress {

// `path` is how the user named the model.
// Tensors and parameters of a multimodal container outside its text decoder (role kOther).
std::pair<int64_t, int64_t> OutsideTextDecoder(const Model& m);
nlohmann::ordered_json InspectJson(const Model& m, const std::string& path);
std::string InspectText(const Model& m, const std::string& path);

}  // namespace compress
