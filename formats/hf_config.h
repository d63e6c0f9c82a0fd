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
  std::string model_type;  // the text decoder's (a container's text_config.model_type)
  // A multimodal container (Gemma 3, Mistral 3, LLaVA: a vision tower and projector beside a
  // text decoder whose parameters config.json nests as text_config): its top-level model_type;
  // empty for a text-only checkpoint. compress compresses and runs the text decoder.
  std::string container_type;
  int64_t hidden_size = 0, num_layers = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t intermediate_size = 0, vocab_size = 0, max_positions = 0;
  double rope_theta = 10000.0;  // of the full-attention layers (rope.theta)
  double norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  std::string hidden_act;  // hidden_act, hidden_activation or activation_function; "" when absent
  std::optional<nlohmann::json> rope_scaling;  // as given, when not "default"
  // Rotary embedding parameters, type-checked: kind ("default" when none), base and the
  // numbers of the scaled kinds (linear: factor; llama3: factor, low/high_freq_factor,
  // original_max_position_embeddings).
  struct RopeScaling {
    std::string type = "default";
    double theta = 10000.0;
    double factor = 8.0, low_freq_factor = 1.0, high_freq_factor = 4.0, original_max_positions = 8192.0;
    bool original_given = false;  // original_max_position_embeddings was in the object
    // yarn: correction range and attention factor inputs (0: absent).
    double attention_factor = 0, beta_fast = 32, beta_slow = 1, mscale = 0, mscale_all_dim = 0;
    bool truncate = true;
    // longrope: per-dimension frequency divisors for short and long sequences.
    std::vector<double> short_factor, long_factor;
  };
  RopeScaling rope;        // full-attention layers
  RopeScaling rope_local;  // sliding-window layers (Gemma 3's rope_local_base_freq; else = rope)
  double partial_rotary_factor = 1.0;  // fraction of head_dim that RoPE rotates
  int64_t original_max_positions = 0;  // top-level original_max_position_embeddings (Phi-3 longrope)
  // Attention variants.
  int64_t sliding_window = 0;            // 0: none
  std::vector<std::string> layer_types;  // "sliding_attention" / "full_attention" per layer, when given
  bool use_sliding_window = false;       // Qwen: sliding layers from max_window_layers on
  int64_t max_window_layers = 0;
  int64_t sliding_window_pattern = 6;    // Gemma 3: every Nth layer is global
  double attn_softcap = 0, final_softcap = 0;  // tanh soft-capping of scores / logits (0: none)
  double query_pre_attn_scalar = 0;            // Gemma 2/3 attention scale (0: head_dim)
  // Mixture of experts (0 when dense).
  int64_t num_experts = 0, experts_per_token = 0, moe_intermediate_size = 0, shared_expert_intermediate_size = 0;
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  std::optional<bool> norm_topk_prob;
  // DeciLM / Nemotron-NAS block_configs (FinerCut students): per layer, whether its attention /
  // FFN is a no-op (empty when the config has none).
  std::vector<bool> attention_removed, mlp_removed;
  bool AttentionRemoved(int64_t layer) const {
    return layer < static_cast<int64_t>(attention_removed.size()) && attention_removed[layer];
  }
  bool MlpRemoved(int64_t layer) const { return layer < static_cast<int64_t>(mlp_removed.size()) && mlp_removed[layer]; }
  // Which layers attend through the sliding window, by layer_types or the family's rule.
  bool SlidingLayer(int64_t layer) const;
  // Whether layer `layer` has a mixture-of-experts FFN (Qwen's decoder_sparse_step and
  // mlp_only_layers; every layer for Mixtral).
  bool MoeLayer(int64_t layer) const;

  // The context extension of a yarn or longrope scaling `r`, as transformers derives it: the
  // original context length (original_max_position_embeddings, else max_position_embeddings),
  // the factor (max_positions / original when the original length is given, else r.factor)
  // and the attention factor when r gives none (yarn: 0.1 ln f + 1, or the mscale ratio;
  // longrope: sqrt(1 + ln f / ln original); 1 when f <= 1). The runtime and the GGUF writer
  // both read these.
  struct RopeExtension {
    double original = 0, factor = 1, attention = 1;
  };
  RopeExtension YarnExtension(const RopeScaling& r) const;
  RopeExtension LongropeExtension(const RopeScaling& r) const;
};

// Llama 3 rope scaling: the multiplier of a rotary frequency whose wavelength (2 pi / inverse
// frequency) is `wavelen`: 1 above the high-frequency band edge, 1 / factor below the low one,
// and the linear blend between them.
double Llama3FrequencyScale(const HfConfig::RopeScaling& r, double wavelen);

// Every field is type- and range-checked: a wrong type or an impossible value (rope_theta
// <= 0, a negative eps) is an error naming the file and the key. A multimodal container's
// text_config is parsed (container_type set).
absl::StatusOr<HfConfig> ParseHfConfig(const nlohmann::json& j, const std::string& path);

// The object holding the text decoder's parameters: config.json's text_config in a multimodal
// container, the config itself otherwise (what passes that change head counts, widths or layer
// counts edit).
nlohmann::json& TextConfig(nlohmann::json& config);
const nlohmann::json& TextConfig(const nlohmann::json& config);

// Builds the block/attention/mlp view from tensor names for Llama/Mistral/Qwen2-style
// (`model.layers.N.self_attn.q_proj.weight`) and GPT-2-style (`transformer.h.N.attn.c_attn`)
// checkpoints, and checks shapes against the config.
absl::StatusOr<Architecture> BuildHfArchitecture(const HfConfig& cfg, const TensorStore& tensors,
                                                 const std::string& path);

// Re-derives model.arch from model.config and model.tensors after a pass changed either
// (head counts, dropped blocks).
absl::Status RebuildHfArchitecture(Model& model);

// A multimodal container's text decoder as a plain checkpoint of its family: text_config as the
// config (with the container's tying), the decoder's tensors under the family's own names
// (model.layers..., lm_head.weight), the vision tower and projector left out. For outputs whose
// runtimes take the decoder alone (GGUF: llama.cpp reads a vision tower from a separate mmproj file).
absl::StatusOr<Model> TextDecoderModel(const Model& model);

// Role of every tensor by its name when no config is known (a bare .safetensors file).
Architecture BuildGenericArchitecture(const TensorStore& tensors);

}  // namespace compress
