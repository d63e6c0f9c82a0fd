// GGUF names, row sizes and the rope row permutation.
#include "formats/gguf_layout.h"

#include "core/family.h"

#include <cstring>
#include <map>
#include <vector>

#include "core/block_quant.h"
#include "core/family.h"
#include "core/status.h"

namespace compress::gguf {
namespace {

// Hugging Face name suffix within a block <-> GGUF suffix.
const std::map<std::string, std::string>& BlockNames() {
  static const auto* m = new std::map<std::string, std::string>{
      {"input_layernorm.weight", "attn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.o_proj.bias", "attn_output.bias"},  // Llama's / DeciLM's attention_bias
      {"mlp.gate_proj.bias", "ffn_gate.bias"},        // and mlp_bias
      {"mlp.up_proj.bias", "ffn_up.bias"},
      {"mlp.down_proj.bias", "ffn_down.bias"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
      // Qwen2-MoE's shared expert (its experts are merged 3-D tensors: GgufExpertName)
      {"mlp.shared_expert.gate_proj.weight", "ffn_gate_shexp.weight"},
      {"mlp.shared_expert.up_proj.weight", "ffn_up_shexp.weight"},
      {"mlp.shared_expert.down_proj.weight", "ffn_down_shexp.weight"},
  };
  return *m;
}

// Block names only some architectures have (Qwen3's q/k norms, Phi-3's fused projections).
const std::map<std::string, std::string>& ArchBlockNames(std::string_view arch) {
  static const auto* qwen3 = new std::map<std::string, std::string>{
      {"self_attn.q_norm.weight", "attn_q_norm.weight"},
      {"self_attn.k_norm.weight", "attn_k_norm.weight"},
  };
  static const auto* phi3 = new std::map<std::string, std::string>{
      {"self_attn.qkv_proj.weight", "attn_qkv.weight"},
      {"mlp.gate_up_proj.weight", "ffn_up.weight"},  // [gate; up] rows, split by llama.cpp's SwiGLU
  };
  // Gemma 3's sandwich norms: post_attention_layernorm is the attention output's norm there.
  static const auto* gemma3 = new std::map<std::string, std::string>{
      {"self_attn.q_norm.weight", "attn_q_norm.weight"},
      {"self_attn.k_norm.weight", "attn_k_norm.weight"},
      {"post_attention_layernorm.weight", "post_attention_norm.weight"},
      {"pre_feedforward_layernorm.weight", "ffn_norm.weight"},
      {"post_feedforward_layernorm.weight", "post_ffw_norm.weight"},
  };
  static const auto* gemma2 = new std::map<std::string, std::string>{
      {"post_attention_layernorm.weight", "post_attention_norm.weight"},
      {"pre_feedforward_layernorm.weight", "ffn_norm.weight"},
      {"post_feedforward_layernorm.weight", "post_ffw_norm.weight"},
  };
  // Mixture-of-experts routers (Mixtral is llama.cpp's llama with experts) and Qwen2-MoE's
  // shared-expert gate ([1, hidden] in Hugging Face, a vector in GGUF).
  static const auto* llama = new std::map<std::string, std::string>{
      {"block_sparse_moe.gate.weight", "ffn_gate_inp.weight"},
  };
  static const auto* qwen2moe = new std::map<std::string, std::string>{
      {"mlp.gate.weight", "ffn_gate_inp.weight"},
      {"mlp.shared_expert_gate.weight", "ffn_gate_inp_shexp.weight"},
  };
  static const auto* qwen3moe = new std::map<std::string, std::string>{
      {"self_attn.q_norm.weight", "attn_q_norm.weight"},
      {"self_attn.k_norm.weight", "attn_k_norm.weight"},
      {"mlp.gate.weight", "ffn_gate_inp.weight"},
  };
  static const auto* none = new std::map<std::string, std::string>{};
  return arch == "llama"      ? *llama
         : arch == "qwen2moe" ? *qwen2moe
         : arch == "qwen3moe" ? *qwen3moe
         : arch == "qwen3"    ? *qwen3
         : arch == "phi3"   ? *phi3
         : arch == "gemma3" ? *gemma3
         : arch == "gemma2" ? *gemma2
                            : *none;
}

const std::map<std::string, std::string>& TopNames() {
  static const auto* m = new std::map<std::string, std::string>{
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  return *m;
}

// Splits "<prefix><index>.<rest>"; false when `name` has another form.
bool SplitIndexed(const std::string& name, std::string_view prefix, std::string* index, std::string* rest) {
  if (!name.starts_with(prefix)) return false;
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos || dot == prefix.size()) return false;
  *index = name.substr(prefix.size(), dot - prefix.size());
  for (char c : *index) {
    if (c < '0' || c > '9') return false;
  }
  *rest = name.substr(dot + 1);
  return true;
}

}  // namespace

namespace {
struct TypeInfo {
  TensorType type;
  std::string_view name;
  std::optional<DType> block_dtype;
  uint32_t file_type;
};
constexpr TypeInfo kTypes[] = {
    {TensorType::kF32, "F32", std::nullopt, 0},          {TensorType::kF16, "F16", std::nullopt, 1},
    {TensorType::kQ4_0, "Q4_0", DType::kQ4_0, 2},        {TensorType::kQ4_1, "Q4_1", DType::kQ4_1, 3},
    {TensorType::kQ5_0, "Q5_0", DType::kQ5_0, 8},        {TensorType::kQ5_1, "Q5_1", DType::kQ5_1, 9},
    {TensorType::kQ8_0, "Q8_0", DType::kQ8_0, 7},        {TensorType::kQ2_K, "Q2_K", DType::kQ2_K, 10},
    {TensorType::kQ3_K, "Q3_K", DType::kQ3_K, 12},       {TensorType::kQ4_K, "Q4_K", DType::kQ4_K, 15},
    {TensorType::kQ5_K, "Q5_K", DType::kQ5_K, 17},       {TensorType::kQ6_K, "Q6_K", DType::kQ6_K, 18},
    {TensorType::kIQ4_NL, "IQ4_NL", DType::kIQ4_NL, 25}, {TensorType::kIQ4_XS, "IQ4_XS", DType::kIQ4_XS, 30},
    {TensorType::kBF16, "BF16", std::nullopt, 32},
    {TensorType::kMXFP4, "MXFP4", std::nullopt, 38},  // LLAMA_FTYPE_MOSTLY_MXFP4_MOE, the only MXFP4 ftype
};
const TypeInfo* Find(TensorType t) {
  for (const auto& i : kTypes) {
    if (i.type == t) return &i;
  }
  return nullptr;
}
}  // namespace

bool KnownType(uint32_t t) { return Find(static_cast<TensorType>(t)) != nullptr; }
std::string_view TypeName(TensorType t) { return Find(t) ? Find(t)->name : "?"; }
std::optional<DType> BlockDType(TensorType t) { return Find(t) ? Find(t)->block_dtype : std::nullopt; }
std::optional<TensorType> TypeOfBlockDType(DType d) {
  for (const auto& i : kTypes) {
    if (i.block_dtype == d) return i.type;
  }
  return std::nullopt;
}
uint32_t FileTypeOf(TensorType t) { return Find(t) ? Find(t)->file_type : 0; }

int64_t TypeBlock(TensorType t) {
  if (t == TensorType::kMXFP4) return kBlock;
  if (auto d = BlockDType(t)) return BlockElements(*d);
  return 1;
}

uint64_t RowBytes(TensorType t, int64_t cols) {
  switch (t) {
    case TensorType::kF32:
      return 4 * cols;
    case TensorType::kF16:
    case TensorType::kBF16:
      return 2 * cols;
    case TensorType::kMXFP4:  // E8M0 scale byte + 16 bytes of E2M1 codes
      return (cols / kBlock) * (1 + kBlock / 2);
    default:
      if (auto d = BlockDType(t)) return static_cast<uint64_t>(DTypeBytes(*d, cols));
      return 0;
  }
}

void PackNibbles(const int8_t* codes, int bias, uint8_t* qs) {
  for (int64_t j = 0; j < kBlock / 2; ++j) {
    qs[j] = static_cast<uint8_t>((codes[j] + bias) | ((codes[j + kBlock / 2] + bias) << 4));
  }
}

void UnpackNibbles(const uint8_t* qs, int bias, int8_t* codes) {
  for (int64_t j = 0; j < kBlock / 2; ++j) {
    codes[j] = static_cast<int8_t>((qs[j] & 15) - bias);
    codes[j + kBlock / 2] = static_cast<int8_t>((qs[j] >> 4) - bias);
  }
}

std::string GgufArchitecture(std::string_view family) {
  if (family == "llama" || family == "mistral" || family == "mixtral") return "llama";
  if (family == "qwen2_moe") return "qwen2moe";
  if (family == "qwen3_moe") return "qwen3moe";
  if (family == "nemotron-nas") return "deci";  // Llama blocks with per-layer no-op sublayers
  if (family == "gemma3_text") return "gemma3";
  for (std::string_view f : {"qwen2", "qwen3", "phi3", "gemma", "gemma2", "gpt2"}) {
    if (family == f) return std::string(f);
  }
  return "";
}

absl::StatusOr<std::string> GgufWeightName(const std::string& hf, std::string_view family) {
  const std::string arch = GgufArchitecture(family);
  return GgufName(DecoderTensorName(hf), arch.empty() ? "llama" : arch);  // a container's decoder too
}

// GPT-2's names (with or without the `transformer.` prefix); "" for the attention-mask buffers
// older checkpoints carry.
const std::map<std::string, std::string>& Gpt2TopNames() {  // without the transformer. prefix
  static const auto* m = new std::map<std::string, std::string>{
      {"wte.weight", "token_embd.weight"}, {"wpe.weight", "position_embd.weight"},
      {"ln_f.weight", "output_norm.weight"}, {"ln_f.bias", "output_norm.bias"}};
  return *m;
}
const std::map<std::string, std::string>& Gpt2BlockNames() {  // + .weight / .bias
  static const auto* m = new std::map<std::string, std::string>{
      {"ln_1", "attn_norm"}, {"attn.c_attn", "attn_qkv"}, {"attn.c_proj", "attn_output"},
      {"ln_2", "ffn_norm"},  {"mlp.c_fc", "ffn_up"},      {"mlp.c_proj", "ffn_down"}};
  return *m;
}

// GPT-2's names (with or without the `transformer.` prefix); "" for the attention-mask buffers
// older checkpoints carry.
absl::StatusOr<std::string> Gpt2GgufName(const std::string& hf) {
  const std::string name = hf.starts_with("transformer.") ? hf.substr(12) : hf;
  if (hf == "lm_head.weight") return std::string("output.weight");
  if (auto it = Gpt2TopNames().find(name); it != Gpt2TopNames().end()) return it->second;
  std::string index, rest;
  if (SplitIndexed(name, "h.", &index, &rest)) {
    if (rest == "attn.bias" || rest == "attn.masked_bias") return std::string();  // causal-mask buffers
    const size_t dot = rest.rfind('.');
    if (dot != std::string::npos) {
      const std::string kind = rest.substr(dot + 1);
      auto it = Gpt2BlockNames().find(rest.substr(0, dot));
      if (it != Gpt2BlockNames().end() && (kind == "weight" || kind == "bias")) {
        return "blk." + index + "." + it->second + "." + kind;
      }
    }
  }
  return Unimplemented("tensor '{}' has no place in a GGUF gpt2 model", hf);
}

absl::StatusOr<std::string> Gpt2HfName(const std::string& gguf) {
  if (gguf == "output.weight") return std::string("lm_head.weight");
  for (const auto& [hf, g] : Gpt2TopNames()) {
    if (g == gguf) return "transformer." + hf;
  }
  std::string index, rest;
  if (SplitIndexed(gguf, "blk.", &index, &rest)) {
    for (const auto& [hf, g] : Gpt2BlockNames()) {
      for (const char* kind : {".weight", ".bias"}) {
        if (rest == g + kind) return "transformer.h." + index + "." + hf + kind;
      }
    }
  }
  return Unimplemented("GGUF tensor '{}' is not one compress maps for gpt2", gguf);
}

absl::StatusOr<std::string> GgufName(const std::string& hf, std::string_view arch) {
  if (arch == "gpt2") return Gpt2GgufName(hf);
  if (auto it = TopNames().find(hf); it != TopNames().end()) return it->second;
  std::string index, rest;
  if (SplitIndexed(hf, "model.layers.", &index, &rest)) {
    if (rest == "self_attn.rotary_emb.inv_freq") return std::string();  // recomputed by llama.cpp
    const auto& extra = ArchBlockNames(arch);  // first: Gemma 3's post_attention_layernorm differs
    if (auto it = extra.find(rest); it != extra.end()) return "blk." + index + "." + it->second;
    if (auto it = BlockNames().find(rest); it != BlockNames().end()) return "blk." + index + "." + it->second;
  }
  return Unimplemented("tensor '{}' has no place in a GGUF {} model", hf, arch);
}

std::optional<std::pair<std::string, int64_t>> GgufExpertName(const std::string& hf) {
  std::string index, rest, expert, proj;
  if (!SplitIndexed(DecoderTensorName(hf), "model.layers.", &index, &rest)) return std::nullopt;
  for (std::string_view moe : {"mlp.experts.", "block_sparse_moe.experts."}) {
    if (!SplitIndexed(rest, moe, &expert, &proj)) continue;
    static const auto* kProj = new std::map<std::string, std::string>{
        {"gate_proj.weight", "ffn_gate_exps.weight"}, {"up_proj.weight", "ffn_up_exps.weight"},
        {"down_proj.weight", "ffn_down_exps.weight"}, {"w1.weight", "ffn_gate_exps.weight"},
        {"w3.weight", "ffn_up_exps.weight"},          {"w2.weight", "ffn_down_exps.weight"}};
    auto it = kProj->find(proj);
    if (it == kProj->end() || expert.size() > 9) return std::nullopt;
    return std::make_pair("blk." + index + "." + it->second, std::stoll(expert));
  }
  return std::nullopt;
}

std::optional<std::string> HfExpertName(const std::string& gguf, int64_t expert, std::string_view arch) {
  std::string index, rest;
  if (!SplitIndexed(gguf, "blk.", &index, &rest)) return std::nullopt;
  const bool mixtral = arch == "llama";
  static const auto* kProj = new std::map<std::string, std::pair<std::string, std::string>>{
      {"ffn_gate_exps.weight", {"w1.weight", "gate_proj.weight"}},
      {"ffn_up_exps.weight", {"w3.weight", "up_proj.weight"}},
      {"ffn_down_exps.weight", {"w2.weight", "down_proj.weight"}}};
  auto it = kProj->find(rest);
  if (it == kProj->end() || (!mixtral && arch != "qwen2moe" && arch != "qwen3moe")) return std::nullopt;
  return fmt::format("model.layers.{}.{}.{}.{}", index, mixtral ? "block_sparse_moe.experts" : "mlp.experts", expert,
                     mixtral ? it->second.first : it->second.second);
}

absl::StatusOr<std::string> HfName(const std::string& gguf, std::string_view arch) {
  if (arch == "gpt2") return Gpt2HfName(gguf);
  for (const auto& [hf, g] : TopNames()) {
    if (g == gguf) return hf;
  }
  std::string index, rest;
  if (SplitIndexed(gguf, "blk.", &index, &rest)) {
    for (const auto& [hf, g] : ArchBlockNames(arch)) {  // first: Phi-3's ffn_up is gate_up_proj
      if (g == rest) return "model.layers." + index + "." + hf;
    }
    for (const auto& [hf, g] : BlockNames()) {
      if (g == rest) return "model.layers." + index + "." + hf;
    }
  }
  return Unimplemented(
      "GGUF tensor '{}' is not one compress maps (llama/qwen2 projections, norms, embeddings)", gguf);
}

void PermuteRopeRows(uint8_t* data, int64_t rows, uint64_t row_bytes, int64_t heads, bool to_gguf) {
  // Hugging Face orders each head's rows as [first halves of the rotated pairs, second
  // halves]; llama.cpp's `llama` rope rotates adjacent rows: GGUF row h*hd + 2i + s holds
  // HF row h*hd + s*hd/2 + i.
  const int64_t hd = rows / heads;
  std::vector<uint8_t> src(data, data + rows * row_bytes);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < hd / 2; ++i) {
      for (int64_t s = 0; s < 2; ++s) {
        const int64_t g = h * hd + 2 * i + s, f = h * hd + s * (hd / 2) + i;
        std::memcpy(data + (to_gguf ? g : f) * row_bytes, src.data() + (to_gguf ? f : g) * row_bytes,
                    row_bytes);
      }
    }
  }
}

int64_t LlamaCppGemmaQueryScalar(std::string_view arch, int64_t layers, int64_t hidden, int64_t heads,
                                 int64_t head_dim) {
  const bool size_27b = (arch == "gemma2" && layers == 46) || (arch == "gemma3" && layers == 62);
  return size_27b && heads > 0 ? hidden / heads : head_dim;
}

}  // namespace compress::gguf
