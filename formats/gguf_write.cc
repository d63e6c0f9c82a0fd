// GGUF writer: metadata from config.json and tokenizer.json, tensors from the model's store.
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <numbers>

#include "absl/strings/numbers.h"
#include "core/block_quant.h"
#include "core/dtype.h"
#include "core/status.h"
#include "core/file_util.h"
#include "formats/gguf.h"
#include "formats/gguf_container.h"
#include "formats/gguf_layout.h"
#include "formats/gguf_tokenizer.h"
#include "formats/hf_config.h"
#include "core/family.h"
#include "nlohmann/json.hpp"

namespace compress {
namespace {

namespace fs = std::filesystem;
using GgmlType = gguf::TensorType;
using namespace gguf;  // NOLINT: layout constants and value types kU32, kString, ...

// One tensor of the output: where its values come from and how they are stored.
struct Planned {
  std::string name;  // GGUF name
  std::string source;
  GgmlType type = GgmlType::kF32;
  int64_t rows = 1, cols = 0;  // 1-D tensors: rows = 1
  int rope_heads = 0;          // > 0: rows permuted as llama.cpp's interleaved rope expects
  float add = 0;               // added to every value (Gemma's norms: llama.cpp multiplies by w, not 1 + w)
  uint64_t nbytes = 0;         // of one expert when `experts` is set
  bool flat = false;           // a [1, n] matrix stored as llama.cpp's 1-D vector (Qwen2-MoE's shared-expert gate)
  bool transpose = false;      // a Conv1D weight [in, out] (GPT-2) stored as ggml's rows of inputs
  std::vector<float> values;   // a tensor made here, not from the model (llama3's rope_freqs): F32
  bool matrix = false;         // `values` stored as ggml's {cols, rows} even when rows is 1
  // Mixture-of-experts blocks: the per-expert [rows, cols] weights (in expert order) stored as one
  // ggml tensor {cols, rows, experts}; `source` is the first of them.
  std::vector<std::string> experts;
};

}  // namespace

std::string GgufUnstorableReason(const PlannedQuant& q) {
  if (q.format == "mxfp4") return q.group_size == kBlock ? "" : "mxfp4 with blocks other than 32 inputs";
  if (q.format != "int") return fmt::format("format {} (integer codes map to Q8_0/Q4_0, mxfp4 to MXFP4)", q.format);
  if (!q.symmetric) return "asymmetric codes (Q8_0/Q4_0 have no zero point)";
  if (q.group_size != kBlock) {
    return fmt::format("group size {} (Q8_0/Q4_0 use groups of 32 inputs)",
                       q.group_size == 0 ? std::string("0, one scale per output channel") : std::to_string(q.group_size));
  }
  if (q.outlier_inputs) return "LLM.int8() outlier columns";
  if (q.bits != 8 && q.bits > 4) return fmt::format("{} bits (Q8_0 takes 8, Q4_0 takes 2 to 4)", q.bits);
  if (q.scale_dtype != "f16") return fmt::format("{} scales (Q8_0/Q4_0 store f16: use scale-dtype=f16)", q.scale_dtype);
  return "";
}

namespace {

// The GGUF type that stores `t` exactly, or an error saying why none does. `conv1d`: `t` is
// [in, out] (GPT-2), so its quantization groups must run along axis 0.
absl::StatusOr<GgmlType> ChooseType(const std::string& name, const Tensor& t, bool conv1d = false) {
  if (t.factors()) {
    return Unimplemented(
        "tensor '{}' is factorized (low rank); GGUF has no factor layout: run dequantize{{dtype=f16}} last "
        "to store the product, or write safetensors/ONNX",
        name);
  }
  const int axis = conv1d ? 1 : 0;  // the quantization's channel axis GGUF rows need
  if (const QuantInfo* q = t.quant()) {
    const int64_t cols = t.shape().size() == 2 ? t.shape()[conv1d ? 0 : 1] : 0;
    std::string why;
    if (q->format() == "mxfp4") {
      if (q->channel_axis != axis || q->group_size != kBlock || cols % kBlock != 0 ||
          !q->outlier_inputs.empty()) {
        return Unimplemented(
            "tensor '{}': mxfp4 with this layout has no GGUF block type (MXFP4 takes [out, in] "
            "weights in blocks of 32 inputs)",
            name);
      }
      return GgmlType::kMXFP4;
    }
    why = GgufUnstorableReason(PlannedQuant{q->format(), q->bits, q->symmetric, q->group_size, "f16",
                                            !q->outlier_inputs.empty()});
    if (why.empty() && q->channel_axis != axis) why = fmt::format("channels on axis {}", q->channel_axis);
    if (why.empty() && cols % kBlock != 0) why = fmt::format("{} inputs, not whole groups of 32", cols);
    // A deferred quantization's scales are not made yet; its quantizer rounds them up to
    // f16 values (scale_dtype). Others are checked one by one.
    if (why.empty() && !(q->deferred() && q->scale_dtype == DType::kF16)) {
      for (float s : q->scales()) {
        if (F16ToF32(F32ToF16(s)) != s) {
          why = fmt::format("scale {} is not an f16 value (quantize with scale-dtype=f16)", s);
          break;
        }
      }
    }
    if (!why.empty()) {
      return Unimplemented(
          "tensor '{}': no GGUF block type stores this quantization exactly: {}; GGUF takes "
          "quantize-int{{bits=8|4,group-size=32,scale-dtype=f16}} (Q8_0|Q4_0), or dequantize first",
          name, why);
    }
    return q->bits == 8 ? GgmlType::kQ8_0 : GgmlType::kQ4_0;
  }
  if (auto bt = TypeOfBlockDType(t.dtype())) {
    if (conv1d) return Unimplemented("tensor '{}': ggml blocks of a Conv1D [in, out] weight", name);
    const int64_t cols = t.shape().size() == 2 ? t.shape()[1] : 0;
    if (cols % TypeBlock(*bt) != 0) {
      return InvalidArgument("tensor '{}' of type {} has {} columns, not whole {}-element blocks", name,
                             DTypeName(t.dtype()), cols, TypeBlock(*bt));
    }
    return *bt;
  }
  switch (t.dtype()) {
    case DType::kF32:
      return GgmlType::kF32;
    case DType::kF16:
      return GgmlType::kF16;
    case DType::kBF16:
      return GgmlType::kBF16;
    default:
      return Unimplemented("tensor '{}' has type {}; GGUF output takes f32, f16, bf16 or Q8_0/Q4_0 weights",
                           name, DTypeName(t.dtype()));
  }
}

// Bytes of a planned tensor in its GGUF type, rows permuted when asked. Bytes already in it
// (f16 / bf16, ggml blocks) come as the tensor's own buffer, not a copy.
absl::StatusOr<std::shared_ptr<const Buffer>> Encode(const Planned& p, const Tensor& t) {
  const uint64_t row_bytes = RowBytes(p.type, p.cols);
  ASSIGN_OR_RETURN(auto buf, t.ReadOnce());
  const bool as_is = p.type != GgmlType::kF32 &&
                     (p.type == GgmlType::kF16 || p.type == GgmlType::kBF16 || IsBlockType(t.dtype())) &&
                     !(p.transpose && !t.quant()) && p.rope_heads == 0 && buf->size() == p.nbytes;
  if (as_is) return buf;
  auto out_buf = std::make_shared<UninitBuffer>(p.nbytes);  // every byte is written below
  std::span<uint8_t> out(out_buf->mutable_data(), p.nbytes);
  if (p.type == GgmlType::kF32) {
    if (t.dtype() == DType::kF32 && p.add == 0) {
      std::memcpy(out.data(), buf->data(), p.nbytes);
    } else {
      ASSIGN_OR_RETURN(std::vector<float> v, t.ToF32());
      for (float& x : v) x += p.add;
      std::memcpy(out.data(), v.data(), p.nbytes);
    }
  } else if (p.type == GgmlType::kF16 || p.type == GgmlType::kBF16 || IsBlockType(t.dtype())) {
    std::memcpy(out.data(), buf->data(), p.nbytes);  // the bytes as they are (block types: ggml's blocks)
  } else {
    const QuantInfo& q = *t.quant();
    const std::vector<float>& scales = q.scales();  // once: a deferred quantization's values
    const auto* codes = reinterpret_cast<const int8_t*>(buf->data());
    const int64_t groups = p.cols / kBlock;
    // Rows are independent: packed in parallel, each into its own bytes.
#pragma omp parallel for schedule(static) if (p.rows * p.cols >= (int64_t{1} << 16))
    for (int64_t r = 0; r < p.rows; ++r) {
      uint8_t* dst = out.data() + r * row_bytes;
      std::array<int8_t, kBlock> column;
      for (int64_t g = 0; g < groups; ++g) {
        const int8_t* c = codes + r * p.cols + g * kBlock;
        if (p.transpose) {  // codes [in, out]: this block is column r, inputs g*32 ...
          for (int64_t j = 0; j < kBlock; ++j) column[j] = codes[(g * kBlock + j) * p.rows + r];
          c = column.data();
        }
        if (p.type == GgmlType::kMXFP4) {  // E8M0 byte, then codes j | j + 16 << 4 (E2M1 bit patterns)
          dst[0] = static_cast<uint8_t>(std::ilogb(scales[r * q.groups + g]) + 127);
          PackNibbles(c, 0, dst + 1);
          dst += 1 + kBlock / 2;
          continue;
        }
        const uint16_t d = F32ToF16(scales[r * q.groups + g]);
        std::memcpy(dst, &d, 2);
        if (p.type == GgmlType::kQ8_0) {
          std::memcpy(dst + 2, c, kBlock);
          dst += 2 + kBlock;
        } else {  // Q4_0: f16 scale, then the signed codes + 8
          PackNibbles(c, 8, dst + 2);
          dst += 2 + kBlock / 2;
        }
      }
    }
  }
  if (p.transpose && !t.quant()) {  // dense [in, out] -> rows of inputs
    const size_t es = p.type == GgmlType::kF32 ? 4 : 2;
    std::vector<uint8_t> src(out.begin(), out.end());
    for (int64_t i = 0; i < p.cols; ++i) {
      for (int64_t o = 0; o < p.rows; ++o) {
        std::memcpy(out.data() + (o * p.cols + i) * es, src.data() + (i * p.rows + o) * es, es);
      }
    }
  }
  if (p.rope_heads > 0 && p.rows == 1) {  // a q/k bias: one value per output row
    PermuteRopeRows(out.data(), p.cols, out.size() / p.cols, p.rope_heads, /*to_gguf=*/true);
  } else if (p.rope_heads > 0) {
    PermuteRopeRows(out.data(), p.rows, row_bytes, p.rope_heads, /*to_gguf=*/true);
  }
  return std::shared_ptr<const Buffer>(std::move(out_buf));
}

}  // namespace

// How a checkpoint's rope scaling is written (Gemma's is checked by the caller): linear and yarn
// as llama.cpp's rope.scaling.* keys, llama3 as its per-dimension frequency divisors
// (rope_freqs), Phi-3's longrope as its short / long factor tensors, each computed as
// transformers does.
struct RopePlan {
  std::vector<float> freqs, factors_short, factors_long;  // llama3 divisors; Phi-3's longrope factors
  double yarn_factor = 0, yarn_original = 0, longrope_original = 0, longrope_attention = 0;
};

absl::StatusOr<RopePlan> PlanRope(const HfConfig& cfg, const std::string& arch, bool gemma,
                                  const std::string& source) {
  const HfConfig::RopeScaling& rope = cfg.rope;
  RopePlan plan;
  if (!gemma && rope.type != "default" && rope.type != "linear") {
    const bool llama_like = arch == "llama" || arch == "deci";
    const bool yarn_arch = llama_like || arch == "qwen2" || arch == "qwen3" || arch == "qwen2moe" || arch == "qwen3moe";
    if (rope.type == "llama3" && llama_like) {
      const int64_t rot = static_cast<int64_t>(static_cast<double>(cfg.head_dim) * cfg.partial_rotary_factor) / 2 * 2;
      for (int64_t i = 0; i < rot / 2; ++i) {
        const double inv = 1.0 / std::pow(rope.theta, static_cast<double>(static_cast<float>(2 * i) / static_cast<float>(rot)));
        plan.freqs.push_back(static_cast<float>(1.0 / Llama3FrequencyScale(rope, 2 * std::numbers::pi / inv)));
      }
    } else if (rope.type == "longrope" && llama_like && rope.short_factor == rope.long_factor &&
               rope.attention_factor == 1.0) {
      // per-dimension divisors alone (how compress reads a GGUF rope_freqs back): the same tensor
      for (double d : rope.short_factor) plan.freqs.push_back(static_cast<float>(d));
    } else if (rope.type == "longrope" && arch == "phi3") {
      // llama.cpp picks the long factors for the whole context when it exceeds the original length
      // (transformers: when the sequence does); below it both use the short ones.
      const HfConfig::RopeExtension ext = cfg.LongropeExtension(rope);
      plan.longrope_original = ext.original;
      plan.longrope_attention = ext.attention;
      for (double d : rope.short_factor) plan.factors_short.push_back(static_cast<float>(d));
      for (double d : rope.long_factor) plan.factors_long.push_back(static_cast<float>(d));
    } else if (rope.type == "yarn" && yarn_arch && rope.attention_factor == 0 && rope.mscale == 0 &&
               rope.mscale_all_dim == 0 && rope.truncate && rope.beta_fast == 32 && rope.beta_slow == 1) {
      // llama.cpp's yarn: ramp between floor/ceil correction dims for betas 32 and 1, attention
      // scale 0.1 ln(factor) + 1; transformers takes factor = max_positions / original when the
      // original length is given.
      const HfConfig::RopeExtension ext = cfg.YarnExtension(rope);
      plan.yarn_original = ext.original;
      plan.yarn_factor = ext.factor;
    } else {
      return Unimplemented(
          "{}: GGUF {} output of rope scaling '{}'{} is not supported (linear for every architecture, llama3 for "
          "llama, yarn with default parameters for llama and qwen, longrope for phi3)",
          source, arch, rope.type, rope.type == "yarn" ? " with these parameters" : "");
    }
  }
  return plan;
}

// Refuses, with the reason, what llama.cpp's graph for `arch` would compute differently: Gemma's
// attention scale and rope variants, FinerCut students it cannot run, a missing FFN width,
// and mixtures of experts with dense blocks or another top-k normalisation.
absl::Status CheckGgufForm(const Model& model, const HfConfig& cfg, const std::string& arch, bool gemma) {
  const Architecture& a = model.arch;
  const bool deci = arch == "deci";
  if (gemma) {
    // llama.cpp's gemma graphs scale scores by head_dim^-1/2 (hidden / heads for the 27B block
    // counts) and know linear rope scaling only.
    const int64_t want = LlamaCppGemmaQueryScalar(arch, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.head_dim);
    if (cfg.query_pre_attn_scalar > 0 && cfg.query_pre_attn_scalar != static_cast<double>(want)) {
      return Unimplemented(
          "{}: query_pre_attn_scalar {} is not the {} llama.cpp's {} uses for {} blocks (head_dim, or hidden / heads "
          "for the 27B block count)",
          model.source, cfg.query_pre_attn_scalar, want, arch, cfg.num_layers);
    }
    for (const auto* r : {&cfg.rope, &cfg.rope_local}) {
      if (r->type != "default" && r->type != "linear") {
        return Unimplemented("{}: GGUF {} output of rope scaling '{}' is not supported", model.source, arch, r->type);
      }
    }
    if (cfg.rope_local.type != "default") {
      return Unimplemented("{}: GGUF {} output of scaled rope on sliding layers is not supported", model.source, arch);
    }
  }

  if (deci && cfg.AttentionRemoved(0)) {
    return Unimplemented(
        "{}: block 0 has its attention removed; llama.cpp takes the head size from layer 0's head count "
        "and cannot load such a deci model (write safetensors, or keep block 0's attention)",
        model.source);
  }
  for (const Block& b : a.blocks) {
    // llama.cpp's deci graph skips a layer whose attention head count is 0 (FinerCut students);
    // a layer whose FFN width is 0 ends before its residual add, dropping the attention too, so a
    // removed FFN under a kept attention is written as a zero FFN one neuron wide
    // (kDeciPlaceholderFfn), which adds exactly nothing.
    if (deci && b.attention.empty() && cfg.AttentionRemoved(b.index)) continue;
    if (deci && b.mlp.empty() && cfg.MlpRemoved(b.index)) continue;
    if (b.attention.empty() || b.mlp.empty()) {
      return Unimplemented(
          "{}: block {} has its {} removed (FinerCut); llama.cpp's {} graph needs every block's attention "
          "and FFN",
          model.source, b.index, b.attention.empty() ? "attention" : "FFN", arch);
    }
  }
  // Every block's projections already match config.json's head counts and FFN width
  // (BuildHfArchitecture holds them to it, and the passes that change them keep them uniform),
  // so the config's values describe all blocks; that check skips a missing FFN width.
  if (cfg.intermediate_size <= 0) {
    return InvalidArgument(
        "{}: config.json gives no intermediate_size, which GGUF's feed_forward_length needs", model.source);
  }

  if (a.num_experts > 0) {
    // llama.cpp's MoE graphs (llama for Mixtral, qwen2moe, qwen3moe) route every layer through
    // experts and fix whether the top-k routing weights are renormalized.
    for (const Block& b : a.blocks) {
      if (!b.moe()) {
        return Unimplemented(
            "{}: block {} has a dense FFN among mixture-of-experts blocks (mlp_only_layers / decoder_sparse_step); "
            "llama.cpp's {} graph runs experts in every block",
            model.source, b.index, arch);
      }
    }
    const FamilySpec* fam = FindFamily(a.family);
    const bool norm = cfg.norm_topk_prob.value_or(fam && fam->norm_topk_default);
    const bool llama_norm = arch != "qwen2moe";
    if (norm != llama_norm) {
      return Unimplemented(
          "{}: norm_topk_prob is {}, but llama.cpp's {} graph always {} the top-k routing weights, so the GGUF "
          "file would compute another model (write safetensors)",
          model.source, norm, arch, llama_norm ? "renormalizes" : "keeps unnormalized");
    }
    if (a.experts_per_token <= 0 || a.experts_per_token > a.num_experts) {
      return InvalidArgument("{}: num_experts_per_tok {} with {} experts", model.source, a.experts_per_token,
                             a.num_experts);
    }
  }
  return absl::OkStatus();
}

// Every tensor of the GGUF file (names, types, shapes, extra rope tensors, experts stacked
// per block) planned before anything is written, with the elements of each block type.
struct GgufPlan {
  std::vector<Planned> tensors;
  std::map<GgmlType, int64_t> type_elements;
};

absl::StatusOr<GgufPlan> PlanGgufTensors(const Model& model, const HfConfig& cfg, const std::string& arch,
                                         const RopePlan& rope_plan) {
  const Architecture& a = model.arch;
  const bool gemma = arch == "gemma" || arch == "gemma2" || arch == "gemma3";
  const int64_t hd = cfg.head_dim;
  const bool deci = arch == "deci";
  GgufPlan out;
  std::vector<Planned>& plan = out.tensors;
  std::map<GgmlType, int64_t>& type_elements = out.type_elements;
  std::map<std::string, std::map<int64_t, std::string>> expert_weights;  // GGUF name -> expert -> weight
  for (const auto& hf : model.tensors.names()) {
    if (auto e = GgufExpertName(hf)) {
      if (a.num_experts <= 0) return InvalidArgument("{}: expert weight '{}' in a model without experts", model.source, hf);
      expert_weights[e->first][e->second] = hf;
      continue;
    }
    ASSIGN_OR_RETURN(std::string gname, GgufName(hf, arch));
    if (gname.empty()) continue;
    const Tensor& t = model.tensors.at(hf);
    Planned p;
    p.name = gname;
    p.source = hf;
    if (t.shape().size() == 1) {
      p.cols = t.shape()[0];
      if (t.quant() || t.factors()) return Internal("1-D tensor '{}' is quantized", hf);
      p.type = GgmlType::kF32;
      if (gemma && hf.ends_with("norm.weight")) p.add = 1.f;
    } else if (t.shape().size() == 2) {
      // GPT-2's Conv1D weights are [in, out]; its embeddings and head are [rows, hidden] as usual.
      // (A GGUF block type is [out, in] already: quantize-gguf stores Conv1D weights that way.)
      p.transpose = arch == "gpt2" && gname.starts_with("blk.") && !IsBlockType(t.dtype());
      p.rows = t.shape()[p.transpose ? 1 : 0];
      p.cols = t.shape()[p.transpose ? 0 : 1];
      ASSIGN_OR_RETURN(p.type, ChooseType(hf, t, p.transpose));
      p.flat = gname.ends_with("ffn_gate_inp_shexp.weight") && p.rows == 1;
    } else {
      return Unimplemented("tensor '{}' has shape {}; GGUF llama/qwen2 tensors are 1-D or 2-D", hf,
                           ShapeString(t.shape()));
    }
    // llama.cpp's llama / deci graphs rotate interleaved pairs: q/k rows (and q/k biases, attention_bias
    // or Qwen2's in a DeciLM student) go in its order.
    if ((arch == "llama" || deci) &&
        (hf.ends_with("self_attn.q_proj.weight") || hf.ends_with("self_attn.k_proj.weight") ||
         hf.ends_with("self_attn.q_proj.bias") || hf.ends_with("self_attn.k_proj.bias"))) {
      const bool bias = hf.ends_with(".bias");
      p.rope_heads = static_cast<int>(hf.find(".q_proj.") != std::string::npos ? cfg.num_heads : cfg.num_kv_heads);
      const int64_t outputs = bias ? p.cols : p.rows;
      if (p.rope_heads <= 0 || outputs != p.rope_heads * hd || hd % 2 != 0) {
        return InvalidArgument("tensor '{}' has {} outputs, not {} heads x {}", hf, outputs, p.rope_heads, hd);
      }
    }
    p.nbytes = p.rows * RowBytes(p.type, p.cols);
    if (t.shape().size() == 2 && gname.starts_with("blk.")) type_elements[p.type] += p.rows * p.cols;
    plan.push_back(std::move(p));
  }
  // deci: a removed FFN under a kept attention becomes a zero FFN kDeciPlaceholderFfn wide.
  if (deci) {
    for (const Block& b : a.blocks) {
      if (!cfg.MlpRemoved(b.index) || cfg.AttentionRemoved(b.index)) continue;
      const int64_t h = cfg.hidden_size, w = kDeciPlaceholderFfn;
      const std::string blk = fmt::format("blk.{}.", b.index);
      for (const auto& [name, rows, cols, one] :
           {std::tuple{"ffn_norm.weight", int64_t{1}, h, 1.f}, std::tuple{"ffn_gate.weight", w, h, 0.f},
            std::tuple{"ffn_up.weight", w, h, 0.f}, std::tuple{"ffn_down.weight", h, w, 0.f}}) {
        Planned p;
        p.name = blk + name;
        p.rows = rows;
        p.cols = cols;
        p.matrix = p.name != blk + "ffn_norm.weight";
        p.values.assign(rows * cols, one);
        p.nbytes = 4 * p.values.size();
        plan.push_back(std::move(p));
      }
    }
  }
  // llama.cpp's qwen2moe has no tied head: a tied model gets the embedding again as output.weight.
  if (arch == "qwen2moe" && !model.tensors.contains("lm_head.weight")) {
    for (const Planned& p : plan) {
      if (p.name != "token_embd.weight") continue;
      Planned out = p;
      out.name = "output.weight";
      plan.push_back(std::move(out));
      break;
    }
  }
  for (const auto& [gname, values] : {std::pair{"rope_freqs.weight", &rope_plan.freqs},
                                      std::pair{"rope_factors_short.weight", &rope_plan.factors_short},
                                      std::pair{"rope_factors_long.weight", &rope_plan.factors_long}}) {
    if (values->empty()) continue;
    Planned p;
    p.name = gname;
    p.cols = static_cast<int64_t>(values->size());
    p.nbytes = 4 * values->size();
    p.values = *values;
    plan.push_back(std::move(p));
  }
  // Experts: one tensor per block and projection, every expert present with one shape and type.
  for (const auto& [gname, by_expert] : expert_weights) {
    Planned p;
    p.name = gname;
    for (const auto& [e, hf] : by_expert) {
      if (e != static_cast<int64_t>(p.experts.size())) break;
      const Tensor& t = model.tensors.at(hf);
      if (t.shape().size() != 2) return Unimplemented("expert weight '{}' has shape {}, not [out, in]", hf, ShapeString(t.shape()));
      ASSIGN_OR_RETURN(GgmlType type, ChooseType(hf, t));
      if (p.experts.empty()) {
        p.source = hf;
        p.rows = t.shape()[0];
        p.cols = t.shape()[1];
        p.type = type;
      } else if (t.shape()[0] != p.rows || t.shape()[1] != p.cols || type != p.type) {
        return Unimplemented(
            "{}: experts of {} differ ('{}' is {} {}, '{}' is {} {}); llama.cpp stores a block's experts as one tensor "
            "of one type",
            model.source, gname, p.source, TypeName(p.type), ShapeString({p.rows, p.cols}), hf, TypeName(type),
            ShapeString(t.shape()));
      }
      p.experts.push_back(hf);
    }
    if (static_cast<int64_t>(p.experts.size()) != a.num_experts ||
        static_cast<int64_t>(by_expert.size()) != a.num_experts) {
      return Unimplemented(
          "{}: {} has experts {}..{} ({} of them) but config.json has {}; llama.cpp needs every expert of every "
          "block (pruned experts: write safetensors)",
          model.source, gname, by_expert.begin()->first, by_expert.rbegin()->first, by_expert.size(), a.num_experts);
    }
    p.nbytes = p.rows * RowBytes(p.type, p.cols);
    type_elements[p.type] += a.num_experts * p.rows * p.cols;
    plan.push_back(std::move(p));
  }

  return out;
}

// The GGUF metadata of `model` (architecture keys, file type, rope), without the tokenizer.
absl::StatusOr<Metadata> GgufMetadata(const Model& model, const HfConfig& cfg, const std::string& arch,
                                      const RopePlan& rope_plan, const std::map<GgmlType, int64_t>& type_elements) {
  const Architecture& a = model.arch;
  const bool gemma = arch == "gemma" || arch == "gemma2" || arch == "gemma3";
  const HfConfig::RopeScaling& rope = cfg.rope;
  const int64_t hd = cfg.head_dim;
  const bool deci = arch == "deci";
  Metadata md;
  md.Str("general.architecture", arch);
  // llama_ftype of the blocks' main weight type: the type holding the most elements.
  GgmlType main = GgmlType::kF32;
  int64_t most = -1;
  for (const auto& [t, n] : type_elements) {
    if (n > most) main = t, most = n;
  }
  // A preset (quantize-gguf) names its mix; otherwise the main type's llama_ftype.
  uint32_t ftype = FileTypeOf(main);
  if (auto it = model.metadata.find("gguf.file_type"); it != model.metadata.end()) {
    uint32_t named;
    if (absl::SimpleAtoi(it->second, &named)) ftype = named;
  }
  md.U32("general.file_type", ftype);
  if (main != GgmlType::kF32 && main != GgmlType::kF16 && main != GgmlType::kBF16) {
    md.U32("general.quantization_version", 2);
  }
  const std::string k = arch + ".";
  md.U32(k + "vocab_size", static_cast<uint32_t>(cfg.vocab_size));
  md.U32(k + "context_length", static_cast<uint32_t>(cfg.max_positions));
  md.U32(k + "embedding_length", static_cast<uint32_t>(cfg.hidden_size));
  md.U32(k + "block_count", static_cast<uint32_t>(a.blocks.size()));
  if (deci) {  // per layer: 0 heads / 0 FFN width for a no-op sublayer
    std::vector<int32_t> ffn, heads, kv;
    for (int64_t l = 0; l < static_cast<int64_t>(a.blocks.size()); ++l) {
      ffn.push_back(!cfg.MlpRemoved(l)        ? static_cast<int32_t>(cfg.intermediate_size)
                    : cfg.AttentionRemoved(l) ? 0
                                              : static_cast<int32_t>(kDeciPlaceholderFfn));
      heads.push_back(cfg.AttentionRemoved(l) ? 0 : static_cast<int32_t>(cfg.num_heads));
      kv.push_back(cfg.AttentionRemoved(l) ? 0 : static_cast<int32_t>(cfg.num_kv_heads));
    }
    md.I32Array(k + "feed_forward_length", ffn);
    md.I32Array(k + "attention.head_count", heads);
    md.I32Array(k + "attention.head_count_kv", kv);
  } else {
    md.U32(k + "feed_forward_length", static_cast<uint32_t>(cfg.intermediate_size));
    md.U32(k + "attention.head_count", static_cast<uint32_t>(cfg.num_heads));
    md.U32(k + "attention.head_count_kv", static_cast<uint32_t>(cfg.num_kv_heads));
  }
  if (a.num_experts > 0) {
    md.U32(k + "expert_count", static_cast<uint32_t>(a.num_experts));
    md.U32(k + "expert_used_count", static_cast<uint32_t>(a.experts_per_token));
    // Mixtral's experts are feed_forward_length wide; Qwen's have their own width.
    if (arch != "llama") md.U32(k + "expert_feed_forward_length", static_cast<uint32_t>(a.expert_intermediate_size));
    if (arch == "qwen2moe") {
      md.U32(k + "expert_shared_feed_forward_length", static_cast<uint32_t>(a.shared_expert_intermediate_size));
    }
  }
  md.U32(k + "attention.key_length", static_cast<uint32_t>(hd));
  md.U32(k + "attention.value_length", static_cast<uint32_t>(hd));
  int64_t rot = static_cast<int64_t>(static_cast<double>(hd) * cfg.partial_rotary_factor);
  rot -= rot % 2;
  md.U32(k + "rope.dimension_count", static_cast<uint32_t>(rot));
  if (gemma) {
    std::vector<bool> sliding;
    bool any = false;
    for (int64_t l = 0; l < static_cast<int64_t>(a.blocks.size()); ++l) {
      sliding.push_back(cfg.SlidingLayer(l));
      any = any || sliding.back();
    }
    if (any) {
      md.U32(k + "attention.sliding_window", static_cast<uint32_t>(cfg.sliding_window));
      md.BoolArray(k + "attention.sliding_window_pattern", sliding);
      md.F32(k + "rope.freq_base_swa", static_cast<float>(cfg.rope_local.theta));
    }
    if (cfg.rope.type == "linear") {
      md.Str(k + "rope.scaling.type", "linear");
      md.F32(k + "rope.scaling.factor", static_cast<float>(cfg.rope.factor));
    }
    if (cfg.final_softcap > 0) md.F32(k + "final_logit_softcapping", static_cast<float>(cfg.final_softcap));
    if (cfg.attn_softcap > 0) md.F32(k + "attn_logit_softcapping", static_cast<float>(cfg.attn_softcap));
  }
  if (arch == "phi3") {
    if (cfg.sliding_window > 0) md.U32(k + "attention.sliding_window", static_cast<uint32_t>(cfg.sliding_window));
  }
  if (arch == "gpt2") {  // learned positions (position_embd) and LayerNorm
    md.F32(k + "attention.layer_norm_epsilon", static_cast<float>(cfg.norm_eps));
  } else {
    md.F32(k + "rope.freq_base", static_cast<float>(cfg.rope_theta));
    md.F32(k + "attention.layer_norm_rms_epsilon", static_cast<float>(cfg.norm_eps));
  }
  if (!gemma && rope.type == "linear") {
    md.Str(k + "rope.scaling.type", "linear");
    md.F32(k + "rope.scaling.factor", static_cast<float>(rope.factor));
  } else if (rope_plan.yarn_factor > 0) {
    md.Str(k + "rope.scaling.type", "yarn");
    md.F32(k + "rope.scaling.factor", static_cast<float>(rope_plan.yarn_factor));
    md.U32(k + "rope.scaling.original_context_length", static_cast<uint32_t>(rope_plan.yarn_original));
  } else if (rope_plan.longrope_original > 0) {
    md.F32(k + "rope.scaling.attn_factor", static_cast<float>(rope_plan.longrope_attention));
    md.U32(k + "rope.scaling.original_context_length", static_cast<uint32_t>(rope_plan.longrope_original));
  }
  return md;
}

absl::StatusOr<std::vector<std::string>> WriteGguf(const Model& model, const std::string& dir,
                                                   const std::string& name, ProgressSink* progress) {
  if (!model.arch.container.empty()) {  // the text decoder alone, as llama.cpp's converter writes it
    ASSIGN_OR_RETURN(Model text, TextDecoderModel(model));
    return WriteGguf(text, dir, name, progress);
  }
  const Architecture& a = model.arch;
  if (!model.input_quant.empty() || model.kv_cache) {
    return Unimplemented(
        "{}: GGUF does not carry activation or KV-cache quantization (llama.cpp quantizes activations itself "
        "and takes the cache type at run time: --cache-type-k / --cache-type-v); write safetensors instead",
        name);
  }
  const std::string arch = GgufArchitecture(a.family);
  if (arch.empty()) {
    return Unimplemented(
        "{}: GGUF output supports Llama, Mistral, Mixtral, Qwen2(-MoE), Qwen3(-MoE), Phi-3, Gemma 1/2/3 and DeciLM "
        "checkpoints, not '{}'",
        model.source, a.family.empty() ? std::string("unknown") : a.family);
  }
  ASSIGN_OR_RETURN(HfConfig cfg, ParseHfConfig(model.config, model.source));
  const bool gemma = arch == "gemma" || arch == "gemma2" || arch == "gemma3";
  RETURN_IF_ERROR(CheckGgufForm(model, cfg, arch, gemma));
  ASSIGN_OR_RETURN(const RopePlan rope_plan, PlanRope(cfg, arch, gemma, model.source));
  ASSIGN_OR_RETURN(GgufPlan planned, PlanGgufTensors(model, cfg, arch, rope_plan));
  const std::vector<Planned>& plan = planned.tensors;
  ASSIGN_OR_RETURN(Metadata md, GgufMetadata(model, cfg, arch, rope_plan, planned.type_elements));
  std::vector<std::string> pieces;
  RETURN_IF_ERROR(AddGgufTokenizer(model, cfg.vocab_size, md, &pieces));
  md.Str("general.name", GgufModelName(model, pieces));

  std::vector<OutTensor> out;
  for (const Planned& p : plan) {
    // ne[0] is the innermost (contiguous) dimension
    if (!p.experts.empty()) {
      out.push_back({p.name, {static_cast<uint64_t>(p.cols), static_cast<uint64_t>(p.rows), p.experts.size()}, p.type});
    } else if (!p.values.empty() && p.matrix) {
      out.push_back({p.name, {static_cast<uint64_t>(p.cols), static_cast<uint64_t>(p.rows)}, p.type});
    } else if (!p.values.empty()) {
      out.push_back({p.name, {static_cast<uint64_t>(p.cols)}, p.type});
    } else if (p.flat || (p.rows == 1 && model.tensors.at(p.source).shape().size() == 1)) {
      out.push_back({p.name, {static_cast<uint64_t>(p.cols)}, p.type});
    } else {
      out.push_back({p.name, {static_cast<uint64_t>(p.cols), static_cast<uint64_t>(p.rows)}, p.type});
    }
  }
  RETURN_IF_ERROR(WriteContainer(
      (fs::path(dir) / name).string(), md, out,
      [&](size_t i) -> absl::StatusOr<std::shared_ptr<const Buffer>> {
        if (!plan[i].values.empty()) {
          auto bytes = std::make_shared<OwnedBuffer>(plan[i].nbytes);
          std::memcpy(bytes->mutable_data(), plan[i].values.data(), bytes->size());
          return std::shared_ptr<const Buffer>(std::move(bytes));
        }
        if (plan[i].experts.empty()) {
          const Tensor& t = model.tensors.at(plan[i].source);
          ASSIGN_OR_RETURN(std::shared_ptr<const Buffer> bytes, Encode(plan[i], t));
          t.ReleasePages();
          return bytes;
        }
        // Experts one after another: ggml's {cols, rows, experts}.
        auto bytes = std::make_shared<UninitBuffer>(plan[i].nbytes * plan[i].experts.size());
        size_t at = 0;
        for (const std::string& hf : plan[i].experts) {
          const Tensor& t = model.tensors.at(hf);
          ASSIGN_OR_RETURN(std::shared_ptr<const Buffer> one, Encode(plan[i], t));
          if (one->size() != plan[i].nbytes) return Internal("expert '{}': {} bytes, not {}", hf, one->size(), plan[i].nbytes);
          std::memcpy(bytes->mutable_data() + at, one->data(), one->size());
          at += one->size();
          t.ReleasePages();
        }
        return std::shared_ptr<const Buffer>(std::move(bytes));
      },
      progress));
  return std::vector<std::string>{name};
}

std::vector<std::string> GgufOutputCaveats(const Model& model, const std::string& path) {
  std::vector<std::string> out;
  auto g = gguf::ReadContainer(path);
  if (!g.ok()) return out;
  const std::string arch = g->GetStr("general.architecture");
  if (model.config.is_object() && !g->kv.count(arch + ".attention.sliding_window")) {
    if (auto cfg = ParseHfConfig(model.config, model.source); cfg.ok() && cfg->sliding_window > 0 &&
                                                                 (cfg->max_positions == 0 || cfg->sliding_window < cfg->max_positions)) {
      bool any = false;
      for (int64_t l = 0; l < cfg->num_layers && !any; ++l) any = cfg->SlidingLayer(l);
      if (any) {
        out.push_back(fmt::format(
            "{}: config.json's sliding window of {} tokens has no key in GGUF's '{}' architecture: llama.cpp "
            "attends to every earlier token, so outputs differ from the checkpoint's past {} tokens of context",
            model.source, cfg->sliding_window, arch, cfg->sliding_window));
      }
    }
  }
  for (std::string& w : GgufTokenizerCaveats(model, g->GetStr("general.name"))) out.push_back(std::move(w));
  return out;
}

}  // namespace compress
