// Activation and KV-cache quantization in safetensors checkpoints: writing and reading.
#include "formats/activation_layout.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "core/status.h"

namespace compress {
namespace {

std::string BaseOf(const std::string& weight) { return weight.substr(0, weight.size() - 7); }

// The attention module of a block: the parent of its first attention projection.
std::string AttentionModule(const Block& b) {
  if (b.attention.empty()) return "";
  const std::string& n = b.attention.front().name;
  const size_t dot = n.rfind('.');
  return dot == std::string::npos ? "" : n.substr(0, dot);
}

bool SameStaticStrategy(const KvCacheQuant& q) {
  for (const auto& [_, s] : q.scales)
    if (!s.k_bits.empty() || !s.v_bits.empty()) return false;  // AlignedKV's per-channel widths
  return q.k == q.v && (q.k == KvCacheQuant::Granularity::kTensor || q.k == KvCacheQuant::Granularity::kChannel);
}

}  // namespace

absl::Status CheckActivationTargets(const Model& m) {
  for (const auto& [weight, spec] : m.input_quant) {
    const Tensor* t = m.tensors.find(weight);
    if (!t) return Internal("input quantization names '{}', which the model no longer has", weight);
    if (!weight.ends_with(".weight") || !t->quant()) {
      return Unimplemented(
          "'{}' has quantized inputs ({}) but unquantized weights; safetensors checkpoints store activation "
          "quantization only beside quantized weights",
          weight, spec.Describe());
    }
  }
  return absl::OkStatus();
}

nlohmann::json InputActivationsJson(const Model& m, const std::string& weight, bool compressed_tensors) {
  const auto it = m.input_quant.find(weight);
  if (it == m.input_quant.end()) return nullptr;
  nlohmann::json j = ActivationArgsJson(it->second);
  const Tensor* t = m.tensors.find(weight);
  if (compressed_tensors && t && t->quant() && t->quant()->outlier_inputs.empty()) j.erase("f16_outliers");
  return j;
}

absl::Status ExpandActivationQuant(const Model& m, ExpandedStore& out) {
  RETURN_IF_ERROR(CheckActivationTargets(m));
  for (const auto& [weight, spec] : m.input_quant) {
    if (spec.dynamic) continue;
    ASSIGN_OR_RETURN(Tensor s, Tensor::FromF32(std::vector<float>{spec.scale}, {1}, DType::kF32));
    out.tensors.Set(BaseOf(weight) + ".input_scale", std::move(s));
    if (!spec.channel_exp.empty()) {
      const std::vector<float> e(spec.channel_exp.begin(), spec.channel_exp.end());
      ASSIGN_OR_RETURN(Tensor t, Tensor::FromF32(e, {static_cast<int64_t>(e.size())}, DType::kI8));
      out.tensors.Set(BaseOf(weight) + ".input_channel_exp", std::move(t));
    }
  }
  if (!m.kv_cache) return absl::OkStatus();
  const KvCacheQuant& q = *m.kv_cache;
  const int64_t kv_dim = m.arch.num_kv_heads * m.arch.head_dim;
  RETURN_IF_ERROR(q.Validate(static_cast<int>(m.arch.blocks.size()), kv_dim));
  for (const Block& b : m.arch.blocks) {
    const auto it = q.scales.find(b.index);
    if (it == q.scales.end()) continue;
    const std::string attn = AttentionModule(b);
    if (attn.empty()) return Internal("block {} has no attention module to hold its cache scales", b.index);
    for (bool key : {true, false}) {
      const std::vector<float>& s = key ? it->second.k : it->second.v;
      if (s.empty()) continue;
      ASSIGN_OR_RETURN(Tensor t, Tensor::FromF32(s, {static_cast<int64_t>(s.size())}, DType::kF32));
      out.tensors.Set(attn + (key ? ".k_scale" : ".v_scale"), std::move(t));
      const std::vector<int8_t>& bits = key ? it->second.k_bits : it->second.v_bits;
      if (bits.empty()) continue;
      const std::vector<float> bf(bits.begin(), bits.end());
      ASSIGN_OR_RETURN(Tensor bt, Tensor::FromF32(bf, {static_cast<int64_t>(bf.size())}, DType::kI8));
      out.tensors.Set(attn + (key ? ".k_bits" : ".v_bits"), std::move(bt));
    }
  }
  if (out.quantization_config.is_null()) {
    out.quantization_config = {{"quant_method", "compressed-tensors"},
                               {"format", "dense"},
                               {"quantization_status", "compressed"},
                               {"config_groups", nlohmann::json::object()},
                               {"ignore", nlohmann::json::array()}};
  }
  if (SameStaticStrategy(q)) {
    out.quantization_config["kv_cache_scheme"] = KvArgsJson(q, true, m.arch.head_dim);
  } else {
    out.quantization_config["compress_kv_cache"] = {{"k", KvArgsJson(q, true, m.arch.head_dim)},
                                                    {"v", KvArgsJson(q, false, m.arch.head_dim)}};
  }
  return absl::OkStatus();
}

absl::Status CollapseInputActivations(Model& m, const std::string& base, const nlohmann::json& args,
                                      const std::string& path) {
  if (args.is_null()) return absl::OkStatus();
  ASSIGN_OR_RETURN(ActivationQuant q,
                   ActivationArgsFromJson(args, fmt::format("{}: input_activations of '{}'", path, base)));
  const std::string scale_name = base + ".input_scale";
  if (!q.dynamic) {
    const Tensor* s = m.tensors.find(scale_name);
    if (!s || s->numel() != 1) return DataLoss("{}: '{}' has static input scales but no 1-element '{}'", path, base, scale_name);
    ASSIGN_OR_RETURN(std::vector<float> v, s->ToF32());
    q.scale = v[0];
    if (!(q.scale > 0) || !std::isfinite(q.scale)) return DataLoss("{}: '{}' = {} is not > 0", path, scale_name, q.scale);
  }
  m.tensors.Erase(scale_name);
  const std::string exp_name = base + ".input_channel_exp";
  if (const Tensor* e = m.tensors.find(exp_name)) {
    if (e->dtype() != DType::kI8 || e->shape().size() != 1) return DataLoss("{}: '{}' must be a 1-D I8 tensor", path, exp_name);
    ASSIGN_OR_RETURN(std::vector<float> v, e->ToF32());
    for (float x : v) q.channel_exp.push_back(static_cast<int8_t>(x));
    m.tensors.Erase(exp_name);
  }
  m.input_quant[base + ".weight"] = q;
  return absl::OkStatus();
}

absl::Status CollapseKvCache(Model& m, const nlohmann::json& qc, std::span<const std::string_view> block_prefixes,
                             int64_t head_dim, const std::string& path) {
  if (!qc.is_object()) return absl::OkStatus();
  const bool standard = qc.contains("kv_cache_scheme") && !qc["kv_cache_scheme"].is_null();
  const bool own = qc.contains("compress_kv_cache") && !qc["compress_kv_cache"].is_null();
  if (!standard && !own) return absl::OkStatus();
  KvCacheQuant q;
  if (own) {
    const nlohmann::json& j = qc["compress_kv_cache"];
    if (!j.is_object() || !j.contains("k") || !j.contains("v"))
      return DataLoss("{}: compress_kv_cache needs k and v", path);
    RETURN_IF_ERROR(KvArgsFromJson(j["k"], true, head_dim, q, path + ": compress_kv_cache.k"));
    RETURN_IF_ERROR(KvArgsFromJson(j["v"], false, head_dim, q, path + ": compress_kv_cache.v"));
  } else {
    RETURN_IF_ERROR(KvArgsFromJson(qc["kv_cache_scheme"], true, head_dim, q, path + ": kv_cache_scheme"));
    RETURN_IF_ERROR(KvArgsFromJson(qc["kv_cache_scheme"], false, head_dim, q, path + ": kv_cache_scheme"));
  }
  std::vector<std::string> names = m.tensors.names();
  for (const std::string& name : names) {
    const bool bits = name.ends_with(".k_bits") || name.ends_with(".v_bits");
    const bool key = name.ends_with(".k_scale") || name.ends_with(".k_bits");
    if (!key && !bits && !name.ends_with(".v_scale")) continue;
    int block = -1;
    for (std::string_view p : block_prefixes) {
      if (!name.starts_with(p) || name.size() <= p.size() || name[p.size()] != '.') continue;
      const char* first = name.data() + p.size() + 1;
      const auto [end, ec] = std::from_chars(first, name.data() + name.size(), block);
      if (ec != std::errc() || end == first || *end != '.') block = -1;
      if (block >= 0) break;
    }
    if (block < 0) return DataLoss("{}: '{}' is not inside a decoder block", path, name);
    ASSIGN_OR_RETURN(std::vector<float> v, m.tensors.at(name).ToF32());
    if (bits) {
      std::vector<int8_t>& dst = key ? q.scales[block].k_bits : q.scales[block].v_bits;
      for (float x : v) dst.push_back(static_cast<int8_t>(std::clamp(x, -128.f, 127.f)));
    } else {
      (key ? q.scales[block].k : q.scales[block].v) = std::move(v);
    }
    m.tensors.Erase(name);
  }
  m.kv_cache = std::move(q);
  return absl::OkStatus();
}

}  // namespace compress
