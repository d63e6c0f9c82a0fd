// HF config.json parsing and name-based architecture discovery with shape checks.
#include "formats/hf_config.h"

#include <charconv>
#include <cctype>
#include <cmath>
#include <map>
#include <set>

#include "core/block_quant.h"
#include "core/json_util.h"
#include "core/status.h"
#include "core/family.h"

namespace compress {
namespace {

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

// One rope parameter object (rope_parameters / rope_scaling, or one of Gemma 3's per-layer-type
// entries) into `out`; `key` names it in errors.
absl::Status ParseRopeObject(const JsonFields& r, const std::string& key, HfConfig& c,
                             HfConfig::RopeScaling& out, const std::string& path) {
  ASSIGN_OR_RETURN(auto t, r.Number("rope_theta", 1e-6, 1e12));
  if (t) out.theta = *t;
  ASSIGN_OR_RETURN(auto partial, r.Number("partial_rotary_factor", 1e-6, 1.0));
  if (partial) c.partial_rotary_factor = *partial;
  ASSIGN_OR_RETURN(auto type, r.String("rope_type"));
  ASSIGN_OR_RETURN(auto legacy_type, r.String("type"));
  const std::string kind = type ? *type : legacy_type.value_or("default");
  // Qwen2-VL's multimodal rope rotates a text token by one position in all its sections: the
  // default rope for the text-only forward compress runs.
  if (kind == "default" || kind == "mrope") return absl::OkStatus();
  c.rope_scaling = r.json();
  out.type = kind;
  auto number = [&](const char* k, double lo, double hi, double& v) -> absl::Status {
    ASSIGN_OR_RETURN(auto x, r.Number(k, lo, hi));
    if (x) v = *x;
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(number("factor", 1e-6, 1e6, out.factor));
  RETURN_IF_ERROR(number("low_freq_factor", 1e-6, 1e6, out.low_freq_factor));
  RETURN_IF_ERROR(number("high_freq_factor", 1e-6, 1e6, out.high_freq_factor));
  ASSIGN_OR_RETURN(auto orig, r.Number("original_max_position_embeddings", 1, 1e12));
  if (orig) out.original_max_positions = *orig, out.original_given = true;
  RETURN_IF_ERROR(number("attention_factor", 1e-6, 1e6, out.attention_factor));
  RETURN_IF_ERROR(number("beta_fast", 1e-6, 1e6, out.beta_fast));
  RETURN_IF_ERROR(number("beta_slow", 1e-6, 1e6, out.beta_slow));
  RETURN_IF_ERROR(number("mscale", 0, 1e6, out.mscale));
  RETURN_IF_ERROR(number("mscale_all_dim", 0, 1e6, out.mscale_all_dim));
  ASSIGN_OR_RETURN(auto truncate, r.Bool("truncate"));
  out.truncate = truncate.value_or(true);
  for (auto [k2, vec] : {std::pair{"short_factor", &out.short_factor}, std::pair{"long_factor", &out.long_factor}}) {
    auto it = r.json().find(k2);
    if (it == r.json().end() || it->is_null()) continue;
    if (!it->is_array()) return InvalidArgument("{}: '{}.{}' must be an array of numbers", path, key, k2);
    for (const auto& e : *it) {
      if (!e.is_number() || !(e.get<double>() > 0)) {
        return InvalidArgument("{}: '{}.{}' must hold positive numbers", path, key, k2);
      }
      vec->push_back(e.get<double>());
    }
  }
  if (kind == "llama3" && out.high_freq_factor <= out.low_freq_factor) {
    return DataLoss("{}: {}.high_freq_factor must exceed low_freq_factor", path, key);
  }
  return absl::OkStatus();
}

// Rope: legacy top-level rope_theta (+ rope_scaling), the newer rope_parameters object, or
// rope_parameters keyed by layer type (Gemma 3: full_attention / sliding_attention); Gemma 3's
// older rope_local_base_freq for its sliding layers.
absl::Status ParseRope(const JsonFields& f, HfConfig& c, const std::string& path) {
  ASSIGN_OR_RETURN(auto theta, f.Number("rope_theta", 1e-6, 1e12));
  if (theta) c.rope.theta = *theta;
  ASSIGN_OR_RETURN(auto partial, f.Number("partial_rotary_factor", 1e-6, 1.0));
  if (partial) c.partial_rotary_factor = *partial;
  ASSIGN_OR_RETURN(auto orig_max, f.Int("original_max_position_embeddings", 1, INT64_C(1) << 40));
  c.original_max_positions = orig_max.value_or(0);
  bool local_given = false;
  for (const char* k : {"rope_parameters", "rope_scaling"}) {
    ASSIGN_OR_RETURN(auto r, f.Object(k));
    if (!r) continue;
    ASSIGN_OR_RETURN(auto full, r->Object("full_attention"));
    ASSIGN_OR_RETURN(auto sliding, r->Object("sliding_attention"));
    if (full || sliding) {
      if (full) RETURN_IF_ERROR(ParseRopeObject(*full, std::string(k) + ".full_attention", c, c.rope, path));
      if (sliding) {
        c.rope_local = HfConfig::RopeScaling{};
        RETURN_IF_ERROR(ParseRopeObject(*sliding, std::string(k) + ".sliding_attention", c, c.rope_local, path));
        local_given = true;
      }
      continue;
    }
    RETURN_IF_ERROR(ParseRopeObject(*r, k, c, c.rope, path));
  }
  if (!local_given) {
    ASSIGN_OR_RETURN(auto local_base, f.Number("rope_local_base_freq", 1e-6, 1e12));
    if (local_base) {
      c.rope_local = HfConfig::RopeScaling{};  // Gemma 3: the scaling is for global layers only
      c.rope_local.theta = *local_base;
    } else {
      c.rope_local = c.rope;
    }
  }
  c.rope_theta = c.rope.theta;
  return absl::OkStatus();
}

// An array of strings or integers at `key` (empty when absent or null).
template <typename T>
absl::StatusOr<std::vector<T>> ArrayField(const nlohmann::json& j, const char* key, const std::string& path) {
  std::vector<T> out;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) return InvalidArgument("{}: '{}' must be an array", path, key);
  for (const auto& e : *it) {
    if constexpr (std::is_same_v<T, std::string>) {
      if (!e.is_string()) return InvalidArgument("{}: '{}' must hold strings", path, key);
      out.push_back(e.get<std::string>());
    } else {
      if (!e.is_number_integer()) return InvalidArgument("{}: '{}' must hold integers", path, key);
      out.push_back(e.get<int64_t>());
    }
  }
  return out;
}

absl::Status ParseAttentionVariants(const JsonFields& f, HfConfig& c, const std::string& path) {
  ASSIGN_OR_RETURN(auto window, f.Int("sliding_window", 0, INT64_C(1) << 40));
  c.sliding_window = window.value_or(0);
  ASSIGN_OR_RETURN(c.layer_types, ArrayField<std::string>(f.json(), "layer_types", path));
  if (!c.layer_types.empty() && static_cast<int64_t>(c.layer_types.size()) != c.num_layers) {
    return DataLoss("{}: 'layer_types' has {} entries for {} layers", path, c.layer_types.size(), c.num_layers);
  }
  ASSIGN_OR_RETURN(auto use_sliding, f.Bool("use_sliding_window"));
  c.use_sliding_window = use_sliding.value_or(false);
  ASSIGN_OR_RETURN(auto max_window_layers, f.Int("max_window_layers", 0, 1 << 16));
  c.max_window_layers = max_window_layers.value_or(0);
  ASSIGN_OR_RETURN(auto pattern, FirstInt(f, {"sliding_window_pattern", "_sliding_window_pattern"}, 1, 1 << 16));
  if (pattern) c.sliding_window_pattern = *pattern;
  ASSIGN_OR_RETURN(auto attn_cap, f.Number("attn_logit_softcapping", 0, 1e9));
  c.attn_softcap = attn_cap.value_or(0);
  ASSIGN_OR_RETURN(auto final_cap, f.Number("final_logit_softcapping", 0, 1e9));
  c.final_softcap = final_cap.value_or(0);
  ASSIGN_OR_RETURN(auto qpas, f.Number("query_pre_attn_scalar", 1e-6, 1e9));
  c.query_pre_attn_scalar = qpas.value_or(0);
  return absl::OkStatus();
}

absl::Status ParseMoe(const JsonFields& f, HfConfig& c, const std::string& path) {
  ASSIGN_OR_RETURN(auto experts, FirstInt(f, {"num_experts", "num_local_experts"}, 0, 1 << 20));
  c.num_experts = experts.value_or(0);
  ASSIGN_OR_RETURN(auto top_k, f.Int("num_experts_per_tok", 0, 1 << 20));
  c.experts_per_token = top_k.value_or(0);
  if (c.num_experts > 0 && (c.experts_per_token < 1 || c.experts_per_token > c.num_experts)) {
    return DataLoss("{}: num_experts_per_tok {} must lie in 1..{} (num_experts)", path, c.experts_per_token,
                    c.num_experts);
  }
  ASSIGN_OR_RETURN(auto moe_ffn, f.Int("moe_intermediate_size", 0, kMaxDim));
  c.moe_intermediate_size = moe_ffn.value_or(0);
  ASSIGN_OR_RETURN(auto shared_ffn, f.Int("shared_expert_intermediate_size", 0, kMaxDim));
  c.shared_expert_intermediate_size = shared_ffn.value_or(0);
  ASSIGN_OR_RETURN(auto step, f.Int("decoder_sparse_step", 1, 1 << 16));
  c.decoder_sparse_step = step.value_or(1);
  ASSIGN_OR_RETURN(c.mlp_only_layers, ArrayField<int64_t>(f.json(), "mlp_only_layers", path));
  ASSIGN_OR_RETURN(c.norm_topk_prob, f.Bool("norm_topk_prob"));
  return absl::OkStatus();
}

// DeciLM / Nemotron-NAS `block_configs`: per layer {"attention": {"no_op", "replace_with_linear",
// "n_heads_in_group"}, "ffn": {"no_op", "replace_with_linear", "ffn_mult"}}. compress takes
// no-op sublayers (FinerCut students) with every other layer alike: the same KV heads and the
// same FFN width (per-layer widths and linear replacements are refused).
absl::Status ParseBlockConfigs(const nlohmann::json& j, HfConfig& c, const std::string& path) {
  auto it = j.find("block_configs");
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_array() || static_cast<int64_t>(it->size()) != c.num_layers) {
    return DataLoss("{}: block_configs must be an array of num_hidden_layers={} objects", path, c.num_layers);
  }
  std::optional<int64_t> group, ffn;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const nlohmann::json& b = (*it)[l];
    bool no_op[2] = {false, false};
    for (int k = 0; k < 2; ++k) {
      const char* part = k == 0 ? "attention" : "ffn";
      if (!b.is_object() || !b.contains(part) || !b[part].is_object()) {
        return DataLoss("{}: block_configs[{}].{} must be an object", path, l, part);
      }
      const nlohmann::json& o = b[part];
      for (const char* flag : {"no_op", "replace_with_linear"}) {
        if (o.contains(flag) && !o[flag].is_null() && !o[flag].is_boolean()) {
          return DataLoss("{}: block_configs[{}].{}.{} must be true or false", path, l, part, flag);
        }
      }
      if (o.value("replace_with_linear", false) == true) {
        return Unimplemented("{}: block_configs[{}].{} replaces the sublayer with a linear map, which compress does "
                             "not run",
                             path, l, part);
      }
      no_op[k] = o.contains("no_op") && o["no_op"].is_boolean() && o["no_op"].get<bool>();
      if (no_op[k]) continue;
      const char* key = k == 0 ? "n_heads_in_group" : "ffn_mult";
      if (!o.contains(key) || !o[key].is_number() || o[key].get<double>() <= 0) {
        return DataLoss("{}: block_configs[{}].{}.{} must be a positive number", path, l, part, key);
      }
      if (k == 0) {
        if (!o[key].is_number_integer() || c.num_heads % o[key].get<int64_t>() != 0) {
          return DataLoss("{}: block_configs[{}].attention.n_heads_in_group does not divide num_attention_heads {}",
                          path, l, c.num_heads);
        }
        if (group && *group != o[key].get<int64_t>()) {
          return Unimplemented("{}: block_configs give layers different KV head counts; compress runs uniform ones",
                               path);
        }
        group = o[key].get<int64_t>();
      } else {
        // DeciLM's width: 2/3 of ffn_mult x hidden, rounded up to a multiple of 256.
        int64_t w = static_cast<int64_t>(2 * o[key].get<double>() * static_cast<double>(c.hidden_size) / 3);
        if (w % 256) w += 256 - w % 256;
        if (ffn && *ffn != w) {
          return Unimplemented("{}: block_configs give layers different FFN widths; compress runs uniform ones", path);
        }
        ffn = w;
      }
    }
    c.attention_removed.push_back(no_op[0]);
    c.mlp_removed.push_back(no_op[1]);
  }
  if (group) {
    if (c.num_kv_heads != c.num_heads && c.num_kv_heads != c.num_heads / *group) {
      return DataLoss("{}: num_key_value_heads {} disagrees with block_configs' n_heads_in_group {}", path,
                      c.num_kv_heads, *group);
    }
    c.num_kv_heads = c.num_heads / *group;
  }
  // An explicit intermediate_size wins: compress's students keep theirs, which need not be a
  // multiple of 256.
  if (c.intermediate_size == 0 && ffn) c.intermediate_size = *ffn;
  return absl::OkStatus();
}

// A multimodal container: the text decoder's parameters nested as text_config, none of them at
// the top level.
bool IsContainerConfig(const nlohmann::json& j) {
  return j.is_object() && j.contains("text_config") && j["text_config"].is_object() && !j.contains("hidden_size") &&
         !j.contains("n_embd") && !j.contains("d_model");
}

// Whether a tensor of a multimodal container belongs to its text decoder.
bool InTextDecoder(const std::string& name) {
  for (std::string_view p : {"model.language_model.", "language_model.", "model.text_model.", "model.layers.",
                             "model.embed_tokens.", "model.norm."}) {
    if (name.starts_with(p)) return true;
  }
  return name == "lm_head.weight";
}

// The text decoder's model_type when text_config names none (its class default).
std::string TextTypeOfContainer(const std::string& container) {
  if (container == "gemma3") return "gemma3_text";
  if (container == "mistral3") return "mistral";
  if (container == "qwen2_vl" || container == "qwen2_5_vl") return "qwen2";
  if (container == "paligemma") return "gemma";
  return "llama";  // the default text_config of LLaVA, Idefics3 and SmolVLM
}

// transformers writes a nested config (a container's text_config) as its difference from the
// text config class's defaults: LLaVA-1.5's text_config names no hidden_size (LlamaConfig's
// 4096), Gemma 3's no head counts. The defaults of the decoder config classes, for the keys
// compress reads (facts from transformers' configuration_*.py).
const nlohmann::json* TextConfigDefaults(const std::string& model_type) {
  static const auto* kDefaults = new std::map<std::string, nlohmann::json>{
      {"llama", {{"vocab_size", 32000}, {"hidden_size", 4096}, {"intermediate_size", 11008},
                 {"num_hidden_layers", 32}, {"num_attention_heads", 32}, {"hidden_act", "silu"},
                 {"max_position_embeddings", 2048}, {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0},
                 {"tie_word_embeddings", false}}},
      {"mistral", {{"vocab_size", 32000}, {"hidden_size", 4096}, {"intermediate_size", 14336},
                   {"num_hidden_layers", 32}, {"num_attention_heads", 32}, {"num_key_value_heads", 8},
                   {"hidden_act", "silu"}, {"max_position_embeddings", 131072}, {"rms_norm_eps", 1e-6},
                   {"rope_theta", 10000.0}, {"sliding_window", 4096}, {"tie_word_embeddings", false}}},
      {"gemma", {{"vocab_size", 256000}, {"hidden_size", 3072}, {"intermediate_size", 24576},
                 {"num_hidden_layers", 28}, {"num_attention_heads", 16}, {"num_key_value_heads", 16},
                 {"head_dim", 256}, {"hidden_act", "gelu_pytorch_tanh"}, {"max_position_embeddings", 8192},
                 {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0}, {"tie_word_embeddings", true}}},
      {"gemma2", {{"vocab_size", 256000}, {"hidden_size", 2304}, {"intermediate_size", 9216},
                  {"num_hidden_layers", 26}, {"num_attention_heads", 8}, {"num_key_value_heads", 4},
                  {"head_dim", 256}, {"hidden_activation", "gelu_pytorch_tanh"}, {"max_position_embeddings", 8192},
                  {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0}, {"query_pre_attn_scalar", 256},
                  {"sliding_window", 4096}, {"final_logit_softcapping", 30.0}, {"attn_logit_softcapping", 50.0},
                  {"tie_word_embeddings", true}}},
      {"gemma3_text", {{"vocab_size", 262208}, {"hidden_size", 2304}, {"intermediate_size", 9216},
                       {"num_hidden_layers", 26}, {"num_attention_heads", 8}, {"num_key_value_heads", 4},
                       {"head_dim", 256}, {"hidden_activation", "gelu_pytorch_tanh"},
                       {"max_position_embeddings", 131072}, {"rms_norm_eps", 1e-6}, {"rope_theta", 1000000.0},
                       {"query_pre_attn_scalar", 256}, {"sliding_window", 4096}, {"rope_local_base_freq", 10000.0},
                       {"tie_word_embeddings", true}}},
      {"qwen2_5_vl_text", {{"vocab_size", 152064}, {"hidden_size", 8192}, {"intermediate_size", 29568},
                           {"num_hidden_layers", 80}, {"num_attention_heads", 64}, {"num_key_value_heads", 8},
                           {"hidden_act", "silu"}, {"max_position_embeddings", 32768}, {"rms_norm_eps", 1e-5},
                           {"rope_theta", 1000000.0}, {"use_sliding_window", false}, {"sliding_window", 4096},
                           {"max_window_layers", 80}, {"tie_word_embeddings", false}}},
  };
  auto it = kDefaults->find(model_type == "qwen2_vl_text" ? "qwen2_5_vl_text" : model_type);
  return it == kDefaults->end() ? nullptr : &it->second;
}

// A container's text_config with its class's defaults for the keys it leaves out.
nlohmann::json FilledTextConfig(const nlohmann::json& container) {
  nlohmann::json text = container["text_config"];
  const std::string type = text.contains("model_type") && text["model_type"].is_string()
                               ? text["model_type"].get<std::string>()
                               : TextTypeOfContainer(container.value("model_type", ""));
  if (const nlohmann::json* d = TextConfigDefaults(type)) {
    for (const auto& [k, v] : d->items()) {
      // transformers 5 keeps the rope bases in rope_parameters (and writes whole configs).
      if ((k == "rope_theta" || k == "rope_local_base_freq") && text.contains("rope_parameters")) continue;
      if (!text.contains(k)) text[k] = v;
    }
  }
  if (!text.contains("model_type")) text["model_type"] = type;
  return text;
}

// config.json leaves out a value equal to its class's default: tie_word_embeddings is GPT-2's
// true, else the text config class's default from the table above (false when not listed).
bool TiedByDefault(const std::string& model_type) {
  if (model_type == "gpt2") return true;
  const nlohmann::json* d = TextConfigDefaults(model_type);
  return d && d->value("tie_word_embeddings", false);
}

}  // namespace

nlohmann::json& TextConfig(nlohmann::json& config) {
  return IsContainerConfig(config) ? config["text_config"] : config;
}
const nlohmann::json& TextConfig(const nlohmann::json& config) {
  return IsContainerConfig(config) ? config["text_config"] : config;
}

absl::StatusOr<HfConfig> ParseHfConfig(const nlohmann::json& j, const std::string& path) {
  if (!j.is_object()) return DataLoss("{}: config is not a JSON object", path);
  if (IsContainerConfig(j)) {
    const JsonFields top(j, path);
    ASSIGN_OR_RETURN(auto container, top.String("model_type"));
    if (IsContainerConfig(j["text_config"])) return DataLoss("{}: text_config nests another text_config", path);
    ASSIGN_OR_RETURN(HfConfig c, ParseHfConfig(FilledTextConfig(j), path + " (text_config)"));
    c.container_type = container.value_or("multimodal");  // (FilledTextConfig named the decoder's type)
    if (const FamilySpec* f = FindFamily(c.model_type)) c.model_type = f->name;  // qwen2_5_vl_text: qwen2
    // The decoder's tying: transformers 5 ties a container's output head by the container's own
    // tie_word_embeddings (Mistral 3 writes true there and false in text_config, and stores no
    // head); text_config's when the container has none.
    ASSIGN_OR_RETURN(auto tied, top.Bool("tie_word_embeddings"));
    if (tied) c.tie_word_embeddings = *tied;
    return c;
  }
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
  c.tie_word_embeddings = tied.value_or(TiedByDefault(c.model_type));
  ASSIGN_OR_RETURN(auto act, f.String("hidden_act"));
  ASSIGN_OR_RETURN(auto act2, f.String("activation_function"));
  c.hidden_act = act ? *act : act2.value_or("");
  ASSIGN_OR_RETURN(auto rms_eps, f.Number("rms_norm_eps", 0.0, 1.0));
  ASSIGN_OR_RETURN(auto ln_eps, f.Number("layer_norm_epsilon", 0.0, 1.0));
  if (rms_eps)
    c.norm_eps = *rms_eps;
  else if (ln_eps)
    c.norm_eps = *ln_eps;
  ASSIGN_OR_RETURN(auto hidden_activation, f.String("hidden_activation"));
  if (hidden_activation) c.hidden_act = *hidden_activation;  // Gemma's spelling wins over hidden_act
  RETURN_IF_ERROR(ParseRope(f, c, path));
  RETURN_IF_ERROR(ParseAttentionVariants(f, c, path));
  RETURN_IF_ERROR(ParseMoe(f, c, path));
  RETURN_IF_ERROR(ParseBlockConfigs(j, c, path));
  // A container with the decoder's parameters at the top level (Qwen2-VL / Qwen2.5-VL configs of
  // transformers < 4.52): its vision_config says so.
  if (j.contains("vision_config") && j["vision_config"].is_object() && FindFamily(c.model_type)) {
    c.container_type = c.model_type;
    c.model_type = FindFamily(c.model_type)->name;
  }
  return c;
}

namespace {

// A block tensor's name split as PREFIX.N.REST.PARAM; false when it is not one.
bool SplitBlockName(const FamilySpec& fam, const std::string& name, std::string& digits, std::string& rest,
                    std::string& param) {
  for (std::string_view prefix : fam.block_prefixes) {
    if (name.size() <= prefix.size() + 1 || name.compare(0, prefix.size(), prefix) != 0 ||
        name[prefix.size()] != '.')
      continue;
    const size_t d0 = prefix.size() + 1;
    size_t d1 = d0;
    while (d1 < name.size() && std::isdigit(static_cast<unsigned char>(name[d1]))) ++d1;
    if (d1 == d0 || d1 >= name.size() || name[d1] != '.') continue;
    const size_t dot = name.rfind('.');
    if (dot <= d1) continue;
    param = name.substr(dot + 1);
    if (param != "weight" && param != "bias") continue;
    digits = name.substr(d0, d1 - d0);
    rest = name.substr(d1 + 1, dot - d1 - 1);
    return true;
  }
  return false;
}

std::vector<std::string> SplitDots(const std::string& s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (true) {
    const size_t j = s.find('.', i);
    out.push_back(s.substr(i, j == std::string::npos ? std::string::npos : j - i));
    if (j == std::string::npos) return out;
    i = j + 1;
  }
}

// Mixtral names its expert projections w1 (gate), w3 (up), w2 (down).
std::string CanonicalKind(const std::string& module) {
  if (module == "w1") return "gate_proj";
  if (module == "w3") return "up_proj";
  if (module == "w2") return "down_proj";
  return module;
}

// [out, in] the config implies for a projection (0, 0 when it implies nothing).
std::pair<int64_t, int64_t> ExpectedShape(const HfConfig& cfg, const LinearLayer& l, bool moe_layer) {
  const int64_t D = cfg.hidden_size, q = cfg.num_heads * cfg.head_dim, kv = cfg.num_kv_heads * cfg.head_dim;
  int64_t ffn = cfg.intermediate_size;
  if (l.expert >= 0 && cfg.moe_intermediate_size) ffn = cfg.moe_intermediate_size;
  if (l.shared_expert) ffn = cfg.shared_expert_intermediate_size;
  (void)moe_layer;
  const std::string& k = l.kind;
  if (k == "q_proj") return {q, D};
  if (k == "k_proj" || k == "v_proj") return {kv, D};
  if (k == "qkv_proj") return {q + 2 * kv, D};
  if (k == "o_proj") return {D, q};
  if (!ffn) return {0, 0};
  if (k == "gate_proj" || k == "up_proj") return {ffn, D};
  if (k == "gate_up_proj") return {2 * ffn, D};
  if (k == "down_proj") return {D, ffn};
  return {0, 0};
}

}  // namespace

// Adds block tensor `name` of family `fam` (a projection's weight or bias, a norm, a router)
// to its block; tensors of no block or of modules the view does not know are left alone.
absl::Status AddBlockTensor(const FamilySpec* fam, const std::string& name, const Tensor& t, bool in_out,
                            std::map<int, Block>& blocks, std::map<int, std::set<int>>& experts_seen,
                            Architecture& a, const std::string& path) {
  std::string digits, rest, param;
  if (!SplitBlockName(*fam, name, digits, rest, param)) return absl::OkStatus();
  int idx = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), idx);
  if (ec != std::errc() || end != digits.data() + digits.size() || idx >= (1 << 16)) {
    return DataLoss("{}: tensor '{}' has block index {}, beyond the 65536 blocks allowed", path, name, digits);
  }
  Block& b = blocks[idx];
  b.index = idx;
  const std::vector<std::string> parts = SplitDots(rest);
  const std::string& group = parts[0];
  if (parts.size() == 1 || IsNormName(group) || IsNormName(parts.back())) {
    if (param == "weight") b.norms.push_back(name);
    a.roles[name] = TensorRole::kNorm;
    return absl::OkStatus();
  }
  const bool attn = group == "self_attn" || group == "attn";
  const bool mlp = group == "mlp" || group == "block_sparse_moe";
  if (!attn && !mlp) return absl::OkStatus();  // unknown module: generic role
  LinearLayer l;
  l.name = name.substr(0, name.size() - param.size() - 1);
  if (mlp && parts.size() == 2 && (parts[1] == "gate" || parts[1] == "router")) {
    if (param == "weight") b.router = name;
    a.roles[name] = TensorRole::kRouter;
    return absl::OkStatus();
  }
  if (mlp && parts.size() == 2 && parts[1] == "shared_expert_gate") {
    if (param == "weight") b.shared_expert_gate = name;
    a.roles[name] = TensorRole::kRouter;
    return absl::OkStatus();
  }
  if (mlp && parts.size() == 4 && parts[1] == "experts") {
    int e = -1;
    auto [pe, pec] = std::from_chars(parts[2].data(), parts[2].data() + parts[2].size(), e);
    if (pec != std::errc() || pe != parts[2].data() + parts[2].size() || e < 0 || e >= (1 << 20)) return absl::OkStatus();
    l.expert = e;
    l.kind = CanonicalKind(parts[3]);
    experts_seen[idx].insert(e);
  } else if (mlp && parts.size() == 3 && parts[1] == "shared_expert") {
    l.shared_expert = true;
    l.kind = parts[2];
  } else if (parts.size() == 2) {
    l.kind = parts[1];
  } else {
    return absl::OkStatus();  // deeper structure this view does not know: generic role
  }
  auto& list = attn ? b.attention : b.mlp;
  auto it = std::find_if(list.begin(), list.end(), [&](const LinearLayer& x) { return x.name == l.name; });
  if (it == list.end()) {
    list.push_back(l);
    it = std::prev(list.end());
  }
  if (param == "bias") {
    it->bias = name;
    a.roles[name] = TensorRole::kBias;
    return absl::OkStatus();
  }
  if (t.shape().size() != 2) {
    return DataLoss("{}: tensor '{}' should be a 2-D weight but has shape {}", path, name,
                    ShapeString(t.shape()));
  }
  it->weight = name;
  // Conv1D weights are [in, out], except in a GGUF block type: its blocks run along inputs,
  // so quantize-gguf stores them [out, in] (as GGUF does).
  const bool conv1d = in_out && !IsBlockType(t.dtype());
  it->out_features = conv1d ? t.shape()[1] : t.shape()[0];
  it->in_features = conv1d ? t.shape()[0] : t.shape()[1];
  it->out_axis = conv1d ? 1 : 0;
  a.roles[name] = TensorRole::kLinearWeight;
  return absl::OkStatus();
}

// Checks block `idx` against config.json (shapes, no-op sublayers, experts and router) and
// puts its projections in execution order.
absl::Status FinishBlock(const HfConfig& cfg, int idx, Block& b, const std::set<int>& experts,
                         const TensorStore& tensors, const std::string& path) {
  if (idx < 0 || idx >= cfg.num_layers) {
    return DataLoss("{}: block index {} is outside 0..{}", path, idx, cfg.num_layers - 1);
  }
  for (const auto* list : {&b.attention, &b.mlp}) {
    for (const LinearLayer& l : *list) {
      if (l.weight.empty()) return DataLoss("{}: layer '{}' has a bias but no weight", path, l.name);
      // Projections must agree with the head layout and FFN widths in config.json.
      auto [expect_out, expect_in] = ExpectedShape(cfg, l, b.moe());
      if (expect_out && (l.out_features != expect_out || l.in_features != expect_in)) {
        return DataLoss("{}: '{}' has shape [{}, {}] but config.json implies [{}, {}]", path, l.weight,
                        l.out_features, l.in_features, expect_out, expect_in);
      }
    }
  }
  // block_configs' no-op sublayers hold no tensors.
  if (cfg.AttentionRemoved(idx) && !b.attention.empty()) {
    return DataLoss("{}: block_configs makes block {}'s attention a no-op, but '{}' is there", path, idx,
                    b.attention.front().name);
  }
  if (cfg.MlpRemoved(idx) && (!b.mlp.empty() || b.moe())) {
    return DataLoss("{}: block_configs makes block {}'s FFN a no-op, but the block has FFN weights", path, idx);
  }
  if (b.moe()) {
    b.num_experts = static_cast<int>(experts.size());
    const Tensor& r = tensors.at(b.router);
    if (r.shape().size() != 2 || r.shape()[1] != cfg.hidden_size || r.shape()[0] != b.num_experts ||
        (cfg.num_experts && b.num_experts != cfg.num_experts)) {
      return DataLoss("{}: router '{}' has shape {} but block {} holds {} experts (config.json: {}) of hidden size {}",
                      path, b.router, ShapeString(r.shape()), idx, b.num_experts, cfg.num_experts,
                      cfg.hidden_size);
    }
    for (int e = 0; e < b.num_experts; ++e) {
      if (!experts.count(e)) return DataLoss("{}: block {} lacks expert {}", path, idx, e);
    }
    if (!b.shared_expert_gate.empty() && tensors.at(b.shared_expert_gate).shape() !=
                                             std::vector<int64_t>{1, cfg.hidden_size}) {
      return DataLoss("{}: '{}' must have shape [1, {}]", path, b.shared_expert_gate, cfg.hidden_size);
    }
  } else if (!experts.empty()) {
    return DataLoss("{}: block {} has experts but no router (mlp.gate)", path, idx);
  }
  // Execution order, not file order: q, k, v, o; gate, up, down per expert (unknown kinds last).
  static const std::vector<std::string> kOrder = {"q_proj",       "k_proj", "v_proj",    "qkv_proj",
                                                  "c_attn",       "o_proj", "gate_proj", "up_proj",
                                                  "gate_up_proj", "c_fc",   "c_proj",    "down_proj"};
  auto rank = [](const LinearLayer& l) {
    const int64_t k = std::find(kOrder.begin(), kOrder.end(), l.kind) - kOrder.begin();
    const int64_t group = l.shared_expert ? (int64_t{1} << 21) : l.expert + 1;
    return group * 64 + k;
  };
  for (auto* list : {&b.attention, &b.mlp}) {
    std::stable_sort(list->begin(), list->end(),
                     [&](const LinearLayer& x, const LinearLayer& y) { return rank(x) < rank(y); });
  }
  return absl::OkStatus();
}

absl::StatusOr<Architecture> BuildHfArchitecture(const HfConfig& cfg, const TensorStore& tensors,
                                                 const std::string& path) {
  const FamilySpec* fam = FindFamily(cfg.model_type);
  if (!fam) {
    // Unknown model_type: take the first family whose block naming the tensors follow.
    std::string digits, rest, param;
    for (const auto& f : Families()) {
      for (const auto& n : tensors.names()) {
        if (SplitBlockName(f, n, digits, rest, param)) {
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
  a.container = cfg.container_type;
  if (!a.container.empty()) {
    // Outside the text decoder (vision tower, projector): kept as they are.
    for (const auto& name : tensors.names()) {
      if (!InTextDecoder(name)) a.roles[name] = TensorRole::kOther;
    }
  }
  if (!fam) return a;
  const bool in_out = fam->layout == ProjectionLayout::kConv1dGpt2;

  std::map<int, Block> blocks;
  std::map<int, std::set<int>> experts_seen;
  for (const auto& name : tensors.names()) {
    RETURN_IF_ERROR(AddBlockTensor(fam, name, tensors.at(name), in_out, blocks, experts_seen, a, path));
  }
  if (static_cast<int64_t>(blocks.size()) != cfg.num_layers) {
    return DataLoss("{}: config.json says num_hidden_layers={} but the tensors hold {} blocks", path,
                    cfg.num_layers, blocks.size());
  }
  for (auto& [idx, b] : blocks) {
    RETURN_IF_ERROR(FinishBlock(cfg, idx, b, experts_seen[idx], tensors, path));
    a.blocks.push_back(std::move(b));
  }
  for (const auto& n : fam->embeddings) {
    if (tensors.contains(std::string(n))) {
      a.roles[std::string(n)] = TensorRole::kEmbedding;
      if (a.embedding.empty()) a.embedding = n;
    }
  }
  if (in_out) {  // GPT-2's learned positions
    for (const char* n : {"transformer.wpe.weight", "wpe.weight"})
      if (tensors.contains(n)) a.roles[n] = TensorRole::kEmbedding;
  }
  for (const char* n : {"lm_head.weight", "language_model.lm_head.weight"}) {
    if (!tensors.contains(n) || !a.lm_head.empty()) continue;
    a.lm_head = n;
    a.roles[a.lm_head] = TensorRole::kLmHead;
  }
  for (const auto& n : fam->final_norms) {
    if (tensors.contains(std::string(n)) && a.final_norm.empty()) a.final_norm = n;
  }
  if (!a.embedding.empty() && cfg.vocab_size && tensors.at(a.embedding).shape()[0] != cfg.vocab_size) {
    return DataLoss("{}: '{}' has {} rows but config.json says vocab_size={}", path, a.embedding,
                    tensors.at(a.embedding).shape()[0], cfg.vocab_size);
  }
  if (a.lm_head.empty() && !cfg.tie_word_embeddings) {
    return DataLoss("{}: no lm_head.weight and tie_word_embeddings is false", path);
  }
  for (const Block& b : a.blocks) {
    if (!b.moe()) continue;
    a.num_experts = std::max<int64_t>(a.num_experts, b.num_experts);
    a.experts_per_token = cfg.experts_per_token;
    a.expert_intermediate_size = cfg.moe_intermediate_size ? cfg.moe_intermediate_size : cfg.intermediate_size;
    if (!b.shared_expert_gate.empty()) a.shared_expert_intermediate_size = cfg.shared_expert_intermediate_size;
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

absl::StatusOr<Model> TextDecoderModel(const Model& model) {
  ASSIGN_OR_RETURN(HfConfig cfg, ParseHfConfig(model.config, model.source));
  Model text = model;
  text.config = FilledTextConfig(model.config);
  text.config["model_type"] = cfg.model_type;
  text.config["tie_word_embeddings"] = cfg.tie_word_embeddings;
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (model.config.contains(key) && !text.config.contains(key)) text.config[key] = model.config[key];
  }
  text.config.erase("architectures");
  for (const std::string& name : model.tensors.names()) {
    if (!InTextDecoder(name)) {
      text.tensors.Erase(name);
      continue;
    }
    const std::string plain = DecoderTensorName(name);
    if (plain != name) text.tensors.Replace(name, plain, model.tensors.at(name));
  }
  RETURN_IF_ERROR(RebuildHfArchitecture(text));
  return text;
}

HfConfig::RopeExtension HfConfig::YarnExtension(const RopeScaling& r) const {
  RopeExtension e;
  e.original = r.original_given ? r.original_max_positions : static_cast<double>(max_positions);
  e.factor = r.original_given && max_positions > 0 ? static_cast<double>(max_positions) / e.original : r.factor;
  auto mscale = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
  e.attention = r.attention_factor;
  if (e.attention == 0) {
    e.attention = r.mscale > 0 && r.mscale_all_dim > 0 ? mscale(e.factor, r.mscale) / mscale(e.factor, r.mscale_all_dim)
                                                       : mscale(e.factor, 1.0);
  }
  return e;
}

HfConfig::RopeExtension HfConfig::LongropeExtension(const RopeScaling& r) const {
  RopeExtension e;
  e.original = static_cast<double>(max_positions);
  e.factor = r.factor;
  if (original_max_positions > 0) {
    e.original = static_cast<double>(original_max_positions);
    e.factor = static_cast<double>(max_positions) / e.original;
  }
  e.attention = r.attention_factor;
  if (e.attention == 0) e.attention = e.factor <= 1 ? 1.0 : std::sqrt(1 + std::log(e.factor) / std::log(e.original));
  return e;
}

double Llama3FrequencyScale(const HfConfig::RopeScaling& r, double wavelen) {
  const double lo_wavelen = r.original_max_positions / r.low_freq_factor;
  const double hi_wavelen = r.original_max_positions / r.high_freq_factor;
  if (wavelen < hi_wavelen) return 1.0;
  if (wavelen > lo_wavelen) return 1.0 / r.factor;
  const double smooth = (r.original_max_positions / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  return (1 - smooth) / r.factor + smooth;
}

bool HfConfig::SlidingLayer(int64_t layer) const {
  if (sliding_window <= 0) return false;
  if (!layer_types.empty()) {
    return layer >= 0 && layer < static_cast<int64_t>(layer_types.size()) &&
           layer_types[layer] == "sliding_attention";
  }
  const FamilySpec* fam = FindFamily(model_type);
  using S = FamilySpec::Sliding;
  switch (fam ? fam->sliding : S::kNone) {
    case S::kNone:
      return false;
    case S::kAll:
      return true;
    case S::kEvenLayers:
      return layer % 2 == 0;
    case S::kGemma3Pattern:
      return (layer + 1) % sliding_window_pattern != 0;
    case S::kQwenFromMaxWindow:
      return use_sliding_window && layer >= max_window_layers;
  }
  return false;
}

bool HfConfig::MoeLayer(int64_t layer) const {
  if (num_experts <= 0) return false;
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) return false;
  return (layer + 1) % decoder_sparse_step == 0;
}

}  // namespace compress
