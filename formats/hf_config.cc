// HF config.json parsing and name-based architecture discovery with shape checks.
#include "formats/hf_config.h"

#include <charconv>
#include <regex>

#include "core/json_util.h"
#include "core/status.h"

namespace compress {
namespace {

// Naming of one checkpoint family: block prefix, sublayer modules and global tensors.
struct FamilyNaming {
  std::vector<std::string> model_types;
  std::regex block;  // captures (index, module group, module, param)
  std::vector<std::string> attention_groups, mlp_groups;
  std::vector<std::string> embeddings, lm_heads, final_norms;
  bool weights_in_out;  // GPT-2 Conv1D stores [in, out]
};

const std::vector<FamilyNaming>& Families() {
  static const std::vector<FamilyNaming> kFamilies = {
      {{"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2"},
       std::regex(
           R"(^(?:model\.)?layers\.(\d+)\.(self_attn|mlp|[a-z_]*layernorm|[a-z_]*norm)(?:\.([a-z_0-9]+))?\.(weight|bias)$)"),
       {"self_attn"},
       {"mlp"},
       {"model.embed_tokens.weight", "embed_tokens.weight"},
       {"lm_head.weight"},
       {"model.norm.weight", "norm.weight"},
       false},
      {{"gpt2"},
       std::regex(R"(^(?:transformer\.)?h\.(\d+)\.(attn|mlp|ln_1|ln_2)(?:\.([a-z_0-9]+))?\.(weight|bias)$)"),
       {"attn"},
       {"mlp"},
       {"transformer.wte.weight", "wte.weight", "transformer.wpe.weight", "wpe.weight"},
       {"lm_head.weight"},
       {"transformer.ln_f.weight", "ln_f.weight", "transformer.ln_f.bias", "ln_f.bias"},
       true},
  };
  return kFamilies;
}

bool IsNormName(const std::string& n) {
  return n.find("norm") != std::string::npos || n.find("ln_") != std::string::npos;
}

}  // namespace

namespace {

// The first of `keys` present, as an integer in [min, max].
absl::StatusOr<std::optional<int64_t>> FirstInt(const JsonFields& f, std::initializer_list<const char*> keys,
                                                int64_t min, int64_t max) {
  for (const char* k : keys) {
    ASSIGN_OR_RETURN(auto v, f.Int(k, min, max));
    if (v) return v;
  }
  return std::nullopt;
}

constexpr int64_t kMaxDim = int64_t{1} << 24;  // hidden sizes, heads, vocab: far above any model

}  // namespace

absl::StatusOr<HfConfig> ParseHfConfig(const nlohmann::json& j, const std::string& path) {
  if (!j.is_object()) return DataLoss("{}: config is not a JSON object", path);
  const JsonFields f(j, path);
  HfConfig c;
  ASSIGN_OR_RETURN(auto model_type, f.String("model_type"));
  c.model_type = model_type.value_or("");
  ASSIGN_OR_RETURN(auto hidden, FirstInt(f, {"hidden_size", "n_embd", "d_model"}, 1, kMaxDim));
  ASSIGN_OR_RETURN(auto layers, FirstInt(f, {"num_hidden_layers", "n_layer"}, 1, 1 << 16));
  ASSIGN_OR_RETURN(auto heads, FirstInt(f, {"num_attention_heads", "n_head"}, 1, 1 << 16));
  if (!hidden || !layers || !heads) {
    return DataLoss("{}: needs positive hidden_size, num_hidden_layers and num_attention_heads", path);
  }
  c.hidden_size = *hidden, c.num_layers = *layers, c.num_heads = *heads;
  ASSIGN_OR_RETURN(auto kv_heads, f.Int("num_key_value_heads", 1, 1 << 16));
  c.num_kv_heads = kv_heads.value_or(c.num_heads);
  ASSIGN_OR_RETURN(auto vocab, f.Int("vocab_size", 0, kMaxDim));
  c.vocab_size = vocab.value_or(0);
  ASSIGN_OR_RETURN(auto max_pos, FirstInt(f, {"max_position_embeddings", "n_positions"}, 0, INT64_C(1) << 40));
  c.max_positions = max_pos.value_or(0);
  ASSIGN_OR_RETURN(auto ffn, FirstInt(f, {"intermediate_size", "n_inner"}, 0, kMaxDim));
  c.intermediate_size = ffn.value_or(0);
  if (c.intermediate_size == 0 && c.model_type == "gpt2") c.intermediate_size = 4 * c.hidden_size;
  if (c.num_heads % c.num_kv_heads != 0) {
    return DataLoss("{}: num_attention_heads {} is not a multiple of num_key_value_heads {}", path,
                    c.num_heads, c.num_kv_heads);
  }
  ASSIGN_OR_RETURN(auto head_dim, f.Int("head_dim", 1, kMaxDim));
  c.head_dim = head_dim.value_or(c.hidden_size / c.num_heads);
  if (c.head_dim < 1) return DataLoss("{}: hidden_size {} is smaller than num_attention_heads {}", path, c.hidden_size, c.num_heads);
  ASSIGN_OR_RETURN(auto tied, f.Bool("tie_word_embeddings"));
  c.tie_word_embeddings = tied.value_or(c.model_type == "gpt2");
  ASSIGN_OR_RETURN(auto act, f.String("hidden_act"));
  ASSIGN_OR_RETURN(auto act2, f.String("activation_function"));
  c.hidden_act = act ? *act : act2.value_or("");
  ASSIGN_OR_RETURN(auto rms_eps, f.Number("rms_norm_eps", 0.0, 1.0));
  ASSIGN_OR_RETURN(auto ln_eps, f.Number("layer_norm_epsilon", 0.0, 1.0));
  if (rms_eps)
    c.norm_eps = *rms_eps;
  else if (ln_eps)
    c.norm_eps = *ln_eps;
  // rope: legacy top-level rope_theta, or the newer rope_parameters object.
  ASSIGN_OR_RETURN(auto theta, f.Number("rope_theta", 1e-6, 1e12));
  if (theta) c.rope_theta = *theta;
  for (const char* k : {"rope_parameters", "rope_scaling"}) {
    ASSIGN_OR_RETURN(auto r, f.Object(k));
    if (!r) continue;
    ASSIGN_OR_RETURN(auto t, r->Number("rope_theta", 1e-6, 1e12));
    if (t) c.rope_theta = *t;
    ASSIGN_OR_RETURN(auto type, r->String("rope_type"));
    ASSIGN_OR_RETURN(auto legacy_type, r->String("type"));
    const std::string kind = type ? *type : legacy_type.value_or("default");
    if (kind == "default") continue;
    c.rope_scaling = r->json();
    c.rope.type = kind;
    auto number = [&](const char* key, double lo, double hi, double& out) -> absl::Status {
      ASSIGN_OR_RETURN(auto v, r->Number(key, lo, hi));
      if (v) out = *v;
      return absl::OkStatus();
    };
    RETURN_IF_ERROR(number("factor", 1e-6, 1e6, c.rope.factor));
    RETURN_IF_ERROR(number("low_freq_factor", 1e-6, 1e6, c.rope.low_freq_factor));
    RETURN_IF_ERROR(number("high_freq_factor", 1e-6, 1e6, c.rope.high_freq_factor));
    RETURN_IF_ERROR(number("original_max_position_embeddings", 1, 1e12, c.rope.original_max_positions));
    if (kind == "llama3" && c.rope.high_freq_factor <= c.rope.low_freq_factor) {
      return DataLoss("{}: {}.high_freq_factor must exceed low_freq_factor", path, k);
    }
  }
  return c;
}

absl::StatusOr<Architecture> BuildHfArchitecture(const HfConfig& cfg, const TensorStore& tensors,
                                                 const std::string& path) {
  const FamilyNaming* fam = nullptr;
  for (const auto& f : Families()) {
    for (const auto& t : f.model_types) {
      if (t == cfg.model_type) fam = &f;
    }
  }
  if (!fam) {
    // Unknown model_type: try each naming and take the one that finds blocks.
    for (const auto& f : Families()) {
      for (const auto& n : tensors.names()) {
        if (std::regex_match(n, f.block)) {
          fam = &f;
          break;
        }
      }
      if (fam) break;
    }
  }
  Architecture a = BuildGenericArchitecture(tensors);
  a.family = cfg.model_type.empty() ? "unknown" : cfg.model_type;
  a.hidden_size = cfg.hidden_size;
  a.num_heads = cfg.num_heads;
  a.num_kv_heads = cfg.num_kv_heads;
  a.head_dim = cfg.head_dim;
  a.intermediate_size = cfg.intermediate_size;
  a.vocab_size = cfg.vocab_size;
  a.tied_embeddings = cfg.tie_word_embeddings;
  if (!fam) return a;

  std::map<int, Block> blocks;
  std::smatch m;
  for (const auto& name : tensors.names()) {
    if (!std::regex_match(name, m, fam->block)) continue;
    const std::string digits = m[1];
    int idx = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), idx);
    if (ec != std::errc() || end != digits.data() + digits.size() || idx >= (1 << 16)) {
      return DataLoss("{}: tensor '{}' has block index {}, beyond the 65536 blocks allowed", path, name, digits);
    }
    std::string group = m[2], module = m[3], param = m[4];
    Block& b = blocks[idx];
    b.index = idx;
    const Tensor& t = tensors.at(name);
    if (module.empty() || IsNormName(group) || IsNormName(module)) {
      if (param == "weight") b.norms.push_back(name);
      continue;
    }
    bool attn = std::find(fam->attention_groups.begin(), fam->attention_groups.end(), group) !=
                fam->attention_groups.end();
    auto& list = attn ? b.attention : b.mlp;
    std::string layer_name = name.substr(0, name.size() - param.size() - 1);
    auto it =
        std::find_if(list.begin(), list.end(), [&](const LinearLayer& l) { return l.name == layer_name; });
    if (it == list.end()) {
      list.push_back(LinearLayer{layer_name, module, "", "", 0, 0});
      it = std::prev(list.end());
    }
    if (param == "bias") {
      it->bias = name;
      continue;
    }
    if (t.shape().size() != 2) {
      return DataLoss("{}: tensor '{}' should be a 2-D weight but has shape {}", path, name,
                      ShapeString(t.shape()));
    }
    it->weight = name;
    it->out_features = fam->weights_in_out ? t.shape()[1] : t.shape()[0];
    it->in_features = fam->weights_in_out ? t.shape()[0] : t.shape()[1];
    it->out_axis = fam->weights_in_out ? 1 : 0;
    a.roles[name] = TensorRole::kLinearWeight;
  }
  if (static_cast<int64_t>(blocks.size()) != cfg.num_layers) {
    return DataLoss("{}: config.json says num_hidden_layers={} but the tensors hold {} blocks", path,
                    cfg.num_layers, blocks.size());
  }
  for (auto& [idx, b] : blocks) {
    if (idx < 0 || idx >= cfg.num_layers) {
      return DataLoss("{}: block index {} is outside 0..{}", path, idx, cfg.num_layers - 1);
    }
    for (const auto* list : {&b.attention, &b.mlp}) {
      for (const LinearLayer& l : *list) {
        if (l.weight.empty()) return DataLoss("{}: layer '{}' has a bias but no weight", path, l.name);
        // Llama-family projections must agree with the head layout in config.json.
        int64_t expect_out = 0, expect_in = cfg.hidden_size;
        if (l.kind == "q_proj") expect_out = cfg.num_heads * cfg.head_dim;
        if (l.kind == "k_proj" || l.kind == "v_proj") expect_out = cfg.num_kv_heads * cfg.head_dim;
        if (l.kind == "o_proj") {
          expect_out = cfg.hidden_size;
          expect_in = cfg.num_heads * cfg.head_dim;
        }
        if ((l.kind == "gate_proj" || l.kind == "up_proj") && cfg.intermediate_size)
          expect_out = cfg.intermediate_size;
        if (l.kind == "down_proj" && cfg.intermediate_size) {
          expect_out = cfg.hidden_size;
          expect_in = cfg.intermediate_size;
        }
        if (expect_out && (l.out_features != expect_out || l.in_features != expect_in)) {
          return DataLoss("{}: '{}' has shape [{}, {}] but config.json implies [{}, {}]", path, l.weight,
                          l.out_features, l.in_features, expect_out, expect_in);
        }
      }
    }
    // Execution order, not file order: q, k, v, o; gate, up, down (unknown kinds last).
    static const std::vector<std::string> kOrder = {"q_proj",       "k_proj", "v_proj",    "qkv_proj",
                                                    "c_attn",       "o_proj", "gate_proj", "up_proj",
                                                    "gate_up_proj", "c_fc",   "c_proj",    "down_proj"};
    auto rank = [](const LinearLayer& l) {
      return std::find(kOrder.begin(), kOrder.end(), l.kind) - kOrder.begin();
    };
    for (auto* list : {&b.attention, &b.mlp}) {
      std::stable_sort(list->begin(), list->end(),
                       [&](const LinearLayer& x, const LinearLayer& y) { return rank(x) < rank(y); });
    }
    a.blocks.push_back(std::move(b));
  }
  for (const auto& n : fam->embeddings) {
    if (tensors.contains(n)) {
      a.roles[n] = TensorRole::kEmbedding;
      if (a.embedding.empty()) a.embedding = n;
    }
  }
  for (const auto& n : fam->lm_heads) {
    if (tensors.contains(n)) {
      a.lm_head = n;
      a.roles[n] = TensorRole::kLmHead;
    }
  }
  for (const auto& n : fam->final_norms) {
    if (tensors.contains(n) && a.final_norm.empty()) a.final_norm = n;
  }
  if (!a.embedding.empty() && cfg.vocab_size && tensors.at(a.embedding).shape()[0] != cfg.vocab_size) {
    return DataLoss("{}: '{}' has {} rows but config.json says vocab_size={}", path, a.embedding,
                    tensors.at(a.embedding).shape()[0], cfg.vocab_size);
  }
  if (a.lm_head.empty() && !cfg.tie_word_embeddings) {
    return DataLoss("{}: no lm_head.weight and tie_word_embeddings is false", path);
  }
  return a;
}

Architecture BuildGenericArchitecture(const TensorStore& tensors) {
  Architecture a;
  a.family = "unknown";
  for (const auto& name : tensors.names()) {
    const Tensor& t = tensors.at(name);
    TensorRole r = TensorRole::kOther;
    if (name.find("embed") != std::string::npos || name.find("wte") != std::string::npos ||
        name.find("wpe") != std::string::npos) {
      r = TensorRole::kEmbedding;
    } else if (name.find("lm_head") != std::string::npos) {
      r = TensorRole::kLmHead;
    } else if (IsNormName(name)) {
      r = TensorRole::kNorm;
    } else if (name.ends_with(".bias") || t.shape().size() == 1) {
      r = TensorRole::kBias;
    } else if (t.shape().size() == 2) {
      r = TensorRole::kLinearWeight;
    } else if (t.shape().size() == 4) {
      r = TensorRole::kConvWeight;
    }
    a.roles[name] = r;
  }
  return a;
}

absl::Status RebuildHfArchitecture(Model& model) {
  ASSIGN_OR_RETURN(HfConfig cfg, ParseHfConfig(model.config, model.source));
  ASSIGN_OR_RETURN(model.arch, BuildHfArchitecture(cfg, model.tensors, model.source));
  return absl::OkStatus();
}

}  // namespace compress
