// Hugging Face config.json reading and the architecture view of decoder-only checkpoints.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "core/model.h"
#include "nlohmann/json.hpp"

namespace compress {

// The fields of config.json that compress uses, tolerant of old and new spellings
// (`rope_theta` at top level or inside `rope_parameters`/`rope_scaling`; GPT-2's n_embd...).
struct HfConfig {
  std::string model_type;
  int64_t hidden_size = 0, num_layers = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t intermediate_size = 0, vocab_size = 0, max_positions = 0;
  double rope_theta = 10000.0;
  double norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  std::string hidden_act;
  std::optional<nlohmann::json> rope_scaling;  // as given, for families that use it
  // The rope scaling parameters, type-checked: kind ("default" when none) and llama3's numbers.
  struct RopeScaling {
    std::string type = "default";
    double factor = 8.0, low_freq_factor = 1.0, high_freq_factor = 4.0, original_max_positions = 8192.0;
  } rope;
};

// Every field is type- and range-checked: a wrong type or an impossible value (rope_theta
// <= 0, a negative eps) is an error naming the file and the key.
absl::StatusOr<HfConfig> ParseHfConfig(const nlohmann::json& j, const std::string& path);

// Builds the block/attention/mlp view from tensor names for Llama/Mistral/Qwen2-style
// (`model.layers.N.self_attn.q_proj.weight`) and GPT-2-style (`transformer.h.N.attn.c_attn`)
// checkpoints, and checks shapes against the config.
absl::StatusOr<Architecture> BuildHfArchitecture(const HfConfig& cfg, const TensorStore& tensors,
                                                 const std::string& path);

// Re-derives model.arch from model.config and model.tensors after a pass changed either
// (head counts, dropped blocks).
absl::Status RebuildHfArchitecture(Model& model);

// Role of every tensor by its name when no config is known (a bare .safetensors file).
Architecture BuildGenericArchitecture(const TensorStore& tensors);

}  // namespace compress
