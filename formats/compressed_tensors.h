// The compressed-tensors safetensors layouts for integer-quantized weights (vLLM and
// llm-compressor read them):
//  - "int-quantized": `<layer>.weight` I8 codes [out, in];
//  - "pack-quantized": `<layer>.weight_packed` I32 [out, ceil(in / (32 / bits))] with codes
//    + 2^(bits-1) packed from the low bits up, and `<layer>.weight_shape` I64 [2] = [out, in];
// both with `<layer>.weight_scale` F32 [out, groups], `<layer>.weight_zero_point` I8
// [out, groups] when asymmetric (int-quantized only); "float-quantized": `<layer>.weight`
// F8_E4M3 codes with `<layer>.weight_scale` F32 [out, 1]; and a `quantization_config` in
// config.json naming each scheme and the layers it targets.
#pragma once

#include "absl/status/statusor.h"
#include "core/model.h"
#include "formats/quantized_safetensors.h"

namespace compress {

// Whether every quantized weight of `m` fits the layout `format`: int-quantized,
// pack-quantized or float-quantized (FP8 E4M3 weights [out, in] with per-channel
// `weight_scale` F32 [out, 1]).
bool FitsCompressedTensors(const Model& m, std::string_view format);

// The tensors and quantization_config of `format`, with each config group's
// input_activations (formats/activation_layout.h).
absl::StatusOr<ExpandedStore> ExpandCompressedTensors(const Model& m, std::string_view format);

// Re-attaches scales and zero points of a compressed-tensors checkpoint to their weights,
// checking shapes and (opts.check_codes) that every code fits `num_bits`.
absl::Status CollapseCompressedTensors(Model& m, const nlohmann::json& qc, const std::string& path,
                                       const LoadOptions& opts = {});

// Hugging Face's fine-grained FP8 checkpoints (quant_method "fp8", fmt e4m3: DeepSeek-V3,
// Qwen3-*-FP8): `<layer>.weight` F8_E4M3 [out, in] with `<layer>.weight_scale_inv` F32, one
// scale per weight_block_size block ([ceil(out / bo), ceil(in / bi)]; the value is e4m3(code) x
// scale) become fp8 QuantInfo weights with per-row groups of gcd(in, bi) inputs.
absl::Status CollapseBlockFp8(Model& m, const nlohmann::json& qc, const std::string& path,
                              const LoadOptions& opts = {});

}  // namespace compress
