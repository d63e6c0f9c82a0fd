// Model families as data: one table entry per decoder-only architecture family says how its
// checkpoint names its tensors and what its blocks compute. The architecture view
// (hf_config.cc), the runtime (runtime/llama.cc) and the passes read the same entry; adding
// a family is a row here plus its parity golden (tests/golden/families).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace compress {

enum class NormKind {
  kRms,         // x / rms(x) * w
  kRmsOffset,   // x / rms(x) * (1 + w)   (Gemma: the stored weight is an offset from 1)
  kLayerNorm,   // (x - mean) / std * w + b (GPT-2)
};

// How a family's blocks lay out their projections in the checkpoint.
enum class ProjectionLayout {
  kSeparate,     // q_proj, k_proj, v_proj; gate_proj, up_proj, down_proj ([out, in])
  kFusedPhi3,    // qkv_proj = [q; k; v] rows, gate_up_proj = [gate; up] rows ([out, in])
  kConv1dGpt2,   // c_attn = [q | k | v] columns, c_fc, c_proj, stored [in, out]
};

// Where a family keeps its mixture-of-experts FFN.
enum class MoeNaming {
  kNone,
  kMixtral,  // block_sparse_moe.gate (router), block_sparse_moe.experts.E.{w1 gate, w3 up, w2 down}
  kQwen,     // mlp.gate (router), mlp.experts.E.{gate,up,down}_proj, mlp.shared_expert.* and
             // mlp.shared_expert_gate (Qwen2-MoE only)
};

struct FamilySpec {
  std::string_view name;                      // the canonical model_type
  std::vector<std::string_view> model_types;  // config.json model_type values it covers
  NormKind norm = NormKind::kRms;
  // Gemma 2/3 "sandwich" norms: the attention and FFN outputs are normed (post_attention_layernorm,
  // post_feedforward_layernorm) before the residual add, and the FFN input by
  // pre_feedforward_layernorm. Otherwise post_attention_layernorm is the FFN's input norm.
  bool sandwich_norms = false;
  bool qk_norm = false;      // per-head q_norm / k_norm before RoPE (Qwen3, Gemma 3)
  bool embed_scale = false;  // embeddings times sqrt(hidden_size) (Gemma)
  // query_pre_attn_scalar^-1/2 instead of head_dim^-1/2 as the attention scale (Gemma 2/3).
  bool query_pre_attn_scalar = false;
  ProjectionLayout layout = ProjectionLayout::kSeparate;
  MoeNaming moe = MoeNaming::kNone;
  // Routed weights renormalised over the top-k when config.json has no norm_topk_prob.
  bool norm_topk_default = false;
  // Which layers use the sliding window when config.json has no layer_types: every layer
  // (when sliding_window is set), Gemma 2's even layers, Gemma 3's pattern, or Qwen's layers
  // from max_window_layers on (when use_sliding_window).
  enum class Sliding { kNone, kAll, kEvenLayers, kGemma3Pattern, kQwenFromMaxWindow } sliding = Sliding::kNone;
  std::string_view default_act = "silu";  // when config.json names no activation
  // The block's tensors: "PREFIX.N.module..." where PREFIX is one of these. The text decoder of
  // a multimodal container (Gemma 3, Mistral 3, LLaVA) sits under model.language_model
  // (transformers >= 4.52) or language_model.model (4.50-4.51, most published checkpoints);
  // Idefics3's and SmolVLM's under model.text_model.
  std::vector<std::string_view> block_prefixes = {"model.layers", "layers", "model.language_model.layers",
                                                  "language_model.model.layers", "model.text_model.layers"};
  std::vector<std::string_view> embeddings = {"model.embed_tokens.weight", "embed_tokens.weight",
                                              "model.language_model.embed_tokens.weight",
                                              "language_model.model.embed_tokens.weight",
                                              "model.text_model.embed_tokens.weight"};
  std::vector<std::string_view> final_norms = {"model.norm.weight", "norm.weight", "model.language_model.norm.weight",
                                               "language_model.model.norm.weight", "model.text_model.norm.weight"};
};

// The name a multimodal container's decoder tensor has in a plain checkpoint of its family
// (model.language_model.X, language_model.model.X and model.text_model.X: model.X;
// language_model.lm_head.X: lm_head.X); any other name as it is.
std::string DecoderTensorName(std::string_view name);

// The entry whose model_types include `model_type`; null when no family has it.
const FamilySpec* FindFamily(std::string_view model_type);
// Every entry, in table order.
const std::vector<FamilySpec>& Families();
// "llama, mistral, ..." for error messages.
std::string FamilyNames();

// Activation of a gated (or GPT-2) MLP.
enum class Activation { kSilu, kGeluTanh, kGeluErf };
// Maps config.json's hidden_act / hidden_activation / activation_function spelling; false
// when unknown.
bool ParseActivation(std::string_view name, Activation& out);

}  // namespace compress
