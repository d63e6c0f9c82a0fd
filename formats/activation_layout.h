// How activation and KV-cache quantization (Model::input_quant, Model::kv_cache) is stored in
// safetensors checkpoints, in the compressed-tensors conventions (docs/formats.md):
//  - a layer's input: QuantizationArgs under `input_activations` (of its config group, or of
//    its entry in compress's own layout), and a static scale as `<layer>.input_scale` F32 [1]
//    (LLM-FP4's per-channel exponents as `<layer>.input_channel_exp` I8 [in]);
//  - the cache: `kv_cache_scheme` (QuantizationArgs) when K and V share one static strategy
//    (tensor or channel), with `<attention>.k_scale` / `<attention>.v_scale` F32 ([1] or
//    [kv_dim]) in each block's attention module (AlignedKV's per-channel int widths as
//    `.k_bits` / `.v_bits` I8 [kv_dim] beside them); other combinations (the default: K per
//    channel, V dynamic per token and head) go under compress's own key
//    `compress_kv_cache: {k: args, v: args}`, which compressed-tensors loaders ignore.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "core/model.h"
#include "formats/quantized_safetensors.h"

namespace compress {

// Every input_quant entry must name a quantized '<layer>.weight' of the model.
absl::Status CheckActivationTargets(const Model& m);
// The `input_activations` args of weight `weight` (null when its inputs are not quantized).
// `compressed_tensors`: drops compress's f16_outliers extension where the weight has no
// outlier features (the two forms then compute the same).
nlohmann::json InputActivationsJson(const Model& m, const std::string& weight, bool compressed_tensors);
// Adds `<layer>.input_scale` for static input scales and the KV cache's scales and
// quantization_config keys to `out` (creating a compressed-tensors config with format
// "dense" when no weight is quantized).
absl::Status ExpandActivationQuant(const Model& m, ExpandedStore& out);

// Reading: the input spec of `<base>.weight` from its args (consuming `<base>.input_scale`).
absl::Status CollapseInputActivations(Model& m, const std::string& base, const nlohmann::json& args,
                                      const std::string& path);
// Reading: the cache spec from `qc` and its scale tensors in blocks named PREFIX.N....
absl::Status CollapseKvCache(Model& m, const nlohmann::json& qc, std::span<const std::string_view> block_prefixes,
                             int64_t head_dim, const std::string& path);

}  // namespace compress
