// Low-rank (factorized) weights in safetensors checkpoints: `<layer>.weight_lr_a` [out, r]
// and `<layer>.weight_lr_b` [r, in] in the weight's dtype, and in config.json
// `compress_low_rank` = {format_version: 1, layers: {<layer>: r}}. Hugging Face loaders do
// not know this form: `compress decompress` multiplies the factors back into `<layer>.weight`.
#pragma once

#include "absl/status/status.h"
#include "core/model.h"
#include "nlohmann/json.hpp"

namespace compress {

// Replaces factorized weights in `tensors` by their two factors; returns the config entry
// (null when nothing is factorized).
absl::StatusOr<nlohmann::json> ExpandLowRank(TensorStore& tensors);

// Reads the factors named by config.json's compress_low_rank back into factorized weights
// (checking shapes, ranks and dtypes) and drops the entry.
absl::Status CollapseLowRank(Model& m, const std::string& path);

}  // namespace compress
