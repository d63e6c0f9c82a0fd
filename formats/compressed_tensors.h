// The compressed-tensors "int-quantized" safetensors layout for integer-quantized weights:
// `<layer>.weight` int8 codes [out, in], `<layer>.weight_scale` f32 [out, groups],
// `<layer>.weight_zero_point` int8 [out, groups] when asymmetric, and a
// `quantization_config` in config.json naming each scheme and the layers it targets.
#pragma once

#include "absl/status/statusor.h"
#include "core/model.h"
#include "nlohmann/json.hpp"

namespace compress {

struct ExpandedStore {
  TensorStore tensors;
  nlohmann::json quantization_config;  // null when nothing is quantized
};

// The tensors to write for `m`: quantized weights become codes + scales (+ zero points).
absl::StatusOr<ExpandedStore> ExpandQuantized(const Model& m);

// After loading a checkpoint whose config.json says compressed-tensors: reattaches scales
// and zero points to their weights (checking shapes and code ranges) and drops the
// quantization_config from `m.config` (the writer regenerates it from the tensors).
absl::Status CollapseQuantized(Model& m, const std::string& path);

}  // namespace compress
