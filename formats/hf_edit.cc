// The checkpoint editor for safetensors checkpoints with config.json: structural edits kept
// consistent with the family's loaders.
#include "formats/hf_edit.h"

#include <algorithm>

#include "core/family.h"
#include "core/status.h"
#include "formats/fused_layout.h"
#include "formats/hf_config.h"

namespace compress {
namespace {

// Which sublayers of each block are removed.
struct Gone {
  std::vector<bool> attn, mlp;
};

class HfEditor final : public CheckpointEditor {
 public:
  absl::Status CheckEditable(const Model& model, StructuralEdit edit) const override {
    const Architecture& a = model.arch;
    const bool checkpoint = model.format == ModelFormat::kSafetensors && model.config.is_object() && !a.blocks.empty();
    switch (edit) {
      case StructuralEdit::kAttentionHeads:
        if (!checkpoint || a.family == "gpt2")
          return Unimplemented("{}: head pruning needs a Llama-family safetensors checkpoint with config.json",
                               model.source);
        return absl::OkStatus();
      case StructuralEdit::kFfnWidth:
      case StructuralEdit::kExpertCount:
        if (!checkpoint)
          return Unimplemented("{}: FFN pruning needs a Llama-family safetensors checkpoint with config.json",
                               model.source);
        return absl::OkStatus();
      case StructuralEdit::kSublayers:
        if (!checkpoint)
          return Unimplemented(
              "{}: sublayer removal needs a safetensors checkpoint of a known family with config.json or an ONNX "
              "decoder graph",
              model.source);
        return absl::OkStatus();
    }
    return absl::OkStatus();
  }

  absl::Status KeepFfnNeurons(Model&, const std::map<std::string, std::vector<int64_t>>&) const override {
    return absl::OkStatus();  // nothing besides the projections and their biases is per neuron
  }

  absl::StatusOr<bool> SplitFused(Model& model) const override { return SplitFusedProjections(model); }
  absl::Status Fuse(Model& model) const override { return FuseProjections(model); }

  absl::Status SetAttentionHeads(Model& model, int64_t heads, int64_t kv_heads,
                                 int64_t head_dim) const override {
    nlohmann::json& tc = TextConfig(model.config);
    tc["num_attention_heads"] = heads;
    tc["num_key_value_heads"] = kv_heads;
    tc["head_dim"] = head_dim;
    return RebuildHfArchitecture(model);
  }

  absl::Status SetFfnWidth(Model& model, int64_t dense, int64_t expert, int64_t shared) const override {
    // One width per kind of FFN, as config.json can express it. Routed experts' width is
    // moe_intermediate_size (Qwen MoE), or intermediate_size where the config has no such key
    // (Mixtral, whose every block is MoE).
    nlohmann::json& tc = TextConfig(model.config);
    if (expert > 0) tc[tc.contains("moe_intermediate_size") ? "moe_intermediate_size" : "intermediate_size"] = expert;
    if (shared > 0) tc["shared_expert_intermediate_size"] = shared;
    // GPT-2 configs name the MLP width n_inner (null: 4 x n_embd).
    const bool gpt2 = tc.value("model_type", "") == "gpt2";
    if (dense > 0) tc[gpt2 ? "n_inner" : "intermediate_size"] = dense;
    // A DeciLM student's loaders take the width from each block's ffn_mult, rounded up to a
    // multiple of 256.
    if (dense > 0 && tc.contains("block_configs") && tc["block_configs"].is_array()) {
      if (dense % 256 != 0) {
        return Unimplemented(
            "{}: a DeciLM student's FFN width must stay a multiple of 256 (its loaders derive it from ffn_mult); "
            "{} is not: choose a ratio that keeps one, or prune before remove-layers-finercut",
            model.source, dense);
      }
      const double mult = 3.0 * static_cast<double>(dense) / (2.0 * static_cast<double>(model.arch.hidden_size));
      for (auto& b : tc["block_configs"]) {
        if (!b.contains("ffn") || !b["ffn"].is_object()) continue;
        const nlohmann::json& no_op = b["ffn"].contains("no_op") ? b["ffn"]["no_op"] : nlohmann::json();
        if (!(no_op.is_boolean() && no_op.get<bool>())) b["ffn"]["ffn_mult"] = mult;
      }
    }
    if (expert > 0 || shared > 0 || gpt2) return RebuildHfArchitecture(model);
    // Dense only: the view follows without a rebuild (the projections may be split from a
    // fused layout the family's names do not describe until they are fused again).
    model.arch.intermediate_size = dense;
    for (Block& b : model.arch.blocks) {
      for (LinearLayer& l : b.mlp) {
        if (l.kind == "gate_proj" || l.kind == "up_proj") l.out_features = dense;
        if (l.kind == "down_proj") l.in_features = dense;
      }
    }
    return absl::OkStatus();
  }

  absl::Status SetExpertCount(Model& model, int64_t experts) const override {
    nlohmann::json& tc = TextConfig(model.config);
    for (const char* key : {"num_experts", "num_local_experts"}) {
      if (tc.contains(key)) tc[key] = experts;
    }
    return RebuildHfArchitecture(model);
  }

  absl::StatusOr<std::pair<std::vector<bool>, std::vector<bool>>> RemoveSublayers(
      Model& model, std::vector<bool> attention, std::vector<bool> mlp) const override;

  absl::Status SetStorageType(Model& model, DType type) const override {
    const char* torch = type == DType::kF32    ? "float32"
                        : type == DType::kF16  ? "float16"
                        : type == DType::kBF16 ? "bfloat16"
                                               : nullptr;
    if (!torch || !model.config.is_object()) return absl::OkStatus();
    for (const char* key : {"torch_dtype", "dtype"}) {
      if (model.config.contains(key)) model.config[key] = torch;
      // A container's text / vision configs may name their own.
      for (const char* sub : {"text_config", "vision_config"}) {
        if (model.config.contains(sub) && model.config[sub].is_object() && model.config[sub].contains(key))
          model.config[sub][key] = torch;
      }
    }
    if (!model.config.contains("torch_dtype") && !model.config.contains("dtype"))
      model.config["torch_dtype"] = torch;
    return absl::OkStatus();
  }
};

// DeciLM / Nemotron-NAS block_configs for the student's blocks (after renumbering): no-op
// flags for the removed sublayers, the teacher's GQA group and FFN multiplier for the others.
nlohmann::json DeciBlockConfigs(const HfConfig& cfg, const Gone& gone, const std::vector<int>& new_index) {
  nlohmann::json out = nlohmann::json::array();
  const double ffn_mult =
      3.0 * static_cast<double>(cfg.intermediate_size) / (2.0 * static_cast<double>(cfg.hidden_size));
  for (size_t b = 0; b < new_index.size(); ++b) {
    if (new_index[b] < 0) continue;
    nlohmann::json attn = {{"no_op", static_cast<bool>(gone.attn[b])}, {"replace_with_linear", false}};
    attn["n_heads_in_group"] =
        gone.attn[b] ? nlohmann::json() : nlohmann::json(cfg.num_heads / cfg.num_kv_heads);
    nlohmann::json ffn = {{"no_op", static_cast<bool>(gone.mlp[b])}, {"replace_with_linear", false}};
    ffn["ffn_mult"] = gone.mlp[b] ? nlohmann::json() : nlohmann::json(ffn_mult);
    out.push_back({{"attention", attn}, {"ffn", ffn}});
  }
  return out;
}

// Widens FFN projection `l` (gate_proj / up_proj rows, down_proj columns) to `width` neurons
// with zeros; dense floating-point weights only.
absl::Status PadFfnWidth(Model& model, const LinearLayer& l, int64_t width) {
  const Tensor t = model.tensors.at(l.weight);
  if (t.quant() || t.factors() || !IsFloating(t.dtype()) || t.shape().size() != 2 || !l.bias.empty()) {
    return Unimplemented(
        "{}: a DeciLM student needs its FFN width as a multiple of 256 and '{}' cannot be widened ({}); run "
        "remove-layers-finercut before quantization",
        model.source, l.weight, t.quant() ? "quantized" : t.factors() ? "factorized" : l.bias.empty() ? DTypeName(t.dtype()) : "it has a bias");
  }
  ASSIGN_OR_RETURN(std::vector<float> w, t.ToF32());
  const int64_t rows = t.shape()[0], cols = t.shape()[1];
  const bool down = l.kind == "down_proj";
  const Shape shape = down ? Shape{rows, width} : Shape{width, cols};
  std::vector<float> out(shape[0] * shape[1], 0.f);
  for (int64_t r = 0; r < rows; ++r) std::copy_n(w.begin() + r * cols, cols, out.begin() + r * shape[1]);
  ASSIGN_OR_RETURN(Tensor padded, Tensor::FromF32(out, shape, t.dtype()));
  model.tensors.Set(l.weight, std::move(padded));
  return absl::OkStatus();
}

// Whether a teacher's blocks are DeciLM's (Llama's) blocks, so its student can take the DeciLM /
// Nemotron-NAS form: dense Llama, Mistral, Qwen2 and Phi-3 checkpoints whose attention never slides
// (DeciLM has no sliding window; a window as long as the context is none). Qwen2's q/k/v biases
// become DeciLM's attention_bias (AddZeroBiases gives o_proj its zero bias).
// Phi-3's blocks are Llama's with q/k/v and gate/up fused by rows (split for the student, see
// SplitForDeci); a partial rotary (Phi-4-mini) is not Llama's.
bool DeciBlocks(const FamilySpec* family, const HfConfig& cfg) {
  // A multimodal container's decoder keeps its form: DeciLM has no vision tower.
  if (!family || cfg.num_experts > 0 || !cfg.container_type.empty()) return false;
  const bool phi3 = family->layout == ProjectionLayout::kFusedPhi3;
  if (family->name != "llama" && family->name != "mistral" && family->name != "qwen2" && !phi3) return false;
  if (phi3 && cfg.partial_rotary_factor != 1.0) return false;
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    // (without max_position_embeddings any window may matter)
    if (cfg.SlidingLayer(l) && (cfg.max_positions <= 0 || cfg.sliding_window < cfg.max_positions)) return false;
  }
  return true;
}

// A Phi-3 teacher's fused projections as DeciLM's separate q/k/v and gate/up (the form every
// DeciLM loader reads); false, with nothing changed, when one of them is quantized or factorized
// (the student then keeps the Phi-3 form with zeroed projections).
absl::StatusOr<bool> SplitForDeci(Model& model) {
  for (const Block& b : model.arch.blocks) {
    for (const auto* list : {&b.attention, &b.mlp}) {
      for (const LinearLayer& l : *list) {
        if (l.kind != "qkv_proj" && l.kind != "gate_up_proj") continue;
        for (const std::string& n : {l.weight, l.bias}) {
          const Tensor* t = n.empty() ? nullptr : model.tensors.find(n);
          if (t && (t->quant() || t->factors() || !IsFloating(t->dtype()))) return false;
        }
      }
    }
  }
  return SplitFusedProjections(model);
}

// DeciLM's (Llama's) attention_bias and mlp_bias give every projection of a sublayer a bias or
// none: where some projections of the kept sublayers have one (Qwen2's q/k/v), the others get a
// zero bias (o_proj) and the flag is set. Zeros add exactly nothing.
absl::Status AddZeroBiases(Model& model, const Gone& gone, const std::vector<int>& new_index) {
  for (const bool attention : {true, false}) {
    std::vector<const LinearLayer*> kept;  // the projections of the sublayers that stay
    for (const Block& b : model.arch.blocks) {
      if (new_index[b.index] < 0 || (attention ? gone.attn[b.index] : gone.mlp[b.index])) continue;
      for (const auto& l : attention ? b.attention : b.mlp) kept.push_back(&l);
    }
    if (std::none_of(kept.begin(), kept.end(), [](const LinearLayer* l) { return !l->bias.empty(); })) continue;
    for (const LinearLayer* l : kept) {
      if (!l->bias.empty()) continue;
      const Tensor& w = model.tensors.at(l->weight);
      const DType dt = w.quant() ? w.quant()->original_dtype : IsFloating(w.dtype()) ? w.dtype() : DType::kF32;
      ASSIGN_OR_RETURN(Tensor z, Tensor::FromF32(std::vector<float>(l->out_features, 0.f), Shape{l->out_features}, dt));
      model.tensors.Set(l->weight.substr(0, l->weight.size() - 6) + "bias", std::move(z));
    }
    model.config[attention ? "attention_bias" : "mlp_bias"] = true;
  }
  return absl::OkStatus();
}

}  // namespace

// Writes the removals into the model. Llama-family (and Phi-3) checkpoints become DeciLM / Nemotron-NAS
// students: the removed sublayers' weights and norms are gone and block_configs marks them
// no-op (vLLM and llama.cpp's deci architecture load that form). Other families keep their
// form: the removed sublayers' output projections (o_proj / down_proj, every expert's, GPT-2's
// c_proj) are zeroed. Blocks with both sublayers removed are dropped and the rest renumbered.
absl::StatusOr<std::pair<std::vector<bool>, std::vector<bool>>> HfEditor::RemoveSublayers(
    Model& model, std::vector<bool> attention, std::vector<bool> mlp) const {
  const int L = static_cast<int>(model.arch.blocks.size());
  if (attention.size() != static_cast<size_t>(L) || mlp.size() != static_cast<size_t>(L)) {
    return InvalidArgument("{}: sublayer removal needs one entry per block ({})", model.source, L);
  }
  ASSIGN_OR_RETURN(HfConfig cfg, ParseHfConfig(model.config, model.source));
  Gone gone{std::move(attention), std::move(mlp)};
  for (int b = 0; b < L; ++b) {  // a student cut again keeps its earlier removals
    if (cfg.AttentionRemoved(b)) gone.attn[b] = true;
    if (cfg.MlpRemoved(b)) gone.mlp[b] = true;
  }
  const FamilySpec* family = FindFamily(model.arch.family);
  bool deci = DeciBlocks(family, cfg);
  // Drop blocks with both sublayers removed and renumber the rest.
  std::vector<int> new_index(L, -1);
  int next = 0;
  for (int b = 0; b < L; ++b) {
    if (!(gone.attn[b] && gone.mlp[b])) new_index[b] = next++;
  }
  if (next == 0) return FailedPrecondition("FinerCut would remove every block; lower ratio");
  bool sublayers = false;
  for (int b = 0; b < L; ++b) sublayers = sublayers || (new_index[b] >= 0 && (gone.attn[b] || gone.mlp[b]));
  bool split = false;  // Phi-3's fused projections split for a DeciLM student
  if (deci && sublayers && family->layout == ProjectionLayout::kFusedPhi3) {
    ASSIGN_OR_RETURN(split, SplitForDeci(model));
    deci = split;
  }
  // DeciLM loaders (transformers' and vLLM's nemotron-nas, llama.cpp's converter) derive the FFN
  // width from ffn_mult as int(2/3 x ffn_mult x hidden) rounded up to a multiple of 256: a
  // student whose width is not one gets zero neurons up to it (gate/up rows and down columns of
  // zeros add exactly nothing), so every loader reads the width its tensors have.
  // When those zeros would outweigh the removed weights, the Llama form with zeroed output
  // projections is the smaller file (a teacher that is a DeciLM student already keeps its form).
  const int64_t padded = (cfg.intermediate_size + 255) / 256 * 256;
  if (deci && sublayers && padded != cfg.intermediate_size) {
    int64_t removed = 0, zeros = 0;
    for (const Block& b : model.arch.blocks) {
      for (const auto* list : {&b.attention, &b.mlp}) {
        // Blocks dropped whole go in either form: only sublayers of kept blocks count.
        if (new_index[b.index] < 0 || !(list == &b.attention ? gone.attn[b.index] : gone.mlp[b.index])) continue;
        for (const auto& l : *list) removed += l.out_features * l.in_features;
      }
      if (!gone.mlp[b.index] && new_index[b.index] >= 0) {
        for (const auto& l : b.mlp) zeros += (padded - cfg.intermediate_size) * (l.kind == "down_proj" ? l.out_features : l.in_features);
      }
    }
    if (zeros >= removed && !model.config.contains("block_configs")) {
      deci = false;
      if (split) RETURN_IF_ERROR(FuseProjections(model));
    } else {
      for (const Block& b : model.arch.blocks) {
        if (gone.mlp[b.index] || new_index[b.index] < 0) continue;
        for (const auto& l : b.mlp) RETURN_IF_ERROR(PadFfnWidth(model, l, padded));
      }
      cfg.intermediate_size = padded;
      model.config["intermediate_size"] = padded;
    }
  }
  auto zero = [&](const std::string& name) -> absl::Status {
    if (name.empty()) return absl::OkStatus();
    const Tensor& t = model.tensors.at(name);
    const DType dt = t.quant() ? t.quant()->original_dtype : t.dtype();
    ASSIGN_OR_RETURN(Tensor z, Tensor::FromF32(std::vector<float>(t.numel(), 0.f), t.shape(), dt));
    model.tensors.Set(name, std::move(z));
    return absl::OkStatus();
  };
  auto erase = [&](const std::string& name) {
    if (!name.empty() && model.tensors.contains(name)) model.tensors.Erase(name);
  };
  for (const Block& b : model.arch.blocks) {
    if (deci) {
      for (const auto* list : {&b.attention, &b.mlp}) {
        const bool gone_here = list == &b.attention ? gone.attn[b.index] : gone.mlp[b.index];
        if (!gone_here) continue;
        for (const auto& l : *list) erase(l.weight), erase(l.bias);
      }
      for (const auto& n : b.norms) {
        if ((gone.attn[b.index] && n.ends_with(".input_layernorm.weight")) ||
            (gone.mlp[b.index] && n.ends_with(".post_attention_layernorm.weight"))) {
          erase(n);
        }
      }
      continue;
    }
    // A sublayer's output projections: o_proj / down_proj (every expert's and the shared
    // expert's in a MoE block), GPT-2's c_proj.
    for (const auto& l : b.attention) {
      if (gone.attn[b.index] && (l.kind == "o_proj" || l.kind == "c_proj")) {
        RETURN_IF_ERROR(zero(l.weight));
        RETURN_IF_ERROR(zero(l.bias));
      }
    }
    for (const auto& l : b.mlp) {
      if (gone.mlp[b.index] && (l.kind == "down_proj" || l.kind == "c_proj")) {
        RETURN_IF_ERROR(zero(l.weight));
        RETURN_IF_ERROR(zero(l.bias));
      }
    }
  }
  if (deci && sublayers) {
    RETURN_IF_ERROR(AddZeroBiases(model, gone, new_index));
    model.config["model_type"] = "nemotron-nas";
    model.config["architectures"] = {"DeciLMForCausalLM"};
    model.config.erase("auto_map");  // a teacher's remote code (Phi-3's) is not DeciLM's
    model.config["block_configs"] = DeciBlockConfigs(cfg, gone, new_index);
  } else if (deci && model.config.contains("block_configs")) {
    // A student whose no-op sublayers all sat in blocks dropped now is a plain Llama again.
    model.config.erase("block_configs");
    model.config["model_type"] = "llama";
    model.config["architectures"] = {"LlamaForCausalLM"};
  }
  if (next < L || deci) {
    const FamilySpec* fam = FindFamily(model.arch.family);
    nlohmann::json& tc = TextConfig(model.config);
    std::vector<std::string> prefixes = {"model.layers."};
    if (fam) {
      prefixes.clear();
      for (std::string_view p : fam->block_prefixes) prefixes.push_back(std::string(p) + ".");
    }
    const std::vector<std::string> names = model.tensors.names();
    for (const auto& n : names) {
      for (const std::string& prefix : prefixes) {
        if (!n.starts_with(prefix)) continue;
        const size_t dot = n.find('.', prefix.size());
        if (dot == std::string::npos || dot - prefix.size() > 6) continue;  // not a block of this model
        const std::string digits = n.substr(prefix.size(), dot - prefix.size());
        if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
        const int b = std::stoi(digits);
        if (b >= L) continue;
        Tensor t = model.tensors.at(n);
        if (new_index[b] < 0) {
          model.tensors.Erase(n);
        } else if (new_index[b] != b) {
          model.tensors.Replace(n, fmt::format("{}{}{}", prefix, new_index[b], n.substr(dot)), std::move(t));
        }
        break;
      }
    }
    tc[tc.contains("n_layer") ? "n_layer" : "num_hidden_layers"] = next;
    // Per-layer settings follow their blocks: which layers slide (written out as layer_types
    // when the family derived it from the layer index) and which have a dense FFN.
    if (!cfg.layer_types.empty()) {
      nlohmann::json lt = nlohmann::json::array();
      for (int b = 0; b < L; ++b)
        if (new_index[b] >= 0) lt.push_back(cfg.layer_types[b]);
      tc["layer_types"] = lt;
    } else if (cfg.sliding_window > 0 && fam && fam->sliding != FamilySpec::Sliding::kNone &&
               fam->sliding != FamilySpec::Sliding::kAll) {
      nlohmann::json lt = nlohmann::json::array();
      for (int b = 0; b < L; ++b)
        if (new_index[b] >= 0) lt.push_back(cfg.SlidingLayer(b) ? "sliding_attention" : "full_attention");
      tc["layer_types"] = lt;
    }
    if (cfg.num_experts > 0) {
      nlohmann::json dense = nlohmann::json::array();
      for (int b = 0; b < L; ++b)
        if (new_index[b] >= 0 && !cfg.MoeLayer(b)) dense.push_back(new_index[b]);
      if (tc.contains("mlp_only_layers") || !dense.empty()) tc["mlp_only_layers"] = dense;
      if (tc.contains("decoder_sparse_step")) tc["decoder_sparse_step"] = 1;
    }
    RETURN_IF_ERROR(RebuildHfArchitecture(model));
  }
  return std::pair{gone.attn, gone.mlp};
}

const CheckpointEditor& HfCheckpointEditor() {
  static const HfEditor editor;
  return editor;
}

}  // namespace compress
