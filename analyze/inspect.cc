// What `compress inspect` shows of a model, as text and as JSON.
#include "analyze/inspect.h"

#include "absl/strings/str_join.h"
#include "analyze/report_writer.h"
#include "formats/model_io.h"

namespace compress {
namespace {

std::string LayerShape(const LinearLayer& l) {
  return fmt::format("{} [{}x{}]", l.kind, l.out_features, l.in_features);
}

nlohmann::ordered_json LayerJson(const LinearLayer& l) {
  nlohmann::ordered_json j = {{"name", l.name},          {"kind", l.kind},
                              {"weight", l.weight},      {"bias", l.bias},
                              {"out_features", l.out_features}, {"in_features", l.in_features}};
  if (l.expert >= 0) j["expert"] = l.expert;  // MoE only
  if (l.shared_expert) j["shared_expert"] = true;
  return j;
}

// One block's FFN in a line: its projections, or for a mixture of experts the router, the
// experts' projections (listed once) and the shared expert.
std::string MlpSummary(const Model& m, const Block& b) {
  std::vector<std::string> dense, expert, shared;
  for (const auto& l : b.mlp) {
    if (l.dense()) dense.push_back(LayerShape(l));
    if (l.expert == 0) expert.push_back(LayerShape(l));
    if (l.shared_expert) shared.push_back(LayerShape(l));
  }
  if (!b.moe()) return absl::StrJoin(dense, ", ");
  auto shape = [&](const std::string& t) { return ShapeString(m.tensors.at(t).shape()); };
  std::string out = fmt::format("router {}; {} experts of {}", shape(b.router), b.num_experts, absl::StrJoin(expert, ", "));
  if (!shared.empty()) out += fmt::format("; shared expert {}", absl::StrJoin(shared, ", "));
  if (!b.shared_expert_gate.empty()) out += fmt::format(" gated by {}", shape(b.shared_expert_gate));
  return out;
}

// Activation quantization by scheme ("int8 dynamic per-token" -> layers), static scales left
// out so one scheme reads as one line.
std::map<std::string, int> InputSchemes(const Model& m) {
  std::map<std::string, int> out;
  for (const auto& [w, spec] : m.input_quant) {
    ActivationQuant q = spec;
    q.scale = 0;
    std::string d = q.Describe();
    if (const size_t p = d.find(" (s="); p != std::string::npos) d.erase(p, d.find(')', p) - p + 1);
    ++out[d];
  }
  return out;
}

std::map<std::string, int64_t> RoleCounts(const Model& m) {
  std::map<std::string, int64_t> roles;
  for (const auto& n : m.tensors.names()) roles[std::string(TensorRoleName(m.RoleOf(n)))]++;
  return roles;
}


}  // namespace

// Tensors and parameters of a multimodal container outside its text decoder (role kOther).
std::pair<int64_t, int64_t> OutsideTextDecoder(const Model& m) {
  int64_t tensors = 0, params = 0;
  for (const auto& [name, role] : m.arch.roles) {
    if (role != TensorRole::kOther || !m.tensors.contains(name)) continue;
    ++tensors;
    params += m.tensors.at(name).numel();
  }
  return {tensors, params};
}

nlohmann::ordered_json InspectJson(const Model& m, const std::string& path) {
  const ModelSummary s = Summarize(m);
  const Architecture& ar = m.arch;
  const std::map<std::string, int64_t> roles = RoleCounts(m);
  nlohmann::ordered_json j;
  j["path"] = path;
  j["format"] = s.format;
  j["architecture"] = {{"family", ar.family},
                       {"blocks", ar.blocks.size()},
                       {"hidden_size", ar.hidden_size},
                       {"num_heads", ar.num_heads},
                       {"num_kv_heads", ar.num_kv_heads},
                       {"head_dim", ar.head_dim},
                       {"intermediate_size", ar.intermediate_size},
                       {"vocab_size", ar.vocab_size},
                       {"tied_embeddings", ar.tied_embeddings},
                       {"embedding", ar.embedding},
                       {"lm_head", ar.lm_head},
                       {"final_norm", ar.final_norm}};
  if (!ar.container.empty()) {
    const auto [tensors, params] = OutsideTextDecoder(m);
    j["architecture"]["container"] = {{"model_type", ar.container}, {"kept_tensors", tensors}, {"kept_parameters", params}};
  }
  if (ar.num_experts) {
    j["architecture"]["num_experts"] = ar.num_experts;
    j["architecture"]["experts_per_token"] = ar.experts_per_token;
    j["architecture"]["expert_intermediate_size"] = ar.expert_intermediate_size;
    j["architecture"]["shared_expert_intermediate_size"] = ar.shared_expert_intermediate_size;
  }
  auto blocks = nlohmann::ordered_json::array();
  for (const auto& b : ar.blocks) {
    nlohmann::ordered_json bj = {{"index", b.index}, {"norms", b.norms}};
    if (b.moe()) {
      bj["router"] = b.router;
      bj["num_experts"] = b.num_experts;
      if (!b.shared_expert_gate.empty()) bj["shared_expert_gate"] = b.shared_expert_gate;
    }
    bj["attention"] = nlohmann::ordered_json::array();
    bj["mlp"] = nlohmann::ordered_json::array();
    for (const auto& l : b.attention) bj["attention"].push_back(LayerJson(l));
    for (const auto& l : b.mlp) bj["mlp"].push_back(LayerJson(l));
    blocks.push_back(std::move(bj));
  }
  j["blocks"] = std::move(blocks);
  j["other_layers"] = nlohmann::ordered_json::array();
  for (const auto& l : ar.other_linears) j["other_layers"].push_back(LayerJson(l));
  j["tensors"] = s.tensors;
  j["parameters"] = s.parameters;
  j["bytes"] = s.bytes;
  j["bytes_on_disk"] = InputWeightBytes(m);
  j["parameters_by_dtype"] = s.parameters_by_dtype;
  j["bytes_by_dtype"] = s.bytes_by_dtype;
  j["tensors_by_role"] = roles;
  j["metadata"] = m.metadata;
  if (!m.input_quant.empty()) j["input_quantization"] = InputSchemes(m);
  if (m.kv_cache) j["kv_cache"] = m.kv_cache->Describe();
  return j;
}

std::string InspectText(const Model& m, const std::string& path) {
  const ModelSummary s = Summarize(m);
  const Architecture& ar = m.arch;
  const std::map<std::string, int64_t> roles = RoleCounts(m);
  std::string out = fmt::format("model: {} ({})\n", path, s.format);
  if (ar.family == "onnx-graph") {
    out += fmt::format("architecture: ONNX graph, {} weight layers\n", ar.AllLinears().size());
    if (!ar.blocks.empty()) {  // a decoder found from its residual chain (formats/onnx_structure.h)
      out += fmt::format("decoder: {} blocks, hidden {}, heads {} (kv {}, head_dim {}), ffn {}\n", ar.blocks.size(),
                         ar.hidden_size, ar.num_heads, ar.num_kv_heads, ar.head_dim, ar.intermediate_size);
    }
  } else {
    out += fmt::format(
        "architecture: {}, {} blocks, hidden {}, heads {} (kv {}, head_dim {}), ffn {}, vocab {}{}\n",
        ar.family, ar.blocks.size(), ar.hidden_size, ar.num_heads, ar.num_kv_heads, ar.head_dim,
        ar.intermediate_size, ar.vocab_size, ar.tied_embeddings ? ", tied embeddings" : "");
    if (!ar.container.empty()) {
      const auto [tensors, params] = OutsideTextDecoder(m);
      out += fmt::format("container: {} (the text decoder above; vision tower and projector: {} tensors, {} parameters, "
                         "kept as they are)\n",
                         ar.container, tensors, params);
    }
    if (ar.num_experts) {
      int moe_blocks = 0;
      for (const auto& b : ar.blocks) moe_blocks += b.moe();
      out += fmt::format("experts: {} per MoE block ({} of {} blocks), {} per token, expert ffn {}{}\n",
                         ar.num_experts, moe_blocks, ar.blocks.size(), ar.experts_per_token,
                         ar.expert_intermediate_size,
                         ar.shared_expert_intermediate_size
                             ? fmt::format(", shared expert ffn {}", ar.shared_expert_intermediate_size)
                             : "");
    }
  }
  out += fmt::format("tensors: {}, parameters: {}, size: {} ({:.2f} bits/parameter)\n", s.tensors,
                     s.parameters, HumanBytes(s.bytes), s.parameters ? 8.0 * s.bytes / s.parameters : 0.0);
  // Packed, n:m-sparse and quantized layouts load as tensors of another size than they store.
  if (const int64_t disk = InputWeightBytes(m); disk > 0) {
    out += fmt::format("weight files on disk: {} ({:.2f} bits/parameter)\n", HumanBytes(disk),
                       s.parameters ? 8.0 * disk / s.parameters : 0.0);
  }
  out += "by dtype:\n";
  for (const auto& [dt, n] : s.parameters_by_dtype) {
    out += fmt::format("  {:<8} {:>12} parameters  {:>12}\n", dt, n, HumanBytes(s.bytes_by_dtype.at(dt)));
  }
  out += "by role:";
  for (const auto& [r, n] : roles) out += fmt::format(" {} {}", r, n);
  out += "\n";
  for (const auto& [scheme, n] : InputSchemes(m)) out += fmt::format("inputs quantized: {} layers, {}\n", n, scheme);
  if (m.kv_cache) out += fmt::format("kv cache: {}\n", m.kv_cache->Describe());
  if (!ar.blocks.empty()) {
    out += "blocks:\n";
    for (const auto& b : ar.blocks) {
      std::vector<std::string> at;
      for (const auto& l : b.attention) at.push_back(LayerShape(l));
      out += fmt::format("  {:>3}: attention {}; mlp {}\n", b.index, absl::StrJoin(at, ", "), MlpSummary(m, b));
    }
    out +=
        fmt::format("embedding: {}; lm_head: {}; final norm: {}\n", ar.embedding.empty() ? "-" : ar.embedding,
                    ar.lm_head.empty() ? (ar.tied_embeddings ? "(tied to embedding)" : "-") : ar.lm_head,
                    ar.final_norm.empty() ? "-" : ar.final_norm);
  }
  if (!ar.other_linears.empty()) {
    out += "weight layers:\n";
    for (const auto& l : ar.other_linears) {
      out += fmt::format("  {:<40} {} -> {}\n", l.name, LayerShape(l), l.weight);
    }
  }
  return out;
}

}  // namespace compress
