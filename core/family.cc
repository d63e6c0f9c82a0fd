// The model-family table.
#include "core/family.h"

namespace compress {

const std::vector<FamilySpec>& Families() {
  using S = FamilySpec::Sliding;
  static const std::vector<FamilySpec> kTable = [] {
    std::vector<FamilySpec> t;
    auto add = [&](std::string_view name) -> FamilySpec& {
      t.push_back(FamilySpec{});
      t.back().name = name;
      t.back().model_types = {name};
      return t.back();
    };
    // DeciLM / Nemotron-NAS checkpoints are Llama blocks with per-layer block_configs (no-op
    // attention or FFN: FinerCut students).
    add("llama").model_types = {"llama", "nemotron-nas"};
    add("mistral").sliding = S::kAll;
    // Qwen2-VL / Qwen2.5-VL decoders are Qwen2's (their containers' text model_types).
    {
      FamilySpec& f = add("qwen2");
      f.sliding = S::kQwenFromMaxWindow;
      f.model_types = {"qwen2", "qwen2_vl", "qwen2_5_vl", "qwen2_vl_text", "qwen2_5_vl_text"};
    }
    {
      FamilySpec& f = add("qwen3");
      f.qk_norm = true;
      f.sliding = S::kQwenFromMaxWindow;
    }
    {
      FamilySpec& f = add("gemma");
      f.norm = NormKind::kRmsOffset;
      f.embed_scale = true;
      f.default_act = "gelu_pytorch_tanh";
    }
    {
      FamilySpec& f = add("gemma2");
      f.norm = NormKind::kRmsOffset;
      f.sandwich_norms = f.embed_scale = f.query_pre_attn_scalar = true;
      f.sliding = S::kEvenLayers;
      f.default_act = "gelu_pytorch_tanh";
    }
    {
      FamilySpec& f = add("gemma3_text");
      f.norm = NormKind::kRmsOffset;
      f.sandwich_norms = f.embed_scale = f.query_pre_attn_scalar = f.qk_norm = true;
      f.sliding = S::kGemma3Pattern;
      f.default_act = "gelu_pytorch_tanh";
    }
    {
      FamilySpec& f = add("phi3");
      f.layout = ProjectionLayout::kFusedPhi3;
      f.sliding = S::kAll;
    }
    {
      FamilySpec& f = add("gpt2");
      f.norm = NormKind::kLayerNorm;
      f.layout = ProjectionLayout::kConv1dGpt2;
      f.default_act = "gelu_new";
      f.block_prefixes = {"transformer.h", "h"};
      f.embeddings = {"transformer.wte.weight", "wte.weight"};
      f.final_norms = {"transformer.ln_f.weight", "ln_f.weight"};
    }
    {
      FamilySpec& f = add("mixtral");
      f.moe = MoeNaming::kMixtral;
      f.norm_topk_default = true;
      f.sliding = S::kAll;
    }
    {
      FamilySpec& f = add("qwen2_moe");
      f.moe = MoeNaming::kQwen;
      f.sliding = S::kQwenFromMaxWindow;
    }
    {
      FamilySpec& f = add("qwen3_moe");
      f.moe = MoeNaming::kQwen;
      f.qk_norm = true;
      f.sliding = S::kQwenFromMaxWindow;
    }
    return t;
  }();
  return kTable;
}

std::string DecoderTensorName(std::string_view name) {
  for (const auto& [from, to] : {std::pair<std::string_view, std::string_view>{"model.language_model.", "model."},
                                 {"language_model.model.", "model."},
                                 {"model.text_model.", "model."},
                                 {"language_model.lm_head.", "lm_head."}}) {
    if (name.starts_with(from)) return std::string(to) + std::string(name.substr(from.size()));
  }
  return std::string(name);
}

const FamilySpec* FindFamily(std::string_view model_type) {
  for (const FamilySpec& f : Families()) {
    for (std::string_view t : f.model_types) {
      if (t == model_type) return &f;
    }
  }
  return nullptr;
}

std::string FamilyNames() {
  std::string s;
  for (const FamilySpec& f : Families()) {
    if (!s.empty()) s += ", ";
    s += f.name;
  }
  return s;
}

bool ParseActivation(std::string_view name, Activation& out) {
  if (name == "silu" || name == "swish") {
    out = Activation::kSilu;
  } else if (name == "gelu_pytorch_tanh" || name == "gelu_new" || name == "gelu_fast" || name == "gelu_tanh") {
    out = Activation::kGeluTanh;
  } else if (name == "gelu") {
    out = Activation::kGeluErf;
  } else {
    return false;
  }
  return true;
}

}  // namespace compress
